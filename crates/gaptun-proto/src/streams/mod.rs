//! Multiplexed bidirectional streams with flow control.
//!
//! Each stream has its own send buffer and receive reassembly, so a lost packet only delays the
//! streams whose data it carried (no head-of-line blocking between streams). Flow control works
//! at two levels, as in QUIC: a per-stream credit and a connection-wide credit, both granted by
//! the receiver as the application reads. Stream data is retransmitted by range: what a lost
//! packet carried is queued again and sent in new packets.
//!
//! This module knows nothing about packets or time. The connection asks it to write frames into
//! a packet ([`Streams::write_control`], [`Streams::write_stream_data`]), records what went into
//! each packet in a [`SentFrames`], and hands that back on acknowledgement or loss.

mod recv;
mod send;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use thiserror::Error;

use crate::frame::{Frame, StreamFrame};
use crate::shared::{Side, StreamId};
use crate::varint;

pub(crate) use recv::SLICE_MIN;
use recv::{FrameData, Recv};
use send::{FrameOutcome, Mode, Send};

/// Credit (MAX_DATA, MAX_STREAM_DATA) is granted again once it grows the limit by at least
/// `window / CREDIT_UPDATE_DIVISOR`, not only when half the window is used up.
///
/// Why often: a credit frame lost on the way stalls the sender when it runs out of the old
/// limit before the frame is sent again. The receiver of a bulk transfer sends nothing else
/// the peer acknowledges, so the loss shows only at its retransmission timeout. Granted at half
/// the window, one grant in ten was lost at 10 % loss, and a sender whose reader had fallen
/// behind on holes (the whole window in flight) sat idle for that timeout, about half a second
/// at 100 ms RTT. Granted every eighth, the next grant supersedes a lost one after an eighth of
/// the window, while the sender still has the other seven eighths to send. The cost is a few
/// bytes per eighth of a window.
pub(crate) const CREDIT_UPDATE_DIVISOR: u64 = 8;

/// The least growth of a limit worth a credit frame for `window` (at least 1 byte).
pub(crate) fn credit_step(window: u64) -> u64 {
    (window / CREDIT_UPDATE_DIVISOR).max(1)
}

/// Most bytes one stream may hold that were written but not yet sent once. Writes beyond it
/// block until half of it went out. Without this cap, whichever stream writes first after space
/// frees up takes all of the connection's credit and buffer, and streams that write later starve;
/// with it, the round-robin sender decides the shares. 1 MiB keeps a single stream's pipe full:
/// at 4 Gbit/s it is 2 ms of sending, and the writer is woken at half of it.
pub const MAX_UNSENT_PER_STREAM: u64 = 1 << 20;

/// Flow-control limits one side grants the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Connection-level credit (bytes across all streams).
    pub max_data: u64,
    /// Per-stream credit (bytes).
    pub max_stream_data: u64,
    /// Streams the other side may open (a cumulative count, grown as streams close).
    pub max_streams: u64,
}

/// Something the application should react to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened one or more streams: call `accept`.
    Opened,
    /// Data (or the end of the stream, or a reset) can be read.
    Readable(StreamId),
    /// The stream can take more data after a [`WriteError::Blocked`].
    Writable(StreamId),
    /// All data we sent on the stream, and its FIN, were acknowledged.
    Finished(StreamId),
    /// The peer asked us to stop sending.
    Stopped { id: StreamId, error_code: u64 },
    /// The peer raised our stream limit: `open` may succeed again.
    Available,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteError {
    /// No flow-control credit or buffer space now; wait for [`StreamEvent::Writable`].
    #[error("stream is blocked by flow control")]
    Blocked,
    /// The peer sent STOP_SENDING with this code.
    #[error("peer stopped the stream with code {0}")]
    Stopped(u64),
    /// The stream does not exist, or its sending half was already finished or reset.
    #[error("stream is closed for writing")]
    ClosedStream,
}

/// Why a read returned no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReadError {
    /// Nothing to read now; wait for [`StreamEvent::Readable`].
    #[error("no data available yet")]
    Blocked,
    /// The peer reset the stream with this code.
    #[error("peer reset the stream with code {0}")]
    Reset(u64),
    /// The stream does not exist or its receiving half is already closed.
    #[error("stream is closed for reading")]
    ClosedStream,
}

/// The peer broke a stream rule; the connection must be closed with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StreamsError {
    /// Data beyond the credit we granted.
    #[error("peer exceeded flow-control credit")]
    FlowControl,
    /// A stream beyond the limit we granted.
    #[error("peer exceeded the stream limit")]
    StreamLimit,
    /// A final size that contradicts data or an earlier final size.
    #[error("peer changed a stream's final size")]
    FinalSize,
    /// A frame for a stream in a state that cannot receive it (e.g. data on a stream we opened and
    /// the peer could not know).
    #[error("frame for a stream in the wrong state")]
    StreamState,
    /// More gaps in the received data than the receive window pays for (see
    /// `recv::fragment_cap`): a peer scattering small out-of-order frames to tie up the
    /// receiver's memory.
    #[error("peer sent data in more out-of-order fragments than the receive window allows")]
    Fragmented,
}

