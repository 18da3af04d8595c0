//! Path MTU discovery in the spirit of DPLPMTUD (RFC 8899): find the largest datagram the path
//! carries, so that bulk transfers pay the fixed per-packet overhead (IP and UDP headers, our
//! header, the AEAD tag, frame headers) as rarely as possible.
//!
//! The connection starts at a size every path is assumed to carry (the configured initial
//! size) and never sends data in datagrams larger than the *confirmed* size. Above it, a binary
//! search runs with probes: single datagrams of exactly the probe size holding a PING and
//! PADDING. They carry no data, so a lost probe costs nothing to repair and says nothing about
//! congestion: it only counts as a failure at that size. The first probe of a search goes
//! straight to the ceiling (most paths carry it, and then one probe is enough); after
//! [`MAX_PROBE_FAILURES`] failures a size becomes the new upper bound. Then the common path
//! sizes below it ([`PLATEAUS`]: a jumbo frame, an Ethernet frame) are tried before the search
//! halves the gap, until it is narrower than [`SEARCH_PRECISION`]: a ceiling raised for
//! loopback or a jumbo-frame LAN (`max_udp_payload` up to 65 507) still finds an ordinary
//! 1500-byte internet path's 1472 bytes exactly, after a few lost probes. A finished search is tried again after
//! [`RAISE_INTERVAL`], in case the path got better.
//!
//! A path can also get worse (a route change): then every packet above the base size vanishes.
//! The [`BlackHoleDetector`] notices loss events made only of such packets with no large packet
//! acknowledged after them, and after more than [`BLACK_HOLE_THRESHOLD`] of them the connection
//! falls back to [`MIN_MTU`] and searches again. Lost stream data is handed back to the streams
//! as data, so it is simply sent again in smaller packets.

use std::time::{Duration, Instant};

use super::MIN_MTU;

/// Failed probes at one size before that size counts as too large. More than one, because a
/// probe can also be lost to ordinary random loss.
pub(super) const MAX_PROBE_FAILURES: u8 = 3;

/// The search ends once the gap between the confirmed size and the smallest failed size is
/// below this many bytes: the last few bytes are not worth more probes.
pub(super) const SEARCH_PRECISION: u16 = 16;

/// How long after a finished search the connection tries larger sizes again.
pub(super) const RAISE_INTERVAL: Duration = Duration::from_secs(600);

/// Suspicious loss events (only packets above the base size lost, none acknowledged since)
/// tolerated before the path counts as a black hole for large packets.
pub(super) const BLACK_HOLE_THRESHOLD: u32 = 3;

/// Extra bytes an IPv6 header takes compared with IPv4: the ceiling for an IPv6 peer is lower by
/// this much (a 1472-byte UDP payload fills a 1500-byte IPv4 packet; over IPv6 it is 1452).
pub(super) const IPV6_EXTRA_HEADER: u16 = 20;

/// UDP payload sizes (over IPv4) of the MTUs most paths have, largest first: a 9000-byte jumbo
/// frame and a 1500-byte Ethernet frame. After the ceiling failed, the search tries these
/// before it bisects, so a common path is found exactly and with few probes.
pub(super) const PLATEAUS: [u16; 2] = [8972, 1472];

/// Where the search stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Probing: the next probe size lies between the confirmed size and `bad`.
    Searching,
    /// The gap is closed; a new search starts at the given time.
    Complete { until: Instant },
    /// Discovery is off, or nothing lies above the confirmed size.
    Disabled,
}

/// Counters for the connection's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MtuStats {
    pub(super) probes_sent: u64,
    pub(super) probes_acked: u64,
    pub(super) probes_lost: u64,
    pub(super) black_holes: u64,
}

