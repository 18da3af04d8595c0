//! The sending half of one stream: buffered bytes, what was sent, acknowledged and lost.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::StreamFrame;
use crate::range_set::RangeSet;
use crate::shared::StreamId;
use crate::varint;

use super::SentStreamData;

/// Below this many data bytes a frame that cannot carry the whole pending range is not worth
/// its header; the data waits for the next packet.
pub(super) const MIN_FRAME_DATA: usize = 8;

/// A write shorter than this is appended to the last queued chunk when that one is short too
/// (one copy of at most twice this size), so that many small writes do not each cost a queue
/// entry and an allocation.
const SMALL_WRITE: usize = 1024;

/// A RESET_STREAM we owe the peer.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResetState {
    pub(super) code: u64,
    pub(super) final_size: u64,
    /// The peer acknowledged a packet carrying it: the half is closed.
    pub(super) acked: bool,
    /// In the control queue (dedupe).
    pub(super) queued: bool,
}

/// What [`Send::write_frame`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameOutcome {
    /// Nothing to send for this stream (in this mode).
    Idle,
    /// There is something to send but not enough room in the packet.
    NoRoom,
    /// A frame was written; `retransmit` when it carried lost data.
    Sent {
        data: SentStreamData,
        retransmit: bool,
    },
}

/// Which data [`Send::write_frame`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Only ranges declared lost.
    RetransmitOnly,
    /// Lost ranges first, then new data, then a lone FIN.
    Any,
}

/// Sending half of a stream.
///
/// Offsets: `[0, buf_offset)` is acknowledged and freed; `[buf_offset, written)` is in `buf`;
/// `[0, sent)` was sent at least once. Idle streams allocate nothing: the deque and the range
/// sets only allocate when used, and the buffer is released whenever it empties.
///
/// `buf` holds the chunks the application handed over, each with its stream offset, in order
/// and without gaps: queuing a `Bytes` copies nothing, and STREAM frames are copied straight
/// from the chunks into the packet.
#[derive(Debug)]
pub(super) struct Send {
    buf: VecDeque<(u64, Bytes)>,
    buf_offset: u64,
    written: u64,
    sent: u64,
    /// Acknowledged ranges at or above `buf_offset`.
    acked: RangeSet,
    /// Ranges to send again.
    lost: RangeSet,
    /// Stream credit the peer granted.
    pub(super) max_data: u64,
    /// The application called `finish`.
    pub(super) finished: bool,
    fin_sent: bool,
    fin_acked: bool,
    /// `Finished` was reported to the application.
    pub(super) finished_reported: bool,
    pub(super) reset: Option<ResetState>,
    /// The peer sent STOP_SENDING with this code.
    pub(super) stopped: Option<u64>,
    /// A write was cut short; report `Writable` when credit frees up.
    pub(super) want_writable: bool,
    /// In the list of streams waiting on connection credit or buffer space (dedupe).
    pub(super) in_conn_blocked: bool,
    /// STREAM_DATA_BLOCKED was queued for this credit value.
    pub(super) blocked_at: Option<u64>,
    /// In the round-robin queue of streams with data (dedupe).
    pub(super) queued: bool,
    /// In the retransmission queue (dedupe).
    pub(super) lost_queued: bool,
}

impl Send {
    pub(super) fn new(max_data: u64) -> Self {
        Self {
            buf: VecDeque::new(),
            buf_offset: 0,
            written: 0,
            sent: 0,
            acked: RangeSet::new(),
            lost: RangeSet::new(),
            max_data,
            finished: false,
            fin_sent: false,
            fin_acked: false,
            finished_reported: false,
            reset: None,
            stopped: None,
            want_writable: false,
            in_conn_blocked: false,
            blocked_at: None,
            queued: false,
            lost_queued: false,
        }
    }

    /// Bytes the stream credit still allows the application to write.
    pub(super) fn credit(&self) -> u64 {
        self.max_data.saturating_sub(self.written)
    }

    /// Bytes written by the application and not yet sent once.
    pub(super) fn unsent(&self) -> u64 {
        self.written.saturating_sub(self.sent)
    }

    /// Whether the application may still write or finish.
    pub(super) fn is_writable_state(&self) -> bool {
        !self.finished && self.reset.is_none()
    }

