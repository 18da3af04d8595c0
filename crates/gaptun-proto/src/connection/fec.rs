//! The connection's side of FEC (see `crate::fec`): which packets are protected, how much
//! parity they get and when it goes out, and the opening of rebuilt packets.
//!
//! `auto` protects interactive traffic only: the packets carrying stream data or datagrams in a
//! burst that
//! starts on a nearly idle connection (at most [`AUTO_MAX_IN_FLIGHT`] packets in flight before
//! it) form a group, which
//! closes when nothing more waits to be sent (the tail of a request or a response) or at
//! [`AUTO_MAX_DATA`] packets. Such tails have no later packets whose acknowledgement would reveal
//! a loss, so a loss costs a retransmission timeout on top of the round trip; parity turns it
//! into no delay at all. A bulk transfer has far more in flight and gets no parity, so its
//! goodput and wire overhead stay what they are without FEC. On a path whose round trip is
//! shorter than the sender's gaps (loopback, a LAN) even a bulk transfer often has little in
//! flight, so a connection that has sent more than [`AUTO_BULK_BYTES`] of stream data and
//! datagrams within the last [`RecentRate`] window counts as bulk whatever its bytes in flight.
//!
//! Datagrams (a game's updates, VoIP, DNS through a UDP forward) are never retransmitted, so
//! without parity a lost one stays lost; with it, it is rebuilt a few milliseconds later. A
//! rebuilt datagram may then arrive after one sent later in the same group, as UDP allows.

use std::time::{Duration, Instant};

use super::{Connection, MIN_MTU, Timer};
use crate::fec::{FecMode, FecReceiver, FecSender, PARITY_RESERVE, ParityFrame};
use crate::frame::Frame;
use crate::packet;
use crate::shared::{Side, Transmit};
use crate::streams::SentFrames;

/// `auto`: most packets in flight before a burst for it to count as interactive.
const AUTO_MAX_IN_FLIGHT: u64 = 4;
/// `auto`: most data packets in one group (a larger response gets several groups).
const AUTO_MAX_DATA: usize = 16;
/// `auto`: most parity packets per group.
const AUTO_MAX_PARITY: usize = 10;
/// `auto`: the chance, at the estimated loss rate, that a group loses more packets than its
/// parity can rebuild. One in a thousand per direction keeps the 99th percentile of
/// request/response latency at one round trip.
const AUTO_TARGET_FAILURE: f64 = 1e-3;
/// `auto`: loss rate assumed at least, so that a path that has shown no loss yet still gets one
/// parity packet per tail (what the blind tail copy did before).
const AUTO_MIN_LOSS: f64 = 0.01;
/// `auto`: stream bytes sent within one [`RecentRate`] window (and the one before it) above
/// which the connection is moving bulk data and gets no parity. Interactive traffic (a game's
/// updates, keystrokes, a web request) stays far below it.
const AUTO_BULK_BYTES: u64 = 64 * 1024;
/// Shortest [`RecentRate`] window; it is twice the smoothed RTT when that is longer.
const RECENT_WINDOW_MIN: Duration = Duration::from_millis(20);
/// Most rebuilt packets opened per received datagram (one parity packet completes one group).
const MAX_REBUILT_PER_DATAGRAM: usize = 64;

/// Both halves of FEC for one connection.
#[derive(Debug, Default)]
pub(super) struct FecState {
    pub(super) sender: FecSender,
    pub(super) receiver: FecReceiver,
    recent: RecentRate,
}

/// Stream bytes sent in the current and the previous window (two RTTs, at least
/// [`RECENT_WINDOW_MIN`]): how `auto` tells bulk transfers from interactive traffic on paths
/// where bytes in flight cannot.
#[derive(Debug, Default)]
struct RecentRate {
    window_start: Option<Instant>,
    /// `stream_bytes_sent` when the current window began.
    base: u64,
    /// Bytes sent in the previous window (0 when it ended more than a window ago).
    previous: u64,
}

