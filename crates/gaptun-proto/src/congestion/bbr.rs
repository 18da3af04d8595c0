//! A BBR-style model-based controller (BBR v1: draft-cardwell-iccrg-bbr-congestion-control-00
//! and Cardwell et al., "BBR: Congestion-Based Congestion Control", 2016).
//!
//! The controller keeps a model of the path, the bottleneck bandwidth (windowed maximum of the
//! delivery rate over 10 round trips) and the round-trip propagation delay (windowed minimum RTT
//! over 10 s), and sends at `pacing_gain × bandwidth` with at most
//! `cwnd_gain × bandwidth × min_rtt` (plus a few send quanta) in flight. Loss does not enter the
//! model: on a lossy path random loss says nothing about the bottleneck, and a loss-based
//! reaction is exactly what makes TCP crawl on such paths.
//!
//! States:
//! - Startup: pacing gain 2/ln 2 (doubles the delivery rate each round) until the bandwidth
//!   estimate grew less than 25 % in three rounds in a row (the pipe is full).
//! - Drain: pacing gain ln 2/2 until in flight is down to one BDP (empties the queue Startup built).
//! - ProbeBW: cycles the pacing gain through 1.25, 0.75, 1, 1, 1, 1, 1, 1, one phase per min RTT,
//!   to probe for more bandwidth and then drain what the probe queued.
//! - ProbeRTT: when the min RTT was not refreshed for 10 s, cap the window at 4 packets for
//!   max(200 ms, one round) so the queue drains and the true propagation delay shows.
//!
//! Differences from the draft, for simplicity: no packet-conservation loss recovery, no
//! restart-from-idle pacing adjustment, and ProbeRTT does not mark the connection app-limited
//! (the low-rate samples it produces cannot raise a maximum filter anyway).

use std::time::{Duration, Instant};

use super::minmax::WindowedMax;
use super::{AckSummary, Controller, RateSample};
use crate::rtt::RttEstimator;

/// Startup's pacing and window gain, 2/ln 2: the smallest gain that doubles the sending rate
/// each round trip.
pub const HIGH_GAIN: f64 = 2.885;
/// Drain's pacing gain: the inverse of [`HIGH_GAIN`].
pub const DRAIN_GAIN: f64 = 1.0 / HIGH_GAIN;
/// Window gain outside Startup and ProbeRTT: room for delayed and aggregated ACKs.
pub const CWND_GAIN: f64 = 2.0;
/// ProbeBW's pacing gains, one phase per min RTT.
pub const PACING_GAIN_CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Length of the bandwidth filter, in round trips.
pub const BTL_BW_FILTER_ROUNDS: u64 = 10;
/// Length of the min-RTT filter; ProbeRTT runs when it expires without a new minimum.
pub const MIN_RTT_FILTER: Duration = Duration::from_secs(10);
/// Least time spent at the minimal window in ProbeRTT.
pub const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// Smallest window, in packets (keeps ACK clocking going).
pub const MIN_PIPE_CWND_PACKETS: u64 = 4;
/// Window before the first bandwidth estimate, in packets.
pub const INITIAL_CWND_PACKETS: u64 = 32;
/// Growth per round below which the pipe counts as full.
pub const FULL_BW_GROWTH: f64 = 1.25;
/// Rounds without that growth after which Startup ends.
pub const FULL_BW_ROUNDS: u32 = 3;

/// Where the state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BbrMode {
    /// Exponential search for the bottleneck bandwidth.
    Startup,
    /// Emptying the queue Startup created.
    Drain,
    /// Steady state: cruising at the estimated bandwidth, probing periodically.
    ProbeBw,
    /// Briefly minimal window to re-measure the propagation delay.
    ProbeRtt,
}

/// The `bbr` controller.
#[derive(Debug)]
pub struct Bbr {
    mtu: u64,
    mode: BbrMode,
    /// Bottleneck bandwidth in bytes per second, over round trips.
    btl_bw: WindowedMax,
    /// Propagation delay estimate.
    min_rtt: Option<Duration>,
    /// When `min_rtt` was last set.
    min_rtt_stamp: Instant,
    /// Total delivered, as of the latest rate sample.
    delivered: u64,
    /// Round trips counted so far.
    round_count: u64,
    /// A round ends when a packet sent after this much was delivered is acknowledged.
    next_round_delivered: u64,
    /// Whether the current ACK started a new round.
    round_start: bool,
    /// Bandwidth at the last 25 % growth in Startup.
    full_bw: u64,
    /// Rounds since that growth.
    full_bw_count: u32,
    /// Whether Startup found the bottleneck.
    filled_pipe: bool,
    pacing_gain: f64,
    cwnd_gain: f64,
    /// Current ProbeBW phase and when it began.
    cycle_index: usize,
    cycle_stamp: Instant,
    /// When ProbeRTT may end (set once in flight reached the minimal window).
    probe_rtt_done: Option<Instant>,
    /// Whether a full round passed in ProbeRTT.
    probe_rtt_round_done: bool,
    /// Window to restore after ProbeRTT.
    prior_cwnd: u64,
    cwnd: u64,
    /// Current pacing rate; 0 until the first bandwidth sample.
    pacing_rate: u64,
    /// Whether packets were declared lost since the last ACK (ends a probing phase early).
    lost_since_ack: bool,
    /// State of the pseudo-random choice of the first ProbeBW phase (desynchronises flows).
    rng: u64,
}

