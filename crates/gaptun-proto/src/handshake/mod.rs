//! The handshake: Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s`, one round trip, wrapped so that it
//! looks like random bytes on the wire.
//!
//! The client's first flight (Initial) proves knowledge of the PSK and carries an ephemeral
//! X25519 key, a timestamp and the client's transport parameters; the server's answer (Response)
//! carries its ephemeral key and parameters. Both ends then derive the traffic secrets for
//! [`PacketKeys`]; the client can send stream data in its very next packet.
//!
//! A server answers nothing it cannot authenticate. Initials outside the timestamp window, or
//! seen before (see [`ReplayCache`]), are dropped silently, so a replayed Initial does not reveal
//! the server either. See `docs/protocol.md` ("Handshake") for the byte layout.

mod noise;
mod offer;
mod replay_cache;
mod wire;

pub use offer::{CarrierOffer, PortRange};
pub use replay_cache::{ReplayCache, ReplayJournal, ReplayRecord};

use std::time::Duration;

use rand::Rng;
use thiserror::Error;

use crate::crypto::{CipherSuite, PacketKeys, Psk};
use crate::packet::ConnectionId;

use self::noise::{NoiseState, ephemeral_fingerprint};
use self::wire::{BodyHeader, Obfuscator, PREFIX_LEN, TYPE_INITIAL, TYPE_RESPONSE, VERSION};

/// What each side tells the other about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportParams {
    /// Initial connection-level flow-control credit the sender grants (bytes).
    pub max_data: u64,
    /// Initial per-stream flow-control credit the sender grants (bytes).
    pub max_stream_data: u64,
    /// How many streams the peer may open at first.
    pub max_streams: u64,
    /// The sender's idle timeout in milliseconds (the smaller of both sides' applies; 0 = none).
    pub idle_timeout_ms: u64,
    /// Largest UDP payload the sender will accept.
    pub max_udp_payload: u16,
    /// Cipher suites the sender supports, most preferred first (the server's list has one entry:
    /// its choice).
    pub ciphers: Vec<CipherSuite>,
    /// The sender accepts FEC parity (FEC_PARITY frames); without it none is sent to it.
    pub fec: bool,
    /// Largest unreliable datagram (reassembled payload bytes) the sender accepts; 0: it takes
    /// none, and must never be sent one.
    pub max_datagram_size: u32,
    /// Server: the carriers it offers (see [`CarrierOffer`]); a client sends none and ignores
    /// one from another client. `None` also when the peer predates it or sent a garbled one.
    pub carrier_offer: Option<CarrierOffer>,
}

/// Why a handshake datagram was refused. All of these lead to a silent drop on the server.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Not a handshake message of the expected kind, or failed authentication (wrong key,
    /// corrupted, or random bytes).
    #[error("handshake message failed authentication or is malformed")]
    Invalid,
    /// The Initial's timestamp is outside the accepted window.
    #[error("handshake timestamp outside the accepted window")]
    Stale,
    /// This Initial was seen before.
    #[error("replayed handshake message")]
    Replayed,
    /// No cipher suite in common.
    #[error("no cipher suite in common")]
    NoCommonCipher,
    /// The handshake budget (per source or global) is spent; not authenticated.
    #[error("handshake budget spent")]
    OverBudget,
    /// Authentic and fresh, but a connection cap is reached.
    #[error("connection limit reached")]
    AtCapacity,
}

/// One PSK's handshake state, derived once (the obfuscation key's HKDF and AES key schedule),
/// so that a server spends one AES block per configured key on a junk datagram.
pub struct HandshakeKey {
    psk: Psk,
    obfuscator: Obfuscator,
}

impl HandshakeKey {
    /// Derives the handshake state of `psk`.
    pub fn new(psk: &Psk) -> Self {
        Self {
            psk: psk.clone(),
            obfuscator: Obfuscator::new(psk),
        }
    }

