//! What the transport spends on a lossy link beyond the data itself.
//!
//! - Small packets that end a burst on a nearly idle connection are sent twice
//!   (`TransportConfig::duplicate_tail_packets`), so that request/response traffic does not wait
//!   for a retransmission timeout after a single loss. Bulk transfers are not duplicated. (With
//!   FEC on, the default, parity replaces the copies: see `tests/fec.rs`; the copies are tested
//!   here with FEC off.)
//! - ACK frames report a bounded number of ranges, so they stay small under steady loss.

use std::time::Duration;

use gaptun_proto::{FecMode, StreamId};
use gaptun_sim::{BulkTransfer, Direction, LinkConfig, Node, Sim, SimConfig};

fn establish(sim: &mut Sim) {
    sim.connect(0).expect("client has a key");
    let up = sim.run_for(Duration::from_secs(10), |sim| {
        sim.client_connection(0).is_some_and(|c| c.is_established())
            && sim.server_connection(0).is_some_and(|c| c.is_established())
    });
    assert!(up, "handshake did not complete");
}

/// Runs `count` sequential 64-byte request/64-byte response exchanges on one stream and returns
/// the virtual time each one took.
fn exchanges(sim: &mut Sim, count: usize) -> Vec<Duration> {
    let id = sim
        .client_connection(0)
        .and_then(|c| c.open_stream())
        .expect("stream");
    let request = [0x5a_u8; 64];
    let mut times = Vec::new();
    let mut server_stream: Option<StreamId> = None;
    for _ in 0..count {
        let start = sim.now();
        let mut sent = false;
        let mut echoed = 0usize;
        let mut received = 0usize;
        let done = sim.run_for(Duration::from_secs(30), |sim| {
            // Whatever is written here goes out when the sim next processes an instant: ask for
            // one now.
            let mut wrote = false;
            if !sent && let Some(conn) = sim.client_connection(0) {
                sent = conn.write(id, &request) == Ok(64);
                wrote = sent;
            }
            if let Some(conn) = sim.server_connection(0) {
                if server_stream.is_none() {
                    server_stream = conn.accept_stream();
                }
                let mut buf = [0u8; 256];
                if let Some(sid) = server_stream {
                    while let Ok(Some(n)) = conn.read(sid, &mut buf) {
                        assert_eq!(conn.write(sid, &buf[..n]), Ok(n));
                        echoed += n;
                        wrote = true;
                    }
                }
            }
            if wrote {
                let now = sim.now();
                sim.wake_at(now);
            }
            if let Some(conn) = sim.client_connection(0) {
                let mut buf = [0u8; 256];
                while let Ok(Some(n)) = conn.read(id, &mut buf) {
                    received += n;
                }
            }
            received == 64
        });
        assert!(done, "exchange did not complete (echoed {echoed})");
        times.push(sim.now() - start);
        // Idle a little between exchanges, as an interactive user would.
        sim.advance(Duration::from_millis(20));
    }
    times
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    let rank = ((q / 100.0) * times.len() as f64).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}

fn lossy(loss: f64) -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(50))
        .with_rate_mbps(100.0)
        .with_loss(loss)
}

#[test]
fn a_small_request_on_an_idle_connection_is_sent_twice_and_read_once() {
    let config = SimConfig::new(5)
        .with_link(lossy(0.0))
        .with_transport(|t| t.fec = FecMode::Off);
    let mut sim = Sim::new(config);
    establish(&mut sim);
    sim.advance(Duration::from_secs(1));
    sim.set_capture(true);
    let times = exchanges(&mut sim, 1);
    // One round trip: the duplicate costs no time.
    assert!(times[0] < Duration::from_millis(105), "{:?}", times[0]);
    let from_client: Vec<Vec<u8>> = sim
        .captured_from(Node::Client(0))
        .map(|c| c.data.clone())
        .collect();
    let pairs = from_client.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(pairs, 1, "the request packet goes out exactly twice");
    let client = sim.client_connection(0).expect("client").stats();
    assert_eq!(client.packets_duplicated, 1);
    let server = sim.server_connection(0).expect("server").stats();
    assert_eq!(server.packets_duplicated, 1, "the response too");
    assert_eq!(server.dropped_replay, 1, "the copy is dropped as a replay");
}

