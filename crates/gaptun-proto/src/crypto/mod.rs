//! Keys and packet protection.
//!
//! - [`Psk`]: the pre-shared key that authenticates both ends (raw or stretched from a passphrase);
//! - [`HeaderKey`]: masks the connection ID and packet number so that no header byte is constant;
//! - [`PacketKeys`]: AEAD sealing and opening of packet payloads, one key per direction, with key
//!   updates before the AEAD's confidentiality limit;
//! - [`ReplayWindow`]: rejects packet numbers seen before.

mod header;
mod packet_key;
mod psk;
mod replay;

pub use header::HeaderKey;
pub use packet_key::{CipherSuite, PacketKeys};
pub use psk::{KeyError, Psk};
pub use replay::ReplayWindow;

use thiserror::Error;

/// AEAD failure: the packet was forged, corrupted or sealed with another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("packet failed authentication")]
pub struct CryptoError;
