//! The connection's timers, kept in one table so that the next deadline is a single scan.

use std::time::Instant;

/// Number of [`Timer`] kinds.
const COUNT: usize = 13;

/// Every timer a connection can have armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Nothing heard from the peer for the idle timeout: the connection is dead.
    Idle,
    /// A delayed ACK is due.
    Ack,
    /// Time-threshold loss detection for packets that are not yet lost by packet count.
    Loss,
    /// Retransmission timeout: probe, and declare overdue packets lost.
    Rto,
    /// Nothing sent for the keepalive interval: send a PING.
    Keepalive,
    /// The pacer will allow the next packet.
    Pacing,
    /// Client: send a fresh Initial.
    HandshakeRetry,
    /// Client: give up connecting. Server: an unconfirmed connection is abandoned.
    HandshakeTimeout,
    /// End of the closing or draining period.
    Close,
    /// Resend an unanswered PATH_CHALLENGE.
    PathChallenge,
    /// A path MTU probe went unanswered: it counts as lost (see `connection::mtu`).
    MtuProbe,
    /// Check that a peer we wait on still answers (see `connection::liveness`).
    Liveness,
    /// A queued FEC parity packet is due (parity of a group is spread in time).
    FecParity,
}

impl Timer {
    const ALL: [Self; COUNT] = [
        Self::Idle,
        Self::Ack,
        Self::Loss,
        Self::Rto,
        Self::Keepalive,
        Self::Pacing,
        Self::HandshakeRetry,
        Self::HandshakeTimeout,
        Self::Close,
        Self::PathChallenge,
        Self::MtuProbe,
        Self::Liveness,
        Self::FecParity,
    ];
}

/// Deadlines by timer.
#[derive(Debug, Default, Clone)]
pub(super) struct TimerTable {
    deadlines: [Option<Instant>; COUNT],
}

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    pub(super) fn stop_all(&mut self) {
        self.deadlines = [None; COUNT];
    }

    /// The earliest armed deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns every timer that expired by `now`.
    pub(super) fn take_expired(&mut self, now: Instant) -> impl Iterator<Item = Timer> + use<> {
        let mut expired = Vec::new();
        for timer in Timer::ALL {
            if self.get(timer).is_some_and(|t| t <= now) {
                self.stop(timer);
                expired.push(timer);
            }
        }
        expired.into_iter()
    }
}
