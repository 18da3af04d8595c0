//! Header masking.

use aes::Aes256;
use aes::cipher::{BlockEncrypt, KeyInit};

use super::{Psk, hkdf_expand};

/// HKDF label of the header key.
pub const HEADER_KEY_LABEL: &[u8] = b"gaptun v1 header";

/// Derives 16-byte masks from a sample of the ciphertext, keyed by the PSK, so that the
/// connection ID and packet number on the wire look random and change with every packet.
///
/// The key is endpoint-wide (derived from the PSK), not per connection: the receiver must unmask
/// the connection ID before it knows which connection a datagram belongs to.
///
/// Not `Clone`: connections share it through an `Arc`, and its AES key schedule is wiped on drop.
pub struct HeaderKey {
    cipher: Aes256,
}

impl HeaderKey {
    /// Derives the header key from the PSK (HKDF-SHA256, label in `docs/protocol.md`).
    pub fn new(psk: &Psk) -> Self {
        let key = zeroize::Zeroizing::new(hkdf_expand::<32>(psk.as_bytes(), HEADER_KEY_LABEL));
        Self {
            cipher: Aes256::new(&(*key).into()),
        }
    }

    /// The mask for a packet whose ciphertext starts with `sample`: AES-256 of the sample.
    pub fn mask(&self, sample: &[u8; 16]) -> [u8; 16] {
        let mut block = (*sample).into();
        self.cipher.encrypt_block(&mut block);
        block.into()
    }
}

impl std::fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_depends_on_key_and_sample() {
        let a = HeaderKey::new(&Psk::from_bytes([1; 32]));
        let b = HeaderKey::new(&Psk::from_bytes([2; 32]));
        let s1 = [0u8; 16];
        let s2 = [1u8; 16];
        assert_eq!(a.mask(&s1), a.mask(&s1));
        assert_ne!(a.mask(&s1), a.mask(&s2));
        assert_ne!(a.mask(&s1), b.mask(&s1));
    }

    /// Known-answer vector, also printed in the protocol spec: psk = 32 x 0x01,
    /// sample = 16 x 0x00.
    #[test]
    fn mask_known_answer() {
        let key = HeaderKey::new(&Psk::from_bytes([1; 32]));
        assert_eq!(key.mask(&[0; 16]), KAT_MASK);
    }

    /// Computed independently (Python `hmac` + `cryptography`).
    const KAT_MASK: [u8; 16] = [
        0x2c, 0x40, 0xed, 0x67, 0x0b, 0x84, 0xc8, 0x97, 0x37, 0x90, 0x7d, 0x00, 0x37, 0x6e, 0x0d,
        0xa8,
    ];
}