impl RecentRate {
    /// Moves the window on if it has ended.
    fn roll(&mut self, now: Instant, window: Duration, total: u64) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            self.base = total;
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < window {
            return;
        }
        self.previous = if elapsed < window * 2 {
            total.saturating_sub(self.base)
        } else {
            0
        };
        self.window_start = Some(now);
        self.base = total;
    }

    /// Bytes sent in the previous and the current window.
    fn bytes(&self, total: u64) -> u64 {
        self.previous + total.saturating_sub(self.base)
    }
}

impl Connection {
    /// Whether we send parity: our mode is not `off`, the peer accepts it, and the current path
    /// can lose packets (a reliable carrier delivers everything: parity would be pure cost).
    pub(super) fn fec_sending(&self) -> bool {
        self.config.fec != FecMode::Off
            && self.peer_params.as_ref().is_some_and(|p| p.fec)
            && !self.on_reliable_path()
    }

    /// Whether we rebuild from the peer's parity (announced in our transport parameters).
    pub(super) fn fec_receiving(&self) -> bool {
        self.config.fec.accepts_parity()
    }

    /// Whether a received datagram of `len` bytes is kept in its sealed form before it is
    /// opened (a full copy: opening in place destroys the bytes parity covers).
    ///
    /// Only datagrams that the peer may have protected are kept, and the rule that tells them
    /// is exact, not a guess about when parity may come: a protected packet is built
    /// [`PARITY_RESERVE`] bytes shorter than the peer's datagram size (so that its parity fits
    /// in a datagram), and that size never exceeds [`Connection::fec_peer_ceiling`]. A longer
    /// datagram was sent unprotected, whatever the peer's mode, and no parity can ever ask
    /// for it. Those are the full-size packets of a bulk transfer once path MTU discovery
    /// reached the ceiling (loopback, a reliable carrier, a clean path), where copying every
    /// datagram cost 7 % of the receiving daemon's CPU; interactive tails, ACKs and fixed-mode
    /// groups (all shorter) are kept as before, so parity rebuilds exactly what it did.
    ///
    /// An earlier attempt kept copies only within a time window after the last parity frame or
    /// gap in packet numbers; it lost the copies of the first group after a quiet stretch (its
    /// data packets arrive before any parity or gap), so a loss in a multi-packet response
    /// after an idle spell could not be rebuilt. Opening out of place (decrypting from the
    /// receive buffer into another) would not help either: the receive buffer is the driver's
    /// and is reused for the next datagram, so keeping the sealed form still takes a copy.
    pub(super) fn fec_keeps_sealed(&self, len: usize) -> bool {
        self.fec_receiving() && len + PARITY_RESERVE <= self.fec_peer_ceiling()
    }

    /// The largest datagram the peer may send data in: what path MTU discovery may confirm
    /// on its side, both sides' `max_udp_payload` (ours as we announced it in our transport
    /// parameters: the connection's configured value), never below [`MIN_MTU`]. Before the
    /// peer's parameters are known, ours alone.
    fn fec_peer_ceiling(&self) -> usize {
        let ours = self.config.max_udp_payload;
        let both = self
            .peer_params
            .as_ref()
            .map_or(ours, |p| ours.min(p.max_udp_payload));
        usize::from(both.max(MIN_MTU))
    }

    /// Whether the packets of the batch about to be built are protected, given the bytes that
    /// were in flight before it. Protected packets leave [`PARITY_RESERVE`] bytes free so that
    /// their parity fits in a datagram.
    pub(super) fn fec_protects(&self, in_flight_before: u64) -> bool {
        if !self.fec_sending() {
            return false;
        }
        match self.config.fec {
            FecMode::Off => false,
            FecMode::Fixed { .. } => true,
            FecMode::Auto => {
                if self.fec.recent.bytes(self.fec_rate_bytes()) > AUTO_BULK_BYTES {
                    return false;
                }
                let open = self.fec.sender.open_len();
                (open > 0 && open < AUTO_MAX_DATA)
                    || in_flight_before <= AUTO_MAX_IN_FLIGHT * self.mtu() as u64
            }
        }
    }

