//! Frames: the units inside a packet's decrypted payload.
//!
//! A payload is a sequence of frames, each starting with a varint type. The layouts are given in
//! `docs/protocol.md` ("Frames"). Decoding never panics and never allocates except for the ranges
//! of an ACK frame; every malformed input is a [`FrameError`].

use std::ops::Range;

use thiserror::Error;

use crate::range_set::RangeSet;
use crate::shared::StreamId;
use crate::varint;

/// Frame type codes on the wire.
pub mod kind {
    pub const PADDING: u64 = 0x00;
    pub const PING: u64 = 0x01;
    pub const ACK: u64 = 0x02;
    pub const RESET_STREAM: u64 = 0x04;
    pub const STOP_SENDING: u64 = 0x05;
    /// STREAM frames use 0x08..=0x0f: bit 0x01 = FIN, 0x02 = explicit length, 0x04 = offset.
    pub const STREAM: u64 = 0x08;
    pub const MAX_DATA: u64 = 0x10;
    pub const MAX_STREAM_DATA: u64 = 0x11;
    pub const MAX_STREAMS: u64 = 0x12;
    pub const DATA_BLOCKED: u64 = 0x14;
    pub const STREAM_DATA_BLOCKED: u64 = 0x15;
    pub const PATH_CHALLENGE: u64 = 0x1a;
    pub const PATH_RESPONSE: u64 = 0x1b;
    pub const CLOSE: u64 = 0x1c;
    pub const APPLICATION_CLOSE: u64 = 0x1d;
    /// One parity shard of a FEC group (see `crate::fec`).
    pub const FEC_PARITY: u64 = 0x20;
    /// A whole unreliable datagram: length, data.
    pub const DATAGRAM: u64 = 0x30;
    /// One piece of an unreliable datagram too large for one packet: id, total length, offset,
    /// length, data.
    pub const DATAGRAM_FRAGMENT: u64 = 0x31;
}

/// One decoded frame. Borrowed data points into the packet payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One or more zero bytes; carries nothing.
    Padding,
    /// Asks for an acknowledgement; used by keepalive and probes.
    Ping,
    /// Acknowledges packet numbers.
    Ack(AckFrame),
    /// Stream data.
    Stream(StreamFrame<'a>),
    /// The sender abandons its half of a stream.
    ResetStream {
        id: StreamId,
        error_code: u64,
        final_size: u64,
    },
    /// The sender no longer wants data on a stream.
    StopSending { id: StreamId, error_code: u64 },
    /// Connection-level flow-control credit: total bytes the peer may send on all streams.
    MaxData(u64),
    /// Stream-level flow-control credit.
    MaxStreamData { id: StreamId, max: u64 },
    /// How many streams the peer may open in total (a cumulative count).
    MaxStreams(u64),
    /// The sender has data but no connection credit beyond `0`.
    DataBlocked(u64),
    /// The sender has data on `id` but no stream credit beyond `limit`.
    StreamDataBlocked { id: StreamId, limit: u64 },
    /// Path validation probe.
    PathChallenge([u8; 8]),
    /// Echo of a [`Frame::PathChallenge`].
    PathResponse([u8; 8]),
    /// The connection is being closed.
    Close(CloseFrame<'a>),
    /// A FEC parity shard: feeds the rebuilding of lost packets, never delivered as data.
    FecParity(crate::fec::ParityFrame<'a>),
    /// An unreliable datagram, or a piece of one; never retransmitted.
    Datagram(DatagramFrame<'a>),
}

/// DATAGRAM / DATAGRAM_FRAGMENT contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramFrame<'a> {
    /// `None` for a whole datagram (DATAGRAM); where the piece belongs for a fragment.
    pub fragment: Option<Fragment>,
    pub data: &'a [u8],
}

/// Where a DATAGRAM_FRAGMENT's data belongs in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The sender's number for the datagram; every piece of one datagram carries the same.
    pub id: u64,
    /// Length of the whole datagram.
    pub total: u64,
    /// Offset of this piece's first byte in the datagram.
    pub offset: u64,
}

impl DatagramFrame<'_> {
    /// Bytes of header a DATAGRAM frame for `len` bytes needs (type, length).
    pub fn whole_header_len(len: usize) -> usize {
        1 + varint::size(len as u64)
    }

    /// Bytes of header a DATAGRAM_FRAGMENT frame needs (type, id, total, offset, length).
    pub fn fragment_header_len(fragment: &Fragment, len: usize) -> usize {
        1 + varint::size(fragment.id)
            + varint::size(fragment.total)
            + varint::size(fragment.offset)
            + varint::size(len as u64)
    }

    /// Appends this frame.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match &self.fragment {
            None => write_all(buf, &[kind::DATAGRAM, self.data.len() as u64]),
            Some(f) => write_all(
                buf,
                &[
                    kind::DATAGRAM_FRAGMENT,
                    f.id,
                    f.total,
                    f.offset,
                    self.data.len() as u64,
                ],
            ),
        }
        buf.extend_from_slice(self.data);
    }
}

/// ACK frame contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFrame {
    /// How long the receiver held the largest packet before acknowledging, in microseconds.
    pub delay_us: u64,
    /// Acknowledged packet numbers, highest range first; never empty, disjoint, non-adjacent.
    pub ranges: Vec<Range<u64>>,
}

