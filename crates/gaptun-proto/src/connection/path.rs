//! The network path to the peer: its address, whether it is validated, and the
//! anti-amplification budget that applies until it is.

use std::net::SocketAddr;

/// Before a path is validated we send at most this many times what we received on it, so that
/// a forged source address cannot turn us into an amplifier.
pub(super) const AMPLIFICATION_FACTOR: u64 = 3;

#[derive(Debug, Clone)]
pub(super) struct Path {
    pub(super) remote: SocketAddr,
    /// The peer proved it receives at this address (handshake confirmed or PATH_RESPONSE).
    pub(super) validated: bool,
    /// Bytes received from and sent to `remote` since it became the path.
    pub(super) bytes_received: u64,
    pub(super) bytes_sent: u64,
    /// Outstanding PATH_CHALLENGE data.
    pub(super) challenge: Option<[u8; 8]>,
    /// Whether a PATH_CHALLENGE must go out in the next packet.
    pub(super) challenge_pending: bool,
}

impl Path {
    pub(super) fn new(remote: SocketAddr, validated: bool) -> Self {
        Self {
            remote,
            validated,
            bytes_received: 0,
            bytes_sent: 0,
            challenge: None,
            challenge_pending: false,
        }
    }

    /// Bytes we may still send on this path now.
    pub(super) fn send_budget(&self) -> u64 {
        if self.validated {
            u64::MAX
        } else {
            (self.bytes_received * AMPLIFICATION_FACTOR).saturating_sub(self.bytes_sent)
        }
    }
}
