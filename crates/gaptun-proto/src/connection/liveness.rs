//! Noticing a dead peer quickly while we wait on it.
//!
//! The idle timeout (40 s by default) is the right bound for a connection that carries nothing,
//! but far too long for one that is in the middle of a transfer when the server crashes: the
//! application would wait that long and then see its stream end. So while we *wait on the
//! peer* — ack-eliciting packets unacknowledged, or the peer was sending stream data recently
//! and has not finished — the peer must answer within [`Connection::dead_peer_limit`]
//! (`dead_peer_timeout`, 3 s by default, or four retransmission timeouts if longer). When it
//! falls silent for a third of that, we probe with a PING (the RTO probes do the same when data
//! is outstanding); when it stays silent for the whole limit the connection ends with
//! [`ConnectionError::Unresponsive`], its streams fail, and the client's pool reconnects.
//!
//! The check is one timer ([`Timer::Liveness`]) armed lazily: any packet we send arms it if it
//! is not armed; when it fires on a connection that waits on nothing it stays disarmed, so an
//! idle connection costs no wake-ups.

use std::time::{Duration, Instant};

use super::{Connection, ConnectionError, State, Timer};
use crate::packet::ConnectionId;
use crate::shared::Side;

impl Connection {
    /// How long a peer we wait on may stay silent before the connection is declared dead.
    pub(super) fn dead_peer_limit(&self) -> Duration {
        self.config.dead_peer_timeout.max(self.rto() * 4)
    }

    /// Silence after which a peer we wait on is probed with a PING.
    fn liveness_probe_after(&self) -> Duration {
        self.dead_peer_limit() / 3
    }

    /// Whether we are waiting on the peer: something of ours is unacknowledged, or it was
    /// sending us stream data (not finished) within the limit.
    fn waits_on_peer(&self, now: Instant) -> bool {
        let limit = self.dead_peer_limit();
        self.in_flight > 0
            || self
                .last_stream_received
                .is_some_and(|t| now.saturating_duration_since(t) < limit)
    }

    /// Arms the liveness check if it is not armed (called for every packet sent).
    pub(super) fn arm_liveness(&mut self, now: Instant) {
        if self.state != State::Established || self.timers.get(Timer::Liveness).is_some() {
            return;
        }
        let at = now + self.liveness_probe_after();
        self.timers.set(Timer::Liveness, at);
    }

    /// The liveness timer fired: probe a silent peer, or give up on it.
    pub(super) fn on_liveness_timer(&mut self, now: Instant) {
        if self.state != State::Established || !self.waits_on_peer(now) {
            return;
        }
        // Silence counts from when we started waiting: the first unanswered packet, or the last
        // thing heard (a stream that went quiet). A PING sent after a long idle period is thus
        // given the whole limit, not judged by how long the connection was idle.
        let since = self
            .unanswered_since
            .map_or(self.last_received, |t| t.max(self.last_received));
        let silent = now.saturating_duration_since(since);
        let limit = self.dead_peer_limit();
        if silent >= limit {
            tracing::debug!(
                silent_ms = silent.as_millis() as u64,
                "peer stopped answering while we waited on it: connection dead"
            );
            self.drain(now, ConnectionError::Unresponsive(silent));
            return;
        }
        let probe_after = self.liveness_probe_after();
        if silent >= probe_after {
            self.ping_pending = true;
        }
        let next = (now + probe_after).min(since + limit);
        self.timers
            .set(Timer::Liveness, next.max(now + Duration::from_millis(1)));
    }

    /// Stream data arrived: the peer is sending to us, and a stream that stops half-way (no
    /// FIN) makes us wait on it.
    pub(super) fn on_stream_data_received(&mut self, now: Instant, fin: bool) {
        self.last_stream_received = if fin { None } else { Some(now) };
    }
}

impl Connection {
    /// Client: the server's connection ID, whose reset token ends this connection (see
    /// `reset.rs`); `None` on the server, before the handshake and once the connection ends.
    pub(crate) fn stateless_reset_cid(&self) -> Option<ConnectionId> {
        let live = matches!(self.state, State::Established | State::Closing);
        (self.side == Side::Client && live).then_some(self.peer_cid)
    }

    /// Client: the server sent a valid stateless reset: it no longer knows this connection, so
    /// it ends now, without a CLOSE (nobody would read it).
    pub(crate) fn on_stateless_reset(&mut self, now: Instant) {
        tracing::debug!("stateless reset from the server: connection ended");
        self.drain(now, ConnectionError::Reset);
    }
}
