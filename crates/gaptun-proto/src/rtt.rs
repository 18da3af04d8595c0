//! Round-trip time estimation (the smoothed estimator of RFC 6298 / RFC 9002 §5).

use std::time::Duration;

/// Latest, smoothed, variance and minimum RTT of one path.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
    initial: Duration,
}

/// Timer granularity assumed when computing timeouts.
pub const GRANULARITY: Duration = Duration::from_millis(1);

impl RttEstimator {
    /// An estimator that reports `initial` until the first sample.
    pub fn new(initial: Duration) -> Self {
        Self {
            latest: initial,
            smoothed: None,
            var: initial / 2,
            min: initial,
            initial,
        }
    }

    /// Adds a sample: `rtt` measured from send to ACK, of which `ack_delay` was spent at the peer.
    pub fn update(&mut self, ack_delay: Duration, rtt: Duration) {
        self.latest = rtt;
        if self.smoothed.is_none() {
            self.min = rtt;
            self.smoothed = Some(rtt);
            self.var = rtt / 2;
            return;
        }
        self.min = self.min.min(rtt);
        // Subtract the peer's delay only if that does not take the sample below the minimum.
        let adjusted = if rtt >= self.min + ack_delay {
            rtt - ack_delay
        } else {
            rtt
        };
        let smoothed = self.smoothed.unwrap_or(adjusted);
        let diff = smoothed.abs_diff(adjusted);
        self.var = (self.var * 3 + diff) / 4;
        self.smoothed = Some((smoothed * 7 + adjusted) / 8);
    }

    /// Smoothed RTT (the initial RTT before any sample).
    pub fn get(&self) -> Duration {
        self.smoothed.unwrap_or(self.initial)
    }

    /// The most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// Smallest sample seen.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// Mean deviation.
    pub fn var(&self) -> Duration {
        self.var
    }

    /// Whether any sample was taken yet.
    pub fn has_sample(&self) -> bool {
        self.smoothed.is_some()
    }

    /// Base retransmission timeout: smoothed + max(4 x variance, granularity).
    pub fn rto_base(&self) -> Duration {
        self.get() + (self.var * 4).max(GRANULARITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_towards_a_steady_rtt() {
        let mut rtt = RttEstimator::new(Duration::from_millis(500));
        for _ in 0..50 {
            rtt.update(Duration::ZERO, Duration::from_millis(100));
        }
        assert!(rtt.get().abs_diff(Duration::from_millis(100)) < Duration::from_millis(1));
        assert_eq!(rtt.min(), Duration::from_millis(100));
        assert!(rtt.rto_base() < Duration::from_millis(110));
    }

    #[test]
    fn ack_delay_is_subtracted_only_above_the_minimum() {
        let mut rtt = RttEstimator::new(Duration::from_millis(100));
        rtt.update(Duration::ZERO, Duration::from_millis(100));
        rtt.update(Duration::from_millis(50), Duration::from_millis(120));
        // 120 - 50 = 70 < min 100, so the delay is ignored.
        assert!(rtt.get() > Duration::from_millis(100));
    }
}
