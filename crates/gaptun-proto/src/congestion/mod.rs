//! Congestion control: a trait and three controllers, plus the pacer and delivery-rate sampler
//! they use.
//!
//! - `none`: no congestion window; the flow-control window alone limits sending (the seed's
//!   mTCP). Sends are still paced at window / RTT so that a window is not sent as one burst.
//! - `bbr`: a model-based controller in the style of BBR: it estimates bottleneck bandwidth and
//!   minimum RTT and paces at that rate, so random loss is not read as congestion. The default.
//! - `brutal`: a fixed target rate, raised to make up for the measured loss rate (as Hysteria 2).

mod bbr;
mod brutal;
mod delivery_rate;
mod minmax;
mod none;
mod pacer;
#[cfg(test)]
mod sim;

pub use bbr::{Bbr, BbrMode};
pub use brutal::Brutal;
pub use delivery_rate::{DeliveryRate, PacketRateState, RateSample};
pub use none::NoControl;
pub use pacer::Pacer;

use std::fmt;
use std::time::Instant;

use crate::rtt::RttEstimator;

/// Which controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionKind {
    /// Flow control only.
    None,
    /// Model-based, loss-tolerant (default).
    #[default]
    Bbr,
    /// Fixed rate in bytes per second.
    Brutal {
        /// Target goodput in bytes per second.
        rate: u64,
    },
}

/// What one ACK frame newly acknowledged, as the controller sees it.
#[derive(Debug, Clone, Copy)]
pub struct AckSummary {
    /// Bytes of packets newly acknowledged by this ACK.
    pub acked_bytes: u64,
    /// Packets newly acknowledged.
    pub acked_packets: u64,
    /// Delivery-rate sample computed from those packets, if any qualified.
    pub sample: Option<RateSample>,
}

/// A congestion controller. All methods take the current time; none does I/O.
pub trait Controller: Send + fmt::Debug {
    /// A packet of `bytes` was sent; `in_flight` already includes it.
    fn on_sent(&mut self, now: Instant, bytes: u64, in_flight: u64);
    /// An ACK frame was processed; `in_flight` excludes the acknowledged packets.
    fn on_ack(&mut self, now: Instant, ack: &AckSummary, rtt: &RttEstimator, in_flight: u64);
    /// Packets were declared lost: `lost_bytes` in total, the newest of them sent at
    /// `largest_lost_sent`; `in_flight` excludes them.
    fn on_loss(
        &mut self,
        now: Instant,
        lost_bytes: u64,
        lost_packets: u64,
        largest_lost_sent: Instant,
        in_flight: u64,
    );
    /// The largest datagram the connection sends changed to `mtu` bytes (path MTU discovery
    /// confirmed a larger size, or fell back after a black hole or a path change). Every floor,
    /// initial window and quantum the controller counts in packets is in packets of this size
    /// from now on: a floor of 4 packets kept in 1472-byte packets is less than one 64 KB
    /// packet, and a window below one packet lets nothing be sent (as quinn's
    /// `Controller::on_mtu_update`).
    fn on_mtu_change(&mut self, mtu: u64);
    /// Bytes that may be in flight.
    fn window(&self) -> u64;
    /// Sending rate in bytes per second, or `None` to pace at window / RTT.
    fn pacing_rate(&self, rtt: &RttEstimator) -> Option<u64>;
    /// Short name for stats and logs.
    fn name(&self) -> &'static str;
}

/// Builds the controller `kind` for a path with datagrams of at most `mtu` bytes (told of later
/// changes through [`Controller::on_mtu_change`]).
pub fn build(kind: CongestionKind, now: Instant, mtu: u64) -> Box<dyn Controller> {
    match kind {
        CongestionKind::None => Box::new(NoControl::new()),
        CongestionKind::Bbr => Box::new(Bbr::new(now, mtu)),
        CongestionKind::Brutal { rate } => Box::new(Brutal::new(now, mtu, rate)),
    }
}
