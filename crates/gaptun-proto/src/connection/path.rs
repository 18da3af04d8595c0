//! The network path to the peer: its address, whether it is validated, and the
//! anti-amplification budget that applies until it is; and following a client to a new address
//! (connection migration, RFC 9000 section 9.3).
//!
//! Only the server follows the peer. A packet from a new address is not processed (nor marked
//! received, so the same packet number may still arrive from the current path) until that
//! address has proven that the client is there; if it is the newest the server has received it
//! makes that address a *candidate*: the server sends it a PATH_CHALLENGE (within
//! the anti-amplification budget of what arrived from there, repeated each RTO up to
//! [`MAX_CANDIDATE_CHALLENGES`] times), and one on the current path too, so that a client still
//! there answers from there. Meanwhile everything else keeps going to the current, validated
//! path. The server moves only when the candidate has answered its challenge *and* a
//! non-probing packet (one with a frame other than PATH_CHALLENGE, PATH_RESPONSE or PADDING)
//! arrives from it that is the newest so far, so newer than anything seen on the old path.
//! If the current path answers its challenge first, the candidate is dropped.
//!
//! So an on-path attacker that copies a client's packet and sends the copy first from another
//! address costs the server a challenge or two and nothing else: it cannot answer the challenge
//! (it has no keys), the original is still taken when it arrives (so the copy does not even
//! reorder the client's packets), and the transfer never leaves the real client's address. A
//! real NAT rebinding moves the connection after one round trip; what the client sent from the
//! new address before that is retransmitted.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Connection, Timer};

/// PATH_CHALLENGEs sent to a candidate address before it is given up (a newer packet from it
/// starts over).
const MAX_CANDIDATE_CHALLENGES: u32 = 6;

/// Before a path is validated we send at most this many times what we received on it, so that
/// a forged source address cannot turn us into an amplifier.
pub(super) const AMPLIFICATION_FACTOR: u64 = 3;

#[derive(Debug, Clone)]
pub(super) struct Path {
    pub(super) remote: SocketAddr,
    /// The peer proved it receives at this address (handshake confirmed or PATH_RESPONSE).
    pub(super) validated: bool,
    /// Bytes received from and sent to `remote` since it became the path.
    pub(super) bytes_received: u64,
    pub(super) bytes_sent: u64,
    /// Outstanding PATH_CHALLENGE data.
    pub(super) challenge: Option<[u8; 8]>,
    /// Whether a PATH_CHALLENGE must go out in the next packet.
    pub(super) challenge_pending: bool,
    /// PATH_CHALLENGEs sent on this path.
    pub(super) challenges_sent: u32,
}

impl Path {
    pub(super) fn new(remote: SocketAddr, validated: bool) -> Self {
        Self {
            remote,
            validated,
            bytes_received: 0,
            bytes_sent: 0,
            challenge: None,
            challenge_pending: false,
            challenges_sent: 0,
        }
    }

    /// Bytes we may still send on this path now.
    pub(super) fn send_budget(&self) -> u64 {
        if self.validated {
            u64::MAX
        } else {
            (self.bytes_received * AMPLIFICATION_FACTOR).saturating_sub(self.bytes_sent)
        }
    }
}

impl Connection {
    fn new_challenge(&mut self) -> [u8; 8] {
        let mut challenge = [0u8; 8];
        rand::RngCore::fill_bytes(&mut self.rng, &mut challenge);
        challenge
    }