impl Bbr {
    /// Creates it.
    pub fn new(now: Instant, mtu: u64) -> Self {
        let mtu = mtu.max(1);
        Self {
            mtu,
            mode: BbrMode::Startup,
            btl_bw: WindowedMax::new(BTL_BW_FILTER_ROUNDS),
            min_rtt: None,
            min_rtt_stamp: now,
            delivered: 0,
            round_count: 0,
            next_round_delivered: 0,
            round_start: false,
            full_bw: 0,
            full_bw_count: 0,
            filled_pipe: false,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            cycle_index: 0,
            cycle_stamp: now,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            prior_cwnd: 0,
            cwnd: INITIAL_CWND_PACKETS.saturating_mul(mtu),
            pacing_rate: 0,
            lost_since_ack: false,
            rng: 0x9e37_79b9_7f4a_7c15 ^ mtu,
        }
    }

    /// Current state.
    pub fn mode(&self) -> BbrMode {
        self.mode
    }

    /// Estimated bottleneck bandwidth in bytes per second (0 before the first sample).
    pub fn bandwidth(&self) -> u64 {
        self.btl_bw.get()
    }

    /// Estimated propagation delay.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Whether Startup has ended.
    pub fn filled_pipe(&self) -> bool {
        self.filled_pipe
    }

    fn initial_cwnd(&self) -> u64 {
        INITIAL_CWND_PACKETS.saturating_mul(self.mtu)
    }

    fn min_pipe_cwnd(&self) -> u64 {
        MIN_PIPE_CWND_PACKETS.saturating_mul(self.mtu)
    }

    /// Estimated bandwidth-delay product, if both halves of the model exist.
    fn bdp(&self) -> Option<u64> {
        let bw = self.btl_bw.get();
        let rtt = self.min_rtt?;
        if bw == 0 {
            return None;
        }
        let bdp = u128::from(bw) * rtt.as_nanos() / 1_000_000_000;
        Some(u64::try_from(bdp).unwrap_or(u64::MAX))
    }

    /// Bytes sent as one burst at the current pacing rate (the draft's send quantum).
    fn send_quantum(&self) -> u64 {
        let rate = self.pacing_rate;
        if rate < 150_000 {
            self.mtu
        } else if rate < 3_000_000 {
            self.mtu.saturating_mul(2)
        } else {
            (rate / 1000).min(64 * 1024).max(self.mtu)
        }
    }

    /// In-flight target for `gain`: `gain × BDP + 3 quanta` (the initial window without a model).
    fn inflight(&self, gain: f64) -> u64 {
        match self.bdp() {
            Some(bdp) => scale(bdp, gain).saturating_add(self.send_quantum().saturating_mul(3)),
            None => self.initial_cwnd(),
        }
    }

    /// Pacing rate before there is a bandwidth estimate: the initial window per RTT, with gain.
    fn initial_pacing_rate(&self, rtt: &RttEstimator) -> u64 {
        let srtt = rtt.get().max(Duration::from_millis(1));
        let per_sec = u128::from(self.initial_cwnd()) * 1_000_000_000 / srtt.as_nanos();
        scale(u64::try_from(per_sec).unwrap_or(u64::MAX), self.pacing_gain)
    }

    fn update_round(&mut self, sample: &RateSample) {
        self.delivered = sample.prior_delivered.saturating_add(sample.delivered);
        self.round_start = false;
        if sample.prior_delivered >= self.next_round_delivered {
            self.next_round_delivered = self.delivered;
            self.round_count = self.round_count.saturating_add(1);
            self.round_start = true;
        }
    }

    fn update_btl_bw(&mut self, sample: &RateSample) {
        if !sample.has_rate() {
            return;
        }
        // App-limited samples underestimate the bottleneck unless they beat the estimate.
        if sample.delivery_rate >= self.btl_bw.get() || !sample.is_app_limited {
            self.btl_bw.update(self.round_count, sample.delivery_rate);
        }
    }

