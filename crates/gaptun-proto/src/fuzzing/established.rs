//! Fuzzing an established connection from a peer that holds the key.
//!
//! A client and a server endpoint are connected in memory (fixed seeds, the fuzz key), the
//! handshake is completed, and the input is then read as a program of operations: inject frame
//! bytes sealed with the real keys into either end, move the clock, let the applications
//! write, read, finish, reset and stop streams, and deliver, drop, replay, corrupt or re-route
//! the datagrams the two ends send each other. The connection state machine (ACK, STREAM, flow
//! control, MAX_*, CLOSE, PATH_*, RESET_STREAM, STOP_SENDING) thus meets a hostile peer that
//! can authenticate, mixed with real traffic.
//!
//! Checked on every run besides "no panic": each byte an application reads was sent at that
//! offset of that stream, either by the other application or by an injected STREAM frame, and
//! a stream ends cleanly only where one of them put its end. Work and memory per run are
//! bounded by the input (see the caps below), so unbounded growth inside the connection shows
//! up as a libFuzzer out-of-memory report.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{FUZZ_PSK, FUZZ_UNIX_TIME};
use crate::config::{EndpointConfig, TransportConfig};
use crate::connection::{Connection, Event};
use crate::crypto::{CipherSuite, Psk};
use crate::endpoint::{ConnectionHandle, Endpoint, RngSeed};
use crate::frame::{self, AckFrame, CloseFrame, Frame, StreamFrame};
use crate::shared::{Side, StreamId};
use crate::streams::{ReadError, StreamEvent};

/// Operations executed per input at most.
const MAX_OPS: usize = 4096;
/// Datagrams waiting in each direction at most; more are dropped, as a full queue would.
const MAX_QUEUED: usize = 256;
/// Delivered datagrams kept for replaying.
const MAX_HISTORY: usize = 32;
/// Bytes each application writes per run at most.
const MAX_WRITTEN: usize = 1 << 20;
/// Streams each side keeps track of at most.
const MAX_STREAMS: usize = 64;
/// Largest injected payload.
const MAX_INJECT: usize = 1300;

fn client_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000))
}

fn server_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 4433))
}

/// Small windows and stream limits, so that flow control and limits are reached by short
/// inputs; one fixed cipher, so that runs repeat on every CPU.
fn transport() -> TransportConfig {
    TransportConfig {
        receive_window: 64 * 1024,
        stream_receive_window: 16 * 1024,
        send_buffer: 64 * 1024,
        max_concurrent_streams: 8,
        cipher: Some(CipherSuite::ChaCha20Poly1305),
        ..TransportConfig::default()
    }
}

/// Reads the operation program.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A byte, or 0 past the end (arguments of the last operation may be cut off).
    fn arg(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.arg(), self.arg()])
    }

    fn varied(&mut self) -> u64 {
        // Mostly small values, sometimes large ones: a byte selects the scale.
        let scale = self.arg();
        let low = u64::from(self.u16());
        match scale % 4 {
            0 | 1 => low,
            2 => low << 16,
            _ => low << 46,
        }
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let end = self.pos.saturating_add(len).min(self.data.len());
        let out = &self.data[self.pos..end];
        self.pos = end;
        out
    }

    fn side(&mut self) -> Side {
        if self.arg() & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }
}

fn index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// What one side's application wrote on one stream.
#[derive(Default)]
struct SentLog {
    bytes: Vec<u8>,
    finished: bool,
}

/// A STREAM frame injected towards one side.
struct Injected {
    offset: u64,
    data: Vec<u8>,
    fin: bool,
}

/// The byte an application writes at `offset` of `id`: varies with both, so misplaced data is
/// noticed.
fn pattern(side: Side, id: StreamId, offset: u64) -> u8 {
    let x = offset
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(id.0.wrapping_mul(0x2545_f491))
        .wrapping_add(index(side) as u64);
    (x >> 29) as u8
}