    /// Like [`peek_response_cid`], with the derived state.
    pub fn peek_response_cid(&self, datagram: &[u8]) -> Option<ConnectionId> {
        let header = wire::peek_header(&self.obfuscator, datagram)?;
        (header.kind == TYPE_RESPONSE && header.version == VERSION).then_some(header.client_cid)
    }

    /// The Initial's header, if `datagram` looks like an Initial under this key (two clear
    /// bytes checked: about one random datagram in 65536 passes).
    fn peek_initial(&self, datagram: &[u8]) -> Option<BodyHeader> {
        let header = wire::peek_header(&self.obfuscator, datagram)?;
        (header.kind == TYPE_INITIAL && header.version == VERSION).then_some(header)
    }
}

impl std::fmt::Debug for HandshakeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeKey(..)")
    }
}

/// The server's say on an Initial, asked at the two points where work would be spent.
pub trait Admission {
    /// The Initial passed the cheap header check: may Noise work be spent on it?
    fn may_authenticate(&mut self) -> bool;
    /// The Initial is authentic and fresh under key `key_index`: may it become a connection?
    fn may_accept(&mut self, key_index: usize) -> bool;
    /// The largest UDP payload to announce to this client, when it differs from the server's
    /// parameters (the route to the client carries more or less). Asked once the Initial is
    /// accepted, before the Response is built.
    fn max_udp_payload(&mut self) -> Option<u16> {
        None
    }
}

/// Admits everything (tests, fuzzing).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn may_authenticate(&mut self) -> bool {
        true
    }

    fn may_accept(&mut self, _key_index: usize) -> bool {
        true
    }
}

/// The result of a completed handshake, on either side.
#[derive(Debug)]
pub struct Established {
    /// The connection ID the peer wants on the packets we send it.
    pub peer_cid: ConnectionId,
    /// The peer's transport parameters.
    pub peer_params: TransportParams,
    /// Packet keys for this side.
    pub keys: PacketKeys,
}

/// The client's half-finished handshake.
pub struct ClientHandshake {
    noise: NoiseState,
    obfuscator: Obfuscator,
    client_cid: ConnectionId,
    offered: Vec<CipherSuite>,
}

impl ClientHandshake {
    /// Starts a handshake. Returns the state and the Initial datagram to send (padded to a random
    /// length drawn from `rng`, at least [`MIN_INITIAL_LEN`] bytes and at most `max_len`).
    ///
    /// A `max_len` below [`MIN_INITIAL_LEN`] is raised to it: a server drops shorter Initials.
    /// The ephemeral key is drawn from `rng` too, so a retransmission must be a new Initial from
    /// a new `start`: the server drops the same Initial seen twice as a replay.
    pub fn start(
        psk: &Psk,
        client_cid: ConnectionId,
        params: &TransportParams,
        unix_time: Duration,
        max_len: usize,
        rng: &mut dyn rand::RngCore,
    ) -> (Self, Vec<u8>) {
        let obfuscator = Obfuscator::new(psk);
        let mut noise = NoiseState::initiator(psk, client_cid, rng);
        let payload = wire::encode_initial_payload(unix_millis(unix_time), params);
        let message = noise.write(&payload);
        let needed = PREFIX_LEN + message.len();
        let low = MIN_INITIAL_LEN.max(needed);
        let high = max_len.max(low);
        let total = rng.random_range(low..=high);
        let datagram =
            wire::encode_datagram(&obfuscator, rng, TYPE_INITIAL, client_cid, &message, total);
        let offered = params.ciphers.clone();
        (
            Self {
                noise,
                obfuscator,
                client_cid,
                offered,
            },
            datagram,
        )
    }

    /// Processes the server's Response.
    pub fn finish(mut self, datagram: &[u8]) -> Result<Established, HandshakeError> {
        self.try_finish(datagram)
    }

