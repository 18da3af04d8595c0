//! The obfuscated datagram form of both handshake messages, and the payload encodings.
//!
//! ```text
//! datagram = salt (16) || body XOR keystream(salt)
//! body     = type (1) | version (1) | client CID (8) | noise_len (u16 BE) | noise message | padding
//! ```
//! The keystream is AES-256 in counter mode: block `i` is `AES(k_obf, salt + i)`, the salt read
//! as a 128-bit big-endian integer (wrapping). `k_obf` comes from the PSK, so only holders of the
//! key can tell a handshake datagram from random bytes; the obfuscation is not authenticated
//! (Noise does that, with the header fields in its prologue).

use aes::Aes256;
use aes::cipher::{BlockEncrypt, KeyInit};

use crate::crypto::{CipherSuite, Psk, hkdf_expand};
use crate::packet::{CID_LEN, ConnectionId};

use super::TransportParams;

/// HKDF label of the obfuscation key.
pub(super) const OBFUSCATION_LABEL: &[u8] = b"gaptun v1 handshake obfuscation";
/// Length of the random salt that starts every handshake datagram.
pub(super) const SALT_LEN: usize = 16;
/// Length of the body's fixed header: type, version, client CID, noise length.
pub(super) const BODY_HEADER_LEN: usize = 1 + 1 + CID_LEN + 2;
/// Bytes before the Noise message.
pub(super) const PREFIX_LEN: usize = SALT_LEN + BODY_HEADER_LEN;
/// Body type of the client's first message.
pub(super) const TYPE_INITIAL: u8 = 1;
/// Body type of the server's answer.
pub(super) const TYPE_RESPONSE: u8 = 2;
/// Handshake format version.
pub(super) const VERSION: u8 = 1;

/// AES-256-CTR keystream keyed by the PSK's obfuscation key.
pub(super) struct Obfuscator {
    cipher: Aes256,
}

impl Obfuscator {
    pub(super) fn new(psk: &Psk) -> Self {
        // The AES key schedule is wiped on drop (the `aes` crate's `zeroize` feature).
        let key = zeroize::Zeroizing::new(hkdf_expand::<32>(psk.as_bytes(), OBFUSCATION_LABEL));
        Self {
            cipher: Aes256::new(&(*key).into()),
        }
    }

    /// XORs `data`, found at byte `offset` of the body, with the keystream for `salt`.
    pub(super) fn apply(&self, salt: &[u8; SALT_LEN], offset: usize, data: &mut [u8]) {
        let base = u128::from_be_bytes(*salt);
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let within = pos % 16;
            let mut block = base.wrapping_add((pos / 16) as u128).to_be_bytes().into();
            self.cipher.encrypt_block(&mut block);
            let keystream: [u8; 16] = block.into();
            let n = (16 - within).min(rest.len());
            let (head, tail) = rest.split_at_mut(n);
            for (d, k) in head.iter_mut().zip(keystream.iter().skip(within)) {
                *d ^= k;
            }
            rest = tail;
            pos += n;
        }
    }
}

/// The de-obfuscated fixed part of a handshake body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BodyHeader {
    pub(super) kind: u8,
    pub(super) version: u8,
    pub(super) client_cid: ConnectionId,
    pub(super) noise_len: usize,
}

/// Reads the body header of `datagram` with `obf`, without touching the rest. `None` if the
/// datagram is too short for the header or for the Noise message length it announces.
pub(super) fn peek_header(obf: &Obfuscator, datagram: &[u8]) -> Option<BodyHeader> {
    let salt: &[u8; SALT_LEN] = datagram.get(..SALT_LEN)?.try_into().ok()?;
    let mut header: [u8; BODY_HEADER_LEN] = datagram.get(SALT_LEN..PREFIX_LEN)?.try_into().ok()?;
    obf.apply(salt, 0, &mut header);
    let mut r = Reader::new(&header);
    let kind = r.u8()?;
    let version = r.u8()?;
    let client_cid = ConnectionId(r.array()?);
    let noise_len = usize::from(r.u16()?);
    if PREFIX_LEN + noise_len > datagram.len() {
        return None;
    }
    Some(BodyHeader {
        kind,
        version,
        client_cid,
        noise_len,
    })
}

