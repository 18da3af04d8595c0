//! Stateless reset: how a restarted server tells a client at once that its connection is gone.
//!
//! A server that restarts loses every connection. Its clients keep sending packets of the dead
//! connections, and (especially behind a NAT, whose mapping they keep alive) nothing would end
//! them before the liveness check or the idle timeout. With a stateless reset the restarted
//! server answers such a packet with a datagram the client can authenticate, without keeping any
//! state, and the client closes the connection and reconnects at once.
//!
//! Two values derived from a PSK make this work without revealing the server to a prober:
//!
//! - **Self-authenticating connection IDs.** A server issues connection IDs made of
//!   [`CID_RANDOM_LEN`] random bytes and a [`CID_TAG_LEN`]-byte tag,
//!   `HMAC-SHA256(cid_key, random)[..4]`, with `cid_key = Derive(psk, "gaptun v1 cid")`
//!   (the endpoint's first key). A restarted server only considers answering a datagram whose
//!   unmasked connection ID carries a valid tag: a prober without the key produces one with
//!   probability 2^-32 per key and otherwise gets silence, as before.
//! - **Reset tokens.** The token of a connection is `HMAC-SHA256(reset_key, server_cid)[..16]`
//!   with `reset_key = Derive(psk, "gaptun v1 reset")`, computed by both ends from the key they
//!   share; it is never sent except in a reset.
//!
//! The reset datagram is random bytes ending in the token, of a random length between
//! [`RESET_MIN_LEN`] and one byte less than the datagram that triggered it: it looks like any
//! other packet, cannot amplify, and two endpoints cannot bounce resets back and forth (each is
//! smaller than the last, and a reset is never answered with one). Resets are also rate-limited
//! ([`ResetLimiter`]).

use std::time::{Duration, Instant};

use rand::RngCore;
use ring::hmac;

use crate::crypto::{Psk, hkdf_expand};
use crate::packet::{CID_LEN, ConnectionId, MIN_PACKET_LEN};

/// Random bytes at the start of a server-issued connection ID.
pub(crate) const CID_RANDOM_LEN: usize = 4;
/// Tag bytes at the end of a server-issued connection ID.
pub(crate) const CID_TAG_LEN: usize = CID_LEN - CID_RANDOM_LEN;
/// Length of a reset token: the last bytes of a reset datagram.
pub(crate) const TOKEN_LEN: usize = 16;
/// Shortest reset datagram: as long as the shortest datagram that can be a packet, plus one.
/// A trigger must be longer than this to be answered.
pub(crate) const RESET_MIN_LEN: usize = MIN_PACKET_LEN + 1;
/// Resets a server sends per second at most (and in one burst).
const RESETS_PER_SECOND: f64 = 32.0;

/// Label of the connection-ID tag key.
const CID_KEY_LABEL: &[u8] = b"gaptun v1 cid";
/// Label of the reset-token key.
const RESET_KEY_LABEL: &[u8] = b"gaptun v1 reset";

/// Issues and recognises self-authenticating connection IDs.
pub(crate) struct CidAuthenticator {
    key: hmac::Key,
}

impl std::fmt::Debug for CidAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CidAuthenticator")
    }
}

impl CidAuthenticator {
    pub(crate) fn new(psk: &Psk) -> Self {
        let key: [u8; 32] = hkdf_expand(psk.as_bytes(), CID_KEY_LABEL);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    fn tag(&self, random: &[u8]) -> [u8; CID_TAG_LEN] {
        let mac = hmac::sign(&self.key, random);
        let mut tag = [0u8; CID_TAG_LEN];
        tag.copy_from_slice(&mac.as_ref()[..CID_TAG_LEN]);
        tag
    }

    /// A new connection ID carrying its tag.
    pub(crate) fn issue(&self, rng: &mut dyn RngCore) -> ConnectionId {
        let mut cid = [0u8; CID_LEN];
        rng.fill_bytes(&mut cid[..CID_RANDOM_LEN]);
        let tag = self.tag(&cid[..CID_RANDOM_LEN]);
        cid[CID_RANDOM_LEN..].copy_from_slice(&tag);
        ConnectionId(cid)
    }

    /// Whether `cid` is one this key could have issued.
    pub(crate) fn is_issued(&self, cid: &ConnectionId) -> bool {
        let tag = self.tag(&cid.0[..CID_RANDOM_LEN]);
        constant_time_eq(&tag, &cid.0[CID_RANDOM_LEN..])
    }
}

/// Computes reset tokens for one PSK.
pub(crate) struct ResetKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey")
    }
}