    /// Like [`ClientHandshake::finish`], but a datagram that is not the Response leaves the
    /// handshake as it was, so the client can wait for the real one (a forged or stale datagram
    /// for our CID must not kill the connection attempt). After success the state is spent.
    pub fn try_finish(&mut self, datagram: &[u8]) -> Result<Established, HandshakeError> {
        let header =
            wire::peek_header(&self.obfuscator, datagram).ok_or(HandshakeError::Invalid)?;
        if header.kind != TYPE_RESPONSE
            || header.version != VERSION
            || header.client_cid != self.client_cid
        {
            return Err(HandshakeError::Invalid);
        }
        let message = wire::noise_message(&self.obfuscator, datagram, &header)
            .ok_or(HandshakeError::Invalid)?;
        let payload = self.noise.read(&message).ok_or(HandshakeError::Invalid)?;
        let (server_cid, cipher, peer_params) =
            wire::decode_response_payload(&payload).ok_or(HandshakeError::Invalid)?;
        let cipher = cipher
            .filter(|c| self.offered.contains(c))
            .ok_or(HandshakeError::NoCommonCipher)?;
        let (client_to_server, server_to_client) = self.noise.split();
        Ok(Established {
            peer_cid: server_cid,
            peer_params,
            keys: PacketKeys::new(cipher, client_to_server, server_to_client),
        })
    }
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake(..)")
    }
}

/// Shortest Initial a client sends; the server answers at most 3x what it received.
pub const MIN_INITIAL_LEN: usize = 1000;

/// How many times the Initial's length a Response may be at most (anti-amplification).
pub const MAX_AMPLIFICATION: usize = 3;

/// If `datagram` is a Response (checked with the PSK's obfuscation key only, no Noise work),
/// the client connection ID it answers. Used by a client endpoint to route Responses.
///
/// The check is only the two clear header bytes, so about one random datagram in 65536 passes;
/// [`ClientHandshake::try_finish`] authenticates.
pub fn peek_response_cid(psk: &Psk, datagram: &[u8]) -> Option<ConnectionId> {
    let header = wire::peek_header(&Obfuscator::new(psk), datagram)?;
    (header.kind == TYPE_RESPONSE && header.version == VERSION).then_some(header.client_cid)
}

/// A server's view of an accepted Initial.
#[derive(Debug)]
pub struct Accepted {
    /// Keys, the client's connection ID and parameters.
    pub established: Established,
    /// Which of the server's PSKs the client used.
    pub psk_index: usize,
    /// The Response datagram to send back (at most 3x the Initial's length).
    pub response: Vec<u8>,
}