    fn check_cycle_phase(&mut self, now: Instant, prior_in_flight: u64) {
        if self.mode == BbrMode::ProbeBw && self.is_next_cycle_phase(now, prior_in_flight) {
            self.advance_cycle_phase(now);
        }
    }

    fn is_next_cycle_phase(&self, now: Instant, prior_in_flight: u64) -> bool {
        let min_rtt = self.min_rtt.unwrap_or(Duration::ZERO);
        let full_length = now.saturating_duration_since(self.cycle_stamp) > min_rtt;
        if self.pacing_gain > 1.0 {
            // Probe until a min RTT passed and the extra data is in flight (or losses say the
            // probe found the limit).
            full_length
                && (self.lost_since_ack || prior_in_flight >= self.inflight(self.pacing_gain))
        } else if self.pacing_gain < 1.0 {
            // Drain phase: end early once the probe's queue is gone.
            full_length || prior_in_flight <= self.inflight(1.0)
        } else {
            full_length
        }
    }

    fn advance_cycle_phase(&mut self, now: Instant) {
        self.cycle_stamp = now;
        self.cycle_index = (self.cycle_index + 1) % PACING_GAIN_CYCLE.len();
        self.pacing_gain = PACING_GAIN_CYCLE
            .get(self.cycle_index)
            .copied()
            .unwrap_or(1.0);
    }

    fn check_full_pipe(&mut self, sample: &RateSample) {
        if self.filled_pipe || !self.round_start || sample.is_app_limited {
            return;
        }
        let bw = self.btl_bw.get();
        if bw >= scale(self.full_bw, FULL_BW_GROWTH) {
            self.full_bw = bw;
            self.full_bw_count = 0;
            return;
        }
        self.full_bw_count += 1;
        if self.full_bw_count >= FULL_BW_ROUNDS {
            self.filled_pipe = true;
        }
    }