/// One STREAM frame's worth of data sent in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentStreamData {
    pub id: StreamId,
    pub offset: u64,
    pub len: u64,
    pub fin: bool,
}

/// What a packet carried that this module must know about when the packet is acknowledged or
/// lost: stream data by range, and which control frames to send again if lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentFrames {
    pub stream: Vec<SentStreamData>,
    pub max_data: bool,
    pub max_stream_data: Vec<StreamId>,
    pub max_streams: bool,
    pub reset: Vec<StreamId>,
    pub stop_sending: Vec<StreamId>,
}

impl SentFrames {
    /// Whether the packet carried nothing stream-related.
    pub fn is_empty(&self) -> bool {
        self.stream.is_empty()
            && !self.max_data
            && self.max_stream_data.is_empty()
            && !self.max_streams
            && self.reset.is_empty()
            && self.stop_sending.is_empty()
    }
}

/// Counters for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streams currently open (either half not yet closed).
    pub open: u64,
    /// Streams opened since the start, by either side.
    pub opened_total: u64,
    /// Bytes buffered for sending and not yet acknowledged.
    pub send_buffered: u64,
    /// Bytes received and not yet read by the application.
    pub recv_buffered: u64,
    /// Stream payload bytes sent for the first time.
    pub bytes_sent: u64,
    /// Stream payload bytes sent again after a loss.
    pub bytes_retransmitted: u64,
}

/// The most streams either side may open, so stream IDs stay within a varint.
const MAX_STREAM_COUNT: u64 = 1 << 60;

/// Both halves of one stream.
#[derive(Debug)]
struct Stream {
    send: Send,
    recv: Recv,
}

/// Control frames waiting for a packet. Per-stream entries are deduplicated by flags in the
/// stream; an entry whose stream moved on is dropped when its turn comes.
#[derive(Debug, Default)]
struct ControlQueue {
    max_data: bool,
    max_streams: bool,
    max_stream_data: VecDeque<StreamId>,
    reset: VecDeque<StreamId>,
    stop: VecDeque<StreamId>,
    data_blocked: Option<u64>,
    stream_data_blocked: VecDeque<(StreamId, u64)>,
}

/// All streams of one connection.
///
/// Send-side flow control is charged when the application writes (like quinn): everything in a
/// send buffer is already covered by credit, so sending and retransmitting never wait for it.
/// Receive-side connection credit counts the highest offset received on each stream, and is
/// returned as the application reads (or as data is discarded by a stop or reset).
#[derive(Debug)]
pub struct Streams {
    side: Side,
    streams: HashMap<StreamId, Stream>,

    /// Index of the next stream we open.
    next_local: u64,
    /// We may open indices below this (the peer's MAX_STREAMS).
    local_limit: u64,
    /// Every peer index below this was created (and may since have closed).
    next_remote: u64,
    /// The peer may open indices below this (our MAX_STREAMS).
    remote_limit: u64,
    accept_queue: VecDeque<StreamId>,

    /// Connection credit the peer granted us.
    peer_max_data: u64,
    /// Bytes the application wrote on all streams (connection credit used).
    data_written: u64,
    /// Stream credit the peer grants each new stream (its transport parameter).
    peer_stream_credit: u64,
    send_buffer: u64,
    send_buffered: u64,
    /// Streams waiting for `Writable` on connection credit or buffer space.
    conn_blocked: Vec<StreamId>,
    /// DATA_BLOCKED was queued for this credit value.
    data_blocked_at: Option<u64>,

    /// Connection credit we granted (committed: only grows).
    local_max_data: u64,
    conn_window: u64,
    stream_window: u64,
    /// Stream credit every new stream starts with (our transport parameter, fixed).
    local_stream_credit: u64,
    /// Bumped when the stream window changes; see [`Recv::grant`].
    window_gen: u32,
    /// Sum over streams of the highest offset received.
    data_recvd: u64,
    /// Bytes read by the application or discarded.
    data_consumed: u64,
    recv_buffered: u64,
    /// Fragments (runs of buffered data separated by gaps) across all streams.
    recv_fragments: u64,

    /// Streams with something to send, in round-robin order.
    pending: VecDeque<StreamId>,
    /// Streams with lost data, served before `pending`.
    retransmit: VecDeque<StreamId>,
    control: ControlQueue,
    events: VecDeque<StreamEvent>,

    opened_total: u64,
    bytes_sent: u64,
    bytes_retransmitted: u64,
}