struct Harness {
    now: Instant,
    client: Endpoint,
    server: Endpoint,
    handles: [ConnectionHandle; 2],
    /// Datagrams in flight towards each side.
    queues: [VecDeque<Vec<u8>>; 2],
    history: VecDeque<(Side, Vec<u8>)>,
    /// By sending side: what its application wrote.
    sent: [HashMap<StreamId, SentLog>; 2],
    written: [usize; 2],
    /// By receiving side: STREAM frames injected towards it.
    injected: [HashMap<StreamId, Vec<Injected>>; 2],
    /// By receiving side: how far its application has read each stream, and whether it ended.
    read: [HashMap<StreamId, (u64, bool)>; 2],
    /// Streams each side opened or accepted.
    streams: [Vec<StreamId>; 2],
    buf: Vec<u8>,
}

impl Harness {
    /// Connects the two endpoints; `None` only if the handshake fails, which would be a bug
    /// in the harness or in the handshake (the caller panics).
    fn new() -> Option<Self> {
        let now = Instant::now();
        let psk = Psk::from_bytes(FUZZ_PSK);
        let mut client_config = EndpointConfig::client(psk.clone());
        client_config.transport = transport();
        let mut server_config = EndpointConfig::server(vec![psk]);
        server_config.transport = transport();
        let client = Endpoint::new(
            Arc::new(client_config),
            RngSeed::from_bytes([11; 32]),
            now,
            FUZZ_UNIX_TIME,
        );
        let server = Endpoint::new(
            Arc::new(server_config),
            RngSeed::from_bytes([12; 32]),
            now,
            FUZZ_UNIX_TIME,
        );
        let mut h = Self {
            now,
            client,
            server,
            handles: [ConnectionHandle(0); 2],
            queues: [VecDeque::new(), VecDeque::new()],
            history: VecDeque::new(),
            sent: [HashMap::new(), HashMap::new()],
            written: [0; 2],
            injected: [HashMap::new(), HashMap::new()],
            read: [HashMap::new(), HashMap::new()],
            streams: [Vec::new(), Vec::new()],
            buf: Vec::new(),
        };
        h.handles[0] = h.client.connect(now, server_addr()).ok()?;
        let mut server_handle = None;
        for _ in 0..8 {
            h.pump();
            h.deliver(Side::Server, usize::MAX, client_addr());
            if server_handle.is_none() {
                server_handle = h.server.accept();
            }
            h.pump();
            h.deliver(Side::Client, usize::MAX, server_addr());
            h.poll_events();
            let up = |c: Option<&mut Connection>| c.is_some_and(|c| c.is_established());
            if let Some(sh) = server_handle {
                h.handles[1] = sh;
                if up(h.client.connection(h.handles[0])) && up(h.server.connection(sh)) {
                    // The client's first packet confirms the handshake to the server.
                    h.pump();
                    h.deliver(Side::Server, usize::MAX, client_addr());
                    h.history.clear();
                    return Some(h);
                }
            }
        }
        None
    }

