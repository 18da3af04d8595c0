//! Tests of `Streams`: direct unit checks, and a client/server pair wired by a tiny in-memory
//! network that encodes every packet, decodes it on the other side, and acknowledges or drops it
//! (with seeded loss and reordering).

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::frame::{self, Frame};

/// splitmix64: small, seeded, good enough for schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const MTU: usize = 1200;

fn limits(max_data: u64, max_stream_data: u64, max_streams: u64) -> StreamLimits {
    StreamLimits {
        max_data,
        max_stream_data,
        max_streams,
    }
}

/// A control frame seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    MaxData(u64),
    MaxStreamData(StreamId, u64),
    MaxStreams(u64),
    Reset(StreamId, u64, u64),
    Stop(StreamId, u64),
    DataBlocked(u64),
    StreamDataBlocked(StreamId, u64),
}

/// Picks packets to drop by what they carry.
type DropRule = fn(&SentFrames) -> bool;

struct Packet {
    from: Side,
    payload: Vec<u8>,
    sent: SentFrames,
}

/// Two `Streams` and the packets between them.
struct Net {
    client: Streams,
    server: Streams,
    flight: Vec<Packet>,
    rng: Rng,
    loss_per_mille: u64,
    /// Chance that a packet in flight is held back for a later round.
    hold_per_mille: u64,
    /// Control frames delivered, by sender.
    ctl: Vec<(Side, Ctl)>,
    /// STREAM frames delivered: (sender, id, offset, len, fin).
    data: Vec<(Side, StreamId, u64, u64, bool)>,
    /// Drop the next packets from this side that carry any of these, once each.
    drop_next: Vec<(Side, DropRule)>,
}

impl Net {
    fn new(client_local: StreamLimits, server_local: StreamLimits, send_buffer: u64) -> Self {
        Self {
            client: Streams::new(Side::Client, client_local, server_local, send_buffer),
            server: Streams::new(Side::Server, server_local, client_local, send_buffer),
            flight: Vec::new(),
            rng: Rng(1),
            loss_per_mille: 0,
            hold_per_mille: 0,
            ctl: Vec::new(),
            data: Vec::new(),
            drop_next: Vec::new(),
        }
    }

    fn symmetric(max_data: u64, max_stream_data: u64, max_streams: u64) -> Self {
        let l = limits(max_data, max_stream_data, max_streams);
        Self::new(l, l, 1 << 30)
    }

    fn get(&mut self, side: Side) -> &mut Streams {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Builds one packet from `from`, if it has anything to send.
    fn build(&mut self, from: Side, mtu: usize) -> Option<Packet> {
        let st = self.get(from);
        if !st.has_pending() {
            return None;
        }
        let mut payload = Vec::new();
        let mut sent = SentFrames::default();
        st.write_control(&mut payload, mtu, &mut sent);
        st.write_stream_data(&mut payload, mtu, &mut sent);
        assert!(payload.len() <= mtu);
        (!payload.is_empty()).then_some(Packet {
            from,
            payload,
            sent,
        })
    }

    fn transmit(&mut self, from: Side, max_packets: usize) -> usize {
        let mut n = 0;
        while n < max_packets {
            let Some(p) = self.build(from, MTU) else {
                break;
            };
            self.flight.push(p);
            n += 1;
        }
        n
    }

    /// Delivers or drops packets in flight; with reordering, some are held for a later round.
    fn deliver_round(&mut self) {
        let mut held = Vec::new();
        while !self.flight.is_empty() {
            let i = self.rng.below(self.flight.len() as u64) as usize;
            let p = self.flight.swap_remove(i);
            if self.rng.chance(self.hold_per_mille) {
                held.push(p);
            } else {
                self.deliver(p);
            }
        }
        self.flight = held;
    }

    fn deliver_all_in_order(&mut self) {
        for p in std::mem::take(&mut self.flight) {
            self.deliver(p);
        }
    }

    fn deliver(&mut self, p: Packet) {
        let forced = self
            .drop_next
            .iter()
            .position(|(side, f)| *side == p.from && f(&p.sent));
        if let Some(i) = forced {
            self.drop_next.remove(i);
            self.get(p.from).on_lost(&p.sent);
            return;
        }
        if self.rng.chance(self.loss_per_mille) {
            self.get(p.from).on_lost(&p.sent);
            return;
        }
        self.feed(p.from, &p.payload)
            .expect("a correct sender breaks no stream rule");
        self.get(p.from).on_acked(&p.sent);
    }

    /// Hands a payload from `from` to the other side, recording what it carried.
    fn feed(&mut self, from: Side, payload: &[u8]) -> Result<(), StreamsError> {
        let to = from.peer();
        for f in frame::iter(payload) {
            let f = f.expect("we only encode valid frames");
            let st = self.get(to);
            let ctl = match f {
                Frame::Stream(s) => {
                    st.on_stream_frame(&s)?;
                    let len = s.data.len() as u64;
                    self.data.push((from, s.id, s.offset, len, s.fin));
                    None
                }
                Frame::ResetStream {
                    id,
                    error_code,
                    final_size,
                } => {
                    st.on_reset_stream(id, error_code, final_size)?;
                    Some(Ctl::Reset(id, error_code, final_size))
                }
                Frame::StopSending { id, error_code } => {
                    st.on_stop_sending(id, error_code)?;
                    Some(Ctl::Stop(id, error_code))
                }
                Frame::MaxData(v) => {
                    st.on_max_data(v);
                    Some(Ctl::MaxData(v))
                }
                Frame::MaxStreamData { id, max } => {
                    st.on_max_stream_data(id, max)?;
                    Some(Ctl::MaxStreamData(id, max))
                }
                Frame::MaxStreams(v) => {
                    st.on_max_streams(v);
                    Some(Ctl::MaxStreams(v))
                }
                Frame::DataBlocked(v) => Some(Ctl::DataBlocked(v)),
                Frame::StreamDataBlocked { id, limit } => Some(Ctl::StreamDataBlocked(id, limit)),
                other => panic!("streams never write {other:?}"),
            };
            if let Some(c) = ctl {
                self.ctl.push((from, c));
            }
        }
        Ok(())
    }

    fn round(&mut self) {
        self.transmit(Side::Client, 64);
        self.transmit(Side::Server, 64);
        self.deliver_round();
    }

    fn ctl_from(&self, side: Side) -> Vec<Ctl> {
        self.ctl
            .iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, c)| *c)
            .collect()
    }

    /// Runs rounds with no application activity until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            self.round();
            let idle =
                self.flight.is_empty() && !self.client.has_pending() && !self.server.has_pending();
            if idle {
                return;
            }
        }
        panic!("network did not settle");
    }
}

