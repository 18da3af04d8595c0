//! Reliability: what was sent, what the peer acknowledged, what is lost, and the
//! retransmission timeout.
//!
//! Loss is detected as in RFC 9002: a packet is lost once `reorder_threshold` later packets
//! were acknowledged (fast retransmit) or once it is older than 9/8 of the RTT while a later
//! packet was acknowledged. Lost *data* is handed back to the streams, which send it again in new
//! packets; packet numbers are never reused. When nothing is acknowledged for a retransmission
//! timeout, overdue packets are declared lost and probes are sent that may exceed the congestion
//! window, so a tail loss costs one timeout and never collapses the connection. The timeout grows
//! by `rto_backoff` per timeout in a row (1.0: not at all).

use std::time::{Duration, Instant};

use super::{Connection, Timer};
use crate::congestion::{AckSummary, PacketRateState};
use crate::frame::AckFrame;
use crate::rtt::GRANULARITY;
use crate::streams::SentFrames;

/// On a reliable carrier, a packet still unacknowledged after this long, and after
/// [`RELIABLE_LOSS_RTTS`] round trips, is declared lost at the next retransmission timeout: it
/// went down with a carrier connection that broke (a TCP reset loses what was in its buffers).
/// TCP itself recovers a loss long before (its RTO is 200 ms or more, plus one RTT), so in
/// normal operation nothing is retransmitted twice.
const RELIABLE_LOSS_AGE: Duration = Duration::from_secs(1);

/// Round trips (the larger of the smoothed and the latest) a packet on a reliable carrier must
/// be older than to be declared lost: on a busy host, or behind a carrier's queue, round trips
/// of several hundred milliseconds are normal, and 1 s alone took delay for loss.
const RELIABLE_LOSS_RTTS: u32 = 4;

/// Lost packet numbers remembered for spotting spurious losses.
const RECENTLY_LOST_MAX: usize = 4096;

/// What kind of probe a sent packet is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    None,
    Mtu,
    Path,
}

/// A packet we sent that may still be acknowledged or lost.
#[derive(Debug)]
pub(super) struct SentPacket {
    pub(super) time: Instant,
    /// Datagram bytes.
    pub(super) size: u32,
    /// Counted in bytes in flight (everything but ACK-only packets).
    pub(super) ack_eliciting: bool,
    pub(super) frames: SentFrames,
    pub(super) rate: PacketRateState,
    /// Stream payload bytes carried, for statistics.
    pub(super) stream_bytes: u64,
    /// Sent more than once (an interactive tail packet): its fate says little about the loss
    /// rate of single packets, so it does not feed the estimate.
    pub(super) copied: bool,
    /// A path MTU probe: its loss is no congestion signal, has nothing to retransmit and does
    /// not drive the retransmission timer.
    pub(super) mtu_probe: bool,
    /// A failover client's probe of a standby path: its fate is that path's health only, not
    /// a congestion signal, and it has nothing to retransmit.
    pub(super) path_probe: bool,
    /// The path it went out on: its fate is that path's health (client, several paths).
    pub(super) path: crate::shared::PathAddr,
    /// DATAGRAM frames carried: counted when lost, never sent again.
    pub(super) datagram_frames: u32,
}

impl Connection {
    /// Registers a sent packet.
    pub(super) fn on_packet_sent(
        &mut self,
        now: Instant,
        pn: u64,
        size: usize,
        ack_eliciting: bool,
        frames: SentFrames,
    ) {
        self.register_sent(now, pn, size, ack_eliciting, frames, Probe::None);
    }

    /// Registers a sent standby-path probe (failover client): ack-eliciting, nothing to
    /// retransmit, and, like an MTU probe, not watched by the RTO.
    pub(super) fn on_path_probe_sent(&mut self, now: Instant, pn: u64, size: usize) {
        self.register_sent(now, pn, size, true, SentFrames::default(), Probe::Path);
    }

    /// Registers a sent path MTU probe (ack-eliciting, no frames to retransmit). It counts in
    /// flight, but only its own timer ([`Timer::MtuProbe`]) watches it, not the RTO.
    pub(super) fn on_mtu_probe_sent(&mut self, now: Instant, pn: u64, size: usize) {
        self.register_sent(now, pn, size, true, SentFrames::default(), Probe::Mtu);
        let timeout = self.rto() * 2;
        self.timers.set(Timer::MtuProbe, now + timeout);
    }

