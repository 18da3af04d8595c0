//! A fixed-rate controller with loss compensation (as Hysteria 2's Brutal).
//!
//! The user states the goodput the path can carry; Brutal sends at that rate whatever happens,
//! raised by the measured loss so that the goodput stays at the target:
//! `pacing_rate = rate / ack_rate`, where `ack_rate = acked / (acked + lost)` over the last
//! second ([`SLOTS`] slots of [`SLOT`]). The ack rate is floored at [`MIN_ACK_RATE`] (0.8), so the
//! compensation is at most 1.25×: heavier loss is more likely congestion that more sending would
//! only worsen. With fewer than [`MIN_SAMPLES`] packets in the window the ack rate is taken as 1.
//! The window is `2 × pacing_rate × max(srtt, MIN_RTT)` and at least [`MIN_WINDOW_PACKETS`].

use std::time::{Duration, Instant};

use super::{AckSummary, Controller};
use crate::rtt::RttEstimator;

/// Width of one counting slot.
pub const SLOT: Duration = Duration::from_millis(200);
/// Slots in the loss-measuring window (5 × 200 ms = 1 s).
pub const SLOTS: usize = 5;
/// Smallest ack rate used: compensation is at most 1 / 0.8 = 1.25×, as in Hysteria 2.
pub const MIN_ACK_RATE: f64 = 0.8;
/// Packets (acked + lost) the window must hold before its ack rate is trusted.
pub const MIN_SAMPLES: u64 = 50;
/// Window in units of rate × RTT: room for ACKs that arrive late or in bursts.
pub const WINDOW_GAIN: u64 = 2;
/// RTT floor for the window computation (a LAN RTT must not shrink the window to nothing).
pub const MIN_RTT: Duration = Duration::from_millis(10);
/// Smallest window, in packets.
pub const MIN_WINDOW_PACKETS: u64 = 16;
/// RTT assumed for the window before the first ACK (the transport's default initial RTT).
pub const INITIAL_RTT: Duration = Duration::from_millis(300);

/// Acknowledged and lost packets counted during one slot.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Slot number since the controller started; identifies stale slots.
    index: u64,
    acked: u64,
    lost: u64,
}

/// The `brutal` controller.
#[derive(Debug)]
pub struct Brutal {
    /// Largest datagram now: the unit of the window's floor.
    mtu: u64,
    /// Target goodput, bytes per second.
    rate: u64,
    /// Origin of slot numbering.
    start: Instant,
    slots: [Slot; SLOTS],
    /// Smoothed RTT as of the latest ACK.
    srtt: Duration,
    /// Ack rate as of the latest ACK or loss, in millionths.
    ack_rate_ppm: u64,
}

impl Brutal {
    /// Creates it.
    pub fn new(now: Instant, mtu: u64, rate: u64) -> Self {
        Self {
            mtu: mtu.max(1),
            rate,
            start: now,
            slots: [Slot::default(); SLOTS],
            srtt: INITIAL_RTT,
            ack_rate_ppm: 1_000_000,
        }
    }

    /// Fraction of packets acknowledged over the window, floored at [`MIN_ACK_RATE`].
    pub fn ack_rate(&self) -> f64 {
        self.ack_rate_ppm as f64 / 1e6
    }

