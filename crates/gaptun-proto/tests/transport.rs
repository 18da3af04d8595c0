//! End-to-end behaviour of the transport over the deterministic simulated network.
//!
//! Every test is seeded and runs in virtual time: a failure replays exactly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use gaptun_proto::{
    ConnectionError, EndpointConfig, Event, Psk, ReadError, StreamEvent, StreamId, WriteError,
};
use gaptun_sim::{
    BulkTransfer, ClientSetup, Direction, End, GilbertElliott, LinkConfig, Node, Path, Sim,
    SimConfig,
};
use sha2::{Digest, Sha256};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid test address")
}

/// A bad path: delay with jitter, a bottleneck, random and burst loss, reordering, duplication
/// and corruption, all at once.
fn hostile(loss: f64) -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(30))
        .with_jitter(Duration::from_millis(5))
        .with_rate_mbps(40.0)
        .with_queue_bytes(400_000)
        .with_loss(loss)
        .with_burst_loss(GilbertElliott::with_mean_loss(0.01, 3.0))
        .with_reorder(0.02, Duration::from_millis(8))
        .with_duplicate(0.02)
        .with_corrupt(0.01)
}

fn establish(sim: &mut Sim) {
    sim.connect(0).expect("client has a key");
    let up = sim.run_for(Duration::from_secs(10), |sim| {
        sim.client_connection(0).is_some_and(|c| c.is_established())
            && sim.server_connection(0).is_some_and(|c| c.is_established())
    });
    assert!(up, "handshake did not complete");
}

fn drain_events(sim: &mut Sim, end: End) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(conn) = sim.connection(0, end) {
        while let Some(e) = conn.poll() {
            events.push(e);
        }
    }
    events
}

#[test]
fn streams_arrive_intact_under_loss_reordering_duplication_and_corruption() {
    for (seed, loss) in [(10, 0.0), (11, 0.05), (12, 0.15), (13, 0.30)] {
        for direction in [Direction::ToServer, Direction::ToClient] {
            let mut sim = Sim::new(SimConfig::new(seed).with_link(hostile(loss)));
            let bytes = if loss > 0.2 { 400_000 } else { 1_500_000 };
            let id = sim
                .add_workload(BulkTransfer::new(0, direction, bytes, seed).with_streams(4, seed));
            assert!(
                sim.run_workloads(Duration::from_secs(600)),
                "{direction:?} at {loss} loss did not finish"
            );
            let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
            assert_eq!(transfer.verify(), Ok(()), "{direction:?} at {loss} loss");
            assert_eq!(transfer.received(), bytes);
            // Corrupted datagrams were seen and dropped by authentication, not delivered.
            let corrupted = sim.uplink().stats().corrupted + sim.downlink().stats().corrupted;
            let dropped: u64 = [End::Client, End::Server]
                .into_iter()
                .filter_map(|end| sim.connection(0, end).map(|c| c.stats().dropped_auth))
                .sum();
            assert!(
                corrupted > 0 && dropped > 0,
                "corruption at {loss}: {corrupted}/{dropped}"
            );
        }
    }
}