#[test]
fn duplication_can_be_turned_off() {
    let config = SimConfig::new(5)
        .with_link(lossy(0.0))
        .with_transport(|t| t.duplicate_tail_packets = false);
    let mut sim = Sim::new(config);
    establish(&mut sim);
    sim.set_capture(true);
    exchanges(&mut sim, 3);
    let from_client: Vec<Vec<u8>> = sim
        .captured_from(Node::Client(0))
        .map(|c| c.data.clone())
        .collect();
    assert!(from_client.windows(2).all(|w| w[0] != w[1]));
    assert_eq!(
        sim.client_connection(0)
            .expect("client")
            .stats()
            .packets_duplicated,
        0
    );
}

#[test]
fn bulk_transfers_are_not_duplicated() {
    let mut sim = Sim::new(SimConfig::new(9).with_link(lossy(0.02)));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 4_000_000, 9));
    assert!(sim.run_workloads(Duration::from_secs(60)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    let stats = sim.client_connection(0).expect("client").stats();
    // 4 MB in datagrams of up to 1472 bytes (path MTU discovery's ceiling) is about 2 900.
    assert!(stats.packets_sent > 2800, "{}", stats.packets_sent);
    // At most the few packets sent while almost nothing was in flight (the very first ones).
    assert!(
        stats.packets_duplicated <= 2,
        "{} of {} packets duplicated",
        stats.packets_duplicated,
        stats.packets_sent
    );
}

#[test]
fn one_loss_no_longer_costs_a_timeout_in_request_response_traffic() {
    // 100 ms RTT, 5 % loss each way: without copies, about one exchange in ten loses its request
    // or its response and waits for a retransmission timeout, so the 99th percentile is well
    // above two round trips; with copies it stays near one.
    let run = |duplicate: bool| {
        let config = SimConfig::new(17)
            .with_link(lossy(0.05))
            .with_transport(move |t| {
                t.duplicate_tail_packets = duplicate;
                t.fec = FecMode::Off;
            });
        let mut sim = Sim::new(config);
        establish(&mut sim);
        sim.advance(Duration::from_secs(1));
        let mut times = exchanges(&mut sim, 400);
        (
            percentile(&mut times, 50.0),
            percentile(&mut times, 95.0),
            percentile(&mut times, 99.0),
        )
    };
    let (p50_on, p95_on, p99_on) = run(true);
    let (p50_off, p95_off, p99_off) = run(false);
    eprintln!(
        "with copies p50/p95/p99 {p50_on:?}/{p95_on:?}/{p99_on:?}; \
         without {p50_off:?}/{p95_off:?}/{p99_off:?}"
    );
    assert!(p50_on < Duration::from_millis(105), "{p50_on:?}");
    assert!(p50_off < Duration::from_millis(105), "{p50_off:?}");
    assert!(p95_on < Duration::from_millis(105), "{p95_on:?}");
    assert!(p95_off > Duration::from_millis(200), "{p95_off:?}");
    assert!(p99_on <= Duration::from_millis(200), "{p99_on:?}");
    assert!(p99_off > p99_on, "{p99_off:?} vs {p99_on:?}");
}

#[test]
fn acks_stay_small_under_heavy_loss() {
    // Lost packet numbers stay gaps forever, so under steady loss every ACK would carry as many
    // ranges as allowed. At most 16 are reported: the receiver's datagrams (ACKs, with a credit
    // frame now and then) stay small.
    let mut sim = Sim::new(SimConfig::new(23).with_link(lossy(0.2)));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 3_000_000, 23));
    sim.set_capture(true);
    assert!(sim.run_workloads(Duration::from_secs(120)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    // The first one is the handshake Response.
    let sizes: Vec<usize> = sim
        .captured_from(Node::Server)
        .skip(1)
        .map(|c| c.data.len())
        .collect();
    assert!(sizes.len() > 100, "{} datagrams", sizes.len());
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!(largest <= 100, "largest ACK datagram {largest} bytes");
    assert!(mean < 80.0, "mean {mean:.1} bytes");
}

/// A connection that has just carried a 2 MB upload over a path losing `loss` both ways.
fn after_a_bulk_transfer(seed: u64, loss: f64) -> Sim {
    let config = SimConfig::new(seed)
        .with_link(lossy(loss))
        .with_transport(|t| t.fec = FecMode::Off);
    let mut sim = Sim::new(config);
    let bulk = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 2_000_000, seed));
    assert!(sim.run_workloads(Duration::from_secs(60)));
    assert_eq!(
        sim.workload::<BulkTransfer>(bulk)
            .expect("workload")
            .verify(),
        Ok(())
    );
    sim
}