    fn endpoint(&mut self, side: Side) -> &mut Endpoint {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    fn conn(&mut self, side: Side) -> Option<&mut Connection> {
        let handle = self.handles[index(side)];
        self.endpoint(side).connection(handle)
    }

    /// Collects what both ends want to send into the queues.
    fn pump(&mut self) {
        for from in [Side::Client, Side::Server] {
            let to = index(from.peer());
            let now = self.now;
            let mut buf = std::mem::take(&mut self.buf);
            for _ in 0..MAX_QUEUED {
                let Some(t) = self.endpoint(from).poll_transmit(now, 4, &mut buf) else {
                    break;
                };
                let segment = t.segment_size.unwrap_or(t.size).max(1);
                for chunk in buf[..t.size.min(buf.len())].chunks(segment) {
                    if self.queues[to].len() < MAX_QUEUED {
                        self.queues[to].push_back(chunk.to_vec());
                    }
                }
            }
            self.buf = buf;
        }
    }

    /// Hands up to `count` queued datagrams to `to`, as if sent from `from`.
    fn deliver(&mut self, to: Side, count: usize, from: SocketAddr) {
        for _ in 0..count {
            let Some(dgram) = self.queues[index(to)].pop_front() else {
                return;
            };
            self.receive(to, from, dgram);
        }
    }

    fn receive(&mut self, to: Side, from: SocketAddr, dgram: Vec<u8>) {
        let mut copy = dgram.clone();
        let now = self.now;
        self.endpoint(to)
            .handle_datagram(now, crate::CarrierId(0), from, &mut copy);
        if self.history.len() >= MAX_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((to, dgram));
    }

    fn default_from(to: Side) -> SocketAddr {
        match to {
            Side::Server => client_addr(),
            Side::Client => server_addr(),
        }
    }

    /// Seals `payload` with the keys of `to`'s peer and delivers it to `to`. The STREAM frames
    /// in it are recorded first, as the receiver will decode them the same way.
    fn inject(&mut self, to: Side, payload: &[u8]) {
        for frame in frame::iter(payload) {
            let Ok(frame) = frame else { break };
            if let Frame::Stream(f) = frame {
                self.injected[index(to)]
                    .entry(f.id)
                    .or_default()
                    .push(Injected {
                        offset: f.offset,
                        data: f.data.to_vec(),
                        fin: f.fin,
                    });
            }
        }
        let mut buf = Vec::new();
        let sealed = self
            .conn(to.peer())
            .is_some_and(|c| c.fuzz_seal(payload, &mut buf));
        if sealed {
            self.receive(to, Self::default_from(to), buf);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
    }

    /// Drains both ends' events; accepts the streams the peer opened.
    fn poll_events(&mut self) {
        for side in [Side::Client, Side::Server] {
            let mut accepted = Vec::new();
            if let Some(conn) = self.conn(side) {
                while let Some(event) = conn.poll() {
                    if matches!(event, Event::Stream(StreamEvent::Opened)) {
                        while let Some(id) = conn.accept_stream() {
                            accepted.push(id);
                        }
                    }
                }
            }
            for id in accepted {
                self.track(side, id);
            }
        }
    }

    fn track(&mut self, side: Side, id: StreamId) {
        let streams = &mut self.streams[index(side)];
        if !streams.contains(&id) && streams.len() < MAX_STREAMS {
            streams.push(id);
        }
    }

    /// A stream of `side` chosen by `sel`: a known one, or one named by number (which may not
    /// exist; the call must cope).
    fn pick(&self, side: Side, sel: u8) -> StreamId {
        let known = &self.streams[index(side)];
        if sel < 0xf0 && !known.is_empty() {
            known[usize::from(sel) % known.len()]
        } else {
            StreamId(u64::from(sel & 0x0f))
        }
    }

    fn write(&mut self, side: Side, sel: u8, len: usize) {
        let id = if sel == 0xff {
            let Some(id) = self.conn(side).and_then(Connection::open_stream) else {
                return;
            };
            self.track(side, id);
            id
        } else {
            self.pick(side, sel)
        };
        let budget = MAX_WRITTEN.saturating_sub(self.written[index(side)]);
        let len = len.min(budget);
        let offset = self.sent[index(side)]
            .get(&id)
            .map_or(0, |log| log.bytes.len() as u64);
        let data: Vec<u8> = (0..len as u64)
            .map(|i| pattern(side, id, offset + i))
            .collect();
        let Some(Ok(n)) = self.conn(side).map(|c| c.write(id, &data)) else {
            return;
        };
        self.written[index(side)] += n;
        self.sent[index(side)]
            .entry(id)
            .or_default()
            .bytes
            .extend_from_slice(&data[..n]);
    }

    fn finish(&mut self, side: Side, id: StreamId) {
        if let Some(Ok(())) = self.conn(side).map(|c| c.finish(id)) {
            self.sent[index(side)].entry(id).or_default().finished = true;
        }
    }

    /// Reads everything `side` can read from `id` and checks it against what was sent.
    fn read(&mut self, side: Side, id: StreamId) {
        let mut buf = [0u8; 4096];
        loop {
            let result = match self.conn(side) {
                Some(c) => c.read(id, &mut buf),
                None => return,
            };
            match result {
                Ok(Some(n)) => {
                    let got = buf.get(..n).unwrap_or_default().to_vec();
                    self.check_data(side, id, &got);
                }
                Ok(None) => {
                    self.check_end(side, id);
                    return;
                }
                Err(ReadError::Blocked | ReadError::ClosedStream | ReadError::Reset(_)) => return,
            }
        }
    }

    fn check_data(&mut self, side: Side, id: StreamId, got: &[u8]) {
        let (offset, ended) = self.read[index(side)]
            .get(&id)
            .copied()
            .unwrap_or((0, false));
        assert!(!ended, "{side:?} read data on {id} after its end");
        let legit = self.sent[index(side.peer())].get(&id);
        let injected = self.injected[index(side)].get(&id);
        for (i, &b) in got.iter().enumerate() {
            let at = offset + i as u64;
            let from_app = legit
                .and_then(|l| l.bytes.get(usize::try_from(at).ok()?))
                .is_some_and(|&x| x == b);
            let from_injection = injected.is_some_and(|frames| {
                frames.iter().any(|f| {
                    at.checked_sub(f.offset)
                        .and_then(|k| f.data.get(usize::try_from(k).ok()?))
                        .is_some_and(|&x| x == b)
                })
            });
            assert!(
                from_app || from_injection,
                "{side:?} read byte {b:#04x} at offset {at} of {id}, which nobody sent"
            );
        }
        self.read[index(side)].insert(id, (offset + got.len() as u64, false));
    }

    fn check_end(&mut self, side: Side, id: StreamId) {
        let (offset, _) = self.read[index(side)]
            .get(&id)
            .copied()
            .unwrap_or((0, false));
        let legit = self.sent[index(side.peer())]
            .get(&id)
            .is_some_and(|l| l.finished && l.bytes.len() as u64 == offset);
        let injected = self.injected[index(side)].get(&id).is_some_and(|frames| {
            frames
                .iter()
                .any(|f| f.fin && f.offset.checked_add(f.data.len() as u64) == Some(offset))
        });
        assert!(
            legit || injected,
            "{side:?} saw {id} end at {offset}, where no sender ended it"
        );
        self.read[index(side)].insert(id, (offset, true));
    }

    /// Runs one operation; `false` at the end of the input.
    fn step(&mut self, input: &mut Input<'_>) -> bool {
        let Some(op) = input.byte() else {
            return false;
        };
        match op % 18 {
            0 => {
                let to = input.side();
                let len = usize::from(input.u16()) % (MAX_INJECT + 1);
                let payload = input.bytes(len);
                self.inject(to, payload);
            }
            1 => {
                let to = input.side();
                let sel = input.arg();
                let id = self.pick(to, sel);
                let offset = input.varied();
                let fin = input.arg() & 1 == 1;
                let len = usize::from(input.arg());
                let data = input.bytes(len);
                let mut payload = Vec::new();
                Frame::Stream(StreamFrame {
                    id,
                    offset,
                    fin,
                    data,
                })
                .encode(&mut payload);
                self.inject(to, &payload);
            }
            2 => {
                let to = input.side();
                let payload = self.control_frame(to, input);
                self.inject(to, &payload);
            }
            3 => {
                let b = u64::from(input.arg());
                self.advance(Duration::from_millis(b * b));
            }
            4 => self.pump(),
            5 => {
                let to = input.side();
                let count = usize::from(input.arg() % 16) + 1;
                self.deliver(to, count, Self::default_from(to));
            }
            6 => {
                let to = input.side();
                let count = usize::from(input.arg() % 16) + 1;
                let queue = &mut self.queues[index(to)];
                queue.drain(..count.min(queue.len()));
            }
            7 => {
                let side = input.side();
                let sel = input.arg();
                let len = usize::from(input.u16());
                self.write(side, sel, len);
            }
            8 => {
                let side = input.side();
                let sel = input.arg();
                let id = self.pick(side, sel);
                self.read(side, id);
            }
            9 => {
                let side = input.side();
                let sel = input.arg();
                let id = self.pick(side, sel);
                self.finish(side, id);
            }
            10 => {
                let side = input.side();
                let sel = input.arg();
                let id = self.pick(side, sel);
                let code = u64::from(input.arg());
                if let Some(c) = self.conn(side) {
                    let _ = c.reset_stream(id, code);
                }
            }
            11 => {
                let side = input.side();
                let sel = input.arg();
                let id = self.pick(side, sel);
                let code = u64::from(input.arg());
                if let Some(c) = self.conn(side) {
                    let _ = c.stop_stream(id, code);
                }
            }
            12 => {
                let pick = usize::from(input.arg());
                if !self.history.is_empty() {
                    let (to, dgram) = self.history[pick % self.history.len()].clone();
                    self.receive(to, Self::default_from(to), dgram);
                }
            }
            13 => {
                // The client's datagrams arrive from a new address (NAT rebinding or an
                // attacker's copy).
                let port = input.u16();
                let from = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), port));
                let count = usize::from(input.arg() % 4) + 1;
                self.deliver(Side::Server, count, from);
            }
            14 => {
                let to = input.side();
                let at = usize::from(input.u16());
                let bit = input.arg() % 8;
                if let Some(mut dgram) = self.queues[index(to)].pop_front() {
                    if !dgram.is_empty() {
                        let i = at % dgram.len();
                        dgram[i] ^= 1 << bit;
                    }
                    self.receive(to, Self::default_from(to), dgram);
                }
            }
            15 => {
                let side = input.side();
                let code = u64::from(input.arg());
                let now = self.now;
                if let Some(c) = self.conn(side) {
                    c.close(now, code, b"fuzz");
                }
            }
            16 => {
                let side = input.side();
                let window = u64::from(input.u16()) << 4;
                if let Some(c) = self.conn(side) {
                    c.set_receive_window(window);
                }
            }
            _ => self.exchange_all(),
        }
        self.poll_events();
        true
    }

    /// A well-formed control frame (or an ACK) built from the input: reaches the frame
    /// handlers more often than raw bytes do.
    fn control_frame(&mut self, to: Side, input: &mut Input<'_>) -> Vec<u8> {
        let kind = input.arg();
        let sel = input.arg();
        let id = self.pick(to, sel);
        let value = input.varied();
        let mut payload = Vec::new();
        let mut token = [0u8; 8];
        token.copy_from_slice(&value.to_be_bytes());
        let frame = match kind % 12 {
            0 => Frame::ResetStream {
                id,
                error_code: u64::from(sel),
                final_size: value,
            },
            1 => Frame::StopSending {
                id,
                error_code: value,
            },
            2 => Frame::MaxData(value),
            3 => Frame::MaxStreamData { id, max: value },
            4 => Frame::MaxStreams(value),
            5 => Frame::DataBlocked(value),
            6 => Frame::StreamDataBlocked { id, limit: value },
            7 => Frame::PathChallenge(token),
            8 => Frame::PathResponse(token),
            9 => Frame::Close(CloseFrame {
                application: sel & 1 == 1,
                error_code: value,
                reason: b"injected",
            }),
            10 => Frame::Ping,
            _ => {
                let low = value % 64;
                let len = u64::from(sel % 32) + 1;
                Frame::Ack(AckFrame {
                    delay_us: u64::from(sel),
                    // Highest range first, as the encoder writes them.
                    ranges: vec![low + len + 2..low + len + 3, low..low + len],
                })
            }
        };
        frame.encode(&mut payload);
        payload
    }

    /// A few round trips of an ideal network with a 5 ms delay: everything sent is delivered
    /// (the pacer and the ACK delay need the clock to move).
    fn exchange_all(&mut self) {
        for _ in 0..4 {
            self.pump();
            self.deliver(Side::Server, usize::MAX, client_addr());
            self.deliver(Side::Client, usize::MAX, server_addr());
            self.advance(Duration::from_millis(5));
        }
    }

    /// Lets the network settle (everything delivered, timers run) and reads every stream,
    /// checking what arrives.
    fn settle(&mut self) {
        for _ in 0..8 {
            self.exchange_all();
            self.poll_events();
            for side in [Side::Client, Side::Server] {
                for id in self.streams[index(side)].clone() {
                    self.read(side, id);
                }
            }
        }
    }
}