/// The search state machine. Knows nothing of packets beyond sizes and packet numbers.
#[derive(Debug, Clone)]
pub(super) struct MtuDiscovery {
    enabled: bool,
    /// Size to (re)start from on a new path.
    initial: u16,
    /// Largest size we may probe: our and the peer's `max_udp_payload`.
    ceiling: u16,
    /// Bytes the IP header takes beyond IPv4's (the [`PLATEAUS`] are lower by this much).
    ip_extra: u16,
    /// Largest size known to work: every data packet fits in it.
    confirmed: u16,
    /// Smallest size known (or assumed) not to work; the search stays below it.
    bad: u16,
    /// Whether the next probe is the first of this search (which tries the ceiling directly).
    first_probe: bool,
    /// Failed probes at `probe_size`.
    failures: u8,
    /// The probe in flight: its packet number and size.
    in_flight: Option<(u64, u16)>,
    phase: Phase,
    black_hole: BlackHoleDetector,
    pub(super) stats: MtuStats,
}

impl MtuDiscovery {
    /// Starts at `initial` (raised to [`MIN_MTU`], capped by `ceiling`); probes up to `ceiling`
    /// when `enabled`. No probe goes out before [`MtuDiscovery::set_peer_ceiling`].
    pub(super) fn new(enabled: bool, initial: u16, ceiling: u16) -> Self {
        let ceiling = ceiling.max(MIN_MTU);
        let initial = initial.clamp(MIN_MTU, ceiling);
        Self {
            enabled,
            initial,
            ceiling,
            ip_extra: 0,
            confirmed: initial,
            bad: ceiling.saturating_add(1),
            first_probe: true,
            failures: 0,
            in_flight: None,
            phase: Phase::Disabled,
            black_hole: BlackHoleDetector::default(),
            stats: MtuStats::default(),
        }
    }

    /// The peer's parameters arrived: the ceiling is also bounded by its `max_udp_payload` (and
    /// by the IPv6 header when the peer is reached over IPv6). Starts the search.
    pub(super) fn set_peer_ceiling(&mut self, peer_max: u16, ipv6: bool) {
        let mut ceiling = self.ceiling.min(peer_max);
        if ipv6 {
            ceiling = ceiling.saturating_sub(IPV6_EXTRA_HEADER);
            self.ip_extra = IPV6_EXTRA_HEADER;
        }
        self.ceiling = ceiling.max(MIN_MTU);
        self.initial = self.initial.min(self.ceiling);
        self.restart_at(self.initial.min(self.confirmed));
    }

    /// Largest datagram data packets may use now.
    pub(super) fn current(&self) -> u16 {
        self.confirmed
    }

    /// Packet number of the probe in flight, if any.
    pub(super) fn probe_in_flight(&self) -> Option<u64> {
        self.in_flight.map(|(pn, _)| pn)
    }

    /// Size of the probe to send now, if one is due: the search is running (or due to run
    /// again by `now`) and no probe is in flight. The size is at most `limit` (the caller's
    /// share of the congestion window), unless that is not above the confirmed size; a probe
    /// cut to the limit is an ordinary step of the search, taken again once the limit grows.
    pub(super) fn probe_due(&mut self, now: Instant, limit: u16) -> Option<u16> {
        if let Phase::Complete { until } = self.phase
            && now >= until
        {
            self.restart_at(self.confirmed);
        }
        if self.phase != Phase::Searching || self.in_flight.is_some() {
            return None;
        }
        let size = self.next_probe_size();
        Some(if limit > self.confirmed {
            size.min(limit)
        } else {
            size
        })
    }

    /// A probe of `size` bytes went out as packet `pn`.
    pub(super) fn on_probe_sent(&mut self, pn: u64, size: u16) {
        self.in_flight = Some((pn, size));
        self.stats.probes_sent += 1;
    }

    /// The probe `pn` was acknowledged: its size works.
    pub(super) fn on_probe_acked(&mut self, pn: u64, now: Instant) {
        let Some((probe, size)) = self.in_flight else {
            return;
        };
        if probe != pn {
            return;
        }
        self.in_flight = None;
        self.stats.probes_acked += 1;
        self.failures = 0;
        self.first_probe = false;
        self.confirmed = self.confirmed.max(size);
        self.check_done(now);
    }