/// What one side's application sends on one stream.
struct Outgoing {
    data: Vec<u8>,
    written: usize,
    finished: bool,
    /// A write was cut short; wait for `Writable`.
    blocked: bool,
}

/// An application that writes its streams' data, reads everything, driven by events.
#[derive(Default)]
struct App {
    out: HashMap<StreamId, Outgoing>,
    got: HashMap<StreamId, Vec<u8>>,
    ended: BTreeSet<StreamId>,
    resets: HashMap<StreamId, u64>,
    to_read: BTreeSet<StreamId>,
    finished: BTreeSet<StreamId>,
    accepted: Vec<StreamId>,
    events: Vec<StreamEvent>,
    /// Bytes to send back on each accepted stream.
    reply: usize,
    /// Streams this application never reads.
    stalled: BTreeSet<StreamId>,
}

impl App {
    fn send(&mut self, id: StreamId, data: Vec<u8>) {
        self.out.insert(
            id,
            Outgoing {
                data,
                written: 0,
                finished: false,
                blocked: false,
            },
        );
    }

    fn pump(&mut self, st: &mut Streams, rng: &mut Rng) {
        while let Some(id) = st.accept() {
            self.accepted.push(id);
            let data = rng.bytes(self.reply);
            self.send(id, data);
        }
        while let Some(e) = st.poll_event() {
            self.events.push(e);
            match e {
                StreamEvent::Readable(id) => {
                    self.to_read.insert(id);
                }
                StreamEvent::Writable(id) => {
                    if let Some(o) = self.out.get_mut(&id) {
                        o.blocked = false;
                    }
                }
                StreamEvent::Finished(id) => {
                    assert!(self.finished.insert(id), "Finished twice for {id}");
                }
                StreamEvent::Opened | StreamEvent::Stopped { .. } | StreamEvent::Available => {}
            }
        }
        for (&id, o) in &mut self.out {
            if o.blocked {
                continue;
            }
            if o.written < o.data.len() {
                match st.write(id, &o.data[o.written..]) {
                    Ok(n) => {
                        o.written += n;
                        o.blocked = o.written < o.data.len();
                    }
                    Err(WriteError::Blocked) => o.blocked = true,
                    Err(e) => panic!("write on {id}: {e}"),
                }
            }
            if o.written == o.data.len() && !o.finished {
                st.finish(id).expect("finish");
                o.finished = true;
            }
        }
        let ids: Vec<StreamId> = self.to_read.difference(&self.stalled).copied().collect();
        for id in ids {
            self.read_stream(st, id);
        }
    }

    fn read_stream(&mut self, st: &mut Streams, id: StreamId) {
        let mut buf = [0u8; 3000];
        loop {
            match st.read(id, &mut buf) {
                Ok(Some(n)) => self.got.entry(id).or_default().extend_from_slice(&buf[..n]),
                Ok(None) => {
                    assert!(self.ended.insert(id), "end read twice");
                    break;
                }
                Err(ReadError::Reset(code)) => {
                    self.resets.insert(id, code);
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::ClosedStream) => panic!("read on closed {id}"),
            }
        }
        self.to_read.remove(&id);
    }

    fn all_sent_and_acked(&self) -> bool {
        self.out.keys().all(|id| self.finished.contains(id))
    }
}

/// Client opens `streams` streams with `size` random bytes each; the server replies with
/// `reply` bytes on each. Runs until everything is delivered, acknowledged and closed.
fn run_transfer(mut net: Net, streams: usize, size: usize, reply: usize) -> (Net, App, App) {
    let mut client = App::default();
    let mut server = App {
        reply,
        ..App::default()
    };
    let mut data_rng = Rng(net.rng.next());
    for _ in 0..streams {
        let id = net.client.open().expect("stream limit large enough");
        client.send(id, data_rng.bytes(size));
    }
    for round in 0.. {
        client.pump(&mut net.client, &mut data_rng);
        server.pump(&mut net.server, &mut data_rng);
        net.round();
        let done = client.all_sent_and_acked()
            && server.all_sent_and_acked()
            && server.ended.len() == streams
            && client.ended.len() == streams
            && net.client.stats().open == 0
            && net.server.stats().open == 0;
        if done {
            break;
        }
        assert!(
            round < 20_000,
            "transfer stalled: {:?} / {:?}",
            net.client,
            net.server
        );
    }
    for (id, o) in &client.out {
        assert!(
            server
                .got
                .get(id)
                .map_or(o.data.is_empty(), |g| *g == o.data),
            "data on {id}"
        );
    }
    for (id, o) in &server.out {
        assert!(
            client
                .got
                .get(id)
                .map_or(o.data.is_empty(), |g| *g == o.data),
            "reply on {id}"
        );
    }
    (net, client, server)
}

fn lossy(seed: u64, loss: u64, hold: u64) -> Net {
    let mut net = Net::symmetric(256 * 1024, 64 * 1024, 1000);
    net.rng = Rng(seed);
    net.loss_per_mille = loss;
    net.hold_per_mille = hold;
    net
}