impl AckFrame {
    /// The largest acknowledged packet number.
    pub fn largest(&self) -> u64 {
        self.ranges.first().map_or(0, |r| r.end - 1)
    }
}

/// STREAM frame contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame<'a> {
    pub id: StreamId,
    pub offset: u64,
    pub fin: bool,
    pub data: &'a [u8],
}

impl StreamFrame<'_> {
    /// Bytes of header a STREAM frame with explicit length needs (type, id, offset, length).
    ///
    /// Exact for what [`StreamFrame::encode`] writes: the offset field is present only when
    /// `offset > 0`.
    pub fn header_len(id: StreamId, offset: u64, len: usize) -> usize {
        let offset_len = if offset > 0 { varint::size(offset) } else { 0 };
        1 + varint::size(id.0) + offset_len + varint::size(len as u64)
    }

    /// Appends this frame with an explicit length field.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        Self::encode_header(self.id, self.offset, self.data.len(), self.fin, true, buf);
        buf.extend_from_slice(self.data);
    }

    /// Appends a STREAM frame header; the caller appends `len` bytes of data after it. Lets the
    /// send buffer copy data straight from its ring buffer.
    ///
    /// With `explicit_len` the header is exactly [`StreamFrame::header_len`] bytes. Without, the
    /// length field is left out (one to eight bytes fewer) and the frame runs to the end of the
    /// packet, so the caller must make it the packet's last frame.
    pub fn encode_header(
        id: StreamId,
        offset: u64,
        len: usize,
        fin: bool,
        explicit_len: bool,
        buf: &mut Vec<u8>,
    ) {
        let mut ty = kind::STREAM;
        if explicit_len {
            ty |= STREAM_LEN_BIT;
        }
        if fin {
            ty |= STREAM_FIN_BIT;
        }
        if offset > 0 {
            ty |= STREAM_OFF_BIT;
        }
        varint::write(ty, buf);
        varint::write(id.0, buf);
        if offset > 0 {
            varint::write(offset, buf);
        }
        if explicit_len {
            varint::write(len as u64, buf);
        }
    }
}

/// CLOSE / APPLICATION_CLOSE contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// True when the application closed (its own code space); false for a transport error.
    pub application: bool,
    pub error_code: u64,
    /// Human-readable, UTF-8 by convention, at most [`MAX_REASON_LEN`] bytes.
    pub reason: &'a [u8],
}

/// STREAM type bit: this frame ends the stream.
pub const STREAM_FIN_BIT: u64 = 0x01;
/// STREAM type bit: an explicit length field follows the offset (else data runs to the end).
pub const STREAM_LEN_BIT: u64 = 0x02;
/// STREAM type bit: an offset field follows the stream ID (else the offset is 0).
pub const STREAM_OFF_BIT: u64 = 0x04;
/// The highest STREAM type code.
const STREAM_MAX: u64 = kind::STREAM | STREAM_FIN_BIT | STREAM_LEN_BIT | STREAM_OFF_BIT;
/// The largest stream offset plus length a frame may reach, so a final size fits a varint.
pub const MAX_STREAM_END: u64 = varint::MAX;

/// Longest close reason we send or accept.
pub const MAX_REASON_LEN: usize = 256;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The payload ended inside a frame.
    #[error("payload ended inside a frame")]
    UnexpectedEnd,
    /// A frame type we do not know.
    #[error("unknown frame type {0:#x}")]
    UnknownType(u64),
    /// A field has an impossible value (the text says which).
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl Frame<'_> {
    /// Appends the frame's encoding to `buf`.
    ///
    /// [`Frame::Padding`] encodes as a single zero byte. An ACK frame's ranges are written up to
    /// the first one that breaks the documented order (highest first, disjoint, non-adjacent,
    /// non-empty); an ACK with no valid range writes nothing. A close reason longer than
    /// [`MAX_REASON_LEN`] is cut to that length so the frame stays decodable.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Padding => buf.push(0),
            Self::Ping => varint::write(kind::PING, buf),
            Self::Ack(ack) => {
                let extra = valid_ack_prefix(&ack.ranges).saturating_sub(1);
                write_ack(ack.delay_us, ack.ranges.iter().cloned(), extra, buf);
            }
            Self::Stream(frame) => frame.encode(buf),
            Self::ResetStream {
                id,
                error_code,
                final_size,
            } => {
                write_all(buf, &[kind::RESET_STREAM, id.0, *error_code, *final_size]);
            }
            Self::StopSending { id, error_code } => {
                write_all(buf, &[kind::STOP_SENDING, id.0, *error_code]);
            }
            Self::MaxData(max) => write_all(buf, &[kind::MAX_DATA, *max]),
            Self::MaxStreamData { id, max } => write_all(buf, &[kind::MAX_STREAM_DATA, id.0, *max]),
            Self::MaxStreams(count) => write_all(buf, &[kind::MAX_STREAMS, *count]),
            Self::DataBlocked(limit) => write_all(buf, &[kind::DATA_BLOCKED, *limit]),
            Self::StreamDataBlocked { id, limit } => {
                write_all(buf, &[kind::STREAM_DATA_BLOCKED, id.0, *limit]);
            }
            Self::PathChallenge(data) => {
                varint::write(kind::PATH_CHALLENGE, buf);
                buf.extend_from_slice(data);
            }
            Self::PathResponse(data) => {
                varint::write(kind::PATH_RESPONSE, buf);
                buf.extend_from_slice(data);
            }
            Self::Close(close) => close.encode(buf),
            Self::FecParity(parity) => parity.encode(buf),
            Self::Datagram(d) => d.encode(buf),
        }
    }

    /// Whether receiving this frame obliges the receiver to send an ACK.
    pub fn is_ack_eliciting(&self) -> bool {
        // Parity is not acknowledged for its own sake: it is never retransmitted.
        !matches!(
            self,
            Self::Padding | Self::Ack(_) | Self::Close(_) | Self::FecParity(_)
        )
    }
}