/// Server side: authenticates an Initial against each key, checks its timestamp against
/// `unix_time` +- `window` and the replay cache, picks a cipher (`cipher` if the client offers
/// it, else the client's first choice), and builds the Response.
///
/// `admission` is asked before any Noise work (an Initial under no key never gets that far:
/// [`HandshakeError::Invalid`]) and again once the Initial is authentic and recorded in the
/// replay cache, before the Response is built; a refusal is [`HandshakeError::OverBudget`] or
/// [`HandshakeError::AtCapacity`].
///
/// Initials shorter than [`MIN_INITIAL_LEN`] are [`HandshakeError::Invalid`]. The Response is
/// padded to a random length no longer than the Initial, nor (when it can be avoided) than
/// either side's `max_udp_payload`; never longer than 3x the Initial.
#[allow(clippy::too_many_arguments)]
pub fn accept_initial(
    keys: &[HandshakeKey],
    replay: &mut ReplayCache,
    datagram: &[u8],
    server_cid: ConnectionId,
    params: &TransportParams,
    cipher: Option<CipherSuite>,
    unix_time: Duration,
    window: Duration,
    rng: &mut dyn rand::RngCore,
    admission: &mut dyn Admission,
) -> Result<Accepted, HandshakeError> {
    if datagram.len() < MIN_INITIAL_LEN {
        return Err(HandshakeError::Invalid);
    }
    if !keys.iter().any(|k| k.peek_initial(datagram).is_some()) {
        return Err(HandshakeError::Invalid);
    }
    if !admission.may_authenticate() {
        return Err(HandshakeError::OverBudget);
    }
    let (psk_index, header, message, mut noise, payload) =
        authenticate_initial(keys, datagram, rng).ok_or(HandshakeError::Invalid)?;
    let obfuscator = &keys[psk_index].obfuscator;
    let (client_ms, client_params) =
        wire::decode_initial_payload(&payload).ok_or(HandshakeError::Invalid)?;
    if client_ms.abs_diff(unix_millis(unix_time)) > unix_millis(window)
        || replay.stamped_too_early(client_ms)
    {
        return Err(HandshakeError::Stale);
    }
    let fingerprint = ephemeral_fingerprint(&message).ok_or(HandshakeError::Invalid)?;
    if !replay.insert(unix_time, fingerprint) {
        return Err(HandshakeError::Replayed);
    }
    if !admission.may_accept(psk_index) {
        return Err(HandshakeError::AtCapacity);
    }
    let chosen = choose_cipher(cipher, &client_params.ciphers)?;
    let our_params = TransportParams {
        ciphers: vec![chosen],
        max_udp_payload: admission
            .max_udp_payload()
            .unwrap_or(params.max_udp_payload),
        ..params.clone()
    };
    let reply = noise.write(&wire::encode_response_payload(
        server_cid,
        chosen,
        &our_params,
    ));
    let total = response_len(
        datagram.len(),
        PREFIX_LEN + reply.len(),
        &our_params,
        &client_params,
        rng,
    );
    let response = wire::encode_datagram(
        obfuscator,
        rng,
        TYPE_RESPONSE,
        header.client_cid,
        &reply,
        total,
    );
    let (client_to_server, server_to_client) = noise.split();
    Ok(Accepted {
        established: Established {
            peer_cid: header.client_cid,
            peer_params: client_params,
            keys: PacketKeys::new(chosen, server_to_client, client_to_server),
        },
        psk_index,
        response,
    })
}

/// What a successfully authenticated Initial yields.
type Authenticated = (usize, BodyHeader, Vec<u8>, NoiseState, Vec<u8>);

/// Tries each key whose cheap type/version check on the de-obfuscated header passes with the
/// Noise read that authenticates. The responder's ephemeral seed is drawn once from `rng`.
fn authenticate_initial(
    keys: &[HandshakeKey],
    datagram: &[u8],
    rng: &mut dyn rand::RngCore,
) -> Option<Authenticated> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    keys.iter().enumerate().find_map(|(index, key)| {
        let header = key.peek_initial(datagram)?;
        let message = wire::noise_message(&key.obfuscator, datagram, &header)?;
        let mut noise = NoiseState::responder(&key.psk, header.client_cid, *seed)?;
        let payload = noise.read(&message)?;
        Some((index, header, message, noise, payload))
    })
}

/// The server's `preferred` suite if the client offers it, else the client's first.
fn choose_cipher(
    preferred: Option<CipherSuite>,
    offered: &[CipherSuite],
) -> Result<CipherSuite, HandshakeError> {
    preferred
        .filter(|p| offered.contains(p))
        .or_else(|| offered.first().copied())
        .ok_or(HandshakeError::NoCommonCipher)
}

/// A random Response length: at least what the content needs and, where the content allows, no
/// longer than the Initial (a datagram of that size just crossed the path; `max_udp_payload` is
/// only a ceiling that path MTU discovery probes towards) nor either side's `max_udp_payload`.
fn response_len(
    initial_len: usize,
    needed: usize,
    ours: &TransportParams,
    theirs: &TransportParams,
    rng: &mut dyn rand::RngCore,
) -> usize {
    let udp_limit = usize::from(ours.max_udp_payload.min(theirs.max_udp_payload)).min(initial_len);
    let high = initial_len
        .saturating_mul(MAX_AMPLIFICATION)
        .min(udp_limit.max(needed));
    if high <= needed {
        needed
    } else {
        rng.random_range(needed..=high)
    }
}

