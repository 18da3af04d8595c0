//! A running estimate of the path's packet loss rate, for deciding how many copies of an
//! interactive tail packet to send.
//!
//! Two kinds of evidence feed it:
//! - our own packets sent once (not copies) that were acknowledged or declared lost: the loss
//!   rate from us to the peer, as long as we send data;
//! - packets we receive, and gaps in their numbers: the loss rate from the peer to us. Small
//!   data packets may be copies of an interactive tail; their arrival is not counted (it would
//!   hide single losses), the gaps before them are.
//!
//! Without fresh evidence (a connection carrying only copied requests and answers) the estimate
//! keeps its last value: what the path did under the last bulk transfer, ACK or keepalive.
//!
//! Paths that lose packets usually do so both ways, so one figure serves both directions.

/// Weight of each new observation: the estimate follows the last few dozen packets.
const ALPHA: f64 = 1.0 / 32.0;

/// Weight of each observation in the slow estimate: it follows the last few hundred packets.
const SLOW_ALPHA: f64 = 1.0 / 256.0;

/// Exponentially weighted share of packets lost.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LossRate {
    rate: f64,
    /// The same share over a longer memory ([`SLOW_ALPHA`]). At 5 % loss the fast estimate
    /// spends about a third of the time under 3.2 % (two dozen packets without a loss are
    /// common), which is where a one-packet tail gets one parity packet instead of two; the
    /// slow one stays within a percent of the real rate.
    slow: f64,
    /// Mean length of the runs of missing packet numbers seen (0 before the first).
    burst: f64,
}

/// Weight of each new run length in the burst-length estimate.
const BURST_ALPHA: f64 = 1.0 / 8.0;

/// Arrivals without a gap over which the burst-length estimate forgets (1/e of its excess over
/// 1 remains after this many). A path that loses packets in runs shows a new run every few
/// hundred packets (every 200 at 2 % loss in runs of 4), which keeps the estimate up (at about
/// 3.5 for runs of 4); a bulk transfer whose only runs were its start-up overflowing the
/// bottleneck queue has forgotten them after its next tens of thousands of packets. Without it
/// a burst length learnt once stayed for the connection's life: a server that had received
/// one upload sent ten parity packets after every later answer on a path that lost nothing.
const BURST_MEMORY: f64 = 8192.0;

impl LossRate {
    /// The current estimate, 0.0 to 1.0.
    pub(super) fn get(&self) -> f64 {
        self.rate
    }

    /// The loss rate to size protection by: the larger of the fast and the slow estimate, so
    /// that a short run of luck does not strip the tails of their parity while a real rise in
    /// loss still shows within a few dozen packets.
    pub(super) fn sustained(&self) -> f64 {
        self.rate.max(self.slow)
    }

    /// Mean number of packets lost in a row when packets are lost (at least 1).
    pub(super) fn burst(&self) -> f64 {
        self.burst.max(1.0)
    }

    /// One packet's fate: lost or not.
    pub(super) fn observe(&mut self, lost: bool) {
        let sample = if lost { 1.0 } else { 0.0 };
        self.rate += ALPHA * (sample - self.rate);
        self.slow += SLOW_ALPHA * (sample - self.slow);
    }

    /// A packet arrived after `missing` packet numbers that never did (a gap in the sequence).
    /// Large jumps (a peer that skipped numbers, or a long outage) count as a few losses only.
    /// The arrival itself counts only if `counts` (not when it may be one of several copies).
    /// An arrival with no gap before it moves the burst estimate back towards 1 by
    /// 1/[`BURST_MEMORY`] of its excess.
    pub(super) fn observe_arrival(&mut self, missing: u64, counts: bool) {
        if missing == 0 && self.burst > 1.0 {
            self.burst -= (self.burst - 1.0) / BURST_MEMORY;
        }
        if missing > 0 {
            let run = missing.min(16) as f64;
            if self.burst == 0.0 {
                self.burst = run;
            } else {
                self.burst += BURST_ALPHA * (run - self.burst);
            }
        }
        for _ in 0..missing.min(8) {
            self.observe(true);
        }
        if counts {
            self.observe(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_to_the_loss_share() {
        let mut r = LossRate::default();
        assert_eq!(r.get(), 0.0);
        // One loss in every 20 packets.
        for i in 0..2000 {
            r.observe(i % 20 == 0);
        }
        assert!((r.get() - 0.05).abs() < 0.03, "{}", r.get());
        for _ in 0..200 {
            r.observe(false);
        }
        assert!(r.get() < 0.01, "{}", r.get());
    }

    #[test]
    fn the_sustained_rate_survives_a_lucky_run() {
        let mut r = LossRate::default();
        // 5 % loss for a while, then 40 packets in a row arrive (happens about once in eight
        // such runs at 5 %).
        for i in 0..2000 {
            r.observe(i % 20 == 0);
        }
        for _ in 0..40 {
            r.observe(false);
        }
        assert!(r.get() < 0.032, "the fast estimate dips: {}", r.get());
        assert!(r.sustained() > 0.04, "{}", r.sustained());
        // A real rise shows at the fast pace.
        for i in 0..64 {
            r.observe(i % 4 == 0);
        }
        assert!(r.sustained() > 0.15, "{}", r.sustained());
    }

    #[test]
    fn gaps_count_as_losses_but_jumps_are_capped() {
        let mut r = LossRate::default();
        for _ in 0..500 {
            r.observe_arrival(0, true);
            r.observe_arrival(1, true);
            r.observe_arrival(0, false);
        }
        // One packet in three missing.
        assert!((r.get() - 1.0 / 3.0).abs() < 0.05, "{}", r.get());
        assert!((r.burst() - 1.0).abs() < 1e-9, "{}", r.burst());
        let mut bursts = LossRate::default();
        for _ in 0..100 {
            bursts.observe_arrival(4, true);
            bursts.observe_arrival(0, true);
        }
        assert!(bursts.burst() > 3.9, "{}", bursts.burst());
        let mut jump = LossRate::default();
        jump.observe_arrival(1_000_000, true);
        assert!(jump.get() < 0.3, "{}", jump.get());
    }

    #[test]
    fn a_burst_length_is_kept_while_runs_recur_and_forgotten_when_they_stop() {
        let mut r = LossRate::default();
        // Runs of 4 with 196 packets between them: 2 % loss in runs of 4.
        for _ in 0..200 {
            r.observe_arrival(4, true);
            for _ in 0..196 {
                r.observe_arrival(0, true);
            }
        }
        assert!(r.burst() > 3.0, "{}", r.burst());
        // The runs stop (a bulk transfer's start-up drops, then a clean path).
        for _ in 0..40_000 {
            r.observe_arrival(0, true);
        }
        assert!(r.burst() < 1.2, "{}", r.burst());
    }
}
