//! A fixed-rate controller with loss compensation (as Hysteria 2's Brutal).

use std::time::Instant;

use super::{AckSummary, Controller};
use crate::rtt::RttEstimator;

/// The `brutal` controller.
#[derive(Debug)]
pub struct Brutal {
    mtu: u64,
    rate: u64,
}

impl Brutal {
    /// Creates it.
    pub fn new(now: Instant, mtu: u64, rate: u64) -> Self {
        let _ = now;
        Self { mtu, rate }
    }
}

impl Controller for Brutal {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {
        todo!("helper: brutal")
    }
    fn on_ack(&mut self, _now: Instant, _ack: &AckSummary, _rtt: &RttEstimator, _in_flight: u64) {
        todo!("helper: brutal")
    }
    fn on_loss(&mut self, _: Instant, _: u64, _: u64, _: Instant, _: u64) {
        todo!("helper: brutal")
    }
    fn window(&self) -> u64 {
        todo!("helper: brutal {} {}", self.mtu, self.rate)
    }
    fn pacing_rate(&self, _rtt: &RttEstimator) -> Option<u64> {
        todo!("helper: brutal")
    }
    fn name(&self) -> &'static str {
        "brutal"
    }
}