    /// The slot for `now`, cleared if it last held an older slot's counts.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        let index = self.slot_index(now);
        let pos = usize::try_from(index % SLOTS as u64).unwrap_or(0);
        let slot = &mut self.slots[pos % SLOTS];
        if slot.index != index {
            *slot = Slot {
                index,
                acked: 0,
                lost: 0,
            };
        }
        slot
    }

    fn slot_index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start);
        u64::try_from(since.as_nanos() / SLOT.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Recomputes the ack rate from the slots still inside the window.
    fn update_ack_rate(&mut self, now: Instant) {
        let current = self.slot_index(now);
        let (acked, lost) = self
            .slots
            .iter()
            .filter(|s| current.saturating_sub(s.index) < SLOTS as u64 && s.index <= current)
            .fold((0u64, 0u64), |(a, l), s| {
                (a.saturating_add(s.acked), l.saturating_add(s.lost))
            });
        let total = acked.saturating_add(lost);
        self.ack_rate_ppm = if total < MIN_SAMPLES {
            1_000_000
        } else {
            let ppm = u128::from(acked) * 1_000_000 / u128::from(total);
            let floor = (MIN_ACK_RATE * 1e6) as u64;
            u64::try_from(ppm).unwrap_or(1_000_000).max(floor)
        };
    }

    /// `rate / ack_rate`, saturating.
    fn compensated_rate(&self) -> u64 {
        let r = u128::from(self.rate) * 1_000_000 / u128::from(self.ack_rate_ppm.max(1));
        u64::try_from(r).unwrap_or(u64::MAX)
    }
}

impl Controller for Brutal {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    fn on_ack(&mut self, now: Instant, ack: &AckSummary, rtt: &RttEstimator, _in_flight: u64) {
        let slot = self.slot(now);
        slot.acked = slot.acked.saturating_add(ack.acked_packets);
        self.srtt = rtt.get();
        self.update_ack_rate(now);
    }

    fn on_loss(&mut self, now: Instant, _: u64, lost_packets: u64, _: Instant, _: u64) {
        let slot = self.slot(now);
        slot.lost = slot.lost.saturating_add(lost_packets);
        self.update_ack_rate(now);
    }

    fn on_mtu_change(&mut self, mtu: u64) {
        // Only the window's floor is in packets; the rate is the user's, in bytes.
        self.mtu = mtu.max(1);
    }

    fn window(&self) -> u64 {
        let rtt = self.srtt.max(MIN_RTT);
        let bytes = u128::from(self.compensated_rate()) * rtt.as_nanos() / 1_000_000_000;
        let window = u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .saturating_mul(WINDOW_GAIN);
        window.max(MIN_WINDOW_PACKETS.saturating_mul(self.mtu))
    }

    fn pacing_rate(&self, _rtt: &RttEstimator) -> Option<u64> {
        Some(self.compensated_rate())
    }

    fn name(&self) -> &'static str {
        "brutal"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const MTU: u64 = 1350;

    fn ack(packets: u64) -> AckSummary {
        AckSummary {
            acked_bytes: packets * MTU,
            acked_packets: packets,
            sample: None,
        }
    }

    fn rtt(ms: u64) -> RttEstimator {
        let mut r = RttEstimator::new(Duration::from_millis(300));
        r.update(Duration::ZERO, Duration::from_millis(ms));
        r
    }

