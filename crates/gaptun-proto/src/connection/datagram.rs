//! Unreliable datagrams: the send queue, fragmentation, reassembly and the receive queue.
//!
//! A datagram rides in DATAGRAM frames (whole) or DATAGRAM_FRAGMENT frames (pieces of one too
//! large for the room left in a packet). The packets that carry them are ack-eliciting and count
//! in flight like any other, so datagrams are congestion controlled and paced, but their frames
//! are never put back in a queue when a packet is lost: a lost datagram stays lost, and the ones
//! behind it are not held up. A datagram with a lost piece is dropped whole by the receiver once
//! its reassembly times out (or is pushed out by newer ones).
//!
//! Every queue is bounded by [`TransportConfig::datagram_buffer`] bytes. When a queue is full
//! the *oldest* datagrams are dropped: traffic that chose datagrams (voice, games, WireGuard,
//! DNS retries) values fresh data over stale, and the datagram that has waited longest is the
//! one most likely to be useless by the time it arrives. A flood at a slow path or a slow reader
//! therefore costs memory up to the bound and no more.
//!
//! [`TransportConfig::datagram_buffer`]: crate::config::TransportConfig::datagram_buffer

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame::{DatagramFrame, Fragment};
use crate::range_set::RangeSet;

/// Smallest piece of data worth a DATAGRAM_FRAGMENT frame: with less room the datagram waits
/// for the next packet instead of being cut into slivers.
const MIN_FRAGMENT_DATA: usize = 64;

/// Why a datagram could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendDatagramError {
    /// The handshake has not completed, or the connection is closing.
    #[error("connection not established")]
    NotConnected,
    /// The peer did not offer datagrams in its transport parameters.
    #[error("the peer does not accept datagrams")]
    Unsupported,
    /// Larger than the peer accepts (or than our send buffer holds).
    #[error("datagram of {len} bytes is larger than the {max} bytes the peer accepts")]
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The largest that can be sent.
        max: usize,
    },
}

/// Datagram counters for `ConnectionStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams whose last byte went into a packet.
    pub sent: u64,
    /// Payload bytes of the datagrams sent.
    pub bytes_sent: u64,
    /// Datagrams received whole (after reassembly) and queued for the application.
    pub received: u64,
    /// Datagrams dropped before sending: the send queue was full (the oldest go first).
    pub dropped_send: u64,
    /// Datagrams dropped on receipt: the application did not read fast enough (the oldest go
    /// first), or a reassembly timed out or was pushed out (a piece was lost).
    pub dropped_recv: u64,
    /// DATAGRAM and DATAGRAM_FRAGMENT frames in packets declared lost; never sent again.
    pub frames_lost: u64,
}

/// A datagram waiting to be sent, possibly partly sent already.
#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    /// Bytes already put into packets (fragments).
    sent: usize,
    /// The fragment id, assigned when the first piece goes out.
    id: Option<u64>,
}

/// A datagram being reassembled.
#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    have: RangeSet,
    started: Instant,
}

/// Why a received datagram frame breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum DatagramViolation {
    /// We did not offer datagrams.
    #[error("DATAGRAM frame although none were offered")]
    NotOffered,
    /// Larger than our `max_datagram_size`.
    #[error("datagram larger than the size we accept")]
    TooLarge,
}

/// One connection's datagram state.
#[derive(Debug)]
pub(crate) struct Datagrams {
    /// Bound of each queue, in payload bytes.
    buffer: usize,
    /// Largest datagram we accept (0: none).
    max_incoming: usize,
    send: VecDeque<Outgoing>,
    send_bytes: usize,
    next_id: u64,
    recv: VecDeque<Vec<u8>>,
    recv_bytes: usize,
    partial: BTreeMap<u64, Partial>,
    partial_bytes: usize,
    /// Datagram frames written into the packet being built, for its loss accounting.
    frames_in_packet: u32,
    pub(crate) stats: DatagramStats,
}

impl Datagrams {
    pub(crate) fn new(buffer: usize, max_incoming: u32) -> Self {
        Self {
            buffer: buffer.max(1),
            max_incoming: max_incoming as usize,
            send: VecDeque::new(),
            send_bytes: 0,
            next_id: 0,
            recv: VecDeque::new(),
            recv_bytes: 0,
            partial: BTreeMap::new(),
            partial_bytes: 0,
            frames_in_packet: 0,
            stats: DatagramStats::default(),
        }
    }

