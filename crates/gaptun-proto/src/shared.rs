//! Small types shared by every layer.

use std::fmt;
use std::net::SocketAddr;

/// Which end of a connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Sent the first handshake message.
    Client,
    /// Answered it.
    Server,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// Identifies a bidirectional stream within a connection.
///
/// The lowest bit says who opened it (0: client, 1: server); the rest is a per-side counter, so
/// both sides can open streams without coordinating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The `index`-th stream opened by `initiator`.
    pub fn new(initiator: Side, index: u64) -> Self {
        let bit = match initiator {
            Side::Client => 0,
            Side::Server => 1,
        };
        Self((index << 1) | bit)
    }

    /// The side that opened this stream.
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }

    /// The per-initiator counter of this stream.
    pub fn index(self) -> u64 {
        self.0 >> 1
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// A datagram (or a batch of equal-sized datagrams, for GSO) that the caller must send.
///
/// The bytes are in the buffer passed to `poll_transmit`; this is the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Total bytes written into the buffer.
    pub size: usize,
    /// When set, the buffer holds several datagrams of this size (the last may be shorter), to be
    /// sent with one GSO call or split by the caller.
    pub segment_size: Option<usize>,
}