    /// Server: packet `pn` (authenticated, not a replay) of `len` bytes came from `from`, which
    /// is not the current path. Returns whether to process it as usual: only if `from` is a
    /// candidate that has proven it is the client (possibly by this very packet).
    ///
    /// Anything else is not processed and not marked as received: it may be a copy sent ahead
    /// of the original by someone on the path, and taking it would make the original a replay
    /// and reorder what the client sent. Such a packet only starts a probe of its address (if
    /// it is the newest so far) and may deliver a PATH_RESPONSE.
    pub(super) fn accept_from_elsewhere(
        &mut self,
        now: Instant,
        from: SocketAddr,
        pn: u64,
        len: u64,
        payload: &[u8],
    ) -> bool {
        match self.candidate.as_mut() {
            Some(c) if c.remote == from && c.validated => {
                c.bytes_received += len;
                return true;
            }
            Some(c) if c.remote == from => c.bytes_received += len,
            _ => {
                let newest = self.replay.largest().is_none_or(|l| pn > l);
                if !newest {
                    return false;
                }
                self.start_candidate(now, from, len);
            }
        }
        for frame in crate::frame::iter(payload) {
            match frame {
                Ok(crate::frame::Frame::PathResponse(data)) => self.on_path_response(data),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.candidate
            .as_ref()
            .is_some_and(|c| c.remote == from && c.validated)
    }

    /// Makes `from` the candidate address and challenges it and the current path.
    fn start_candidate(&mut self, now: Instant, from: SocketAddr, len: u64) {
        let mut candidate = Path::new(from, false);
        candidate.bytes_received = len;
        candidate.challenge = Some(self.new_challenge());
        candidate.challenge_pending = true;
        self.candidate = Some(candidate);
        // Ask the current path as well: a client still there answers from there, which ends the
        // candidate.
        if self.path.challenge.is_none() {
            self.path.challenge = Some(self.new_challenge());
            self.path.challenge_pending = true;
        }
        self.stats.path_probes += 1;
        self.timers.set(Timer::PathChallenge, now + self.rto());
        tracing::debug!(remote = %from, "packet from a new peer address: validating it");
    }

    /// A PATH_RESPONSE arrived.
    pub(super) fn on_path_response(&mut self, data: [u8; 8]) {
        if let Some(candidate) = self.candidate.as_mut()
            && candidate.challenge == Some(data)
        {
            candidate.validated = true;
            candidate.challenge = None;
            candidate.challenge_pending = false;
            return;
        }
        if self.path.challenge == Some(data) {
            self.path.validated = true;
            self.path.challenge = None;
            self.path.challenge_pending = false;
            // The current path works: a candidate that has not answered yet is dropped.
            if self.candidate.as_ref().is_some_and(|c| !c.validated) {
                tracing::debug!("current path answered its challenge: candidate address dropped");
                self.candidate = None;
            }
        }
    }

    /// After packet `pn` from `from` was processed: move to the candidate if this packet
    /// completes the conditions (validated candidate, non-probing, newest).
    pub(super) fn maybe_migrate(&mut self, from: SocketAddr, pn: u64, non_probing: bool) {
        let ready = self
            .candidate
            .as_ref()
            .is_some_and(|c| c.remote == from && c.validated);
        if !ready || !non_probing || self.replay.largest() != Some(pn) {
            return;
        }
        let Some(mut path) = self.candidate.take() else {
            return;
        };
        path.challenge_pending = false;
        self.path = path;
        // The new path may carry less: start again from the initial size.
        self.pmtu.on_path_changed();
        self.stats.migrations += 1;
        tracing::debug!(remote = %from, "peer address changed: moved to the validated address");
    }

    /// The path-challenge timer fired: repeat unanswered challenges, give up on a candidate that
    /// never answers.
    pub(super) fn on_path_challenge_timer(&mut self, now: Instant) {
        let mut again = false;
        if let Some(candidate) = self.candidate.as_mut()
            && !candidate.validated
        {
            if candidate.challenges_sent >= MAX_CANDIDATE_CHALLENGES {
                tracing::debug!(remote = %candidate.remote, "candidate address never answered");
                self.candidate = None;
                // The next candidate asks the current path again.
                if self.path.validated {
                    self.path.challenge = None;
                    self.path.challenge_pending = false;
                }
            } else {
                candidate.challenge_pending = true;
                again = true;
            }
        }
        if !self.path.validated && self.path.challenge.is_some() {
            self.path.challenge_pending = true;
            again = true;
        }
        if again {
            self.timers.set(Timer::PathChallenge, now + self.rto());
        }
    }

    /// A datagram with a PATH_CHALLENGE for the candidate address, if one is due and its
    /// anti-amplification budget allows. It is not tracked for loss (an address that does not
    /// answer is no congestion signal); the timer repeats it.
    pub(super) fn transmit_candidate_challenge(
        &mut self,
        buf: &mut Vec<u8>,
    ) -> Option<crate::shared::Transmit> {
        let candidate = self.candidate.as_ref()?;
        if !candidate.challenge_pending {
            return None;
        }
        let data = candidate.challenge?;
        let remote = candidate.remote;
        let budget = candidate.send_budget();
        let start = crate::packet::begin(buf);
        crate::frame::Frame::PathChallenge(data).encode(buf);
        let len = (buf.len() - start + crate::packet::TAG_LEN) as u64;
        if len > budget {
            buf.truncate(start);
            return None;
        }
        let pn = self.next_pn;
        self.seal(buf, start, pn);
        let size = (buf.len() - start) as u64;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size;
        if let Some(candidate) = self.candidate.as_mut() {
            candidate.challenge_pending = false;
            candidate.challenges_sent += 1;
            candidate.bytes_sent += size;
        }
        Some(crate::shared::Transmit {
            destination: remote,
            size: buf.len(),
            segment_size: None,
        })
    }
}
