//! Paths, liveness and restarts over the deterministic simulated network: a copied packet sent
//! from elsewhere must not move the connection, a dead peer is noticed within seconds, a
//! restarted server resets its old connections, and a quiet healthy connection stays up.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use gaptun_proto::{ConnectionError, Event};
use gaptun_sim::{
    BulkTransfer, Direction, End, LinkConfig, Node, Path, RequestResponse, Sim, SimConfig, Stage,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid test address")
}

fn link() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_rate_mbps(100.0)
        .with_queue_bytes(500_000)
}

const TRANSFER: u64 = 12_000_000;
const ATTACKER: &str = "203.0.113.66:4444";

/// Runs a client→server transfer; with `copy_every`, an on-path copier sends every n-th
/// client→server datagram again from [`ATTACKER`], arriving before the original. Returns the
/// transfer time, the bytes the copier sent and the simulator.
fn upload(copy_every: Option<usize>) -> (Duration, usize, Sim) {
    let mut sim = Sim::new(SimConfig::new(41).with_link(link()));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, TRANSFER, 5));
    let copies: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let copied_bytes = Rc::new(RefCell::new(0usize));
    if let Some(n) = copy_every {
        sim.set_capture(true);
        let total = Rc::clone(&copied_bytes);
        let seen = Rc::new(RefCell::new(0usize));
        let sink = Rc::clone(&copies);
        sim.add_tap(move |e| {
            if e.stage == Stage::Sent && e.node == Node::Client(0) && e.path == Path::Uplink {
                let mut count = seen.borrow_mut();
                *count += 1;
                if (*count).is_multiple_of(n) {
                    *total.borrow_mut() += e.data.len();
                    sink.borrow_mut().push(e.data.to_vec());
                }
            }
        });
    }
    let deadline = sim.now() + Duration::from_secs(60);
    while !sim.workloads_done() && sim.now() < deadline {
        if sim.step().is_none() {
            break;
        }
        // Injected straight into the server: the copy beats the original, which is still on
        // the 20 ms link.
        let pending: Vec<_> = copies.borrow_mut().drain(..).collect();
        for datagram in pending {
            sim.inject_to_server(addr(ATTACKER), datagram);
        }
    }
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload exists");
    assert_eq!(transfer.verify(), Ok(()));
    let start = transfer.started_at().expect("started");
    let end = transfer.completed_at().expect("transfer completed");
    let copied = *copied_bytes.borrow();
    (end - start, copied, sim)
}

#[test]
fn copied_packets_from_another_address_do_not_hijack_the_path() {
    let (clean, _, _) = upload(None);
    let (attacked, copied, mut sim) = upload(Some(50));
    let server = sim.server_connection(0).expect("server connection").stats();
    eprintln!(
        "transfer: {clean:?} clean, {attacked:?} with every 50th packet copied; {} probes",
        server.path_probes
    );
    assert!(server.path_probes > 0, "the copies were never seen");
    assert_eq!(server.migrations, 0);
    assert!(
        attacked.as_secs_f64() <= clean.as_secs_f64() * 1.2,
        "{attacked:?} against {clean:?}"
    );
    let remote = sim.server_connection(0).map(|c| c.remote_address());
    assert_eq!(remote, Some(sim.client_address(0)));
    // Only small challenges went to the attacker, within the anti-amplification budget.
    let to_attacker: Vec<usize> = sim
        .captured_from(Node::Server)
        .filter(|c| c.dst == addr(ATTACKER))
        .map(|c| c.data.len())
        .collect();
    assert!(!to_attacker.is_empty());
    assert!(to_attacker.iter().all(|&len| len < 64), "{to_attacker:?}");
    let sent: usize = to_attacker.iter().sum();
    assert!(sent <= copied * 3, "{sent} bytes answered {copied}");
}

