//! Client: the set of paths a connection spreads its packets over, and their health.
//!
//! A client may reach its server over several paths at once: one per server port of a port
//! range, one per carrier (UDP and fake TCP, `--carrier all`), or both. Its packets are spread
//! over every live path, so a port or a carrier that a middlebox throttles or blocks costs a
//! share of the packets, not the connection.
//!
//! # Spreading: a share per path, by what it delivers
//!
//! Each live path has a *share* of the bytes sent, and the next batch goes to the path that is
//! furthest behind its share (stride scheduling: a path's pass grows by the bytes it was given
//! divided by its share, the smallest pass goes next; so ACK-only packets and full batches are
//! counted alike). Shares start equal. Every [`share_epoch`] (about one RTT) they move halfway
//! towards what each path delivered in that epoch (bytes acknowledged on it, as a part of all
//! bytes acknowledged), with [`SHARE_FLOOR`] of the whole kept equal for every live path:
//!
//! `target = (1 - SHARE_FLOOR) * delivered / delivered_all + SHARE_FLOOR / live_paths`
//!
//! A path that delivers what it is given keeps its share; a throttled one (a policer that drops
//! beyond a rate, a port with heavy loss) delivers less than it is given and its share shrinks
//! until what it is given is what it carries, plus the floor, which is how it shows that it can
//! carry more again (its share then grows back by about a tenth of the way per epoch). There is
//! one congestion controller for the connection (the paths usually share a bottleneck: the
//! client's access link), and keeping a throttled path's share near what it carries keeps its
//! drops from pulling the whole connection's window down. Epochs with less than
//! [`SHARE_MIN_BYTES`] acknowledged (a client that mostly acknowledges a download) leave the
//! shares as they are.
//!
//! A path dies when [`DEAD_AFTER_LOSSES`] packets sent on it in a row are declared lost (by the
//! usual loss detection: later packets, on other paths, were acknowledged while these were
//! not; so within about one RTT of the path going dark, or one RTO if everything went dark)
//! and nothing sent on it was acknowledged for [`DEAD_AFTER_SILENCE`]: a fast path that loses a
//! burst in an overflowing socket buffer, with its neighbours acknowledged, is not dark (on
//! real sockets at a gigabit such bursts killed a carrier of `--carrier all` every second).
//! A dead path gets no packets until its retry time, which starts at [`RETRY_FIRST`] and doubles
//! up to [`RETRY_MAX`] each time it dies again; then it is back as any live path (dead again
//! after losses in a row; one acknowledgement resets its back-off). A retry thus costs a few
//! packets: a revived path has an equal share (several packets in its first round trip), and
//! the epochs adjust it from there. The last live path is never declared dead: with every path
//! dark the connection's own timeouts decide.
//!
//! Loss detection only sees ack-eliciting packets. A client that mostly acknowledges (a
//! download) would never learn that a path is dark, so a path that has had no ack-eliciting
//! packet for [`PROBE_INTERVAL`] gets a PING in its next packet: about one small packet per path
//! per second, and the same PINGs are how a dead path's retry is tested.
//!
//! The server keeps no such set: it answers on the path the newest packet came from, so it
//! follows the client's choice (see `connection::path`).
//!
//! # Failover: one carrier at a time
//!
//! With a carrier preference ([`PathSet::set_preference`], `--carrier auto`) the client does
//! not spread: each path gets the rank of its carrier in the list, and data goes out only on
//! the live paths of one rank, the *active* one (several paths if that carrier reaches a port
//! range). The other paths are standby: each gets a small probe (a PATH_CHALLENGE, which makes
//! the server answer without moving to that path) every [`PROBE_INTERVAL`], so that the client
//! knows which of them work before it needs one. The Initial goes out on one path of every
//! rank at once, and the connection starts on the rank of the path the server's Response came
//! back on: the first that works, not the first that was tried.
//!
//! The active rank is left when
//! - it goes *silent*: [`SILENT_PACKETS`] ack-eliciting packets in a row went unanswered and
//!   the oldest of them was sent [`silent_after`] ago (a blocked port: no acknowledgement at
//!   all). Its paths are declared dead, as above, and retried with back-off;
//! - or its loss rate over the last one to two seconds is at least [`LOSSY_RATE`] and at least
//!   [`LOSSY_RATIO`] times what a standby rank's probes see (a throttled port). A standby's
//!   figure is taken pessimistically, (lost + 1) / (probes + 2) over its last 16 probes, so
//!   that steady random loss, which probes see as much as data does, never looks like a
//!   throttle.
//!
//! The connection then moves to the most preferred other rank whose last probe was answered
//! (failing that, the most preferred one not dead). The server follows at the first packet, as
//! on any path change, and every stream carries on: what was lost on the old path is
//! retransmitted on the new one. It comes back to a more preferred rank once that rank's last
//! [`RETURN_AFTER_PROBES`] probes were all answered, and not before the rank's hold time has
//! passed: [`HOLD_FIRST`], doubling (up to [`HOLD_MAX`]) each time the rank is left again within
//! [`HOLD_RESET`] of being taken, so that a carrier that keeps failing is not taken back every
//! few seconds. Each move is recorded as a [`PathSwitch`] (from, to, why) for the caller's log.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::shared::{CarrierId, PathAddr};

/// Packets lost in a row on one path that make it dead.
pub(super) const DEAD_AFTER_LOSSES: u32 = 4;

/// Least time since a path's last acknowledgement before losses in a row make it dead: a path
/// that is still delivering (a burst lost in an overflowing socket buffer on a fast path, its
/// neighbours acknowledged) is not dark. On a long path the losses are declared later than
/// this anyway.
pub(super) const DEAD_AFTER_SILENCE: Duration = Duration::from_millis(50);

/// How long a path stays dead the first time.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Longest a dead path waits before it is tried again.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(16);

/// Longest a path in use goes without an ack-eliciting packet (see the module documentation).
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Spreading: the part of the bytes shared equally among the live paths whatever they deliver
/// (see the module documentation).
pub(super) const SHARE_FLOOR: f64 = 0.2;

/// Spreading: bytes acknowledged (on all paths) an epoch needs before the shares move: some 30
/// full packets. The PINGs that keep a downloading client's paths checked never add up to it.
pub(super) const SHARE_MIN_BYTES: u64 = 32 * 1024;

/// Spreading: the shortest epoch.
const SHARE_EPOCH_MIN: Duration = Duration::from_millis(100);

/// Spreading: how often the shares are recomputed, given the smoothed RTT: once an RTT (what
/// was acknowledged in an epoch was sent under the shares of the one before), at least
/// [`SHARE_EPOCH_MIN`].
pub(super) fn share_epoch(rtt: Duration) -> Duration {
    rtt.max(SHARE_EPOCH_MIN)
}

