//! One fake-TCP flow: the handshake, sequence and acknowledgement numbers, timestamps, the
//! periodic ACK and the timers. Sans-IO (explicit `now`), so every rule is unit-tested.
//!
//! What a middlebox must see to keep the flow (the faults of rsock, phantun and udp2raw in the
//! issue are the reasons behind each rule):
//! - a three-way handshake with a random ISN and Linux's SYN options (MSS, SACK-permitted,
//!   timestamps, window scale): conntrack only enables window scaling when both SYN and SYN-ACK
//!   carry the option, and without scaling a fast flow leaves the 64 KiB window and is INVALID;
//! - each segment's sequence number inside the window the other side last advertised, so the
//!   receiver must ACK now and then: we ACK when `ack_bytes` arrived unacknowledged or
//!   `ack_delay` after the first unacknowledged byte, not once per segment (rsock's waste);
//! - acknowledgements of data only as far as we received it (never ahead of the sender), which
//!   conntrack checks too;
//! - something in each direction every `keepalive`, so NAT mappings do not time out.
//!
//! gaptun retransmits on its own; every datagram is a new segment with new sequence numbers,
//! and a lost segment simply leaves a hole we acknowledge across (the cumulative ACK jumps).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::packet::{ACK, FIN, Header, PSH, RST, SYN, Segment, seq_before};

/// Our advertised window: the field's largest value at window scale 9, 32 MiB. Big enough
/// that the data sent between two of our ACKs (at most `ack_bytes` plus one round trip at
/// the sender's rate) always stays inside it for conntrack, up to a gigabit at 250 ms.
const WINDOW_FIELD: u16 = 0xffff;
const WINDOW_SCALE: u8 = 9;
/// MSS we announce by default: Ethernet's 1500 minus IPv4 and TCP headers, as Linux does.
const MSS_V4: u16 = 1460;
/// The same over IPv6 (its header is 20 bytes longer).
const MSS_V6: u16 = 1440;
/// Smallest MSS we announce (IPv4's minimum datagram of 576 less headers).
const MIN_MSS: u16 = 536;
/// Sequence distance beyond which a segment is taken as not ours (RST) or not moving our
/// acknowledgement: far more than any window, far less than half the space.
const SANE_DISTANCE: u32 = 1 << 30;

/// The timers of a flow; the defaults suit the Internet, tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Longest wait before acknowledging received data with an empty segment.
    pub ack_delay: Duration,
    /// Unacknowledged bytes that trigger an empty ACK at once.
    pub ack_bytes: u32,
    /// Longest silence in our direction: then an empty ACK goes out (keeps NAT mappings).
    pub keepalive: Duration,
    /// Silence from the peer after which the flow is taken for dead (mapping timed out, peer
    /// gone): the client reconnects, the server forgets the flow.
    pub idle_timeout: Duration,
    /// First SYN retransmission timeout (doubles each time, as Linux's 1 s initial RTO).
    pub syn_rto: Duration,
    /// SYN retransmissions before the attempt is given up.
    pub syn_retries: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ack_delay: Duration::from_millis(40),
            ack_bytes: 256 * 1024,
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            syn_rto: Duration::from_secs(1),
            syn_retries: 4,
        }
    }
}

/// The segments a flow sends on its own, besides data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Syn,
    SynAck,
    Ack,
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The peer or a middlebox sent a RST.
    Reset,
    /// The peer or a middlebox sent a FIN.
    Fin,
    /// No SYN-ACK (client) or final ACK (server) in time.
    HandshakeTimeout,
    /// Nothing heard for `idle_timeout`.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SynSent { retries: u32, next: Instant },
    SynReceived,
    Established,
    Closed(CloseReason),
}

/// What receiving a segment asks of the caller.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The payload is ours: hand it up.
    pub deliver: bool,
    /// Send this right away.
    pub reply: Option<Control>,
    /// The flow became established with this segment.
    pub established: bool,
    /// The flow ended with this segment.
    pub closed: Option<CloseReason>,
    /// A delayed ACK was scheduled: the timers must run sooner than they planned.
    pub ack_scheduled: bool,
}

