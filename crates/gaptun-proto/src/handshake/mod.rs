//! The handshake: Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s`, one round trip, wrapped so that it
//! looks like random bytes on the wire.
//!
//! The client's first flight (Initial) proves knowledge of the PSK and carries an ephemeral
//! X25519 key, a timestamp and the client's transport parameters; the server's answer (Response)
//! carries its ephemeral key and parameters. Both ends then derive the traffic secrets for
//! [`PacketKeys`]; the client can send stream data in its very next packet.
//!
//! A server answers nothing it cannot authenticate. Initials outside the timestamp window, or
//! seen before (see [`ReplayCache`]), are dropped silently, so a replayed Initial does not reveal
//! the server either. See `docs/protocol.md` ("Handshake") for the byte layout.

mod replay_cache;

pub use replay_cache::ReplayCache;

use std::time::Duration;

use thiserror::Error;

use crate::crypto::{CipherSuite, PacketKeys, Psk};
use crate::packet::ConnectionId;

/// What each side tells the other about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportParams {
    /// Initial connection-level flow-control credit the sender grants (bytes).
    pub max_data: u64,
    /// Initial per-stream flow-control credit the sender grants (bytes).
    pub max_stream_data: u64,
    /// How many streams the peer may open at first.
    pub max_streams: u64,
    /// The sender's idle timeout in milliseconds (the smaller of both sides' applies; 0 = none).
    pub idle_timeout_ms: u64,
    /// Largest UDP payload the sender will accept.
    pub max_udp_payload: u16,
    /// Cipher suites the sender supports, most preferred first (the server's list has one entry:
    /// its choice).
    pub ciphers: Vec<CipherSuite>,
}

/// Why a handshake datagram was refused. All of these lead to a silent drop on the server.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Not a handshake message of the expected kind, or failed authentication (wrong key,
    /// corrupted, or random bytes).
    #[error("handshake message failed authentication or is malformed")]
    Invalid,
    /// The Initial's timestamp is outside the accepted window.
    #[error("handshake timestamp outside the accepted window")]
    Stale,
    /// This Initial was seen before.
    #[error("replayed handshake message")]
    Replayed,
    /// No cipher suite in common.
    #[error("no cipher suite in common")]
    NoCommonCipher,
}

/// The result of a completed handshake, on either side.
#[derive(Debug)]
pub struct Established {
    /// The connection ID the peer wants on the packets we send it.
    pub peer_cid: ConnectionId,
    /// The peer's transport parameters.
    pub peer_params: TransportParams,
    /// Packet keys for this side.
    pub keys: PacketKeys,
}

/// The client's half-finished handshake.
pub struct ClientHandshake {
    _private: (),
}

impl ClientHandshake {
    /// Starts a handshake. Returns the state and the Initial datagram to send (padded to a random
    /// length drawn from `rng`, at least [`MIN_INITIAL_LEN`] bytes and at most `max_len`).
    pub fn start(
        psk: &Psk,
        client_cid: ConnectionId,
        params: &TransportParams,
        unix_time: Duration,
        max_len: usize,
        rng: &mut dyn rand::RngCore,
    ) -> (Self, Vec<u8>) {
        let _ = (psk, client_cid, params, unix_time, max_len, rng);
        todo!("helper: ClientHandshake::start")
    }

    /// Processes the server's Response.
    pub fn finish(self, datagram: &[u8]) -> Result<Established, HandshakeError> {
        let _ = datagram;
        todo!("helper: ClientHandshake::finish")
    }
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake(..)")
    }
}

/// Shortest Initial a client sends; the server answers at most 3x what it received.
pub const MIN_INITIAL_LEN: usize = 1000;

/// If `datagram` is a Response (checked with the PSK's obfuscation key only, no Noise work),
/// the client connection ID it answers. Used by a client endpoint to route Responses.
pub fn peek_response_cid(psk: &Psk, datagram: &[u8]) -> Option<ConnectionId> {
    let _ = (psk, datagram);
    todo!("helper: peek_response_cid")
}

/// A server's view of an accepted Initial.
#[derive(Debug)]
pub struct Accepted {
    /// Keys, the client's connection ID and parameters.
    pub established: Established,
    /// Which of the server's PSKs the client used.
    pub psk_index: usize,
    /// The Response datagram to send back (at most 3x the Initial's length).
    pub response: Vec<u8>,
}

/// Server side: authenticates an Initial against each PSK, checks its timestamp against
/// `unix_time` +- `window` and the replay cache, picks a cipher (`cipher` if the client offers
/// it, else the client's first choice), and builds the Response.
#[allow(clippy::too_many_arguments)]
pub fn accept_initial(
    psks: &[Psk],
    replay: &mut ReplayCache,
    datagram: &[u8],
    server_cid: ConnectionId,
    params: &TransportParams,
    cipher: Option<CipherSuite>,
    unix_time: Duration,
    window: Duration,
    rng: &mut dyn rand::RngCore,
) -> Result<Accepted, HandshakeError> {
    let _ = (
        psks, replay, datagram, server_cid, params, cipher, unix_time, window, rng,
    );
    todo!("helper: accept_initial")
}