impl CloseFrame<'_> {
    /// Appends this frame; the reason is cut to [`MAX_REASON_LEN`] bytes.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let ty = if self.application {
            kind::APPLICATION_CLOSE
        } else {
            kind::CLOSE
        };
        let reason = self.reason.get(..MAX_REASON_LEN).unwrap_or(self.reason);
        write_all(buf, &[ty, self.error_code, reason.len() as u64]);
        buf.extend_from_slice(reason);
    }
}

/// Writes each value as a varint.
fn write_all(buf: &mut Vec<u8>, values: &[u64]) {
    for &v in values {
        varint::write(v, buf);
    }
}

/// How many leading ranges of `ranges` are in valid ACK order: non-empty, each below the previous
/// one with at least one missing number in between.
fn valid_ack_prefix(ranges: &[Range<u64>]) -> usize {
    let mut prev_start: Option<u64> = None;
    for (i, r) in ranges.iter().enumerate() {
        let ordered = prev_start.is_none_or(|s| r.end < s);
        if r.is_empty() || !ordered {
            return i;
        }
        prev_start = Some(r.start);
    }
    ranges.len()
}

/// Writes an ACK frame from `ranges` (descending, already validated): the first range plus the
/// next `extra` ones. Writes nothing if `ranges` is empty.
fn write_ack(
    delay_us: u64,
    mut ranges: impl Iterator<Item = Range<u64>>,
    extra: usize,
    buf: &mut Vec<u8>,
) {
    let Some(top) = ranges.next() else { return };
    let largest = top.end.saturating_sub(1);
    write_all(
        buf,
        &[
            kind::ACK,
            largest,
            delay_us,
            extra as u64,
            largest - top.start,
        ],
    );
    let mut prev_start = top.start;
    for r in ranges.take(extra) {
        let gap = prev_start.saturating_sub(r.end).saturating_sub(1);
        let len = r.end.saturating_sub(r.start).saturating_sub(1);
        write_all(buf, &[gap, len]);
        prev_start = r.start;
    }
}

/// Appends an ACK frame for `received`, reporting at most `max_ranges` ranges (the highest ones)
/// and using at most `max_len` bytes; returns false (appending nothing) if not even one range fits.
///
/// `max_len` bounds the length of this frame alone, not of `buf`. Lower ranges that do not fit
/// are left out: they were reported by earlier ACKs or will be by later ones, and the sender only
/// needs the recent ones to detect loss.
pub fn encode_ack(
    received: &RangeSet,
    delay_us: u64,
    max_ranges: usize,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> bool {
    let mut ranges = received.iter().rev();
    let Some(top) = ranges.next() else {
        return false;
    };
    if max_ranges == 0 {
        return false;
    }
    let largest = top.end - 1;
    // type + largest + delay + first range; the range-count field is added separately because
    // its size depends on how many ranges fit.
    let fixed =
        1 + varint::size(largest) + varint::size(delay_us) + varint::size(largest - top.start);
    let mut extra = 0usize;
    let mut extra_bytes = 0usize;
    let mut prev_start = top.start;
    for r in ranges.take(max_ranges - 1) {
        let gap = prev_start.saturating_sub(r.end).saturating_sub(1);
        let entry = varint::size(gap) + varint::size(r.end - r.start - 1);
        if fixed + varint::size(extra as u64 + 1) + extra_bytes + entry > max_len {
            break;
        }
        extra += 1;
        extra_bytes += entry;
        prev_start = r.start;
    }
    if fixed + varint::size(extra as u64) + extra_bytes > max_len {
        return false;
    }
    write_ack(delay_us, received.iter().rev(), extra, buf);
    true
}

/// Iterates over the frames of a decrypted payload. After the first error it yields nothing more.
pub fn iter(payload: &[u8]) -> FrameIter<'_> {
    FrameIter {
        rest: payload,
        failed: false,
    }
}

/// Iterator returned by [`iter`].
#[derive(Debug)]
pub struct FrameIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let mut reader = Reader { rest: self.rest };
        let result = reader.frame();
        self.rest = reader.rest;
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

