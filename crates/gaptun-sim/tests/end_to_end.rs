//! End-to-end runs of gaptun-proto over the simulated network.
//!
//! Ignored until the protocol core is implemented (its bodies were stubs when this harness was
//! written); run with `cargo test -p gaptun-sim --test end_to_end -- --include-ignored`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use gaptun_sim::{
    BulkTransfer, Direction, End, GilbertElliott, LinkConfig, Node, Path, RequestResponse, Sim,
    SimConfig, Stage,
};

fn lossy() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(40))
        .with_jitter(Duration::from_millis(5))
        .with_rate_mbps(20.0)
        .with_queue_bytes(200_000)
        .with_loss(0.05)
        .with_burst_loss(GilbertElliott::with_mean_loss(0.02, 4.0))
        .with_reorder(0.01, Duration::from_millis(10))
        .with_duplicate(0.01)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid test address")
}

#[test]
fn handshake_completes() {
    let mut sim = Sim::new(SimConfig::new(1));
    sim.connect(0).expect("client has a key");
    let up = sim.run_for(Duration::from_secs(5), |sim| {
        sim.client_connection(0).is_some_and(|c| c.is_established())
            && sim.server_connection(0).is_some_and(|c| c.is_established())
    });
    assert!(
        up,
        "handshake did not complete in 5 s over a 20 ms RTT path"
    );
    assert_eq!(sim.accepted().len(), 1);
}

#[test]
fn bulk_upload_and_download_survive_a_bad_link() {
    for direction in [Direction::ToServer, Direction::ToClient] {
        let mut sim = Sim::new(SimConfig::new(2).with_link(lossy()));
        let id = sim.add_workload(BulkTransfer::new(0, direction, 3_000_000, 9).with_streams(4, 9));
        assert!(
            sim.run_workloads(Duration::from_secs(120)),
            "{direction:?} did not finish"
        );
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload exists");
        assert_eq!(transfer.verify(), Ok(()));
        assert_eq!(transfer.received(), 3_000_000);
    }
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(SimConfig::new(seed).with_link(lossy()));
        sim.set_capture(true);
        sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 500_000, 3));
        sim.run_workloads(Duration::from_secs(60));
        let trace: Vec<_> = sim
            .captured()
            .iter()
            .map(|c| (c.at, c.from, c.data.clone()))
            .collect();
        (trace, sim.elapsed())
    };
    let (a, end_a) = run(5);
    let (b, end_b) = run(5);
    assert_eq!(end_a, end_b);
    assert!(a == b, "same seed gave different traces");
}

#[test]
fn server_stays_silent_to_garbage_and_strangers() {
    let mut sim = Sim::new(SimConfig::new(3));
    sim.set_capture(true);
    for len in [0, 1, 16, 100, 1200, 1350, 1500] {
        sim.inject_to_server(addr("192.0.2.7:5555"), vec![0xa5; len]);
    }
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.captured_from(Node::Server).count(), 0);
    assert_eq!(sim.server().stats().dropped_unauthenticated, 7);
}

#[test]
fn replayed_datagrams_get_no_answer() {
    let mut sim = Sim::new(SimConfig::new(4));
    sim.set_capture(true);
    sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 100_000, 1));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    let from_client: Vec<_> = sim.captured_from(Node::Client(0)).cloned().collect();
    sim.take_captured();
    for datagram in from_client {
        sim.inject_to_server(addr("198.51.100.1:6000"), datagram.data);
    }
    sim.advance(Duration::from_secs(2));
    let to_attacker = sim
        .captured_from(Node::Server)
        .filter(|c| c.dst == addr("198.51.100.1:6000"));
    assert_eq!(to_attacker.count(), 0);
}

#[test]
fn transfer_survives_nat_rebinding_and_an_outage() {
    let mut sim = Sim::new(
        SimConfig::new(6).with_link(LinkConfig::ideal().with_delay(Duration::from_millis(30))),
    );
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToClient, 5_000_000, 2));
    sim.advance(Duration::from_millis(500));
    sim.rebind_client(0, addr("10.0.0.77:45000"));
    sim.blackhole(Path::Downlink, Duration::from_secs(2));
    assert!(sim.run_workloads(Duration::from_secs(60)));
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload exists");
    assert_eq!(transfer.verify(), Ok(()));
    let remote = sim.server_connection(0).map(|c| c.remote_address());
    assert_eq!(remote, Some(addr("10.0.0.77:45000")));
}

#[test]
fn request_latency_is_about_one_rtt() {
    let mut sim = Sim::new(
        SimConfig::new(7).with_link(LinkConfig::ideal().with_delay(Duration::from_millis(50))),
    );
    let id = sim.add_workload(RequestResponse::new(0, 20, 200, 2000));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    let rr = sim
        .workload::<RequestResponse>(id)
        .expect("workload exists");
    assert!(rr.errors().is_empty(), "{:?}", rr.errors());
    assert_eq!(rr.completed(), 20);
    // After the first request (which includes the handshake), one round trip each.
    let median = rr.quantile(0.5).expect("latencies");
    assert!(
        median >= Duration::from_millis(100) && median < Duration::from_millis(150),
        "{median:?}"
    );
}

#[test]
fn taps_see_every_delivery() {
    let mut sim = Sim::new(SimConfig::new(8));
    let delivered = Rc::new(RefCell::new(0u64));
    let counter = delivered.clone();
    sim.add_tap(move |event| {
        if event.stage == Stage::Delivered {
            *counter.borrow_mut() += 1;
        }
    });
    sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 50_000, 1));
    assert!(sim.run_workloads(Duration::from_secs(10)));
    let links = sim.uplink().stats().delivered + sim.downlink().stats().delivered;
    assert_eq!(*delivered.borrow(), links);
    assert!(sim.connection(0, End::Client).is_some());
}