    fn register_sent(
        &mut self,
        now: Instant,
        pn: u64,
        size: usize,
        ack_eliciting: bool,
        frames: SentFrames,
        probe: Probe,
    ) {
        let mtu_probe = probe == Probe::Mtu;
        let path_probe = probe == Probe::Path;
        let size = size as u64;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size;
        self.path.bytes_sent += size;
        self.arm_liveness(now);
        if !ack_eliciting {
            return;
        }
        self.stats.packets_ack_eliciting_sent += 1;
        self.unanswered_since.get_or_insert(now);
        let datagram_frames = self.datagrams.take_frames_in_packet();
        let stream_bytes: u64 = frames.stream.iter().map(|s| s.len).sum();
        self.stats.stream_bytes_sent += stream_bytes;
        let rate = self.delivery.on_sent(now, self.in_flight);
        self.in_flight += size;
        self.cc.on_sent(now, size, self.in_flight);
        self.pacer.on_sent(size);
        let packet = SentPacket {
            time: now,
            size: size as u32,
            ack_eliciting,
            frames,
            rate,
            stream_bytes,
            copied: false,
            mtu_probe,
            path_probe,
            path: self.path.addr,
            datagram_frames,
        };
        if !mtu_probe {
            self.paths.on_sent(self.path.addr, now);
        }
        self.sent.insert(pn, packet);
        if !mtu_probe && !path_probe {
            self.last_ack_eliciting_sent = Some(now);
            self.arm_rto(now);
        }
    }

    /// Processes an ACK frame.
    pub(super) fn on_ack_frame(&mut self, now: Instant, ack: &AckFrame) {
        let largest = ack.largest();
        if largest >= self.next_pn {
            // Acknowledging a packet we never sent: a broken or malicious peer.
            self.fail(
                now,
                super::error_code::PROTOCOL_VIOLATION,
                super::ConnectionError::ProtocolViolation("ACK for unsent packet".into()),
            );
            return;
        }
        let mut acked_bytes = 0u64;
        let mut acked_packets = 0u64;
        let mut newest_acked: Option<(u64, Instant, bool)> = None;
        for range in &ack.ranges {
            let spurious: Vec<u64> = self.recently_lost.range(range.clone()).copied().collect();
            for pn in spurious {
                self.recently_lost.remove(&pn);
                self.stats.packets_lost_spurious += 1;
            }
            let pns: Vec<u64> = self.sent.range(range.clone()).map(|(&pn, _)| pn).collect();
            for pn in pns {
                let Some(p) = self.sent.remove(&pn) else {
                    continue;
                };
                if newest_acked.is_none_or(|(n, _, _)| pn > n) {
                    newest_acked = Some((pn, p.time, p.ack_eliciting));
                }
                acked_bytes += u64::from(p.size);
                acked_packets += 1;
                if !p.copied && !p.mtu_probe && !p.path_probe {
                    self.loss_rate.observe(false);
                }
                self.in_flight = self.in_flight.saturating_sub(u64::from(p.size));
                self.delivery.on_acked(now, &p.rate, u64::from(p.size));
                self.streams.on_acked(&p.frames);
                self.paths
                    .on_acked(p.path, now, p.path_probe, u64::from(p.size));
                if p.mtu_probe {
                    self.pmtu.on_probe_acked(pn, now);
                } else {
                    self.pmtu.on_packet_acked(pn, datagram_size(p.size));
                }
            }
        }
        let Some((newest_pn, newest_time, eliciting)) = newest_acked else {
            return;
        };
        self.largest_acked = Some(self.largest_acked.map_or(largest, |l| l.max(largest)));
        if newest_pn == largest && eliciting {
            let delay = Duration::from_micros(ack.delay_us).min(self.config.max_ack_delay);
            self.rtt
                .update(delay, now.saturating_duration_since(newest_time));
        }
        self.rto_count = 0;
        self.probes = 0;
        let sample = self.delivery.take_sample();
        let summary = AckSummary {
            acked_bytes,
            acked_packets,
            sample,
        };
        self.detect_lost(now);
        self.cc.on_ack(now, &summary, &self.rtt, self.in_flight);
        // After the controller's update: a probe acknowledged here may have raised the size, and
        // the window must be floored in packets of the new size before anything is sent.
        self.sync_mtu();
        self.arm_rto(now);
    }

    /// Declares lost what the ACKs so far prove lost, and arms the loss timer for packets that
    /// may still turn out lost by time.
    pub(super) fn detect_lost(&mut self, now: Instant) {
        self.timers.stop(Timer::Loss);
        let Some(largest_acked) = self.largest_acked else {
            return;
        };
        let rtt = self.rtt.latest().max(self.rtt.get());
        let loss_delay = (rtt * 9 / 8).max(GRANULARITY);
        let threshold = self.config.reorder_threshold.max(1);
        let mut lost = Vec::new();
        let mut earliest_pending: Option<Instant> = None;
        for (&pn, p) in self.sent.range(..largest_acked) {
            // A reliable carrier loses nothing: a gap in the acknowledgements is reordering
            // (between its TCP connections, or against another path), and what is missing
            // will still arrive.
            if self.is_reliable(p.path) {
                continue;
            }
            let by_count = largest_acked - pn >= threshold;
            let by_time = now.saturating_duration_since(p.time) >= loss_delay;
            if by_count || by_time {
                lost.push(pn);
            } else {
                let due = p.time + loss_delay;
                earliest_pending = Some(earliest_pending.map_or(due, |e| e.min(due)));
            }
        }
        if let Some(due) = earliest_pending {
            self.timers.set(Timer::Loss, due);
        }
        self.declare_lost(now, &lost);
    }