impl Streams {
    /// `local` is what we grant the peer; `peer` what the peer granted us (from its transport
    /// parameters). `send_buffer` bounds the bytes buffered for sending across all streams.
    pub fn new(side: Side, local: StreamLimits, peer: StreamLimits, send_buffer: u64) -> Self {
        Self {
            side,
            streams: HashMap::new(),
            next_local: 0,
            local_limit: peer.max_streams.min(MAX_STREAM_COUNT),
            next_remote: 0,
            remote_limit: local.max_streams.min(MAX_STREAM_COUNT),
            accept_queue: VecDeque::new(),
            peer_max_data: peer.max_data,
            data_written: 0,
            peer_stream_credit: peer.max_stream_data,
            send_buffer,
            send_buffered: 0,
            conn_blocked: Vec::new(),
            data_blocked_at: None,
            local_max_data: local.max_data,
            conn_window: local.max_data,
            stream_window: local.max_stream_data,
            local_stream_credit: local.max_stream_data,
            window_gen: 0,
            data_recvd: 0,
            data_consumed: 0,
            recv_buffered: 0,
            recv_fragments: 0,
            pending: VecDeque::new(),
            retransmit: VecDeque::new(),
            control: ControlQueue::default(),
            events: VecDeque::new(),
            opened_total: 0,
            bytes_sent: 0,
            bytes_retransmitted: 0,
        }
    }

    fn new_stream(&self) -> Stream {
        Stream {
            send: Send::new(self.peer_stream_credit),
            recv: Recv::new(self.local_stream_credit),
        }
    }

    /// Opens a stream, or `None` if the peer's stream limit is reached.
    pub fn open(&mut self) -> Option<StreamId> {
        if self.next_local >= self.local_limit {
            return None;
        }
        let id = StreamId::new(self.side, self.next_local);
        self.next_local += 1;
        self.opened_total += 1;
        let stream = self.new_stream();
        self.streams.insert(id, stream);
        Some(id)
    }

