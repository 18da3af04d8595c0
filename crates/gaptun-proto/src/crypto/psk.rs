//! The pre-shared key.

use std::fmt;

use thiserror::Error;

/// 32 bytes shared by client and server. Never printed: `Debug` shows a fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; 32]);

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Empty keys and very short passphrases are refused.
    #[error("key is too short: use `gaptun keygen` or a passphrase of at least 8 characters")]
    TooShort,
    /// The string has the `gt1:` prefix of a generated key but does not decode.
    #[error("key starts with `gt1:` but is not a valid generated key")]
    BadEncoding,
}

impl Psk {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses what a user typed: a key printed by [`Psk::to_key_string`] (`gt1:` + base64) is used
    /// as is; anything else is a passphrase, stretched once with argon2id.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let _ = key;
        todo!("helper: Psk::parse")
    }

    /// Stretches a passphrase with argon2id (fixed, documented salt and cost).
    pub fn from_passphrase(passphrase: &str) -> Result<Self, KeyError> {
        let _ = passphrase;
        todo!("helper: Psk::from_passphrase")
    }

    /// A fresh random key from `rng`.
    pub fn generate(rng: &mut dyn rand::RngCore) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// The `gt1:` text form that [`Psk::parse`] reads back.
    pub fn to_key_string(&self) -> String {
        todo!("helper: Psk::to_key_string")
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}