    /// The probe `pn` was declared lost: one failure at its size.
    pub(super) fn on_probe_lost(&mut self, pn: u64, now: Instant) {
        let Some((probe, size)) = self.in_flight else {
            return;
        };
        if probe != pn {
            return;
        }
        self.in_flight = None;
        self.stats.probes_lost += 1;
        self.failures += 1;
        if self.failures >= MAX_PROBE_FAILURES {
            self.failures = 0;
            self.first_probe = false;
            self.bad = self.bad.min(size);
            self.check_done(now);
        }
    }

    /// A data packet (not a probe) `pn` of `size` bytes was acknowledged.
    pub(super) fn on_packet_acked(&mut self, pn: u64, size: u16) {
        if size > MIN_MTU {
            self.black_hole.on_large_acked(pn);
        }
    }

    /// Data packets (not probes) were declared lost in one go, as `(pn, size)`. Returns whether
    /// this revealed a black hole, in which case the connection is back at [`MIN_MTU`].
    pub(super) fn on_packets_lost(&mut self, lost: &[(u64, u16)]) -> bool {
        // At the base size already there is nothing to fall back to.
        if !self.enabled || self.confirmed <= MIN_MTU || !self.black_hole.on_loss_event(lost) {
            return false;
        }
        tracing::debug!(
            from = self.confirmed,
            to = MIN_MTU,
            "large packets vanish: path MTU black hole, falling back"
        );
        self.stats.black_holes += 1;
        self.restart_at(MIN_MTU);
        true
    }

    /// The connection moved to a new path: start over from the initial size.
    pub(super) fn on_path_changed(&mut self) {
        self.restart_at(self.initial);
    }

    /// Starts a new search from `confirmed`; the probe in flight (if any) no longer counts.
    fn restart_at(&mut self, confirmed: u16) {
        self.confirmed = confirmed;
        self.bad = self.ceiling.saturating_add(1);
        self.first_probe = true;
        self.failures = 0;
        self.in_flight = None;
        self.black_hole = BlackHoleDetector::default();
        self.phase = if self.enabled && self.confirmed < self.ceiling {
            Phase::Searching
        } else {
            Phase::Disabled
        };
    }

    /// The ceiling first, then the largest common size ([`PLATEAUS`]) between the confirmed
    /// size and the smallest failed one, then the middle of the remaining gap (rounded up, so
    /// it always lies strictly above the confirmed size).
    fn next_probe_size(&self) -> u16 {
        if self.first_probe {
            return self.ceiling;
        }
        if let Some(plateau) = PLATEAUS
            .iter()
            .map(|p| p.saturating_sub(self.ip_extra))
            .find(|&p| p > self.confirmed && p < self.bad)
        {
            return plateau;
        }
        let gap = self.bad.saturating_sub(self.confirmed);
        self.confirmed + gap.div_ceil(2)
    }

    /// Ends the search once the gap is below [`SEARCH_PRECISION`].
    fn check_done(&mut self, now: Instant) {
        let done = self.confirmed >= self.ceiling
            || self.bad.saturating_sub(self.confirmed) < SEARCH_PRECISION;
        if done && self.phase == Phase::Searching {
            tracing::debug!(mtu = self.confirmed, "path MTU search complete");
            self.phase = Phase::Complete {
                until: now + RAISE_INTERVAL,
            };
        }
    }
}

/// Notices that packets above the base size no longer get through.
///
/// A loss event is *suspicious* when every packet lost in it was larger than [`MIN_MTU`]. Any
/// acknowledged large packet sent after the newest suspicious loss proves that large packets
/// still arrive and clears the count. Ordinary congestion or random loss keeps large packets
/// being acknowledged in between, so only a path that drops all of them for several loss events
/// in a row (several retransmission timeouts, typically) counts as a black hole.
#[derive(Debug, Clone, Default)]
struct BlackHoleDetector {
    suspicious: u32,
    /// Newest packet number lost in a suspicious event.
    newest_lost: Option<u64>,
}

impl BlackHoleDetector {
    fn on_large_acked(&mut self, pn: u64) {
        if self.newest_lost.is_none_or(|lost| pn > lost) {
            self.suspicious = 0;
            self.newest_lost = None;
        }
    }

