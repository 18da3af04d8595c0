//! Pacing: spreads a window's worth of packets over the RTT instead of sending them in a burst.
//!
//! A token bucket filled at the pacing rate. Its capacity is what the rate delivers in
//! [`BURST_INTERVAL`] (2 ms), clamped to [`MIN_BURST`]..=[`MAX_BURST`] datagrams: the driver's
//! timers have about 1 ms granularity and often fire late, so the bucket must hold enough for the
//! time between two wake-ups or the achieved rate falls short of the pacing rate (at 100 Mbit/s
//! and 1350-byte datagrams, 2 ms is about 18 datagrams). Tokens are kept in byte-nanoseconds so
//! that refills of a few nanoseconds are not lost to rounding.

use std::time::{Duration, Instant};

/// Time's worth of sending the bucket holds.
pub const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// Smallest bucket, in datagrams, whatever the rate.
pub const MIN_BURST: u64 = 2;
/// Largest bucket, in datagrams, whatever the rate.
pub const MAX_BURST: u64 = 128;
/// Rates below this many bytes per second are treated as this (one 1 KiB datagram a second): a
/// zero rate must not stall the connection forever nor divide by zero.
pub const MIN_RATE: u64 = 1024;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket refilled at the pacing rate, with a burst of a few datagrams.
#[derive(Debug)]
pub struct Pacer {
    /// Largest datagram; the bucket's size is a multiple of it.
    mtu: u64,
    /// Available tokens, in bytes × 10⁹ (byte-nanoseconds at one byte per second).
    tokens: u128,
    /// When `tokens` was last refilled.
    last: Instant,
}

impl Pacer {
    /// A full bucket at `now` for datagrams of up to `mtu` bytes.
    pub fn new(now: Instant, mtu: u64) -> Self {
        let mtu = mtu.max(1);
        Self {
            mtu,
            // Full for any rate: the first refill clamps it to the rate's capacity.
            tokens: u128::from(MAX_BURST) * u128::from(mtu) * NANOS_PER_SEC,
            last: now,
        }
    }

    /// The largest datagram is now `mtu` bytes: the bucket holds at least [`MIN_BURST`] of them.
    /// Kept at the old size, the bucket at rates below 32 MB/s held fewer bytes than one 64 KB
    /// packet, and a packet larger than the bucket waits only for a full one: at the smallest
    /// bucket (two 1472-byte datagrams) 64 KB packets went out at 22 times the pacing rate.
    pub fn set_mtu(&mut self, mtu: u64) {
        self.mtu = mtu.max(1);
    }

    /// When a packet of `bytes` may be sent at `rate` bytes per second: `None` means now.
    pub fn delay(&mut self, now: Instant, bytes: u64, rate: u64) -> Option<Instant> {
        let rate = u128::from(rate.max(MIN_RATE));
        let capacity = self.capacity(rate);
        self.refill(now, rate, capacity);
        // A packet larger than the bucket only waits for a full bucket.
        let needed = (u128::from(bytes) * NANOS_PER_SEC).min(capacity);
        if self.tokens >= needed {
            return None;
        }
        let wait_nanos = (needed - self.tokens).div_ceil(rate).max(1);
        let wait = Duration::from_nanos(u64::try_from(wait_nanos).unwrap_or(u64::MAX));
        // `wait` is at most a bucket's worth at MIN_RATE; only an absurd MTU could overflow.
        let hour = Duration::from_secs(3600);
        Some(
            now.checked_add(wait)
                .or_else(|| now.checked_add(hour))
                .unwrap_or(now),
        )
    }

    /// A packet of `bytes` was sent.
    pub fn on_sent(&mut self, bytes: u64) {
        self.tokens = self
            .tokens
            .saturating_sub(u128::from(bytes) * NANOS_PER_SEC);
    }

    /// Bucket size for `rate` (at least [`MIN_RATE`]), in byte-nanoseconds.
    fn capacity(&self, rate: u128) -> u128 {
        let mtu = u128::from(self.mtu);
        let burst_bytes = rate * BURST_INTERVAL.as_nanos() / NANOS_PER_SEC;
        let datagrams = (burst_bytes / mtu).clamp(u128::from(MIN_BURST), u128::from(MAX_BURST));
        datagrams * mtu * NANOS_PER_SEC
    }

    /// Adds what `rate` earned since the last refill; a clock that went backwards earns nothing.
    fn refill(&mut self, now: Instant, rate: u128, capacity: u128) {
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            let earned = rate.saturating_mul(elapsed.as_nanos());
            self.tokens = self.tokens.saturating_add(earned).min(capacity);
            self.last = now;
        } else {
            self.tokens = self.tokens.min(capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1350;

    /// Sends `n` packets of `size` as soon as the pacer allows; returns when the last one went.
    fn send_paced(pacer: &mut Pacer, start: Instant, n: u64, size: u64, rate: u64) -> Instant {
        let mut now = start;
        for _ in 0..n {
            if let Some(t) = pacer.delay(now, size, rate) {
                assert!(t > now);
                now = t;
                assert_eq!(pacer.delay(now, size, rate), None);
            }
            pacer.on_sent(size);
        }
        now
    }

    #[test]
    fn paced_packets_take_size_over_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, MTU);
        let rate = 12_500_000; // 100 Mbit/s
        // Drain the initial bucket (18 datagrams at this rate).
        let t1 = send_paced(&mut pacer, t0, 18, MTU, rate);
        assert_eq!(t1, t0);
        assert!(pacer.delay(t0, MTU, rate).is_some());
        let t2 = send_paced(&mut pacer, t1, 100, MTU, rate);
        let expected = Duration::from_nanos(100 * MTU * 1_000_000_000 / rate);
        let took = t2 - t1;
        assert!(
            took.abs_diff(expected) < Duration::from_micros(2),
            "{took:?} vs {expected:?}"
        );
    }