/// One flow's state. The caller owns the addresses' socket and sends what the flow builds.
#[derive(Debug)]
pub(crate) struct Flow {
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    timing: Timing,
    created: Instant,
    /// Our initial sequence number.
    iss: u32,
    /// The peer's initial sequence number (known after its SYN).
    irs: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    /// Random per-flow offset of our timestamp clock, as Linux randomises it.
    ts_offset: u32,
    ts_recent: u32,
    ip_id: u16,
    /// IPv6 flow label: random, fixed for the flow (Linux hashes the flow into one).
    flow_label: u32,
    /// The MSS our SYN or SYN-ACK announces.
    mss: u16,
    last_recv: Instant,
    last_send: Instant,
    ack_owed: u32,
    ack_due: Option<Instant>,
}

impl Flow {
    /// A client flow: the SYN is due at once (`Control::Syn`; the caller sends it).
    pub(crate) fn connect(
        local: SocketAddr,
        remote: SocketAddr,
        timing: Timing,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Self {
        let iss = rng.random();
        let mut flow = Self::new(local, remote, timing, now, iss, rng);
        flow.state = State::SynSent {
            retries: 0,
            next: now + timing.syn_rto,
        };
        flow
    }

    /// A server flow from the client's SYN; the caller sends `Control::SynAck`.
    pub(crate) fn accept(
        syn: &Segment<'_>,
        timing: Timing,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Self {
        let iss = rng.random();
        let mut flow = Self::new(syn.dst, syn.src, timing, now, iss, rng);
        flow.state = State::SynReceived;
        flow.irs = syn.seq;
        flow.rcv_nxt = syn.seq.wrapping_add(1);
        flow.ts_recent = syn.tsval.unwrap_or(0);
        flow.last_recv = now;
        flow
    }

    fn new(
        local: SocketAddr,
        remote: SocketAddr,
        timing: Timing,
        now: Instant,
        iss: u32,
        rng: &mut impl Rng,
    ) -> Self {
        Self {
            local,
            remote,
            state: State::Closed(CloseReason::HandshakeTimeout),
            timing,
            created: now,
            iss,
            irs: 0,
            snd_nxt: iss.wrapping_add(1),
            rcv_nxt: 0,
            ts_offset: rng.random(),
            ts_recent: 0,
            ip_id: rng.random(),
            flow_label: rng.random_range(1..=0x000f_ffff),
            mss: if remote.is_ipv6() { MSS_V6 } else { MSS_V4 },
            last_recv: now,
            last_send: now,
            ack_owed: 0,
            ack_due: None,
        }
    }

    /// Sets the MSS the handshake announces (Linux announces the route's MTU less the
    /// headers: 1460 on Ethernet, 65 483 on loopback); call before the SYN or SYN-ACK is
    /// written. Our segments are never longer than the route allows, whatever the peer
    /// announced: gaptun's datagram ceiling keeps them so.
    pub(crate) fn set_mss(&mut self, mss: u16) {
        self.mss = mss.max(MIN_MSS);
    }

    /// The unscaled window of our SYN or SYN-ACK: the largest multiple of the MSS that fits
    /// the field, as Linux starts (64 240 for a 1460-byte MSS, 64 800 for 1440).
    fn syn_window(&self) -> u16 {
        (u16::MAX / self.mss) * self.mss
    }

    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    pub(crate) fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The peer's initial sequence number (a SYN with another one is a new connection).
    pub(crate) fn irs(&self) -> u32 {
        self.irs
    }

    pub(crate) fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub(crate) fn closed(&self) -> Option<CloseReason> {
        match self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Takes in a segment of this flow (addresses already matched by the caller).
    pub(crate) fn on_segment(&mut self, seg: &Segment<'_>, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        match self.state {
            State::Closed(_) => return out,
            State::SynSent { .. } => {
                if seg.flags & ACK == 0 || seg.ack != self.iss.wrapping_add(1) {
                    return out;
                }
                if seg.flags & RST != 0 {
                    return self.close(CloseReason::Reset);
                }
                if seg.flags & SYN == 0 {
                    return out;
                }
                self.irs = seg.seq;
                self.rcv_nxt = seg.seq.wrapping_add(1);
                self.note_timestamp(seg);
                self.last_recv = now;
                self.state = State::Established;
                out.established = true;
                out.reply = Some(Control::Ack);
                return out;
            }
            State::SynReceived => {
                if seg.flags & RST != 0 {
                    return self.close(CloseReason::Reset);
                }
                if seg.flags & SYN != 0 {
                    // The client did not get our SYN-ACK: say it again.
                    if seg.seq == self.irs {
                        out.reply = Some(Control::SynAck);
                    }
                    return out;
                }
                if seg.flags & ACK == 0 || seq_before(seg.ack, self.iss.wrapping_add(1)) {
                    return out;
                }
                self.state = State::Established;
                out.established = true;
            }
            State::Established => {}
        }

        if seg.flags & RST != 0 {
            // Only a RST near where we are is taken (RFC 5961's idea; a middlebox's RST
            // carries the sequence number we acknowledged last).
            if seg
                .seq
                .wrapping_sub(self.rcv_nxt)
                .wrapping_add(SANE_DISTANCE)
                < 2 * SANE_DISTANCE
            {
                return self.close(CloseReason::Reset);
            }
            return out;
        }
        if seg.flags & SYN != 0 {
            // A repeated SYN-ACK (our handshake ACK was lost) or SYN: acknowledge again.
            out.reply = Some(Control::Ack);
            return out;
        }
        self.last_recv = now;
        self.note_timestamp(seg);
        if seg.flags & FIN != 0 {
            let mut closed = self.close(CloseReason::Fin);
            closed.established = out.established;
            return closed;
        }
        if !seg.payload.is_empty() {
            let end = seg.seq.wrapping_add(seg.payload.len() as u32);
            if seq_before(self.rcv_nxt, end) && end.wrapping_sub(self.rcv_nxt) < SANE_DISTANCE {
                self.rcv_nxt = end;
            }
            self.ack_owed = self.ack_owed.saturating_add(seg.payload.len() as u32);
            if self.ack_owed >= self.timing.ack_bytes {
                out.reply = Some(Control::Ack);
            } else if self.ack_due.is_none() {
                self.ack_due = Some(now + self.timing.ack_delay);
                out.ack_scheduled = true;
            }
            out.deliver = true;
        }
        out
    }

    fn close(&mut self, reason: CloseReason) -> Outcome {
        self.state = State::Closed(reason);
        Outcome {
            closed: Some(reason),
            ..Outcome::default()
        }
    }

    fn note_timestamp(&mut self, seg: &Segment<'_>) {
        if let Some(tsval) = seg.tsval
            && !seq_before(tsval, self.ts_recent)
        {
            self.ts_recent = tsval;
        }
    }

    /// When [`Flow::on_timeout`] next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Closed(_) => None,
            State::SynSent { next, .. } => Some(next),
            State::SynReceived => Some(self.created + self.handshake_limit()),
            State::Established => {
                let mut at = (self.last_send + self.timing.keepalive)
                    .min(self.last_recv + self.timing.idle_timeout);
                if let Some(due) = self.ack_due {
                    at = at.min(due);
                }
                Some(at)
            }
        }
    }