    /// Returns whether the threshold is now exceeded.
    fn on_loss_event(&mut self, lost: &[(u64, u16)]) -> bool {
        if lost.is_empty() || lost.iter().any(|&(_, size)| size <= MIN_MTU) {
            return false;
        }
        let newest = lost.iter().map(|&(pn, _)| pn).max();
        self.newest_lost = self.newest_lost.max(newest);
        self.suspicious += 1;
        self.suspicious > BLACK_HOLE_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn searching(initial: u16, ceiling: u16) -> MtuDiscovery {
        let mut m = MtuDiscovery::new(true, initial, ceiling);
        m.set_peer_ceiling(u16::MAX, false);
        m
    }

    /// Runs the search against a path that carries exactly `limit` bytes; returns the sizes
    /// probed, in order.
    fn converge(m: &mut MtuDiscovery, limit: u16, now: Instant) -> Vec<u16> {
        let mut probed = Vec::new();
        let mut pn = 0;
        while let Some(size) = m.probe_due(now, u16::MAX) {
            assert!(probed.len() < 100, "search does not end: {probed:?}");
            m.on_probe_sent(pn, size);
            probed.push(size);
            if size <= limit {
                m.on_probe_acked(pn, now);
            } else {
                m.on_probe_lost(pn, now);
            }
            pn += 1;
        }
        probed
    }

    #[test]
    fn a_path_that_carries_the_ceiling_needs_one_probe() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        assert_eq!(m.current(), 1350);
        assert_eq!(converge(&mut m, 1500, now), vec![1472]);
        assert_eq!(m.current(), 1472);
        assert_eq!(m.stats.probes_acked, 1);
    }