#[test]
fn a_thousand_concurrent_streams_all_complete() {
    const STREAMS: usize = 1000;
    const SIZE: usize = 3000;
    let link = LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_rate_mbps(100.0)
        .with_loss(0.02);
    let mut sim = Sim::new(SimConfig::new(21).with_link(link));
    establish(&mut sim);
    let payload = |i: usize| -> Vec<u8> { (0..SIZE).map(|j| (i * 7 + j) as u8).collect() };
    let mut pending: Vec<(StreamId, Vec<u8>, usize, bool)> = Vec::new();
    {
        let conn = sim.client_connection(0).expect("client");
        for i in 0..STREAMS {
            let id = conn
                .open_stream()
                .expect("stream limit allows 1000 streams");
            pending.push((id, payload(i), 0, false));
        }
    }
    let mut received: HashMap<StreamId, Vec<u8>> = HashMap::new();
    let mut finished: HashMap<StreamId, bool> = HashMap::new();
    let done = sim.run_for(Duration::from_secs(120), |sim| {
        if let Some(conn) = sim.client_connection(0) {
            for (id, data, off, fin) in pending.iter_mut() {
                while *off < data.len() {
                    match conn.write(*id, &data[*off..]) {
                        Ok(n) => *off += n,
                        Err(WriteError::Blocked) => break,
                        Err(e) => panic!("write failed: {e}"),
                    }
                }
                if *off == data.len() && !*fin {
                    conn.finish(*id).expect("finish");
                    *fin = true;
                }
            }
        }
        if let Some(conn) = sim.server_connection(0) {
            while let Some(id) = conn.accept_stream() {
                received.entry(id).or_default();
            }
            let mut buf = [0u8; 4096];
            for (id, data) in received.iter_mut() {
                if finished.contains_key(id) {
                    continue;
                }
                loop {
                    match conn.read(*id, &mut buf) {
                        Ok(Some(n)) => data.extend_from_slice(&buf[..n]),
                        Ok(None) => {
                            finished.insert(*id, true);
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                        Err(e) => panic!("read failed: {e}"),
                    }
                }
            }
        }
        finished.len() == STREAMS
    });
    assert!(
        done,
        "only {} of {STREAMS} streams finished",
        finished.len()
    );
    for (i, (id, data, _, _)) in pending.iter().enumerate() {
        assert_eq!(received.get(id), Some(data), "stream {i} damaged");
    }
}

#[test]
fn a_stalled_reader_does_not_block_other_streams() {
    let link = LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_rate_mbps(50.0);
    let config = SimConfig::new(31).with_link(link).with_transport(|t| {
        t.receive_window = 2 * 1024 * 1024;
        t.stream_receive_window = 1024 * 1024;
    });
    let mut sim = Sim::new(config);
    establish(&mut sim);
    let (stalled, live) = {
        let conn = sim.client_connection(0).expect("client");
        (
            conn.open_stream().expect("stream"),
            conn.open_stream().expect("stream"),
        )
    };
    let chunk = vec![0xab; 64 * 1024];
    let total: usize = 8 * 1024 * 1024;
    let mut written = [0usize; 2];
    let mut live_received = 0usize;
    let mut live_hash = Sha256::new();
    let mut server_ids: Vec<StreamId> = Vec::new();
    let done = sim.run_for(Duration::from_secs(60), |sim| {
        if let Some(conn) = sim.client_connection(0) {
            for (k, id) in [stalled, live].into_iter().enumerate() {
                while written[k] < total {
                    match conn.write(id, &chunk[..chunk.len().min(total - written[k])]) {
                        Ok(n) => written[k] += n,
                        Err(_) => break,
                    }
                }
            }
        }
        if let Some(conn) = sim.server_connection(0) {
            while let Some(id) = conn.accept_stream() {
                server_ids.push(id);
            }
            let mut buf = [0u8; 16 * 1024];
            // Only the second stream is ever read.
            if let Some(&id) = server_ids.iter().find(|id| **id == live) {
                while let Ok(Some(n)) = conn.read(id, &mut buf) {
                    live_received += n;
                    live_hash.update(&buf[..n]);
                }
            }
        }
        live_received == total
    });
    assert!(
        done,
        "live stream got {live_received} of {total} bytes while the other stalled"
    );
    // The stalled stream used its credit and no more.
    assert!(
        written[0] <= 1024 * 1024 + 64 * 1024,
        "stalled stream wrote {}",
        written[0]
    );
    let mut expected = Sha256::new();
    for _ in 0..total / chunk.len() {
        expected.update(&chunk);
    }
    assert_eq!(live_hash.finalize(), expected.finalize());
}

#[test]
fn a_larger_receive_window_takes_effect_mid_transfer() {
    // 200 ms RTT, plenty of bandwidth: goodput is window / RTT.
    let link = LinkConfig::ideal()
        .with_delay(Duration::from_millis(100))
        .with_rate_mbps(200.0);
    let config = SimConfig::new(41).with_link(link).with_transport(|t| {
        t.receive_window = 128 * 1024;
        t.congestion = gaptun_proto::CongestionKind::None;
    });
    let mut sim = Sim::new(config);
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 200_000_000, 4));
    sim.advance(Duration::from_secs(3));
    let t0 = sim.now();
    sim.advance(Duration::from_secs(3));
    let t1 = sim.now();
    let before = sim
        .workload::<BulkTransfer>(id)
        .expect("workload")
        .goodput_bps(t0, t1);
    let server = sim.server_connection(0).expect("server side");
    server.set_receive_window(4 * 1024 * 1024);
    assert_eq!(server.stats().receive_window, 4 * 1024 * 1024);
    sim.advance(Duration::from_secs(3));
    let t2 = sim.now();
    sim.advance(Duration::from_secs(3));
    let t3 = sim.now();
    let after = sim
        .workload::<BulkTransfer>(id)
        .expect("workload")
        .goodput_bps(t2, t3);
    // 128 KiB / 200 ms is about 5 Mbit/s; 4 MiB / 200 ms about 160 Mbit/s.
    assert!(before < 8e6, "small window gave {before} bit/s");
    assert!(
        after > before * 8.0,
        "window change: {before} -> {after} bit/s"
    );
}

