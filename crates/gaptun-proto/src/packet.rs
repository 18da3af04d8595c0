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

/// Bits of the packet number carried on the wire.
pub const PN_BITS: u32 = 31;
/// Mask of the truncated packet number in the 32-bit header field.
const PN_MASK: u32 = (1 << PN_BITS) - 1;
/// Offset of the header-protection sample: the first 16 bytes of the ciphertext.
const SAMPLE_OFFSET: usize = HEADER_LEN;
/// Length of the header-protection sample.
const SAMPLE_LEN: usize = 16;

/// Completes the packet that starts at `start` in `buf`: writes the header, encrypts the payload
/// that follows it, appends the tag and masks the header.
///
/// Calls [`PacketKeys::send_phase`] itself (once per packet, which counts towards the key
/// update); callers must not call it as well. No allocation beyond `buf` growing by the 16-byte tag (none if the caller reserved it). If
/// `start + HEADER_LEN` is past the end of `buf` (no [`begin`] call), the buffer is extended.
pub fn seal(
    header_key: &HeaderKey,
    keys: &mut PacketKeys,
    cid: ConnectionId,
    pn: u64,
    buf: &mut Vec<u8>,
    start: usize,
) {
    if buf.len() < start + HEADER_LEN {
        buf.resize(start + HEADER_LEN, 0);
    }
    let phase = keys.send_phase(pn);
    let field = (u32::from(phase) << PN_BITS) | (pn as u32 & PN_MASK);
    let (_, packet) = buf.split_at_mut(start);
    let (header, payload) = packet.split_at_mut(HEADER_LEN);
    header[..CID_LEN].copy_from_slice(&cid.0);
    header[CID_LEN..].copy_from_slice(&field.to_be_bytes());
    let tag = keys.seal_detached(phase, pn, header, payload);
    buf.extend_from_slice(&tag);
    mask_header(header_key, &mut buf[start..], HEADER_LEN);
}

/// XORs the first `len` header bytes of `packet` (at least [`MIN_PACKET_LEN`] long) with the
/// mask computed from its ciphertext sample. Applying it twice restores the header.
fn mask_header(header_key: &HeaderKey, packet: &mut [u8], len: usize) -> Option<()> {
    let sample: &[u8; SAMPLE_LEN] = packet
        .get(SAMPLE_OFFSET..SAMPLE_OFFSET + SAMPLE_LEN)?
        .try_into()
        .ok()?;
    let mask = header_key.mask(sample);
    for (b, m) in packet.get_mut(..len)?.iter_mut().zip(mask) {
        *b ^= m;
    }
    Some(())
}

/// Unmasks just the connection ID of `datagram`, for routing. `None` if it is too short.
pub fn peek_cid(header_key: &HeaderKey, datagram: &[u8]) -> Option<ConnectionId> {
    if datagram.len() < MIN_PACKET_LEN {
        return None;
    }
    let sample: &[u8; SAMPLE_LEN] = datagram
        .get(SAMPLE_OFFSET..SAMPLE_OFFSET + SAMPLE_LEN)?
        .try_into()
        .ok()?;
    let mask = header_key.mask(sample);
    let mut cid = [0u8; CID_LEN];
    for ((c, b), m) in cid.iter_mut().zip(datagram).zip(mask) {
        *c = b ^ m;
    }
    Some(ConnectionId(cid))
}

/// Authenticates and decrypts `datagram` in place. `largest_pn` is the largest packet number
/// received so far on this connection (`None` before the first), used to expand the truncated
/// number. Returns the full packet number and the plaintext payload.
///
/// On error the contents of `datagram` are unspecified (the header is unmasked in place).
pub fn open<'a>(
    header_key: &HeaderKey,
    keys: &mut PacketKeys,
    largest_pn: Option<u64>,
    datagram: &'a mut [u8],
) -> Result<(u64, &'a [u8]), PacketError> {
    if datagram.len() < MIN_PACKET_LEN {
        return Err(PacketError::TooShort);
    }
    mask_header(header_key, datagram, HEADER_LEN).ok_or(PacketError::TooShort)?;
    let (header, ciphertext) = datagram.split_at_mut(HEADER_LEN);
    let field_bytes: [u8; 4] = header[CID_LEN..]
        .try_into()
        .map_err(|_| PacketError::TooShort)?;
    let field = u32::from_be_bytes(field_bytes);
    let phase = field >> PN_BITS == 1;
    let pn = decode_pn(largest_pn, field & PN_MASK);
    let len = keys.open(phase, pn, header, ciphertext)?;
    let plaintext = ciphertext.get(..len).ok_or(CryptoError)?;
    Ok((pn, plaintext))
}