/// Failover: ack-eliciting packets in a row without an answer before the active rank may count
/// as silent (one lost PING on a lossy idle path is no outage).
pub(super) const SILENT_PACKETS: u32 = 8;

/// Failover: least loss rate of the active rank that may make it leave.
pub(super) const LOSSY_RATE: f64 = 0.3;

/// Failover: how many times a standby's loss estimate the active rank's rate must be.
pub(super) const LOSSY_RATIO: f64 = 4.0;

/// Failover: packets the active rank's loss window must hold before its rate counts.
const LOSSY_MIN_SAMPLES: u64 = 50;

/// Failover: the loss window's epoch (the rate covers the current and the previous epoch).
const LOSS_EPOCH: Duration = Duration::from_secs(1);

/// Failover: probes a standby needs in its record before its loss estimate counts.
const MIN_PROBES: u32 = 4;

/// Failover: answered probes in a row that make a more preferred rank worth returning to.
pub(super) const RETURN_AFTER_PROBES: u32 = 3;

/// Failover: first hold time of a rank that was left.
pub(super) const HOLD_FIRST: Duration = Duration::from_secs(2);

/// Failover: longest hold time.
pub(super) const HOLD_MAX: Duration = Duration::from_secs(64);

/// Failover: a rank active for this long before it is left starts over at [`HOLD_FIRST`].
const HOLD_RESET: Duration = Duration::from_secs(60);

/// Failover: how long the active rank's oldest unanswered packet must be before it is silent,
/// given the connection's retransmission timeout: three timeouts, at least 900 ms (on a
/// lossy path a timeout or two without an answer is common; three in a row with every probe
/// lost is not).
pub(super) fn silent_after(rto: Duration) -> Duration {
    (rto * 3).max(Duration::from_millis(900))
}

/// One path's figures, for statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct PathInfo {
    /// The carrier and the peer's address on it.
    pub addr: PathAddr,
    /// Whether packets go out on it now.
    pub alive: bool,
    /// Failover: whether data goes out on it (its rank is the active one). Spreading: whether
    /// it is alive.
    pub active: bool,
    /// Ack-eliciting packets sent on it.
    pub packets_sent: u64,
    /// Of those, acknowledged and declared lost.
    pub packets_acked: u64,
    pub packets_lost: u64,
    /// Times it was declared dead.
    pub deaths: u64,
    /// Bytes of every packet sent on it (acknowledgements included).
    pub bytes_sent: u64,
    /// Bytes of its packets that were acknowledged.
    pub bytes_acked: u64,
    /// Spreading: the part of the bytes it is given now (0 to 1; 0 when dead, and with
    /// failover).
    pub share: f64,
}

/// Why the client moved its data to another carrier (failover).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SwitchReason {
    /// The connection started on this path: its Response came first (the more preferred
    /// carriers had not answered).
    FirstAnswer,
    /// Nothing sent on the active carrier was acknowledged for this long.
    Silent(Duration),
    /// The active carrier lost this share of its packets while the new one's probes lost at
    /// most `standby`.
    Lossy {
        /// The active carrier's recent loss rate.
        active: f64,
        /// The new carrier's (pessimistic) loss estimate.
        standby: f64,
    },
    /// A more preferred carrier answered its last probes again.
    Recovered,
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FirstAnswer => write!(f, "first to answer the handshake"),
            Self::Silent(d) => write!(f, "no acknowledgement for {} ms", d.as_millis()),
            Self::Lossy { active, standby } => write!(
                f,
                "loss {:.0} % against {:.0} % on the standby",
                active * 100.0,
                standby * 100.0
            ),
            Self::Recovered => write!(f, "preferred carrier answers again"),
        }
    }
}

/// A move of the client's data from one path to another (failover).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSwitch {
    /// Where the data went before (`None` at the start).
    pub from: Option<PathAddr>,
    /// Where it goes now.
    pub to: PathAddr,
    pub reason: SwitchReason,
}

/// What the client's next packet should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextSend {
    /// Data (and whatever else is due) on this path.
    Data(PathAddr),
    /// Failover: a probe, nothing else, on this standby path.
    Probe(PathAddr),
}

/// Losses over the last one to two epochs.
#[derive(Debug, Clone, Copy, Default)]
struct LossWindow {
    start: Option<Instant>,
    lost: u64,
    total: u64,
    prev_lost: u64,
    prev_total: u64,
}

impl LossWindow {
    fn roll(&mut self, now: Instant) {
        let Some(start) = self.start else {
            self.start = Some(now);
            return;
        };
        let age = now.saturating_duration_since(start);
        if age < LOSS_EPOCH {
            return;
        }
        if age < LOSS_EPOCH * 2 {
            self.prev_lost = self.lost;
            self.prev_total = self.total;
        } else {
            self.prev_lost = 0;
            self.prev_total = 0;
        }
        self.lost = 0;
        self.total = 0;
        self.start = Some(now);
    }

    fn observe(&mut self, now: Instant, lost: bool) {
        self.roll(now);
        self.total += 1;
        self.lost += u64::from(lost);
    }

    /// (lost, total) over the window.
    fn counts(&self) -> (u64, u64) {
        (self.lost + self.prev_lost, self.total + self.prev_total)
    }
}

/// The fates of a path's last 16 probes (failover standby).
#[derive(Debug, Clone, Copy, Default)]
struct ProbeRecord {
    /// Bit set: lost; newest in bit 0.
    lost_bits: u16,
    count: u32,
    answered_in_row: u32,
}

impl ProbeRecord {
    fn observe(&mut self, lost: bool) {
        self.lost_bits = (self.lost_bits << 1) | u16::from(lost);
        self.count = (self.count + 1).min(16);
        self.answered_in_row = if lost { 0 } else { self.answered_in_row + 1 };
    }

    /// Pessimistic loss estimate; `None` with too few probes.
    fn estimate(&self) -> Option<f64> {
        if self.count < MIN_PROBES {
            return None;
        }
        let mask = if self.count >= 16 {
            u16::MAX
        } else {
            (1u16 << self.count) - 1
        };
        let lost = (self.lost_bits & mask).count_ones();
        Some(f64::from(lost + 1) / f64::from(self.count + 2))
    }
}