/// Runs `count` exchanges; returns their times and the extra copies the client sent meanwhile.
fn exchanges_counting_copies(sim: &mut Sim, count: usize) -> (Vec<Duration>, u64) {
    let copies = |sim: &mut Sim| {
        sim.client_connection(0)
            .map_or(0, |c| c.stats().packets_duplicated)
    };
    let before = copies(sim);
    let times = exchanges(sim, count);
    (times, copies(sim) - before)
}

#[test]
fn a_lossy_path_gets_a_third_copy_of_interactive_tails() {
    // After a bulk transfer has shown 5 % loss, tails go out three times: an exchange then waits
    // for a timeout only when all three copies of its request or answer are lost (1 in 4 000),
    // not two (1 in 200, which shows at the 99th percentile).
    let mut sim = after_a_bulk_transfer(29, 0.05);
    let (times, copies) = exchanges_counting_copies(&mut sim, 1000);
    assert!(copies >= 1800, "{copies} extra copies for 1000 requests");
    let slow = times
        .iter()
        .filter(|t| **t > Duration::from_millis(150))
        .count();
    assert!(slow <= 2, "{slow} of 1000 exchanges took a timeout");
}

#[test]
fn a_clean_path_keeps_two_copies() {
    let mut sim = after_a_bulk_transfer(31, 0.0);
    let (_, copies) = exchanges_counting_copies(&mut sim, 200);
    assert!(
        (190..=210).contains(&copies),
        "{copies} extra copies for 200 requests"
    );
}

#[test]
fn a_short_path_keeps_its_ack_clock() {
    // 50 µs RTT at 1 Gbit/s: a bandwidth-delay product of 6 KB, fewer packets than the ACK
    // threshold (16), so the ACK timer (10 ms, 200 RTTs) must never be what clocks the sender.
    // (On real sockets a fixed threshold let an 8-stream transfer fall to 5 Mbit/s once BBR's
    // window was down to 4 packets; the unit tests in connection/ack.rs check the adaptation.)
    for direction in [Direction::ToServer, Direction::ToClient] {
        let link = LinkConfig::ideal()
            .with_delay(Duration::from_micros(25))
            .with_rate_mbps(1000.0)
            .with_queue_bytes(64 * 1024);
        let mut sim = Sim::new(SimConfig::new(37).with_link(link));
        let id = sim.add_workload(BulkTransfer::new(0, direction, 200_000_000, 37));
        assert!(sim.run_workloads(Duration::from_secs(20)), "{direction:?}");
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
        assert_eq!(transfer.verify(), Ok(()), "{direction:?}");
        let start = sim.start();
        let end = transfer.completed_at().expect("completed");
        let mbit = transfer.goodput_bps(start, end) / 1e6;
        assert!(
            mbit > 750.0,
            "{direction:?}: {mbit:.1} Mbit/s on a 1 Gbit/s link"
        );
    }
}