#[test]
fn bulk_transfer_arrives_intact_without_loss() {
    let (net, client, server) = run_transfer(lossy(1, 0, 0), 1, 1_000_000, 0);
    assert_eq!(server.accepted, vec![StreamId::new(Side::Client, 0)]);
    assert_eq!(client.finished.len(), 1);
    let stats = net.client.stats();
    assert_eq!(
        (stats.open, stats.opened_total, stats.send_buffered),
        (0, 1, 0)
    );
    assert_eq!(stats.bytes_sent, 1_000_000);
    assert_eq!(stats.bytes_retransmitted, 0);
    assert_eq!(net.server.stats().recv_buffered, 0);
}

#[test]
fn transfers_survive_loss_and_reordering() {
    for seed in 1..=6 {
        let (net, _, _) = run_transfer(lossy(seed, 150, 300), 8, 60_000, 20_000);
        assert!(
            net.client.stats().bytes_retransmitted > 0,
            "seed {seed} lost nothing"
        );
    }
}

#[test]
fn many_concurrent_streams_with_loss() {
    let (net, client, server) = run_transfer(lossy(42, 50, 200), 300, 3_000, 500);
    assert_eq!(server.accepted.len(), 300);
    assert_eq!(client.finished.len(), 300);
    assert_eq!(net.server.stats().opened_total, 300);
}

#[test]
fn readable_is_not_repeated_while_unread() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[5; 50_000]).unwrap();
    net.settle();
    let events: Vec<StreamEvent> = std::iter::from_fn(|| net.server.poll_event()).collect();
    assert_eq!(events, vec![StreamEvent::Opened, StreamEvent::Readable(id)]);
    // After a read, new data is reported again.
    let mut buf = [0u8; 100];
    assert_eq!(net.server.read(id, &mut buf), Ok(Some(100)));
    net.client.write(id, &[6; 10]).unwrap();
    net.settle();
    assert_eq!(net.server.poll_event(), Some(StreamEvent::Readable(id)));
    assert_eq!(net.server.poll_event(), None);
}

#[test]
fn flow_control_blocks_and_unblocks() {
    let mut net = Net::symmetric(4000, 1000, 10);
    let id = net.client.open().unwrap();
    assert_eq!(net.client.write(id, &[1; 3000]), Ok(1000));
    assert_eq!(net.client.write(id, &[1; 3000]), Err(WriteError::Blocked));
    net.settle();
    assert!(
        net.ctl_from(Side::Client)
            .contains(&Ctl::StreamDataBlocked(id, 1000))
    );
    // Reading less than an eighth of the window earns no new credit.
    let mut buf = [0u8; 400];
    assert_eq!(net.server.accept(), Some(id));
    assert_eq!(net.server.read(id, &mut buf[..124]), Ok(Some(124)));
    net.settle();
    assert!(
        !net.ctl_from(Side::Server)
            .iter()
            .any(|c| matches!(c, Ctl::MaxStreamData(..)))
    );
    assert_eq!(net.client.poll_event(), None);
    // An eighth: MAX_STREAM_DATA = read + window, and the writer is told.
    assert_eq!(net.server.read(id, &mut buf[..1]), Ok(Some(1)));
    net.settle();
    assert!(
        net.ctl_from(Side::Server)
            .contains(&Ctl::MaxStreamData(id, 1125))
    );
    assert_eq!(net.client.poll_event(), Some(StreamEvent::Writable(id)));
    assert_eq!(net.client.write(id, &[1; 3000]), Ok(125));
    // The blocked frame is sent once per limit value.
    assert_eq!(net.client.write(id, &[1; 3000]), Err(WriteError::Blocked));
    net.settle();
    let blocked: Vec<Ctl> = net
        .ctl_from(Side::Client)
        .into_iter()
        .filter(|c| matches!(c, Ctl::StreamDataBlocked(..)))
        .collect();
    assert_eq!(
        blocked,
        vec![
            Ctl::StreamDataBlocked(id, 1000),
            Ctl::StreamDataBlocked(id, 1125)
        ]
    );
}

#[test]
fn connection_credit_blocks_across_streams() {
    let mut net = Net::symmetric(1500, 1000, 10);
    let a = net.client.open().unwrap();
    let b = net.client.open().unwrap();
    assert_eq!(net.client.write(a, &[1; 1000]), Ok(1000));
    assert_eq!(net.client.write(b, &[2; 1000]), Ok(500));
    assert_eq!(net.client.write(b, &[2; 1000]), Err(WriteError::Blocked));
    net.settle();
    assert!(net.ctl_from(Side::Client).contains(&Ctl::DataBlocked(1500)));
    // The server reads stream a: 1000 of its 1500 consumed, more than half: MAX_DATA 2500.
    let mut buf = [0u8; 2000];
    assert_eq!(net.server.read(a, &mut buf), Ok(Some(1000)));
    net.settle();
    assert!(net.ctl_from(Side::Server).contains(&Ctl::MaxData(2500)));
    assert_eq!(net.client.poll_event(), Some(StreamEvent::Writable(b)));
    assert_eq!(net.client.write(b, &[2; 1000]), Ok(500));
}

#[test]
fn send_buffer_limits_writes_until_acked() {
    let l = limits(1 << 20, 1 << 20, 10);
    let mut net = Net::new(l, l, 2000);
    let id = net.client.open().unwrap();
    assert_eq!(net.client.write(id, &[1; 5000]), Ok(2000));
    assert_eq!(net.client.stats().send_buffered, 2000);
    assert_eq!(net.client.write(id, &[1; 5000]), Err(WriteError::Blocked));
    net.settle();
    assert_eq!(net.client.stats().send_buffered, 0);
    assert_eq!(net.client.poll_event(), Some(StreamEvent::Writable(id)));
    // No flow-control frames: the buffer, not credit, was the limit.
    assert!(
        !net.ctl_from(Side::Client)
            .iter()
            .any(|c| matches!(c, Ctl::DataBlocked(_)))
    );
}