    /// How long a server waits for the handshake's last ACK: as long as the client retries.
    fn handshake_limit(&self) -> Duration {
        self.timing.syn_rto * ((1 << self.timing.syn_retries.min(10)) * 2)
    }

    /// Runs the timers: a segment to send, or the flow closed (see [`Flow::closed`]).
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Option<Control> {
        match self.state {
            State::Closed(_) => None,
            State::SynSent { retries, next } => {
                if now < next {
                    return None;
                }
                if retries >= self.timing.syn_retries {
                    self.state = State::Closed(CloseReason::HandshakeTimeout);
                    return None;
                }
                let retries = retries + 1;
                self.state = State::SynSent {
                    retries,
                    next: now + self.timing.syn_rto * (1 << retries.min(10)),
                };
                Some(Control::Syn)
            }
            State::SynReceived => {
                if now >= self.created + self.handshake_limit() {
                    self.state = State::Closed(CloseReason::HandshakeTimeout);
                }
                None
            }
            State::Established => {
                if now >= self.last_recv + self.timing.idle_timeout {
                    self.state = State::Closed(CloseReason::Idle);
                    return None;
                }
                let ack_due = self.ack_due.is_some_and(|due| now >= due);
                if ack_due || now >= self.last_send + self.timing.keepalive {
                    return Some(Control::Ack);
                }
                None
            }
        }
    }

    /// Writes a control segment into `out`; the flow counts it as sent.
    pub(crate) fn write_control(&mut self, control: Control, now: Instant, out: &mut Vec<u8>) {
        let (flags, seq, ack, window, syn_options) = match control {
            Control::Syn => (
                SYN,
                self.iss,
                0,
                self.syn_window(),
                Some((self.mss, WINDOW_SCALE)),
            ),
            Control::SynAck => (
                SYN | ACK,
                self.iss,
                self.rcv_nxt,
                self.syn_window(),
                Some((self.mss, WINDOW_SCALE)),
            ),
            Control::Ack => (ACK, self.snd_nxt, self.rcv_nxt, WINDOW_FIELD, None),
        };
        let header = Header {
            src: self.local,
            dst: self.remote,
            ip_id: self.next_ip_id(),
            seq,
            ack,
            flags,
            window,
            timestamps: Some((self.tsval(now), self.ts_recent)),
            syn_options,
        };
        crate::packet::build(&header, &[], out);
        if control == Control::Ack {
            self.acknowledged();
        }
        self.last_send = now;
    }