    /// Hands the contents of lost packets back for retransmission. Lost MTU probes only count
    /// as probe failures; the other losses go to the congestion controller and the black-hole
    /// detector.
    fn declare_lost(&mut self, now: Instant, pns: &[u64]) {
        if pns.is_empty() {
            return;
        }
        let mut lost_bytes = 0u64;
        let mut lost_packets = Vec::with_capacity(pns.len());
        let mut newest_lost_time = None;
        for &pn in pns {
            let Some(p) = self.sent.remove(&pn) else {
                continue;
            };
            self.in_flight = self.in_flight.saturating_sub(u64::from(p.size));
            if p.mtu_probe {
                self.pmtu.on_probe_lost(pn, now);
                continue;
            }
            if p.path_probe {
                if self.paths.on_lost(p.path, now, true) {
                    self.stats.paths_abandoned += 1;
                }
                continue;
            }
            lost_packets.push((pn, datagram_size(p.size)));
            if self.paths.len() > 1 && self.paths.on_lost(p.path, now, false) {
                self.stats.paths_abandoned += 1;
            }
            lost_bytes += u64::from(p.size);
            newest_lost_time = Some(p.time);
            if !p.copied {
                self.loss_rate.observe(true);
            }
            self.stats.packets_lost += 1;
            self.stats.bytes_lost += u64::from(p.size);
            self.stats.stream_bytes_lost += p.stream_bytes;
            self.datagrams.stats.frames_lost += u64::from(p.datagram_frames);
            self.recently_lost.insert(pn);
            if self.recently_lost.len() > RECENTLY_LOST_MAX {
                self.recently_lost.pop_first();
            }
            if !p.frames.stream.is_empty() {
                self.stats.packets_retransmitted += 1;
            }
            self.streams.on_lost(&p.frames);
        }
        if let Some(t) = newest_lost_time {
            let count = lost_packets.len() as u64;
            self.cc.on_loss(now, lost_bytes, count, t, self.in_flight);
        }
        self.pmtu.on_packets_lost(&lost_packets);
        self.sync_mtu();
    }

    /// The MTU probe in flight was not acknowledged within its timeout: it is lost.
    pub(super) fn on_mtu_probe_timeout(&mut self, now: Instant) {
        if let Some(pn) = self.pmtu.probe_in_flight() {
            self.declare_lost(now, &[pn]);
        }
    }

    /// The retransmission timeout, with backoff for timeouts in a row.
    fn backed_off_rto(&self) -> Duration {
        let factor = self
            .config
            .rto_backoff
            .max(1.0)
            .powi(self.rto_count.min(16) as i32);
        self.rto().mul_f64(factor).min(self.config.max_rto)
    }

    /// Arms (or disarms) the retransmission timer from the last ack-eliciting packet sent.
    pub(super) fn arm_rto(&mut self, now: Instant) {
        // MTU probes have their own timer. At most one is in flight, so this stops early.
        let has_in_flight = self.sent.values().any(|p| !p.mtu_probe && !p.path_probe);
        match self.last_ack_eliciting_sent {
            Some(last) if has_in_flight => {
                let at = (last + self.backed_off_rto()).max(now);
                self.timers.set(Timer::Rto, at);
            }
            _ => self.timers.stop(Timer::Rto),
        }
    }

    /// Nothing was acknowledged for a whole timeout: declare overdue packets lost and probe.
    /// Of the packets sent on a reliable carrier only those older than [`RELIABLE_LOSS_AGE`]
    /// and [`RELIABLE_LOSS_RTTS`] round trips are: the probe mostly just asks for an ACK.
    pub(super) fn on_rto(&mut self, now: Instant) {
        let rto = self.backed_off_rto();
        let rtt = self.rtt.get().max(self.rtt.latest());
        let reliable_rto = rto.max(RELIABLE_LOSS_AGE).max(rtt * RELIABLE_LOSS_RTTS);
        let overdue: Vec<u64> = self
            .sent
            .iter()
            .filter(|(_, p)| {
                let after = if self.is_reliable(p.path) {
                    reliable_rto
                } else {
                    rto
                };
                !p.mtu_probe && now.saturating_duration_since(p.time) >= after
            })
            .map(|(&pn, _)| pn)
            .collect();
        self.rto_count = self.rto_count.saturating_add(1);
        self.declare_lost(now, &overdue);
        // Two probes, so that one more loss does not cost another timeout.
        self.probes = 2;
        if !self.streams.has_pending() {
            self.ping_pending = true;
        }
        // Keep the timer running from now so repeated silence keeps probing (with backoff).
        self.last_ack_eliciting_sent = Some(now);
        let at = now + self.backed_off_rto();
        self.timers.set(Timer::Rto, at);
    }
}

/// A sent packet's size as a datagram size (they never exceed `u16`; saturates otherwise).
fn datagram_size(size: u32) -> u16 {
    u16::try_from(size).unwrap_or(u16::MAX)
}
