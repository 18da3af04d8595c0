//! The per-direction impairment pipeline: pure logic, explicit time, no I/O.
//!
//! A packet entering the pipeline goes through, in order:
//! 1. random loss (Bernoulli) and Gilbert–Elliott burst loss, like netem's loss at enqueue;
//! 2. the bottleneck: a serialiser at `rate_bps` fed by a drop-tail queue limited in bytes or
//!    packets (the queue holds every packet not yet fully serialised);
//! 3. propagation delay plus jitter (jitter never reorders: a packet is never released before
//!    the previous in-order one);
//! 4. optional reordering: with a probability, a packet gets extra delay and later packets may
//!    overtake it.
//!
//! Released packets come out of a time-ordered queue through [`Pipeline::pop_due`]. The caller
//! owns the clock, so the unit tests drive it with exact instants.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::rng::Rng;

/// Gilbert–Elliott two-state burst-loss model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GilbertElliott {
    /// Probability, per packet, of moving from the good to the bad state.
    pub p_good_to_bad: f64,
    /// Probability, per packet, of moving from the bad back to the good state.
    pub p_bad_to_good: f64,
    /// Loss probability while in the good state.
    pub loss_good: f64,
    /// Loss probability while in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Long-run average loss rate of the model (stationary distribution).
    pub fn mean_loss(&self) -> f64 {
        let denom = self.p_good_to_bad + self.p_bad_to_good;
        if denom <= 0.0 {
            return self.loss_good;
        }
        let bad = self.p_good_to_bad / denom;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// How the bottleneck queue is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueLimit {
    /// At most this many bytes waiting (including the packet being serialised).
    Bytes(u64),
    /// At most this many packets waiting.
    Packets(u64),
}

/// Reordering: a packet picked with `probability` is held back by `extra_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reorder {
    /// Chance that one packet is held back.
    pub probability: f64,
    /// How long it is held back beyond its normal release time.
    pub extra_delay: Duration,
}

/// Impairments of one direction of the link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImpairConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Uniform jitter in `[-jitter, +jitter]`, order-preserving.
    pub jitter: Duration,
    /// Independent random loss probability in `[0, 1]`.
    pub loss: f64,
    /// Optional burst-loss model applied on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Bottleneck rate in bits per second; `None` means unlimited.
    pub rate_bps: Option<u64>,
    /// Bottleneck queue bound (ignored without a rate).
    pub queue: QueueLimit,
    /// Optional reordering.
    pub reorder: Option<Reorder>,
}

impl Default for ImpairConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: None,
            rate_bps: None,
            queue: QueueLimit::Packets(1000),
            reorder: None,
        }
    }
}

/// Packet and byte counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets that entered the pipeline.
    pub packets_in: u64,
    /// Bytes that entered the pipeline (IP packet sizes).
    pub bytes_in: u64,
    /// Packets released to the other side.
    pub packets_delivered: u64,
    /// Bytes released to the other side.
    pub bytes_delivered: u64,
    /// Packets dropped by random or burst loss.
    pub packets_lost: u64,
    /// Bytes dropped by random or burst loss.
    pub bytes_lost: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub packets_queue_dropped: u64,
    /// Bytes dropped because the bottleneck queue was full.
    pub bytes_queue_dropped: u64,
    /// Packets released after a packet that entered later.
    pub packets_reordered: u64,
}

impl Counters {
    /// Field-wise `self - earlier`, saturating, to measure one interval.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            packets_delivered: self
                .packets_delivered
                .saturating_sub(earlier.packets_delivered),
            bytes_delivered: self.bytes_delivered.saturating_sub(earlier.bytes_delivered),
            packets_lost: self.packets_lost.saturating_sub(earlier.packets_lost),
            bytes_lost: self.bytes_lost.saturating_sub(earlier.bytes_lost),
            packets_queue_dropped: self
                .packets_queue_dropped
                .saturating_sub(earlier.packets_queue_dropped),
            bytes_queue_dropped: self
                .bytes_queue_dropped
                .saturating_sub(earlier.bytes_queue_dropped),
            packets_reordered: self
                .packets_reordered
                .saturating_sub(earlier.packets_reordered),
        }
    }
}