    /// Size limit of a packet in a batch that `protect`s: the datagram size less the parity
    /// reserve.
    pub(super) fn fec_packet_limit(&self, mtu: usize, protect: bool) -> usize {
        if protect {
            mtu.saturating_sub(PARITY_RESERVE)
        } else {
            mtu
        }
    }

    /// After a batch of packets `first_pn..` (laid out in `buf` as `segment`-byte datagrams,
    /// the last one possibly shorter) was built: adds the ack-eliciting ones to the open group
    /// if `protect`, and closes the group when it is full, at the end of a burst, or (auto) when
    /// the traffic stopped being interactive.
    pub(super) fn fec_after_batch(
        &mut self,
        now: Instant,
        buf: &[u8],
        first_pn: u64,
        segment: usize,
        protect: bool,
    ) {
        if !self.fec_sending() {
            return;
        }
        let window = (self.rtt.get() * 2).max(RECENT_WINDOW_MIN);
        let total = self.fec_rate_bytes();
        self.fec.recent.roll(now, window, total);
        let limit = self.fec_group_limit();
        let auto = self.config.fec == FecMode::Auto;
        // A group never spans paths (see `FecSender::group_path`): a batch on another path
        // than the open group's closes it first.
        if self
            .fec
            .sender
            .group_path()
            .is_some_and(|p| p != self.path.addr)
        {
            self.fec_close_group(now);
        }
        if protect && segment > 0 {
            for (i, datagram) in buf.chunks(segment).enumerate() {
                let pn = first_pn + i as u64;
                let Some(p) = self.sent.get_mut(&pn) else {
                    continue;
                };
                // `auto` protects what an exchange waits for: STREAM frames (data or FIN),
                // stream resets and datagrams. A packet with only credit updates (which the
                // receiver of a bulk transfer sends while nothing of its own is in flight) or a
                // PING is not worth parity.
                let ends_exchange = !p.frames.stream.is_empty()
                    || !p.frames.reset.is_empty()
                    || !p.frames.stop_sending.is_empty()
                    || p.datagram_frames > 0;
                if p.mtu_probe || (auto && !ends_exchange) {
                    continue;
                }
                // Its fate (rebuilt or not) says little about single packets' loss rate.
                p.copied = true;
                self.fec.sender.add(pn, datagram, self.path.addr);
                if self.fec.sender.open_len() >= limit {
                    self.fec_close_group(now);
                }
            }
        }
        let tail = !self.streams.has_pending() && !self.datagrams.has_pending();
        if tail || !protect {
            self.fec_close_group(now);
        }
    }

    /// Stream and datagram bytes sent so far: what [`RecentRate`] measures.
    fn fec_rate_bytes(&self) -> u64 {
        self.stats.stream_bytes_sent + self.datagrams.stats.bytes_sent
    }

    /// Data packets per group in the current mode.
    fn fec_group_limit(&self) -> usize {
        match self.config.fec {
            FecMode::Fixed { data, .. } => usize::from(data),
            _ => AUTO_MAX_DATA,
        }
    }

    /// Closes the open group (if any) and queues its parity.
    fn fec_close_group(&mut self, now: Instant) {
        let k = self.fec.sender.open_len();
        if k == 0 {
            return;
        }
        let (parity, spacing) = match self.config.fec {
            FecMode::Fixed { parity, .. } => (usize::from(parity), Duration::ZERO),
            _ => (
                auto_parity(k, self.loss_rate.sustained(), self.loss_rate.burst()),
                self.fec_spacing(),
            ),
        };
        tracing::trace!(
            data = k,
            parity,
            spacing_us = spacing.as_micros() as u64,
            loss = self.loss_rate.sustained(),
            burst = self.loss_rate.burst(),
            "FEC group closed"
        );
        self.fec.sender.close(now, parity, spacing);
        self.fec_arm_timer();
    }

