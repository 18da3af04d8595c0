//! One direction of a simulated network path, with seeded impairments.
//!
//! A [`Link`] takes datagrams at a virtual time ([`Link::send`]) and hands them out once they
//! have "arrived" ([`Link::pop_due`]). Each datagram goes through this pipeline, in order:
//!
//! 1. **blackhole**: while an outage is active, everything is dropped (see [`Link::blackhole`]);
//!    so is any datagram larger than [`LinkConfig::max_datagram`] (a path MTU limit, as with
//!    the Don't Fragment bit set: no error comes back);
//! 2. **random loss** with probability [`LinkConfig::loss`];
//! 3. **burst loss** from a [Gilbert–Elliott](GilbertElliott) two-state chain (its state advances
//!    once per datagram offered, whether or not step 2 already dropped it, so the burst process
//!    keeps its own statistics);
//! 4. **duplication** with probability [`LinkConfig::duplicate`]: a second copy follows the first
//!    through the rest of the pipeline (it uses bottleneck capacity, like a real duplicate);
//! 5. **bottleneck**: a drop-tail queue in front of a serializer running at
//!    [`LinkConfig::rate_bps`]. A datagram starts serializing at `max(now, busy_until)` and leaves
//!    `size * 8 / rate` later. The queue occupancy is the number of bytes not yet serialized at
//!    `now`; a datagram that would push it above [`LinkConfig::queue_bytes`] is dropped (a
//!    datagram that finds the serializer idle is always accepted, so a limit below one datagram
//!    cannot block the link completely);
//! 6. **propagation**: [`LinkConfig::delay`] plus a uniform jitter in `[0, jitter]`. Jitter alone
//!    never reorders: an arrival is never earlier than the previous one (a real link is FIFO);
//! 7. **reordering**: with probability [`LinkConfig::reorder`] a datagram is held back for an
//!    extra [`LinkConfig::reorder_delay`], so datagrams sent after it can overtake it;
//! 8. **corruption** with probability [`LinkConfig::corrupt`]: one random bit of one random byte
//!    is flipped.
//!
//! Randomness comes from a ChaCha8 generator (`rand_chacha::ChaCha8Rng`, whose output is
//! specified and portable) seeded with [`SeedableRng::seed_from_u64`]. A probability of 0 draws
//! no random number at all, so an ideal link consumes no randomness. The same seed, config and
//! sequence of calls always give the same trace.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A datagram in flight between two simulated addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Source address (what the receiver sees as `from`).
    pub src: SocketAddr,
    /// Destination address (used to route it to a node).
    pub dst: SocketAddr,
    /// The UDP payload.
    pub data: Vec<u8>,
}

/// Parameters of a Gilbert–Elliott burst-loss model: a Markov chain with a good and a bad state,
/// each with its own loss probability. It produces correlated losses (bursts), as seen on Wi-Fi
/// and mobile links, which independent random loss does not.
///
/// The chain moves once per datagram. In the long run it spends a fraction
/// `p_good_to_bad / (p_good_to_bad + p_bad_to_good)` of datagrams in the bad state, and a bad
/// period lasts `1 / p_bad_to_good` datagrams on average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per datagram.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per datagram.
    pub p_bad_to_good: f64,
    /// Loss probability while in the bad state.
    pub loss_in_bad: f64,
    /// Loss probability while in the good state.
    pub loss_in_good: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: everything is lost in the bad state, nothing in the good one.
    pub fn new(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        Self {
            p_good_to_bad,
            p_bad_to_good,
            loss_in_bad: 1.0,
            loss_in_good: 0.0,
        }
    }

    /// A Gilbert model (total loss in the bad state) with the given long-run loss rate and mean
    /// burst length in datagrams. `mean_loss` is clamped to `[0, 0.99]`, `mean_burst` to ≥ 1.
    pub fn with_mean_loss(mean_loss: f64, mean_burst: f64) -> Self {
        let loss = if mean_loss.is_nan() {
            0.0
        } else {
            mean_loss.clamp(0.0, 0.99)
        };
        let burst = if mean_burst.is_nan() {
            1.0
        } else {
            mean_burst.max(1.0)
        };
        let p_bad_to_good = 1.0 / burst;
        // Stationary P(bad) = p_gb / (p_gb + p_bg) = loss  =>  p_gb = p_bg * loss / (1 - loss).
        let p_good_to_bad = p_bad_to_good * loss / (1.0 - loss);
        Self::new(p_good_to_bad, p_bad_to_good)
    }

    /// The long-run loss probability of this model.
    pub fn mean_loss(&self) -> f64 {
        let sum = self.p_good_to_bad + self.p_bad_to_good;
        if sum <= 0.0 {
            // The chain never moves; it stays in the good state it starts in.
            return self.loss_in_good;
        }
        let p_bad = self.p_good_to_bad / sum;
        p_bad * self.loss_in_bad + (1.0 - p_bad) * self.loss_in_good
    }
}