/// The de-obfuscated Noise message of a datagram whose header `peek_header` returned.
pub(super) fn noise_message(
    obf: &Obfuscator,
    datagram: &[u8],
    header: &BodyHeader,
) -> Option<Vec<u8>> {
    let salt: &[u8; SALT_LEN] = datagram.get(..SALT_LEN)?.try_into().ok()?;
    let mut msg = datagram
        .get(PREFIX_LEN..PREFIX_LEN + header.noise_len)?
        .to_vec();
    obf.apply(salt, BODY_HEADER_LEN, &mut msg);
    Some(msg)
}

/// Builds a datagram of exactly `total_len` bytes (at least `PREFIX_LEN + noise.len()`).
/// Padding is zero before obfuscation, so random-looking after it; receivers ignore it.
pub(super) fn encode_datagram(
    obf: &Obfuscator,
    rng: &mut dyn rand::RngCore,
    kind: u8,
    client_cid: ConnectionId,
    noise: &[u8],
    total_len: usize,
) -> Vec<u8> {
    let noise_len = u16::try_from(noise.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(total_len.max(PREFIX_LEN + noise.len()));
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    out.extend_from_slice(&salt);
    out.push(kind);
    out.push(VERSION);
    out.extend_from_slice(&client_cid.0);
    out.extend_from_slice(&noise_len.to_be_bytes());
    out.extend_from_slice(noise);
    if out.len() < total_len {
        out.resize(total_len, 0);
    }
    if let Some(body) = out.get_mut(SALT_LEN..) {
        obf.apply(&salt, 0, body);
    }
    out
}

/// A bounds-checked cursor over a payload; every read is `None` past the end.
pub(super) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Some(head)
    }

    /// The next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        self.take(n)
    }

    /// Whether every byte was read.
    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        Some(u8::from_be_bytes(self.array()?))
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
}

/// Flags byte after the cipher list: the sender accepts FEC parity.
const FLAG_FEC: u8 = 0x01;

/// Most cipher suites a parameter block lists (the count is one byte).
const MAX_CIPHERS: usize = u8::MAX as usize;

impl TransportParams {
    /// Appends the fixed-width encoding: max_data, max_stream_data, max_streams,
    /// idle_timeout_ms (u64 BE each), max_udp_payload (u16 BE), cipher count (u8), cipher codes,
    /// flags (u8), max_datagram_size (u32 BE), then extensions (type u8, length u8, body):
    /// the server's carrier offer (see `offer`). The fields after the cipher codes came
    /// later: a peer that predates them stops earlier, which reads as "none".
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.max_data,
            self.max_stream_data,
            self.max_streams,
            self.idle_timeout_ms,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.max_udp_payload.to_be_bytes());
        let ciphers = &self.ciphers[..self.ciphers.len().min(MAX_CIPHERS)];
        out.push(ciphers.len() as u8);
        out.extend(ciphers.iter().map(|c| c.code()));
        out.push(u8::from(self.fec) * FLAG_FEC);
        out.extend_from_slice(&self.max_datagram_size.to_be_bytes());
        if let Some(offer) = &self.carrier_offer {
            offer.encode_extension(out);
        }
    }

    /// Reads what [`TransportParams::encode`] wrote. Unknown cipher codes are skipped, so a
    /// newer peer's list still yields the suites we know.
    pub(super) fn decode(r: &mut Reader<'_>) -> Option<Self> {
        let max_data = r.u64()?;
        let max_stream_data = r.u64()?;
        let max_streams = r.u64()?;
        let idle_timeout_ms = r.u64()?;
        let max_udp_payload = r.u16()?;
        let count = usize::from(r.u8()?);
        let codes = r.take(count)?;
        let ciphers = codes
            .iter()
            .filter_map(|&c| CipherSuite::from_code(c))
            .collect();
        // The flags byte came later: a peer that does not send it has none of the features.
        let flags = r.u8().unwrap_or(0);
        // Absent (an older peer): no datagram support.
        let max_datagram_size = r.array().map_or(0, u32::from_be_bytes);
        let carrier_offer = super::offer::decode_extensions(r);
        Some(Self {
            max_data,
            max_stream_data,
            max_streams,
            idle_timeout_ms,
            max_udp_payload,
            ciphers,
            fec: flags & FLAG_FEC != 0,
            max_datagram_size,
            carrier_offer,
        })
    }
}

