//! Frames: the units inside a packet's decrypted payload.
//!
//! A payload is a sequence of frames, each starting with a varint type. The layouts are given in
//! `docs/protocol.md` ("Frames"). Decoding never panics and never allocates except for the ranges
//! of an ACK frame; every malformed input is a [`FrameError`].

use std::ops::Range;

use thiserror::Error;

use crate::range_set::RangeSet;
use crate::shared::StreamId;

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
    pub fn header_len(id: StreamId, offset: u64, len: usize) -> usize {
        let _ = (id, offset, len);
        todo!("helper: StreamFrame::header_len")
    }

    /// Appends this frame with an explicit length field.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let _ = buf;
        todo!("helper: StreamFrame::encode")
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
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let _ = buf;
        todo!("helper: Frame::encode")
    }

    /// Whether receiving this frame obliges the receiver to send an ACK.
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Self::Padding | Self::Ack(_) | Self::Close(_))
    }
}

/// Appends an ACK frame for `received`, reporting at most `max_ranges` ranges (the highest ones)
/// and using at most `max_len` bytes; returns false (appending nothing) if not even one range fits.
pub fn encode_ack(
    received: &RangeSet,
    delay_us: u64,
    max_ranges: usize,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> bool {
    let _ = (received, delay_us, max_ranges, max_len, buf);
    todo!("helper: encode_ack")
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
        let _ = &mut self.rest;
        todo!("helper: FrameIter::next")
    }
}
