//! Sending: deciding what goes into the next packet, within the congestion window, the pacer,
//! the anti-amplification budget and the MTU.

use std::time::Instant;

use super::{Connection, State, Timer};
use crate::frame::{self, CloseFrame, Frame};
use crate::packet;
use crate::shared::{PathAddr, Side, Transmit};
use crate::streams::SentFrames;

/// Most datagrams in flight before a tail packet for it to still be sent twice (see
/// `Connection::is_interactive_tail`).
const DUPLICATE_MAX_IN_FLIGHT: u64 = 4;

/// Estimated loss rate from which interactive tail packets go out three times instead of twice.
/// At 2 % loss two copies still lose an exchange in about 1 250 (both copies of the request or
/// of the answer); at 5 %, one in 200, which shows at the 99th percentile of request latency.
/// Three copies bring 5 % loss down to one exchange in 8 000.
const THIRD_COPY_LOSS_RATE: f64 = 0.02;

/// Full-size packets that may be in flight (counting the next one) before the pacer applies.
const UNPACED_IN_FLIGHT: u64 = 4;

/// Bytes of anti-amplification budget kept back for repeating a PATH_CHALLENGE: one small
/// packet (header, tag, the challenge, an ACK).
const CHALLENGE_RESERVE: u64 = 96;

/// Most bytes one transmit of several datagrams carries in all. A GSO send is limited to
/// 64 KiB including headers, so with large datagrams (a loopback path's 65 507 bytes) a
/// transmit holds fewer of them, down to one, whatever the caller allows.
pub const MAX_TRANSMIT_BYTES: usize = 60 * 1024;

/// What limits the next packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowance {
    /// Anything may be sent.
    Full,
    /// Only an ACK (the congestion window or the pacer says wait).
    AckOnly,
}

