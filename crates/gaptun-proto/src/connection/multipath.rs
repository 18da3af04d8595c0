//! Client: the set of paths a connection spreads its packets over, and their health.
//!
//! A client may reach its server over several paths at once: one per server port of a port
//! range, one per carrier (UDP and fake TCP), or both. Each packet batch goes out on the next
//! live path in turn, so a port that a middlebox throttles or blocks costs a share of the
//! packets, not the connection.
//!
//! A path dies when [`DEAD_AFTER_LOSSES`] packets sent on it in a row are declared lost (by the
//! usual loss detection: later packets, on other paths, were acknowledged while these were
//! not; so within about one RTT of the path going dark, or one RTO if everything went dark).
//! A dead path gets no packets until its retry time, which starts at [`RETRY_FIRST`] and doubles
//! up to [`RETRY_MAX`] each time it dies again; then it is back on probation: one more loss
//! kills it again, one acknowledgement makes it healthy (and resets its back-off). A retry thus
//! costs one packet. The last live path is never declared dead: with every path dark the
//! connection's own timeouts decide.
//!
//! Loss detection only sees ack-eliciting packets. A client that mostly acknowledges (a
//! download) would never learn that a path is dark, so a path that has had no ack-eliciting
//! packet for [`PROBE_INTERVAL`] gets a PING in its next packet: about one small packet per path
//! per second, and the same PINGs are how a dead path's retry is tested.
//!
//! The server keeps no such set: it answers on the path the newest packet came from, so it
//! follows the client's choice (see `connection::path`).

use std::time::{Duration, Instant};

use crate::shared::PathAddr;

/// Packets lost in a row on one path that make it dead.
pub(super) const DEAD_AFTER_LOSSES: u32 = 4;

/// How long a path stays dead the first time.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Longest a dead path waits before it is tried again.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(16);

/// Longest a path in use goes without an ack-eliciting packet (see the module documentation).
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// One path's figures, for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The carrier and the peer's address on it.
    pub addr: PathAddr,
    /// Whether packets go out on it now.
    pub alive: bool,
    /// Ack-eliciting packets sent on it.
    pub packets_sent: u64,
    /// Of those, acknowledged and declared lost.
    pub packets_acked: u64,
    pub packets_lost: u64,
    /// Times it was declared dead.
    pub deaths: u64,
}

#[derive(Debug, Clone)]
struct PathHealth {
    addr: PathAddr,
    lost_in_row: u32,
    dead_until: Option<Instant>,
    backoff: Duration,
    /// When an ack-eliciting packet last went out on it.
    last_eliciting: Option<Instant>,
    packets_sent: u64,
    packets_acked: u64,
    packets_lost: u64,
    deaths: u64,
}

impl PathHealth {
    fn new(addr: PathAddr) -> Self {
        Self {
            addr,
            lost_in_row: 0,
            dead_until: None,
            backoff: RETRY_FIRST,
            last_eliciting: None,
            packets_sent: 0,
            packets_acked: 0,
            packets_lost: 0,
            deaths: 0,
        }
    }
}