#[test]
fn a_real_rebinding_still_migrates_after_validation() {
    let mut sim = Sim::new(SimConfig::new(42).with_link(link()));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToClient, 4_000_000, 6));
    sim.advance(Duration::from_millis(300));
    sim.set_capture(true);
    let old_address = sim.client_address(0);
    let new_address = addr("10.0.0.99:41000");
    sim.rebind_client(0, new_address);
    assert!(sim.run_workloads(Duration::from_secs(30)));
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload exists");
    assert_eq!(transfer.verify(), Ok(()));
    let server = sim.server_connection(0).expect("server connection");
    assert_eq!(server.remote_address(), new_address);
    assert_eq!(server.stats().migrations, 1);
    // The server kept to the old address until the new one answered its challenge: the first
    // datagram to the new address is the challenge alone, and data went to the old address
    // after it.
    let first_to_new = sim
        .captured_from(Node::Server)
        .find(|c| c.dst == new_address)
        .expect("the server sent to the new address");
    assert!(first_to_new.data.len() < 64, "{}", first_to_new.data.len());
    let challenged_at = first_to_new.at;
    assert!(
        sim.captured_from(Node::Server)
            .any(|c| c.dst == old_address && c.at > challenged_at && c.data.len() > 1000)
    );
}

#[test]
fn a_dead_server_is_noticed_within_seconds_during_a_download() {
    let mut sim = Sim::new(SimConfig::new(43).with_link(link()));
    sim.add_workload(BulkTransfer::new(0, Direction::ToClient, 200_000_000, 7));
    sim.advance(Duration::from_secs(1));
    // The server vanishes: nothing it sends arrives, nothing reaches it.
    sim.blackhole_indefinitely(Path::Downlink);
    sim.blackhole_indefinitely(Path::Uplink);
    let cut = sim.now();
    let lost = sim.run_for(Duration::from_secs(10), |sim| {
        sim.client_connection(0).is_none_or(|c| !c.is_established())
    });
    let took = sim.now() - cut;
    assert!(lost, "the client still thinks the connection is up");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    let events = drain(&mut sim, End::Client);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ConnectionLost(ConnectionError::Unresponsive(_)))),
        "{events:?}"
    );
}

#[test]
fn a_quiet_healthy_connection_stays_up() {
    // Bursts of requests with 4 s pauses (the case that looked dead to the old silence check):
    // no dead-peer verdict on either side.
    let mut sim = Sim::new(SimConfig::new(44).with_link(link()));
    let id = sim.add_workload(RequestResponse::new(0, 12, 300, 5000).every(Duration::from_secs(4)));
    assert!(sim.run_workloads(Duration::from_secs(70)));
    let rr = sim
        .workload::<RequestResponse>(id)
        .expect("workload exists");
    assert!(rr.errors().is_empty(), "{:?}", rr.errors());
    assert_eq!(rr.connection_lost(), None);
    sim.advance(Duration::from_secs(20));
    assert!(sim.client_connection(0).expect("client").is_established());
    assert!(sim.server_connection(0).expect("server").is_established());
}

#[test]
fn a_restarted_server_resets_the_clients_connection_at_once() {
    let mut sim = Sim::new(SimConfig::new(45).with_link(link()));
    sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 200_000_000, 8));
    sim.advance(Duration::from_secs(1));
    sim.set_capture(true);
    sim.restart_server();
    let restart = sim.now();
    let lost = sim.run_for(Duration::from_secs(5), |sim| {
        sim.client_connection(0).is_none_or(|c| !c.is_established())
    });
    assert!(lost);
    let took = sim.now() - restart;
    assert!(took <= Duration::from_millis(200), "took {took:?}");
    // (The workload took the ConnectionLost event; the counter says it was the reset.)
    assert!(sim.server().stats().resets_sent >= 1);
    assert_eq!(sim.client(0).stats().resets_received, 1);
    // Each reset is shorter than the datagram that caused it, and resets are rate-limited.
    let resets: Vec<_> = sim.captured_from(Node::Server).collect();
    assert!(!resets.is_empty() && resets.len() <= 40, "{}", resets.len());
    assert!(resets.iter().all(|r| r.data.len() < 1472));
    // A prober without the key gets silence from the restarted server, whatever it sends.
    sim.take_captured();
    for len in [40, 100, 1200, 1400] {
        sim.inject_to_server(addr("192.0.2.9:999"), vec![0x5a; len]);
    }
    sim.advance(Duration::from_secs(1));
    let to_prober = sim
        .captured_from(Node::Server)
        .filter(|c| c.dst == addr("192.0.2.9:999"))
        .count();
    assert_eq!(to_prober, 0);
}

fn drain(sim: &mut Sim, end: End) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(conn) = sim.connection(0, end) {
        while let Some(e) = conn.poll() {
            events.push(e);
        }
    }
    events
}
