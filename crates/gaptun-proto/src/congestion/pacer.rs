//! Pacing: spreads a window's worth of packets over the RTT instead of sending them in a burst.

use std::time::Instant;

/// A token bucket refilled at the pacing rate, with a burst of a few datagrams.
#[derive(Debug)]
pub struct Pacer {
    _private: (),
}

impl Pacer {
    /// A full bucket at `now` for datagrams of up to `mtu` bytes.
    pub fn new(now: Instant, mtu: u64) -> Self {
        let _ = (now, mtu);
        todo!("helper: Pacer::new")
    }

    /// When a packet of `bytes` may be sent at `rate` bytes per second: `None` means now.
    pub fn delay(&mut self, now: Instant, bytes: u64, rate: u64) -> Option<Instant> {
        let _ = (now, bytes, rate);
        todo!("helper: Pacer::delay")
    }

    /// A packet of `bytes` was sent.
    pub fn on_sent(&mut self, bytes: u64) {
        let _ = bytes;
        todo!("helper: Pacer::on_sent")
    }
}