/// Expands a 31-bit truncated packet number to the full number closest to the next expected one
/// (RFC 9000 appendix A.3 with a 31-bit field).
pub fn decode_pn(largest_pn: Option<u64>, truncated: u32) -> u64 {
    const WIN: u64 = 1 << PN_BITS;
    const HALF: u64 = WIN / 2;
    const MAX_PN: u64 = 1 << 62;
    let expected = largest_pn.map_or(0, |l| l.saturating_add(1));
    let candidate = (expected & !(WIN - 1)) | u64::from(truncated & PN_MASK);
    if candidate.saturating_add(HALF) <= expected && candidate < MAX_PN - WIN {
        candidate + WIN
    } else if candidate > expected.saturating_add(HALF) && candidate >= WIN {
        candidate - WIN
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::{CipherSuite, Psk};

    const SUITES: [CipherSuite; 2] = [CipherSuite::Aes256Gcm, CipherSuite::ChaCha20Poly1305];
    const CID: ConnectionId = ConnectionId([1, 2, 3, 4, 5, 6, 7, 8]);

    fn setup(suite: CipherSuite) -> (HeaderKey, PacketKeys, PacketKeys) {
        let hk = HeaderKey::new(&Psk::from_bytes([7; 32]));
        (
            hk,
            PacketKeys::new(suite, [1; 32], [2; 32]),
            PacketKeys::new(suite, [2; 32], [1; 32]),
        )
    }

    fn build(hk: &HeaderKey, keys: &mut PacketKeys, pn: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(1500);
        let start = begin(&mut buf);
        buf.extend_from_slice(payload);
        seal(hk, keys, CID, pn, &mut buf, start);
        buf
    }

    #[test]
    fn round_trip_both_suites() {
        for suite in SUITES {
            let (hk, mut tx, mut rx) = setup(suite);
            let mut largest = None;
            for pn in [0u64, 1, 2, 10, 7, 1000] {
                let payload = vec![pn as u8; (pn % 50) as usize];
                let mut dgram = build(&hk, &mut tx, pn, &payload);
                assert_eq!(dgram.len(), HEADER_LEN + payload.len() + TAG_LEN);
                assert_eq!(peek_cid(&hk, &dgram), Some(CID));
                let (got_pn, got) = open(&hk, &mut rx, largest, &mut dgram).unwrap();
                assert_eq!(got_pn, pn);
                assert_eq!(got, &payload[..]);
                largest = largest.max(Some(pn));
            }
        }
    }

    #[test]
    fn seal_after_existing_bytes() {
        let (hk, mut tx, mut rx) = setup(CipherSuite::Aes256Gcm);
        let mut buf = b"previous datagram".to_vec();
        let start = begin(&mut buf);
        buf.extend_from_slice(b"payload");
        seal(&hk, &mut tx, CID, 3, &mut buf, start);
        assert_eq!(&buf[..start], b"previous datagram");
        let (pn, payload) = open(&hk, &mut rx, None, &mut buf[start..]).unwrap();
        assert_eq!((pn, payload), (3, &b"payload"[..]));
    }

    #[test]
    fn header_is_masked() {
        let (hk, mut tx, _) = setup(CipherSuite::ChaCha20Poly1305);
        let a = build(&hk, &mut tx, 0, b"same");
        let b = build(&hk, &mut tx, 1, b"same");
        assert_ne!(&a[..CID_LEN], &CID.0);
        assert_ne!(&a[..HEADER_LEN], &b[..HEADER_LEN]);
    }

    #[test]
    fn tampering_any_byte_fails() {
        for suite in SUITES {
            let (hk, mut tx, mut rx) = setup(suite);
            let dgram = build(&hk, &mut tx, 42, b"some payload bytes");
            for i in 0..dgram.len() {
                for flip in [0x01u8, 0x80] {
                    let mut bad = dgram.clone();
                    bad[i] ^= flip;
                    let res = open(&hk, &mut rx, Some(41), &mut bad);
                    assert_eq!(res, Err(PacketError::Crypto(CryptoError)), "byte {i}");
                }
            }
            let mut good = dgram.clone();
            assert!(open(&hk, &mut rx, Some(41), &mut good).is_ok());
        }
    }

    #[test]
    fn wrong_keys_fail() {
        let (hk, mut tx, _) = setup(CipherSuite::Aes256Gcm);
        let dgram = build(&hk, &mut tx, 0, b"x");
        let other_hk = HeaderKey::new(&Psk::from_bytes([8; 32]));
        let (_, _, mut rx) = setup(CipherSuite::Aes256Gcm);
        assert!(open(&other_hk, &mut rx, None, &mut dgram.clone()).is_err());
        let mut other_rx = PacketKeys::new(CipherSuite::Aes256Gcm, [2; 32], [9; 32]);
        assert_eq!(
            open(&hk, &mut other_rx, None, &mut dgram.clone()),
            Err(PacketError::Crypto(CryptoError))
        );
        let mut chacha_rx = PacketKeys::new(CipherSuite::ChaCha20Poly1305, [2; 32], [1; 32]);
        assert!(open(&hk, &mut chacha_rx, None, &mut dgram.clone()).is_err());
    }

    #[test]
    fn short_datagrams() {
        let (hk, _, mut rx) = setup(CipherSuite::Aes256Gcm);
        for len in 0..MIN_PACKET_LEN {
            let mut d = vec![0xaa; len];
            assert_eq!(open(&hk, &mut rx, None, &mut d), Err(PacketError::TooShort));
            assert_eq!(peek_cid(&hk, &d), None);
        }
        let mut d = vec![0xaa; MIN_PACKET_LEN];
        assert!(peek_cid(&hk, &d).is_some());
        assert_eq!(
            open(&hk, &mut rx, None, &mut d),
            Err(PacketError::Crypto(CryptoError))
        );
    }

    #[test]
    fn empty_payload_round_trip() {
        let (hk, mut tx, mut rx) = setup(CipherSuite::ChaCha20Poly1305);
        let mut d = build(&hk, &mut tx, 5, b"");
        assert_eq!(d.len(), MIN_PACKET_LEN);
        assert_eq!(open(&hk, &mut rx, None, &mut d).unwrap(), (5, &b""[..]));
    }

    #[test]
    fn decode_pn_rfc9000_example() {
        // RFC 9000 A.3's example (largest 0xa82f30ea, packet 0xa82f9b32) with 31 bits on the wire.
        assert_eq!(decode_pn(Some(0xa82f_30ea), 0x282f_9b32), 0xa82f_9b32);
        assert_eq!(decode_pn(None, 0), 0);
        assert_eq!(decode_pn(None, 5), 5);
    }

    #[test]
    fn decode_pn_around_boundaries() {
        const WIN: u64 = 1 << 31;
        for base in [
            0u64,
            WIN - 3,
            WIN,
            2 * WIN - 1,
            5 * WIN + 17,
            (1 << 62) - WIN - 2,
        ] {
            for delta in [-1_000_000i64, -5, -1, 0, 1, 2, 100, 1_000_000] {
                let Some(pn) = base.checked_add_signed(delta) else {
                    continue;
                };
                if pn >= 1 << 62 {
                    continue;
                }
                let truncated = (pn & (WIN - 1)) as u32;
                assert_eq!(decode_pn(Some(base), truncated), pn, "base {base} pn {pn}");
            }
        }
        // Just under half a window ahead and behind still decode.
        let largest = 3 * WIN + 10;
        let ahead = largest + WIN / 2;
        assert_eq!(decode_pn(Some(largest), (ahead & (WIN - 1)) as u32), ahead);
        let behind = largest + 1 - WIN / 2 + 1;
        assert_eq!(
            decode_pn(Some(largest), (behind & (WIN - 1)) as u32),
            behind
        );
        // Garbage largest values do not overflow.
        assert_eq!(decode_pn(Some(u64::MAX), 0) & (WIN - 1), 0);
    }

    #[test]
    fn full_pn_crosses_31_bit_wrap() {
        let (hk, mut tx, mut rx) = setup(CipherSuite::Aes256Gcm);
        let mut largest = None;
        for pn in [
            (1u64 << 31) - 2,
            (1 << 31) - 1,
            1 << 31,
            (1 << 31) + 1,
            (1 << 31) + (1 << 29),
        ] {
            let mut d = build(&hk, &mut tx, pn, b"wrap");
            let (got, _) = open(&hk, &mut rx, largest.or(Some(pn - 1)), &mut d).unwrap();
            assert_eq!(got, pn);
            largest = Some(pn);
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Known-answer vectors, also in the protocol spec, computed independently with Python
    /// (`hmac`, `cryptography`) from the spec's description: header psk 32 x 0x07, traffic secret
    /// 32 x 0x01, CID 01..08, pn 5, payload "gaptun".
    #[test]
    fn known_answer_vectors() {
        let vectors = [
            (
                CipherSuite::Aes256Gcm,
                "6cc1ef4bb378a350fd47611e8fd0b2479cd5341b38f5e0c95317723529317104ac64",
            ),
            (
                CipherSuite::ChaCha20Poly1305,
                "4e3ec7ed2e6693829e4b356046caa813c9bd87edde6b2f03f64ff8be2f4237ea4e7b",
            ),
        ];
        for (suite, expected) in vectors {
            let (hk, mut tx, _) = setup(suite);
            assert_eq!(
                hex(&build(&hk, &mut tx, 5, b"gaptun")),
                expected,
                "{suite:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..1400),
                           pn in 0u64..(1 << 40), chacha in any::<bool>()) {
            let suite = if chacha { CipherSuite::ChaCha20Poly1305 } else { CipherSuite::Aes256Gcm };
            let (hk, mut tx, mut rx) = setup(suite);
            let mut d = build(&hk, &mut tx, pn, &payload);
            let largest = pn.checked_sub(1);
            let (got_pn, got) = open(&hk, &mut rx, largest, &mut d).unwrap();
            prop_assert_eq!(got_pn, pn);
            prop_assert_eq!(got, &payload[..]);
        }

        #[test]
        fn prop_random_bytes_never_open(mut d in proptest::collection::vec(any::<u8>(), 0..200),
                                        largest in proptest::option::of(any::<u64>())) {
            let (hk, _, mut rx) = setup(CipherSuite::ChaCha20Poly1305);
            let _ = peek_cid(&hk, &d);
            prop_assert!(open(&hk, &mut rx, largest, &mut d).is_err());
        }
    }
}