/// Impairments of one link direction. Build with [`LinkConfig::ideal`] and the `with_*` helpers.
///
/// Probabilities outside `[0, 1]` are clamped when used (NaN counts as 0).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per datagram (FIFO order is kept).
    pub jitter: Duration,
    /// Bottleneck rate in bits per second; `None` means infinitely fast (no queue).
    pub rate_bps: Option<u64>,
    /// Drop-tail queue limit in bytes not yet serialized; `None` means unbounded. Only applies
    /// with a rate.
    pub queue_bytes: Option<usize>,
    /// Independent random loss probability per datagram.
    pub loss: f64,
    /// Correlated burst loss, applied after random loss.
    pub burst: Option<GilbertElliott>,
    /// Probability that a datagram is held back by [`LinkConfig::reorder_delay`].
    pub reorder: f64,
    /// Extra delay of a held-back datagram.
    pub reorder_delay: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that one bit of a datagram is flipped.
    pub corrupt: f64,
    /// Largest UDP payload the path carries; larger datagrams are dropped silently (`None`: no
    /// limit). Models the path MTU.
    pub max_datagram: Option<usize>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::ideal()
    }
}

impl LinkConfig {
    /// No delay, infinite rate, no impairments: datagrams arrive at the instant they are sent.
    pub fn ideal() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
            queue_bytes: None,
            loss: 0.0,
            burst: None,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            corrupt: 0.0,
            max_datagram: None,
        }
    }

    /// Sets the one-way propagation delay.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the jitter bound.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the bottleneck rate in bits per second.
    pub fn with_rate_bps(mut self, bits_per_second: u64) -> Self {
        self.rate_bps = Some(bits_per_second);
        self
    }

    /// Sets the bottleneck rate in Mbit/s (10^6 bits per second).
    pub fn with_rate_mbps(self, mbit_per_second: f64) -> Self {
        // `as` saturates for out-of-range floats (NaN becomes 0), which is what we want here.
        self.with_rate_bps((mbit_per_second * 1e6) as u64)
    }

    /// Sets the drop-tail queue limit in bytes.
    pub fn with_queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = Some(bytes);
        self
    }

    /// Sets the random loss probability.
    pub fn with_loss(mut self, probability: f64) -> Self {
        self.loss = probability;
        self
    }

    /// Adds Gilbert–Elliott burst loss.
    pub fn with_burst_loss(mut self, model: GilbertElliott) -> Self {
        self.burst = Some(model);
        self
    }

    /// Holds back a fraction `probability` of datagrams by `delay`, so later ones overtake them.
    pub fn with_reorder(mut self, probability: f64, delay: Duration) -> Self {
        self.reorder = probability;
        self.reorder_delay = delay;
        self
    }

    /// Sets the duplication probability.
    pub fn with_duplicate(mut self, probability: f64) -> Self {
        self.duplicate = probability;
        self
    }

    /// Sets the bit-flip probability.
    pub fn with_corrupt(mut self, probability: f64) -> Self {
        self.corrupt = probability;
        self
    }

    /// Drops datagrams larger than `bytes` (a path MTU of `bytes` + 28 for IPv4).
    pub fn with_max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = Some(bytes);
        self
    }

    /// Bandwidth-delay product of this link alone for a round trip of `rtt`, in bytes (0 without
    /// a rate). Handy to size [`LinkConfig::queue_bytes`].
    pub fn bdp_bytes(&self, rtt: Duration) -> usize {
        let Some(rate) = self.rate_bps else { return 0 };
        let bytes = u128::from(rate) * rtt.as_nanos() / 8_000_000_000;
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// Counters of one link. Datagram counts include duplicates where noted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered by [`Link::send`].
    pub sent: u64,
    /// Bytes offered by [`Link::send`].
    pub bytes_sent: u64,
    /// Datagrams handed out by [`Link::pop_due`] (duplicates included).
    pub delivered: u64,
    /// Bytes handed out by [`Link::pop_due`].
    pub bytes_delivered: u64,
    /// Dropped by independent random loss.
    pub lost_random: u64,
    /// Dropped by the Gilbert–Elliott burst model.
    pub lost_burst: u64,
    /// Dropped because the bottleneck queue was full (copies counted separately).
    pub queue_drops: u64,
    /// Dropped by a blackhole, at entry or on arrival.
    pub blackholed: u64,
    /// Dropped for being larger than [`LinkConfig::max_datagram`].
    pub too_big: u64,
    /// Dropped because a test picked them ([`Link::drop_upcoming`]).
    pub scripted: u64,
    /// Largest datagram offered, in bytes.
    pub max_datagram_sent: u64,
    /// Extra copies created.
    pub duplicated: u64,
    /// Copies held back by the reorder delay.
    pub reordered: u64,
    /// Copies with a flipped bit.
    pub corrupted: u64,
    /// Largest queue occupancy seen, in bytes, counting the datagram just accepted.
    pub max_queue_bytes: u64,
    /// Copies that went through the rate-limited bottleneck.
    pub queued: u64,
    /// Sum of the time those copies waited before their serialization started.
    pub queue_delay_total: Duration,
    /// Longest such wait.
    pub queue_delay_max: Duration,
}