#[test]
fn a_transfer_survives_a_client_address_change() {
    for direction in [Direction::ToServer, Direction::ToClient] {
        let link = LinkConfig::ideal()
            .with_delay(Duration::from_millis(25))
            .with_rate_mbps(50.0)
            .with_loss(0.01);
        let mut sim = Sim::new(SimConfig::new(51).with_link(link));
        let id = sim.add_workload(BulkTransfer::new(0, direction, 6_000_000, 5));
        sim.advance(Duration::from_millis(600));
        assert!(
            sim.workload::<BulkTransfer>(id)
                .expect("workload")
                .received()
                > 0
        );
        sim.rebind_client(0, addr("10.0.0.200:50000"));
        assert!(
            sim.run_workloads(Duration::from_secs(60)),
            "{direction:?} stalled after rebinding"
        );
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
        assert_eq!(transfer.verify(), Ok(()));
        let server = sim.server_connection(0).expect("server side");
        assert_eq!(server.remote_address(), addr("10.0.0.200:50000"));
        assert_eq!(server.stats().migrations, 1);
    }
}

#[test]
fn with_the_wrong_key_the_server_never_answers() {
    let mut config = SimConfig::new(61);
    let mut client = EndpointConfig::client(Psk::from_bytes([0x99; 32]));
    client.transport.handshake_timeout = Duration::from_secs(5);
    config.clients = vec![ClientSetup::new(client)];
    let mut sim = Sim::new(config);
    sim.set_capture(true);
    sim.connect(0).expect("client has a key");
    sim.advance(Duration::from_secs(8));
    assert!(
        sim.captured_from(Node::Client(0)).count() >= 2,
        "client retried its Initial"
    );
    assert_eq!(
        sim.captured_from(Node::Server).count(),
        0,
        "server answered a wrong key"
    );
    assert!(sim.server().stats().dropped_unauthenticated >= 2);
    let events = drain_events(&mut sim, End::Client);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::ConnectionLost(ConnectionError::HandshakeTimeout(_))
        )),
        "client reports the failed handshake: {events:?}"
    );
    let message = ConnectionError::HandshakeTimeout(Duration::from_secs(5)).to_string();
    assert!(message.contains("check address, port and key"), "{message}");
}

#[test]
fn replayed_datagrams_and_handshakes_are_ignored() {
    let mut sim = Sim::new(SimConfig::new(71));
    sim.set_capture(true);
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 200_000, 6));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    let from_client: Vec<_> = sim.captured_from(Node::Client(0)).cloned().collect();
    assert!(from_client.len() > 10);
    let received_before = sim
        .server_connection(0)
        .expect("server")
        .stats()
        .packets_received;
    sim.take_captured();
    // Replay everything the client sent, from the client's own address and from a stranger's.
    let stranger = addr("198.51.100.1:6000");
    for d in &from_client {
        sim.inject_to_server(d.src, d.data.clone());
        sim.inject_to_server(stranger, d.data.clone());
    }
    sim.advance(Duration::from_secs(3));
    assert_eq!(
        sim.captured_from(Node::Server)
            .filter(|c| c.dst == stranger)
            .count(),
        0
    );
    assert_eq!(
        sim.server().stats().accepted,
        1,
        "a replayed Initial made a second connection"
    );
    assert!(sim.server().stats().dropped_replayed_handshakes >= 1);
    let server = sim.server_connection(0).expect("server");
    let stats = server.stats();
    assert_eq!(
        stats.packets_received, received_before,
        "a replayed packet was accepted"
    );
    assert!(stats.dropped_replay > 0);
    assert_eq!(
        server.remote_address(),
        sim.client_address(0),
        "a replay moved the connection"
    );
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
}

