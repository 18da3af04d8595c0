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

use thiserror::Error;

use crate::frame::StreamFrame;
use crate::shared::{Side, StreamId};

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
}

/// All streams of one connection.
#[derive(Debug)]
pub struct Streams {
    _private: (),
}

impl Streams {
    /// `local` is what we grant the peer; `peer` what the peer granted us (from its transport
    /// parameters). `send_buffer` bounds the bytes buffered for sending across all streams.
    pub fn new(side: Side, local: StreamLimits, peer: StreamLimits, send_buffer: u64) -> Self {
        let _ = (side, local, peer, send_buffer);
        todo!("helper: Streams::new")
    }

    /// Opens a stream, or `None` if the peer's stream limit is reached.
    pub fn open(&mut self) -> Option<StreamId> {
        todo!("helper: Streams::open")
    }

    /// The next stream the peer opened that the application has not accepted yet.
    pub fn accept(&mut self) -> Option<StreamId> {
        todo!("helper: Streams::accept")
    }

    /// Buffers as much of `data` as credit and buffer space allow; returns how much.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        let _ = (id, data);
        todo!("helper: Streams::write")
    }

    /// Marks the end of our half of the stream (FIN after the buffered data).
    pub fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        let _ = id;
        todo!("helper: Streams::finish")
    }

    /// Reads in-order data: `Ok(Some(n))` with n > 0, `Ok(None)` at the end of the stream.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        let _ = (id, buf);
        todo!("helper: Streams::read")
    }

    /// Abandons our sending half: RESET_STREAM with `error_code`, buffered data dropped.
    pub fn reset(&mut self, id: StreamId, error_code: u64) -> Result<(), WriteError> {
        let _ = (id, error_code);
        todo!("helper: Streams::reset")
    }

    /// Abandons our receiving half: STOP_SENDING with `error_code`, received data dropped.
    pub fn stop(&mut self, id: StreamId, error_code: u64) -> Result<(), ReadError> {
        let _ = (id, error_code);
        todo!("helper: Streams::stop")
    }

    /// Changes the receive windows (connection-level and per-stream) for live and new streams.
    /// A larger window is advertised at once; a smaller one takes effect as credit is consumed
    /// (credit already granted cannot be taken back).
    pub fn set_receive_windows(&mut self, connection: u64, stream: u64) {
        let _ = (connection, stream);
        todo!("helper: Streams::set_receive_windows")
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        todo!("helper: Streams::poll_event")
    }

    /// A STREAM frame arrived.
    pub fn on_stream_frame(&mut self, frame: &StreamFrame<'_>) -> Result<(), StreamsError> {
        let _ = frame;
        todo!("helper: Streams::on_stream_frame")
    }

    /// A RESET_STREAM frame arrived.
    pub fn on_reset_stream(
        &mut self,
        id: StreamId,
        error_code: u64,
        final_size: u64,
    ) -> Result<(), StreamsError> {
        let _ = (id, error_code, final_size);
        todo!("helper: Streams::on_reset_stream")
    }

    /// A STOP_SENDING frame arrived.
    pub fn on_stop_sending(&mut self, id: StreamId, error_code: u64) -> Result<(), StreamsError> {
        let _ = (id, error_code);
        todo!("helper: Streams::on_stop_sending")
    }

    /// A MAX_DATA frame arrived.
    pub fn on_max_data(&mut self, max: u64) {
        let _ = max;
        todo!("helper: Streams::on_max_data")
    }

    /// A MAX_STREAM_DATA frame arrived.
    pub fn on_max_stream_data(&mut self, id: StreamId, max: u64) -> Result<(), StreamsError> {
        let _ = (id, max);
        todo!("helper: Streams::on_max_stream_data")
    }

    /// A MAX_STREAMS frame arrived.
    pub fn on_max_streams(&mut self, count: u64) {
        let _ = count;
        todo!("helper: Streams::on_max_streams")
    }

    /// Appends pending control frames (MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS, RESET_STREAM,
    /// STOP_SENDING, *_BLOCKED) to `buf`, keeping `buf.len()` within `max_len`.
    pub fn write_control(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) {
        let _ = (buf, max_len, sent);
        todo!("helper: Streams::write_control")
    }

    /// Appends STREAM frames to `buf` up to `max_len`: lost data first, then new data, taking
    /// streams in round-robin order so that every stream gets its share.
    pub fn write_stream_data(&mut self, buf: &mut Vec<u8>, max_len: usize, sent: &mut SentFrames) {
        let _ = (buf, max_len, sent);
        todo!("helper: Streams::write_stream_data")
    }

    /// Whether there is anything to send (control frames, lost data, or new data with credit).
    pub fn has_pending(&self) -> bool {
        todo!("helper: Streams::has_pending")
    }

    /// The packet that carried `sent` was acknowledged.
    pub fn on_acked(&mut self, sent: &SentFrames) {
        let _ = sent;
        todo!("helper: Streams::on_acked")
    }

    /// The packet that carried `sent` was declared lost: queue its contents again.
    pub fn on_lost(&mut self, sent: &SentFrames) {
        let _ = sent;
        todo!("helper: Streams::on_lost")
    }

    /// Counters.
    pub fn stats(&self) -> StreamStats {
        todo!("helper: Streams::stats")
    }
}