/// The client's paths, in the order they were given.
#[derive(Debug, Clone, Default)]
pub(super) struct PathSet {
    paths: Vec<PathHealth>,
    /// Index of the path the next batch goes out on (before skipping dead ones).
    next: usize,
}

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
    }

    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }

    pub(super) fn contains(&self, addr: PathAddr) -> bool {
        self.paths.iter().any(|p| p.addr == addr)
    }

    /// The path for the next batch: the next live one in turn. Dead paths whose retry time has
    /// come are put on probation first. `None` only for an empty set.
    pub(super) fn next_path(&mut self, now: Instant) -> Option<PathAddr> {
        for p in &mut self.paths {
            if p.dead_until.is_some_and(|t| t <= now) {
                p.dead_until = None;
                // Probation: one more loss and it is dead again.
                p.lost_in_row = DEAD_AFTER_LOSSES - 1;
            }
        }
        let n = self.paths.len();
        if n == 0 {
            return None;
        }
        for step in 0..n {
            let i = (self.next + step) % n;
            if self.paths.get(i).is_some_and(|p| p.dead_until.is_none()) {
                self.next = (i + 1) % n;
                return self.paths.get(i).map(|p| p.addr);
            }
        }
        // All dead (cannot happen through `on_lost`, which spares the last live path).
        let i = self.next % n;
        self.next = (i + 1) % n;
        self.paths.get(i).map(|p| p.addr)
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

    /// A packet sent on `addr` was acknowledged: the path carries.
    pub(super) fn on_acked(&mut self, addr: PathAddr) {
        if let Some(p) = self.paths.iter_mut().find(|p| p.addr == addr) {
            p.packets_acked += 1;
            p.lost_in_row = 0;
            p.backoff = RETRY_FIRST;
        }
    }

    /// A packet sent on `addr` was declared lost. Returns whether that made the path dead.
    pub(super) fn on_lost(&mut self, addr: PathAddr, now: Instant) -> bool {
        let alive = self.alive();
        let Some(p) = self.paths.iter_mut().find(|p| p.addr == addr) else {
            return false;
        };
        p.packets_lost += 1;
        if p.dead_until.is_some() {
            return false;
        }
        p.lost_in_row = p.lost_in_row.saturating_add(1);
        if p.lost_in_row < DEAD_AFTER_LOSSES || alive <= 1 {
            return false;
        }
        p.dead_until = Some(now + p.backoff);
        p.backoff = (p.backoff * 2).min(RETRY_MAX);
        p.deaths += 1;
        tracing::debug!(path = %p.addr, retry_in = ?p.backoff / 2, "path abandoned: no acknowledgements");
        true
    }

    /// Paths packets go out on now.
    pub(super) fn alive(&self) -> usize {
        self.paths.iter().filter(|p| p.dead_until.is_none()).count()
    }

    pub(super) fn info(&self) -> Vec<PathInfo> {
        self.paths
            .iter()
            .map(|p| PathInfo {
                addr: p.addr,
                alive: p.dead_until.is_none(),
                packets_sent: p.packets_sent,
                packets_acked: p.packets_acked,
                packets_lost: p.packets_lost,
                deaths: p.deaths,
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
        let t0 = Instant::now();
        let mut set = PathSet::new(&[addr(1), addr(2), addr(3), addr(2)]);
        assert_eq!(set.len(), 3, "duplicates ignored");
        let order: Vec<u16> = (0..6)
            .filter_map(|_| set.next_path(t0))
            .map(|a| a.remote.port())
            .collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 3]);
        // Three losses do not kill a path, an ACK in between resets the count.
        for _ in 0..3 {
            assert!(!set.on_lost(addr(2), t0));
        }
        set.on_acked(addr(2));
        for _ in 0..3 {
            assert!(!set.on_lost(addr(2), t0));
        }
        assert!(
            set.on_lost(addr(2), t0),
            "the fourth loss in a row kills it"
        );
        assert_eq!(set.alive(), 2);
        assert_eq!(set.next_retry(), Some(t0 + RETRY_FIRST));
        let order: Vec<u16> = (0..4)
            .filter_map(|_| set.next_path(t0))
            .map(|a| a.remote.port())
            .collect();
        assert!(!order.contains(&2), "{order:?}");
        // At its retry time it is back, on probation: one loss kills it for twice as long.
        let t1 = t0 + RETRY_FIRST;
        let order: Vec<u16> = (0..3)
            .filter_map(|_| set.next_path(t1))
            .map(|a| a.remote.port())
            .collect();
        assert!(order.contains(&2), "{order:?}");
        assert!(set.on_lost(addr(2), t1));
        assert_eq!(set.next_retry(), Some(t1 + RETRY_FIRST * 2));
        let info = set.info();
        assert_eq!(info[1].deaths, 2);
        assert_eq!(info[1].packets_lost, 8);
        assert!(!info[1].alive);
    }

    #[test]
    fn the_last_live_path_is_never_abandoned() {
        let t0 = Instant::now();
        let mut set = PathSet::new(&[addr(1), addr(2)]);
        for _ in 0..DEAD_AFTER_LOSSES {
            set.on_lost(addr(1), t0);
        }
        for _ in 0..10 * DEAD_AFTER_LOSSES {
            assert!(!set.on_lost(addr(2), t0));
        }
        assert_eq!(set.alive(), 1);
        assert_eq!(set.next_path(t0), Some(addr(2)));
    }

    #[test]
    fn replacing_the_set_keeps_the_health_of_paths_that_stay() {
        let t0 = Instant::now();
        let mut set = PathSet::new(&[addr(1), addr(2), addr(3)]);
        for _ in 0..DEAD_AFTER_LOSSES {
            set.on_lost(addr(3), t0);
        }
        set.replace(&[addr(3), addr(4)]);
        assert!(set.contains(addr(4)) && !set.contains(addr(1)));
        assert_eq!(set.alive(), 1, "path 3 is still dead");
        assert_eq!(set.next_path(t0), Some(addr(4)));
    }
}