/// What happened to a packet pushed into the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Scheduled for release at the given instant.
    Scheduled(Instant),
    /// Dropped by random or burst loss.
    Lost,
    /// Dropped because the bottleneck queue was full.
    QueueDropped,
}

/// A packet waiting in the release queue, ordered by release time then arrival order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    release: Instant,
    seq: u64,
    data: Vec<u8>,
}

/// One direction's impairment pipeline.
#[derive(Debug)]
pub struct Pipeline {
    cfg: ImpairConfig,
    rng: Rng,
    ge_bad: bool,
    /// Departure instant and size of every packet still in the bottleneck.
    bottleneck: VecDeque<(Instant, u64)>,
    bottleneck_bytes: u64,
    busy_until: Option<Instant>,
    last_in_order_release: Option<Instant>,
    release: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
    max_released_seq: Option<u64>,
    counters: Counters,
}

impl Pipeline {
    /// A pipeline with the given impairments and RNG seed.
    pub fn new(cfg: ImpairConfig, seed: u64) -> Self {
        Self {
            cfg,
            rng: Rng::new(seed),
            ge_bad: false,
            bottleneck: VecDeque::new(),
            bottleneck_bytes: 0,
            busy_until: None,
            last_in_order_release: None,
            release: BinaryHeap::new(),
            next_seq: 0,
            max_released_seq: None,
            counters: Counters::default(),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Offers one packet at `now`.
    pub fn push(&mut self, now: Instant, packet: Vec<u8>) -> Verdict {
        let size = packet.len() as u64;
        self.counters.packets_in += 1;
        self.counters.bytes_in += size;
        if self.loses_packet() {
            self.counters.packets_lost += 1;
            self.counters.bytes_lost += size;
            return Verdict::Lost;
        }
        let Some(departure) = self.enqueue_bottleneck(now, size) else {
            self.counters.packets_queue_dropped += 1;
            self.counters.bytes_queue_dropped += size;
            return Verdict::QueueDropped;
        };
        let release = self.release_time(departure);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.release.push(Reverse(Pending {
            release,
            seq,
            data: packet,
        }));
        Verdict::Scheduled(release)
    }

    /// Takes the next packet whose release time is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let due = self.release.peek().is_some_and(|p| p.0.release <= now);
        if !due {
            return None;
        }
        let Reverse(p) = self.release.pop()?;
        match self.max_released_seq {
            Some(max) if p.seq < max => self.counters.packets_reordered += 1,
            _ => self.max_released_seq = Some(p.seq),
        }
        self.counters.packets_delivered += 1;
        self.counters.bytes_delivered += p.data.len() as u64;
        Some(p.data)
    }

    /// When the next packet is due, if any is scheduled.
    pub fn next_release(&self) -> Option<Instant> {
        self.release.peek().map(|p| p.0.release)
    }

    /// Random loss, then one Gilbert–Elliott step (state transition, then loss in that state).
    fn loses_packet(&mut self) -> bool {
        let random = self.rng.chance(self.cfg.loss);
        let Some(ge) = self.cfg.burst else {
            return random;
        };
        let flip = if self.ge_bad {
            ge.p_bad_to_good
        } else {
            ge.p_good_to_bad
        };
        if self.rng.chance(flip) {
            self.ge_bad = !self.ge_bad;
        }
        let p = if self.ge_bad {
            ge.loss_bad
        } else {
            ge.loss_good
        };
        let burst = self.rng.chance(p);
        random || burst
    }

    /// Puts a packet into the bottleneck; returns its departure instant, or `None` if the
    /// drop-tail queue is full.
    fn enqueue_bottleneck(&mut self, now: Instant, size: u64) -> Option<Instant> {
        let Some(rate) = self.cfg.rate_bps.filter(|r| *r > 0) else {
            return Some(now);
        };
        while let Some(&(depart, bytes)) = self.bottleneck.front() {
            if depart > now {
                break;
            }
            self.bottleneck.pop_front();
            self.bottleneck_bytes -= bytes;
        }
        let full = match self.cfg.queue {
            QueueLimit::Bytes(limit) => self.bottleneck_bytes + size > limit,
            QueueLimit::Packets(limit) => self.bottleneck.len() as u64 + 1 > limit,
        };
        if full {
            return None;
        }
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let departure = start + serialisation_time(size, rate);
        self.busy_until = Some(departure);
        self.bottleneck.push_back((departure, size));
        self.bottleneck_bytes += size;
        Some(departure)
    }

    /// Release instant after propagation delay, jitter and reordering.
    fn release_time(&mut self, departure: Instant) -> Instant {
        let mut release = departure + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let offset = self.cfg.jitter.as_secs_f64() * self.rng.symmetric();
            release = if offset >= 0.0 {
                release + Duration::from_secs_f64(offset)
            } else {
                release
                    .checked_sub(Duration::from_secs_f64(-offset))
                    .map_or(departure, |r| r.max(departure))
            };
        }
        if let Some(last) = self.last_in_order_release {
            release = release.max(last);
        }
        if let Some(r) = self.cfg.reorder
            && self.rng.chance(r.probability)
        {
            return release + r.extra_delay;
        }
        self.last_in_order_release = Some(release);
        release
    }
}