#[derive(Debug, Clone)]
struct PathHealth {
    addr: PathAddr,
    /// Failover: its carrier's place in the preference (0 first).
    rank: usize,
    lost_in_row: u32,
    dead_until: Option<Instant>,
    backoff: Duration,
    /// When an ack-eliciting packet last went out on it.
    last_eliciting: Option<Instant>,
    /// Failover: when the oldest ack-eliciting packet sent since the last acknowledgement went
    /// out, and how many have been sent since.
    unanswered_since: Option<Instant>,
    unanswered: u32,
    losses: LossWindow,
    probes: ProbeRecord,
    packets_sent: u64,
    packets_acked: u64,
    /// When a packet sent on it was last acknowledged.
    last_acked: Option<Instant>,
    packets_lost: u64,
    deaths: u64,
    bytes_sent: u64,
    bytes_acked: u64,
    /// Spreading: its share (relative to the other live paths').
    share: f64,
    /// Spreading: bytes given to it divided by its share (the smallest goes next).
    pass: f64,
    /// Spreading: bytes acknowledged on it this epoch.
    delivered: u64,
    /// Spreading: when it came back from the dead (an epoch it was dead in part of says
    /// nothing about it).
    revived: Option<Instant>,
}

impl PathHealth {
    fn new(addr: PathAddr) -> Self {
        Self {
            addr,
            rank: 0,
            lost_in_row: 0,
            dead_until: None,
            backoff: RETRY_FIRST,
            last_eliciting: None,
            unanswered_since: None,
            unanswered: 0,
            losses: LossWindow::default(),
            probes: ProbeRecord::default(),
            packets_sent: 0,
            packets_acked: 0,
            last_acked: None,
            packets_lost: 0,
            deaths: 0,
            bytes_sent: 0,
            bytes_acked: 0,
            share: 1.0,
            pass: 0.0,
            delivered: 0,
            revived: None,
        }
    }

    fn alive(&self) -> bool {
        self.dead_until.is_none()
    }

    fn kill(&mut self, now: Instant) {
        self.dead_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        self.deaths += 1;
        self.unanswered_since = None;
        self.unanswered = 0;
    }
}

/// Failover: a rank's hold state.
#[derive(Debug, Clone, Copy)]
struct RankHold {
    hold: Duration,
    until: Option<Instant>,
    active_since: Option<Instant>,
}

impl Default for RankHold {
    fn default() -> Self {
        Self {
            hold: HOLD_FIRST,
            until: None,
            active_since: None,
        }
    }
}

/// The client's paths, in the order they were given.
#[derive(Debug, Clone, Default)]
pub(super) struct PathSet {
    paths: Vec<PathHealth>,
    /// Index of the path the next batch goes out on (before skipping dead ones).
    next: usize,
    /// Failover: carriers in order of preference (empty: spread over every path).
    prefer: Vec<CarrierId>,
    /// Failover: the rank data goes out on.
    active: usize,
    /// Failover: per rank (index), its hold state.
    holds: Vec<RankHold>,
    /// Failover: moves not yet taken by the caller (oldest first, a few at most).
    switches: VecDeque<PathSwitch>,
    /// Failover: moves made.
    switch_count: u64,
    /// Spreading: when the current epoch of delivery counts began.
    epoch_start: Option<Instant>,
}

/// Switch records kept for the caller to take (older ones are dropped).
const SWITCHES_KEPT: usize = 16;

impl PathSet {
    pub(super) fn new(addrs: &[PathAddr]) -> Self {
        let mut set = Self::default();
        set.replace(addrs);
        set
    }

    /// Makes `addrs` the set (duplicates ignored); paths that stay keep their health.
    pub(super) fn replace(&mut self, addrs: &[PathAddr]) {
        let mut old = std::mem::take(&mut self.paths);
        for &addr in addrs {
            if self.paths.iter().any(|p| p.addr == addr) {
                continue;
            }
            let kept = old
                .iter()
                .position(|p| p.addr == addr)
                .map(|i| old.swap_remove(i));
            self.paths
                .push(kept.unwrap_or_else(|| PathHealth::new(addr)));
        }
        self.next = 0;
        self.rerank();
        // Newcomers get an equal share and start level with the others, so that they are not
        // handed a burst to catch up with what the others were given before they came.
        let (pass, share) = self.level();
        for p in self
            .paths
            .iter_mut()
            .filter(|p| p.pass == 0.0 && p.bytes_sent == 0)
        {
            p.pass = pass;
            p.share = share;
        }
    }

    /// Spreading: the smallest pass and the mean share of the live paths that have been used
    /// (0 and 1 before any has).
    fn level(&self) -> (f64, f64) {
        let used = || self.paths.iter().filter(|p| p.alive() && p.bytes_sent > 0);
        let pass = used().map(|p| p.pass).reduce(f64::min).unwrap_or(0.0);
        let n = used().count();
        let share = if n == 0 {
            1.0
        } else {
            used().map(|p| p.share).sum::<f64>() / n as f64
        };
        (pass, share)
    }

    /// Failover over `order` (carriers, most preferred first; carriers not named come after
    /// them, together), or spreading over every path for an empty list. The most preferred
    /// rank is active until the handshake says otherwise; a new list of the same length (the
    /// same kinds of carrier, renumbered) keeps the active rank. A list with carriers added or
    /// removed (a TLS or QUIC carrier that connected after the connection started) keeps the
    /// active carrier active and every carrier's hold state, wherever the new list puts it: a
    /// carrier joining as a standby must not pull the data back to a more preferred carrier
    /// that was left because it is blocked.
    pub(super) fn set_preference(&mut self, order: &[CarrierId]) {
        if order.len() == self.prefer.len() {
            self.prefer = order.to_vec();
            self.rerank();
            return;
        }
        let old = std::mem::take(&mut self.prefer);
        let old_holds = std::mem::take(&mut self.holds);
        let active = old.get(self.active).copied();
        self.active = active
            .and_then(|c| order.iter().position(|&o| o == c))
            .unwrap_or(0);
        self.holds = order
            .iter()
            .map(|c| {
                old.iter()
                    .position(|o| o == c)
                    .and_then(|i| old_holds.get(i).copied())
                    .unwrap_or_default()
            })
            .collect();
        self.prefer = order.to_vec();
        self.rerank();
    }

    /// Whether data goes to one carrier at a time.
    pub(super) fn failover(&self) -> bool {
        !self.prefer.is_empty()
    }

