//! Delivery-rate sampling (draft-cheng-iccrg-delivery-rate-estimation): how fast data is
//! actually being delivered, measured per ACK. BBR's bandwidth model is built from these samples.

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

/// Per-connection delivery-rate state.
#[derive(Debug)]
pub struct DeliveryRate {
    _private: (),
}

impl DeliveryRate {
    /// Starts counting at `now`.
    pub fn new(now: Instant) -> Self {
        let _ = now;
        todo!("helper: DeliveryRate::new")
    }

    /// A packet is about to be sent; `in_flight` is the bytes in flight before it.
    pub fn on_sent(&mut self, now: Instant, in_flight: u64) -> PacketRateState {
        let _ = (now, in_flight);
        todo!("helper: DeliveryRate::on_sent")
    }

    /// A packet of `bytes` sent with state `p` was acknowledged.
    pub fn on_acked(&mut self, now: Instant, p: &PacketRateState, bytes: u64) {
        let _ = (now, p, bytes);
        todo!("helper: DeliveryRate::on_acked")
    }

    /// After all packets of one ACK frame were passed to [`DeliveryRate::on_acked`]: the sample
    /// they produced, if any.
    pub fn take_sample(&mut self) -> Option<RateSample> {
        todo!("helper: DeliveryRate::take_sample")
    }

    /// The sender has nothing more to send although the window would allow it.
    pub fn on_app_limited(&mut self, in_flight: u64) {
        let _ = in_flight;
        todo!("helper: DeliveryRate::on_app_limited")
    }

    /// Total bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        todo!("helper: DeliveryRate::delivered")
    }
}