impl ResetKey {
    pub(crate) fn new(psk: &Psk) -> Self {
        let key: [u8; 32] = hkdf_expand(psk.as_bytes(), RESET_KEY_LABEL);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    /// The reset token of the connection the server knows as `server_cid`.
    pub(crate) fn token(&self, server_cid: &ConnectionId) -> [u8; TOKEN_LEN] {
        let mac = hmac::sign(&self.key, &server_cid.0);
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(&mac.as_ref()[..TOKEN_LEN]);
        token
    }
}

/// A reset datagram answering a trigger of `trigger_len` bytes, or `None` if the trigger is too
/// short to be answered by anything smaller.
pub(crate) fn build_reset(
    token: &[u8; TOKEN_LEN],
    trigger_len: usize,
    rng: &mut dyn RngCore,
) -> Option<Vec<u8>> {
    let max = trigger_len.checked_sub(1)?;
    if max < RESET_MIN_LEN {
        return None;
    }
    let span = (max - RESET_MIN_LEN + 1) as u64;
    let len = RESET_MIN_LEN + (rng.next_u64() % span) as usize;
    let mut datagram = vec![0u8; len];
    rng.fill_bytes(&mut datagram[..len - TOKEN_LEN]);
    datagram[len - TOKEN_LEN..].copy_from_slice(token);
    Some(datagram)
}

/// Whether `datagram` is a reset carrying `token`.
pub(crate) fn is_reset(token: &[u8; TOKEN_LEN], datagram: &[u8]) -> bool {
    datagram.len() >= RESET_MIN_LEN
        && constant_time_eq(token, &datagram[datagram.len() - TOKEN_LEN..])
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token bucket bounding the resets a server sends, so that a flood of (replayed) packets of
/// dead connections cannot make it a traffic source.
#[derive(Debug, Clone)]
pub(crate) struct ResetLimiter {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for ResetLimiter {
    fn default() -> Self {
        Self {
            tokens: RESETS_PER_SECOND,
            last: None,
        }
    }
}

impl ResetLimiter {
    /// Takes one reset from the budget; false if it is used up.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * RESETS_PER_SECOND).min(RESETS_PER_SECOND);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Most resets waiting to be sent; beyond this, triggers get silence.
const MAX_QUEUED_RESETS: usize = 64;

/// An endpoint's stateless-reset state: issuing connection IDs, answering packets of unknown
/// connections (server), recognising resets (client).
#[derive(Debug)]
pub(crate) struct StatelessReset {
    /// From the endpoint's first key; `None` without keys (IDs are then plain random).
    cid_auth: Option<CidAuthenticator>,
    /// One per configured key, in the same order.
    reset_keys: Vec<ResetKey>,
    limiter: ResetLimiter,
    queued: std::collections::VecDeque<(crate::shared::PathAddr, Vec<u8>)>,
}

impl StatelessReset {
    pub(crate) fn new(psks: &[Psk]) -> Self {
        Self {
            cid_auth: psks.first().map(CidAuthenticator::new),
            reset_keys: psks.iter().map(ResetKey::new).collect(),
            limiter: ResetLimiter::default(),
            queued: std::collections::VecDeque::new(),
        }
    }

    /// Whether `cid` carries this server's tag (it could have issued it). Always false without
    /// keys.
    pub(crate) fn is_issued(&self, cid: &ConnectionId) -> bool {
        self.cid_auth
            .as_ref()
            .is_some_and(|auth| auth.is_issued(cid))
    }

    /// A fresh connection ID for this endpoint to receive on.
    pub(crate) fn issue_cid(&self, rng: &mut dyn RngCore) -> ConnectionId {
        match &self.cid_auth {
            Some(auth) => auth.issue(rng),
            None => {
                let mut cid = [0u8; CID_LEN];
                rng.fill_bytes(&mut cid);
                ConnectionId(cid)
            }
        }
    }

    /// Server: `data` from `from` (a path: the reset goes back on the carrier it came in on)
    /// matched no connection and is no handshake. If, unmasked with
    /// one of `header_keys` (in key order), it carries a connection ID this server could have
    /// issued, a reset is queued for it (within the rate limit). Returns whether one was.
    pub(crate) fn answer_unknown<'a>(
        &mut self,
        now: Instant,
        from: crate::shared::PathAddr,
        data: &[u8],
        header_keys: impl Iterator<Item = &'a crate::crypto::HeaderKey>,
        rng: &mut dyn RngCore,
    ) -> bool {
        let Some(auth) = &self.cid_auth else {
            return false;
        };
        if data.len() <= RESET_MIN_LEN || self.queued.len() >= MAX_QUEUED_RESETS {
            return false;
        }
        for (index, header_key) in header_keys.enumerate() {
            let Some(cid) = crate::packet::peek_cid(header_key, data) else {
                return false;
            };
            if !auth.is_issued(&cid) {
                continue;
            }
            let Some(reset_key) = self.reset_keys.get(index) else {
                return false;
            };
            if !self.limiter.allow(now) {
                return false;
            }
            let token = reset_key.token(&cid);
            let Some(datagram) = build_reset(&token, data.len(), rng) else {
                return false;
            };
            self.queued.push_back((from, datagram));
            return true;
        }
        false
    }

    /// Client: whether `data` is the reset of the connection the server knows as `server_cid`
    /// (the client connects with its first key).
    pub(crate) fn is_reset_for(&self, server_cid: &ConnectionId, data: &[u8]) -> bool {
        self.reset_keys
            .first()
            .is_some_and(|key| is_reset(&key.token(server_cid), data))
    }

    /// The next queued reset, written into `buf`.
    pub(crate) fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<crate::shared::Transmit> {
        let (path, datagram) = self.queued.pop_front()?;
        buf.clear();
        buf.extend_from_slice(&datagram);
        Some(crate::shared::Transmit::to(path, buf.len(), None))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn issued_cids_authenticate_and_random_ones_do_not() {
        let auth = CidAuthenticator::new(&Psk::from_bytes([3; 32]));
        let other = CidAuthenticator::new(&Psk::from_bytes([4; 32]));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let cid = auth.issue(&mut rng);
            assert!(auth.is_issued(&cid));
            assert!(!other.is_issued(&cid));
        }
        let mut forged = 0;
        for _ in 0..10_000 {
            let mut raw = [0u8; CID_LEN];
            rng.fill_bytes(&mut raw);
            forged += usize::from(auth.is_issued(&ConnectionId(raw)));
        }
        assert_eq!(forged, 0);
    }

    #[test]
    fn reset_is_smaller_than_its_trigger_and_carries_the_token() {
        let key = ResetKey::new(&Psk::from_bytes([5; 32]));
        let token = key.token(&ConnectionId([9; CID_LEN]));
        assert_ne!(token, key.token(&ConnectionId([8; CID_LEN])));
        let mut rng = StdRng::seed_from_u64(2);
        for trigger in [RESET_MIN_LEN + 1, 32, 33, 100, 1350] {
            for _ in 0..50 {
                let reset = build_reset(&token, trigger, &mut rng).expect("trigger long enough");
                assert!(reset.len() < trigger && reset.len() >= RESET_MIN_LEN);
                assert!(is_reset(&token, &reset));
            }
        }
        assert_eq!(build_reset(&token, RESET_MIN_LEN, &mut rng), None);
        assert_eq!(build_reset(&token, 0, &mut rng), None);
        assert!(!is_reset(&token, &[0u8; 100]));
        assert!(!is_reset(&token, &token[..]));
    }

    #[test]
    fn limiter_refills_over_time() {
        let mut limiter = ResetLimiter::default();
        let t0 = Instant::now();
        let burst = (0..100).filter(|_| limiter.allow(t0)).count();
        assert_eq!(burst, RESETS_PER_SECOND as usize);
        assert!(!limiter.allow(t0));
        let later = t0 + Duration::from_millis(500);
        let refilled = (0..100).filter(|_| limiter.allow(later)).count();
        assert_eq!(refilled, (RESETS_PER_SECOND / 2.0) as usize);
    }
}