    fn rerank(&mut self) {
        let prefer = &self.prefer;
        for p in &mut self.paths {
            p.rank = prefer
                .iter()
                .position(|&c| c == p.addr.carrier)
                .unwrap_or(prefer.len());
        }
        let ranks = prefer.len() + 1;
        self.holds.resize(ranks, RankHold::default());
        // A carrier removed from under the active rank (port hopping renumbers the UDP
        // carrier): keep the rank number, its new carrier takes the place.
    }

    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }

    pub(super) fn contains(&self, addr: PathAddr) -> bool {
        self.paths.iter().any(|p| p.addr == addr)
    }

    /// Brings back dead paths whose retry time has come.
    fn wake(&mut self, now: Instant) {
        if !self
            .paths
            .iter()
            .any(|p| p.dead_until.is_some_and(|t| t <= now))
        {
            return;
        }
        let (pass, share) = self.level();
        for p in &mut self.paths {
            if p.dead_until.is_some_and(|t| t <= now) {
                p.dead_until = None;
                // Back as any live path: dead again after losses in a row. (One loss was
                // enough before: with an equal share a revived path gets a burst of packets,
                // and on real sockets one of them lost to an overflowing buffer killed it
                // again, every retry, so a carrier of `--carrier all` stayed unused.)
                p.lost_in_row = 0;
                // An equal share, level with the others: several packets within the first
                // round trip, so that a first one lost (a fake-TCP flow the server has yet to
                // validate) does not kill it before the next ones are acknowledged.
                p.share = share;
                p.pass = pass;
                p.delivered = 0;
                p.revived = Some(now);
            }
        }
    }

    /// Spreading: the live path furthest behind its share (the smallest pass; the first of
    /// them in the set's order on a tie). Failing that, the next path in turn.
    fn next_by_share(&mut self) -> Option<PathAddr> {
        let best = self
            .paths
            .iter()
            .filter(|p| p.alive())
            .min_by(|a, b| a.pass.total_cmp(&b.pass))
            .map(|p| p.addr);
        best.or_else(|| self.next_in_turn(|_| true))
    }

    /// Spreading: a transmit of `bytes` went out on `addr` (any packet, acknowledgements
    /// included): it moves on by its share.
    pub(super) fn on_transmit(&mut self, addr: PathAddr, bytes: usize) {
        let failover = self.failover();
        if let Some(p) = self.paths.iter_mut().find(|p| p.addr == addr) {
            p.bytes_sent += bytes as u64;
            if !failover {
                p.pass += bytes as f64 / p.share.max(1e-6);
            }
        }
    }

    /// Spreading: at the end of an epoch (`epoch` long, see [`share_epoch`]) moves each live
    /// path's share halfway to its target (see the module documentation) and normalises them.
    fn reweigh(&mut self, now: Instant, epoch: Duration) {
        let start = *self.epoch_start.get_or_insert(now);
        let age = now.saturating_duration_since(start);
        if age < epoch {
            return;
        }
        // Judged: the paths alive for the whole epoch; one revived in it keeps its share.
        let live: Vec<usize> = (0..self.paths.len())
            .filter(|&i| {
                self.paths
                    .get(i)
                    .is_some_and(|p| p.alive() && p.revived.is_none_or(|t| t <= start))
            })
            .collect();
        let delivered: u64 = live
            .iter()
            .filter_map(|&i| self.paths.get(i))
            .map(|p| p.delivered)
            .sum();
        let stale = age >= epoch * 8;
        if delivered < SHARE_MIN_BYTES && !stale {
            // Too little to judge by: keep counting into a longer epoch.
            return;
        }
        self.epoch_start = Some(now);
        if delivered >= SHARE_MIN_BYTES && !live.is_empty() {
            let n = live.len() as f64;
            // Shares are relative: the judged paths' together stay what they were.
            let total: f64 = live
                .iter()
                .filter_map(|&i| self.paths.get(i))
                .map(|p| p.share)
                .sum::<f64>()
                .max(1e-9);
            for &i in &live {
                if let Some(p) = self.paths.get_mut(i) {
                    let delivered_part = p.delivered as f64 / (delivered as f64).max(1.0);
                    let target = (1.0 - SHARE_FLOOR) * delivered_part + SHARE_FLOOR / n;
                    p.share = total * (p.share / total + target) / 2.0;
                }
            }
        }
        for p in &mut self.paths {
            p.delivered = 0;
        }
        // Keep the passes small (their differences are what counts).
        let (min_pass, _) = self.level();
        if min_pass > 1e12 {
            for p in &mut self.paths {
                p.pass = (p.pass - min_pass).max(0.0);
            }
        }
    }

    /// The path for the next batch: the next live one in turn. Dead paths whose retry time has
    /// come are brought back first. `None` only for an empty set.
    pub(super) fn next_path(&mut self, now: Instant) -> Option<PathAddr> {
        self.wake(now);
        self.next_in_turn(|_| true)
    }

    /// The next live path in turn among those `pick` accepts; failing that, the next path in
    /// turn whatever its health.
    fn next_in_turn(&mut self, pick: impl Fn(&PathHealth) -> bool) -> Option<PathAddr> {
        let n = self.paths.len();
        if n == 0 {
            return None;
        }
        for step in 0..n {
            let i = (self.next + step) % n;
            if self.paths.get(i).is_some_and(|p| p.alive() && pick(p)) {
                self.next = (i + 1) % n;
                return self.paths.get(i).map(|p| p.addr);
            }
        }
        // All dead (cannot happen through `on_lost`, which spares the last live path).
        let i = self.next % n;
        self.next = (i + 1) % n;
        self.paths.get(i).map(|p| p.addr)
    }

    /// The Initial's destinations for one attempt: the next path in turn, or with failover
    /// the next live path of every rank (most preferred first), so that a blocked carrier costs
    /// no attempt.
    pub(super) fn initial_targets(&mut self, now: Instant) -> Vec<PathAddr> {
        self.wake(now);
        if !self.failover() {
            return self.next_path(now).into_iter().collect();
        }
        let mut ranks: Vec<usize> = self.paths.iter().map(|p| p.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        ranks
            .into_iter()
            .filter_map(|r| self.next_in_turn(|p| p.rank == r))
            .collect()
    }

    /// Failover: the handshake completed on `from` (its Response arrived there first). The
    /// connection starts on that path's rank.
    pub(super) fn on_established(&mut self, now: Instant, from: PathAddr) {
        if !self.failover() {
            return;
        }
        let Some(rank) = self.rank_of(from) else {
            return;
        };
        self.active = rank;
        if let Some(h) = self.holds.get_mut(rank) {
            h.active_since = Some(now);
        }
        if rank > 0 {
            self.record(PathSwitch {
                from: None,
                to: from,
                reason: SwitchReason::FirstAnswer,
            });
        }
    }

    fn rank_of(&self, addr: PathAddr) -> Option<usize> {
        self.paths.iter().find(|p| p.addr == addr).map(|p| p.rank)
    }

    fn record(&mut self, switch: PathSwitch) {
        if switch.from.is_some() {
            self.switch_count += 1;
        }
        if self.switches.len() >= SWITCHES_KEPT {
            self.switches.pop_front();
        }
        tracing::debug!(from = ?switch.from, to = %switch.to, reason = %switch.reason, "carrier switch");
        self.switches.push_back(switch);
    }

    /// The oldest move not yet taken.
    pub(super) fn take_switch(&mut self) -> Option<PathSwitch> {
        self.switches.pop_front()
    }

    /// Moves made so far (failover).
    pub(super) fn switch_count(&self) -> u64 {
        self.switch_count
    }

    /// What the next packet should be (client, established): a due probe on a standby path
    /// (failover), or data on the next path in turn (of the active rank, with failover).
    pub(super) fn next_send(&mut self, now: Instant, epoch: Duration) -> Option<NextSend> {
        self.wake(now);
        if !self.failover() {
            self.reweigh(now, epoch);
            return self.next_by_share().map(NextSend::Data);
        }
        let active = self.active;
        let due = self.paths.iter().find(|p| {
            p.rank != active
                && p.alive()
                && p.last_eliciting
                    .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_INTERVAL)
        });
        if let Some(p) = due {
            return Some(NextSend::Probe(p.addr));
        }
        let any_active_alive = self.paths.iter().any(|p| p.rank == active && p.alive());
        if any_active_alive {
            self.next_in_turn(|p| p.rank == active).map(NextSend::Data)
        } else {
            self.next_in_turn(|_| true).map(NextSend::Data)
        }
    }

    /// Failover: decides whether to leave the active rank (silent or lossy) or return to a
    /// more preferred one (see the module documentation). `silent_after` comes from
    /// [`silent_after`].
    pub(super) fn review(&mut self, now: Instant, silent_after: Duration) {
        if !self.failover() || self.paths.is_empty() {
            return;
        }
        self.wake(now);
        let active = self.active;
        // Silent: every path of the active rank.
        let mut silent_for: Option<Duration> = None;
        let mut any_active = false;
        let mut all_silent = true;
        for p in self.paths.iter().filter(|p| p.rank == active) {
            any_active = true;
            let quiet = match p.unanswered_since {
                Some(t) if p.unanswered >= SILENT_PACKETS => {
                    let d = now.saturating_duration_since(t);
                    (d >= silent_after).then_some(d)
                }
                _ => None,
            };
            match quiet {
                Some(d) => silent_for = Some(silent_for.map_or(d, |s: Duration| s.min(d))),
                None if p.alive() => all_silent = false,
                None => {}
            }
        }
        let all_dead = any_active && self.paths.iter().all(|p| p.rank != active || !p.alive());
        if any_active && all_silent && (silent_for.is_some() || all_dead) {
            let Some(to) = self.best_other(active, None) else {
                return;
            };
            let waited = silent_for.unwrap_or(silent_after);
            for p in self.paths.iter_mut().filter(|p| p.rank == active) {
                if p.alive() {
                    p.kill(now);
                }
            }
            self.switch_to(now, to, SwitchReason::Silent(waited), true);
            return;
        }
        // Lossy: the active rank's window against the standbys' probes.
        let (lost, total) = self
            .paths
            .iter()
            .filter(|p| p.rank == active)
            .map(|p| {
                let mut w = p.losses;
                w.roll(now);
                w.counts()
            })
            .fold((0, 0), |(l, t), (a, b)| (l + a, t + b));
        if total >= LOSSY_MIN_SAMPLES {
            let rate = lost as f64 / total as f64;
            if rate >= LOSSY_RATE
                && let Some(to) = self.best_other(active, Some(rate / LOSSY_RATIO))
            {
                let standby = self
                    .paths
                    .iter()
                    .find(|p| p.addr == to)
                    .and_then(|p| p.probes.estimate())
                    .unwrap_or(0.0);
                self.switch_to(
                    now,
                    to,
                    SwitchReason::Lossy {
                        active: rate,
                        standby,
                    },
                    true,
                );
                return;
            }
        }
        // Recovered: a more preferred rank answers again.
        let back = self.paths.iter().find(|p| {
            p.rank < active
                && p.alive()
                && p.probes.answered_in_row >= RETURN_AFTER_PROBES
                && self
                    .holds
                    .get(p.rank)
                    .and_then(|h| h.until)
                    .is_none_or(|t| t <= now)
        });
        if let Some(p) = back {
            let to = p.addr;
            self.switch_to(now, to, SwitchReason::Recovered, false);
        }
    }

    /// The most preferred path of another rank than `active` to move to: alive, and its last
    /// probe answered (with `max_loss`, its loss estimate at most that); without a loss bound,
    /// failing that, the most preferred live one.
    fn best_other(&self, active: usize, max_loss: Option<f64>) -> Option<PathAddr> {
        let mut others: Vec<&PathHealth> = self
            .paths
            .iter()
            .filter(|p| p.rank != active && p.alive())
            .collect();
        others.sort_by_key(|p| p.rank);
        let good = others.iter().find(|p| match max_loss {
            Some(max) => {
                p.probes.answered_in_row >= 1 && p.probes.estimate().is_some_and(|e| e <= max)
            }
            None => p.probes.answered_in_row >= 1,
        });
        match (good, max_loss) {
            (Some(p), _) => Some(p.addr),
            (None, Some(_)) => None,
            (None, None) => others.first().map(|p| p.addr),
        }
    }

    /// Makes `to`'s rank the active one; `leaving_bad`: the old rank failed (its hold grows).
    fn switch_to(&mut self, now: Instant, to: PathAddr, reason: SwitchReason, leaving_bad: bool) {
        let Some(rank) = self.rank_of(to) else {
            return;
        };
        let old = self.active;
        let from = self.paths.iter().find(|p| p.rank == old).map(|p| p.addr);
        if leaving_bad && let Some(h) = self.holds.get_mut(old) {
            let long_active = h
                .active_since
                .is_some_and(|t| now.saturating_duration_since(t) >= HOLD_RESET);
            h.hold = if long_active || h.until.is_none() {
                HOLD_FIRST
            } else {
                (h.hold * 2).min(HOLD_MAX)
            };
            h.until = Some(now + h.hold);
            h.active_since = None;
        }
        self.active = rank;
        if let Some(h) = self.holds.get_mut(rank) {
            h.active_since = Some(now);
        }
        // The new rank starts with a clean record: its standby probes said it works.
        for p in self.paths.iter_mut().filter(|p| p.rank == rank) {
            p.unanswered_since = None;
            p.unanswered = 0;
            p.losses = LossWindow::default();
        }
        self.record(PathSwitch { from, to, reason });
    }

    /// The earliest retry time of a dead path.
    #[cfg(test)]
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.paths.iter().filter_map(|p| p.dead_until).min()
    }

    pub(super) fn on_sent(&mut self, addr: PathAddr, now: Instant) {
        if let Some(p) = self.paths.iter_mut().find(|p| p.addr == addr) {
            p.packets_sent += 1;
            p.last_eliciting = Some(now);
            p.unanswered_since.get_or_insert(now);
            p.unanswered = p.unanswered.saturating_add(1);
        }
    }

    /// Whether the next packet on `addr` should elicit an acknowledgement so that the path's
    /// health is known (several paths, and none for [`PROBE_INTERVAL`]).
    pub(super) fn needs_probe(&self, addr: PathAddr, now: Instant) -> bool {
        self.paths.len() > 1
            && self.paths.iter().any(|p| {
                p.addr == addr
                    && p.last_eliciting
                        .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_INTERVAL)
            })
    }

    /// A packet of `bytes` sent on `addr` was acknowledged: the path carries. `probe`: it was
    /// a standby probe.
    pub(super) fn on_acked(&mut self, addr: PathAddr, now: Instant, probe: bool, bytes: u64) {
        if let Some(p) = self.paths.iter_mut().find(|p| p.addr == addr) {
            p.bytes_acked += bytes;
            p.delivered += bytes;
            p.packets_acked += 1;
            p.last_acked = Some(now);
            p.lost_in_row = 0;
            p.backoff = RETRY_FIRST;
            p.unanswered_since = None;
            p.unanswered = 0;
            if probe {
                p.probes.observe(false);
            } else {
                p.losses.observe(now, false);
            }
        }
    }

    /// A packet sent on `addr` was declared lost. Returns whether that made the path dead.
    pub(super) fn on_lost(&mut self, addr: PathAddr, now: Instant, probe: bool) -> bool {
        let failover = self.failover();
        let active = self.active;
        let alive = self.alive();
        let Some(i) = self.paths.iter().position(|p| p.addr == addr) else {
            return false;
        };
        let rank = self.paths.get(i).map_or(0, |p| p.rank);
        // The last live path is never declared dead by losses; with failover, nor is the last
        // live path of the active rank (silence decides, see `review`): bursts of loss must
        // not move a connection.
        let spare = if !failover {
            alive > 1
        } else if rank == active {
            self.paths
                .iter()
                .filter(|p| p.rank == active && p.alive())
                .count()
                > 1
        } else {
            true
        };
        let Some(p) = self.paths.get_mut(i) else {
            return false;
        };
        p.packets_lost += 1;
        if probe {
            p.probes.observe(true);
        } else {
            p.losses.observe(now, true);
        }
        if !p.alive() {
            return false;
        }
        p.lost_in_row = p.lost_in_row.saturating_add(1);
        let delivering = p
            .last_acked
            .is_some_and(|t| now.saturating_duration_since(t) < DEAD_AFTER_SILENCE);
        if p.lost_in_row < DEAD_AFTER_LOSSES || !spare || delivering {
            return false;
        }
        p.kill(now);
        tracing::debug!(path = %p.addr, retry_in = ?p.backoff / 2, "path abandoned: no acknowledgements");
        true
    }

    /// Whether data may go out on `addr` now: it is in the set and alive, and with failover of
    /// the active rank.
    pub(super) fn carries_data(&self, addr: PathAddr) -> bool {
        let failover = self.failover();
        self.paths
            .iter()
            .any(|p| p.addr == addr && p.alive() && (!failover || p.rank == self.active))
    }

    /// Paths packets go out on now.
    pub(super) fn alive(&self) -> usize {
        self.paths.iter().filter(|p| p.alive()).count()
    }

    pub(super) fn info(&self) -> Vec<PathInfo> {
        let failover = self.failover();
        let live_shares: f64 = self
            .paths
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.share)
            .sum::<f64>()
            .max(1e-9);
        self.paths
            .iter()
            .map(|p| PathInfo {
                addr: p.addr,
                alive: p.alive(),
                active: if failover {
                    p.rank == self.active && p.alive()
                } else {
                    p.alive()
                },
                packets_sent: p.packets_sent,
                packets_acked: p.packets_acked,
                packets_lost: p.packets_lost,
                deaths: p.deaths,
                bytes_sent: p.bytes_sent,
                bytes_acked: p.bytes_acked,
                share: if failover || !p.alive() {
                    0.0
                } else {
                    p.share / live_shares
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::shared::CarrierId;

    fn addr(port: u16) -> PathAddr {
        PathAddr::new(CarrierId(0), SocketAddr::from(([10, 0, 0, 1], port)))
    }

    #[test]
    fn round_robin_skips_dead_paths_and_retries_them_with_backoff() {
        // Acknowledged at `start`; the losses come after that path's silence.
        let start = Instant::now();
        let t0 = start + DEAD_AFTER_SILENCE;
        let mut set = PathSet::new(&[addr(1), addr(2), addr(3), addr(2)]);
        assert_eq!(set.len(), 3, "duplicates ignored");
        let order: Vec<u16> = (0..6)
            .filter_map(|_| set.next_path(t0))
            .map(|a| a.remote.port())
            .collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 3]);
        // Three losses do not kill a path, an ACK in between resets the count.
        for _ in 0..3 {
            assert!(!set.on_lost(addr(2), t0, false));
        }
        set.on_acked(addr(2), start, false, 1200);
        for _ in 0..3 {
            assert!(!set.on_lost(addr(2), t0, false));
        }
        assert!(
            set.on_lost(addr(2), t0, false),
            "the fourth loss in a row kills it"
        );
        assert_eq!(set.alive(), 2);
        assert_eq!(set.next_retry(), Some(t0 + RETRY_FIRST));
        let order: Vec<u16> = (0..4)
            .filter_map(|_| set.next_path(t0))
            .map(|a| a.remote.port())
            .collect();
        assert!(!order.contains(&2), "{order:?}");
        // At its retry time it is back as any live path: losses in a row (it is still
        // silent) kill it again, for twice as long.
        let t1 = t0 + RETRY_FIRST;
        let order: Vec<u16> = (0..3)
            .filter_map(|_| set.next_path(t1))
            .map(|a| a.remote.port())
            .collect();
        assert!(order.contains(&2), "{order:?}");
        for _ in 1..DEAD_AFTER_LOSSES {
            assert!(!set.on_lost(addr(2), t1, false));
        }
        assert!(set.on_lost(addr(2), t1, false));
        assert_eq!(set.next_retry(), Some(t1 + RETRY_FIRST * 2));
        let info = set.info();
        assert_eq!(info[1].deaths, 2);
        assert_eq!(info[1].packets_lost, 7 + u64::from(DEAD_AFTER_LOSSES));
        assert!(!info[1].alive);
    }

    #[test]
    fn the_last_live_path_is_never_abandoned() {
        let t0 = Instant::now();
        let mut set = PathSet::new(&[addr(1), addr(2)]);
        for _ in 0..DEAD_AFTER_LOSSES {
            set.on_lost(addr(1), t0, false);
        }
        for _ in 0..10 * DEAD_AFTER_LOSSES {
            assert!(!set.on_lost(addr(2), t0, false));
        }
        assert_eq!(set.alive(), 1);
        assert_eq!(set.next_path(t0), Some(addr(2)));
    }

    #[test]
    fn replacing_the_set_keeps_the_health_of_paths_that_stay() {
        let t0 = Instant::now();
        let mut set = PathSet::new(&[addr(1), addr(2), addr(3)]);
        for _ in 0..DEAD_AFTER_LOSSES {
            set.on_lost(addr(3), t0, false);
        }
        set.replace(&[addr(3), addr(4)]);
        assert!(set.contains(addr(4)) && !set.contains(addr(1)));
        assert_eq!(set.alive(), 1, "path 3 is still dead");
        assert_eq!(set.next_path(t0), Some(addr(4)));
    }

    fn on(carrier: u16, port: u16) -> PathAddr {
        PathAddr::new(CarrierId(carrier), SocketAddr::from(([10, 0, 0, 1], port)))
    }

    /// A failover set over carrier 0 (two ports) then carrier 1, established on carrier 0.
    fn failover_set(t0: Instant) -> (PathSet, [PathAddr; 3]) {
        let paths = [on(0, 1), on(0, 2), on(1, 1)];
        let mut set = PathSet::new(&paths);
        set.set_preference(&[CarrierId(0), CarrierId(1)]);
        set.on_established(t0, paths[0]);
        (set, paths)
    }

    /// Sends a due probe on the standby and gives it `lost` as its fate; data otherwise.
    fn step(set: &mut PathSet, now: Instant, lost: bool) -> Option<NextSend> {
        let next = set.next_send(now, Duration::from_millis(100));
        match next {
            Some(NextSend::Probe(p)) => {
                set.on_sent(p, now);
                if lost {
                    set.on_lost(p, now, true);
                } else {
                    set.on_acked(p, now, true, 1200);
                }
            }
            Some(NextSend::Data(p)) => set.on_sent(p, now),
            None => {}
        }
        next
    }

    #[test]
    fn failover_sends_data_on_the_active_carrier_only_and_probes_the_standby() {
        let t0 = Instant::now();
        let (mut set, [a, b, standby]) = failover_set(t0);
        assert_eq!(
            set.initial_targets(t0),
            vec![a, standby],
            "one Initial per carrier"
        );
        let mut data = Vec::new();
        let mut probes = 0;
        for i in 0..400u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            match step(&mut set, now, false) {
                Some(NextSend::Data(p)) => {
                    data.push(p);
                    set.on_acked(p, now, false, 1200);
                }
                Some(NextSend::Probe(p)) => {
                    assert_eq!(p, standby);
                    probes += 1;
                }
                None => panic!("no path"),
            }
        }
        assert!(!data.contains(&standby));
        assert!(
            data.contains(&a) && data.contains(&b),
            "spread over the active ports"
        );
        assert!((4..=5).contains(&probes), "one probe a second: {probes}");
        let info = set.info();
        assert!(info[0].active && info[1].active && !info[2].active);
        assert_eq!(set.take_switch(), None);
    }

    /// A carrier that connects late (TLS after a blocked UDP was left) joins the preference
    /// as a standby: the data stay on the carrier they moved to, the carrier they left keeps
    /// its hold, and the newcomer gets probes, not data.
    #[test]
    fn a_carrier_added_to_the_preference_keeps_the_active_carrier_and_the_holds() {
        let t0 = Instant::now();
        let (mut set, [_, _, standby]) = failover_set(t0);
        let silent = silent_after(Duration::from_millis(200));
        let mut now = t0;
        while set.take_switch().is_none() {
            assert!(
                now < t0 + Duration::from_secs(5),
                "never left the silent carrier"
            );
            step(&mut set, now, false);
            set.review(now, silent);
            now += Duration::from_millis(20);
        }
        assert!(set.info()[2].active, "moved to carrier 1");
        let held = set.holds[0];
        assert!(held.until.is_some(), "the left carrier is held");

        // Carrier 2 connects and is ranked between the two.
        let late = on(2, 443);
        let mut paths: Vec<PathAddr> = set.info().iter().map(|p| p.addr).collect();
        paths.push(late);
        set.replace(&paths);
        set.set_preference(&[CarrierId(0), CarrierId(2), CarrierId(1)]);
        assert_eq!(set.active, 2, "carrier 1, now third, stays active");
        assert_eq!(set.holds[0].until, held.until, "carrier 0 keeps its hold");
        let info = set.info();
        assert!(info[2].active && !info[3].active, "{info:?}");
        let mut late_probes = 0;
        for _ in 0..100 {
            match step(&mut set, now, false) {
                Some(NextSend::Data(p)) => {
                    assert_eq!(p, standby, "data stay on carrier 1");
                    set.on_acked(p, now, false, 1200);
                }
                Some(NextSend::Probe(p)) if p == late => late_probes += 1,
                _ => {}
            }
            now += Duration::from_millis(20);
        }
        assert!(late_probes >= 1, "the newcomer is probed");
    }

    #[test]
    fn failover_leaves_a_silent_carrier_and_returns_after_answered_probes_and_hold() {
        let t0 = Instant::now();
        let (mut set, [a, b, standby]) = failover_set(t0);
        let silent = silent_after(Duration::from_millis(200));
        // The standby answers its probes; the active carrier's ports go dark.
        let mut now = t0;
        while now < t0 + silent + Duration::from_millis(50) {
            step(&mut set, now, false);
            set.review(now, silent);
            now += Duration::from_millis(20);
            if set.take_switch().is_some() {
                break;
            }
        }
        let info = set.info();
        assert!(info[2].active, "{info:?}");
        assert!(
            !info[0].alive && !info[1].alive,
            "the silent ports are dead: {info:?}"
        );
        assert!(now >= t0 + silent, "not before the silence bound");
        assert_eq!(set.switch_count(), 1);
        // Data now goes to the standby; the dead ports are retried by probes after their
        // back-off, and the data returns once three probes in a row were answered and the
        // hold time has passed.
        let moved = now;
        let mut back = None;
        while now < moved + Duration::from_secs(20) {
            let next = step(&mut set, now, false);
            if let Some(NextSend::Data(p)) = next {
                assert!(p == standby || back.is_some(), "data on {p}");
                set.on_acked(p, now, false, 1200);
            }
            set.review(now, silent);
            if let Some(s) = set.take_switch() {
                assert_eq!(s.reason, SwitchReason::Recovered);
                assert!(s.to == a || s.to == b);
                back = Some(now);
                break;
            }
            now += Duration::from_millis(20);
        }
        let back = back.expect("came back");
        assert!(
            back - moved >= HOLD_FIRST,
            "hold respected: {:?}",
            back - moved
        );
        assert!(back - moved <= Duration::from_secs(6), "{:?}", back - moved);
    }

    #[test]
    fn failover_leaves_a_throttled_carrier_but_not_one_as_lossy_as_the_standby() {
        for standby_loses in [false, true] {
            let t0 = Instant::now();
            let (mut set, [a, _, _]) = failover_set(t0);
            let silent = silent_after(Duration::from_millis(200));
            let mut moved = None;
            for i in 0..1000u32 {
                let now = t0 + Duration::from_millis(u64::from(i) * 10);
                // Half the standby's probes lost, or none.
                let probe_lost = standby_loses && i % 2 == 0;
                if let Some(NextSend::Data(p)) = step(&mut set, now, probe_lost) {
                    // Every other data packet lost: 50 %, acknowledged otherwise.
                    if i % 2 == 0 {
                        set.on_lost(p, now, false);
                    } else {
                        set.on_acked(p, now, false, 1200);
                    }
                }
                set.review(now, silent);
                if let Some(s) = set.take_switch() {
                    moved = Some(s);
                    break;
                }
            }
            match (standby_loses, moved) {
                (false, Some(s)) => {
                    assert_eq!(s.from, Some(a));
                    assert!(
                        matches!(s.reason, SwitchReason::Lossy { active, standby } if active >= 0.45 && standby <= 0.2),
                        "{s:?}"
                    );
                }
                (true, None) => {}
                other => panic!("standby loses: {standby_loses}: {other:?}"),
            }
        }
    }

    /// Sends `packets` 1200-byte packets by share at `now`; `fate(path, n)` says whether the
    /// n-th packet sent on that path (counted from 0 over the whole run) is acknowledged.
    fn spread_step(
        set: &mut PathSet,
        now: Instant,
        packets: usize,
        sent: &mut std::collections::HashMap<PathAddr, u64>,
        fate: &impl Fn(PathAddr, u64) -> bool,
    ) {
        for _ in 0..packets {
            let Some(NextSend::Data(p)) = set.next_send(now, Duration::from_millis(100)) else {
                panic!("spreading sends data");
            };
            set.on_sent(p, now);
            set.on_transmit(p, 1200);
            let n = sent.entry(p).or_default();
            if fate(p, *n) {
                set.on_acked(p, now, false, 1200);
            } else {
                set.on_lost(p, now, false);
            }
            *n += 1;
        }
    }

    #[test]
    fn spreading_gives_paths_that_deliver_alike_equal_shares() {
        let t0 = Instant::now();
        let (a, b) = (on(0, 1), on(1, 1));
        let mut set = PathSet::new(&[a, b]);
        let mut sent = std::collections::HashMap::new();
        for i in 0..300u64 {
            let now = t0 + Duration::from_millis(i * 10);
            spread_step(&mut set, now, 7, &mut sent, &|_, _| true);
        }
        let info = set.info();
        let (sa, sb) = (info[0].bytes_sent, info[1].bytes_sent);
        assert!(sa.abs_diff(sb) <= 2 * 1200, "{sa} against {sb}");
        assert!((info[0].share - 0.5).abs() < 0.01, "{info:?}");
    }

    #[test]
    fn spreading_gives_a_path_that_loses_half_a_small_share_and_it_grows_back() {
        let t0 = Instant::now();
        let (a, b) = (on(0, 1), on(1, 1));
        let mut set = PathSet::new(&[a, b]);
        let mut sent = std::collections::HashMap::new();
        // Path b delivers every other packet.
        let throttled = |p: PathAddr, n: u64| p != b || n.is_multiple_of(2);
        for i in 0..300u64 {
            let now = t0 + Duration::from_millis(i * 10);
            spread_step(&mut set, now, 10, &mut sent, &throttled);
        }
        let info = set.info();
        assert!(info[1].alive, "half lost is not dead: {info:?}");
        // Halfway to a target of 0.8 * delivered share + 0.1 each epoch settles near 0.2.
        assert!(
            (0.12..0.3).contains(&info[1].share),
            "throttled share: {info:?}"
        );
        let before = (info[0].bytes_sent, info[1].bytes_sent);
        // The throttle ends: within a few seconds the shares are nearly equal again.
        let t1 = t0 + Duration::from_secs(3);
        for i in 0..400u64 {
            let now = t1 + Duration::from_millis(i * 10);
            spread_step(&mut set, now, 10, &mut sent, &|_, _| true);
        }
        let info = set.info();
        assert!(info[1].share > 0.45, "share grew back: {info:?}");
        assert!(
            info[1].bytes_sent - before.1 > (info[0].bytes_sent - before.0) / 2,
            "{info:?}"
        );
    }

    #[test]
    fn a_path_still_acknowledged_lately_survives_a_burst_of_losses() {
        let t0 = Instant::now();
        let mut set = PathSet::new(&[addr(1), addr(2)]);
        set.on_acked(addr(2), t0, false, 1200);
        // A burst lost in a socket buffer right after an acknowledgement: not dark.
        let burst = t0 + DEAD_AFTER_SILENCE / 2;
        for _ in 0..DEAD_AFTER_LOSSES * 4 {
            assert!(!set.on_lost(addr(2), burst, false));
        }
        assert_eq!(set.alive(), 2);
        // Silence since: the next loss makes it dead.
        assert!(set.on_lost(addr(2), t0 + DEAD_AFTER_SILENCE, false));
        assert_eq!(set.alive(), 1);
        // Back at its retry as any live path: one loss does not kill it again.
        let retry = t0 + DEAD_AFTER_SILENCE + RETRY_FIRST;
        assert!(set.next_path(retry).is_some());
        assert_eq!(set.alive(), 2);
        assert!(!set.on_lost(addr(2), retry, false));
        assert_eq!(set.alive(), 2);
    }

    #[test]
    fn spreading_gives_a_dead_path_nothing_and_a_retried_one_an_equal_share() {
        // Both deliver at `start`; b's losses come after its silence.
        let start = Instant::now();
        let t0 = start + DEAD_AFTER_SILENCE;
        let (a, b) = (on(0, 1), on(1, 1));
        let mut set = PathSet::new(&[a, b]);
        let mut sent = std::collections::HashMap::new();
        spread_step(&mut set, start, 20, &mut sent, &|_, _| true);
        // Path b goes dark: dead after four losses in a row, then no more packets.
        for _ in 0..DEAD_AFTER_LOSSES {
            set.on_lost(b, t0, false);
        }
        assert!(!set.info()[1].alive);
        let before = set.info()[1].bytes_sent;
        spread_step(&mut set, t0, 50, &mut sent, &|p, _| p == a);
        assert_eq!(set.info()[1].bytes_sent, before, "nothing on a dead path");
        assert_eq!(set.info()[1].share, 0.0);
        // At its retry it is level with the other path again: an equal share.
        let t1 = t0 + RETRY_FIRST;
        let mut count_b = 0;
        for _ in 0..40 {
            let Some(NextSend::Data(p)) = set.next_send(t1, Duration::from_millis(100)) else {
                panic!("data");
            };
            set.on_transmit(p, 1200);
            count_b += u32::from(p == b);
        }
        assert!((18..=22).contains(&count_b), "equal again: {count_b} of 40");
    }
}
