//! Keys and packet protection.
//!
//! - [`Psk`]: the pre-shared key that authenticates both ends (raw or stretched from a passphrase);
//! - [`HeaderKey`]: masks the connection ID and packet number so that no header byte is constant;
//! - [`PacketKeys`]: AEAD sealing and opening of packet payloads, one key per direction, with key
//!   updates before the AEAD's confidentiality limit;
//! - [`ReplayWindow`]: rejects packet numbers seen before.
//!
//! Every key gaptun derives from another 32-byte secret uses one primitive, [`hkdf_expand`]:
//! HKDF-Expand-SHA256 (RFC 5869 section 2.3) with the secret as PRK and an ASCII label as info.
//! The labels are listed in `docs/protocol/10-keys-and-packets.md`.

mod header;
mod packet_key;
mod psk;
mod replay;

pub use header::HeaderKey;
pub use packet_key::{CipherSuite, KEY_UPDATE_INTERVAL, PacketKeys};
pub use psk::{KeyError, Psk};
pub use replay::ReplayWindow;

use ring::hkdf;
use thiserror::Error;

/// AEAD failure: the packet was forged, corrupted or sealed with another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("packet failed authentication")]
pub struct CryptoError;

/// Output length for ring's HKDF-Expand.
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-SHA256 with PRK `secret` and info `label`, `N` bytes of output.
///
/// Only Expand: every input is already a uniformly random 32-byte secret (a generated key, an
/// argon2id output, a Noise split key or an earlier output of this function), so the Extract
/// step would add nothing. `N` is at most 32 in gaptun, a single HMAC block.
pub(crate) fn hkdf_expand<const N: usize>(secret: &[u8; 32], label: &[u8]) -> [u8; N] {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
    let mut out = [0u8; N];
    let info = [label];
    // Expand only fails for outputs longer than 255 hash blocks; N is a small constant.
    prk.expand(&info, OkmLen(N))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-Expand output of at most 32 bytes cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 test case 1's PRK and info, expanded with our helper, must give the RFC's OKM
    /// prefix: this pins the primitive a second implementation has to reproduce.
    #[test]
    fn hkdf_expand_matches_rfc5869_case1() {
        let prk: [u8; 32] = [
            0x07, 0x77, 0x09, 0x36, 0x2c, 0x2e, 0x32, 0xdf, 0x0d, 0xdc, 0x3f, 0x0d, 0xc4, 0x7b,
            0xba, 0x63, 0x90, 0xb6, 0xc7, 0x3b, 0xb5, 0x0f, 0x9c, 0x31, 0x22, 0xec, 0x84, 0x4a,
            0xd7, 0xc2, 0xb3, 0xe5,
        ];
        let info: [u8; 10] = [0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9];
        let okm: [u8; 32] = hkdf_expand(&prk, &info);
        let expected: [u8; 32] = [
            0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
            0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
            0xec, 0xc4, 0xc5, 0xbf,
        ];
        assert_eq!(okm, expected);
        let short: [u8; 12] = hkdf_expand(&prk, &info);
        assert_eq!(short[..], expected[..12]);
    }
}