impl Connection {
    /// Writes the next datagram(s) into `buf` (cleared first). With `max_datagrams > 1`, several
    /// full-size packets to the same destination may be returned at once for GSO, never more
    /// than [`MAX_TRANSMIT_BYTES`] in all (a single datagram may be larger).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let transmit = self.poll_transmit_inner(now, max_datagrams, buf)?;
        if self.side == Side::Client && self.state == State::Established && self.paths.len() > 1 {
            // What each path was given, for its share (see `connection::multipath`); the
            // handshake is not counted: it would hold the first path back afterwards.
            self.paths.on_transmit(transmit.path(), transmit.size);
        }
        Some(transmit)
    }

    fn poll_transmit_inner(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        buf.clear();
        match self.state {
            State::Drained | State::Draining => return None,
            State::Handshaking => return self.transmit_initial(buf),
            State::Closing => return self.transmit_close(now, buf),
            State::Established => {}
        }
        self.sync_mtu();
        if self.side == Side::Client && self.paths.len() > 1 {
            // Spread over the client's paths, each batch to the path furthest behind its share
            // of the bytes; or, failing over, on the active carrier's paths with a probe now
            // and then on the others.
            self.paths
                .review(now, super::multipath::silent_after(self.rto()));
            let epoch = super::multipath::share_epoch(self.rtt.get());
            match self.paths.next_send(now, epoch) {
                Some(super::multipath::NextSend::Probe(addr)) => {
                    if let Some(t) = self.transmit_path_probe(now, buf, addr) {
                        return Some(t);
                    }
                }
                Some(super::multipath::NextSend::Data(next)) => {
                    // An open FEC group keeps its path until it closes (a group never spans
                    // paths, see `FecSender::group_path`; switching would close it early and
                    // cost a parity packet per data packet).
                    let next = self
                        .fec
                        .sender
                        .group_path()
                        .filter(|&p| self.paths.carries_data(p))
                        .unwrap_or(next);
                    self.path.addr = next;
                    if self.paths.needs_probe(next, now) {
                        self.ping_pending = true;
                    }
                }
                None => {}
            }
        }
        if let Some(t) = self.transmit_response(buf) {
            return Some(t);
        }
        if let Some(t) = self.transmit_candidate_challenge(buf) {
            return Some(t);
        }
        if let Some(t) = self.transmit_mtu_probe(now, buf) {
            return Some(t);
        }
        if let Some(t) = self.transmit_parity(now, buf) {
            return Some(t);
        }
        let in_flight_before = self.in_flight;
        let protect = self.fec_protects(in_flight_before);
        let mtu = self.fec_packet_limit(self.mtu(), protect);
        let batch = max_datagrams.min(MAX_TRANSMIT_BYTES / mtu.max(1)).max(1);
        let first_pn = self.next_pn;
        let stream_bytes_before = self.stats.stream_bytes_sent;
        let mut segment_size = None;
        let mut count = 0;
        while count < batch {
            let start = buf.len();
            let budget = self.path_budget().min(mtu as u64) as usize;
            if budget < packet::MIN_PACKET_LEN + 16 {
                break;
            }
            if !self.write_packet(now, buf, budget) {
                break;
            }
            count += 1;
            let size = buf.len() - start;
            match segment_size {
                None => segment_size = Some(size),
                Some(seg) if size == seg => {}
                // A shorter packet ends the batch (GSO needs equal sizes but for the last).
                Some(_) => break,
            }
            if size < mtu {
                break;
            }
        }
        if count == 0 {
            return None;
        }
        self.fec_after_batch(now, buf, first_pn, segment_size.unwrap_or(0), protect);
        let copies = self
            .tail_copies()
            .min(max_datagrams)
            .min(MAX_TRANSMIT_BYTES / buf.len().max(1));
        if count == 1
            && copies >= 2
            && !self.fec_sending()
            && self.stats.stream_bytes_sent > stream_bytes_before
            && self.is_interactive_tail(in_flight_before, buf.len())
        {
            return Some(self.duplicate_single(buf, copies));
        }
        Some(Transmit::to(
            self.path.addr,
            buf.len(),
            if count > 1 { segment_size } else { None },
        ))
    }

    /// Whether the packet of `size` bytes just built (carrying stream data) ends a short burst
    /// on a nearly idle connection: duplication is on, nothing else waits to be sent, and at
    /// most [`DUPLICATE_MAX_IN_FLIGHT`] datagrams were in flight before it.
    ///
    /// Such a packet has no successors whose acknowledgement would reveal its loss, so a loss
    /// costs a retransmission timeout (more than one RTT) on top of the round trip. Sending it
    /// twice turns a loss rate `p` into `p²` for request/response traffic, which is what keeps
    /// the tail latency of small exchanges near one RTT on lossy links. Bulk transfers never
    /// qualify (their in-flight data is far larger), so they pay nothing.
    fn is_interactive_tail(&self, in_flight_before: u64, size: usize) -> bool {
        self.config.duplicate_tail_packets
            && !self.on_reliable_path()
            && in_flight_before <= DUPLICATE_MAX_IN_FLIGHT * self.mtu() as u64
            && !self.streams.has_pending()
            && self.path.send_budget() >= size as u64
    }

    /// How many times an interactive tail packet goes out: twice, or three times on a path
    /// that loses [`THIRD_COPY_LOSS_RATE`] or more.
    fn tail_copies(&self) -> usize {
        if self.loss_rate.get() >= THIRD_COPY_LOSS_RATE {
            3
        } else {
            2
        }
    }

    /// Appends copies of the single datagram in `buf` (up to `copies` datagrams in all, as the
    /// amplification budget allows) and returns them as one GSO transmit. The peer drops later
    /// copies as replays; only the first counts as sent for congestion control, the copies count
    /// in the byte statistics and amplification budget.
    fn duplicate_single(&mut self, buf: &mut Vec<u8>, copies: usize) -> Transmit {
        let size = buf.len();
        if let Some(p) = self.sent.get_mut(&self.next_pn.saturating_sub(1)) {
            p.copied = true;
        }
        for _ in 1..copies {
            if self.path.send_budget() < size as u64 {
                break;
            }
            buf.extend_from_within(..size);
            self.stats.packets_sent += 1;
            self.stats.bytes_sent += size as u64;
            self.stats.packets_duplicated += 1;
            self.path.bytes_sent += size as u64;
        }
        Transmit::to(self.path.addr, buf.len(), Some(size))
    }

    fn transmit_initial(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        let client = self.client.as_mut()?;
        if client.initial_to.is_empty() {
            return None;
        }
        let to = client.initial_to.remove(0);
        buf.extend_from_slice(&client.initial);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += buf.len() as u64;
        Some(Transmit::to(to, buf.len(), None))
    }

    fn transmit_response(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.response_due {
            return None;
        }
        let response = self.response.as_ref()?;
        if (response.len() as u64) > self.path.send_budget() {
            return None;
        }
        self.response_due = false;
        buf.extend_from_slice(response);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += response.len() as u64;
        self.path.bytes_sent += response.len() as u64;
        Some(Transmit::to(self.path.addr, buf.len(), None))
    }

    /// A path MTU probe, if one is due and may go: stream data is waiting (a side that only
    /// acknowledges has no use for larger datagrams), the path is validated (no probes under the
    /// anti-amplification limit), no retransmission timeout is being recovered from, and the
    /// congestion window and pacer have room for it. The probe is one datagram of exactly the
    /// probe size: a PING (so it is acknowledged) and PADDING, with nothing to retransmit.
    fn transmit_mtu_probe(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.path.validated
            || self.probes > 0
            || self.rto_count > 0
            || self.keys.is_none()
            || !(self.streams.has_pending_data() || self.datagrams.has_pending())
        {
            return None;
        }
        // A probe far above the window would hold the window shut for data until it is declared
        // lost (two RTOs): with a loopback-sized ceiling and a small window nothing but probes
        // went out and the peer, hearing nothing, was declared dead. A quarter of the window
        // keeps data flowing; the window grows quickly on a path that carries large packets.
        let window_share = u16::try_from(self.cc.window() / 4).unwrap_or(u16::MAX);
        let size = self.pmtu.probe_due(now, window_share)?;
        let len = usize::from(size);
        // The same window and pacer test as a data packet of the current size: a probe may
        // exceed both by its few extra bytes. Testing the probe's own size let data packets (a
        // few bytes smaller) take every opening, so the probe never went out.
        if self.allowance(now, self.mtu()) != Allowance::Full {
            return None;
        }
        let start = packet::begin(buf);
        Frame::Ping.encode(buf);
        // PADDING frames are single zero bytes.
        buf.resize(start + len - packet::TAG_LEN, 0);
        let pn = self.next_pn;
        self.seal(buf, start, pn);
        self.pmtu.on_probe_sent(pn, size);
        self.on_mtu_probe_sent(now, pn, buf.len() - start);
        Some(Transmit::to(self.path.addr, buf.len(), None))
    }

    /// A failover client's probe of standby path `addr`: a PATH_CHALLENGE (ack-eliciting, and
    /// a probing frame, so the server answers without moving its traffic there) and padding,
    /// nothing else. The packet goes out whatever the congestion window says: about one small
    /// packet a second per standby path.
    fn transmit_path_probe(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        addr: PathAddr,
    ) -> Option<Transmit> {
        self.keys.as_ref()?;
        let data = self.new_challenge();
        let start = packet::begin(buf);
        Frame::PathChallenge(data).encode(buf);
        while buf.len() < start + packet::HEADER_LEN + 4 {
            Frame::Padding.encode(buf);
        }
        let pn = self.next_pn;
        self.seal(buf, start, pn);
        let active = std::mem::replace(&mut self.path.addr, addr);
        self.on_path_probe_sent(now, pn, buf.len() - start);
        self.path.addr = active;
        Some(Transmit::to(addr, buf.len(), None))
    }

    fn transmit_close(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.close_pending {
            return None;
        }
        self.close_pending = false;
        let reason = self.close_reason.clone()?;
        let budget = self.path.send_budget().min(self.mtu() as u64) as usize;
        let start = packet::begin(buf);
        let frame = Frame::Close(CloseFrame {
            application: reason.application,
            error_code: reason.code,
            reason: &reason.reason,
        });
        frame.encode(buf);
        if buf.len() + packet::TAG_LEN > budget {
            buf.clear();
            return None;
        }
        let pn = self.next_pn;
        self.seal(buf, start, pn);
        self.on_packet_sent(now, pn, buf.len() - start, false, SentFrames::default());
        Some(Transmit::to(self.path.addr, buf.len(), None))
    }

    /// Seals the packet `pn` that starts at `start`.
    pub(super) fn seal(&mut self, buf: &mut Vec<u8>, start: usize, pn: u64) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        packet::seal(&self.header_key, keys, self.peer_cid, pn, buf, start);
        self.next_pn = pn + 1;
    }

    /// Bytes the next packet may use on the current path. While the path waits for an answer to
    /// a PATH_CHALLENGE that has gone out, a small reserve of the anti-amplification budget is
    /// kept for repeating the challenge, so data cannot use up the budget and leave the path
    /// unvalidated until the peer happens to send again.
    pub(super) fn path_budget(&self) -> u64 {
        let budget = self.path.send_budget();
        let waiting = !self.path.validated && self.path.challenge.is_some();
        if waiting && !self.path.challenge_pending {
            budget.saturating_sub(CHALLENGE_RESERVE)
        } else {
            budget
        }
    }

    /// Whether the congestion window and pacer let a full packet go now.
    fn allowance(&mut self, now: Instant, mtu: usize) -> Allowance {
        // On a reliable carrier TCP's controller decides; the carrier's queue pushes back.
        if self.probes > 0 || self.on_reliable_path() {
            return Allowance::Full;
        }
        // With nothing in flight one packet always may go: a window smaller than one packet
        // (BBR's ProbeRTT floor is 4 packets of the size it was made with, and a route-sized
        // ceiling can make a packet 64 KB) must not stop the connection, which then sent
        // nothing, waited on nothing, and ended at the idle timeout.
        if self.in_flight > 0 && self.in_flight + mtu as u64 > self.cc.window() {
            return Allowance::AckOnly;
        }
        if self.in_flight + mtu as u64 <= UNPACED_IN_FLIGHT * self.mtu() as u64 {
            // Next to nothing in flight: no burst to spread. An app-limited flow (voice, games,
            // a UDP echo) is what the rate estimate measured, so pacing at that estimate (or
            // below it, in a drain phase) would hold its own packets back by tens of ms.
            return Allowance::Full;
        }
        let rate = self.pacing_rate();
        match self.pacer.delay(now, mtu as u64, rate) {
            None => Allowance::Full,
            Some(at) => {
                self.timers.set(Timer::Pacing, at);
                Allowance::AckOnly
            }
        }
    }

    /// Sending rate in bytes per second: the controller's, or the window spread over an RTT.
    pub(super) fn pacing_rate(&self) -> u64 {
        if let Some(rate) = self.cc.pacing_rate(&self.rtt) {
            return rate;
        }
        let window = match self.cc.window() {
            u64::MAX => self
                .streams
                .peer_window_estimate()
                .max(self.mtu() as u64 * 4),
            w => w,
        };
        let rtt = self.rtt.get().as_secs_f64().max(0.001);
        ((window as f64 * 1.25) / rtt) as u64
    }

    /// Appends one packet to `buf` if there is anything to send. Returns whether it did.
    fn write_packet(&mut self, now: Instant, buf: &mut Vec<u8>, budget: usize) -> bool {
        let allowance = self.allowance(now, budget);
        let ack_due = self.ack.ack_needed && self.ack.immediate;
        let has_data = self.streams.has_pending() || self.datagrams.has_pending();
        let wants_eliciting = has_data
            || self.ping_pending
            || self.probes > 0
            || self.path.challenge_pending
            || !self.path_responses.is_empty();
        let can_elicit = wants_eliciting && allowance == Allowance::Full;
        // A PATH_RESPONSE goes out even when the window is full: the server waits for it before
        // it sends to our new address, so holding it back could stall us until an RTO.
        let urgent_response = !self.path_responses.is_empty();
        if !ack_due && !can_elicit && !urgent_response {
            if !has_data && allowance == Allowance::Full {
                // Nothing to send although we could: rate samples taken now understate the
                // path, and the controller must know.
                self.delivery.on_app_limited(self.in_flight);
            }
            return false;
        }
        let start = packet::begin(buf);
        let limit = start + budget - packet::TAG_LEN;
        // An ACK rides along whenever one is owed, delayed or not.
        if self.ack.ack_needed {
            let delay_us = self
                .ack
                .delay(now)
                .as_micros()
                .try_into()
                .unwrap_or(u64::MAX);
            let room = limit.saturating_sub(buf.len());
            if frame::encode_ack(
                &self.ack.received,
                delay_us,
                super::ack::MAX_ACK_RANGES,
                room,
                buf,
            ) {
                self.ack.on_ack_sent(now);
                self.timers.stop(Timer::Ack);
            }
        }
        let mut sent = SentFrames::default();
        let mut eliciting = false;
        if allowance == Allowance::Full {
            let packet_room = limit.saturating_sub(start + packet::HEADER_LEN);
            eliciting = self.write_eliciting_frames(now, buf, limit, packet_room, &mut sent);
        } else if !self.path_responses.is_empty() {
            self.write_path_responses(buf, limit);
            eliciting = true;
        }
        if buf.len() == start + packet::HEADER_LEN {
            buf.truncate(start);
            return false;
        }
        // The header mask samples 16 ciphertext bytes; tiny payloads are padded to reach them.
        while buf.len() < start + packet::HEADER_LEN + 4 {
            Frame::Padding.encode(buf);
        }
        let pn = self.next_pn;
        self.seal(buf, start, pn);
        if eliciting {
            self.probes = self.probes.saturating_sub(1);
            self.ping_pending = false;
            if let Some(interval) = self.config.keepalive_interval {
                self.timers.set(Timer::Keepalive, now + interval);
            }
        }
        self.on_packet_sent(now, pn, buf.len() - start, eliciting, sent);
        true
    }

    /// Path frames, stream control frames, datagrams, then stream data. Returns whether any was
    /// written. Datagrams go before stream data: whoever chose them did so for latency, and
    /// the congestion window bounds what they can take.
    fn write_eliciting_frames(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        limit: usize,
        packet_room: usize,
        sent: &mut SentFrames,
    ) -> bool {
        let before = buf.len();
        self.write_path_responses(buf, limit);
        if self.path.challenge_pending {
            if let Some(data) = self.path.challenge {
                Frame::PathChallenge(data).encode(buf);
                // Repeated until answered: a lost challenge must not leave the path unvalidated
                // (and limited by the amplification budget) for good.
                self.timers.set(Timer::PathChallenge, now + self.rto());
            }
            self.path.challenge_pending = false;
        }
        self.streams.write_control(buf, limit, sent);
        self.datagrams.write(buf, limit, packet_room);
        self.streams.write_stream_data(buf, limit, sent);
        if buf.len() == before && (self.ping_pending || self.probes > 0) {
            Frame::Ping.encode(buf);
        }
        buf.len() > before
    }

    /// As many pending PATH_RESPONSEs as fit before `limit` (oldest first).
    fn write_path_responses(&mut self, buf: &mut Vec<u8>, limit: usize) {
        /// A PATH_RESPONSE frame: type and 8 bytes.
        const LEN: usize = 9;
        let fit = limit.saturating_sub(buf.len()) / LEN;
        let n = fit.min(self.path_responses.len());
        for data in self.path_responses.drain(..n) {
            Frame::PathResponse(data).encode(buf);
        }
    }
}