impl LinkStats {
    /// Average time a datagram waited in the bottleneck queue (zero when none went through).
    pub fn queue_delay_avg(&self) -> Duration {
        match u32::try_from(self.queued) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.queue_delay_total / n,
            // More than 4 billion datagrams: divide in nanoseconds instead.
            Err(_) => {
                let nanos = self.queue_delay_total.as_nanos() / u128::from(self.queued);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
        }
    }

    /// All datagrams dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.lost_random
            + self.lost_burst
            + self.queue_drops
            + self.blackholed
            + self.too_big
            + self.scripted
    }
}

/// A datagram scheduled for delivery. Ordered so that the heap's top is the earliest arrival,
/// ties broken by the order in which copies were scheduled.
#[derive(Debug)]
struct Scheduled {
    arrival: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap and we want the earliest first.
        (other.arrival, other.seq).cmp(&(self.arrival, self.seq))
    }
}

/// An outage window: datagrams sent or arriving in `[from, until)` are dropped.
#[derive(Debug, Clone, Copy)]
struct Outage {
    from: Instant,
    /// `None`: until cleared.
    until: Option<Instant>,
}

impl Outage {
    fn covers(&self, t: Instant) -> bool {
        t >= self.from && self.until.is_none_or(|until| t < until)
    }
}

