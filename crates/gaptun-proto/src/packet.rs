//! Protected packets: the layout of every datagram after the handshake.
//!
//! ```text
//! +----------------------+----------------------------+-----------------------------+
//! | connection ID (8)    | key phase (1 bit) | PN (31) | AEAD(payload) + tag (16)    |
//! +----------------------+----------------------------+-----------------------------+
//!  \______ masked with HeaderKey::mask(first 16 ciphertext bytes)[..12] ______/
//! ```
//! The AEAD's associated data is the unmasked 12-byte header. The receiver reconstructs the full
//! 62-bit packet number from the 31 low bits and the largest number it has received.

use thiserror::Error;

use crate::crypto::{CryptoError, HeaderKey, PacketKeys};

/// Length of a connection ID.
pub const CID_LEN: usize = 8;
/// Length of the header: connection ID plus the packet-number field.
pub const HEADER_LEN: usize = CID_LEN + 4;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Shortest datagram that can be a protected packet.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + TAG_LEN;

/// Chosen by each endpoint for the packets it receives; how datagrams are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub [u8; CID_LEN]);

/// Why a datagram was not accepted as a packet of a known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketError {
    /// Shorter than [`MIN_PACKET_LEN`].
    #[error("datagram too short to be a packet")]
    TooShort,
    /// Authentication failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Reserves room for the header at the end of `buf` and returns where the packet starts. The
/// caller then appends the plaintext payload and calls [`seal`].
pub fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.resize(start + HEADER_LEN, 0);
    start
}

/// Completes the packet that starts at `start` in `buf`: writes the header, encrypts the payload
/// that follows it, appends the tag and masks the header.
pub fn seal(
    header_key: &HeaderKey,
    keys: &mut PacketKeys,
    cid: ConnectionId,
    pn: u64,
    buf: &mut Vec<u8>,
    start: usize,
) {
    let _ = (header_key, keys, cid, pn, buf, start);
    todo!("helper: packet::seal")
}

/// Unmasks just the connection ID of `datagram`, for routing. `None` if it is too short.
pub fn peek_cid(header_key: &HeaderKey, datagram: &[u8]) -> Option<ConnectionId> {
    let _ = (header_key, datagram);
    todo!("helper: packet::peek_cid")
}

/// Authenticates and decrypts `datagram` in place. `largest_pn` is the largest packet number
/// received so far on this connection (`None` before the first), used to expand the truncated
/// number. Returns the full packet number and the plaintext payload.
pub fn open<'a>(
    header_key: &HeaderKey,
    keys: &mut PacketKeys,
    largest_pn: Option<u64>,
    datagram: &'a mut [u8],
) -> Result<(u64, &'a [u8]), PacketError> {
    let _ = (header_key, keys, largest_pn, datagram);
    todo!("helper: packet::open")
}