#[test]
fn flipped_bits_are_dropped_and_counted() {
    let mut sim = Sim::new(SimConfig::new(81));
    sim.set_capture(true);
    establish(&mut sim);
    {
        let conn = sim.client_connection(0).expect("client");
        let id = conn.open_stream().expect("stream");
        conn.write(id, b"ping").expect("write");
    }
    sim.advance(Duration::from_millis(200));
    let sample: Vec<_> = sim.captured_from(Node::Client(0)).cloned().collect();
    let last = sample.last().expect("client sent packets").clone();
    let before = sim.server_connection(0).expect("server").stats();
    let mut injected = 0;
    for byte in 0..last.data.len() {
        for bit in [0u8, 3, 7] {
            let mut d = last.data.clone();
            d[byte] ^= 1 << bit;
            sim.inject_to_server(last.src, d);
            injected += 1;
        }
    }
    sim.advance(Duration::from_millis(100));
    let after = sim.server_connection(0).expect("server").stats();
    assert_eq!(
        after.packets_received, before.packets_received,
        "a damaged packet was accepted"
    );
    let dropped =
        (after.dropped_auth - before.dropped_auth) + (sim.server().stats().dropped_unauthenticated);
    assert_eq!(dropped, injected, "every damaged datagram is counted");
    assert!(sim.server_connection(0).expect("server").is_established());
}

#[test]
fn idle_connections_time_out_and_keepalive_keeps_them_up() {
    // With keepalive: an hour of silence from the application, the connection stays up.
    let config = SimConfig::new(91).with_transport(|t| {
        t.keepalive_interval = Some(Duration::from_secs(5));
        t.idle_timeout = Duration::from_secs(15);
    });
    let mut sim = Sim::new(config);
    establish(&mut sim);
    sim.advance(Duration::from_secs(3600));
    assert!(sim.client_connection(0).expect("client").is_established());
    assert!(sim.server_connection(0).expect("server").is_established());

    // Without keepalive: both ends time out after the idle timeout.
    let config = SimConfig::new(92).with_transport(|t| {
        t.keepalive_interval = None;
        t.idle_timeout = Duration::from_secs(15);
    });
    let mut sim = Sim::new(config);
    establish(&mut sim);
    sim.advance(Duration::from_secs(14));
    assert!(sim.client_connection(0).expect("client").is_established());
    sim.advance(Duration::from_secs(2));
    for end in [End::Client, End::Server] {
        let events = drain_events(&mut sim, end);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::ConnectionLost(ConnectionError::TimedOut(_)))),
            "{end:?}: {events:?}"
        );
    }

    // A dead peer (everything dropped) is detected long before the idle timeout: at the
    // latest the first keepalive PING (at 5 s) goes unanswered, and the peer gets the dead-peer
    // limit (3 s) to answer it.
    let config = SimConfig::new(93).with_transport(|t| {
        t.keepalive_interval = Some(Duration::from_secs(5));
        t.idle_timeout = Duration::from_secs(15);
    });
    let mut sim = Sim::new(config);
    establish(&mut sim);
    sim.blackhole_indefinitely(Path::Downlink);
    sim.advance(Duration::from_secs(9));
    let events = drain_events(&mut sim, End::Client);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ConnectionLost(ConnectionError::Unresponsive(_)))),
        "{events:?}"
    );
}

#[test]
fn either_side_can_close() {
    for closer in [End::Client, End::Server] {
        let mut sim = Sim::new(SimConfig::new(101));
        establish(&mut sim);
        let now = sim.now();
        sim.connection(0, closer)
            .expect("conn")
            .close(now, 42, b"done here");
        sim.advance(Duration::from_secs(1));
        let events = drain_events(&mut sim, closer.peer());
        let expected = ConnectionError::ClosedByPeer {
            code: 42,
            reason: "done here".into(),
        };
        assert!(
            events.contains(&Event::ConnectionLost(expected)),
            "{closer:?} closed, peer saw {events:?}"
        );
        let own = drain_events(&mut sim, closer);
        assert!(
            own.contains(&Event::ConnectionLost(ConnectionError::LocallyClosed)),
            "{own:?}"
        );
        sim.advance(Duration::from_secs(10));
        assert!(
            sim.connection(0, End::Client).is_none(),
            "client connection not cleaned up"
        );
        assert!(
            sim.connection(0, End::Server).is_none(),
            "server connection not cleaned up"
        );
    }
}