#[test]
fn stalled_reader_does_not_block_another_stream() {
    let mut net = Net::symmetric(200_000, 20_000, 10);
    net.rng = Rng(7);
    let mut client = App::default();
    let mut server = App::default();
    let stalled = net.client.open().unwrap();
    let live = net.client.open().unwrap();
    server.stalled.insert(stalled);
    let mut rng = Rng(3);
    client.send(stalled, rng.bytes(100_000));
    client.send(live, rng.bytes(1_000_000));
    for _ in 0..5000 {
        client.pump(&mut net.client, &mut rng);
        server.pump(&mut net.server, &mut rng);
        net.round();
        if server.ended.contains(&live) {
            break;
        }
    }
    assert!(server.ended.contains(&live), "live stream starved");
    assert_eq!(server.got[&live], client.out[&live].data);
    // The stalled stream got exactly its window and no more.
    assert_eq!(net.server.stats().recv_buffered, 20_000);
}

#[test]
fn window_growth_is_advertised_at_once() {
    let mut net = Net::symmetric(100_000, 10_000, 10);
    let id = net.client.open().unwrap();
    assert_eq!(net.client.write(id, &[1; 50_000]), Ok(10_000));
    net.settle();
    let mut buf = [0u8; 1000];
    assert_eq!(net.server.read(id, &mut buf), Ok(Some(1000)));
    net.server.set_receive_windows(1_000_000, 400_000);
    net.settle();
    let server_ctl = net.ctl_from(Side::Server);
    assert!(
        server_ctl.contains(&Ctl::MaxData(1_001_000)),
        "{server_ctl:?}"
    );
    assert!(
        server_ctl.contains(&Ctl::MaxStreamData(id, 401_000)),
        "{server_ctl:?}"
    );
    assert_eq!(net.client.write(id, &[1; 50_000]), Ok(50_000));
    // A stream opened later starts at the old credit (the peer's view) and gets the new window
    // as soon as its first data arrives.
    let second = net.client.open().unwrap();
    assert_eq!(net.client.write(second, &[1; 50_000]), Ok(10_000));
    net.settle();
    assert!(
        net.ctl_from(Side::Server)
            .contains(&Ctl::MaxStreamData(second, 400_000))
    );
    assert_eq!(net.client.write(second, &[1; 50_000]), Ok(50_000));
}

#[test]
fn window_shrink_takes_effect_as_credit_is_used() {
    let mut net = Net::symmetric(100_000, 10_000, 10);
    let id = net.client.open().unwrap();
    net.server.set_receive_windows(100_000, 2_000);
    assert!(
        !net.server.has_pending(),
        "no data yet: nothing to advertise"
    );
    assert_eq!(net.client.write(id, &[1; 20_000]), Ok(10_000));
    net.settle();
    // Reading 9,500 leaves 500 < 1,000 of the 2,000 window: credit 9,500 + 2,000.
    let mut buf = [0u8; 9_500];
    assert_eq!(net.server.read(id, &mut buf), Ok(Some(9_500)));
    net.settle();
    let msd: Vec<Ctl> = net
        .ctl_from(Side::Server)
        .into_iter()
        .filter(|c| matches!(c, Ctl::MaxStreamData(..)))
        .collect();
    assert_eq!(msd, vec![Ctl::MaxStreamData(id, 11_500)]);
}

#[test]
fn peer_reset_is_reported_and_closes_the_half() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[1; 5000]).unwrap();
    net.settle();
    net.client.write(id, &[1; 700]).unwrap();
    net.client.reset(id, 7).unwrap();
    assert_eq!(net.client.write(id, b"x"), Err(WriteError::ClosedStream));
    assert_eq!(net.client.reset(id, 7), Err(WriteError::ClosedStream));
    assert_eq!(net.client.stats().send_buffered, 0);
    // Lose the first RESET_STREAM: it is sent again.
    net.drop_next.push((Side::Client, |s| !s.reset.is_empty()));
    net.settle();
    let resets: Vec<Ctl> = net
        .ctl_from(Side::Client)
        .into_iter()
        .filter(|c| matches!(c, Ctl::Reset(..)))
        .collect();
    assert_eq!(resets, vec![Ctl::Reset(id, 7, 5700)]);
    let events: Vec<StreamEvent> = std::iter::from_fn(|| net.server.poll_event()).collect();
    assert_eq!(events, vec![StreamEvent::Opened, StreamEvent::Readable(id)]);
    assert_eq!(net.server.read(id, &mut [0; 10]), Err(ReadError::Reset(7)));
    assert_eq!(
        net.server.read(id, &mut [0; 10]),
        Err(ReadError::ClosedStream)
    );
    assert_eq!(net.server.stats().recv_buffered, 0);
    // Unread data returned its connection credit (5,700 consumed > half of 1 MiB? no: nothing
    // sent), and the stream goes away once the server finishes its half.
    net.server.finish(id).unwrap();
    net.settle();
    assert_eq!(net.server.stats().open, 0);
    assert_eq!(
        net.client.stats().open,
        1,
        "client has not read the server's FIN yet"
    );
    assert_eq!(net.client.read(id, &mut [0; 10]), Ok(None));
    assert_eq!(net.client.stats().open, 0);
}