    /// Bytes held in the buffer (written and not yet acknowledged).
    pub(super) fn buffered(&self) -> u64 {
        self.written - self.buf_offset
    }

    /// Appends application data; the caller has checked credit and buffer space.
    pub(super) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let len = data.len() as u64;
        match self.buf.back_mut() {
            Some((_, last)) if data.len() < SMALL_WRITE && last.len() < SMALL_WRITE => {
                let mut merged = BytesMut::with_capacity(last.len() + data.len());
                merged.extend_from_slice(last);
                merged.extend_from_slice(&data);
                *last = merged.freeze();
            }
            _ => self.buf.push_back((self.written, data)),
        }
        self.written += len;
    }

    /// Whether a frame could be sent now.
    pub(super) fn is_pending(&self) -> bool {
        self.reset.is_none() && (self.has_lost() || self.sent < self.written || self.fin_pending())
    }

    /// Whether there are lost ranges to send again.
    pub(super) fn has_lost(&self) -> bool {
        self.reset.is_none() && !self.lost.is_empty()
    }

    fn fin_pending(&self) -> bool {
        self.finished && !self.fin_sent && !self.fin_acked
    }

    /// The FIN goes on a frame that ends at the final offset once every byte was sent.
    fn fin_due_at(&self, end: u64) -> bool {
        self.fin_pending() && end == self.written && self.sent == self.written
    }

    /// All data and the FIN were acknowledged, or the reset was.
    pub(super) fn is_done(&self) -> bool {
        match self.reset {
            Some(r) => r.acked,
            None => self.all_acked(),
        }
    }

    /// All data and the FIN were acknowledged (and no reset).
    pub(super) fn all_acked(&self) -> bool {
        self.reset.is_none() && self.finished && self.fin_acked && self.buf_offset == self.written
    }

    /// Writes at most one STREAM frame into `buf` without going past `max_len`.
    pub(super) fn write_frame(
        &mut self,
        id: StreamId,
        buf: &mut Vec<u8>,
        max_len: usize,
        mode: Mode,
    ) -> FrameOutcome {
        if self.reset.is_some() {
            return FrameOutcome::Idle;
        }
        let space = max_len.saturating_sub(buf.len());
        let first_lost = self.lost.iter().next();
        if let Some(range) = first_lost {
            let Some(f) = fit(id, range.start, space, range.end - range.start) else {
                return FrameOutcome::NoRoom;
            };
            let end = range.start + f.len as u64;
            self.lost.remove(range.start..end);
            let data = self.emit(id, range.start, end, f.to_end, buf);
            return FrameOutcome::Sent {
                data,
                retransmit: true,
            };
        }
        if mode == Mode::RetransmitOnly {
            return FrameOutcome::Idle;
        }
        if self.sent < self.written || self.fin_pending() {
            let start = self.sent;
            let Some(f) = fit(id, start, space, self.written - start) else {
                return FrameOutcome::NoRoom;
            };
            let end = start + f.len as u64;
            self.sent = end;
            let data = self.emit(id, start, end, f.to_end, buf);
            return FrameOutcome::Sent {
                data,
                retransmit: false,
            };
        }
        FrameOutcome::Idle
    }

    /// Encodes the frame for `[start, end)` from the buffer, attaching the FIN if it is due;
    /// `to_end` leaves out the length field (the frame ends the packet).
    fn emit(
        &mut self,
        id: StreamId,
        start: u64,
        end: u64,
        to_end: bool,
        buf: &mut Vec<u8>,
    ) -> SentStreamData {
        let fin = self.fin_due_at(end);
        if fin {
            self.fin_sent = true;
        }
        let len = (end - start) as usize;
        StreamFrame::encode_header(id, start, len, fin, !to_end, buf);
        copy_out(&self.buf, start, len, buf);
        SentStreamData {
            id,
            offset: start,
            len: len as u64,
            fin,
        }
    }

    /// A packet carrying `[offset, offset + len)` (and maybe the FIN) was acknowledged. Returns
    /// the bytes freed from the buffer.
    pub(super) fn on_ack(&mut self, offset: u64, len: u64, fin: bool) -> u64 {
        if self.reset.is_some() {
            return 0;
        }
        if fin {
            self.fin_acked = true;
        }
        let start = offset.max(self.buf_offset);
        let end = offset.saturating_add(len).min(self.written);
        if start < end {
            self.acked.insert(start..end);
            self.lost.remove(start..end);
        }
        let mut freed = 0;
        while self.acked.min() == Some(self.buf_offset) {
            let Some(r) = self.acked.pop_min() else { break };
            let n = (r.end - self.buf_offset).min(self.buffered());
            self.drop_front(n);
            self.buf_offset = r.end;
            freed += n;
        }
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            // Release the memory of a drained buffer: thousands of idle streams stay cheap.
            self.buf = VecDeque::new();
        }
        freed
    }

    /// Frees the first `n` buffered bytes (acknowledged).
    fn drop_front(&mut self, mut n: u64) {
        while n > 0 {
            let Some((start, front)) = self.buf.front_mut() else {
                break;
            };
            let len = front.len() as u64;
            if len <= n {
                self.buf.pop_front();
                n -= len;
            } else {
                // n < len, a usize.
                front.advance(n as usize);
                *start += n;
                n = 0;
            }
        }
    }

    /// A packet carrying `[offset, offset + len)` (and maybe the FIN) was lost: queue what is
    /// still unacknowledged. Returns true if there is now something to retransmit.
    pub(super) fn on_lost(&mut self, offset: u64, len: u64, fin: bool) -> bool {
        if self.reset.is_some() {
            return false;
        }
        if fin && !self.fin_acked {
            self.fin_sent = false;
        }
        let start = offset.max(self.buf_offset);
        let end = offset.saturating_add(len).min(self.sent);
        if start < end {
            for r in self.acked.missing_in(start..end) {
                self.lost.insert(r);
            }
        }
        self.is_pending()
    }

    /// Abandons the half: drops the buffer and owes the peer a RESET_STREAM whose final size is
    /// everything written (the connection credit for it is already spent). Returns the bytes
    /// freed, or `None` if the half was already reset or completely acknowledged.
    pub(super) fn reset(&mut self, code: u64) -> Option<u64> {
        if self.reset.is_some() || self.all_acked() {
            return None;
        }
        let freed = self.buffered();
        self.buf = VecDeque::new();
        self.buf_offset = self.written;
        self.acked = RangeSet::new();
        self.lost = RangeSet::new();
        self.want_writable = false;
        self.reset = Some(ResetState {
            code,
            final_size: self.written,
            acked: false,
            queued: false,
        });
        Some(freed)
    }
}