    /// The next stream the peer opened that the application has not accepted yet.
    pub fn accept(&mut self) -> Option<StreamId> {
        while let Some(id) = self.accept_queue.pop_front() {
            if self.streams.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn conn_credit(&self) -> u64 {
        self.peer_max_data.saturating_sub(self.data_written)
    }

    fn buffer_room(&self) -> u64 {
        self.send_buffer.saturating_sub(self.send_buffered)
    }

    /// Buffers as much of `data` as credit and buffer space allow; returns how much.
    ///
    /// A short or refused write arms [`StreamEvent::Writable`] for this stream, and queues
    /// STREAM_DATA_BLOCKED / DATA_BLOCKED (once per credit value) when flow control is the cause.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        self.write_with(id, data.len(), |n| Bytes::copy_from_slice(&data[..n]))
    }

    /// Queues the front of `data` without copying it: as much as credit and buffer space allow
    /// is split off `data` and kept until acknowledged. Returns how much; the rest stays in
    /// `data`. Blocking and events as for [`Streams::write`].
    pub fn write_chunk(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, WriteError> {
        self.write_with(id, data.len(), |n| data.split_to(n))
    }

    /// Admits up to `len` bytes on stream `id` and queues the first `n` of them, as `take(n)`
    /// hands them over (`n` <= `len`).
    fn write_with(
        &mut self,
        id: StreamId,
        len: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Result<usize, WriteError> {
        let conn_credit = self.conn_credit();
        let buffer_room = self.buffer_room();
        let stream = self.streams.get_mut(&id).ok_or(WriteError::ClosedStream)?;
        let send = &mut stream.send;
        if let Some(code) = send.stopped {
            return Err(WriteError::Stopped(code));
        }
        if !send.is_writable_state() {
            return Err(WriteError::ClosedStream);
        }
        if len == 0 {
            return Ok(0);
        }
        let stream_credit = send.credit();
        let unsent_room = MAX_UNSENT_PER_STREAM.saturating_sub(send.unsent());
        let n = (len as u64)
            .min(stream_credit)
            .min(conn_credit)
            .min(buffer_room)
            .min(unsent_room);
        if n < len as u64 {
            if unsent_room == n && n < stream_credit.min(conn_credit).min(buffer_room) {
                // Woken from `write_queue` once enough of the stream's data went out.
            } else if stream_credit == n {
                if send.blocked_at != Some(send.max_data) {
                    send.blocked_at = Some(send.max_data);
                    self.control
                        .stream_data_blocked
                        .push_back((id, send.max_data));
                }
            } else if !send.in_conn_blocked {
                send.in_conn_blocked = true;
                self.conn_blocked.push(id);
            }
            send.want_writable = true;
            if conn_credit == n && self.data_blocked_at != Some(self.peer_max_data) {
                self.data_blocked_at = Some(self.peer_max_data);
                self.control.data_blocked = Some(self.peer_max_data);
            }
        }
        if n == 0 {
            return Err(WriteError::Blocked);
        }
        // n <= len, so it fits in usize.
        let n = n as usize;
        send.push(take(n));
        self.data_written += n as u64;
        self.send_buffered += n as u64;
        if !send.queued {
            send.queued = true;
            self.pending.push_back(id);
        }
        Ok(n)
    }

    /// Marks the end of our half of the stream (FIN after the buffered data).
    pub fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        let stream = self.streams.get_mut(&id).ok_or(WriteError::ClosedStream)?;
        let send = &mut stream.send;
        if let Some(code) = send.stopped {
            return Err(WriteError::Stopped(code));
        }
        if !send.is_writable_state() {
            return Err(WriteError::ClosedStream);
        }
        send.finished = true;
        send.want_writable = false;
        if !send.queued {
            send.queued = true;
            self.pending.push_back(id);
        }
        Ok(())
    }

    /// Reads in-order data: `Ok(Some(n))` with n > 0, `Ok(None)` at the end of the stream.
    ///
    /// Reading returns credit: MAX_STREAM_DATA / MAX_DATA are queued once the limit would grow
    /// by an eighth of the respective window ([`CREDIT_UPDATE_DIVISOR`]). Reading the end, or being told of a reset, closes the half.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        self.read_with(id, |recv| recv.read(buf))
    }

    /// Reads the next in-order piece of at most `max` bytes without copying it: `Ok(Some(b))`
    /// with `b` not empty, `Ok(None)` at the end of the stream. Credit as for [`Streams::read`].
    pub fn read_chunk(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, ReadError> {
        self.read_with(id, |recv| recv.read_chunk(max))
    }

    /// Runs a read on stream `id`'s receiving half and does the bookkeeping reads need.
    fn read_with<T>(
        &mut self,
        id: StreamId,
        read: impl FnOnce(&mut Recv) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        let stream = self.streams.get_mut(&id).ok_or(ReadError::ClosedStream)?;
        let before = stream.recv.buffered();
        let fragments = stream.recv.fragments();
        let result = read(&mut stream.recv);
        let consumed = before - stream.recv.buffered();
        self.recv_fragments = self.recv_fragments - fragments + stream.recv.fragments();
        if consumed > 0 {
            grant_stream_credit(
                &mut stream.recv,
                id,
                self.stream_window,
                self.window_gen,
                &mut self.control,
            );
            self.recv_buffered -= consumed;
            self.data_consumed += consumed;
            self.maybe_grant_conn();
        }
        self.maybe_remove(id);
        result
    }

    /// Abandons our sending half: RESET_STREAM with `error_code`, buffered data dropped.
    ///
    /// Allowed until every byte and the FIN were acknowledged; refused after an earlier reset
    /// (including the automatic one after STOP_SENDING).
    pub fn reset(&mut self, id: StreamId, error_code: u64) -> Result<(), WriteError> {
        let stream = self.streams.get_mut(&id).ok_or(WriteError::ClosedStream)?;
        let freed = stream
            .send
            .reset(error_code)
            .ok_or(WriteError::ClosedStream)?;
        queue_reset(&mut stream.send, id, &mut self.control);
        self.send_buffered -= freed;
        self.wake_conn_blocked();
        Ok(())
    }

    /// Abandons our receiving half: STOP_SENDING with `error_code`, received data dropped.
    ///
    /// STOP_SENDING is only sent if the peer may still send (the final size is unknown or data
    /// is missing). The stream is kept until the final size is known, so the connection credit
    /// for data still in flight is accounted for.
    pub fn stop(&mut self, id: StreamId, error_code: u64) -> Result<(), ReadError> {
        let stream = self.streams.get_mut(&id).ok_or(ReadError::ClosedStream)?;
        let fragments = stream.recv.fragments();
        let (ingested, send_stop) = stream.recv.stop(error_code)?;
        self.recv_fragments -= fragments;
        if send_stop && !stream.recv.stop_queued {
            stream.recv.stop_queued = true;
            self.control.stop.push_back(id);
        }
        self.recv_buffered -= ingested.dropped;
        self.data_consumed += ingested.consumed;
        self.maybe_grant_conn();
        self.maybe_remove(id);
        Ok(())
    }

    /// Changes the receive windows (connection-level and per-stream) for live and new streams.
    /// A larger window is advertised at once; a smaller one takes effect as credit is consumed
    /// (credit already granted cannot be taken back).
    ///
    /// Streams that already received data get MAX_STREAM_DATA at once; idle streams get theirs
    /// when their first data arrives, so a window change does not send one frame per idle
    /// stream.
    pub fn set_receive_windows(&mut self, connection: u64, stream: u64) {
        self.conn_window = connection;
        let new = self
            .data_consumed
            .saturating_add(connection)
            .min(varint::MAX);
        if new > self.local_max_data {
            self.local_max_data = new;
            self.control.max_data = true;
        }
        if stream != self.stream_window {
            self.stream_window = stream;
            self.window_gen = self.window_gen.wrapping_add(1);
        }
        for (&id, s) in &mut self.streams {
            if s.recv.has_data() {
                grant_stream_credit(&mut s.recv, id, stream, self.window_gen, &mut self.control);
            }
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Makes sure a stream named by a peer frame exists: peer-opened streams up to `id` are
    /// created (and announced) on first mention. Returns false if the stream already closed,
    /// in which case the frame is ignored.
    fn ensure_stream(&mut self, id: StreamId) -> Result<bool, StreamsError> {
        if id.initiator() == self.side {
            if id.index() >= self.next_local {
                return Err(StreamsError::StreamState);
            }
        } else {
            let index = id.index();
            if index >= self.remote_limit {
                return Err(StreamsError::StreamLimit);
            }
            if index >= self.next_remote {
                for i in self.next_remote..=index {
                    let new_id = StreamId::new(self.side.peer(), i);
                    let stream = self.new_stream();
                    self.streams.insert(new_id, stream);
                    self.accept_queue.push_back(new_id);
                }
                self.opened_total += index + 1 - self.next_remote;
                self.next_remote = index + 1;
                self.events.push_back(StreamEvent::Opened);
            }
        }
        Ok(self.streams.contains_key(&id))
    }

    /// The connection window the fragment cap is computed from: the configured window, or the
    /// credit still granted if that is larger (a window shrunk by `set_receive_windows` must
    /// not turn gaps left by data sent under the old one into an error).
    fn fragment_window(&self) -> u64 {
        let granted = self.local_max_data.saturating_sub(self.data_consumed);
        self.conn_window.max(granted)
    }

    /// A STREAM frame arrived; the data it stores is copied.
    pub fn on_stream_frame(&mut self, frame: &StreamFrame<'_>) -> Result<(), StreamsError> {
        self.on_stream_frame_in(frame, None)
    }

    /// A STREAM frame arrived in the datagram payload `payload` (its data lies inside it): data
    /// stored from it in long enough pieces shares the payload's memory instead of being copied
    /// (see `recv::SLICE_MIN`). With `None`, or data outside `payload`, the data is copied.
    pub fn on_stream_frame_in(
        &mut self,
        frame: &StreamFrame<'_>,
        payload: Option<&Bytes>,
    ) -> Result<(), StreamsError> {
        let id = frame.id;
        if !self.ensure_stream(id)? {
            return Ok(());
        }
        let conn_cap = recv::fragment_cap(self.fragment_window());
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let delta = stream
            .recv
            .check_data(frame.offset, frame.data.len() as u64, frame.fin)?;
        if delta > self.local_max_data.saturating_sub(self.data_recvd) {
            return Err(StreamsError::FlowControl);
        }
        self.data_recvd += delta;
        let fragments = stream.recv.fragments();
        let data = FrameData {
            data: frame.data,
            backing: payload,
        };
        let ingested = stream.recv.ingest(frame.offset, data, frame.fin);
        self.recv_fragments = self.recv_fragments - fragments + stream.recv.fragments();
        self.recv_buffered += ingested.stored;
        self.data_consumed += ingested.consumed;
        // Scattered out-of-order data costs memory per gap, beyond what the credit limits:
        // bound the gaps per stream and per connection (docs/protocol.md 4, "Receiving").
        if stream.recv.fragments() > stream.recv.fragment_cap() || self.recv_fragments > conn_cap {
            return Err(StreamsError::Fragmented);
        }
        notify_readable(&mut stream.recv, id, &mut self.events);
        grant_stream_credit(
            &mut stream.recv,
            id,
            self.stream_window,
            self.window_gen,
            &mut self.control,
        );
        if ingested.consumed > 0 {
            self.maybe_grant_conn();
        }
        self.maybe_remove(id);
        Ok(())
    }

    /// A RESET_STREAM frame arrived.
    pub fn on_reset_stream(
        &mut self,
        id: StreamId,
        error_code: u64,
        final_size: u64,
    ) -> Result<(), StreamsError> {
        if !self.ensure_stream(id)? {
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let delta = stream.recv.check_reset(final_size)?;
        if delta > self.local_max_data.saturating_sub(self.data_recvd) {
            return Err(StreamsError::FlowControl);
        }
        self.data_recvd += delta;
        let fragments = stream.recv.fragments();
        let (ingested, tell) = stream.recv.on_reset(error_code, final_size);
        self.recv_fragments -= fragments;
        self.recv_buffered -= ingested.dropped;
        self.data_consumed += ingested.consumed;
        if tell {
            notify_readable(&mut stream.recv, id, &mut self.events);
        }
        self.maybe_grant_conn();
        self.maybe_remove(id);
        Ok(())
    }

    /// A STOP_SENDING frame arrived.
    ///
    /// Our sending half is reset with the same code (unless everything was already
    /// acknowledged or we reset it ourselves) and [`StreamEvent::Stopped`] is reported.
    pub fn on_stop_sending(&mut self, id: StreamId, error_code: u64) -> Result<(), StreamsError> {
        if !self.ensure_stream(id)? {
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let send = &mut stream.send;
        if send.stopped.is_some() || send.all_acked() {
            return Ok(());
        }
        send.stopped = Some(error_code);
        if let Some(freed) = send.reset(error_code) {
            queue_reset(send, id, &mut self.control);
            self.send_buffered -= freed;
            self.events
                .push_back(StreamEvent::Stopped { id, error_code });
            self.wake_conn_blocked();
        }
        Ok(())
    }

    /// A MAX_DATA frame arrived.
    pub fn on_max_data(&mut self, max: u64) {
        if max > self.peer_max_data {
            self.peer_max_data = max;
            self.wake_conn_blocked();
        }
    }

    /// A MAX_STREAM_DATA frame arrived.
    pub fn on_max_stream_data(&mut self, id: StreamId, max: u64) -> Result<(), StreamsError> {
        if !self.ensure_stream(id)? {
            return Ok(());
        }
        let conn_ready = self.conn_credit() > 0 && self.buffer_room() > 0;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let send = &mut stream.send;
        if max <= send.max_data {
            return Ok(());
        }
        send.max_data = max;
        if send.want_writable && send.is_writable_state() {
            if conn_ready {
                send.want_writable = false;
                self.events.push_back(StreamEvent::Writable(id));
            } else if !send.in_conn_blocked {
                send.in_conn_blocked = true;
                self.conn_blocked.push(id);
            }
        }
        Ok(())
    }

    /// A MAX_STREAMS frame arrived.
    pub fn on_max_streams(&mut self, count: u64) {
        let count = count.min(MAX_STREAM_COUNT);
        if count > self.local_limit {
            let was_at_limit = self.next_local >= self.local_limit;
            self.local_limit = count;
            if was_at_limit {
                self.events.push_back(StreamEvent::Available);
            }
        }
    }

    /// Appends pending control frames (MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS, RESET_STREAM,
    /// STOP_SENDING, *_BLOCKED) to `buf`, keeping `buf.len()` within `max_len`.
    ///
    /// Frames that do not fit stay queued for the next packet. Credit frames carry the current
    /// value, so a re-sent one is never stale.
    pub fn write_control(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) {
        if self.write_resets(buf, max_len, sent)
            && self.write_stops(buf, max_len, sent)
            && self.write_credit(buf, max_len, sent)
        {
            self.write_blocked(buf, max_len);
        }
    }

    /// RESET_STREAM frames; false if the packet filled up.
    fn write_resets(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) -> bool {
        while let Some(&id) = self.control.reset.front() {
            let reset = self
                .streams
                .get_mut(&id)
                .and_then(|s| s.send.reset.as_mut());
            if let Some(r) = reset.filter(|r| !r.acked) {
                let frame = Frame::ResetStream {
                    id,
                    error_code: r.code,
                    final_size: r.final_size,
                };
                if !put(buf, max_len, &frame) {
                    return false;
                }
                r.queued = false;
                sent.reset.push(id);
            }
            self.control.reset.pop_front();
        }
        true
    }

    /// STOP_SENDING frames; false if the packet filled up.
    fn write_stops(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) -> bool {
        while let Some(&id) = self.control.stop.front() {
            if let Some(recv) = self.streams.get_mut(&id).map(|s| &mut s.recv) {
                if let Some(code) = recv.stop_code().filter(|_| recv.wants_stop()) {
                    let frame = Frame::StopSending {
                        id,
                        error_code: code,
                    };
                    if !put(buf, max_len, &frame) {
                        return false;
                    }
                    sent.stop_sending.push(id);
                }
                recv.stop_queued = false;
            }
            self.control.stop.pop_front();
        }
        true
    }

    /// MAX_DATA, MAX_STREAM_DATA and MAX_STREAMS; false if the packet filled up.
    fn write_credit(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) -> bool {
        if self.control.max_data {
            if !put(buf, max_len, &Frame::MaxData(self.local_max_data)) {
                return false;
            }
            self.control.max_data = false;
            sent.max_data = true;
        }
        while let Some(&id) = self.control.max_stream_data.front() {
            if let Some(recv) = self.streams.get_mut(&id).map(|s| &mut s.recv) {
                if recv.wants_credit() {
                    let frame = Frame::MaxStreamData {
                        id,
                        max: recv.max_data,
                    };
                    if !put(buf, max_len, &frame) {
                        return false;
                    }
                    sent.max_stream_data.push(id);
                }
                recv.credit_queued = false;
            }
            self.control.max_stream_data.pop_front();
        }
        if self.control.max_streams {
            if !put(buf, max_len, &Frame::MaxStreams(self.remote_limit)) {
                return false;
            }
            self.control.max_streams = false;
            sent.max_streams = true;
        }
        true
    }

    /// DATA_BLOCKED and STREAM_DATA_BLOCKED: informational, not re-sent if lost.
    fn write_blocked(&mut self, buf: &mut Vec<u8>, max_len: usize) {
        if let Some(limit) = self.control.data_blocked {
            // Stale once the peer raised the credit.
            if limit == self.peer_max_data && !put(buf, max_len, &Frame::DataBlocked(limit)) {
                return;
            }
            self.control.data_blocked = None;
        }
        while let Some(&(id, limit)) = self.control.stream_data_blocked.front() {
            // Only still relevant while the stream is open and its credit unchanged.
            let relevant = self.stream_blocked_at(id, limit);
            if relevant && !put(buf, max_len, &Frame::StreamDataBlocked { id, limit }) {
                return;
            }
            self.control.stream_data_blocked.pop_front();
        }
    }

    /// Appends STREAM frames to `buf` up to `max_len`: lost data first, then new data, taking
    /// streams in round-robin order so that every stream gets its share.
    ///
    /// Lost ranges of all streams go before any new data. Then each stream with data to send
    /// writes one frame and goes to the back of the queue, so consecutive packets rotate over
    /// the streams. Frames are sized to fill the packet exactly; a piece shorter than 8 bytes of
    /// a longer range waits for the next packet.
    pub fn write_stream_data(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) {
        if !self.write_queue(Mode::RetransmitOnly, buf, max_len, sent) {
            return;
        }
        self.write_queue(Mode::Any, buf, max_len, sent);
    }

    /// Serves the retransmission queue or the round-robin queue; false if the packet filled up.
    fn write_queue(
        &mut self,
        mode: Mode,
        buf: &mut Vec<u8>,
        max_len: usize,
        sent: &mut SentFrames,
    ) -> bool {
        loop {
            let queue = match mode {
                Mode::RetransmitOnly => &mut self.retransmit,
                Mode::Any => &mut self.pending,
            };
            let Some(id) = queue.pop_front() else {
                return true;
            };
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            let send = &mut stream.send;
            match mode {
                Mode::RetransmitOnly => send.lost_queued = false,
                Mode::Any => send.queued = false,
            }
            match send.write_frame(id, buf, max_len, mode) {
                FrameOutcome::Idle => {}
                FrameOutcome::NoRoom => {
                    match mode {
                        Mode::RetransmitOnly => send.lost_queued = true,
                        Mode::Any => send.queued = true,
                    }
                    queue.push_front(id);
                    return false;
                }
                FrameOutcome::Sent { data, retransmit } => {
                    if retransmit {
                        self.bytes_retransmitted += data.len;
                    } else {
                        self.bytes_sent += data.len;
                    }
                    if send.want_writable
                        && send.is_writable_state()
                        && send.unsent() <= MAX_UNSENT_PER_STREAM / 2
                        && send.credit() > 0
                        && !send.in_conn_blocked
                    {
                        send.want_writable = false;
                        self.events.push_back(StreamEvent::Writable(id));
                    }
                    sent.stream.push(data);
                    let again = match mode {
                        Mode::RetransmitOnly => send.has_lost(),
                        Mode::Any => send.is_pending(),
                    };
                    if again {
                        match mode {
                            Mode::RetransmitOnly => send.lost_queued = true,
                            Mode::Any => send.queued = true,
                        }
                        queue.push_back(id);
                    }
                }
            }
        }
    }

    /// How much the peer lets us have unacknowledged at the connection level: its credit limit
    /// minus what it has acknowledged. The `none` congestion controller paces at this window per
    /// RTT.
    pub fn peer_window_estimate(&self) -> u64 {
        let acked = self.data_written.saturating_sub(self.send_buffered);
        self.peer_max_data.saturating_sub(acked)
    }

    /// Whether there is anything to send (control frames, lost data, or new data with credit).
    ///
    /// Exact: queue entries that became stale (a stream closed, a reset was acknowledged) do not
    /// count, so the caller never builds an empty packet because of them.
    pub fn has_pending(&self) -> bool {
        let stream_pending =
            |id: &StreamId| self.streams.get(id).is_some_and(|s| s.send.is_pending());
        self.control_pending()
            || self.retransmit.iter().any(stream_pending)
            || self.pending.iter().any(stream_pending)
    }

    /// Whether stream data (new or to retransmit) is waiting to be sent, control frames aside.
    pub fn has_pending_data(&self) -> bool {
        let stream_pending =
            |id: &StreamId| self.streams.get(id).is_some_and(|s| s.send.is_pending());
        self.retransmit.iter().any(stream_pending) || self.pending.iter().any(stream_pending)
    }

    /// Whether a control frame is waiting; checks each queued entry is still relevant.
    fn control_pending(&self) -> bool {
        let c = &self.control;
        let stream = |id: &StreamId| self.streams.get(id);
        c.max_data
            || c.max_streams
            || c.data_blocked
                .is_some_and(|limit| limit == self.peer_max_data)
            || c.reset.iter().any(|id| {
                stream(id)
                    .and_then(|s| s.send.reset)
                    .is_some_and(|r| !r.acked)
            })
            || c.stop
                .iter()
                .any(|id| stream(id).is_some_and(|s| s.recv.wants_stop()))
            || c.max_stream_data
                .iter()
                .any(|id| stream(id).is_some_and(|s| s.recv.wants_credit()))
            || c.stream_data_blocked
                .iter()
                .any(|(id, limit)| self.stream_blocked_at(*id, *limit))
    }

    /// Whether STREAM_DATA_BLOCKED at `limit` still describes the stream.
    fn stream_blocked_at(&self, id: StreamId, limit: u64) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.send.is_writable_state() && s.send.max_data == limit)
    }

    /// The packet that carried `sent` was acknowledged.
    pub fn on_acked(&mut self, sent: &SentFrames) {
        let mut freed = 0;
        for d in &sent.stream {
            let Some(stream) = self.streams.get_mut(&d.id) else {
                continue;
            };
            freed += stream.send.on_ack(d.offset, d.len, d.fin);
            if stream.send.all_acked() && !stream.send.finished_reported {
                stream.send.finished_reported = true;
                self.events.push_back(StreamEvent::Finished(d.id));
            }
            self.maybe_remove(d.id);
        }
        for &id in &sent.reset {
            if let Some(r) = self
                .streams
                .get_mut(&id)
                .and_then(|s| s.send.reset.as_mut())
            {
                r.acked = true;
            }
            self.maybe_remove(id);
        }
        if freed > 0 {
            self.send_buffered -= freed;
            self.wake_conn_blocked();
        }
    }

    /// The packet that carried `sent` was declared lost: queue its contents again.
    ///
    /// Stream data not acknowledged since goes to the retransmission queue; credit frames are
    /// re-queued (and will carry the current value); RESET_STREAM / STOP_SENDING are re-queued
    /// while still needed.
    pub fn on_lost(&mut self, sent: &SentFrames) {
        for d in &sent.stream {
            let Some(stream) = self.streams.get_mut(&d.id) else {
                continue;
            };
            let send = &mut stream.send;
            if !send.on_lost(d.offset, d.len, d.fin) {
                continue;
            }
            if send.has_lost() {
                if !send.lost_queued {
                    send.lost_queued = true;
                    self.retransmit.push_back(d.id);
                }
            } else if !send.queued {
                send.queued = true;
                self.pending.push_back(d.id);
            }
        }
        self.control.max_data |= sent.max_data;
        self.control.max_streams |= sent.max_streams;
        for &id in &sent.max_stream_data {
            if let Some(recv) = self.streams.get_mut(&id).map(|s| &mut s.recv)
                && recv.wants_credit()
                && !recv.credit_queued
            {
                recv.credit_queued = true;
                self.control.max_stream_data.push_back(id);
            }
        }
        for &id in &sent.reset {
            if let Some(stream) = self.streams.get_mut(&id) {
                queue_reset(&mut stream.send, id, &mut self.control);
            }
        }
        for &id in &sent.stop_sending {
            if let Some(recv) = self.streams.get_mut(&id).map(|s| &mut s.recv)
                && recv.wants_stop()
                && !recv.stop_queued
            {
                recv.stop_queued = true;
                self.control.stop.push_back(id);
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            open: self.streams.len() as u64,
            opened_total: self.opened_total,
            send_buffered: self.send_buffered,
            recv_buffered: self.recv_buffered,
            bytes_sent: self.bytes_sent,
            bytes_retransmitted: self.bytes_retransmitted,
        }
    }

    /// Grants connection credit after consumption: `consumed + window`, once less than half
    /// the window remains.
    fn maybe_grant_conn(&mut self) {
        let new = self
            .data_consumed
            .saturating_add(self.conn_window)
            .min(varint::MAX);
        if new > self.local_max_data && new - self.local_max_data >= credit_step(self.conn_window) {
            self.local_max_data = new;
            self.control.max_data = true;
        }
    }

    /// Reports `Writable` to streams waiting on connection credit or buffer space, once both
    /// are available. Streams out of their own credit drop out: MAX_STREAM_DATA wakes them.
    fn wake_conn_blocked(&mut self) {
        if self.conn_blocked.is_empty() || self.conn_credit() == 0 || self.buffer_room() == 0 {
            return;
        }
        for id in std::mem::take(&mut self.conn_blocked) {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            let send = &mut stream.send;
            send.in_conn_blocked = false;
            if send.want_writable && send.is_writable_state() && send.credit() > 0 {
                send.want_writable = false;
                self.events.push_back(StreamEvent::Writable(id));
            }
        }
    }

    /// Removes a stream whose halves are both finished. A peer-opened stream's slot is given
    /// back to the peer at once: MAX_STREAMS is queued (one frame per packet however many
    /// streams closed), which keeps the peer's concurrency at the configured limit.
    fn maybe_remove(&mut self, id: StreamId) {
        let done = self
            .streams
            .get(&id)
            .is_some_and(|s| s.send.is_done() && s.recv.is_done());
        if !done {
            return;
        }
        self.streams.remove(&id);
        if id.initiator() != self.side {
            self.remote_limit = (self.remote_limit + 1).min(MAX_STREAM_COUNT);
            self.control.max_streams = true;
        }
    }
}

/// Encodes `frame` at the end of `buf` if it fits within `max_len`; otherwise leaves `buf` as it
/// was and returns false.
fn put(buf: &mut Vec<u8>, max_len: usize, frame: &Frame<'_>) -> bool {
    let mark = buf.len();
    frame.encode(buf);
    if buf.len() > max_len {
        buf.truncate(mark);
        return false;
    }
    true
}

/// Queues the stream's RESET_STREAM unless already queued or acknowledged.
fn queue_reset(send: &mut Send, id: StreamId, control: &mut ControlQueue) {
    if let Some(r) = send.reset.as_mut()
        && !r.acked
        && !r.queued
    {
        r.queued = true;
        control.reset.push_back(id);
    }
}

/// Queues MAX_STREAM_DATA if reads or a window change earned the peer more credit.
fn grant_stream_credit(
    recv: &mut Recv,
    id: StreamId,
    window: u64,
    generation: u32,
    control: &mut ControlQueue,
) {
    if recv.grant(window, generation) && !recv.credit_queued {
        recv.credit_queued = true;
        control.max_stream_data.push_back(id);
    }
}

/// Reports `Readable` when the half becomes readable and the application was not yet told.
fn notify_readable(recv: &mut Recv, id: StreamId, events: &mut VecDeque<StreamEvent>) {
    if recv.is_readable() && !recv.notified {
        recv.notified = true;
        events.push_back(StreamEvent::Readable(id));
    }
}