#[test]
fn stop_sending_resets_the_peer_half() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[1; 3000]).unwrap();
    net.settle();
    assert_eq!(net.server.accept(), Some(id));
    net.server.stop(id, 9).unwrap();
    assert_eq!(
        net.server.read(id, &mut [0; 10]),
        Err(ReadError::ClosedStream)
    );
    assert_eq!(net.server.stop(id, 9), Err(ReadError::ClosedStream));
    assert_eq!(net.server.stats().recv_buffered, 0);
    // Lose the first STOP_SENDING; it is sent again.
    net.drop_next
        .push((Side::Server, |s| !s.stop_sending.is_empty()));
    net.client.write(id, &[1; 100]).unwrap();
    net.settle();
    let stops: Vec<Ctl> = net
        .ctl_from(Side::Server)
        .into_iter()
        .filter(|c| matches!(c, Ctl::Stop(..)))
        .collect();
    assert_eq!(stops, vec![Ctl::Stop(id, 9)]);
    let events: Vec<StreamEvent> = std::iter::from_fn(|| net.client.poll_event()).collect();
    assert_eq!(events, vec![StreamEvent::Stopped { id, error_code: 9 }]);
    assert_eq!(net.client.write(id, b"x"), Err(WriteError::Stopped(9)));
    assert_eq!(net.client.finish(id), Err(WriteError::Stopped(9)));
    assert!(
        net.ctl_from(Side::Client)
            .contains(&Ctl::Reset(id, 9, 3100))
    );
    // Both halves close once the server's own half is done.
    net.server.finish(id).unwrap();
    net.settle();
    assert_eq!(net.client.read(id, &mut [0; 10]), Ok(None));
    net.settle();
    assert_eq!(net.client.stats().open, 0);
    assert_eq!(net.server.stats().open, 0);
}

#[test]
fn final_size_violations_are_errors() {
    let mut st = Streams::new(
        Side::Server,
        limits(1000, 1000, 10),
        limits(1000, 1000, 10),
        1000,
    );
    let id = StreamId::new(Side::Client, 0);
    let frame = |offset, data: &'static [u8], fin| StreamFrame {
        id,
        offset,
        fin,
        data,
    };
    st.on_stream_frame(&frame(0, b"0123456789", true)).unwrap();
    assert_eq!(
        st.on_stream_frame(&frame(5, b"0123456789", false)),
        Err(StreamsError::FinalSize)
    );
    assert_eq!(
        st.on_stream_frame(&frame(0, b"01234", true)),
        Err(StreamsError::FinalSize)
    );
    assert_eq!(st.on_reset_stream(id, 0, 11), Err(StreamsError::FinalSize));
    // A duplicate of the same end is fine.
    st.on_stream_frame(&frame(5, b"56789", true)).unwrap();
    let other = StreamId::new(Side::Client, 1);
    st.on_stream_frame(&StreamFrame {
        id: other,
        offset: 0,
        fin: false,
        data: b"abcdef",
    })
    .unwrap();
    assert_eq!(
        st.on_reset_stream(other, 0, 5),
        Err(StreamsError::FinalSize)
    );
}

#[test]
fn flow_control_violations_are_errors() {
    let mut st = Streams::new(
        Side::Server,
        limits(150, 100, 10),
        limits(1000, 1000, 10),
        1000,
    );
    let a = StreamId::new(Side::Client, 0);
    let b = StreamId::new(Side::Client, 1);
    let data = [0u8; 101];
    let f = |id, offset, len: usize| StreamFrame {
        id,
        offset,
        fin: false,
        data: &data[..len],
    };
    assert_eq!(
        st.on_stream_frame(&f(a, 0, 101)),
        Err(StreamsError::FlowControl)
    );
    st.on_stream_frame(&f(a, 0, 100)).unwrap();
    // Retransmitted bytes do not count twice.
    st.on_stream_frame(&f(a, 0, 100)).unwrap();
    st.on_stream_frame(&f(b, 0, 50)).unwrap();
    assert_eq!(
        st.on_stream_frame(&f(b, 50, 1)),
        Err(StreamsError::FlowControl)
    );
    let c = StreamId::new(Side::Client, 2);
    assert_eq!(st.on_reset_stream(c, 0, 1), Err(StreamsError::FlowControl));
}

#[test]
fn frames_for_streams_we_never_opened_are_state_errors() {
    let mut st = Streams::new(
        Side::Client,
        limits(1000, 1000, 10),
        limits(1000, 1000, 10),
        1000,
    );
    let ours = StreamId::new(Side::Client, 0);
    let f = StreamFrame {
        id: ours,
        offset: 0,
        fin: false,
        data: b"x",
    };
    assert_eq!(st.on_stream_frame(&f), Err(StreamsError::StreamState));
    assert_eq!(
        st.on_reset_stream(ours, 0, 0),
        Err(StreamsError::StreamState)
    );
    assert_eq!(st.on_stop_sending(ours, 0), Err(StreamsError::StreamState));
    assert_eq!(
        st.on_max_stream_data(ours, 10),
        Err(StreamsError::StreamState)
    );
    assert_eq!(st.open(), Some(ours));
    assert_eq!(st.on_max_stream_data(ours, 10_000), Ok(()));
}

#[test]
fn peer_streams_open_implicitly_in_order() {
    let mut st = Streams::new(
        Side::Server,
        limits(1000, 1000, 10),
        limits(1000, 1000, 10),
        1000,
    );
    let third = StreamId::new(Side::Client, 3);
    st.on_stream_frame(&StreamFrame {
        id: third,
        offset: 0,
        fin: false,
        data: b"hi",
    })
    .unwrap();
    let accepted: Vec<StreamId> = std::iter::from_fn(|| st.accept()).collect();
    let expected: Vec<StreamId> = (0..4).map(|i| StreamId::new(Side::Client, i)).collect();
    assert_eq!(accepted, expected);
    assert_eq!(st.poll_event(), Some(StreamEvent::Opened));
    assert_eq!(st.poll_event(), Some(StreamEvent::Readable(third)));
    assert_eq!(st.poll_event(), None);
    assert_eq!(st.stats().opened_total, 4);
    let over = StreamId::new(Side::Client, 10);
    let f = StreamFrame {
        id: over,
        offset: 0,
        fin: false,
        data: b"x",
    };
    assert_eq!(st.on_stream_frame(&f), Err(StreamsError::StreamLimit));
    assert_eq!(st.on_stop_sending(over, 1), Err(StreamsError::StreamLimit));
}

