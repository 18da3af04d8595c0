//! The core on a reliable carrier (TLS over TCP): a link that loses nothing but reorders a lot,
//! as several TCP connections carrying one gaptun connection do. With `reliable_carrier` the
//! transfer completes without a packet declared lost or sent twice, and without a congestion
//! window; the same run without it takes reordering for loss and retransmits.

use std::time::Duration;

use gaptun_sim::{BulkTransfer, Direction, LinkConfig, Sim, SimConfig};

/// Lossless, 40 ms RTT, a third of the datagrams held back by 15 ms (overtaken by later ones).
fn reordering() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_reorder(0.3, Duration::from_millis(15))
}

/// Runs a 2 MB upload; returns the client's (packets lost, packets retransmitted, controller).
fn run(reliable: bool) -> (u64, u64, &'static str) {
    let config = SimConfig::new(11)
        .with_link(reordering())
        .with_transport(|t| t.reliable_carrier = reliable);
    let mut sim = Sim::new(config);
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 2_000_000, 5));
    assert!(
        sim.run_workloads(Duration::from_secs(60)),
        "transfer did not finish"
    );
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload exists");
    assert_eq!(transfer.verify(), Ok(()));
    assert_eq!(transfer.received(), 2_000_000);
    let stats = sim.client_connection(0).expect("client connection").stats();
    (
        stats.packets_lost,
        stats.packets_retransmitted,
        stats.congestion,
    )
}

#[test]
fn reliable_carrier_never_declares_reordered_packets_lost() {
    let (lost, retransmitted, controller) = run(true);
    assert_eq!((lost, retransmitted), (0, 0));
    assert_eq!(
        controller, "none",
        "TCP's congestion control decides, not a second one"
    );
}

#[test]
fn without_it_reordering_looks_like_loss() {
    let (lost, _, controller) = run(false);
    assert!(lost > 0, "the default mode declares reordered packets lost");
    assert_eq!(controller, "bbr");
}
