//! The pre-shared key.

use std::fmt;
use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use thiserror::Error;
use zeroize::Zeroizing;

/// Prefix of the text form of a generated key; the `1` is the format version.
pub const KEY_PREFIX: &str = "gt1:";
/// Shortest passphrase accepted, in characters (Unicode scalar values).
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// argon2id salt for passphrases. Fixed so that both ends derive the same key from the same
/// passphrase with nothing else to configure; it only separates gaptun's hashes from other uses.
pub const PASSPHRASE_SALT: &[u8] = b"gaptun v1 passphrase salt";
/// argon2id memory cost in KiB (19 MiB: OWASP's minimum recommendation for argon2id).
pub const PASSPHRASE_M_COST_KIB: u32 = 19 * 1024;
/// argon2id passes.
pub const PASSPHRASE_T_COST: u32 = 2;
/// argon2id lanes.
pub const PASSPHRASE_P_COST: u32 = 1;

/// 32 bytes shared by client and server. Never printed (`Debug` shows `Psk(..)`), and wiped from
/// memory when the last handle is dropped.
///
/// `Clone` shares one heap copy of the bytes (an `Arc`) instead of duplicating them: configs and
/// endpoints hold the key in several places, and sharing keeps exactly one copy to wipe.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Arc<Zeroizing<[u8; 32]>>);

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Empty keys and very short passphrases are refused.
    #[error("key is too short: use `gaptun keygen` or a passphrase of at least 8 characters")]
    TooShort,
    /// The string has the `gt1:` prefix of a generated key but does not decode.
    #[error("key starts with `gt1:` but is not a valid generated key")]
    BadEncoding,
    /// argon2id refused the passphrase (only possible for passphrases over 4 GiB).
    #[error("passphrase could not be stretched")]
    Stretch,
}

impl Psk {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Arc::new(Zeroizing::new(bytes)))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether two handles share one copy of the bytes (what `clone` gives).
    #[cfg(test)]
    fn shares_bytes_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Parses what a user typed: a key printed by [`Psk::to_key_string`] (`gt1:` + base64) is used
    /// as is; anything else is a passphrase, stretched once with argon2id.
    ///
    /// Whitespace around a `gt1:` key is ignored (keys are often pasted or read from files with
    /// a trailing newline); a passphrase is used exactly as given.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        match key.trim().strip_prefix(KEY_PREFIX) {
            Some(encoded) => Self::decode(encoded),
            None => Self::from_passphrase(key),
        }
    }

    /// Stretches a passphrase with argon2id (fixed, documented salt and cost).
    pub fn from_passphrase(passphrase: &str) -> Result<Self, KeyError> {
        if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(KeyError::TooShort);
        }
        let params = Params::new(
            PASSPHRASE_M_COST_KIB,
            PASSPHRASE_T_COST,
            PASSPHRASE_P_COST,
            Some(32),
        )
        .map_err(|_| KeyError::Stretch)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), PASSPHRASE_SALT, out.as_mut())
            .map_err(|_| KeyError::Stretch)?;
        Ok(Self(Arc::new(out)))
    }

    /// A fresh random key from `rng`.
    pub fn generate(rng: &mut dyn rand::RngCore) -> Self {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(b.as_mut());
        Self(Arc::new(b))
    }

    /// The `gt1:` text form that [`Psk::parse`] reads back: the prefix and the 32 bytes in
    /// standard base64 without padding (43 characters).
    pub fn to_key_string(&self) -> String {
        format!("{KEY_PREFIX}{}", STANDARD_NO_PAD.encode(self.as_bytes()))
    }

    /// Decodes the base64 part of a `gt1:` key. Trailing `=` padding is tolerated.
    fn decode(encoded: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            STANDARD_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .map_err(|_| KeyError::BadEncoding)?,
        );
        let raw: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::BadEncoding)?;
        Ok(Self::from_bytes(raw))
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn keygen_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            let psk = Psk::generate(&mut rng);
            let text = psk.to_key_string();
            assert!(text.starts_with("gt1:"));
            assert_eq!(text.len(), 4 + 43);
            assert_eq!(Psk::parse(&text), Ok(psk.clone()));
            assert_eq!(Psk::parse(&format!("  {text}\n")), Ok(psk.clone()));
            assert_eq!(Psk::parse(&format!("{text}=")), Ok(psk));
        }
    }

    #[test]
    fn known_key_string() {
        let psk = Psk::from_bytes([0xff; 32]);
        assert_eq!(psk.to_key_string(), format!("gt1:{}8", "/".repeat(42)));
        let zero = Psk::from_bytes([0; 32]);
        assert_eq!(zero.to_key_string(), format!("gt1:{}", "A".repeat(43)));
    }

    #[test]
    fn bad_generated_keys_are_refused() {
        assert_eq!(Psk::parse("gt1:"), Err(KeyError::BadEncoding));
        assert_eq!(Psk::parse("gt1:not base64!"), Err(KeyError::BadEncoding));
        // 31 bytes and 33 bytes.
        let short = format!("gt1:{}", STANDARD_NO_PAD.encode([1u8; 31]));
        let long = format!("gt1:{}", STANDARD_NO_PAD.encode([1u8; 33]));
        assert_eq!(Psk::parse(&short), Err(KeyError::BadEncoding));
        assert_eq!(Psk::parse(&long), Err(KeyError::BadEncoding));
    }

    #[test]
    fn short_passphrases_are_refused() {
        assert_eq!(Psk::parse(""), Err(KeyError::TooShort));
        assert_eq!(Psk::parse("1234567"), Err(KeyError::TooShort));
        // Seven characters but more than eight bytes: characters count.
        assert_eq!(Psk::parse("ééééééé"), Err(KeyError::TooShort));
    }

    #[test]
    fn passphrase_is_deterministic_and_distinct() {
        let a = Psk::parse("correct horse battery staple").unwrap();
        let b = Psk::from_passphrase("correct horse battery staple").unwrap();
        let c = Psk::parse("correct horse battery stapler").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.as_bytes(), &[0u8; 32]);
    }

    /// Known answer computed independently (Python `cryptography`'s Argon2id with the
    /// documented salt and cost); also in the protocol spec.
    #[test]
    fn passphrase_known_answer() {
        let psk = Psk::parse("correct horse battery staple").unwrap();
        assert_eq!(
            psk.to_key_string(),
            "gt1:+CWX8aaveYu36c5X3RQn8xYZYBzvyo/NqlXOF2xjKDI"
        );
    }

    #[test]
    fn clones_share_one_copy() {
        let psk = Psk::from_bytes([0x11; 32]);
        let copy = psk.clone();
        assert!(psk.shares_bytes_with(&copy));
        assert!(!psk.shares_bytes_with(&Psk::from_bytes([0x11; 32])));
        assert_eq!(psk, copy);
    }

    #[test]
    fn debug_hides_the_key() {
        let psk = Psk::from_bytes([0xab; 32]);
        assert_eq!(format!("{psk:?}"), "Psk(..)");
    }
}
