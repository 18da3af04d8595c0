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
//! If the current path answers its challenge first, a candidate on another host that has not
//! answered yet is dropped.
//!
//! Several candidates are validated at once (up to [`MAX_CANDIDATES`]): a fake-TCP client
//! spreads its packets over one flow per server port, each from its own source port, so the
//! server sees several new addresses of the same host at the same moment. With a single
//! candidate each new address replaced the previous one before it could answer, no flow but
//! the first was ever validated, and the connection died under load. Candidates on the current
//! path's host are kept when the current path answers: that host is the client, and it is
//! expected to be at both addresses.
//!
//! So an on-path attacker that copies a client's packet and sends the copy first from another
//! address costs the server a challenge or two and nothing else: it cannot answer the challenge
//! (it has no keys), the original is still taken when it arrives (so the copy does not even
//! reorder the client's packets), and the transfer never leaves the real client's address. A
//! real NAT rebinding moves the connection after one round trip; what the client sent from the
//! new address before that is retransmitted.
//!
//! Paths, not addresses: a path is (our carrier, the peer's address on it), so a client that
//! spreads its packets over a range of server ports, or over two carriers, reaches the server on
//! several paths. The server keeps the paths it has validated (up to [`MAX_ALTERNATES`] besides
//! the current one) and answers on the path the newest packet came from: a packet from a
//! validated path is taken at once, and a non-probing one that is the newest so far makes its
//! path the current one (a switch, not a migration: nothing is reset). A path whose peer address
//! is that of a validated path, on another of our carriers, counts as validated at once: the
//! address has proven it is the client, and only the carrier differs (packets copied to another
//! port by an attacker are answered to the real client). A client that moves to a new address
//! (NAT rebinding, port hopping) goes through the candidate validation above.

use std::time::Instant;

use super::{Connection, Timer};
use crate::shared::PathAddr;

/// PATH_CHALLENGEs sent to a candidate address before it is given up (a newer packet from it
/// starts over).
const MAX_CANDIDATE_CHALLENGES: u32 = 6;

/// Validated paths a server keeps besides the current one (oldest forgotten first).
pub(super) const MAX_ALTERNATES: usize = 16;

/// New peer addresses a server validates at once (oldest unvalidated forgotten first).
pub(super) const MAX_CANDIDATES: usize = 16;

/// Before a path is validated we send at most this many times what we received on it, so that
/// a forged source address cannot turn us into an amplifier.
pub(super) const AMPLIFICATION_FACTOR: u64 = 3;