    /// Writes `payload` as the next data segment into `out`. Nothing changes until
    /// [`Flow::commit_data`] (the send may still fail with `WouldBlock`).
    pub(crate) fn write_data(&self, payload: &[u8], now: Instant, out: &mut Vec<u8>) {
        let header = Header {
            src: self.local,
            dst: self.remote,
            ip_id: self.header_id(),
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags: ACK | PSH,
            window: WINDOW_FIELD,
            timestamps: Some((self.tsval(now), self.ts_recent)),
            syn_options: None,
        };
        crate::packet::build(&header, payload, out);
    }

    /// The data segment written by [`Flow::write_data`] went out: it used sequence space and
    /// carried our acknowledgement.
    pub(crate) fn commit_data(&mut self, len: usize, now: Instant) {
        self.snd_nxt = self.snd_nxt.wrapping_add(len as u32);
        self.ip_id = self.ip_id.wrapping_add(1);
        self.acknowledged();
        self.last_send = now;
    }

    /// Where sending stands now, to [`Flow::rewind`] to when segments written since were not
    /// sent after all.
    pub(crate) fn send_mark(&self) -> SendMark {
        SendMark {
            snd_nxt: self.snd_nxt,
            ip_id: self.ip_id,
            last_send: self.last_send,
            ack_owed: self.ack_owed,
            ack_due: self.ack_due,
        }
    }

    /// Forgets the data segments committed since `mark` was taken: their sequence space is
    /// used again, as if they had never been written.
    pub(crate) fn rewind(&mut self, mark: SendMark) {
        self.snd_nxt = mark.snd_nxt;
        self.ip_id = mark.ip_id;
        self.last_send = mark.last_send;
        self.ack_owed = mark.ack_owed;
        self.ack_due = mark.ack_due;
    }

    fn acknowledged(&mut self) {
        self.ack_owed = 0;
        self.ack_due = None;
    }

    /// The IP header's identification field of the next segment (IPv4: one more per
    /// segment, as Linux counts per flow) or its flow label (IPv6: the same for the flow).
    fn header_id(&self) -> u32 {
        if self.remote.is_ipv6() {
            self.flow_label
        } else {
            u32::from(self.ip_id)
        }
    }

    fn next_ip_id(&mut self) -> u32 {
        let id = self.header_id();
        self.ip_id = self.ip_id.wrapping_add(1);
        id
    }

    /// Milliseconds since the flow began, plus the random offset.
    fn tsval(&self, now: Instant) -> u32 {
        let ms = now.saturating_duration_since(self.created).as_millis() as u32;
        self.ts_offset.wrapping_add(ms)
    }
}

/// A flow's sending state at one moment (see [`Flow::send_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendMark {
    snd_nxt: u32,
    ip_id: u16,
    last_send: Instant,
    ack_owed: u32,
    ack_due: Option<Instant>,
}

/// What [`send_data_batch`] did.
#[derive(Debug, Default)]
pub(crate) struct BatchSent {
    /// Segments that went (the first ones of the batch).
    pub segments: usize,
    /// Their payload bytes.
    pub payload_bytes: usize,
    /// Their whole IP packets' bytes.
    pub wire_bytes: usize,
    /// Why the rest did not go (`None` when all went).
    pub error: Option<std::io::Error>,
}

