//! No congestion control: the window is unlimited and flow control alone bounds sending.

use std::time::Instant;

use super::{AckSummary, Controller};
use crate::rtt::RttEstimator;

/// The `none` controller.
#[derive(Debug, Default)]
pub struct NoControl;

impl NoControl {
    /// Creates it.
    pub fn new() -> Self {
        Self
    }
}

impl Controller for NoControl {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}
    fn on_ack(&mut self, _now: Instant, _ack: &AckSummary, _rtt: &RttEstimator, _in_flight: u64) {}
    fn on_loss(&mut self, _: Instant, _: u64, _: u64, _: Instant, _: u64) {}
    fn on_mtu_change(&mut self, _mtu: u64) {}
    fn window(&self) -> u64 {
        u64::MAX
    }
    fn pacing_rate(&self, _rtt: &RttEstimator) -> Option<u64> {
        None
    }
    fn name(&self) -> &'static str {
        "none"
    }
}