#[test]
fn stream_limit_is_enforced_and_raised() {
    let mut net = Net::new(
        limits(1 << 20, 1 << 20, 5),
        limits(1 << 20, 1 << 20, 2),
        1 << 20,
    );
    let a = net.client.open().unwrap();
    let _b = net.client.open().unwrap();
    assert_eq!(net.client.open(), None);
    net.client.write(a, b"hello").unwrap();
    net.client.finish(a).unwrap();
    net.settle();
    assert_eq!(net.server.accept(), Some(a));
    let mut buf = [0u8; 10];
    assert_eq!(net.server.read(a, &mut buf), Ok(Some(5)));
    assert_eq!(net.server.read(a, &mut buf), Ok(None));
    assert_eq!(net.client.open(), None, "server half still open");
    net.server.finish(a).unwrap();
    net.settle();
    // Stream b never carried data, so the server does not know it yet.
    assert_eq!(net.server.stats().open, 0);
    assert!(net.ctl_from(Side::Server).contains(&Ctl::MaxStreams(3)));
    let events: Vec<StreamEvent> = std::iter::from_fn(|| net.client.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            StreamEvent::Finished(a),
            StreamEvent::Readable(a),
            StreamEvent::Available
        ]
    );
    assert_eq!(net.client.read(a, &mut buf), Ok(None));
    assert_eq!(net.client.stats().open, 1);
    assert_eq!(net.client.open(), Some(StreamId::new(Side::Client, 2)));
    assert_eq!(net.client.open(), None);
}

#[test]
fn fin_alone_after_all_data_was_sent() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[3; 100]).unwrap();
    net.settle();
    net.client.finish(id).unwrap();
    net.settle();
    assert_eq!(
        net.data,
        vec![
            (Side::Client, id, 0, 100, false),
            (Side::Client, id, 100, 0, true)
        ]
    );
    let mut buf = [0u8; 200];
    assert_eq!(net.server.read(id, &mut buf), Ok(Some(100)));
    assert_eq!(net.server.read(id, &mut buf), Ok(None));
    assert_eq!(net.server.read(id, &mut buf), Err(ReadError::ClosedStream));
    assert_eq!(net.client.finish(id), Err(WriteError::ClosedStream));
    // An empty stream can be finished at once.
    let empty = net.client.open().unwrap();
    net.client.finish(empty).unwrap();
    net.settle();
    assert_eq!(net.server.read(empty, &mut buf), Ok(None));
}

#[test]
fn fin_rides_on_the_last_data_frame() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[3; 2000]).unwrap();
    net.client.finish(id).unwrap();
    net.settle();
    let fins: Vec<_> = net.data.iter().filter(|d| d.4).collect();
    assert_eq!(fins.len(), 1);
    assert_eq!(fins[0].2 + fins[0].3, 2000);
    assert!(fins[0].3 > 0);
}

#[test]
fn finished_only_after_everything_is_acked() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[3; 5000]).unwrap();
    net.client.finish(id).unwrap();
    net.drop_next
        .push((Side::Client, |s| s.stream.iter().any(|d| d.fin)));
    net.transmit(Side::Client, 100);
    net.deliver_all_in_order();
    assert_eq!(
        net.client.poll_event(),
        None,
        "FIN packet lost: not finished"
    );
    assert_eq!(
        net.client.stats().send_buffered,
        5000 - net.data.iter().map(|d| d.3).sum::<u64>()
    );
    net.settle();
    assert_eq!(net.client.poll_event(), Some(StreamEvent::Finished(id)));
    assert_eq!(net.client.poll_event(), None);
    assert_eq!(net.client.stats().send_buffered, 0);
}

#[test]
fn lost_data_goes_before_new_data() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let a = net.client.open().unwrap();
    let b = net.client.open().unwrap();
    net.client.write(a, &[1; 1000]).unwrap();
    let first = net.build(Side::Client, MTU).unwrap();
    net.client.write(b, &[2; 5000]).unwrap();
    net.client.on_lost(&first.sent);
    let next = net.build(Side::Client, MTU).unwrap();
    assert_eq!(
        next.sent.stream[0],
        SentStreamData {
            id: a,
            offset: 0,
            len: 1000,
            fin: false
        }
    );
    assert_eq!(net.client.stats().bytes_retransmitted, 1000);
}

#[test]
fn bulk_streams_share_packets_round_robin() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let ids: Vec<StreamId> = (0..3).map(|_| net.client.open().unwrap()).collect();
    for id in &ids {
        net.client.write(*id, &[9; 20_000]).unwrap();
    }
    let order: Vec<StreamId> = (0..9)
        .map(|_| net.build(Side::Client, MTU).unwrap().sent.stream[0].id)
        .collect();
    let expected: Vec<StreamId> = (0..9).map(|i| ids[i % 3]).collect();
    assert_eq!(order, expected);
}

#[test]
fn stream_frames_fill_the_packet_exactly() {
    let mut st = Streams::new(
        Side::Client,
        limits(1 << 20, 1 << 20, 10),
        limits(1 << 20, 1 << 20, 10),
        1 << 20,
    );
    let id = st.open().unwrap();
    st.write(id, &[0; 100_000]).unwrap();
    for prefix in [0usize, 1, 17, 150] {
        for max_len in [200usize, 1200, 1350, 1472] {
            let mut buf = vec![0xee; prefix];
            let mut sent = SentFrames::default();
            st.write_stream_data(&mut buf, max_len, &mut sent);
            assert_eq!(buf.len(), max_len, "prefix {prefix} max {max_len}");
        }
    }
    // Too little room for 8 bytes of data (11 bytes, the header without length takes 4 or 6):
    // nothing is written.
    let mut buf = vec![0; 1200 - 11];
    let mut sent = SentFrames::default();
    st.write_stream_data(&mut buf, 1200, &mut sent);
    assert!(sent.stream.is_empty());
    assert_eq!(buf.len(), 1189);
}

