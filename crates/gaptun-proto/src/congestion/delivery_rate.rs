//! Delivery-rate sampling (draft-cheng-iccrg-delivery-rate-estimation): how fast data is
//! actually being delivered, measured per ACK. BBR's bandwidth model is built from these samples.
//!
//! Every packet carries a snapshot of the connection's delivery counters taken when it was sent
//! ([`PacketRateState`]). When an ACK frame arrives, the most recently *sent* of the packets it
//! newly acknowledges defines the sample: the bytes delivered between that packet's send and its
//! ACK, divided by the longer of the send interval and the ACK interval. Taking the longer of the
//! two keeps ACK compression (a burst of delayed ACKs) from inflating the rate: data cannot be
//! delivered faster than it was sent, nor faster than it was acknowledged.

use std::time::{Duration, Instant};

/// Snapshot taken when a packet is sent and kept with it until it is acknowledged or lost.
#[derive(Debug, Clone, Copy)]
pub struct PacketRateState {
    /// Total bytes delivered when the packet was sent.
    pub delivered: u64,
    /// When `delivered` last changed, as of sending.
    pub delivered_time: Instant,
    /// Send time of the first packet of the current flight, as of sending.
    pub first_sent_time: Instant,
    /// Whether the sender was application-limited when sending.
    pub is_app_limited: bool,
    /// When the packet was sent.
    pub sent_time: Instant,
}

/// One delivery-rate measurement.
///
/// A sample whose interval was shorter than the minimum RTT seen cannot be trusted (the draft
/// discards it); it is still returned so that controllers can count round trips from
/// `prior_delivered`, but with `interval` zero and `delivery_rate` zero. Use
/// [`RateSample::has_rate`] to tell.
#[derive(Debug, Clone, Copy)]
pub struct RateSample {
    /// Bytes per second.
    pub delivery_rate: u64,
    /// Length of the interval measured.
    pub interval: Duration,
    /// Bytes delivered over the interval.
    pub delivered: u64,
    /// Total delivered at the start of the interval.
    pub prior_delivered: u64,
    /// Whether the sender was application-limited (the sample may underestimate bandwidth).
    pub is_app_limited: bool,
    /// RTT of the most recently sent acknowledged packet.
    pub rtt: Duration,
}

impl RateSample {
    /// Whether the sample carries a usable delivery rate (see the type's documentation).
    pub fn has_rate(&self) -> bool {
        !self.interval.is_zero()
    }
}

/// What the packets of the ACK frame being processed have contributed so far.
#[derive(Debug, Clone, Copy)]
struct Pending {
    prior_delivered: u64,
    sent_time: Instant,
    send_elapsed: Duration,
    ack_elapsed: Duration,
    is_app_limited: bool,
    rtt: Duration,
}

/// Per-connection delivery-rate state.
#[derive(Debug)]
pub struct DeliveryRate {
    /// Bytes acknowledged so far (including retransmissions of lost data).
    delivered: u64,
    /// When `delivered` last grew (or the flight restarted from idle).
    delivered_time: Instant,
    /// Send time of the newest acknowledged packet: the start of the current send interval.
    first_sent_time: Instant,
    /// While non-zero, packets sent are marked app-limited, until `delivered` exceeds it.
    app_limited_until: u64,
    /// Smallest per-packet RTT seen: samples over a shorter interval are discarded.
    min_rtt: Option<Duration>,
    /// The sample under construction for the current ACK frame.
    pending: Option<Pending>,
}

impl DeliveryRate {
    /// Starts counting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
            min_rtt: None,
            pending: None,
        }
    }

    /// A packet is about to be sent; `in_flight` is the bytes in flight before it.
    pub fn on_sent(&mut self, now: Instant, in_flight: u64) -> PacketRateState {
        if in_flight == 0 {
            // A new flight after idle: do not count the idle time as part of any interval.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        PacketRateState {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            is_app_limited: self.app_limited_until != 0,
            sent_time: now,
        }
    }

    /// A packet of `bytes` sent with state `p` was acknowledged.
    pub fn on_acked(&mut self, now: Instant, p: &PacketRateState, bytes: u64) {
        self.delivered = self.delivered.saturating_add(bytes);
        self.delivered_time = now;
        let rtt = now.saturating_duration_since(p.sent_time);
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        let newest = match &self.pending {
            None => true,
            Some(s) => {
                p.sent_time > s.sent_time
                    || (p.sent_time == s.sent_time && p.delivered > s.prior_delivered)
            }
        };
        if !newest {
            return;
        }
        self.pending = Some(Pending {
            prior_delivered: p.delivered,
            sent_time: p.sent_time,
            send_elapsed: p.sent_time.saturating_duration_since(p.first_sent_time),
            ack_elapsed: now.saturating_duration_since(p.delivered_time),
            is_app_limited: p.is_app_limited,
            rtt,
        });
        // The next send interval starts at this packet's send time.
        self.first_sent_time = p.sent_time;
    }

    /// After all packets of one ACK frame were passed to [`DeliveryRate::on_acked`]: the sample
    /// they produced, if any.
    pub fn take_sample(&mut self) -> Option<RateSample> {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            // Everything sent while app-limited has been delivered: the bubble has left the pipe.
            self.app_limited_until = 0;
        }
        let p = self.pending.take()?;
        let delivered = self.delivered.saturating_sub(p.prior_delivered);
        let interval = p.send_elapsed.max(p.ack_elapsed);
        let too_short = interval.is_zero() || self.min_rtt.is_some_and(|m| interval < m);
        let (interval, delivery_rate) = if too_short {
            (Duration::ZERO, 0)
        } else {
            (interval, rate(delivered, interval))
        };
        Some(RateSample {
            delivery_rate,
            interval,
            delivered,
            prior_delivered: p.prior_delivered,
            is_app_limited: p.is_app_limited,
            rtt: p.rtt,
        })
    }

    /// The sender has nothing more to send although the window would allow it.
    pub fn on_app_limited(&mut self, in_flight: u64) {
        // Mark until everything now in flight is delivered; never 0, which means "not limited".
        self.app_limited_until = self.delivered.saturating_add(in_flight).max(1);
    }

    /// Total bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether packets sent now are marked application-limited.
    pub fn is_app_limited(&self) -> bool {
        self.app_limited_until != 0
    }
}