    /// Time between the parity packets of one group in `auto`: a twentieth of the RTT, 1 to
    /// 5 ms, so that a loss burst of a few milliseconds cannot take the whole group while the
    /// last parity still arrives well within the round trip.
    fn fec_spacing(&self) -> Duration {
        (self.rtt.get() / 20).clamp(Duration::from_millis(1), Duration::from_millis(5))
    }

    fn fec_arm_timer(&mut self) {
        match self.fec.sender.next_due() {
            Some(at) => self.timers.set(Timer::FecParity, at),
            None => self.timers.stop(Timer::FecParity),
        }
    }

    /// A parity packet, if one is due: an ordinary protected packet whose payload is one
    /// FEC_PARITY frame. It is not ack-eliciting, not congestion controlled (it is small and
    /// comes with interactive traffic, or is the user's fixed choice) and never retransmitted.
    pub(super) fn transmit_parity(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.fec_sending() {
            return None;
        }
        let parity = loop {
            let parity = self.fec.sender.pop_due(now)?;
            // A client spreading over several paths sends parity on its group's path, or not
            // at all once that path no longer carries data (it died, or failover left it): a
            // rebuild must only ever credit a path that delivered the group's other packets.
            if self.side == Side::Server
                || self.paths.len() <= 1
                || self.paths.carries_data(parity.path)
            {
                break parity;
            }
            self.fec.sender.dropped += 1;
        };
        let path = if self.side == Side::Client && self.paths.len() > 1 {
            parity.path
        } else {
            self.path.addr
        };
        let start = packet::begin(buf);
        Frame::FecParity(ParityFrame {
            data_pns: parity.data_pns.clone(),
            parity_count: parity.parity_count,
            parity_index: parity.index,
            shard: &parity.shard,
        })
        .encode(buf);
        let size = buf.len() - start + packet::TAG_LEN;
        if size > self.mtu() {
            // The group's packets were larger than the reserve allows (the datagram size
            // shrank since): this parity cannot be sent.
            buf.truncate(start);
            self.fec.sender.dropped += 1;
            self.fec_arm_timer();
            return None;
        }
        if (size as u64) > self.path_budget() {
            buf.truncate(start);
            self.fec.sender.push_back_front(parity);
            return None;
        }
        let pn = self.next_pn;
        tracing::trace!(
            index = parity.index,
            of = parity.parity_count,
            late_us = now.saturating_duration_since(parity.due).as_micros() as u64,
            "FEC parity sent"
        );
        self.seal(buf, start, pn);
        // Not ack-eliciting: nothing of it is recorded per path.
        self.on_packet_sent(now, pn, size, false, SentFrames::default());
        self.stats.fec_parity_sent += 1;
        self.stats.fec_parity_bytes += size as u64;
        self.fec_arm_timer();
        Some(Transmit::to(path, buf.len(), None))
    }

    /// A FEC_PARITY frame arrived in an authenticated packet.
    pub(super) fn on_parity_frame(&mut self, frame: &ParityFrame<'_>) {
        if !self.fec_receiving() {
            return;
        }
        self.stats.fec_parity_received += 1;
        self.fec.receiver.on_parity(frame);
    }

    /// Opens and processes the packets parity has rebuilt. Each goes through the AEAD and the
    /// replay window like a received packet: a wrong shard (or a forged one) rebuilds bytes
    /// that fail authentication and are dropped.
    pub(super) fn open_rebuilt(&mut self, now: Instant) {
        for _ in 0..MAX_REBUILT_PER_DATAGRAM {
            if self.state != super::State::Established {
                return;
            }
            let Some(mut datagram) = self.fec.receiver.take_rebuilt() else {
                return;
            };
            let Some(keys) = self.keys.as_mut() else {
                return;
            };
            let largest = self.replay.largest();
            let Ok((pn, payload)) = packet::open(&self.header_key, keys, largest, &mut datagram)
            else {
                self.stats.dropped_auth += 1;
                self.stats.fec_rebuilt_failed += 1;
                continue;
            };
            if !self.replay.is_fresh(pn) {
                self.stats.dropped_replay += 1;
                continue;
            }
            self.replay.insert(pn);
            self.stats.fec_packets_rebuilt += 1;
            self.stats.packets_received += 1;
            let from = self.path.addr;
            self.process_payload(now, pn, payload, from);
        }
    }
}