    fn check_drain(&mut self, now: Instant, in_flight: u64) {
        if self.mode == BbrMode::Startup && self.filled_pipe {
            self.mode = BbrMode::Drain;
            self.pacing_gain = DRAIN_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
        if self.mode == BbrMode::Drain && in_flight <= self.inflight(1.0) {
            self.enter_probe_bw(now);
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = BbrMode::ProbeBw;
        self.pacing_gain = 1.0;
        self.cwnd_gain = CWND_GAIN;
        // Start in a random phase other than the draining one (index 1): flows that enter
        // ProbeBW together then probe at different times.
        let len = PACING_GAIN_CYCLE.len();
        let offset = usize::try_from(self.next_random() % (len as u64 - 1)).unwrap_or(0);
        self.cycle_index = len - 1 - offset;
        self.advance_cycle_phase(now);
    }

    /// splitmix64 over an internal counter mixed with what was delivered: deterministic, but
    /// different for flows that saw different traffic.
    fn next_random(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_add(0x9e37_79b9_7f4a_7c15 ^ self.delivered);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Updates the min-RTT filter; returns whether it had expired before this sample.
    fn update_min_rtt(&mut self, now: Instant, sample: Option<&RateSample>) -> bool {
        let expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_FILTER;
        if let Some(s) = sample
            && (expired || self.min_rtt.is_none_or(|m| s.rtt <= m))
        {
            self.min_rtt = Some(s.rtt);
            self.min_rtt_stamp = now;
        }
        expired
    }

    fn check_probe_rtt(&mut self, now: Instant, in_flight: u64, min_rtt_expired: bool) {
        if self.mode != BbrMode::ProbeRtt && min_rtt_expired {
            self.mode = BbrMode::ProbeRtt;
            self.pacing_gain = 1.0;
            self.cwnd_gain = 1.0;
            self.prior_cwnd = self.cwnd;
            self.probe_rtt_done = None;
        }
        if self.mode == BbrMode::ProbeRtt {
            self.handle_probe_rtt(now, in_flight);
        }
    }

    fn handle_probe_rtt(&mut self, now: Instant, in_flight: u64) {
        match self.probe_rtt_done {
            None => {
                if in_flight <= self.min_pipe_cwnd() {
                    self.probe_rtt_done = Some(now + PROBE_RTT_DURATION);
                    self.probe_rtt_round_done = false;
                    self.next_round_delivered = self.delivered;
                }
            }
            Some(done) => {
                if self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done && now > done {
                    self.min_rtt_stamp = now;
                    self.cwnd = self.cwnd.max(self.prior_cwnd);
                    self.exit_probe_rtt(now);
                }
            }
        }
    }

    fn exit_probe_rtt(&mut self, now: Instant) {
        if self.filled_pipe {
            self.enter_probe_bw(now);
        } else {
            self.mode = BbrMode::Startup;
            self.pacing_gain = HIGH_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
    }

    fn update_pacing_rate(&mut self, rtt: &RttEstimator) {
        let bw = self.btl_bw.get();
        if bw == 0 {
            return;
        }
        if self.pacing_rate == 0 {
            self.pacing_rate = self.initial_pacing_rate(rtt);
        }
        let rate = scale(bw, self.pacing_gain);
        // During Startup never slow down below the initial rate on the first small samples.
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    fn update_cwnd(&mut self, acked: u64) {
        let target = self.inflight(self.cwnd_gain);
        if self.filled_pipe {
            self.cwnd = self.cwnd.saturating_add(acked).min(target);
        } else if self.cwnd < target || self.delivered < self.initial_cwnd() {
            self.cwnd = self.cwnd.saturating_add(acked);
        }
        self.cwnd = self.cwnd.max(self.min_pipe_cwnd());
        if self.mode == BbrMode::ProbeRtt {
            self.cwnd = self.cwnd.min(self.min_pipe_cwnd());
        }
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    fn on_ack(&mut self, now: Instant, ack: &AckSummary, rtt: &RttEstimator, in_flight: u64) {
        let prior_in_flight = in_flight.saturating_add(ack.acked_bytes);
        self.round_start = false;
        if let Some(s) = &ack.sample {
            self.update_round(s);
            self.update_btl_bw(s);
        }
        self.check_cycle_phase(now, prior_in_flight);
        if let Some(s) = &ack.sample {
            self.check_full_pipe(s);
        }
        self.check_drain(now, in_flight);
        let expired = self.update_min_rtt(now, ack.sample.as_ref());
        self.check_probe_rtt(now, in_flight, expired);
        self.update_pacing_rate(rtt);
        self.update_cwnd(ack.acked_bytes);
        self.lost_since_ack = false;
    }

    fn on_loss(&mut self, _: Instant, lost_bytes: u64, _: u64, _: Instant, _: u64) {
        // Loss does not change the model; it only ends a bandwidth probe early.
        if lost_bytes > 0 {
            self.lost_since_ack = true;
        }
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self, rtt: &RttEstimator) -> Option<u64> {
        if self.pacing_rate == 0 {
            Some(self.initial_pacing_rate(rtt))
        } else {
            Some(self.pacing_rate)
        }
    }

    fn name(&self) -> &'static str {
        "bbr"
    }
}

/// `x × gain`, saturating (and 0 for a non-finite or negative product).
fn scale(x: u64, gain: f64) -> u64 {
    // Float-to-int `as` saturates and maps NaN to 0, which is what is wanted here.
    (x as f64 * gain) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::congestion::sim::{LossAt, MTU, Path, Sim};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn explore(path: Path, flows: usize, secs: u64) {
        let t0 = Instant::now();
        let mut sim = Sim::new(path, t0);
        for k in 0..flows {
            sim.add_flow(Bbr::new(t0, MTU), SEC * k as u32 * 2);
        }
        for s in 1..=secs {
            sim.run_until(SEC * s as u32);
            let gp: Vec<String> = (0..flows)
                .map(|i| {
                    let f = &sim.flows[i];
                    format!(
                        "[{:.1}Mb {:?} bw={:.1} cwnd={} rtt={:?} lost={}]",
                        sim.goodput(i, SEC * (s as u32 - 1), SEC * s as u32) * 8e-6,
                        f.cc.mode(),
                        f.cc.bandwidth() as f64 * 8e-6,
                        f.cc.window() / MTU,
                        f.cc.min_rtt(),
                        f.lost / MTU
                    )
                })
                .collect();
            println!(
                "t={s} q={:?} {}",
                sim.mean_queue_delay(SEC * (s as u32 - 1), SEC * s as u32),
                gp.join(" ")
            );
        }
    }

    #[test]
    fn explore_single() {
        explore(Path::standard(), 1, 25);
    }
    #[test]
    fn explore_two() {
        explore(Path::standard(), 2, 40);
    }
    #[test]
    fn explore_loss_exit_10() {
        explore(
            Path {
                loss: 0.1,
                loss_at: LossAt::Exit,
                ..Path::standard()
            },
            1,
            20,
        );
    }
    #[test]
    fn explore_loss_entry_20() {
        explore(
            Path {
                loss: 0.2,
                ..Path::standard()
            },
            1,
            20,
        );
    }
    #[test]
    fn explore_loss_exit_20() {
        explore(
            Path {
                loss: 0.2,
                loss_at: LossAt::Exit,
                ..Path::standard()
            },
            1,
            20,
        );
    }
}