    #[test]
    fn burst_capacity_follows_the_rate() {
        let t0 = Instant::now();
        let pacer = Pacer::new(t0, MTU);
        let dg = |r: u128| pacer.capacity(r) / (u128::from(MTU) * NANOS_PER_SEC);
        assert_eq!(dg(12_500_000), 18);
        assert_eq!(dg(1000), MIN_BURST.into());
        assert_eq!(dg(u128::from(u64::MAX)), MAX_BURST.into());
    }

    #[test]
    fn large_datagrams_are_paced_at_the_rate_once_the_pacer_knows_their_size() {
        let t0 = Instant::now();
        let big = 65_507;
        let rate = 10_000_000; // 80 Mbit/s: 2 ms is 20 KB, less than one large datagram.
        let mut stale = Pacer::new(t0, MTU);
        let mut told = Pacer::new(t0, MTU);
        told.set_mtu(big);
        let expected = Duration::from_nanos(100 * big * 1_000_000_000 / rate);
        // Told the size: 100 datagrams take 100 × size / rate (the bucket holds two of them).
        let start = t0 + Duration::from_secs(1);
        let took = send_paced(&mut told, start, 100, big, rate) - start;
        assert!(took.abs_diff(expected) < 3 * expected / 100, "{took:?}");
        // Not told: each waits only for a full bucket of 14 small datagrams (18 900 bytes), so
        // the datagrams go out 3.5 times too fast.
        let took = send_paced(&mut stale, start, 100, big, rate) - start;
        assert!(took < expected / 3, "{took:?}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, MTU);
        let rate = 12_500_000;
        send_paced(&mut pacer, t0, 50, MTU, rate);
        let later = t0 + Duration::from_secs(10);
        let mut sent = 0;
        while pacer.delay(later, MTU, rate).is_none() {
            pacer.on_sent(MTU);
            sent += 1;
        }
        assert_eq!(sent, 18);
    }

    #[test]
    fn zero_rate_is_slow_but_finite() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, MTU);
        pacer.on_sent(MTU * MAX_BURST);
        let t = pacer
            .delay(t0, MTU, 0)
            .unwrap_or_else(|| panic!("expected a delay"));
        // MTU bytes at MIN_RATE.
        let expected = Duration::from_nanos(MTU * 1_000_000_000 / MIN_RATE);
        assert!((t - t0).abs_diff(expected) < Duration::from_micros(1));
    }

    #[test]
    fn clock_standing_still_or_going_back_does_not_earn_tokens() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut pacer = Pacer::new(t0, MTU);
        pacer.on_sent(u64::MAX);
        let a = pacer.delay(t0, MTU, 1_000_000);
        assert_eq!(pacer.delay(t0, MTU, 1_000_000), a);
        let back = t0 - Duration::from_millis(500);
        assert!(pacer.delay(back, MTU, 1_000_000).is_some());
        assert_eq!(pacer.delay(t0, MTU, 1_000_000), a);
    }

    #[test]
    fn oversized_packets_wait_for_a_full_bucket_only() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, MTU);
        assert_eq!(pacer.delay(t0, u64::MAX, u64::MAX), None);
        pacer.on_sent(u64::MAX);
        let t = pacer.delay(t0, u64::MAX, 1_000_000);
        // Capacity at 1 MB/s is MIN_BURST datagrams: 2700 bytes, 2.7 ms.
        assert_eq!(t, Some(t0 + Duration::from_micros(2700)));
        let mut tiny = Pacer::new(t0, 0);
        assert_eq!(tiny.delay(t0, 0, 0), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_inputs_do_not_panic(mtu: u64, steps in proptest::collection::vec((0..10_000_000u64, proptest::num::u64::ANY, proptest::num::u64::ANY), 0..100)) {
            let t0 = Instant::now();
            let mut pacer = Pacer::new(t0, mtu);
            let mut now = t0;
            for (dt, bytes, rate) in steps {
                now += Duration::from_nanos(dt);
                if let Some(t) = pacer.delay(now, bytes, rate) {
                    proptest::prop_assert!(t > now);
                    // Never more than a full bucket's wait at the slowest rate.
                    proptest::prop_assert!(t - now <= Duration::from_secs(MAX_BURST.saturating_mul(mtu.max(1))));
                } else {
                    pacer.on_sent(bytes);
                }
            }
        }
    }
}
