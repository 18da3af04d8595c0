//! AEAD packet protection with key updates.
//!
//! Each direction has a chain of key generations: generation 0 comes from the handshake's traffic
//! secret, generation `n + 1` from generation `n`'s secret (label [`KEY_UPDATE_LABEL`]). The key
//! phase bit in the header is the generation's parity. The sender moves to the next generation
//! after sealing [`KEY_UPDATE_INTERVAL`] packets; the receiver follows when a packet with the other
//! phase bit and a packet number above everything of its current generation authenticates under
//! the next generation's key, and keeps the previous generation for late packets.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::{CryptoError, hkdf_expand};

/// Packets sealed under one key generation before the sender moves to the next.
///
/// 2^22 keeps AES-256-GCM well inside its confidentiality limit (2^23 full-size packets per key,
/// RFC 9001 section 6.6) and costs one HKDF every few seconds at gigabit rates.
pub const KEY_UPDATE_INTERVAL: u64 = 1 << 22;
/// HKDF label deriving a generation's AEAD key from its secret.
pub const KEY_LABEL: &[u8] = b"gaptun v1 key";
/// HKDF label deriving a generation's 12-byte IV from its secret.
pub const IV_LABEL: &[u8] = b"gaptun v1 iv";
/// HKDF label deriving generation `n + 1`'s secret from generation `n`'s.
pub const KEY_UPDATE_LABEL: &[u8] = b"gaptun v1 key update";
/// Length of the AEAD tag appended to every sealed payload.
const TAG_LEN: usize = 16;

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
        if cpu_has_aes() {
            Self::Aes256Gcm
        } else {
            Self::ChaCha20Poly1305
        }
    }

    /// The name used in configuration and logs (`--cipher`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes-256-gcm",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
        }
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

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn cpu_has_aes() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn cpu_has_aes() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has_aes() -> bool {
    false
}

/// One key generation of one direction: secret, AEAD key and IV. The secret and the raw key
/// bytes are wiped when dropped (ring keeps its own expanded key schedule).
struct Generation {
    secret: Zeroizing<[u8; 32]>,
    key: LessSafeKey,
    iv: [u8; 12],
    phase: bool,
}

impl Generation {
    fn new(suite: CipherSuite, secret: [u8; 32], phase: bool) -> Self {
        let secret = Zeroizing::new(secret);
        let key_bytes: Zeroizing<[u8; 32]> = Zeroizing::new(hkdf_expand(&secret, KEY_LABEL));
        let iv: [u8; 12] = hkdf_expand(&secret, IV_LABEL);
        // Both suites take 32-byte keys, the only thing `UnboundKey::new` checks.
        let unbound = UnboundKey::new(suite.algorithm(), key_bytes.as_ref())
            .expect("AES-256-GCM and ChaCha20-Poly1305 take 32-byte keys");
        Self {
            secret,
            key: LessSafeKey::new(unbound),
            iv,
            phase,
        }
    }

    fn next(&self, suite: CipherSuite) -> Self {
        Self::new(
            suite,
            hkdf_expand(&self.secret, KEY_UPDATE_LABEL),
            !self.phase,
        )
    }

    /// IV XOR the packet number, big-endian, in the last 8 bytes.
    fn nonce(&self, pn: u64) -> Nonce {
        let mut n = self.iv;
        for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }

    fn open<'a>(&self, pn: u64, aad: &[u8], ct: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        self.key
            .open_in_place(self.nonce(pn), Aad::from(aad), ct)
            .map_err(|_| CryptoError)
    }
}

/// Sending half: the current generation and how many packets it sealed.
struct SendKeys {
    current: Generation,
    sealed: u64,
}

/// Receiving half: the current generation, the one before (for late packets) and the one after
/// (derived on first need), plus the packet-number range the current one has opened.
struct RecvKeys {
    current: Generation,
    previous: Option<Generation>,
    next: Option<Generation>,
    /// Smallest packet number opened with `current` (`None` before the first, in generation 0).
    lowest: Option<u64>,
    /// Largest packet number opened with `current`.
    largest: Option<u64>,
}

/// Which generation a received packet is tried with.
enum Candidate {
    Current,
    Previous,
    Next,
}

impl RecvKeys {
    /// Picks the one generation that can have sealed packet `pn` with key phase `phase`.
    ///
    /// The sender's packet numbers grow and its generations follow one another, so every packet
    /// of generation `n - 1` has a smaller number than every packet of `n`, and those of `n + 1` a
    /// larger one. A packet with the other phase bit is therefore from `n - 1` if its number is
    /// below the lowest seen in `n`, from `n + 1` if above the largest, and forged otherwise.
    fn candidate(&self, phase: bool, pn: u64) -> Option<Candidate> {
        if phase == self.current.phase {
            return Some(Candidate::Current);
        }
        if self.largest.is_none_or(|largest| pn > largest) {
            return Some(Candidate::Next);
        }
        match (self.lowest, &self.previous) {
            (Some(lowest), Some(_)) if pn < lowest => Some(Candidate::Previous),
            _ => None,
        }
    }