/// Writes `contents`, cut into datagrams of `segment_size` bytes (the last may be shorter;
/// empty contents are one empty datagram), as consecutive data segments of `flow`, one per
/// buffer of `bufs`, and hands them to `send`, which returns how many of the segments it was
/// given went out (as `sendmmsg` does: the first ones, or an error when not even the first).
/// `send` is called again for the rest until all went or it fails; the flow is then left as
/// if only the segments that went had been written, so the next segment follows them in
/// sequence space with no hole.
pub(crate) fn send_data_batch(
    flow: &mut Flow,
    contents: &[u8],
    segment_size: usize,
    now: Instant,
    bufs: &mut Vec<Vec<u8>>,
    mut send: impl FnMut(&[Vec<u8>]) -> std::io::Result<usize>,
) -> BatchSent {
    let size = segment_size.max(1);
    let count = if contents.is_empty() {
        1
    } else {
        contents.len().div_ceil(size)
    };
    let chunk = |i: usize| contents.get(i * size..((i + 1) * size).min(contents.len()));
    if bufs.len() < count {
        bufs.resize_with(count, Vec::new);
    }
    let mark = flow.send_mark();
    for (i, buf) in bufs.iter_mut().enumerate().take(count) {
        let payload = chunk(i).unwrap_or_default();
        flow.write_data(payload, now, buf);
        flow.commit_data(payload.len(), now);
    }
    let mut result = BatchSent::default();
    while result.segments < count {
        match send(&bufs[result.segments..count]) {
            Ok(0) => {
                result.error = Some(std::io::ErrorKind::WriteZero.into());
                break;
            }
            Ok(n) => result.segments = (result.segments + n).min(count),
            Err(e) => {
                result.error = Some(e);
                break;
            }
        }
    }
    if result.segments < count {
        flow.rewind(mark);
        for i in 0..result.segments {
            flow.commit_data(chunk(i).map_or(0, <[u8]>::len), now);
        }
    }
    for (i, buf) in bufs.iter().enumerate().take(result.segments) {
        result.payload_bytes += chunk(i).map_or(0, <[u8]>::len);
        result.wire_bytes += buf.len();
    }
    result
}