/// Milliseconds since the Unix epoch, saturating.
fn unix_millis(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const NOW: Duration = Duration::from_secs(1_700_000_000);
    const WINDOW: Duration = Duration::from_secs(120);
    const CLIENT_CID: ConnectionId = ConnectionId([0xc1; 8]);
    const SERVER_CID: ConnectionId = ConnectionId([0x5e; 8]);

    fn psk(n: u8) -> Psk {
        Psk::from_bytes([n; 32])
    }

    fn params(ciphers: Vec<CipherSuite>) -> TransportParams {
        TransportParams {
            max_data: 1 << 25,
            max_stream_data: 1 << 24,
            max_streams: 100,
            idle_timeout_ms: 40_000,
            max_udp_payload: 1350,
            ciphers,
            fec: true,
            max_datagram_size: 65_535,
            carrier_offer: None,
        }
    }

    fn both() -> Vec<CipherSuite> {
        vec![CipherSuite::ChaCha20Poly1305, CipherSuite::Aes256Gcm]
    }

    fn initial(key: &Psk, time: Duration, rng: &mut StdRng) -> (ClientHandshake, Vec<u8>) {
        ClientHandshake::start(key, CLIENT_CID, &params(both()), time, 1350, rng)
    }

    fn accept(
        psks: &[Psk],
        cache: &mut ReplayCache,
        dgram: &[u8],
        cipher: Option<CipherSuite>,
        rng: &mut StdRng,
    ) -> Result<Accepted, HandshakeError> {
        let server_params = params(vec![CipherSuite::Aes256Gcm]);
        let keys: Vec<HandshakeKey> = psks.iter().map(HandshakeKey::new).collect();
        accept_initial(
            &keys,
            cache,
            dgram,
            SERVER_CID,
            &server_params,
            cipher,
            NOW,
            WINDOW,
            rng,
            &mut AdmitAll,
        )
    }

    /// Both directions of a pair of packet keys carry data.
    fn assert_keys_pair(a: &mut PacketKeys, b: &mut PacketKeys) {
        assert_one_way(a, b);
        assert_one_way(b, a);
    }

    fn assert_one_way(tx: &mut PacketKeys, rx: &mut PacketKeys) {
        let phase = tx.send_phase(0);
        let mut buf = b"through the tunnel".to_vec();
        tx.seal(phase, 0, b"hdr", &mut buf);
        let len = rx.open(phase, 0, b"hdr", &mut buf).unwrap();
        assert_eq!(&buf[..len], b"through the tunnel");
    }

    #[test]
    fn full_handshake() {
        let mut rng = StdRng::seed_from_u64(1);
        let key = psk(1);
        let (client, init) = initial(&key, NOW, &mut rng);
        assert!((MIN_INITIAL_LEN..=1350).contains(&init.len()));
        let mut cache = ReplayCache::new(WINDOW);
        let accepted = accept(
            std::slice::from_ref(&key),
            &mut cache,
            &init,
            None,
            &mut rng,
        )
        .unwrap();
        assert_eq!(accepted.psk_index, 0);
        assert!(accepted.response.len() <= 3 * init.len());
        let mut server = accepted.established;
        assert_eq!(server.peer_cid, CLIENT_CID);
        assert_eq!(server.peer_params, params(both()));
        assert_eq!(
            peek_response_cid(&key, &accepted.response),
            Some(CLIENT_CID)
        );
        let mut client = client.finish(&accepted.response).unwrap();
        assert_eq!(client.peer_cid, SERVER_CID);
        // No server preference: the client's first choice.
        assert_eq!(client.keys.suite(), CipherSuite::ChaCha20Poly1305);
        assert_eq!(server.keys.suite(), CipherSuite::ChaCha20Poly1305);
        assert_eq!(
            client.peer_params,
            params(vec![CipherSuite::ChaCha20Poly1305])
        );
        assert_keys_pair(&mut client.keys, &mut server.keys);
    }

    #[test]
    fn deterministic_under_a_seeded_rng() {
        let run = || {
            let mut rng = StdRng::seed_from_u64(99);
            let (_, init) = initial(&psk(1), NOW, &mut rng);
            let mut cache = ReplayCache::new(WINDOW);
            let acc = accept(&[psk(1)], &mut cache, &init, None, &mut rng).unwrap();
            (init, acc.response)
        };
        assert_eq!(run(), run());
        let mut other = StdRng::seed_from_u64(100);
        assert_ne!(run().0, initial(&psk(1), NOW, &mut other).1);
    }

    #[test]
    fn server_preference_and_no_common_cipher() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut cache = ReplayCache::new(WINDOW);
        let (client, init) = initial(&psk(1), NOW, &mut rng);
        let acc = accept(
            &[psk(1)],
            &mut cache,
            &init,
            Some(CipherSuite::Aes256Gcm),
            &mut rng,
        )
        .unwrap();
        assert_eq!(acc.established.keys.suite(), CipherSuite::Aes256Gcm);
        assert_eq!(
            client.finish(&acc.response).unwrap().keys.suite(),
            CipherSuite::Aes256Gcm
        );

        let only_aes = params(vec![CipherSuite::Aes256Gcm]);
        let (_, init) = ClientHandshake::start(&psk(1), CLIENT_CID, &only_aes, NOW, 0, &mut rng);
        let acc = accept(
            &[psk(1)],
            &mut cache,
            &init,
            Some(CipherSuite::ChaCha20Poly1305),
            &mut rng,
        );
        assert_eq!(
            acc.unwrap().established.keys.suite(),
            CipherSuite::Aes256Gcm
        );

        let none = params(vec![]);
        let (_, init) = ClientHandshake::start(&psk(1), CLIENT_CID, &none, NOW, 1100, &mut rng);
        let res = accept(&[psk(1)], &mut cache, &init, None, &mut rng);
        assert_eq!(res.unwrap_err(), HandshakeError::NoCommonCipher);
    }

    #[test]
    fn wrong_psk_is_invalid() {
        let mut rng = StdRng::seed_from_u64(3);
        let (client, init) = initial(&psk(1), NOW, &mut rng);
        let mut cache = ReplayCache::new(WINDOW);
        let res = accept(&[psk(2), psk(3)], &mut cache, &init, None, &mut rng);
        assert_eq!(res.unwrap_err(), HandshakeError::Invalid);
        assert!(cache.is_empty());
        // A Response under another key is not recognised either.
        let (_, init2) = initial(&psk(2), NOW, &mut rng);
        let acc = accept(&[psk(2)], &mut cache, &init2, None, &mut rng).unwrap();
        assert_eq!(peek_response_cid(&psk(1), &acc.response), None);
        assert_eq!(
            client.finish(&acc.response).unwrap_err(),
            HandshakeError::Invalid
        );
    }

    #[test]
    fn multiple_psks_report_the_index() {
        let mut rng = StdRng::seed_from_u64(4);
        let keys = [psk(10), psk(11), psk(12)];
        let mut cache = ReplayCache::new(WINDOW);
        for (i, key) in keys.iter().enumerate() {
            let (client, init) = initial(key, NOW, &mut rng);
            let mut acc = accept(&keys, &mut cache, &init, None, &mut rng).unwrap();
            assert_eq!(acc.psk_index, i);
            let mut est = client.finish(&acc.response).unwrap();
            assert_keys_pair(&mut est.keys, &mut acc.established.keys);
        }
    }

    #[test]
    fn replayed_initial_is_refused() {
        let mut rng = StdRng::seed_from_u64(5);
        let (_, init) = initial(&psk(1), NOW, &mut rng);
        let mut cache = ReplayCache::new(WINDOW);
        assert!(accept(&[psk(1)], &mut cache, &init, None, &mut rng).is_ok());
        let res = accept(&[psk(1)], &mut cache, &init, None, &mut rng);
        assert_eq!(res.unwrap_err(), HandshakeError::Replayed);
        // Changing the unauthenticated padding does not get around it.
        let mut padded = init.clone();
        if let Some(last) = padded.last_mut() {
            *last ^= 0xff;
        }
        let res = accept(&[psk(1)], &mut cache, &padded, None, &mut rng);
        assert_eq!(res.unwrap_err(), HandshakeError::Replayed);
    }

    #[test]
    fn stale_timestamps_are_refused() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut cache = ReplayCache::new(WINDOW);
        let edge = WINDOW;
        for (offset_ok, time) in [
            (true, NOW - edge),
            (true, NOW + edge),
            (false, NOW - edge - Duration::from_millis(1)),
            (false, NOW + edge + Duration::from_millis(1)),
            (false, Duration::ZERO),
        ] {
            let (_, init) = initial(&psk(1), time, &mut rng);
            let res = accept(&[psk(1)], &mut cache, &init, None, &mut rng);
            if offset_ok {
                assert!(res.is_ok(), "{time:?}");
            } else {
                assert_eq!(res.unwrap_err(), HandshakeError::Stale, "{time:?}");
            }
        }
    }

    #[test]
    fn lengths_and_amplification() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut cache = ReplayCache::new(WINDOW);
        for max_len in [0, 1000, 1001, 1200, 1350, 1500] {
            for _ in 0..10 {
                let (_, init) = ClientHandshake::start(
                    &psk(1),
                    CLIENT_CID,
                    &params(both()),
                    NOW,
                    max_len,
                    &mut rng,
                );
                assert!(init.len() >= MIN_INITIAL_LEN);
                assert!(init.len() <= max_len.max(MIN_INITIAL_LEN));
                let acc = accept(&[psk(1)], &mut cache, &init, None, &mut rng).unwrap();
                assert!(acc.response.len() <= 3 * init.len());
                assert!(acc.response.len() <= 1350);
                // No larger than a datagram that just crossed the path.
                assert!(acc.response.len() <= init.len());
            }
        }
        // Short Initials are refused before any work.
        let (_, init) = initial(&psk(1), NOW, &mut rng);
        let res = accept(
            &[psk(1)],
            &mut cache,
            &init[..MIN_INITIAL_LEN - 1],
            None,
            &mut rng,
        );
        assert_eq!(res.unwrap_err(), HandshakeError::Invalid);
    }

    #[test]
    fn response_length_bounds() {
        let mut rng = StdRng::seed_from_u64(8);
        let p = params(both());
        let tiny = TransportParams {
            max_udp_payload: 10,
            ..p.clone()
        };
        for _ in 0..100 {
            let len = response_len(1000, 150, &p, &p, &mut rng);
            // Within the Initial's 1000 bytes, though both sides allow 1350.
            assert!((150..=1000).contains(&len));
            assert_eq!(response_len(1000, 150, &tiny, &p, &mut rng), 150);
            assert!((100..=120).contains(&response_len(40, 100, &p, &p, &mut rng)));
            // Content longer than 3x (impossible for accepted Initials): no padding at all.
            assert_eq!(response_len(30, 100, &p, &p, &mut rng), 100);
        }
    }

    #[test]
    fn tampered_initial_is_invalid() {
        let mut rng = StdRng::seed_from_u64(9);
        let (_, init) = initial(&psk(1), NOW, &mut rng);
        let key = [psk(1)];
        let header = wire::peek_header(&Obfuscator::new(&psk(1)), &init).unwrap();
        // Every byte up to the end of the Noise message is covered.
        for i in 0..PREFIX_LEN + header.noise_len {
            let mut bad = init.clone();
            bad[i] ^= 0x04;
            let mut cache = ReplayCache::new(WINDOW);
            let res = accept(&key, &mut cache, &bad, None, &mut rng);
            assert_eq!(res.unwrap_err(), HandshakeError::Invalid, "byte {i}");
        }
    }

    #[test]
    fn client_survives_wrong_responses() {
        let mut rng = StdRng::seed_from_u64(10);
        let mut cache = ReplayCache::new(WINDOW);
        let (mut client, init) = initial(&psk(1), NOW, &mut rng);
        let acc = accept(&[psk(1)], &mut cache, &init, None, &mut rng).unwrap();
        // A Response to another Initial with the same CID (an earlier attempt).
        let (_, other_init) = initial(&psk(1), NOW, &mut rng);
        let other = accept(&[psk(1)], &mut cache, &other_init, None, &mut rng).unwrap();
        assert_eq!(
            client.try_finish(&other.response).unwrap_err(),
            HandshakeError::Invalid
        );
        assert_eq!(
            client.try_finish(&init).unwrap_err(),
            HandshakeError::Invalid
        );
        assert_eq!(
            client.try_finish(&[0; 50]).unwrap_err(),
            HandshakeError::Invalid
        );
        let mut truncated = acc.response.clone();
        truncated.truncate(PREFIX_LEN + 40);
        assert_eq!(
            client.try_finish(&truncated).unwrap_err(),
            HandshakeError::Invalid
        );
        let mut est = client.try_finish(&acc.response).unwrap();
        let mut server = acc.established;
        assert_keys_pair(&mut est.keys, &mut server.keys);
        // Spent: a second Response cannot finish it again.
        assert_eq!(
            client.try_finish(&acc.response).unwrap_err(),
            HandshakeError::Invalid
        );
    }

    #[test]
    fn garbage_of_every_short_length() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut client, _) = initial(&psk(1), NOW, &mut rng);
        let mut cache = ReplayCache::new(WINDOW);
        for len in 0..200 {
            for fill in [0x00u8, 0xff, 0x5a] {
                let d = vec![fill; len];
                assert_eq!(peek_response_cid(&psk(1), &d), None, "len {len}");
                assert!(client.try_finish(&d).is_err());
                let res = accept(&[psk(1)], &mut cache, &d, None, &mut rng);
                assert_eq!(res.unwrap_err(), HandshakeError::Invalid);
            }
        }
    }

    proptest! {
        #[test]
        fn random_datagrams_never_panic(d in proptest::collection::vec(any::<u8>(), 0..1400),
                                        seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut client, _) = initial(&psk(1), NOW, &mut rng);
            let mut cache = ReplayCache::new(WINDOW);
            let _ = peek_response_cid(&psk(1), &d);
            prop_assert!(client.try_finish(&d).is_err());
            let res = accept(&[psk(1), psk(2)], &mut cache, &d, None, &mut rng);
            prop_assert_eq!(res.unwrap_err(), HandshakeError::Invalid);
        }

        /// Random bytes with a valid-looking header (right type, version and length under the
        /// key) still fail in Noise, not earlier with a panic.
        #[test]
        fn forged_headers_never_panic(noise in proptest::collection::vec(any::<u8>(), 0..200),
                                      len in 1000usize..1400, seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let obf = Obfuscator::new(&psk(1));
            let d = wire::encode_datagram(&obf, &mut rng, TYPE_INITIAL, CLIENT_CID, &noise, len);
            let mut cache = ReplayCache::new(WINDOW);
            let res = accept(&[psk(1)], &mut cache, &d, None, &mut rng);
            prop_assert_eq!(res.unwrap_err(), HandshakeError::Invalid);
            let (mut client, _) = initial(&psk(1), NOW, &mut rng);
            let d = wire::encode_datagram(&obf, &mut rng, TYPE_RESPONSE, CLIENT_CID, &noise, len);
            prop_assert_eq!(peek_response_cid(&psk(1), &d), Some(CLIENT_CID));
            prop_assert!(client.try_finish(&d).is_err());
        }
    }
}