    fn note_opened(&mut self, pn: u64) {
        self.lowest = Some(self.lowest.map_or(pn, |l| l.min(pn)));
        self.largest = Some(self.largest.map_or(pn, |l| l.max(pn)));
    }

    /// Makes `next` (already authenticated a packet) the current generation.
    fn advance(&mut self, next: Generation) {
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some(old);
        self.lowest = None;
        self.largest = None;
    }
}

/// Both directions' packet keys of one connection, with key-update state.
///
/// Nonces are the packet number XOR a per-key IV, so a packet number must never be sealed twice
/// (the connection guarantees this: packet numbers only grow).
pub struct PacketKeys {
    suite: CipherSuite,
    send: SendKeys,
    recv: RecvKeys,
    update_interval: u64,
}

impl PacketKeys {
    /// Builds the keys from the two 32-byte traffic secrets the handshake produced.
    pub fn new(suite: CipherSuite, send_secret: [u8; 32], recv_secret: [u8; 32]) -> Self {
        Self {
            suite,
            send: SendKeys {
                current: Generation::new(suite, send_secret, false),
                sealed: 0,
            },
            recv: RecvKeys {
                current: Generation::new(suite, recv_secret, false),
                previous: None,
                next: None,
                lowest: None,
                largest: None,
            },
            update_interval: KEY_UPDATE_INTERVAL,
        }
    }

    /// Changes how many packets the sender seals per key generation (at least 1). Meant for
    /// tests that exercise key updates; both ends need not agree on it.
    pub fn with_update_interval(mut self, packets: u64) -> Self {
        self.update_interval = packets.max(1);
        self
    }

    /// The negotiated suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// Key phase bit to put in the header of packet `pn`; rotates the send key when the current
    /// one has sealed its quota of packets.
    ///
    /// Call it exactly once per packet, right before sealing it: each call counts one packet
    /// against the current generation's quota.
    pub fn send_phase(&mut self, pn: u64) -> bool {
        let _ = pn;
        if self.send.sealed >= self.update_interval {
            self.send.current = self.send.current.next(self.suite);
            self.send.sealed = 0;
        }
        self.send.sealed += 1;
        self.send.current.phase
    }

    /// Encrypts `payload[..]` in place and appends the 16-byte tag. `aad` is the unmasked header.
    ///
    /// `phase` must be what [`PacketKeys::send_phase`] returned for `pn`; the current send key is
    /// used in any case.
    pub fn seal(&mut self, phase: bool, pn: u64, aad: &[u8], payload: &mut Vec<u8>) {
        let tag = self.seal_detached(phase, pn, aad, payload);
        payload.extend_from_slice(&tag);
    }

    /// Like [`PacketKeys::seal`] but leaves the tag to the caller, so that the payload can live
    /// in a larger buffer without copying.
    ///
    /// ring refuses only inputs of many gigabytes; should it ever refuse, the payload is zeroed
    /// and an all-zero tag returned, so the plaintext never leaves and the peer drops the packet.
    pub fn seal_detached(
        &mut self,
        phase: bool,
        pn: u64,
        aad: &[u8],
        payload: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let _ = phase;
        let current = &self.send.current;
        match current
            .key
            .seal_in_place_separate_tag(current.nonce(pn), Aad::from(aad), payload)
        {
            Ok(tag) => {
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
            Err(_) => {
                payload.fill(0);
                [0u8; TAG_LEN]
            }
        }
    }

    /// Decrypts `ciphertext` (payload plus tag) in place and returns the plaintext length.
    ///
    /// On failure the contents of `ciphertext` are unspecified.
    pub fn open(
        &mut self,
        phase: bool,
        pn: u64,
        aad: &[u8],
        ciphertext: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let len = match self.recv.candidate(phase, pn).ok_or(CryptoError)? {
            Candidate::Current => self.recv.current.open(pn, aad, ciphertext)?.len(),
            Candidate::Previous => match &self.recv.previous {
                Some(prev) => return Ok(prev.open(pn, aad, ciphertext)?.len()),
                None => return Err(CryptoError),
            },
            Candidate::Next => {
                let suite = self.suite;
                let next = self
                    .recv
                    .next
                    .get_or_insert_with(|| self.recv.current.next(suite));
                let len = next.open(pn, aad, ciphertext)?.len();
                if let Some(next) = self.recv.next.take() {
                    self.recv.advance(next);
                }
                len
            }
        };
        self.recv.note_opened(pn);
        Ok(len)
    }
}

impl std::fmt::Debug for PacketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKeys(..)")
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const SUITES: [CipherSuite; 2] = [CipherSuite::Aes256Gcm, CipherSuite::ChaCha20Poly1305];

