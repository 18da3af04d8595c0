//! What we received and must acknowledge.

use std::time::{Duration, Instant};

use crate::range_set::RangeSet;

/// Highest ranges reported in one ACK frame. Each range is reported in many consecutive ACKs
/// (we acknowledge every few packets, and at once after every gap), so older ranges need
/// not be repeated forever.
///
/// Lost packet numbers are never filled in (lost data goes out again under new numbers), so
/// under steady loss every ACK carries this many ranges: 64 made ACKs of 150–250 bytes, 6–8 % of
/// the goodput at 100 Mbit/s. With 16, a range is still repeated in every ACK sent while the
/// next 15 gaps arrive (at 20 % loss, some 80 packets and a dozen ACKs or more), so losing every
/// copy of it is negligible, and the only cost of that would be one spurious retransmission.
pub(super) const MAX_ACK_RANGES: usize = 16;
/// Ranges remembered; older ones are forgotten.
const MAX_TRACKED_RANGES: usize = 256;

/// A gap in the packet numbers calls for an immediate ACK unless one went out within this
/// fraction of the RTT (see `AckState::on_packet`).
const GAP_ACK_SPACING_DIVISOR: u32 = 8;

/// ACKs per RTT the adaptive threshold aims for at least.
const ACKS_PER_RTT: u64 = 4;
/// The threshold never adapts below this (QUIC's and TCP's "every second packet").
const MIN_ACK_THRESHOLD: u64 = 2;

#[derive(Debug)]
pub(super) struct AckState {
    pub(super) received: RangeSet,
    /// When the largest packet number was received (for the ACK delay field).
    largest_received_at: Option<Instant>,
    /// Ack-eliciting packets received since the last ACK we sent.
    unacked_eliciting: u64,
    /// Something new arrived that the peer has not had an ACK for.
    pub(super) ack_needed: bool,
    /// Send the ACK now rather than at the delayed-ACK deadline.
    pub(super) immediate: bool,
    /// When we last sent an ACK, to space out the ACKs that gaps call for.
    last_ack_sent: Option<Instant>,
    /// Start of the current one-RTT window counting ack-eliciting arrivals.
    rate_window_start: Option<Instant>,
    /// Ack-eliciting packets in the current window.
    rate_window_count: u64,
    /// Ack-eliciting packets in the last complete window: how many arrive per RTT.
    packets_per_rtt: u64,
}

impl AckState {
    pub(super) fn new() -> Self {
        Self {
            received: RangeSet::new(),
            largest_received_at: None,
            unacked_eliciting: 0,
            ack_needed: false,
            immediate: false,
            last_ack_sent: None,
            rate_window_start: None,
            rate_window_count: 0,
            packets_per_rtt: 0,
        }
    }

    /// Records packet `pn`. Returns whether it calls for an immediate ACK, and how many packet
    /// numbers it skipped past the largest so far (0 when in order or late).
    ///
    /// An ACK goes out after `threshold` ack-eliciting packets — fewer when fewer than
    /// 4 × `threshold` arrive per RTT (see [`AckState::effective_threshold`]) — and at once when a
    /// packet arrives out of order (a loss or reordering the sender must hear about for its
    /// fast retransmit) unless an ACK went out less than RTT/8 ago. The spacing matters on
    /// fast lossy paths: at 100 Mbit/s and 10 % loss a gap arrives every 10 packets, and acking
    /// each at once doubled the ACKs (1 % more bytes on the wire) while gaining the sender at
    /// most the `threshold` packets (a millisecond or two) it waits for the next ACK anyway. On
    /// slow or interactive traffic, ACKs are rare, so a gap is still reported at once.
    pub(super) fn on_packet(
        &mut self,
        now: Instant,
        pn: u64,
        ack_eliciting: bool,
        threshold: u64,
        rtt: Duration,
    ) -> (bool, u64) {
        let previous_largest = self.received.max();
        let skipped = previous_largest.map_or(0, |l| pn.saturating_sub(l).saturating_sub(1));
        let in_order = previous_largest.is_none_or(|l| pn == l + 1);
        self.received.insert_one(pn);
        if self.received.len() > MAX_TRACKED_RANGES {
            self.received.pop_min();
        }
        if previous_largest.is_none_or(|l| pn > l) {
            self.largest_received_at = Some(now);
        }
        if !ack_eliciting {
            return (false, skipped);
        }
        self.ack_needed = true;
        self.unacked_eliciting += 1;
        self.count_arrival(now, rtt);
        let threshold = self.effective_threshold(threshold);
        let gap_spacing = rtt / GAP_ACK_SPACING_DIVISOR;
        let recently_acked = self
            .last_ack_sent
            .is_some_and(|t| now.saturating_duration_since(t) < gap_spacing);
        if (!in_order && !recently_acked) || self.unacked_eliciting >= threshold {
            self.immediate = true;
        }
        (self.immediate, skipped)
    }