#[derive(Debug, Clone)]
pub(super) struct Path {
    pub(super) addr: PathAddr,
    /// The peer proved it receives at this address (handshake confirmed or PATH_RESPONSE).
    pub(super) validated: bool,
    /// Bytes received from and sent to `addr` since it became the path.
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
    pub(super) fn new(addr: PathAddr, validated: bool) -> Self {
        Self {
            addr,
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
    pub(super) fn new_challenge(&mut self) -> [u8; 8] {
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
        from: PathAddr,
        pn: u64,
        len: u64,
        payload: &[u8],
    ) -> bool {
        if let Some(alt) = self.alternate_for(from) {
            alt.bytes_received += len;
            return true;
        }
        match self.candidates.iter_mut().find(|c| c.addr == from) {
            Some(c) if c.validated => {
                c.bytes_received += len;
                return true;
            }
            Some(c) => c.bytes_received += len,
            None => {
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
        self.candidates
            .iter()
            .any(|c| c.addr == from && c.validated)
    }

    /// The validated alternate path `from`, if it is one, or becomes one because its peer
    /// address is already validated on another of our carriers.
    fn alternate_for(&mut self, from: PathAddr) -> Option<&mut Path> {
        if let Some(i) = self.alternates.iter().position(|p| p.addr == from) {
            return self.alternates.get_mut(i);
        }
        let known = self.path.validated && self.path.addr.remote == from.remote
            || self
                .alternates
                .iter()
                .any(|p| p.validated && p.addr.remote == from.remote);
        if !known {
            return None;
        }
        tracing::debug!(path = %from, "known peer address on another carrier: path added");
        self.push_alternate(Path::new(from, true));
        self.alternates.last_mut()
    }

    /// Keeps `path` as a validated alternate, forgetting the oldest beyond the limit.
    fn push_alternate(&mut self, path: Path) {
        if !path.validated {
            return;
        }
        self.alternates.retain(|p| p.addr != path.addr);
        if self.alternates.len() >= MAX_ALTERNATES {
            self.alternates.remove(0);
        }
        self.alternates.push(path);
    }

    /// Makes `from` a candidate address and challenges it and the current path.
    fn start_candidate(&mut self, now: Instant, from: PathAddr, len: u64) {
        let mut candidate = Path::new(from, false);
        candidate.bytes_received = len;
        candidate.challenge = Some(self.new_challenge());
        candidate.challenge_pending = true;
        if self.candidates.len() >= MAX_CANDIDATES {
            // Forget the oldest that has not answered; if all have, the oldest.
            let oldest = self.candidates.iter().position(|c| !c.validated);
            self.candidates.remove(oldest.unwrap_or(0));
        }
        self.candidates.push(candidate);
        // Ask the current path as well: a client still there answers from there, which ends
        // candidates on other hosts.
        if self.path.challenge.is_none() {
            self.path.challenge = Some(self.new_challenge());
            self.path.challenge_pending = true;
        }
        self.stats.path_probes += 1;
        self.timers.set(Timer::PathChallenge, now + self.rto());
        tracing::debug!(path = %from, "packet from a new peer address: validating it");
    }

    /// A PATH_RESPONSE arrived.
    pub(super) fn on_path_response(&mut self, data: [u8; 8]) {
        if let Some(candidate) = self
            .candidates
            .iter_mut()
            .find(|c| c.challenge == Some(data))
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
            // The current path works: a candidate on another host that has not answered yet is
            // dropped (see the module documentation).
            let host = self.path.addr.remote.ip();
            let before = self.candidates.len();
            self.candidates
                .retain(|c| c.validated || c.addr.remote.ip() == host);
            if self.candidates.len() < before {
                tracing::debug!("current path answered its challenge: candidate address dropped");
            }
        }
    }

    /// After packet `pn` from `from` was processed: move to the candidate if this packet
    /// completes the conditions (validated candidate, non-probing, newest), or switch to a
    /// validated alternate path it came on if it is non-probing and the newest.
    ///
    /// A move while retransmission timeouts are backing off (the old path went dark, and the
    /// client failed over) retransmits at once on the new path instead of waiting out the
    /// backed-off timer: the new path has just proven it carries.
    pub(super) fn maybe_migrate(
        &mut self,
        now: Instant,
        from: PathAddr,
        pn: u64,
        non_probing: bool,
    ) {
        if from == self.path.addr || !non_probing || self.replay.largest() != Some(pn) {
            return;
        }
        if let Some(i) = self.alternates.iter().position(|p| p.addr == from) {
            let path = self.alternates.remove(i);
            let old = std::mem::replace(&mut self.path, path);
            self.push_alternate(old);
            self.stats.path_switches += 1;
            self.restart_timeouts(now);
            return;
        }
        let Some(ready) = self
            .candidates
            .iter()
            .position(|c| c.addr == from && c.validated)
        else {
            return;
        };
        let mut path = self.candidates.remove(ready);
        path.challenge_pending = false;
        let other_host = path.addr.remote.ip() != self.path.addr.remote.ip();
        let old = std::mem::replace(&mut self.path, path);
        if old.challenge.is_none() {
            self.push_alternate(old);
        }
        if other_host {
            // The new path may carry less: start again from the initial size. (A new port of the
            // same host, or another carrier to it, shares the route and keeps the size.)
            self.pmtu.on_path_changed();
            self.sync_mtu();
        }
        self.stats.migrations += 1;
        self.restart_timeouts(now);
        tracing::debug!(path = %from, "peer address changed: moved to the validated address");
    }

    /// After a move: if timeouts were backing off, time out now (see `maybe_migrate`).
    fn restart_timeouts(&mut self, now: Instant) {
        if self.rto_count > 0 {
            self.rto_count = 0;
            self.on_rto(now);
        }
    }

    /// The path-challenge timer fired: repeat unanswered challenges, give up on a candidate that
    /// never answers.
    pub(super) fn on_path_challenge_timer(&mut self, now: Instant) {
        let mut again = false;
        let before = self.candidates.len();
        self.candidates.retain(|c| {
            let gave_up = !c.validated && c.challenges_sent >= MAX_CANDIDATE_CHALLENGES;
            if gave_up {
                tracing::debug!(path = %c.addr, "candidate address never answered");
            }
            !gave_up
        });
        if self.candidates.len() < before && self.path.validated {
            // The next candidate asks the current path again.
            self.path.challenge = None;
            self.path.challenge_pending = false;
        }
        for candidate in self.candidates.iter_mut().filter(|c| !c.validated) {
            candidate.challenge_pending = true;
            again = true;
        }
        if !self.path.validated && self.path.challenge.is_some() {
            self.path.challenge_pending = true;
            again = true;
        }
        if again {
            self.timers.set(Timer::PathChallenge, now + self.rto());
        }
    }

    /// A datagram with a PATH_CHALLENGE for a candidate address, if one is due and its
    /// anti-amplification budget allows. It is not tracked for loss (an address that does not
    /// answer is no congestion signal); the timer repeats it.
    pub(super) fn transmit_candidate_challenge(
        &mut self,
        buf: &mut Vec<u8>,
    ) -> Option<crate::shared::Transmit> {
        // Every challenge has the same size: measure one, then take the first candidate that
        // is due and whose budget allows it.
        let start = crate::packet::begin(buf);
        crate::frame::Frame::PathChallenge([0; 8]).encode(buf);
        let len = (buf.len() - start + crate::packet::TAG_LEN) as u64;
        buf.truncate(start);
        let i = self
            .candidates
            .iter()
            .position(|c| c.challenge_pending && c.challenge.is_some() && len <= c.send_budget())?;
        let candidate = self.candidates.get(i)?;
        let (data, remote) = (candidate.challenge?, candidate.addr);
        let start = crate::packet::begin(buf);
        crate::frame::Frame::PathChallenge(data).encode(buf);
        let pn = self.next_pn;
        self.seal(buf, start, pn);
        let size = (buf.len() - start) as u64;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size;
        if let Some(candidate) = self.candidates.get_mut(i) {
            candidate.challenge_pending = false;
            candidate.challenges_sent += 1;
            candidate.bytes_sent += size;
        }
        Some(crate::shared::Transmit::to(remote, buf.len(), None))
    }
}