/// Size of the next STREAM frame: how many data bytes, and whether the frame runs to the end
/// of the packet without a length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fit {
    len: usize,
    /// The data fills the packet to its last byte, so the length field is left out (the frame
    /// type says so). Saves 2 bytes on every full packet of a bulk transfer.
    to_end: bool,
}

/// How many data bytes of the `want` pending at `offset` go into a frame given `space` bytes, or
/// `None` if not worth a frame: the header does not fit, or only a piece smaller than
/// [`MIN_FRAME_DATA`] of a longer range would.
///
/// When at least all the space after the header is wanted, the frame takes all of it and omits
/// the length: nothing can follow it in this packet anyway.
fn fit(id: StreamId, offset: u64, space: usize, want: u64) -> Option<Fit> {
    let base = StreamFrame::header_len(id, offset, 0) - 1;
    let avail = space.checked_sub(base)?;
    let want = usize::try_from(want).unwrap_or(usize::MAX);
    if want >= avail && avail >= MIN_FRAME_DATA {
        return Some(Fit {
            len: avail,
            to_end: true,
        });
    }
    // Largest n with length-field size + n <= avail.
    let mut n = avail.checked_sub(1)?;
    while n > 0 && varint::size(n as u64).saturating_add(n) > avail {
        n -= 1;
    }
    let len = if n >= want {
        want
    } else if n >= MIN_FRAME_DATA {
        n
    } else {
        return None;
    };
    Some(Fit { len, to_end: false })
}