    /// Counts an ack-eliciting arrival in the current one-RTT window, closing the window when an
    /// RTT has passed.
    fn count_arrival(&mut self, now: Instant, rtt: Duration) {
        let start = *self.rate_window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= rtt {
            self.packets_per_rtt = self.rate_window_count;
            self.rate_window_count = 0;
            self.rate_window_start = Some(now);
        }
        self.rate_window_count += 1;
    }

    /// The configured threshold, lowered so that at least four ACKs go out per RTT (but not
    /// below every 2 packets).
    ///
    /// With a fixed threshold, a sender whose window holds fewer packets than the threshold
    /// (a short RTT, a slow link, the start of a connection) hears nothing until the
    /// delayed-ACK timer fires: on a 0.2 ms LAN path that is 50 RTTs, and the delivery rate the
    /// sender measures, and with it BBR's window, collapses (an 8-stream transfer on loopback
    /// fell to 5 Mbit/s). Counting arrivals per RTT keeps the ACK clock running there, while a
    /// fast long path (hundreds of packets per RTT) still gets the full threshold.
    /// A configured threshold below 2 (every packet) is kept as it is.
    fn effective_threshold(&self, threshold: u64) -> u64 {
        (self.packets_per_rtt / ACKS_PER_RTT)
            .max(MIN_ACK_THRESHOLD)
            .min(threshold)
    }

    /// The ACK delay to report now.
    pub(super) fn delay(&self, now: Instant) -> Duration {
        self.largest_received_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// An ACK frame was written.
    pub(super) fn on_ack_sent(&mut self, now: Instant) {
        self.last_ack_sent = Some(now);
        self.ack_needed = false;
        self.immediate = false;
        self.unacked_eliciting = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `count` in-order ack-eliciting packets spaced `gap` apart; returns how many of
    /// them called for an immediate ACK (the ACK is taken as sent at once).
    fn acks_for(
        state: &mut AckState,
        t: &mut Instant,
        pn: &mut u64,
        count: u64,
        gap: Duration,
    ) -> u64 {
        let rtt = Duration::from_millis(10);
        let mut acks = 0;
        for _ in 0..count {
            *t += gap;
            let (immediate, _) = state.on_packet(*t, *pn, true, 16, rtt);
            *pn += 1;
            if immediate {
                state.on_ack_sent(*t);
                acks += 1;
            }
        }
        acks
    }

    #[test]
    fn few_packets_per_rtt_are_acknowledged_every_second_packet() {
        let mut state = AckState::new();
        let mut t = Instant::now();
        let mut pn = 0;
        // 5 packets per 10 ms RTT: at least 4 ACKs per RTT means every second packet.
        let acks = acks_for(&mut state, &mut t, &mut pn, 100, Duration::from_millis(2));
        assert!(acks >= 45, "{acks} ACKs for 100 packets");
    }

    #[test]
    fn many_packets_per_rtt_use_the_full_threshold() {
        let mut state = AckState::new();
        let mut t = Instant::now();
        let mut pn = 0;
        // 1000 packets per RTT: the first RTT acknowledges every second packet (nothing is
        // known yet), after that every 16th.
        acks_for(&mut state, &mut t, &mut pn, 1000, Duration::from_micros(10));
        let acks = acks_for(&mut state, &mut t, &mut pn, 1600, Duration::from_micros(10));
        assert_eq!(acks, 100);
    }

    #[test]
    fn a_gap_is_acknowledged_at_once_unless_an_ack_just_went_out() {
        let mut state = AckState::new();
        let t = Instant::now();
        let rtt = Duration::from_millis(80);
        assert!(!state.on_packet(t, 0, true, 16, rtt).0);
        // Packet 1 is missing: an immediate ACK.
        assert_eq!(state.on_packet(t, 2, true, 16, rtt), (true, 1));
        state.on_ack_sent(t);
        // Another gap 5 ms later (less than RTT/8 = 10 ms): it waits.
        let t2 = t + Duration::from_millis(5);
        assert_eq!(state.on_packet(t2, 4, true, 16, rtt), (false, 1));
        // 15 ms after the ACK: at once again.
        let t3 = t + Duration::from_millis(15);
        assert_eq!(state.on_packet(t3, 6, true, 16, rtt), (true, 1));
    }
}
