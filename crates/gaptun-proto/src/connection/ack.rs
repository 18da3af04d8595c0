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
        }
    }

    /// Records packet `pn`. Returns whether it calls for an immediate ACK, and how many packet
    /// numbers it skipped past the largest so far (0 when in order or late).
    ///
    /// An ACK goes out after `threshold` ack-eliciting packets, and at once when a packet
    /// arrives out of order (a loss or reordering the sender must hear about for its fast
    /// retransmit) unless an ACK went out less than `gap_spacing` ago. The spacing matters on
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
        gap_spacing: Duration,
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
        let recently_acked = self
            .last_ack_sent
            .is_some_and(|t| now.saturating_duration_since(t) < gap_spacing);
        if (!in_order && !recently_acked) || self.unacked_eliciting >= threshold {
            self.immediate = true;
        }
        (self.immediate, skipped)
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
