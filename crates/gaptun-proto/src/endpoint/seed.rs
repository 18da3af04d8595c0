//! Where an endpoint's randomness comes from.
//!
//! Ephemeral X25519 keys, connection IDs and padding all come from the endpoint's RNG, so its
//! seed is a secret as strong as the keys it yields: 256 bits from the operating system. A seed
//! of 64 bits would let 2^64 work recover every ephemeral key and undo forward secrecy.
//! [`RngSeed`] records where its bytes came from, so the runtime's bind path can be checked to use
//! the OS (see the runtime's tests) and a seeded shortcut cannot slip into production unnoticed.

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng, TryRngCore};
use thiserror::Error;
use zeroize::Zeroizing;

/// Where the 32 bytes of an [`RngSeed`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOrigin {
    /// 256 bits from the operating system's CSPRNG: what a real endpoint uses.
    Os,
    /// 32 bytes the caller supplied (fuzzing, or a caller with its own entropy source).
    Caller,
    /// Expanded from a 64-bit seed: only for tests and simulations, whose runs must repeat.
    Expanded64,
}

/// The OS refused to provide randomness.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct SeedError(String);

/// A 32-byte RNG seed and its origin. Not `Clone`: a seed should seed one RNG.
pub struct RngSeed {
    bytes: Zeroizing<[u8; 32]>,
    origin: SeedOrigin,
}

impl RngSeed {
    /// 256 bits from the operating system: the only seed a production endpoint should use.
    pub fn from_os() -> Result<Self, SeedError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(|e| SeedError(e.to_string()))?;
        Ok(Self {
            bytes,
            origin: SeedOrigin::Os,
        })
    }

    /// 32 bytes from the caller, who answers for their quality.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
            origin: SeedOrigin::Caller,
        }
    }

    /// Expands a 64-bit seed: reproducible and therefore insecure. Only compiled for tests and
    /// for crates that enable the `test-util` feature (the simulator).
    #[cfg(any(test, feature = "test-util"))]
    pub fn insecure_from_u64(seed: u64) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        StdRng::seed_from_u64(seed).fill_bytes(bytes.as_mut());
        Self {
            bytes,
            origin: SeedOrigin::Expanded64,
        }
    }

    /// Where the bytes came from.
    pub fn origin(&self) -> SeedOrigin {
        self.origin
    }

    /// The RNG this seed starts.
    pub(crate) fn into_rng(self) -> StdRng {
        StdRng::from_seed(*self.bytes)
    }
}

impl std::fmt::Debug for RngSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RngSeed({:?}, ..)", self.origin)
    }
}

/// A per-connection RNG: 32 fresh bytes drawn from the endpoint's RNG (never a 64-bit seed, which
/// would cap the strength of the connection's ephemeral key at 64 bits).
pub(crate) fn child_rng(parent: &mut StdRng) -> StdRng {
    let mut seed = Zeroizing::new([0u8; 32]);
    parent.fill_bytes(seed.as_mut());
    StdRng::from_seed(*seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_seeds_differ_and_say_so() {
        let a = RngSeed::from_os().expect("OS randomness");
        let b = RngSeed::from_os().expect("OS randomness");
        assert_eq!(a.origin(), SeedOrigin::Os);
        assert_ne!(*a.bytes, *b.bytes);
        assert_ne!(*a.bytes, [0u8; 32]);
        assert_eq!(
            RngSeed::insecure_from_u64(1).origin(),
            SeedOrigin::Expanded64
        );
        assert_eq!(format!("{a:?}"), "RngSeed(Os, ..)");
    }

    /// A child RNG takes 32 bytes of its parent's output: two children of one parent differ, and
    /// the child is not the parent's stream re-seeded from 64 of those bits.
    #[test]
    fn child_rngs_take_256_bits() {
        let mut parent = RngSeed::insecure_from_u64(9).into_rng();
        let mut reference = RngSeed::insecure_from_u64(9).into_rng();
        let mut first = [0u8; 32];
        reference.fill_bytes(&mut first);
        let mut a = child_rng(&mut parent);
        let mut b = child_rng(&mut parent);
        assert_eq!(a.next_u64(), StdRng::from_seed(first).next_u64());
        assert_ne!(a.next_u64(), b.next_u64());
        let narrow = u64::from_le_bytes(first[..8].try_into().expect("8 bytes"));
        assert_ne!(
            StdRng::from_seed(first).next_u64(),
            StdRng::seed_from_u64(narrow).next_u64()
        );
    }
}