#[test]
fn stream_reset_and_stop_reach_the_peer() {
    let mut sim = Sim::new(SimConfig::new(111));
    establish(&mut sim);
    let (a, b) = {
        let conn = sim.client_connection(0).expect("client");
        let a = conn.open_stream().expect("stream");
        let b = conn.open_stream().expect("stream");
        conn.write(a, b"will be reset").expect("write");
        conn.write(b, b"will be stopped").expect("write");
        (a, b)
    };
    sim.advance(Duration::from_millis(100));
    {
        let server = sim.server_connection(0).expect("server");
        while server.accept_stream().is_some() {}
        server.stop_stream(b, 7).expect("stop");
    }
    let client = sim.client_connection(0).expect("client");
    client.reset_stream(a, 9).expect("reset");
    sim.advance(Duration::from_millis(200));
    let server = sim.server_connection(0).expect("server");
    let mut buf = [0u8; 64];
    let mut result = server.read(a, &mut buf);
    while matches!(result, Ok(Some(_))) {
        result = server.read(a, &mut buf);
    }
    assert_eq!(result, Err(ReadError::Reset(9)));
    let events = drain_events(&mut sim, End::Client);
    assert!(
        events.contains(&Event::Stream(StreamEvent::Stopped {
            id: b,
            error_code: 7
        })),
        "{events:?}"
    );
    let client = sim.client_connection(0).expect("client");
    assert_eq!(client.write(b, b"more"), Err(WriteError::Stopped(7)));
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(SimConfig::new(seed).with_link(hostile(0.05)));
        sim.set_capture(true);
        sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 300_000, 3));
        assert!(sim.run_workloads(Duration::from_secs(60)));
        let trace: Vec<_> = sim
            .captured()
            .iter()
            .map(|c| (c.at, c.data.clone()))
            .collect();
        (trace, sim.elapsed())
    };
    assert!(run(5) == run(5), "same seed gave different runs");
}

#[test]
fn an_unvalidated_client_address_gets_at_most_three_times_what_it_sent() {
    let mut sim = Sim::new(SimConfig::new(121));
    sim.set_capture(true);
    sim.connect(0).expect("client has a key");
    // Let exactly the first Initial through, then cut the uplink: the server never hears the
    // client confirm, so the client's address stays unvalidated.
    sim.run_for(Duration::from_secs(1), |sim| {
        sim.uplink().stats().delivered >= 1
    });
    sim.blackhole_indefinitely(Path::Uplink);
    // The server application tries to push a lot of data at the unconfirmed client.
    sim.advance(Duration::from_millis(1));
    if let Some(server) = sim.server_connection(0)
        && let Some(id) = server.open_stream()
    {
        let _ = server.write(id, &vec![7u8; 1 << 20]);
    }
    sim.advance(Duration::from_secs(20));
    let received: usize = sim
        .captured_from(Node::Client(0))
        .take(1)
        .map(|c| c.data.len())
        .sum();
    let sent: usize = sim.captured_from(Node::Server).map(|c| c.data.len()).sum();
    assert!(sent > 0, "the server answered the Initial");
    assert!(
        sent <= 3 * received,
        "server sent {sent} bytes for {received} received"
    );
}

#[test]
fn bulk_streams_share_the_connection_fairly() {
    let link = LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_rate_mbps(20.0)
        .with_queue_bytes(100_000);
    let mut sim = Sim::new(SimConfig::new(131).with_link(link));
    establish(&mut sim);
    let ids: Vec<StreamId> = {
        let conn = sim.client_connection(0).expect("client");
        (0..4)
            .map(|_| conn.open_stream().expect("stream"))
            .collect()
    };
    let chunk = vec![0x5au8; 16 * 1024];
    let mut received: HashMap<StreamId, u64> = HashMap::new();
    let deadline = sim.now() + Duration::from_secs(10);
    sim.run_until(deadline, |sim| {
        if let Some(conn) = sim.client_connection(0) {
            for &id in &ids {
                while conn.write(id, &chunk).is_ok_and(|n| n > 0) {}
            }
        }
        if let Some(conn) = sim.server_connection(0) {
            while conn.accept_stream().is_some() {}
            let mut buf = [0u8; 16 * 1024];
            for &id in &ids {
                while let Ok(Some(n)) = conn.read(id, &mut buf) {
                    *received.entry(id).or_default() += n as u64;
                }
            }
        }
        false
    });
    let counts: Vec<u64> = ids
        .iter()
        .map(|id| received.get(id).copied().unwrap_or(0))
        .collect();
    let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
    let (Some(min), Some(max)) = (min, max) else {
        panic!("no data")
    };
    assert!(min > 3_000_000, "streams got {counts:?}");
    assert!(max as f64 <= min as f64 * 1.2, "unfair shares: {counts:?}");
}