    fn pair(suite: CipherSuite, interval: u64) -> (PacketKeys, PacketKeys) {
        let a = [0x11; 32];
        let b = [0x22; 32];
        (
            PacketKeys::new(suite, a, b).with_update_interval(interval),
            PacketKeys::new(suite, b, a).with_update_interval(interval),
        )
    }

    /// Seals packet `pn` with `payload` and returns (phase, ciphertext).
    fn seal(keys: &mut PacketKeys, pn: u64, payload: &[u8]) -> (bool, Vec<u8>) {
        let phase = keys.send_phase(pn);
        let mut buf = payload.to_vec();
        keys.seal(phase, pn, &pn.to_be_bytes(), &mut buf);
        (phase, buf)
    }

    fn open(
        keys: &mut PacketKeys,
        phase: bool,
        pn: u64,
        ct: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buf = ct.to_vec();
        let len = keys.open(phase, pn, &pn.to_be_bytes(), &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    #[test]
    fn codes_round_trip() {
        for suite in SUITES {
            assert_eq!(CipherSuite::from_code(suite.code()), Some(suite));
        }
        assert_eq!(CipherSuite::from_code(0), None);
        assert_eq!(CipherSuite::from_code(3), None);
    }

    #[test]
    fn preferred_suite_is_stable() {
        assert_eq!(
            CipherSuite::preferred_for_this_cpu(),
            CipherSuite::preferred_for_this_cpu()
        );
    }

    #[test]
    fn round_trip_both_directions() {
        for suite in SUITES {
            let (mut a, mut b) = pair(suite, KEY_UPDATE_INTERVAL);
            assert_eq!(a.suite(), suite);
            for pn in 0..10u64 {
                let msg = vec![pn as u8; pn as usize * 10];
                let (phase, ct) = seal(&mut a, pn, &msg);
                assert!(!phase);
                assert_eq!(ct.len(), msg.len() + TAG_LEN);
                assert_eq!(open(&mut b, phase, pn, &ct).unwrap(), msg);
                let (phase, ct) = seal(&mut b, pn, &msg);
                assert_eq!(open(&mut a, phase, pn, &ct).unwrap(), msg);
            }
        }
    }

    #[test]
    fn detached_tag_matches_appended_tag() {
        let (mut a, _) = pair(CipherSuite::Aes256Gcm, 100);
        let (mut a2, _) = pair(CipherSuite::Aes256Gcm, 100);
        let mut v = b"hello".to_vec();
        a.seal(false, 3, b"hdr", &mut v);
        let mut w = *b"hello";
        let tag = a2.seal_detached(false, 3, b"hdr", &mut w);
        assert_eq!(&v[..5], &w);
        assert_eq!(&v[5..], &tag);
    }

    #[test]
    fn wrong_pn_aad_key_or_phase_fails() {
        for suite in SUITES {
            let (mut a, mut b) = pair(suite, KEY_UPDATE_INTERVAL);
            let (phase, ct) = seal(&mut a, 5, b"payload");
            let mut buf = ct.clone();
            assert_eq!(
                b.open(phase, 6, &5u64.to_be_bytes(), &mut buf),
                Err(CryptoError)
            );
            let mut buf = ct.clone();
            assert_eq!(
                b.open(phase, 5, &6u64.to_be_bytes(), &mut buf),
                Err(CryptoError)
            );
            // The sender's own receive key is the other direction's.
            assert_eq!(open(&mut a, phase, 5, &ct), Err(CryptoError));
            // Claiming the other phase makes the receiver try generation 1, which fails.
            assert_eq!(open(&mut b, !phase, 5, &ct), Err(CryptoError));
            // A failed attempt changed nothing.
            assert_eq!(open(&mut b, phase, 5, &ct).unwrap(), b"payload");
            let (mut other, _) = pair(suite, KEY_UPDATE_INTERVAL);
            assert_eq!(open(&mut other, phase, 5, &ct), Err(CryptoError));
        }
    }

    #[test]
    fn short_ciphertexts_fail_without_panic() {
        let (_, mut b) = pair(CipherSuite::ChaCha20Poly1305, 10);
        for len in 0..40 {
            let mut buf = vec![0u8; len];
            assert_eq!(b.open(false, 0, &[], &mut buf), Err(CryptoError));
            assert_eq!(b.open(true, 1, &[], &mut buf), Err(CryptoError));
        }
    }

    #[test]
    fn nonce_is_iv_xor_pn() {
        let generation = Generation::new(CipherSuite::Aes256Gcm, [3; 32], false);
        let iv: [u8; 12] = hkdf_expand(&[3; 32], IV_LABEL);
        let nonce = generation.nonce(0x0102_0304_0506_0708);
        let mut expected = iv;
        for (i, b) in [1u8, 2, 3, 4, 5, 6, 7, 8].iter().enumerate() {
            expected[4 + i] ^= b;
        }
        assert_eq!(nonce.as_ref(), &expected);
    }

    #[test]
    fn sender_rotates_after_interval() {
        let (mut a, _) = pair(CipherSuite::Aes256Gcm, 3);
        let phases: Vec<bool> = (0..10).map(|pn| a.send_phase(pn)).collect();
        assert_eq!(
            phases,
            [
                false, false, false, true, true, true, false, false, false, true
            ]
        );
    }

    #[test]
    fn key_update_in_order() {
        for suite in SUITES {
            let (mut a, mut b) = pair(suite, 4);
            for pn in 0..50 {
                let (phase, ct) = seal(&mut a, pn, &pn.to_le_bytes());
                assert_eq!(phase, (pn / 4) % 2 == 1);
                assert_eq!(open(&mut b, phase, pn, &ct).unwrap(), pn.to_le_bytes());
            }
        }
    }

    /// Packets are displaced by up to `interval - 1` positions, so late packets of generation
    /// `n` arrive after the first packets of `n + 1`, and early ones of `n + 1` before the last
    /// of `n`. Every packet must still open.
    #[test]
    fn key_update_with_reordering() {
        let interval = 8;
        for suite in SUITES {
            for seed in 0..20 {
                let mut rng = StdRng::seed_from_u64(seed);
                let (mut a, mut b) = pair(suite, interval);
                let mut sent: Vec<(u64, bool, Vec<u8>)> = (0..300)
                    .map(|pn| {
                        let (phase, ct) = seal(&mut a, pn, &pn.to_le_bytes());
                        (pn, phase, ct)
                    })
                    .collect();
                // Shuffle within blocks of `interval` starting at a random offset.
                let offset = rng.random_range(0..interval as usize);
                for chunk in sent[offset..].chunks_mut(interval as usize) {
                    for i in (1..chunk.len()).rev() {
                        let j = rng.random_range(0..=i);
                        chunk.swap(i, j);
                    }
                }
                for (pn, phase, ct) in &sent {
                    let got = open(&mut b, *phase, *pn, ct);
                    assert_eq!(got.unwrap(), pn.to_le_bytes(), "seed {seed} pn {pn}");
                }
            }
        }
    }

    /// A packet two generations late has the current phase bit but the wrong key: it is
    /// dropped, and the connection goes on.
    #[test]
    fn very_late_packet_is_dropped() {
        let (mut a, mut b) = pair(CipherSuite::Aes256Gcm, 2);
        let sent: Vec<_> = (0..8).map(|pn| seal(&mut a, pn, b"x")).collect();
        for pn in [1u64, 2, 3, 4, 5] {
            let (phase, ct) = &sent[pn as usize];
            assert!(open(&mut b, *phase, pn, ct).is_ok());
        }
        // Generation 0's packet 0 arrives while generation 2 is current: dropped.
        let (phase, ct) = &sent[0];
        assert_eq!(open(&mut b, *phase, 0, ct), Err(CryptoError));
        for pn in [6u64, 7] {
            let (phase, ct) = &sent[pn as usize];
            assert!(open(&mut b, *phase, pn, ct).is_ok());
        }
    }

    /// A forged packet claiming the other phase with a high number costs one failed attempt
    /// and does not move the receiver.
    #[test]
    fn forged_next_phase_does_not_advance() {
        let (mut a, mut b) = pair(CipherSuite::ChaCha20Poly1305, 1000);
        let (phase, ct) = seal(&mut a, 0, b"first");
        assert!(open(&mut b, phase, 0, &ct).is_ok());
        assert_eq!(open(&mut b, !phase, 99, &[0u8; 40]), Err(CryptoError));
        // Other phase below the largest opened: no candidate at all.
        let (phase1, ct1) = seal(&mut a, 1, b"second");
        assert!(open(&mut b, phase1, 1, &ct1).is_ok());
        assert_eq!(open(&mut b, !phase1, 0, &ct), Err(CryptoError));
        let (phase2, ct2) = seal(&mut a, 2, b"third");
        assert_eq!(open(&mut b, phase2, 2, &ct2).unwrap(), b"third");
    }
}
