//! AEAD packet protection with key updates.

use super::CryptoError;

/// The AEADs gaptun speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// AES-256-GCM: fastest where the CPU has AES instructions.
    Aes256Gcm,
    /// ChaCha20-Poly1305: fastest without them.
    ChaCha20Poly1305,
}

impl CipherSuite {
    /// AES-256-GCM if this CPU has AES and carry-less multiply instructions, else ChaCha20-Poly1305.
    pub fn preferred_for_this_cpu() -> Self {
        todo!("helper: CipherSuite::preferred_for_this_cpu")
    }

    /// Wire code (see `docs/protocol.md`).
    pub fn code(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::ChaCha20Poly1305 => 2,
        }
    }

    /// Inverse of [`CipherSuite::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// Both directions' packet keys of one connection, with key-update state.
///
/// Nonces are the packet number XOR a per-key IV, so a packet number must never be sealed twice
/// (the connection guarantees this: packet numbers only grow).
pub struct PacketKeys {
    _private: (),
}

impl PacketKeys {
    /// Builds the keys from the two 32-byte traffic secrets the handshake produced.
    pub fn new(suite: CipherSuite, send_secret: [u8; 32], recv_secret: [u8; 32]) -> Self {
        let _ = (suite, send_secret, recv_secret);
        todo!("helper: PacketKeys::new")
    }

    /// The negotiated suite.
    pub fn suite(&self) -> CipherSuite {
        todo!("helper: PacketKeys::suite")
    }

    /// Key phase bit to put in the header of packet `pn`; rotates the send key when the current
    /// one has sealed its quota of packets.
    pub fn send_phase(&mut self, pn: u64) -> bool {
        let _ = pn;
        todo!("helper: PacketKeys::send_phase")
    }

    /// Encrypts `payload[..]` in place and appends the 16-byte tag. `aad` is the unmasked header.
    pub fn seal(&mut self, phase: bool, pn: u64, aad: &[u8], payload: &mut Vec<u8>) {
        let _ = (phase, pn, aad, payload);
        todo!("helper: PacketKeys::seal")
    }

    /// Decrypts `ciphertext` (payload plus tag) in place and returns the plaintext length.
    pub fn open(
        &mut self,
        phase: bool,
        pn: u64,
        aad: &[u8],
        ciphertext: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let _ = (phase, pn, aad, ciphertext);
        todo!("helper: PacketKeys::open")
    }
}

impl std::fmt::Debug for PacketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKeys(..)")
    }
}