    #[test]
    fn no_loss_sends_at_the_target_rate() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 10_000_000);
        let r = rtt(100);
        b.on_ack(t0 + 100 * MS, &ack(100), &r, 0);
        assert_eq!(b.pacing_rate(&r), Some(10_000_000));
        // 2 × 10 MB/s × 100 ms.
        assert_eq!(b.window(), 2_000_000);
    }

    #[test]
    fn loss_is_compensated() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 10_000_000);
        let r = rtt(100);
        b.on_ack(t0 + 100 * MS, &ack(90), &r, 0);
        b.on_loss(t0 + 150 * MS, 10 * MTU, 10, t0, 0);
        assert!((b.ack_rate() - 0.9).abs() < 1e-9);
        assert_eq!(b.pacing_rate(&r), Some(11_111_111));
        assert_eq!(b.window(), 2 * 1_111_111);
    }

    #[test]
    fn compensation_is_capped_at_a_quarter() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 10_000_000);
        let r = rtt(100);
        b.on_ack(t0 + 100 * MS, &ack(50), &r, 0);
        b.on_loss(t0 + 100 * MS, 50 * MTU, 50, t0, 0);
        assert!((b.ack_rate() - MIN_ACK_RATE).abs() < 1e-9);
        assert_eq!(b.pacing_rate(&r), Some(12_500_000));
    }

    #[test]
    fn few_samples_do_not_count() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 1_000_000);
        let r = rtt(100);
        b.on_ack(t0, &ack(10), &r, 0);
        b.on_loss(t0, 10 * MTU, 10, t0, 0);
        assert_eq!(b.ack_rate(), 1.0);
        assert_eq!(b.pacing_rate(&r), Some(1_000_000));
    }

    #[test]
    fn old_losses_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 1_000_000);
        let r = rtt(50);
        b.on_ack(t0, &ack(100), &r, 0);
        b.on_loss(t0, 100 * MTU, 100, t0, 0);
        assert!((b.ack_rate() - 0.8).abs() < 1e-9);
        // 0.8 s later the lossy slot is still inside the 1 s window.
        b.on_ack(t0 + 800 * MS, &ack(100), &r, 0);
        assert!((b.ack_rate() - 0.8).abs() < 1e-9);
        // At 1 s it has left: only clean slots remain.
        b.on_ack(t0 + 1000 * MS, &ack(100), &r, 0);
        assert_eq!(b.ack_rate(), 1.0);
    }

    #[test]
    fn window_has_floors() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 1000);
        // Before any ACK: 300 ms assumed, but the packet floor wins at this rate.
        assert_eq!(b.window(), MIN_WINDOW_PACKETS * MTU);
        let fast = Brutal::new(t0, MTU, 100_000_000);
        assert_eq!(fast.window(), 2 * 100_000_000 * 3 / 10);
        // A 1 ms RTT is treated as 10 ms.
        let mut f = Brutal::new(t0, MTU, 100_000_000);
        f.on_ack(t0, &ack(1), &rtt(1), 0);
        assert_eq!(f.window(), 2_000_000);
        b.on_ack(t0, &ack(1), &rtt(1), 0);
        assert_eq!(b.window(), MIN_WINDOW_PACKETS * MTU);
    }

    #[test]
    fn window_floor_follows_the_datagram_size() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU, 1000);
        assert_eq!(b.window(), MIN_WINDOW_PACKETS * MTU);
        b.on_mtu_change(65_507);
        assert_eq!(b.window(), MIN_WINDOW_PACKETS * 65_507);
        // The rate is the user's and does not change with the size.
        assert_eq!(b.pacing_rate(&rtt(100)), Some(1000));
        // A zero size counts as one byte: the floor is 16 bytes, below the rate's 600.
        b.on_mtu_change(0);
        assert_eq!(b.window(), 2 * 1000 * 3 / 10);
    }

    #[test]
    fn holds_the_target_goodput_under_random_loss() {
        use crate::congestion::sim::{LossAt, Path, Sim};
        for loss in [0.0, 0.1, 0.2] {
            let t0 = Instant::now();
            let path = Path {
                loss,
                loss_at: LossAt::Exit,
                ..Path::standard()
            };
            let mut sim = Sim::new(path, t0);
            // 50 Mbit/s on a 100 Mbit/s link.
            sim.add_flow(Brutal::new(t0, MTU, 6_250_000), Duration::ZERO);
            sim.run_until(Duration::from_secs(10));
            let g = sim.goodput(0, Duration::from_secs(2), Duration::from_secs(10));
            assert!(
                (g - 6_250_000.0).abs() < 0.03 * 6_250_000.0,
                "loss {loss}: {g}"
            );
        }
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let t0 = Instant::now();
        let r = rtt(100);
        let mut b = Brutal::new(t0, 0, u64::MAX);
        b.on_ack(t0, &ack(u64::MAX / MTU), &r, 0);
        b.on_loss(t0, u64::MAX, u64::MAX, t0, 0);
        assert_eq!(b.pacing_rate(&r), Some(u64::MAX));
        // u64::MAX bytes/s for 100 ms, twice.
        assert_eq!(b.window(), u64::MAX / 10 * 2);
        let mut z = Brutal::new(t0 + Duration::from_secs(1), MTU, 0);
        z.on_ack(t0, &ack(0), &r, 0);
        assert_eq!(z.pacing_rate(&r), Some(0));
        assert_eq!(z.window(), MIN_WINDOW_PACKETS * MTU);
    }
}