/// Time to put `bytes` on a wire of `rate_bps` bits per second.
pub fn serialisation_time(bytes: u64, rate_bps: u64) -> Duration {
    let nanos = u128::from(bytes) * 8 * 1_000_000_000 / u128::from(rate_bps.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(p: &mut Pipeline, now: Instant) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| p.pop_due(now)).collect()
    }

    #[test]
    fn pure_delay_releases_exactly_after_delay() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(
            ImpairConfig {
                delay: ms(50),
                ..Default::default()
            },
            1,
        );
        assert_eq!(p.push(t0, vec![1; 100]), Verdict::Scheduled(t0 + ms(50)));
        assert_eq!(p.pop_due(t0 + ms(49)), None);
        assert_eq!(p.next_release(), Some(t0 + ms(50)));
        assert_eq!(p.pop_due(t0 + ms(50)), Some(vec![1; 100]));
        let c = p.counters();
        assert_eq!((c.packets_in, c.bytes_in), (1, 100));
        assert_eq!((c.packets_delivered, c.bytes_delivered), (1, 100));
    }

    #[test]
    fn rate_limit_serialises_back_to_back() {
        let t0 = Instant::now();
        // 8 Mbit/s: 1000 bytes take exactly 1 ms.
        let mut p = Pipeline::new(
            ImpairConfig {
                rate_bps: Some(8_000_000),
                queue: QueueLimit::Packets(100),
                ..Default::default()
            },
            1,
        );
        for i in 0..3u64 {
            assert_eq!(
                p.push(t0, vec![0; 1000]),
                Verdict::Scheduled(t0 + ms(i + 1))
            );
        }
        // After the link went idle, a new packet starts at its arrival time.
        assert_eq!(
            p.push(t0 + ms(10), vec![0; 1000]),
            Verdict::Scheduled(t0 + ms(11))
        );
    }

    #[test]
    fn drop_tail_by_packets_and_bytes() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(
            ImpairConfig {
                rate_bps: Some(8_000_000),
                queue: QueueLimit::Packets(2),
                ..Default::default()
            },
            1,
        );
        assert!(matches!(p.push(t0, vec![0; 1000]), Verdict::Scheduled(_)));
        assert!(matches!(p.push(t0, vec![0; 1000]), Verdict::Scheduled(_)));
        assert_eq!(p.push(t0, vec![0; 1000]), Verdict::QueueDropped);
        // The first packet has left the queue 1 ms later: room for one more.
        assert!(matches!(
            p.push(t0 + ms(1), vec![0; 1000]),
            Verdict::Scheduled(_)
        ));
        assert_eq!(p.counters().packets_queue_dropped, 1);
        assert_eq!(p.counters().bytes_queue_dropped, 1000);

        let mut b = Pipeline::new(
            ImpairConfig {
                rate_bps: Some(8_000_000),
                queue: QueueLimit::Bytes(2500),
                ..Default::default()
            },
            1,
        );
        assert!(matches!(b.push(t0, vec![0; 1000]), Verdict::Scheduled(_)));
        assert!(matches!(b.push(t0, vec![0; 1000]), Verdict::Scheduled(_)));
        assert_eq!(b.push(t0, vec![0; 1000]), Verdict::QueueDropped);
        assert!(matches!(b.push(t0, vec![0; 500]), Verdict::Scheduled(_)));
    }

    #[test]
    fn random_loss_rate_matches_and_is_seeded() {
        let t0 = Instant::now();
        let cfg = ImpairConfig {
            loss: 0.05,
            ..Default::default()
        };
        let run = |seed| {
            let mut p = Pipeline::new(cfg.clone(), seed);
            let v: Vec<bool> = (0..20_000)
                .map(|_| p.push(t0, vec![0; 10]) == Verdict::Lost)
                .collect();
            (v, *p.counters())
        };
        let (a, ca) = run(9);
        let (b, _) = run(9);
        assert_eq!(a, b, "same seed, same losses");
        assert!(
            (800..1200).contains(&ca.packets_lost),
            "{}",
            ca.packets_lost
        );
        assert_eq!(ca.bytes_lost, ca.packets_lost * 10);
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        let t0 = Instant::now();
        let ge = GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.2,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let mut p = Pipeline::new(
            ImpairConfig {
                burst: Some(ge),
                ..Default::default()
            },
            3,
        );
        let lost: Vec<bool> = (0..100_000)
            .map(|_| p.push(t0, vec![0; 1]) == Verdict::Lost)
            .collect();
        let total = lost.iter().filter(|l| **l).count() as f64;
        let mean = total / lost.len() as f64;
        assert!((mean - ge.mean_loss()).abs() < 0.01, "mean {mean}");
        // Mean burst length should be about 1 / p_bad_to_good = 5 packets.
        let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count() as f64;
        let mean_burst = total / bursts;
        assert!((3.5..6.5).contains(&mean_burst), "mean burst {mean_burst}");
    }

    #[test]
    fn jitter_stays_in_bounds_and_keeps_order() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(
            ImpairConfig {
                delay: ms(20),
                jitter: ms(5),
                ..Default::default()
            },
            5,
        );
        for i in 0..200u8 {
            let at = t0 + Duration::from_micros(u64::from(i) * 100);
            let Verdict::Scheduled(r) = p.push(at, vec![i]) else {
                panic!("no loss configured");
            };
            assert!(r >= at + ms(15) - Duration::from_micros(1));
        }
        let out = drain(&mut p, t0 + ms(100));
        let expect: Vec<Vec<u8>> = (0..200u8).map(|i| vec![i]).collect();
        assert_eq!(out, expect);
        assert_eq!(p.counters().packets_reordered, 0);
    }

    #[test]
    fn reordering_is_counted_on_release() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(
            ImpairConfig {
                delay: ms(10),
                reorder: Some(Reorder {
                    probability: 1.0,
                    extra_delay: ms(5),
                }),
                ..Default::default()
            },
            1,
        );
        p.push(t0, vec![0]);
        p.cfg.reorder = None;
        p.push(t0 + ms(1), vec![1]);
        let out = drain(&mut p, t0 + ms(100));
        assert_eq!(out, vec![vec![1], vec![0]]);
        assert_eq!(p.counters().packets_reordered, 1);
        assert_eq!(p.counters().packets_delivered, 2);
    }

    #[test]
    fn counters_since_subtracts() {
        let a = Counters {
            packets_in: 10,
            bytes_in: 1000,
            ..Default::default()
        };
        let b = Counters {
            packets_in: 4,
            bytes_in: 400,
            ..Default::default()
        };
        let d = a.since(&b);
        assert_eq!((d.packets_in, d.bytes_in), (6, 600));
        assert_eq!(b.since(&a).packets_in, 0);
    }

    #[test]
    fn serialisation_time_exact() {
        assert_eq!(
            serialisation_time(1500, 100_000_000),
            Duration::from_micros(120)
        );
        assert_eq!(serialisation_time(1000, 8_000_000), ms(1));
    }
}
