//! The Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s` state, via `snow`, with ephemeral keys drawn from
//! the caller's RNG so that handshakes are reproducible under a seeded RNG.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

use crate::crypto::Psk;
use crate::packet::ConnectionId;

use super::wire::VERSION;

/// The Noise protocol name.
pub(super) const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Start of the Noise prologue; the version and the client CID follow, so both are
/// authenticated although they travel outside the Noise message.
pub(super) const PROLOGUE_LABEL: &[u8] = b"gaptun v1 handshake";
/// Length of an X25519 public key, the start of the Initial's Noise message.
const DH_LEN: usize = 32;
/// Noise's AEAD tag.
const NOISE_TAG_LEN: usize = 16;

/// Resolves snow's RNG to one seeded by us and everything else to snow's default primitives.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(StdRng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A ChaCha-based CSPRNG seeded from the caller's RNG; snow draws the ephemeral key from it.
struct SeededRandom(StdRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// One side's handshake state.
pub(super) struct NoiseState {
    state: HandshakeState,
}

impl NoiseState {
    /// The client side, its ephemeral key seeded from `rng`.
    pub(super) fn initiator(psk: &Psk, client_cid: ConnectionId, rng: &mut dyn RngCore) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        // Only fails for unsupported primitives or a bad PSK slot, both fixed here.
        let state = build(psk, client_cid, seed, true)
            .expect("constant Noise parameters are supported by snow's default resolver");
        Self { state }
    }

    /// The server side; `None` only if snow rejects the (constant) parameters.
    pub(super) fn responder(psk: &Psk, client_cid: ConnectionId, seed: [u8; 32]) -> Option<Self> {
        build(psk, client_cid, seed, false)
            .ok()
            .map(|state| Self { state })
    }

    /// Writes the next handshake message carrying `payload`.
    ///
    /// Our payloads are a few dozen bytes, far below Noise's 65535-byte limit, and the buffer
    /// has room for the key and tag, so snow cannot refuse.
    pub(super) fn write(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; DH_LEN + payload.len() + NOISE_TAG_LEN];
        let len = self
            .state
            .write_message(payload, &mut out)
            .expect("handshake payload fits a Noise message");
        out.truncate(len);
        out
    }

    /// Reads and authenticates the peer's message; `None` if it fails (state unchanged).
    pub(super) fn read(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        let mut payload = vec![0u8; message.len()];
        let len = self.state.read_message(message, &mut payload).ok()?;
        payload.truncate(len);
        Some(payload)
    }

    /// The traffic secrets (initiator-to-responder, responder-to-initiator): Noise's `Split()`
    /// outputs, taken raw instead of as Noise cipher states.
    pub(super) fn split(&mut self) -> ([u8; 32], [u8; 32]) {
        self.state.dangerously_get_raw_split()
    }
}

fn build(
    psk: &Psk,
    client_cid: ConnectionId,
    seed: [u8; 32],
    initiator: bool,
) -> Result<HandshakeState, snow::Error> {
    let params = NOISE_PARAMS.parse()?;
    let prologue = prologue(client_cid);
    let builder = Builder::with_resolver(params, Box::new(SeededResolver { seed }))
        .psk(0, psk.as_bytes())?
        .prologue(&prologue)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
}

/// `"gaptun v1 handshake" || version || client CID`.
fn prologue(client_cid: ConnectionId) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.push(VERSION);
    p.extend_from_slice(&client_cid.0);
    p
}

/// The replay-cache fingerprint of an Initial: the client's ephemeral public key, the first 32
/// bytes of its Noise message. Noise authenticates it, and it is fresh for every handshake.
pub(super) fn ephemeral_fingerprint(message: &[u8]) -> Option<[u8; 32]> {
    message.get(..DH_LEN)?.try_into().ok()
}