/// Appends the `len` bytes at stream offset `from` out of `chunks` (see [`Send`]). Callers
/// stay within the buffer; an out-of-range request copies what exists rather than panicking.
fn copy_out(chunks: &VecDeque<(u64, Bytes)>, from: u64, len: usize, out: &mut Vec<u8>) {
    // The chunk holding `from`: the last one starting at or before it.
    let mut i = chunks
        .partition_point(|(start, _)| *start <= from)
        .saturating_sub(1);
    let mut at = from;
    let mut left = len;
    while left > 0 {
        let Some((start, chunk)) = chunks.get(i) else {
            break;
        };
        let skip = usize::try_from(at.saturating_sub(*start)).unwrap_or(usize::MAX);
        let part = chunk.get(skip.min(chunk.len())..).unwrap_or_default();
        let take = part.len().min(left);
        out.extend_from_slice(&part[..take]);
        left -= take;
        at += take as u64;
        i += 1;
    }
    debug_assert_eq!(left, 0, "copy_out beyond the buffer");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, Frame};

    fn sid() -> StreamId {
        StreamId(4)
    }

    fn decode_stream(buf: &[u8]) -> (u64, Vec<u8>, bool) {
        match frame::iter(buf).collect::<Vec<_>>().as_slice() {
            [Ok(Frame::Stream(f))] => (f.offset, f.data.to_vec(), f.fin),
            other => panic!("not one stream frame: {other:?}"),
        }
    }

    #[test]
    fn fit_fills_space_exactly() {
        let explicit = |len| Some(Fit { len, to_end: false });
        let to_end = |len| Some(Fit { len, to_end: true });
        // Header of id 4 at offset 1000 without length: type 1 + id 1 + offset 2.
        for space in 4 + MIN_FRAME_DATA..3000usize {
            assert_eq!(fit(sid(), 1000, space, u64::MAX), to_end(space - 4));
        }
        // A shorter piece carries a length field; exact except where a longer length field
        // would overshoot by one byte (minimal varints cannot encode 64 in one byte).
        for space in 6..3000usize {
            let want = (space - 5) as u64; // one byte short of filling the packet without length
            if let Some(f) = fit(sid(), 1000, space, want) {
                assert!(!f.to_end);
                let len = StreamFrame::header_len(sid(), 1000, f.len) + f.len;
                let boundary = varint::size(f.len as u64 + 1) > varint::size(f.len as u64);
                assert!(
                    len == space || (len + 1 == space && boundary),
                    "space {space}"
                );
            }
        }
        assert_eq!(fit(sid(), 1000, 69, 64), explicit(63));
        assert_eq!(fit(sid(), 1000, 70, 64), explicit(64));
        assert_eq!(
            fit(sid(), 1000, 4 + MIN_FRAME_DATA, 100),
            to_end(MIN_FRAME_DATA)
        );
        assert_eq!(fit(sid(), 1000, 3 + MIN_FRAME_DATA, 100), None);
        // A short final piece goes out even if tiny.
        assert_eq!(fit(sid(), 1000, 8, 3), explicit(3));
        assert_eq!(fit(sid(), 1000, 5, 0), explicit(0));
        assert_eq!(fit(sid(), 1000, 4, 0), None);
    }

    #[test]
    fn copy_out_spans_chunks_and_small_writes_merge() {
        let mut s = Send::new(1 << 20);
        s.push(Bytes::from(vec![1u8; 2000]));
        s.push(Bytes::from_static(&[2, 3]));
        s.push(Bytes::from_static(&[4, 5, 6]));
        s.push(Bytes::from(vec![7u8; 3000]));
        assert_eq!(s.buf.len(), 3, "the two small writes share one chunk");
        let mut out = Vec::new();
        copy_out(&s.buf, 1998, 8, &mut out);
        assert_eq!(out, [1, 1, 2, 3, 4, 5, 6, 7]);
        // Acknowledging part of the first chunk keeps offsets right.
        s.sent = s.written;
        assert_eq!(s.on_ack(0, 1999, false), 1999);
        out.clear();
        copy_out(&s.buf, 1999, 3, &mut out);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(s.buffered(), 5005 - 1999);
    }

    #[test]
    fn retransmits_lost_ranges_first_and_fin_with_last_data() {
        let mut s = Send::new(1 << 20);
        let all: Vec<u8> = (0..100u8).collect();
        s.push(Bytes::from(all.clone()));
        s.finished = true;
        let mut sent = Vec::new();
        loop {
            let mut buf = Vec::new();
            match s.write_frame(sid(), &mut buf, 40, Mode::Any) {
                FrameOutcome::Sent { data, .. } => {
                    let (off, bytes, fin) = decode_stream(&buf);
                    assert_eq!(off, data.offset);
                    assert_eq!(bytes, data_slice(&data, &all));
                    assert_eq!(fin, data.fin);
                    sent.push(data);
                }
                FrameOutcome::Idle => break,
                FrameOutcome::NoRoom => panic!("40 bytes always fit a frame"),
            }
        }
        assert!(
            sent.last()
                .is_some_and(|d| d.fin && d.offset + d.len == 100)
        );
        assert!(sent.iter().filter(|d| d.fin).count() == 1);
        // Three frames: 0..37, 37..73, 73..100+FIN. Lose the first and the last; ack the middle.
        assert_eq!(sent.len(), 3);
        let lost = [sent[0], sent[2]];
        for d in &sent {
            if !lost.contains(d) {
                s.on_ack(d.offset, d.len, d.fin);
            }
        }
        for d in &lost {
            assert!(s.on_lost(d.offset, d.len, d.fin));
        }
        let mut buf = Vec::new();
        let FrameOutcome::Sent {
            data: first,
            retransmit,
        } = s.write_frame(sid(), &mut buf, 1000, Mode::Any)
        else {
            panic!("expected a retransmission")
        };
        assert!(retransmit);
        assert_eq!(
            (first.offset, first.len, first.fin),
            (lost[0].offset, lost[0].len, false)
        );
        let FrameOutcome::Sent { data: second, .. } =
            s.write_frame(sid(), &mut buf, 1000, Mode::Any)
        else {
            panic!("expected the last piece")
        };
        assert_eq!(
            (second.offset, second.len, second.fin),
            (lost[1].offset, lost[1].len, true)
        );
        assert_eq!(
            s.write_frame(sid(), &mut buf, 1000, Mode::Any),
            FrameOutcome::Idle
        );
        s.on_ack(first.offset, first.len, first.fin);
        assert!(!s.all_acked());
        s.on_ack(second.offset, second.len, second.fin);
        assert!(s.all_acked());
        assert_eq!(s.buffered(), 0);
    }

    fn data_slice(d: &SentStreamData, all: &[u8]) -> Vec<u8> {
        all[d.offset as usize..(d.offset + d.len) as usize].to_vec()
    }

    #[test]
    fn ack_frees_only_the_contiguous_front() {
        let mut s = Send::new(1 << 20);
        s.push(Bytes::from(vec![1; 300]));
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        while let FrameOutcome::Sent { data, .. } =
            s.write_frame(sid(), &mut buf, usize::MAX, Mode::Any)
        {
            frames.push(data);
            if frames.len() == 1 {
                break;
            }
        }
        // One frame took everything; fake three acks by range.
        assert_eq!(frames[0].len, 300);
        assert_eq!(s.on_ack(100, 100, false), 0);
        assert_eq!(s.buffered(), 300);
        assert_eq!(s.on_ack(0, 100, false), 200);
        assert_eq!(s.on_ack(0, 100, false), 0);
        assert_eq!(s.on_ack(200, 100, false), 100);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn lost_then_acked_is_not_resent() {
        let mut s = Send::new(1 << 20);
        s.push(Bytes::from(vec![7; 50]));
        let mut buf = Vec::new();
        let FrameOutcome::Sent { data, .. } = s.write_frame(sid(), &mut buf, 1000, Mode::Any)
        else {
            panic!()
        };
        assert!(s.on_lost(data.offset, data.len, false));
        s.on_ack(10, 20, false);
        let mut buf = Vec::new();
        let FrameOutcome::Sent { data: a, .. } = s.write_frame(sid(), &mut buf, 1000, Mode::Any)
        else {
            panic!()
        };
        let FrameOutcome::Sent { data: b, .. } = s.write_frame(sid(), &mut buf, 1000, Mode::Any)
        else {
            panic!()
        };
        assert_eq!((a.offset, a.len, b.offset, b.len), (0, 10, 30, 20));
        assert_eq!(
            s.write_frame(sid(), &mut buf, 1000, Mode::Any),
            FrameOutcome::Idle
        );
    }

    #[test]
    fn reset_drops_the_buffer_once() {
        let mut s = Send::new(1 << 20);
        s.push(Bytes::from(vec![7; 50]));
        assert_eq!(s.reset(3), Some(50));
        assert_eq!(s.reset(3), None);
        assert!(!s.is_pending());
        assert_eq!(s.reset.map(|r| (r.code, r.final_size)), Some((3, 50)));
    }
}
