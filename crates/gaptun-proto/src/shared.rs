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

/// One of the caller's carriers: what moves datagrams (a UDP socket, a fake-TCP flow table...).
///
/// The core never looks inside: the caller numbers its carriers, passes the number with every
/// datagram it delivers, and sends each [`Transmit`] on the carrier it names. Carrier 0 is the
/// one a caller with a single socket uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CarrierId(pub u16);

impl fmt::Display for CarrierId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "carrier {}", self.0)
    }
}

/// A network path to the peer: which of our carriers, and the peer's address on it. (The local
/// address is the carrier's own.) Validation, migration and path health are kept per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathAddr {
    /// The carrier the path uses.
    pub carrier: CarrierId,
    /// The peer's address on that carrier.
    pub remote: SocketAddr,
}

impl PathAddr {
    /// `remote` on `carrier`.
    pub fn new(carrier: CarrierId, remote: SocketAddr) -> Self {
        Self { carrier, remote }
    }

    /// `remote` on carrier 0 (a caller with one socket).
    pub fn single(remote: SocketAddr) -> Self {
        Self::new(CarrierId::default(), remote)
    }
}

impl fmt::Display for PathAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.remote, self.carrier)
    }
}

/// A datagram (or a batch of equal-sized datagrams, for GSO) that the caller must send.
///
/// The bytes are in the buffer passed to `poll_transmit`; this is the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// The carrier to send it on.
    pub carrier: CarrierId,
    /// Where to send it.
    pub destination: SocketAddr,
    /// Total bytes written into the buffer.
    pub size: usize,
    /// When set, the buffer holds several datagrams of this size (the last may be shorter), to be
    /// sent with one GSO call or split by the caller.
    pub segment_size: Option<usize>,
}

impl Transmit {
    /// A transmit of `size` bytes on `path`.
    pub(crate) fn to(path: PathAddr, size: usize, segment_size: Option<usize>) -> Self {
        Self {
            carrier: path.carrier,
            destination: path.remote,
            size,
            segment_size,
        }
    }

    /// The path it goes out on.
    pub fn path(&self) -> PathAddr {
        PathAddr::new(self.carrier, self.destination)
    }
}