/// Drives an established connection pair with the operation program in `data` (see the module
/// documentation). Panics on a broken invariant.
pub fn established(data: &[u8]) {
    run(data);
}

fn run(data: &[u8]) -> Harness {
    let Some(mut h) = Harness::new() else {
        panic!("in-memory handshake failed");
    };
    let mut input = Input { data, pos: 0 };
    for _ in 0..MAX_OPS {
        if !h.step(&mut input) {
            break;
        }
    }
    h.settle();
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u8 = 0;
    const S: u8 = 1;
    const ALL: u8 = 17;
    const NEW: u8 = 0xff;

    fn read_state(h: &Harness, side: Side, id: u64) -> (u64, bool) {
        h.read[index(side)]
            .get(&StreamId(id))
            .copied()
            .unwrap_or((0, false))
    }

    #[test]
    fn a_request_and_reply_arrive_and_are_checked() {
        // Client opens stream 0 and sends 1000 bytes; the server answers 500 bytes; both finish.
        let h = run(&[
            7, C, NEW, 0x03, 0xe8, 9, C, 0, ALL, 8, S, 0, 7, S, 0, 0x01, 0xf4, 9, S, 0, ALL,
        ]);
        assert_eq!(read_state(&h, Side::Server, 0), (1000, true));
        assert_eq!(read_state(&h, Side::Client, 0), (500, true));
        assert_eq!(h.client.stats().dropped_unauthenticated, 0);
    }

    #[test]
    fn injected_stream_data_is_delivered_and_accounted_for() {
        // A STREAM frame sealed with the client's keys opens stream 2 on the server with 5
        // bytes and its end.
        let mut program = vec![1, S, 0xf2, 0, 0, 0, 1, 5];
        program.extend_from_slice(b"hello");
        let mut h = run(&program);
        assert_eq!(read_state(&h, Side::Server, 2), (5, true));
        assert!(
            h.server
                .connection(h.handles[1])
                .is_some_and(|c| c.is_established())
        );
    }

    #[test]
    fn a_flow_control_violation_closes_the_connection() {
        // 255 bytes at an offset far beyond the 16 KiB stream window.
        let mut program = vec![1, S, 0xf0, 2, 0x7f, 0xff, 0, 255];
        program.extend_from_slice(&[0xaa; 255]);
        program.push(ALL);
        let mut h = run(&program);
        assert!(h.conn(Side::Server).is_none_or(|c| !c.is_established()));
        assert!(h.conn(Side::Client).is_none_or(|c| !c.is_established()));
    }

    /// Runs `program` without the final settling.
    fn steps(program: &[u8]) -> Harness {
        let mut h = Harness::new().expect("handshake");
        let mut input = Input {
            data: program,
            pos: 0,
        };
        while h.step(&mut input) {}
        h
    }

    #[test]
    #[should_panic(expected = "which nobody sent")]
    fn data_nobody_sent_is_caught() {
        let mut h = steps(&[7, C, NEW, 0, 100, ALL]);
        // Forget what the client wrote: the bytes the server reads are now unexplained.
        h.sent[index(Side::Client)].clear();
        h.read(Side::Server, StreamId(0));
    }

    #[test]
    #[should_panic(expected = "where no sender ended it")]
    fn an_end_nobody_sent_is_caught() {
        let mut h = steps(&[7, C, NEW, 0, 100, ALL]);
        h.read(Side::Server, StreamId(0));
        // The client finishes, but the harness is told it did not.
        h.finish(Side::Client, StreamId(0));
        h.sent[index(Side::Client)]
            .entry(StreamId(0))
            .or_default()
            .finished = false;
        h.settle();
    }
}