/// The RST a server sends for a segment of a flow it does not know (as the kernel would):
/// it tells a client that survived our restart to start over at once.
pub(crate) fn reset_for(seg: &Segment<'_>, out: &mut Vec<u8>) {
    let (seq, ack, flags) = if seg.flags & ACK != 0 {
        (seg.ack, 0, RST)
    } else {
        let len = seg.payload.len() as u32 + u32::from(seg.flags & (SYN | FIN) != 0);
        (0, seg.seq.wrapping_add(len), RST | ACK)
    };
    let header = Header {
        src: seg.dst,
        dst: seg.src,
        ip_id: 0,
        seq,
        ack,
        flags,
        window: 0,
        timestamps: None,
        syn_options: None,
    };
    crate::packet::build(&header, &[], out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn client_addr() -> SocketAddr {
        "10.0.0.1:40000".parse().expect("address")
    }

    fn server_addr() -> SocketAddr {
        "10.0.0.2:10001".parse().expect("address")
    }

    /// Builds `control` from `flow` and returns the bytes (to parse as the peer).
    fn control(flow: &mut Flow, control: Control, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        flow.write_control(control, now, &mut out);
        out
    }

    fn data(flow: &mut Flow, payload: &[u8], now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        flow.write_data(payload, now, &mut out);
        flow.commit_data(payload.len(), now);
        out
    }

    fn handshake(now: Instant) -> (Flow, Flow) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut client = Flow::connect(
            client_addr(),
            server_addr(),
            Timing::default(),
            now,
            &mut rng,
        );
        let syn = control(&mut client, Control::Syn, now);
        let syn_seg = parse(&syn).expect("syn parses");
        assert_eq!(syn_seg.flags, SYN);
        assert_eq!(
            (syn_seg.mss, syn_seg.wscale),
            (Some(MSS_V4), Some(WINDOW_SCALE))
        );
        let mut server = Flow::accept(&syn_seg, Timing::default(), now, &mut rng);
        let synack = control(&mut server, Control::SynAck, now);
        let synack_seg = parse(&synack).expect("syn-ack parses");
        assert_eq!(synack_seg.ack, syn_seg.seq.wrapping_add(1));
        let outcome = client.on_segment(&synack_seg, now);
        assert!(outcome.established);
        assert_eq!(outcome.reply, Some(Control::Ack));
        let ack = control(&mut client, Control::Ack, now);
        let outcome = server.on_segment(&parse(&ack).expect("ack parses"), now);
        assert!(outcome.established && !outcome.deliver);
        (client, server)
    }

    #[test]
    fn handshake_then_data_advances_numbers() {
        let now = Instant::now();
        let (mut client, mut server) = handshake(now);
        let first = data(&mut client, &[1; 1000], now);
        let second = data(&mut client, &[2; 500], now);
        let a = parse(&first).expect("parses");
        let b = parse(&second).expect("parses");
        assert_eq!(b.seq, a.seq.wrapping_add(1000));
        assert_eq!(a.seq, client.iss.wrapping_add(1));
        // The server takes both; its ACK covers exactly what arrived.
        assert!(server.on_segment(&a, now).deliver);
        assert!(server.on_segment(&b, now).deliver);
        let ack_bytes = control(&mut server, Control::Ack, now);
        let ack = parse(&ack_bytes).expect("parses");
        assert_eq!(ack.ack, b.seq.wrapping_add(500));
        assert_eq!(ack.window, WINDOW_FIELD);
        // Timestamps echo the peer's latest.
        assert_eq!(ack.tsecr, b.tsval);
    }

    #[test]
    fn ack_is_delayed_not_per_packet_and_forced_by_bytes() {
        let start = Instant::now();
        let (mut client, mut server) = handshake(start);
        let seg = data(&mut client, &[0; 1400], start);
        let outcome = server.on_segment(&parse(&seg).expect("parses"), start);
        assert_eq!(outcome.reply, None, "no ACK per segment");
        assert_eq!(server.on_timeout(start + Duration::from_millis(10)), None);
        assert_eq!(
            server.on_timeout(start + Duration::from_millis(40)),
            Some(Control::Ack)
        );
        control(&mut server, Control::Ack, start + Duration::from_millis(40));
        assert_eq!(server.on_timeout(start + Duration::from_millis(80)), None);

        // 256 KiB unacknowledged: an ACK at once.
        let mut replies = 0;
        for _ in 0..200 {
            let seg = data(&mut client, &[0; 1400], start);
            if server
                .on_segment(&parse(&seg).expect("parses"), start)
                .reply
                == Some(Control::Ack)
            {
                replies += 1;
                control(&mut server, Control::Ack, start);
            }
        }
        assert_eq!(replies, 1, "one ACK for 280 KB");
    }

    #[test]
    fn data_sent_acknowledges_and_keepalive_follows_silence() {
        let start = Instant::now();
        let (mut client, mut server) = handshake(start);
        let seg = data(&mut client, b"ping", start);
        server.on_segment(&parse(&seg).expect("parses"), start);
        // The reply carries the ACK: no empty ACK afterwards.
        let reply_bytes = data(&mut server, b"pong", start);
        let reply = parse(&reply_bytes).expect("parses");
        assert_eq!(reply.ack, parse(&seg).expect("parses").seq.wrapping_add(4));
        assert_eq!(server.on_timeout(start + Duration::from_millis(100)), None);
        // Ten seconds of silence from us: an empty ACK keeps the mapping.
        let later = start + Timing::default().keepalive;
        assert_eq!(client.on_timeout(later), Some(Control::Ack));
    }

    #[test]
    fn lost_segment_leaves_a_hole_the_ack_jumps() {
        let now = Instant::now();
        let (mut client, mut server) = handshake(now);
        let _lost = data(&mut client, &[0; 100], now);
        let late = parse(&data(&mut client, &[0; 100], now))
            .expect("parses")
            .seq;
        let seg = data(&mut client, &[0; 100], now);
        let seg = {
            let mut s = parse(&seg).expect("parses");
            s.seq = late;
            s.payload = &[0; 100];
            s
        };
        assert!(server.on_segment(&seg, now).deliver);
        let ack_bytes = control(&mut server, Control::Ack, now);
        let ack = parse(&ack_bytes).expect("parses");
        assert_eq!(ack.ack, late.wrapping_add(100));
    }

    #[test]
    fn rst_and_fin_close_the_flow() {
        let now = Instant::now();
        let (mut client, mut server) = handshake(now);
        let mut out = Vec::new();
        let seg = data(&mut client, b"x", now);
        reset_for(&parse(&seg).expect("parses"), &mut out);
        let rst = parse(&out).expect("parses");
        assert_eq!(rst.flags, RST);
        assert_eq!(
            client.on_segment(&rst, now).closed,
            Some(CloseReason::Reset)
        );
        assert_eq!(client.closed(), Some(CloseReason::Reset));

        // A RST far from our window is ignored (blind injection).
        let far_bytes = data(&mut server, b"y", now);
        let mut far = parse(&far_bytes).expect("parses");
        far.flags = RST;
        far.seq = far.seq.wrapping_add(0x8000_0000);
        let (mut c2, _) = handshake(now);
        assert_eq!(c2.on_segment(&far, now).closed, None);

        let fin_bytes = data(&mut client, b"", now);
        let mut fin = parse(&fin_bytes).expect("parses");
        fin.flags = FIN | ACK;
        assert_eq!(server.on_segment(&fin, now).closed, Some(CloseReason::Fin));
    }

    #[test]
    fn syn_is_retried_then_given_up() {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let timing = Timing::default();
        let mut client = Flow::connect(client_addr(), server_addr(), timing, start, &mut rng);
        let mut now = start;
        let mut syns = 0;
        while client.closed().is_none() {
            now = client.next_deadline().expect("a deadline while connecting");
            if client.on_timeout(now) == Some(Control::Syn) {
                syns += 1;
            }
        }
        assert_eq!(syns, timing.syn_retries);
        assert_eq!(client.closed(), Some(CloseReason::HandshakeTimeout));
        assert_eq!(now - start, Duration::from_secs(1 + 2 + 4 + 8 + 16));
    }

    #[test]
    fn silent_peer_closes_the_flow() {
        let start = Instant::now();
        let (mut client, _server) = handshake(start);
        let deadline = start + Timing::default().idle_timeout;
        let mut now = start;
        while client.closed().is_none() {
            now = client.next_deadline().expect("deadline");
            if client.on_timeout(now) == Some(Control::Ack) {
                control(&mut client, Control::Ack, now);
            }
        }
        assert_eq!(now, deadline);
        assert_eq!(client.closed(), Some(CloseReason::Idle));
    }

    #[test]
    fn server_repeats_syn_ack_for_a_repeated_syn() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut client = Flow::connect(
            client_addr(),
            server_addr(),
            Timing::default(),
            now,
            &mut rng,
        );
        let syn = control(&mut client, Control::Syn, now);
        let syn = parse(&syn).expect("parses");
        let mut server = Flow::accept(&syn, Timing::default(), now, &mut rng);
        assert_eq!(server.on_segment(&syn, now).reply, Some(Control::SynAck));
        // Without the final ACK, the server gives the attempt up.
        let limit = server.next_deadline().expect("deadline");
        server.on_timeout(limit);
        assert_eq!(server.closed(), Some(CloseReason::HandshakeTimeout));
    }

    #[test]
    fn random_isn_differs_between_flows() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(9);
        let a = Flow::connect(
            client_addr(),
            server_addr(),
            Timing::default(),
            now,
            &mut rng,
        );
        let b = Flow::connect(
            client_addr(),
            server_addr(),
            Timing::default(),
            now,
            &mut rng,
        );
        assert_ne!(a.iss, b.iss);
        assert_ne!(a.iss, 0);
    }

    /// Sends `contents` in a batch through a fake kernel that takes at most `take[i]` segments
    /// on its i-th call (an error once the list is used up); returns what went, as the peer
    /// saw it, and the outcome.
    fn batch_through(
        flow: &mut Flow,
        contents: &[u8],
        segment_size: usize,
        takes: &[usize],
        now: Instant,
    ) -> (Vec<Vec<u8>>, BatchSent) {
        let mut wire = Vec::new();
        let mut calls = 0;
        let mut bufs = Vec::new();
        let sent = send_data_batch(flow, contents, segment_size, now, &mut bufs, |packets| {
            let take = takes.get(calls).copied();
            calls += 1;
            match take {
                Some(n) => {
                    let n = n.min(packets.len());
                    wire.extend(packets[..n].iter().cloned());
                    Ok(n)
                }
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        });
        (wire, sent)
    }

    #[test]
    fn ipv6_handshake_announces_ipv6_mss_and_keeps_one_flow_label() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(11);
        let local: SocketAddr = "[fd00::1]:40000".parse().expect("address");
        let remote: SocketAddr = "[fd00::2]:10001".parse().expect("address");
        let mut client = Flow::connect(local, remote, Timing::default(), now, &mut rng);
        let syn = control(&mut client, Control::Syn, now);
        assert_eq!(syn[0] >> 4, 6, "an IPv6 packet");
        let syn_seg = parse(&syn).expect("syn parses");
        assert_eq!((syn_seg.mss, syn_seg.window), (Some(MSS_V6), 64800));
        let mut server = Flow::accept(&syn_seg, Timing::default(), now, &mut rng);
        assert_eq!((server.local(), server.remote()), (remote, local));
        // On loopback the route's MTU is 65 536: one MSS fills the SYN window.
        server.set_mss(65_476);
        let synack = parse(&control(&mut server, Control::SynAck, now))
            .map(|s| (s.mss, s.window, s.ack))
            .expect("syn-ack parses");
        assert_eq!(synack, (Some(65_476), 65_476, syn_seg.seq.wrapping_add(1)));
        let label = |packet: &[u8]| u32::from_be_bytes([0, packet[1] & 0x0f, packet[2], packet[3]]);
        let first = data(&mut client, b"one", now);
        let second = data(&mut client, b"two", now);
        assert_ne!(label(&syn), 0);
        assert_eq!(label(&first), label(&syn), "one flow label for the flow");
        assert_eq!(label(&second), label(&syn));
    }

    #[test]
    fn batch_carries_each_datagram_intact_in_consecutive_segments() {
        let now = Instant::now();
        let (mut client, mut server) = handshake(now);
        let contents: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let start = client.snd_nxt;
        let (wire, sent) = batch_through(&mut client, &contents, 1448, &[64], now);
        assert!(sent.error.is_none());
        assert_eq!(sent.segments, 7, "10 000 bytes in 1448-byte datagrams");
        assert_eq!(sent.payload_bytes, contents.len());
        assert_eq!(
            sent.wire_bytes,
            contents.len() + 7 * crate::packet::DATA_OVERHEAD
        );
        let mut got = Vec::new();
        let mut expected_seq = start;
        for (i, packet) in wire.iter().enumerate() {
            let seg = parse(packet).expect("segment parses");
            assert_eq!(seg.seq, expected_seq, "segment {i} follows the one before");
            let want = &contents[i * 1448..((i + 1) * 1448).min(contents.len())];
            assert_eq!(seg.payload, want, "datagram {i} intact and whole");
            assert!(server.on_segment(&seg, now).deliver);
            expected_seq = expected_seq.wrapping_add(seg.payload.len() as u32);
            got.extend_from_slice(seg.payload);
        }
        assert_eq!(got, contents);
        assert_eq!(client.snd_nxt, expected_seq);
    }

    #[test]
    fn short_batch_of_one_and_the_kernel_taking_a_batch_in_parts() {
        let now = Instant::now();
        let (mut client, _server) = handshake(now);
        // A single datagram (no segmentation) is a batch of one.
        let (wire, sent) = batch_through(&mut client, &[9; 300], 300, &[1], now);
        assert_eq!((wire.len(), sent.segments, sent.payload_bytes), (1, 1, 300));
        assert!(sent.error.is_none());
        // The kernel takes 2, then 3 of 5: all go, in order, over two calls.
        let start = client.snd_nxt;
        let (wire, sent) = batch_through(&mut client, &[5; 5 * 100], 100, &[2, 3], now);
        assert!(sent.error.is_none());
        assert_eq!(sent.segments, 5);
        let seqs: Vec<u32> = wire.iter().map(|p| parse(p).expect("parses").seq).collect();
        let want: Vec<u32> = (0..5).map(|i| start.wrapping_add(i * 100)).collect();
        assert_eq!(seqs, want);
    }

    #[test]
    fn error_mid_batch_leaves_no_hole_in_sequence_space() {
        let now = Instant::now();
        let (mut client, mut server) = handshake(now);
        let start = client.snd_nxt;
        let ip_id = client.ip_id;
        // 6 segments; the kernel takes 2, then refuses.
        let (wire, sent) = batch_through(&mut client, &[1; 600], 100, &[2], now);
        assert_eq!(sent.segments, 2);
        assert_eq!(sent.payload_bytes, 200);
        assert_eq!(
            sent.error.as_ref().map(std::io::Error::kind),
            Some(std::io::ErrorKind::WouldBlock)
        );
        assert_eq!(wire.len(), 2);
        assert_eq!(
            client.snd_nxt,
            start.wrapping_add(200),
            "only what went used sequence space"
        );
        assert_eq!(client.ip_id, ip_id.wrapping_add(2));
        // The next segment follows the last that went, so the peer sees no gap.
        let next = data(&mut client, &[2; 50], now);
        let next = parse(&next).expect("parses");
        assert_eq!(next.seq, start.wrapping_add(200));
        for packet in &wire {
            assert!(
                server
                    .on_segment(&parse(packet).expect("parses"), now)
                    .deliver
            );
        }
        assert!(server.on_segment(&next, now).deliver);
        let ack = control(&mut server, Control::Ack, now);
        assert_eq!(parse(&ack).expect("parses").ack, start.wrapping_add(250));

        // Refused from the first segment: nothing went and the flow is exactly as before.
        let before = client.send_mark();
        let (wire, sent) = batch_through(&mut client, &[3; 400], 100, &[], now);
        assert_eq!((wire.len(), sent.segments, sent.payload_bytes), (0, 0, 0));
        assert!(sent.error.is_some());
        assert_eq!(client.send_mark(), before);
    }
}