/// `bytes / interval` in bytes per second, saturating; `interval` must be non-zero.
fn rate(bytes: u64, interval: Duration) -> u64 {
    let nanos = interval.as_nanos().max(1);
    let r = u128::from(bytes) * 1_000_000_000 / nanos;
    u64::try_from(r).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Sends one packet of `size` every `gap` and acknowledges each one `rtt` later, one ACK per
    /// packet, for `n` packets; returns the samples.
    fn steady_flow(n: u64, size: u64, gap: Duration, rtt: Duration) -> Vec<RateSample> {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        let mut in_flight = 0;
        let mut sent: Vec<(Instant, PacketRateState)> = Vec::new();
        let mut samples = Vec::new();
        let mut next_ack = 0usize;
        for i in 0..n {
            let now = t0 + gap * u32::try_from(i).unwrap_or(u32::MAX);
            // Deliver every ACK due by now.
            while let Some((t, st)) = sent.get(next_ack).copied() {
                if t + rtt > now {
                    break;
                }
                dr.on_acked(t + rtt, &st, size);
                in_flight -= size;
                samples.extend(dr.take_sample());
                next_ack += 1;
            }
            let st = dr.on_sent(now, in_flight);
            in_flight += size;
            sent.push((now, st));
        }
        samples
    }

    #[test]
    fn steady_flow_samples_equal_the_sending_rate() {
        // 1000 bytes per ms = 1 MB/s, 50 ms RTT.
        let samples = steady_flow(500, 1000, MS, 50 * MS);
        assert!(samples.len() > 400);
        // After the first round trip every sample measures the true rate exactly.
        for s in &samples[60..] {
            assert!(s.has_rate());
            assert_eq!(s.delivery_rate, 1_000_000, "{s:?}");
            assert_eq!(s.interval, 50 * MS);
            assert_eq!(s.rtt, 50 * MS);
            assert!(!s.is_app_limited);
        }
    }

    #[test]
    fn first_sample_covers_one_round_trip() {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        let a = dr.on_sent(t0, 0);
        let b = dr.on_sent(t0 + MS, 1000);
        dr.on_acked(t0 + 100 * MS, &a, 1000);
        dr.on_acked(t0 + 100 * MS, &b, 1000);
        let s = dr.take_sample().unwrap_or_else(|| panic!("no sample"));
        // Newest packet b: send_elapsed 1 ms, ack_elapsed 100 ms (since the flight started).
        assert_eq!(s.interval, 100 * MS);
        assert_eq!(s.delivered, 2000);
        assert_eq!(s.prior_delivered, 0);
        assert_eq!(s.delivery_rate, 20_000);
        assert_eq!(s.rtt, 99 * MS);
        assert_eq!(dr.delivered(), 2000);
        assert!(dr.take_sample().is_none());
    }

    #[test]
    fn ack_compression_does_not_inflate_the_rate() {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        // One 1000-byte packet every 10 ms (100 kB/s); ACKs normally come 100 ms after sending,
        // but those of packets 20..30 are held back and all arrive together at 400 ms.
        let mut sts = Vec::new();
        let mut in_flight = 0;
        let mut samples = Vec::new();
        for ms in 0..=400u32 {
            let now = t0 + MS * ms;
            let due: Vec<usize> = if ms == 400 {
                (20..30).collect()
            } else if ms % 10 == 0 && ms >= 100 && !(300..400).contains(&ms) {
                vec![usize::try_from(ms / 10 - 10).unwrap_or(0)]
            } else {
                vec![]
            };
            for &k in &due {
                let st: PacketRateState = sts[k];
                dr.on_acked(now, &st, 1000);
                in_flight -= 1000;
            }
            if !due.is_empty() {
                samples.push((ms, dr.take_sample().unwrap_or_else(|| panic!("no sample"))));
            }
            if ms % 10 == 0 && ms < 300 {
                sts.push(dr.on_sent(now, in_flight));
                in_flight += 1000;
            }
        }
        let (ms, compressed) = samples
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no samples"));
        assert_eq!(ms, 400);
        // Packet 29 was sent at 290 ms, right after packet 19's ACK: its send interval runs from
        // packet 19's send (190 ms), 100 ms; its ACK interval from 290 to 400 ms, 110 ms. The
        // 10 packets count over the longer one: no faster than they were sent.
        assert_eq!(compressed.interval, 110 * MS);
        assert_eq!(compressed.delivered, 10_000);
        assert_eq!(compressed.prior_delivered, 20_000);
        assert_eq!(compressed.delivery_rate, 90_909);
        for (_, s) in &samples[10..] {
            assert!(s.delivery_rate <= 100_000, "{s:?}");
        }
    }

    #[test]
    fn zero_interval_samples_carry_no_rate_but_keep_round_bookkeeping() {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        let a = dr.on_sent(t0, 0);
        dr.on_acked(t0 + 100 * MS, &a, 1000);
        assert!(dr.take_sample().is_some_and(|s| s.has_rate()));
        // A new flight acknowledged at the very instant it was sent (a clock that did not move).
        let b = dr.on_sent(t0 + 200 * MS, 0);
        dr.on_acked(t0 + 200 * MS, &b, 1000);
        let s = dr.take_sample().unwrap_or_else(|| panic!("no sample"));
        assert!(!s.has_rate());
        assert_eq!(s.delivery_rate, 0);
        assert_eq!(s.prior_delivered, 1000);
        assert_eq!(s.delivered, 1000);
    }

    #[test]
    fn app_limited_marks_until_the_flight_is_delivered() {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        let a = dr.on_sent(t0, 0);
        dr.on_app_limited(1000);
        assert!(dr.is_app_limited());
        let b = dr.on_sent(t0 + MS, 1000);
        assert!(!a.is_app_limited);
        assert!(b.is_app_limited);
        dr.on_acked(t0 + 100 * MS, &a, 1000);
        let s = dr.take_sample().unwrap_or_else(|| panic!("no sample"));
        assert!(!s.is_app_limited);
        // delivered (1000) is not yet beyond the mark (0 + 1000).
        assert!(dr.is_app_limited());
        dr.on_acked(t0 + 101 * MS, &b, 1000);
        let s = dr.take_sample().unwrap_or_else(|| panic!("no sample"));
        assert!(s.is_app_limited);
        assert!(!dr.is_app_limited());
    }

    #[test]
    fn older_packets_in_the_same_ack_do_not_define_the_sample() {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        let a = dr.on_sent(t0, 0);
        let b = dr.on_sent(t0 + 5 * MS, 1000);
        // Acknowledged out of order (b first, then a, as a reordered ACK range would be).
        dr.on_acked(t0 + 100 * MS, &b, 1000);
        dr.on_acked(t0 + 100 * MS, &a, 1000);
        let s = dr.take_sample().unwrap_or_else(|| panic!("no sample"));
        assert_eq!(s.rtt, 95 * MS);
        assert_eq!(s.delivered, 2000);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let t0 = Instant::now();
        let mut dr = DeliveryRate::new(t0);
        let a = dr.on_sent(t0, u64::MAX);
        dr.on_app_limited(u64::MAX);
        dr.on_acked(t0, &a, u64::MAX);
        dr.on_acked(t0, &a, u64::MAX);
        let s = dr.take_sample().unwrap_or_else(|| panic!("no sample"));
        assert!(!s.has_rate());
        // Time going backwards.
        let b = dr.on_sent(t0 + MS, 0);
        dr.on_acked(t0, &b, 1);
        let _ = dr.take_sample();
        assert_eq!(rate(u64::MAX, Duration::from_nanos(1)), u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_inputs_do_not_panic(ops in proptest::collection::vec((0..3u8, 0..1_000_000_000u64, proptest::num::u64::ANY), 0..200)) {
            let t0 = Instant::now();
            let mut dr = DeliveryRate::new(t0);
            let mut now = t0;
            let mut sent = Vec::new();
            for (op, dt, v) in ops {
                now += Duration::from_nanos(dt);
                match op {
                    0 => sent.push(dr.on_sent(now, v % 3 * 1000)),
                    1 => {
                        if let Some(p) = sent.pop() {
                            dr.on_acked(now, &p, v);
                        }
                        if let Some(s) = dr.take_sample() {
                            proptest::prop_assert!(s.has_rate() || s.delivery_rate == 0);
                        }
                    }
                    _ => dr.on_app_limited(v),
                }
            }
        }
    }
}