    #[test]
    fn the_search_halves_the_gap_and_ends_within_the_precision() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        let probed = converge(&mut m, 1400, now);
        // Three failures at the ceiling, then the binary search.
        assert_eq!(&probed[..4], &[1472, 1472, 1472, 1411]);
        assert!(m.current() <= 1400);
        assert!(m.current() > 1400 - SEARCH_PRECISION, "{}", m.current());
        assert!(probed.iter().all(|&s| s > 1350 && s <= 1472));
    }

    #[test]
    fn a_high_ceiling_tries_the_common_sizes_before_bisecting() {
        let now = Instant::now();
        // Loopback-sized ceiling over an Ethernet path: the ceiling, then 8972, then 1472.
        let mut m = searching(1350, 65_507);
        let probed = converge(&mut m, 1472, now);
        assert_eq!(
            &probed[..7],
            &[65_507, 65_507, 65_507, 8972, 8972, 8972, 1472]
        );
        assert_eq!(m.current(), 1472, "an Ethernet path is found exactly");
        assert!(probed[7..].iter().all(|&s| s > 1472 && s < 8972));
        // Over a jumbo-frame path the second size tried is the answer.
        let mut m = searching(1350, 65_507);
        let probed = converge(&mut m, 9000, now);
        assert_eq!(&probed[..4], &[65_507, 65_507, 65_507, 8972]);
        assert!(m.current() >= 9000 - SEARCH_PRECISION && m.current() <= 9000);
        // A probe is cut to the caller's limit (its share of the congestion window) and the
        // search goes on from what that step confirmed.
        let mut m = searching(1350, 65_507);
        assert_eq!(m.probe_due(now, 10_800), Some(10_800));
        m.on_probe_sent(1, 10_800);
        m.on_probe_acked(1, now);
        assert_eq!(m.current(), 10_800);
        assert!(m.probe_due(now, u16::MAX).is_some_and(|s| s > 10_800));
        // IPv6 lowers the common sizes with the ceiling.
        let mut m = MtuDiscovery::new(true, 1350, 65_507);
        m.set_peer_ceiling(u16::MAX, true);
        let probed = converge(&mut m, 1452, now);
        assert_eq!(
            &probed[..7],
            &[65_487, 65_487, 65_487, 8952, 8952, 8952, 1452]
        );
        assert_eq!(m.current(), 1452);
    }

    #[test]
    fn a_lost_probe_at_a_working_size_is_retried() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        assert_eq!(m.probe_due(now, u16::MAX), Some(1472));
        m.on_probe_sent(7, 1472);
        assert_eq!(
            m.probe_due(now, u16::MAX),
            None,
            "one probe in flight at most"
        );
        m.on_probe_lost(7, now);
        assert_eq!(
            m.probe_due(now, u16::MAX),
            Some(1472),
            "one loss is not enough"
        );
        m.on_probe_sent(8, 1472);
        m.on_probe_acked(8, now);
        assert_eq!(m.current(), 1472);
        assert_eq!(m.probe_due(now, u16::MAX), None);
    }

    #[test]
    fn a_finished_search_runs_again_after_the_raise_interval() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        converge(&mut m, 1400, now);
        let found = m.current();
        assert_eq!(m.probe_due(now + RAISE_INTERVAL / 2, u16::MAX), None);
        let later = now + RAISE_INTERVAL;
        assert_eq!(converge(&mut m, 1472, later), vec![1472]);
        assert!(found < m.current());
        assert_eq!(m.current(), 1472);
    }

    #[test]
    fn disabled_discovery_never_probes_and_keeps_the_initial_size() {
        let mut m = MtuDiscovery::new(false, 1350, 1472);
        m.set_peer_ceiling(1472, false);
        assert_eq!(m.probe_due(Instant::now(), u16::MAX), None);
        assert_eq!(m.current(), 1350);
        assert!(!m.on_packets_lost(&[(1, 1350), (2, 1350), (3, 1350), (4, 1350)]));
    }

    #[test]
    fn the_peer_and_ipv6_lower_the_ceiling() {
        let mut m = MtuDiscovery::new(true, 1350, 1472);
        m.set_peer_ceiling(1460, true);
        assert_eq!(m.probe_due(Instant::now(), u16::MAX), Some(1440));
        let mut m = MtuDiscovery::new(true, 1350, 1472);
        m.set_peer_ceiling(1300, false);
        assert_eq!(m.current(), 1300, "initial size capped by the peer");
        assert_eq!(
            m.probe_due(Instant::now(), u16::MAX),
            None,
            "nothing above to look for"
        );
    }

    #[test]
    fn repeated_large_only_losses_are_a_black_hole() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        converge(&mut m, 1472, now);
        for event in 0..BLACK_HOLE_THRESHOLD as u64 {
            assert!(!m.on_packets_lost(&[(event * 10, 1472), (event * 10 + 1, 1472)]));
        }
        assert!(m.on_packets_lost(&[(100, 1472)]));
        assert_eq!(m.current(), MIN_MTU);
        assert_eq!(m.stats.black_holes, 1);
        // And the search starts over from the base.
        assert_eq!(converge(&mut m, 1250, now).first(), Some(&1472));
        assert!(m.current() <= 1250 && m.current() > 1250 - SEARCH_PRECISION);
    }

    #[test]
    fn acknowledged_large_packets_or_small_losses_are_no_black_hole() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        converge(&mut m, 1472, now);
        for round in 0..10u64 {
            assert!(!m.on_packets_lost(&[(round * 10, 1472)]));
            // A large packet sent after the loss arrives: the path carries large packets.
            m.on_packet_acked(round * 10 + 5, 1472);
        }
        for round in 10..20u64 {
            // Small packets lost as well: congestion or an outage, not the MTU.
            assert!(!m.on_packets_lost(&[(round * 10, 1472), (round * 10 + 1, 800)]));
        }
        // A large packet acknowledged from before the losses proves nothing.
        for round in 20..30u64 {
            m.on_packet_acked(5, 1472);
            let lost = m.on_packets_lost(&[(round * 10, 1472)]);
            assert_eq!(lost, round == 23, "round {round}");
        }
    }

    #[test]
    fn a_new_path_starts_again_from_the_initial_size() {
        let now = Instant::now();
        let mut m = searching(1350, 1472);
        converge(&mut m, 1472, now);
        m.on_path_changed();
        assert_eq!(m.current(), 1350);
        assert_eq!(m.probe_due(now, u16::MAX), Some(1472));
    }
}