#[test]
fn control_frames_respect_max_len_and_stay_queued() {
    let mut st = Streams::new(
        Side::Server,
        limits(1000, 1000, 10),
        limits(1000, 1000, 10),
        1000,
    );
    st.set_receive_windows(1 << 40, 1000);
    let mut buf = Vec::new();
    let mut sent = SentFrames::default();
    st.write_control(&mut buf, 3, &mut sent);
    assert!(buf.is_empty() && sent.is_empty());
    assert!(st.has_pending());
    st.write_control(&mut buf, 100, &mut sent);
    assert!(sent.max_data);
    assert_eq!(
        frame::iter(&buf).collect::<Vec<_>>(),
        vec![Ok(Frame::MaxData(1 << 40))]
    );
    assert!(!st.has_pending());
}

#[test]
fn lost_credit_frames_are_resent_with_the_current_value() {
    let mut net = Net::symmetric(10_000, 10_000, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[1; 10_000]).unwrap();
    net.settle();
    let mut buf = [0u8; 6000];
    assert_eq!(net.server.read(id, &mut buf), Ok(Some(6000)));
    let first = net.build(Side::Server, MTU).unwrap();
    assert!(first.sent.max_data && first.sent.max_stream_data == vec![id]);
    // The connection window grows before the loss is noticed: MAX_DATA goes out once, with
    // the new value; the lost MAX_STREAM_DATA is sent again as is.
    net.server.set_receive_windows(30_000, 10_000);
    net.server.on_lost(&first.sent);
    net.settle();
    let ctl = net.ctl_from(Side::Server);
    assert_eq!(
        ctl,
        vec![Ctl::MaxData(36_000), Ctl::MaxStreamData(id, 16_000)]
    );
}

