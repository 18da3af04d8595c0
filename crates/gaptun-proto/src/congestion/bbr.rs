//! A BBR-style model-based controller.

use std::time::Instant;

use super::{AckSummary, Controller};
use crate::rtt::RttEstimator;

/// The `bbr` controller.
#[derive(Debug)]
pub struct Bbr {
    mtu: u64,
}

impl Bbr {
    /// Creates it.
    pub fn new(now: Instant, mtu: u64) -> Self {
        let _ = now;
        Self { mtu }
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {
        todo!("helper: bbr")
    }
    fn on_ack(&mut self, _now: Instant, _ack: &AckSummary, _rtt: &RttEstimator, _in_flight: u64) {
        todo!("helper: bbr")
    }
    fn on_loss(&mut self, _: Instant, _: u64, _: u64, _: Instant, _: u64) {
        todo!("helper: bbr")
    }
    fn window(&self) -> u64 {
        todo!("helper: bbr {}", self.mtu)
    }
    fn pacing_rate(&self, _rtt: &RttEstimator) -> Option<u64> {
        todo!("helper: bbr")
    }
    fn name(&self) -> &'static str {
        "bbr"
    }
}