/// A cursor over the unread part of a payload. Every read checks the length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, FrameError> {
        varint::read(&mut self.rest).map_err(|_| FrameError::UnexpectedEnd)
    }

    fn stream_id(&mut self) -> Result<StreamId, FrameError> {
        self.varint().map(StreamId)
    }

    fn bytes(&mut self, len: u64) -> Result<&'a [u8], FrameError> {
        let len = usize::try_from(len).map_err(|_| FrameError::UnexpectedEnd)?;
        if len > self.rest.len() {
            return Err(FrameError::UnexpectedEnd);
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn array8(&mut self) -> Result<[u8; 8], FrameError> {
        let bytes = self.bytes(8)?;
        let mut out = [0u8; 8];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Decodes the frame at the front.
    fn frame(&mut self) -> Result<Frame<'a>, FrameError> {
        let ty = self.varint()?;
        Ok(match ty {
            kind::PADDING => {
                let zeros = self.rest.iter().take_while(|&&b| b == 0).count();
                self.rest = self.rest.get(zeros..).unwrap_or_default();
                Frame::Padding
            }
            kind::PING => Frame::Ping,
            kind::ACK => Frame::Ack(self.ack()?),
            kind::RESET_STREAM => Frame::ResetStream {
                id: self.stream_id()?,
                error_code: self.varint()?,
                final_size: self.varint()?,
            },
            kind::STOP_SENDING => Frame::StopSending {
                id: self.stream_id()?,
                error_code: self.varint()?,
            },
            t if (kind::STREAM..=STREAM_MAX).contains(&t) => Frame::Stream(self.stream(t)?),
            kind::MAX_DATA => Frame::MaxData(self.varint()?),
            kind::MAX_STREAM_DATA => Frame::MaxStreamData {
                id: self.stream_id()?,
                max: self.varint()?,
            },
            kind::MAX_STREAMS => Frame::MaxStreams(self.varint()?),
            kind::DATA_BLOCKED => Frame::DataBlocked(self.varint()?),
            kind::STREAM_DATA_BLOCKED => Frame::StreamDataBlocked {
                id: self.stream_id()?,
                limit: self.varint()?,
            },
            kind::PATH_CHALLENGE => Frame::PathChallenge(self.array8()?),
            kind::PATH_RESPONSE => Frame::PathResponse(self.array8()?),
            kind::CLOSE | kind::APPLICATION_CLOSE => Frame::Close(self.close(ty)?),
            kind::FEC_PARITY => Frame::FecParity(crate::fec::ParityFrame::decode(&mut self.rest)?),
            kind::DATAGRAM => {
                let len = self.varint()?;
                Frame::Datagram(DatagramFrame {
                    fragment: None,
                    data: self.bytes(len)?,
                })
            }
            kind::DATAGRAM_FRAGMENT => Frame::Datagram(self.fragment()?),
            other => return Err(FrameError::UnknownType(other)),
        })
    }

    fn ack(&mut self) -> Result<AckFrame, FrameError> {
        let largest = self.varint()?;
        let delay_us = self.varint()?;
        let count = self.varint()?;
        let first = self.varint()?;
        let mut start = largest
            .checked_sub(first)
            .ok_or(FrameError::Malformed("first ACK range goes below zero"))?;
        // Each extra range takes at least two bytes; a count the payload cannot hold is rejected
        // before allocating anything for it.
        let count = usize::try_from(count).map_err(|_| FrameError::UnexpectedEnd)?;
        if count > self.rest.len() / 2 {
            return Err(FrameError::UnexpectedEnd);
        }
        let mut ranges = Vec::with_capacity(count + 1);
        // `largest` is a varint, at most 2^62 - 1, so `largest + 1` cannot overflow.
        ranges.push(start..largest + 1);
        for _ in 0..count {
            let gap = self.varint()?;
            let len = self.varint()?;
            // The next range ends (exclusive) `gap + 1` numbers below the previous start, and its
            // largest number must still be >= 0.
            let end = start
                .checked_sub(gap)
                .and_then(|v| v.checked_sub(1))
                .filter(|&e| e >= 1)
                .ok_or(FrameError::Malformed("ACK gap goes below zero"))?;
            let s = (end - 1)
                .checked_sub(len)
                .ok_or(FrameError::Malformed("ACK range goes below zero"))?;
            ranges.push(s..end);
            start = s;
        }
        Ok(AckFrame { delay_us, ranges })
    }

    fn stream(&mut self, ty: u64) -> Result<StreamFrame<'a>, FrameError> {
        let id = self.stream_id()?;
        let offset = if ty & STREAM_OFF_BIT != 0 {
            self.varint()?
        } else {
            0
        };
        let len = if ty & STREAM_LEN_BIT != 0 {
            self.varint()?
        } else {
            self.rest.len() as u64
        };
        if offset
            .checked_add(len)
            .is_none_or(|end| end > MAX_STREAM_END)
        {
            return Err(FrameError::Malformed("stream data ends beyond 2^62 - 1"));
        }
        let data = self.bytes(len)?;
        Ok(StreamFrame {
            id,
            offset,
            fin: ty & STREAM_FIN_BIT != 0,
            data,
        })
    }

    fn fragment(&mut self) -> Result<DatagramFrame<'a>, FrameError> {
        let id = self.varint()?;
        let total = self.varint()?;
        let offset = self.varint()?;
        let len = self.varint()?;
        if offset.checked_add(len).is_none_or(|end| end > total) || len == 0 {
            return Err(FrameError::Malformed(
                "datagram fragment empty or beyond its datagram",
            ));
        }
        Ok(DatagramFrame {
            fragment: Some(Fragment { id, total, offset }),
            data: self.bytes(len)?,
        })
    }

    fn close(&mut self, ty: u64) -> Result<CloseFrame<'a>, FrameError> {
        let error_code = self.varint()?;
        let reason_len = self.varint()?;
        if reason_len > MAX_REASON_LEN as u64 {
            return Err(FrameError::Malformed("close reason too long"));
        }
        let reason = self.bytes(reason_len)?;
        Ok(CloseFrame {
            application: ty == kind::APPLICATION_CLOSE,
            error_code,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(frame: &Frame<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        buf
    }

    fn decode_all(payload: &[u8]) -> Vec<Result<Frame<'_>, FrameError>> {
        iter(payload).collect()
    }

    fn round_trip(frame: Frame<'_>) {
        let buf = encode(&frame);
        assert_eq!(decode_all(&buf), vec![Ok(frame)]);
    }

    fn sid(v: u64) -> StreamId {
        StreamId(v)
    }

    #[test]
    fn every_simple_frame_round_trips() {
        round_trip(Frame::Padding);
        round_trip(Frame::Ping);
        round_trip(Frame::ResetStream {
            id: sid(4),
            error_code: 77,
            final_size: 1 << 40,
        });
        round_trip(Frame::StopSending {
            id: sid(5),
            error_code: 0,
        });
        round_trip(Frame::MaxData(varint::MAX));
        round_trip(Frame::MaxStreamData {
            id: sid(9),
            max: 16_384,
        });
        round_trip(Frame::MaxStreams(100));
        round_trip(Frame::DataBlocked(65_536));
        round_trip(Frame::StreamDataBlocked {
            id: sid(1),
            limit: 3,
        });
        round_trip(Frame::PathChallenge([1, 2, 3, 4, 5, 6, 7, 8]));
        round_trip(Frame::PathResponse([8; 8]));
        round_trip(Frame::Datagram(DatagramFrame {
            fragment: None,
            data: b"",
        }));
        round_trip(Frame::Datagram(DatagramFrame {
            fragment: Some(Fragment {
                id: 1 << 33,
                total: 4096,
                offset: 1300,
            }),
            data: &[3; 1300],
        }));
        round_trip(Frame::Close(CloseFrame {
            application: false,
            error_code: 3,
            reason: b"",
        }));
        round_trip(Frame::Close(CloseFrame {
            application: true,
            error_code: 1 << 20,
            reason: &[b'x'; MAX_REASON_LEN],
        }));
    }

    #[test]
    fn exact_encodings() {
        assert_eq!(encode(&Frame::Ping), [0x01]);
        assert_eq!(
            encode(&Frame::MaxStreamData {
                id: sid(9),
                max: 64
            }),
            [0x11, 9, 0x40, 64]
        );
        let close = CloseFrame {
            application: true,
            error_code: 2,
            reason: b"hi",
        };
        assert_eq!(encode(&Frame::Close(close)), [0x1d, 2, 2, b'h', b'i']);
        // ACK of {1,2, 5..=9}: largest 9, delay 0, one extra range, first 4, gap 1, len-1 1.
        let ack = AckFrame {
            delay_us: 0,
            ranges: vec![5..10, 1..3],
        };
        assert_eq!(encode(&Frame::Ack(ack)), [0x02, 9, 0, 1, 4, 1, 1]);
    }

    #[test]
    fn datagram_encodings_and_header_lengths() {
        let whole = Frame::Datagram(DatagramFrame {
            fragment: None,
            data: b"ab",
        });
        assert_eq!(encode(&whole), [0x30, 2, b'a', b'b']);
        assert_eq!(DatagramFrame::whole_header_len(2), 2);
        let f = Fragment {
            id: 7,
            total: 4096,
            offset: 100,
        };
        let piece = Frame::Datagram(DatagramFrame {
            fragment: Some(f),
            data: &[9; 3],
        });
        // type, id 7, total 4096 (2 bytes), offset 100 (2 bytes), length 3, data.
        assert_eq!(encode(&piece), [0x31, 7, 0x50, 0x00, 0x40, 100, 3, 9, 9, 9]);
        assert_eq!(DatagramFrame::fragment_header_len(&f, 3), 7);
    }

    #[test]
    fn datagram_fragment_out_of_its_datagram_is_malformed() {
        let malformed = Err(FrameError::Malformed(
            "datagram fragment empty or beyond its datagram",
        ));
        // offset 40 + length 20 > total 50
        assert_eq!(decode_all(&[0x31, 1, 50, 40, 20]), vec![malformed.clone()]);
        // empty piece
        assert_eq!(decode_all(&[0x31, 1, 50, 0, 0]), vec![malformed]);
        // ending exactly at the total is fine
        let mut ok = vec![0x31, 1, 30, 20, 10];
        ok.extend_from_slice(&[1; 10]);
        assert!(matches!(decode_all(&ok)[..], [Ok(Frame::Datagram(_))]));
    }

    #[test]
    fn padding_run_is_one_frame() {
        let payload = [0, 0, 0, 0, 1, 0, 0];
        assert_eq!(
            decode_all(&payload),
            vec![Ok(Frame::Padding), Ok(Frame::Ping), Ok(Frame::Padding)]
        );
    }

    #[test]
    fn stream_frame_layouts() {
        let data = [7u8; 300];
        let cases = [
            (0u64, false),
            (0, true),
            (1, false),
            (1 << 20, true),
            (varint::MAX - 300, false),
        ];
        for (offset, fin) in cases {
            let frame = StreamFrame {
                id: sid(6),
                offset,
                fin,
                data: &data,
            };
            let buf = encode(&Frame::Stream(frame.clone()));
            assert_eq!(
                buf.len(),
                StreamFrame::header_len(sid(6), offset, data.len()) + data.len()
            );
            assert_eq!(buf[0] & 0x04 != 0, offset > 0);
            assert_eq!(buf[0] & 0x02, 0x02);
            assert_eq!(decode_all(&buf), vec![Ok(Frame::Stream(frame))]);
        }
        // Zero-length FIN-only frame.
        round_trip(Frame::Stream(StreamFrame {
            id: sid(2),
            offset: 1000,
            fin: true,
            data: &[],
        }));
    }

    #[test]
    fn stream_frame_without_length_runs_to_end() {
        // type 0x0d = STREAM | OFF | FIN, id 3, offset 5, then data to the end.
        let payload = [0x0d, 3, 5, b'a', b'b', b'c'];
        let expected = StreamFrame {
            id: sid(3),
            offset: 5,
            fin: true,
            data: b"abc",
        };
        assert_eq!(decode_all(&payload), vec![Ok(Frame::Stream(expected))]);
    }

    #[test]
    fn stream_frame_beyond_max_offset_is_rejected() {
        let mut buf = vec![0x0e, 1];
        varint::write(varint::MAX, &mut buf);
        varint::write(1, &mut buf);
        buf.push(0);
        assert_eq!(
            decode_all(&buf),
            vec![Err(FrameError::Malformed(
                "stream data ends beyond 2^62 - 1"
            ))]
        );
        // Ending exactly at the maximum is allowed.
        let mut ok = vec![0x0e, 1];
        varint::write(varint::MAX - 1, &mut ok);
        varint::write(1, &mut ok);
        ok.push(9);
        assert!(matches!(decode_all(&ok)[..], [Ok(Frame::Stream(_))]));
    }

    #[test]
    fn truncated_frames_are_unexpected_end() {
        let frames = [
            Frame::Ack(AckFrame {
                delay_us: 5,
                ranges: vec![100..200, 10..20],
            }),
            Frame::Stream(StreamFrame {
                id: sid(1),
                offset: 9,
                fin: false,
                data: b"hello",
            }),
            Frame::ResetStream {
                id: sid(4),
                error_code: 1,
                final_size: 2,
            },
            Frame::PathChallenge([1; 8]),
            Frame::Datagram(DatagramFrame {
                fragment: None,
                data: b"dgram",
            }),
            Frame::Datagram(DatagramFrame {
                fragment: Some(Fragment {
                    id: 3,
                    total: 9,
                    offset: 4,
                }),
                data: b"frag",
            }),
            Frame::Close(CloseFrame {
                application: false,
                error_code: 1,
                reason: b"bye",
            }),
        ];
        for frame in frames {
            let buf = encode(&frame);
            for cut in 1..buf.len() {
                let decoded = decode_all(&buf[..cut]);
                assert_eq!(
                    decoded,
                    vec![Err(FrameError::UnexpectedEnd)],
                    "{frame:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn unknown_type_stops_iteration() {
        let payload = [0x01, 0x3f, 0x01];
        assert_eq!(
            decode_all(&payload),
            vec![Ok(Frame::Ping), Err(FrameError::UnknownType(0x3f))]
        );
    }

    #[test]
    fn close_reason_too_long_is_rejected() {
        let mut buf = vec![0x1c, 0];
        varint::write(MAX_REASON_LEN as u64 + 1, &mut buf);
        buf.extend_from_slice(&[b'a'; MAX_REASON_LEN + 1]);
        assert_eq!(
            decode_all(&buf),
            vec![Err(FrameError::Malformed("close reason too long"))]
        );
        // Encoding cuts an over-long reason instead.
        let long = [b'z'; MAX_REASON_LEN + 10];
        let frame = Frame::Close(CloseFrame {
            application: false,
            error_code: 0,
            reason: &long,
        });
        let enc = encode(&frame);
        let decoded = decode_all(&enc);
        let expected = CloseFrame {
            application: false,
            error_code: 0,
            reason: &long[..MAX_REASON_LEN],
        };
        assert_eq!(decoded, vec![Ok(Frame::Close(expected))]);
    }

    #[test]
    fn ack_underflow_is_malformed() {
        // first range larger than largest
        assert_eq!(
            decode_all(&[0x02, 3, 0, 0, 4]),
            vec![Err(FrameError::Malformed(
                "first ACK range goes below zero"
            ))]
        );
        // largest 5, first 0 -> range 5..6; gap 4 would end the next range at 0 (largest -1).
        assert_eq!(
            decode_all(&[0x02, 5, 0, 1, 0, 4, 0]),
            vec![Err(FrameError::Malformed("ACK gap goes below zero"))]
        );
        // gap 3 -> next range ends at 1 (largest 0): fine with len-1 0, bad with 1.
        assert_eq!(
            decode_all(&[0x02, 5, 0, 1, 0, 3, 0]),
            vec![Ok(Frame::Ack(AckFrame {
                delay_us: 0,
                ranges: vec![5..6, 0..1]
            }))]
        );
        assert_eq!(
            decode_all(&[0x02, 5, 0, 1, 0, 3, 1]),
            vec![Err(FrameError::Malformed("ACK range goes below zero"))]
        );
    }

    #[test]
    fn ack_with_bogus_range_count_is_rejected_without_allocating() {
        let mut buf = vec![0x02, 10, 0];
        varint::write(varint::MAX, &mut buf);
        buf.push(0);
        assert_eq!(decode_all(&buf), vec![Err(FrameError::UnexpectedEnd)]);
        let mut buf = vec![0x02, 10, 0];
        varint::write(1_000_000, &mut buf);
        buf.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode_all(&buf), vec![Err(FrameError::UnexpectedEnd)]);
    }

    fn set_of(ranges: &[Range<u64>]) -> RangeSet {
        let mut set = RangeSet::new();
        for r in ranges {
            set.insert(r.clone());
        }
        set
    }

    fn decoded_ack(buf: &[u8]) -> AckFrame {
        match decode_all(buf).as_slice() {
            [Ok(Frame::Ack(ack))] => ack.clone(),
            other => panic!("not one ACK: {other:?}"),
        }
    }

    #[test]
    fn encode_ack_reports_all_ranges_when_they_fit() {
        let set = set_of(&[0..3, 5..6, 10..20, 1000..1001]);
        let mut buf = vec![0xaa];
        assert!(encode_ack(&set, 25, 10, 100, &mut buf));
        assert_eq!(buf[0], 0xaa);
        let ack = decoded_ack(&buf[1..]);
        assert_eq!(ack.delay_us, 25);
        assert_eq!(ack.ranges, vec![1000..1001, 10..20, 5..6, 0..3]);
        assert_eq!(ack.largest(), 1000);
    }

    #[test]
    fn encode_ack_respects_max_ranges_and_max_len() {
        let ranges: Vec<Range<u64>> = (0..100u64).map(|i| i * 10..i * 10 + 5).collect();
        let set = set_of(&ranges);
        let mut buf = Vec::new();
        assert!(encode_ack(&set, 0, 3, 1000, &mut buf));
        assert_eq!(decoded_ack(&buf).ranges, vec![990..995, 980..985, 970..975]);

        // Header: type 1 + largest 2 + delay 1 + count 1 + first 1 = 6 bytes; each extra 2 bytes.
        for max_len in 6..20 {
            let mut buf = Vec::new();
            assert!(encode_ack(&set, 0, 1000, max_len, &mut buf));
            assert!(buf.len() <= max_len);
            assert_eq!(decoded_ack(&buf).ranges.len(), 1 + (max_len - 6) / 2);
        }
        let mut buf = Vec::new();
        assert!(!encode_ack(&set, 0, 1000, 5, &mut buf));
        assert!(!encode_ack(&set, 0, 0, 1000, &mut buf));
        assert!(!encode_ack(&RangeSet::new(), 0, 10, 1000, &mut buf));
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_ack_count_field_growth_is_accounted() {
        // 70 single-element ranges: the count field needs 2 bytes once it exceeds 63.
        let ranges: Vec<Range<u64>> = (0..70u64).map(|i| i * 2..i * 2 + 1).collect();
        let set = set_of(&ranges);
        for max_len in 100..160 {
            let mut buf = Vec::new();
            assert!(encode_ack(&set, 0, 1000, max_len, &mut buf));
            assert!(buf.len() <= max_len, "len {} > {max_len}", buf.len());
        }
    }

    #[test]
    fn encoding_invalid_ack_ranges_keeps_the_valid_prefix() {
        let ack = AckFrame {
            delay_us: 0,
            ranges: vec![10..20, 15..16, 1..2],
        };
        let buf = encode(&Frame::Ack(ack));
        assert_eq!(decoded_ack(&buf).ranges, vec![10..20]);
        let empty = AckFrame {
            delay_us: 0,
            ranges: vec![],
        };
        assert!(encode(&Frame::Ack(empty)).is_empty());
    }

    /// Owned description of a frame, for property tests.
    #[derive(Debug, Clone)]
    enum Owned {
        Ping,
        Padding,
        Ack(u64, Vec<Range<u64>>),
        Stream(u64, u64, bool, Vec<u8>),
        Reset(u64, u64, u64),
        Stop(u64, u64),
        MaxData(u64),
        MaxStreamData(u64, u64),
        MaxStreams(u64),
        DataBlocked(u64),
        StreamDataBlocked(u64, u64),
        Challenge([u8; 8]),
        Response([u8; 8]),
        Close(bool, u64, Vec<u8>),
        Datagram(Vec<u8>),
        Fragment(u64, u64, Vec<u8>),
    }

    impl Owned {
        fn frame(&self) -> Frame<'_> {
            match self {
                Self::Ping => Frame::Ping,
                Self::Padding => Frame::Padding,
                Self::Ack(delay_us, ranges) => Frame::Ack(AckFrame {
                    delay_us: *delay_us,
                    ranges: ranges.clone(),
                }),
                Self::Stream(id, offset, fin, data) => Frame::Stream(StreamFrame {
                    id: sid(*id),
                    offset: *offset,
                    fin: *fin,
                    data,
                }),
                Self::Reset(id, code, size) => Frame::ResetStream {
                    id: sid(*id),
                    error_code: *code,
                    final_size: *size,
                },
                Self::Stop(id, code) => Frame::StopSending {
                    id: sid(*id),
                    error_code: *code,
                },
                Self::MaxData(v) => Frame::MaxData(*v),
                Self::MaxStreamData(id, max) => Frame::MaxStreamData {
                    id: sid(*id),
                    max: *max,
                },
                Self::MaxStreams(v) => Frame::MaxStreams(*v),
                Self::DataBlocked(v) => Frame::DataBlocked(*v),
                Self::StreamDataBlocked(id, v) => Frame::StreamDataBlocked {
                    id: sid(*id),
                    limit: *v,
                },
                Self::Challenge(d) => Frame::PathChallenge(*d),
                Self::Response(d) => Frame::PathResponse(*d),
                Self::Close(app, code, reason) => Frame::Close(CloseFrame {
                    application: *app,
                    error_code: *code,
                    reason,
                }),
                Self::Datagram(data) => Frame::Datagram(DatagramFrame {
                    fragment: None,
                    data,
                }),
                Self::Fragment(id, offset, data) => Frame::Datagram(DatagramFrame {
                    fragment: Some(Fragment {
                        id: *id,
                        total: offset + data.len() as u64 + 5,
                        offset: *offset,
                    }),
                    data,
                }),
            }
        }
    }

    fn vi() -> impl Strategy<Value = u64> {
        prop_oneof![0..64u64, 0..20_000u64, 0..=varint::MAX]
    }

    /// Valid ACK ranges, highest first, built downwards from a largest number by gaps and lengths.
    fn ack_ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
        (vi(), prop::collection::vec((0..1000u64, 0..1000u64), 0..20)).prop_map(
            |(largest, steps)| {
                let mut ranges = Vec::new();
                let mut end = largest + 1;
                for (gap, len) in steps {
                    let Some(start) = end.checked_sub(len + 1) else {
                        break;
                    };
                    ranges.push(start..end);
                    match start.checked_sub(gap + 1) {
                        Some(next_end) if next_end > 0 => end = next_end,
                        _ => break,
                    }
                }
                if ranges.is_empty() {
                    ranges.push(largest..largest + 1);
                }
                ranges
            },
        )
    }

    fn owned() -> impl Strategy<Value = Owned> {
        let data = prop::collection::vec(any::<u8>(), 0..200);
        prop_oneof![
            Just(Owned::Ping),
            Just(Owned::Padding),
            (vi(), ack_ranges()).prop_map(|(d, r)| Owned::Ack(d, r)),
            (vi(), 0..(1u64 << 61), any::<bool>(), data.clone())
                .prop_map(|(id, off, fin, d)| Owned::Stream(id, off, fin, d)),
            (vi(), vi(), vi()).prop_map(|(a, b, c)| Owned::Reset(a, b, c)),
            (vi(), vi()).prop_map(|(a, b)| Owned::Stop(a, b)),
            vi().prop_map(Owned::MaxData),
            (vi(), vi()).prop_map(|(a, b)| Owned::MaxStreamData(a, b)),
            vi().prop_map(Owned::MaxStreams),
            vi().prop_map(Owned::DataBlocked),
            (vi(), vi()).prop_map(|(a, b)| Owned::StreamDataBlocked(a, b)),
            any::<[u8; 8]>().prop_map(Owned::Challenge),
            any::<[u8; 8]>().prop_map(Owned::Response),
            (
                any::<bool>(),
                vi(),
                prop::collection::vec(any::<u8>(), 0..=MAX_REASON_LEN)
            )
                .prop_map(|(a, c, r)| Owned::Close(a, c, r)),
            data.clone().prop_map(Owned::Datagram),
            (
                vi(),
                0..(1u64 << 40),
                prop::collection::vec(any::<u8>(), 1..200)
            )
                .prop_map(|(id, off, d)| Owned::Fragment(id, off, d)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_frames_round_trip(frames in prop::collection::vec(owned(), 1..8)) {
            // Adjacent paddings merge on decode, so keep padding only as the last frame.
            let frames: Vec<Frame<'_>> = frames.iter().map(Owned::frame).collect();
            let kept: Vec<Frame<'_>> = frames.iter().enumerate()
                .filter(|(i, f)| **f != Frame::Padding || *i + 1 == frames.len())
                .map(|(_, f)| f.clone())
                .collect();
            let mut buf = Vec::new();
            for f in &kept {
                f.encode(&mut buf);
            }
            let decoded: Vec<Frame<'_>> = iter(&buf).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded, kept);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            // Whatever decodes must re-encode and decode to the same frame.
            for f in iter(&bytes).flatten() {
                let mut buf = Vec::new();
                f.encode(&mut buf);
                let again: Vec<_> = iter(&buf).collect();
                prop_assert_eq!(again, vec![Ok(f)]);
            }
        }

        #[test]
        fn encode_ack_always_decodes_to_the_top_of_the_set(
            ranges in prop::collection::vec((0..10_000u64, 1..50u64), 1..60),
            max_ranges in 1usize..80,
            max_len in 0usize..200,
        ) {
            let set = set_of(&ranges.iter().map(|&(s, l)| s..s + l).collect::<Vec<_>>());
            let mut buf = Vec::new();
            let wrote = encode_ack(&set, 7, max_ranges, max_len, &mut buf);
            prop_assert!(buf.len() <= max_len);
            prop_assert_eq!(wrote, !buf.is_empty());
            if wrote {
                let ack = decoded_ack(&buf);
                let expected: Vec<Range<u64>> = set.iter().rev().take(ack.ranges.len()).collect();
                prop_assert!(ack.ranges.len() <= max_ranges);
                prop_assert_eq!(ack.ranges, expected);
            }
        }
    }
}