/// One direction of a simulated path. See the [module docs](self) for the pipeline.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    rng: ChaCha8Rng,
    /// Current state of the Gilbert–Elliott chain.
    burst_bad: bool,
    /// When the serializer finishes the last accepted datagram.
    busy_until: Option<Instant>,
    /// Arrival of the last datagram that was not held back, to keep jitter FIFO.
    last_arrival: Option<Instant>,
    in_flight: BinaryHeap<Scheduled>,
    next_seq: u64,
    outage: Option<Outage>,
    /// Positions (in the count of datagrams offered, `stats.sent`) of datagrams to drop.
    scripted_drops: std::collections::BTreeSet<u64>,
    stats: LinkStats,
}

impl Link {
    /// A link with `config`, drawing randomness from `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            burst_bad: false,
            busy_until: None,
            last_arrival: None,
            in_flight: BinaryHeap::new(),
            next_seq: 0,
            outage: None,
            scripted_drops: std::collections::BTreeSet::new(),
            stats: LinkStats::default(),
        }
    }

    /// The current impairments.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the impairments for datagrams sent from now on (those in flight keep theirs).
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Zeroes the counters (e.g. after a warm-up phase).
    pub fn reset_stats(&mut self) {
        self.stats = LinkStats::default();
    }

    /// Datagrams scheduled and not yet popped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Drops everything sent or arriving from `now` until `until` (`None`: until
    /// [`Link::clear_blackhole`]). Replaces any earlier outage.
    pub fn blackhole(&mut self, now: Instant, until: Option<Instant>) {
        self.outage = Some(Outage { from: now, until });
    }

    /// Drops exactly the `n`-th datagram offered from now on (1: the next one), whatever the
    /// impairments say: lets a test lose one chosen packet, such as the second piece of a
    /// fragmented datagram.
    pub fn drop_upcoming(&mut self, n: u64) {
        self.scripted_drops.insert(self.stats.sent + n.max(1));
    }

    /// Ends an outage at once.
    pub fn clear_blackhole(&mut self) {
        self.outage = None;
    }

    /// Whether an outage covers `t`.
    pub fn is_blackholed(&self, t: Instant) -> bool {
        self.outage.is_some_and(|o| o.covers(t))
    }

    /// Bytes accepted by the bottleneck and not yet serialized at `now`.
    pub fn queue_bytes(&self, now: Instant) -> u64 {
        let (Some(rate), Some(busy)) = (self.config.rate_bps, self.busy_until) else {
            return 0;
        };
        let remaining = busy.saturating_duration_since(now).as_nanos();
        let bytes = remaining * u128::from(rate.max(1)) / 8_000_000_000;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }

    /// Offers a datagram at `now`; returns how many copies were scheduled for delivery (0 if it
    /// was dropped, 2 if it was duplicated and both copies got through the queue).
    pub fn send(&mut self, now: Instant, datagram: Datagram) -> usize {
        self.stats.sent += 1;
        self.stats.bytes_sent += datagram.data.len() as u64;
        let len = datagram.data.len();
        self.stats.max_datagram_sent = self.stats.max_datagram_sent.max(len as u64);
        if self.scripted_drops.remove(&self.stats.sent) {
            self.stats.scripted += 1;
            return 0;
        }
        if self.is_blackholed(now) {
            self.stats.blackholed += 1;
            return 0;
        }
        if self.config.max_datagram.is_some_and(|max| len > max) {
            self.stats.too_big += 1;
            return 0;
        }
        if self.chance(self.config.loss) {
            self.stats.lost_random += 1;
            // The burst chain still moves: its statistics must not depend on random loss.
            self.step_burst();
            return 0;
        }
        if self.burst_loss() {
            self.stats.lost_burst += 1;
            return 0;
        }
        let mut scheduled = 0;
        if self.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            scheduled += usize::from(self.forward(now, datagram.clone()));
        }
        scheduled + usize::from(self.forward(now, datagram))
    }

    /// When the earliest scheduled datagram arrives.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|s| s.arrival)
    }

    /// The earliest datagram that has arrived by `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        while self.in_flight.peek().is_some_and(|s| s.arrival <= now) {
            let scheduled = self.in_flight.pop()?;
            if self.is_blackholed(scheduled.arrival) {
                self.stats.blackholed += 1;
                continue;
            }
            self.stats.delivered += 1;
            self.stats.bytes_delivered += scheduled.datagram.data.len() as u64;
            return Some(scheduled.datagram);
        }
        None
    }

    /// Moves the burst chain one step and returns whether this datagram is lost by it.
    fn burst_loss(&mut self) -> bool {
        if self.config.burst.is_none() {
            return false;
        }
        self.step_burst();
        let Some(model) = self.config.burst else {
            return false;
        };
        let p = if self.burst_bad {
            model.loss_in_bad
        } else {
            model.loss_in_good
        };
        self.chance(p)
    }

    fn step_burst(&mut self) {
        let Some(model) = self.config.burst else {
            return;
        };
        let p = if self.burst_bad {
            model.p_bad_to_good
        } else {
            model.p_good_to_bad
        };
        if self.chance(p) {
            self.burst_bad = !self.burst_bad;
        }
    }

    /// Bottleneck, propagation, reordering and corruption for one copy. Returns whether it was
    /// scheduled (false: dropped by the queue).
    fn forward(&mut self, now: Instant, mut datagram: Datagram) -> bool {
        let Some(departure) = self.serialize(now, datagram.data.len()) else {
            self.stats.queue_drops += 1;
            return false;
        };
        let mut arrival = departure + self.config.delay + self.jitter();
        if let Some(last) = self.last_arrival {
            arrival = arrival.max(last);
        }
        if self.chance(self.config.reorder) {
            // Held back, and not recorded as the FIFO floor, so later datagrams can pass it.
            self.stats.reordered += 1;
            arrival += self.config.reorder_delay;
        } else {
            self.last_arrival = Some(arrival);
        }
        if self.chance(self.config.corrupt) && self.flip_bit(&mut datagram.data) {
            self.stats.corrupted += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push(Scheduled {
            arrival,
            seq,
            datagram,
        });
        true
    }

    /// Runs the drop-tail queue and serializer; returns when the datagram has left the
    /// bottleneck, or `None` if the queue is full.
    fn serialize(&mut self, now: Instant, size: usize) -> Option<Instant> {
        let Some(rate) = self.config.rate_bps else {
            return Some(now);
        };
        let backlog = self.queue_bytes(now);
        let size = size as u64;
        if let Some(limit) = self.config.queue_bytes
            && backlog > 0
            && backlog.saturating_add(size) > limit as u64
        {
            return None;
        }
        let start = self.busy_until.map_or(now, |busy| busy.max(now));
        let wait = start - now;
        let bits = u128::from(size) * 8 * 1_000_000_000;
        let rate = u128::from(rate.max(1));
        let nanos = bits.div_ceil(rate);
        let departure = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.busy_until = Some(departure);
        let stats = &mut self.stats;
        stats.queued += 1;
        stats.queue_delay_total += wait;
        stats.queue_delay_max = stats.queue_delay_max.max(wait);
        stats.max_queue_bytes = stats.max_queue_bytes.max(backlog.saturating_add(size));
        Some(departure)
    }

    fn jitter(&mut self) -> Duration {
        let max = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.random_range(0..=max))
    }

    /// Flips one random bit; false if there is nothing to flip.
    fn flip_bit(&mut self, data: &mut [u8]) -> bool {
        if data.is_empty() {
            return false;
        }
        let index = self.rng.random_range(0..data.len());
        let bit = self.rng.random_range(0..8u32);
        match data.get_mut(index) {
            Some(byte) => {
                *byte ^= 1 << bit;
                true
            }
            None => false,
        }
    }

    /// True with probability `p`; draws no randomness when `p` is 0 (or NaN) or ≥ 1.
    fn chance(&mut self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.rng.random::<f64>() < p
        }
    }
}

#[cfg(test)]
mod tests;