#[test]
fn ten_thousand_idle_streams() {
    let mut net = Net::symmetric(1 << 30, 1 << 20, 20_000);
    let ids: Vec<StreamId> = (0..10_000).map(|_| net.client.open().unwrap()).collect();
    assert!(!net.client.has_pending());
    let last = ids[9_999];
    net.client.write(last, b"ping").unwrap();
    net.settle();
    assert_eq!(
        net.server.stats().open,
        10_000,
        "lower streams opened implicitly"
    );
    assert_eq!(net.server.read(last, &mut [0; 8]), Ok(Some(4)));
    assert_eq!(net.client.stats().open, 10_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any loss/reorder schedule delivers every byte intact and closes every stream.
    #[test]
    fn pair_survives_random_schedules(
        seed in any::<u64>(),
        loss in 0u64..300,
        hold in 0u64..500,
        streams in 1usize..6,
        size in 0usize..20_000,
        reply in 0usize..5_000,
    ) {
        let mut net = Net::symmetric(64 * 1024, 16 * 1024, 10);
        net.rng = Rng(seed);
        net.loss_per_mille = loss;
        net.hold_per_mille = hold;
        let (net, client, server) = run_transfer(net, streams, size, reply);
        prop_assert_eq!(client.finished.len(), streams);
        prop_assert_eq!(server.finished.len(), streams);
        prop_assert_eq!(net.client.stats().send_buffered, 0);
        prop_assert_eq!(net.server.stats().recv_buffered, 0);
    }
}

#[test]
fn stopping_a_stream_returns_its_connection_credit() {
    let mut net = Net::symmetric(4000, 4000, 10);
    let a = net.client.open().unwrap();
    let b = net.client.open().unwrap();
    assert_eq!(net.client.write(a, &[1; 3000]), Ok(3000));
    net.settle();
    // Stream a's 3,000 unread bytes hold most of the connection window.
    assert_eq!(net.client.write(b, &[2; 3000]), Ok(1000));
    net.settle();
    net.server.stop(a, 1).unwrap();
    net.settle();
    assert!(net.ctl_from(Side::Server).contains(&Ctl::MaxData(7000)));
    assert_eq!(
        std::iter::from_fn(|| net.client.poll_event()).collect::<Vec<_>>(),
        vec![
            StreamEvent::Stopped {
                id: a,
                error_code: 1
            },
            StreamEvent::Writable(b)
        ]
    );
    assert_eq!(net.client.write(b, &[2; 5000]), Ok(3000));
}

#[test]
fn stale_control_entries_do_not_count_as_pending() {
    let mut net = Net::symmetric(1000, 1000, 10);
    let id = net.client.open().unwrap();
    assert_eq!(net.client.write(id, &[1; 2000]), Ok(1000));
    // DATA_BLOCKED(1000) and STREAM_DATA_BLOCKED are queued; the peer raises both credits first.
    net.client.on_max_data(5000);
    net.client.on_max_stream_data(id, 5000).unwrap();
    net.settle();
    assert!(
        net.ctl_from(Side::Client).is_empty(),
        "{:?}",
        net.ctl_from(Side::Client)
    );
    // A reset acknowledged before its queued copy was sent leaves nothing pending.
    net.client.reset(id, 3).unwrap();
    let p = net.build(Side::Client, MTU).unwrap();
    net.client.on_lost(&p.sent);
    let mut acked = SentFrames::default();
    acked.reset.push(id);
    net.client.on_acked(&acked);
    assert!(!net.client.has_pending());
}

#[test]
fn reset_after_finish_abandons_unacked_data() {
    let mut net = Net::symmetric(1 << 20, 1 << 20, 10);
    let id = net.client.open().unwrap();
    net.client.write(id, &[1; 4000]).unwrap();
    net.client.finish(id).unwrap();
    net.client.reset(id, 5).unwrap();
    let p = net.build(Side::Client, MTU).unwrap();
    assert!(p.sent.stream.is_empty() && p.sent.reset == vec![id]);
    net.flight.push(p);
    net.settle();
    assert_eq!(net.server.read(id, &mut [0; 10]), Err(ReadError::Reset(5)));
    assert_eq!(net.client.poll_event(), None, "no Finished after a reset");
}

#[test]
fn idle_streams_are_small() {
    // 10,000 idle streams must stay cheap: no buffers allocated, a few hundred bytes each.
    assert!(size_of::<Stream>() <= 400, "{}", size_of::<Stream>());
}

/// One step of a hostile peer or an erratic application.
#[derive(Debug, Clone)]
enum Op {
    Data {
        stream: u8,
        offset: u64,
        len: u16,
        fin: bool,
    },
    Reset {
        stream: u8,
        code: u64,
        final_size: u64,
    },
    Stop {
        stream: u8,
        code: u64,
    },
    MaxData(u64),
    MaxStreamData {
        stream: u8,
        max: u64,
    },
    MaxStreams(u64),
    Open,
    Write {
        stream: u8,
        len: u16,
    },
    Finish(u8),
    Read {
        stream: u8,
        len: u16,
    },
    AppReset(u8),
    AppStop(u8),
    Window(u64, u64),
    /// Build a packet; then ack it (true) or lose it (false) later.
    Transmit(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let offset = prop_oneof![0..5000u64, 0..varint::MAX];
    let value = prop_oneof![0..100_000u64, any::<u64>()];
    prop_oneof![
        (any::<u8>(), offset.clone(), any::<u16>(), any::<bool>()).prop_map(
            |(stream, offset, len, fin)| Op::Data {
                stream,
                offset,
                len,
                fin
            }
        ),
        (any::<u8>(), any::<u64>(), offset).prop_map(|(stream, code, final_size)| Op::Reset {
            stream,
            code,
            final_size
        }),
        (any::<u8>(), any::<u64>()).prop_map(|(stream, code)| Op::Stop { stream, code }),
        value.clone().prop_map(Op::MaxData),
        (any::<u8>(), value.clone()).prop_map(|(stream, max)| Op::MaxStreamData { stream, max }),
        value.clone().prop_map(Op::MaxStreams),
        Just(Op::Open),
        (any::<u8>(), any::<u16>()).prop_map(|(stream, len)| Op::Write { stream, len }),
        any::<u8>().prop_map(Op::Finish),
        (any::<u8>(), any::<u16>()).prop_map(|(stream, len)| Op::Read { stream, len }),
        any::<u8>().prop_map(Op::AppReset),
        any::<u8>().prop_map(Op::AppStop),
        (value.clone(), value).prop_map(|(a, b)| Op::Window(a, b)),
        any::<bool>().prop_map(Op::Transmit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the peer sends and the application does, nothing panics and the byte counters
    /// stay consistent.
    #[test]
    fn arbitrary_inputs_never_panic(ops in prop::collection::vec(op(), 1..120)) {
        let mut st = Streams::new(
            Side::Server,
            limits(50_000, 20_000, 8),
            limits(50_000, 20_000, 8),
            30_000,
        );
        let payload = vec![0x42u8; u16::MAX as usize];
        let mut in_flight: Vec<(bool, SentFrames)> = Vec::new();
        // Stream numbers pick from both sides' first few indices.
        let sid = |n: u8| StreamId(u64::from(n % 24));
        for op in ops {
            match op {
                Op::Data { stream, offset, len, fin } => {
                    let data = &payload[..usize::from(len)];
                    let _ = st.on_stream_frame(&StreamFrame { id: sid(stream), offset, fin, data });
                }
                Op::Reset { stream, code, final_size } => {
                    let _ = st.on_reset_stream(sid(stream), code, final_size);
                }
                Op::Stop { stream, code } => {
                    let _ = st.on_stop_sending(sid(stream), code);
                }
                Op::MaxData(v) => st.on_max_data(v),
                Op::MaxStreamData { stream, max } => {
                    let _ = st.on_max_stream_data(sid(stream), max);
                }
                Op::MaxStreams(v) => st.on_max_streams(v),
                Op::Open => {
                    let _ = st.open();
                }
                Op::Write { stream, len } => {
                    let _ = st.write(sid(stream), &payload[..usize::from(len)]);
                }
                Op::Finish(stream) => {
                    let _ = st.finish(sid(stream));
                }
                Op::Read { stream, len } => {
                    let mut buf = vec![0u8; usize::from(len)];
                    let _ = st.read(sid(stream), &mut buf);
                }
                Op::AppReset(stream) => {
                    let _ = st.reset(sid(stream), 1);
                }
                Op::AppStop(stream) => {
                    let _ = st.stop(sid(stream), 2);
                }
                Op::Window(conn, stream) => {
                    st.set_receive_windows(conn % (1 << 40), stream % (1 << 40));
                }
                Op::Transmit(ack) => {
                    let mut buf = Vec::new();
                    let mut sent = SentFrames::default();
                    st.write_control(&mut buf, MTU, &mut sent);
                    st.write_stream_data(&mut buf, MTU, &mut sent);
                    prop_assert!(buf.len() <= MTU);
                    prop_assert!(frame::iter(&buf).all(|f| f.is_ok()));
                    in_flight.push((ack, sent));
                    if in_flight.len() > 3 {
                        let (ack, sent) = in_flight.remove(0);
                        if ack { st.on_acked(&sent) } else { st.on_lost(&sent) }
                    }
                }
            }
            let stats = st.stats();
            prop_assert!(stats.send_buffered <= 30_000);
            let _ = st.has_pending();
            while st.poll_event().is_some() {}
        }
    }
}