/// The Initial's Noise payload: the client's clock and parameters. Trailing bytes are ignored.
pub(super) fn encode_initial_payload(unix_ms: u64, params: &TransportParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&unix_ms.to_be_bytes());
    params.encode(&mut out);
    out
}

pub(super) fn decode_initial_payload(payload: &[u8]) -> Option<(u64, TransportParams)> {
    let mut r = Reader::new(payload);
    let unix_ms = r.u64()?;
    let params = TransportParams::decode(&mut r)?;
    Some((unix_ms, params))
}

/// The Response's Noise payload: the server's CID, the chosen suite and the server's parameters.
pub(super) fn encode_response_payload(
    server_cid: ConnectionId,
    cipher: CipherSuite,
    params: &TransportParams,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&server_cid.0);
    out.push(cipher.code());
    params.encode(&mut out);
    out
}

/// `None` if malformed; the suite is `None` if its code is unknown.
pub(super) fn decode_response_payload(
    payload: &[u8],
) -> Option<(ConnectionId, Option<CipherSuite>, TransportParams)> {
    let mut r = Reader::new(payload);
    let cid = ConnectionId(r.array()?);
    let cipher = CipherSuite::from_code(r.u8()?);
    let params = TransportParams::decode(&mut r)?;
    Some((cid, cipher, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TransportParams {
        TransportParams {
            max_data: 1 << 40,
            max_stream_data: 12345,
            max_streams: 7,
            idle_timeout_ms: 30_000,
            max_udp_payload: 1350,
            ciphers: vec![CipherSuite::ChaCha20Poly1305, CipherSuite::Aes256Gcm],
            fec: true,
            max_datagram_size: 65_535,
            carrier_offer: None,
        }
    }

    #[test]
    fn params_round_trip_and_layout() {
        let p = params();
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out.len(), 8 * 4 + 2 + 1 + 2 + 1 + 4);
        assert_eq!(
            &out[32..],
            &[0x05, 0x46, 2, 2, 1, FLAG_FEC, 0, 0, 0xff, 0xff]
        );
        assert_eq!(
            TransportParams::decode(&mut Reader::new(&out)),
            Some(p.clone())
        );
        // A peer from before the datagram field: no datagrams.
        let no_datagrams = TransportParams::decode(&mut Reader::new(&out[..out.len() - 4]));
        assert_eq!(
            no_datagrams,
            Some(TransportParams {
                max_datagram_size: 0,
                ..p.clone()
            })
        );
        // A peer from before the flags byte: no FEC and no datagrams.
        let old = TransportParams::decode(&mut Reader::new(&out[..out.len() - 5]));
        assert_eq!(
            old,
            Some(TransportParams {
                fec: false,
                max_datagram_size: 0,
                ..p
            })
        );
        for len in 0..out.len() - 5 {
            assert_eq!(
                TransportParams::decode(&mut Reader::new(&out[..len])),
                None,
                "{len}"
            );
        }
    }

    fn offer() -> super::super::CarrierOffer {
        use super::super::{CarrierOffer, PortRange};
        CarrierOffer {
            udp: PortRange::new(4000, 4003),
            faketcp: None,
            tls: Some(8443),
            quic: Some(9443),
        }
    }

    #[test]
    fn carrier_offer_round_trips_after_the_fixed_fields() {
        let p = TransportParams {
            carrier_offer: Some(offer()),
            ..params()
        };
        let mut out = Vec::new();
        p.encode(&mut out);
        let mut plain = Vec::new();
        params().encode(&mut plain);
        // Type 1, length 9: flags (UDP, TLS, QUIC), 4000, 4003, 8443, 9443.
        assert_eq!(
            &out[plain.len()..],
            &[1, 9, 0x0d, 0x0f, 0xa0, 0x0f, 0xa3, 0x20, 0xfb, 0x24, 0xe3]
        );
        assert_eq!(
            TransportParams::decode(&mut Reader::new(&out)),
            Some(p.clone())
        );
        // An unknown extension before it is skipped.
        let mut with_unknown = plain.clone();
        with_unknown.extend_from_slice(&[7, 3, 1, 2, 3]);
        with_unknown.extend_from_slice(&out[plain.len()..]);
        assert_eq!(
            TransportParams::decode(&mut Reader::new(&with_unknown)),
            Some(p)
        );
    }

    #[test]
    fn a_garbled_carrier_offer_is_ignored_and_the_parameters_stay() {
        let mut plain = Vec::new();
        params().encode(&mut plain);
        let bad_bodies: [&[u8]; 7] = [
            &[1, 0],                               // empty body
            &[1, 3, 0x04, 0x20],                   // TLS port cut short
            &[1, 5, 0x01, 0x0f, 0xa3, 0x0f, 0xa0], // UDP range backwards
            &[1, 3, 0x04, 0, 0],                   // TLS port 0
            &[1, 4, 0x04, 0x20, 0xfb, 9],          // a byte too many
            &[1, 3, 0x40, 0x20, 0xfb],             // unknown flag
            &[1, 200, 0x04, 0x20, 0xfb],           // length past the end
        ];
        for bad in bad_bodies {
            let mut out = plain.clone();
            out.extend_from_slice(bad);
            assert_eq!(
                TransportParams::decode(&mut Reader::new(&out)),
                Some(params()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_cipher_codes_are_skipped() {
        let mut out = Vec::new();
        TransportParams {
            ciphers: vec![],
            ..params()
        }
        .encode(&mut out);
        // Drop the empty count, the flags byte and the datagram size; three codes instead, then
        // the flags and the size.
        out.truncate(out.len() - 6);
        out.extend_from_slice(&[3, 9, 2, 0, 0, 0, 0, 0, 0]);
        let p = TransportParams::decode(&mut Reader::new(&out)).unwrap();
        assert_eq!(p.ciphers, vec![CipherSuite::ChaCha20Poly1305]);
    }

    #[test]
    fn payloads_round_trip() {
        let p = params();
        let init = encode_initial_payload(1_700_000_000_123, &p);
        assert_eq!(
            decode_initial_payload(&init),
            Some((1_700_000_000_123, p.clone()))
        );
        let cid = ConnectionId([9; 8]);
        let resp = encode_response_payload(cid, CipherSuite::Aes256Gcm, &p);
        assert_eq!(
            decode_response_payload(&resp),
            Some((cid, Some(CipherSuite::Aes256Gcm), p))
        );
        // Everything but the optional flags byte and datagram size is required.
        for len in 0..init.len() - 5 {
            assert_eq!(decode_initial_payload(&init[..len]), None);
        }
    }

    #[test]
    fn keystream_is_offset_consistent() {
        let obf = Obfuscator::new(&Psk::from_bytes([3; 32]));
        let salt = [0xff; 16]; // also exercises the counter wrapping around 2^128
        let mut whole = vec![0u8; 100];
        obf.apply(&salt, 0, &mut whole);
        for split in [1, 15, 16, 17, 50] {
            let mut a = vec![0u8; split];
            let mut b = vec![0u8; 100 - split];
            obf.apply(&salt, 0, &mut a);
            obf.apply(&salt, split, &mut b);
            a.extend_from_slice(&b);
            assert_eq!(a, whole, "{split}");
        }
        // Counter mode: block 1 is AES(salt + 1) = AES(0) here.
        let aes = Aes256::new(&hkdf_expand::<32>(&[3; 32], OBFUSCATION_LABEL).into());
        let mut block = [0u8; 16].into();
        aes.encrypt_block(&mut block);
        let expected: [u8; 16] = block.into();
        assert_eq!(&whole[16..32], &expected);
    }
}