    /// Largest datagram that may be queued for a peer that accepts `peer_max`.
    pub(crate) fn max_outgoing(&self, peer_max: u32) -> usize {
        (peer_max as usize).min(self.buffer)
    }

    /// Queues a datagram (the caller checked the size), dropping the oldest queued ones while
    /// the queue holds more than the buffer.
    pub(crate) fn push(&mut self, data: Vec<u8>) {
        self.send_bytes += data.len();
        self.send.push_back(Outgoing {
            data,
            sent: 0,
            id: None,
        });
        while self.send_bytes > self.buffer {
            let Some(old) = self.send.pop_front() else {
                break;
            };
            self.send_bytes -= old.data.len();
            self.stats.dropped_send += 1;
        }
    }

    /// Whether datagrams wait to be sent.
    pub(crate) fn has_pending(&self) -> bool {
        !self.send.is_empty()
    }

    /// Bytes queued for sending, received but unread, and in reassembly: what datagrams cost
    /// in memory now (each part stays within the buffer).
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.send_bytes + self.recv_bytes + self.partial_bytes
    }

    /// Writes queued datagrams into the packet being built, up to `limit` in `buf`.
    /// `packet_room` is the room an empty packet has: a datagram that would fit there but not in
    /// what is left here waits for the next packet instead of being cut, unless it is the first
    /// datagram of this packet (so that a large ACK cannot hold it back for ever).
    pub(crate) fn write(&mut self, buf: &mut Vec<u8>, limit: usize, packet_room: usize) {
        self.frames_in_packet = 0;
        while let Some(front) = self.send.front_mut() {
            let room = limit.saturating_sub(buf.len());
            let len = front.data.len();
            if front.sent == 0 {
                let whole = DatagramFrame::whole_header_len(len) + len;
                if whole <= room {
                    DatagramFrame {
                        fragment: None,
                        data: &front.data,
                    }
                    .encode(buf);
                    self.frames_in_packet += 1;
                    self.finish_front();
                    continue;
                }
                if whole <= packet_room && self.frames_in_packet > 0 {
                    break;
                }
            }
            let id = *front.id.get_or_insert_with(|| {
                let id = self.next_id;
                self.next_id += 1;
                id
            });
            let fragment = Fragment {
                id,
                total: len as u64,
                offset: front.sent as u64,
            };
            let remaining = len - front.sent;
            let header = DatagramFrame::fragment_header_len(&fragment, remaining);
            let Some(space) = room.checked_sub(header) else {
                break;
            };
            let take = remaining.min(space);
            if take < remaining.min(MIN_FRAGMENT_DATA) || take == 0 {
                break;
            }
            let start = front.sent;
            DatagramFrame {
                fragment: Some(fragment),
                data: front.data.get(start..start + take).unwrap_or_default(),
            }
            .encode(buf);
            front.sent += take;
            self.frames_in_packet += 1;
            if front.sent == len {
                self.finish_front();
            } else {
                break;
            }
        }
    }

    /// The front datagram went out in full.
    fn finish_front(&mut self) {
        if let Some(done) = self.send.pop_front() {
            self.send_bytes -= done.data.len();
            self.stats.sent += 1;
            self.stats.bytes_sent += done.data.len() as u64;
        }
    }

    /// Datagram frames in the packet just built (and resets the count).
    pub(crate) fn take_frames_in_packet(&mut self) -> u32 {
        std::mem::take(&mut self.frames_in_packet)
    }

    /// A received DATAGRAM or DATAGRAM_FRAGMENT frame. Returns whether the receive queue went
    /// from empty to non-empty (the application should be told).
    pub(crate) fn on_frame(
        &mut self,
        now: Instant,
        frame: &DatagramFrame<'_>,
        reassembly_timeout: Duration,
    ) -> Result<bool, DatagramViolation> {
        if self.max_incoming == 0 {
            return Err(DatagramViolation::NotOffered);
        }
        let Some(fragment) = frame.fragment else {
            if frame.data.len() > self.max_incoming {
                return Err(DatagramViolation::TooLarge);
            }
            return Ok(self.deliver(frame.data.to_vec()));
        };
        let total = usize::try_from(fragment.total).map_err(|_| DatagramViolation::TooLarge)?;
        if total > self.max_incoming {
            return Err(DatagramViolation::TooLarge);
        }
        self.expire(now, reassembly_timeout);
        if !self.partial.contains_key(&fragment.id) {
            if !self.make_room(total) {
                self.stats.dropped_recv += 1;
                return Ok(false);
            }
            let fresh = Partial {
                data: vec![0; total],
                have: RangeSet::new(),
                started: now,
            };
            self.partial.insert(fragment.id, fresh);
            self.partial_bytes += total;
        }
        let Some(partial) = self.partial.get_mut(&fragment.id) else {
            return Ok(false);
        };
        if partial.data.len() != total {
            // Pieces of one datagram that disagree on its size: the sender is broken. Whatever
            // was gathered is dropped with it.
            self.drop_partial(fragment.id);
            return Ok(false);
        }
        let offset = fragment.offset as usize;
        let end = offset + frame.data.len();
        if let Some(dst) = partial.data.get_mut(offset..end) {
            dst.copy_from_slice(frame.data);
            partial.have.insert(offset as u64..end as u64);
        }
        let complete = partial
            .have
            .iter()
            .next()
            .is_some_and(|r| r.start == 0 && r.end == total as u64);
        if !complete {
            return Ok(false);
        }
        let Some(done) = self.partial.remove(&fragment.id) else {
            return Ok(false);
        };
        self.partial_bytes -= done.data.len();
        Ok(self.deliver(done.data))
    }

    /// Drops reassemblies older than `timeout`: a piece was lost.
    fn expire(&mut self, now: Instant, timeout: Duration) {
        let stale: Vec<u64> = self
            .partial
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.drop_partial(id);
        }
    }

    /// Makes room for a new reassembly of `total` bytes by dropping the oldest ones; false if
    /// it can never fit.
    fn make_room(&mut self, total: usize) -> bool {
        if total > self.buffer {
            return false;
        }
        while self.partial_bytes + total > self.buffer {
            let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(&id, _)| id)
            else {
                break;
            };
            self.drop_partial(oldest);
        }
        true
    }

    fn drop_partial(&mut self, id: u64) {
        if let Some(p) = self.partial.remove(&id) {
            self.partial_bytes -= p.data.len();
            self.stats.dropped_recv += 1;
        }
    }

    /// Queues a whole datagram for the application, dropping the oldest unread ones beyond the
    /// buffer. Returns whether the queue was empty before.
    fn deliver(&mut self, data: Vec<u8>) -> bool {
        let was_empty = self.recv.is_empty();
        self.stats.received += 1;
        self.recv_bytes += data.len();
        self.recv.push_back(data);
        while self.recv_bytes > self.buffer {
            let Some(old) = self.recv.pop_front() else {
                break;
            };
            self.recv_bytes -= old.len();
            self.stats.dropped_recv += 1;
        }
        was_empty && !self.recv.is_empty()
    }

    /// The oldest received datagram.
    pub(crate) fn recv(&mut self) -> Option<Vec<u8>> {
        let d = self.recv.pop_front()?;
        self.recv_bytes -= d.len();
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(id: u64, total: u64, offset: u64, data: &[u8]) -> DatagramFrame<'_> {
        DatagramFrame {
            fragment: Some(Fragment { id, total, offset }),
            data,
        }
    }

    const T: Duration = Duration::from_millis(300);

    #[test]
    fn frames_beyond_what_we_offered_are_violations() {
        let now = Instant::now();
        let whole = DatagramFrame {
            fragment: None,
            data: &[1; 10],
        };
        let mut off = Datagrams::new(1000, 0);
        assert_eq!(
            off.on_frame(now, &whole, T),
            Err(DatagramViolation::NotOffered)
        );
        let mut small = Datagrams::new(1000, 9);
        assert_eq!(
            small.on_frame(now, &whole, T),
            Err(DatagramViolation::TooLarge)
        );
        assert_eq!(
            small.on_frame(now, &piece(0, 10, 0, &[1; 5]), T),
            Err(DatagramViolation::TooLarge)
        );
    }

    #[test]
    fn pieces_in_any_order_make_the_datagram() {
        let now = Instant::now();
        let mut d = Datagrams::new(10_000, 10_000);
        let data: Vec<u8> = (0..250u8).collect();
        assert_eq!(
            d.on_frame(now, &piece(4, 250, 200, &data[200..]), T),
            Ok(false)
        );
        assert_eq!(
            d.on_frame(now, &piece(4, 250, 0, &data[..100]), T),
            Ok(false)
        );
        assert_eq!(d.buffered_bytes(), 250);
        assert_eq!(
            d.on_frame(now, &piece(4, 250, 100, &data[100..200]), T),
            Ok(true)
        );
        assert_eq!(d.recv(), Some(data));
        assert_eq!(d.buffered_bytes(), 0);
        assert_eq!(d.stats.received, 1);
    }

    #[test]
    fn reassembly_is_bounded_by_the_buffer_and_by_time() {
        let now = Instant::now();
        let mut d = Datagrams::new(1000, 10_000);
        // Bigger than the whole buffer: dropped at once.
        assert_eq!(d.on_frame(now, &piece(1, 2000, 0, &[0; 10]), T), Ok(false));
        assert_eq!(d.buffered_bytes(), 0);
        // Three half-finished 400-byte datagrams: the oldest is pushed out by the third.
        for id in 10..13 {
            let at = now + Duration::from_millis(id);
            assert_eq!(d.on_frame(at, &piece(id, 400, 0, &[1; 10]), T), Ok(false));
        }
        assert_eq!(d.buffered_bytes(), 800);
        assert_eq!(d.stats.dropped_recv, 2);
        // Later, the rest are stale: a new piece clears them out.
        let later = now + T + Duration::from_millis(50);
        assert_eq!(
            d.on_frame(later, &piece(20, 100, 0, &[1; 10]), T),
            Ok(false)
        );
        assert_eq!(d.buffered_bytes(), 100);
        assert_eq!(d.stats.dropped_recv, 4);
        // A piece that disagrees on the size drops the reassembly.
        assert_eq!(
            d.on_frame(later, &piece(20, 200, 50, &[1; 10]), T),
            Ok(false)
        );
        assert_eq!(d.buffered_bytes(), 0);
    }

    #[test]
    fn a_full_send_queue_drops_the_oldest() {
        let mut d = Datagrams::new(1000, 0);
        for i in 0..5u8 {
            d.push(vec![i; 300]);
        }
        assert_eq!(d.stats.dropped_send, 2);
        assert_eq!(d.buffered_bytes(), 900);
        let mut buf = Vec::new();
        d.write(&mut buf, 10_000, 10_000);
        // The three newest went out whole: type, 2-byte length, data.
        assert_eq!(buf.len(), 3 * 303);
        assert_eq!(&buf[3..6], &[2, 2, 2]);
        assert_eq!(d.stats.sent, 3);
        assert_eq!(d.take_frames_in_packet(), 3);
    }

    #[test]
    fn a_datagram_larger_than_the_room_goes_in_pieces() {
        let mut d = Datagrams::new(10_000, 0);
        d.push(vec![7; 3000]);
        d.push(vec![8; 100]);
        let mut sizes = Vec::new();
        let mut packets = Vec::new();
        while d.has_pending() {
            let mut buf = Vec::new();
            d.write(&mut buf, 1200, 1200);
            assert!(!buf.is_empty() && buf.len() <= 1200);
            sizes.push(buf.len());
            packets.push(buf);
        }
        // 3000 bytes in pieces of about 1190, the small one fills the last packet.
        assert_eq!(packets.len(), 3);
        assert_eq!(d.stats.sent, 2);
        let mut got = Datagrams::new(10_000, 10_000);
        let now = Instant::now();
        for p in &packets {
            for f in crate::frame::iter(p) {
                let Ok(crate::frame::Frame::Datagram(f)) = f else {
                    panic!("not a datagram frame");
                };
                got.on_frame(now, &f, T).unwrap();
            }
        }
        assert_eq!(got.recv(), Some(vec![7; 3000]));
        assert_eq!(got.recv(), Some(vec![8; 100]));
    }
}