/// Parity packets for a group of `k` data packets on a path losing `loss` of its packets in
/// runs of `burst` on average: the fewest that make losing more than can be rebuilt less likely
/// than [`AUTO_TARGET_FAILURE`], at most [`AUTO_MAX_PARITY`]. Two models, the larger answer
/// wins: independent losses (binomial), and one burst (the packets of a group go out nearly back
/// to back, so a run of losses takes consecutive ones): a run that starts in the group with
/// probability about `loss` and goes on with probability `1 − 1/burst` per packet must be
/// shorter than the parity. The floor [`AUTO_MIN_LOSS`] applies to the first model only (it
/// gives a path with no loss seen one parity packet); the burst model takes the measured rate,
/// so that a burst length learnt long ago does not load a path that no longer loses packets
/// with a burst's worth of parity.
fn auto_parity(k: usize, loss: f64, burst: f64) -> usize {
    let q = loss.clamp(AUTO_MIN_LOSS, 0.5);
    let mut parity = 1;
    while parity < AUTO_MAX_PARITY && binomial_tail(k + parity, parity, q) > AUTO_TARGET_FAILURE {
        parity += 1;
    }
    if burst > 1.5 && loss > AUTO_TARGET_FAILURE {
        let stay = 1.0 - 1.0 / burst;
        let runs = ((AUTO_TARGET_FAILURE / loss.min(0.5)).ln() / stay.ln()).ceil();
        if runs.is_finite() && runs > 0.0 {
            parity = parity.max(runs as usize);
        }
    }
    parity.min(AUTO_MAX_PARITY)
}

/// P(more than `max` of `n` packets lost), each independently with probability `q`.
fn binomial_tail(n: usize, max: usize, q: f64) -> f64 {
    let mut within = 0.0;
    let mut coefficient = 1.0;
    for i in 0..=max.min(n) {
        if i > 0 {
            coefficient *= (n - i + 1) as f64 / i as f64;
        }
        within += coefficient * q.powi(i as i32) * (1.0 - q).powi((n - i) as i32);
    }
    (1.0 - within).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_follows_loss_and_burst() {
        // A clean path: one parity packet, like the single tail copy it replaces.
        assert_eq!(auto_parity(1, 0.0, 1.0), 1);
        assert_eq!(auto_parity(1, 0.05, 1.0), 2);
        // 20 %: 0.2^5 = 3e-4 for a single packet.
        assert_eq!(auto_parity(1, 0.2, 1.0), 4);
        assert!(auto_parity(10, 0.2, 1.0) > auto_parity(1, 0.2, 1.0));
        // Bursts of 2 at 2 %: a run must end within p packets, 0.02 * 0.5^p <= 1e-3: p = 5.
        assert_eq!(auto_parity(1, 0.02, 2.0), 5);
        // Bursts of 4 at 2 % would need 11: capped.
        assert_eq!(auto_parity(1, 0.02, 4.0), AUTO_MAX_PARITY);
        // A long burst length seen once, on a path that has stopped losing packets: the floor's
        // single parity packet, not a burst's worth.
        assert_eq!(auto_parity(1, 0.0, 13.0), 1);
        assert_eq!(auto_parity(1, 1e-4, 13.0), 1);
        // Half a percent in runs of 4: 0.005 * 0.75^p <= 1e-3 needs p = 6.
        assert_eq!(auto_parity(1, 0.005, 4.0), 6);
        assert_eq!(auto_parity(16, 0.5, 8.0), AUTO_MAX_PARITY);
    }

    #[test]
    fn binomial_tail_known_values() {
        assert!((binomial_tail(2, 1, 0.1) - 0.01).abs() < 1e-12);
        assert!((binomial_tail(3, 0, 0.5) - 0.875).abs() < 1e-12);
        assert_eq!(binomial_tail(3, 3, 0.5), 0.0);
    }
}
