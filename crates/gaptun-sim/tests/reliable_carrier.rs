//! The core on a reliable carrier (TLS over TCP): a link that loses nothing but reorders a lot,
//! as several TCP connections carrying one gaptun connection do. "Reliable" belongs to the
//! carrier, so to the path: packets sent on a reliable carrier are never declared lost for
//! reordering, while the same connection on an ordinary carrier takes reordering for loss and
//! retransmits, as it must on UDP.

use std::net::SocketAddr;
use std::time::Duration;

use gaptun_proto::{CarrierId, PathAddr};
use gaptun_sim::{BulkTransfer, Direction, LinkConfig, Sim, SimConfig};

/// Lossless (no rate limit, so no queue overflows either: a reliable carrier drops nothing),
/// 40 ms RTT, a third of the datagrams held back by 15 ms (overtaken by later ones).
fn reordering() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_reorder(0.3, Duration::from_millis(15))
}

/// Flow-control windows that hold a transfer to about 6 MB/s at 40 ms, so that it lasts long
/// enough to move between carriers on the way.
const WINDOW: u64 = 256 * 1024;

/// Runs a 2 MB upload with carrier 0 reliable or not; returns the client's (packets lost,
/// packets retransmitted, packets duplicated).
fn run(reliable: bool) -> (u64, u64, u64) {
    let config = SimConfig::new(11)
        .with_link(reordering())
        .with_transport(|t| {
            t.reliable_carriers = if reliable {
                vec![CarrierId(0)]
            } else {
                Vec::new()
            };
        });
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
        stats.packets_duplicated,
    )
}

#[test]
fn reliable_carrier_never_declares_reordered_packets_lost() {
    let (lost, retransmitted, duplicated) = run(true);
    assert_eq!((lost, retransmitted, duplicated), (0, 0, 0));
}

#[test]
fn without_it_reordering_looks_like_loss() {
    let (lost, _, _) = run(false);
    assert!(lost > 0, "the default mode declares reordered packets lost");
}

/// Server packets lost so far (the server sends the download).
fn server_lost(sim: &mut Sim) -> u64 {
    sim.server_connection(0)
        .expect("server connection")
        .stats()
        .packets_lost
}

/// Moves client 0 to the server address `to` and waits until the server answers on `carrier`,
/// the carrier of that address.
fn move_client(sim: &mut Sim, to: SocketAddr, carrier: CarrierId) {
    sim.client_connection(0)
        .expect("client connection")
        .set_paths(&[PathAddr::single(to)]);
    let moved = sim.run_for(Duration::from_secs(5), |sim| {
        sim.server_connection(0)
            .is_some_and(|c| c.path().carrier == carrier)
    });
    assert!(moved, "the server follows the client to {to}");
}

/// A download that starts on an ordinary carrier, moves to a reliable one and back, one
/// stream throughout: on the ordinary carrier reordering is taken for loss, on the reliable
/// one nothing is declared lost, and back on the ordinary one recovery works as before; the
/// data arrive intact. The server's second address is its carrier 1, the reliable one.
#[test]
fn reliability_follows_the_path_when_a_connection_migrates() {
    let config = SimConfig::new(5)
        .with_link(reordering())
        .with_transport(|t| {
            t.reliable_carriers = vec![CarrierId(1)];
            t.receive_window = WINDOW;
            t.stream_receive_window = WINDOW;
        });
    let mut sim = Sim::new(config);
    let udp = sim.server_address();
    let tls = SocketAddr::new(udp.ip(), udp.port() + 1);
    assert_eq!(sim.add_server_address(tls), CarrierId(1));
    sim.connect_paths(0, &[udp]).expect("client has a key");
    let size = 30_000_000;
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToClient, size, 1));

    sim.advance(Duration::from_secs(1));
    let lost_on_udp = server_lost(&mut sim);
    assert!(lost_on_udp > 0, "reordering counts as loss on carrier 0");
    assert_eq!(
        sim.server_connection(0).expect("server").path().carrier,
        CarrierId(0)
    );

    move_client(&mut sim, tls, CarrierId(1));
    // Packets sent on carrier 0 before the move may still be declared lost; give them an RTO.
    sim.advance(Duration::from_millis(500));
    let at_reliable = server_lost(&mut sim);
    assert_eq!(
        sim.server_connection(0).expect("server").path().carrier,
        CarrierId(1),
        "the server follows the client to the reliable carrier"
    );
    sim.advance(Duration::from_secs(1));
    let received_mid = sim
        .workload::<BulkTransfer>(id)
        .expect("workload")
        .received();
    assert_eq!(
        server_lost(&mut sim),
        at_reliable,
        "nothing is declared lost on the reliable carrier"
    );
    assert!(received_mid < size, "still transferring");

    move_client(&mut sim, udp, CarrierId(0));
    sim.advance(Duration::from_secs(1));
    assert!(
        server_lost(&mut sim) > at_reliable,
        "back on carrier 0, reordering counts as loss again"
    );
    assert!(
        sim.run_workloads(Duration::from_secs(60)),
        "transfer did not finish"
    );
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
    assert_eq!(transfer.verify(), Ok(()));
    assert_eq!(transfer.received(), size);
}

/// `--carrier auto` falling back from UDP to TLS: a client prefers carrier 0 (think UDP) over
/// carrier 1 (reliable, think TLS); carrier 0 is blocked mid-download. The client notices the
/// silence, moves to the reliable carrier (no new handshake), and the four streams carry on:
/// what was lost on carrier 0 is sent again over carrier 1, every byte arrives intact, and
/// nothing sent on the reliable carrier is declared lost.
#[test]
fn a_transfer_moves_from_a_blocked_carrier_to_a_reliable_one_with_its_streams() {
    for direction in [Direction::ToClient, Direction::ToServer] {
        let config = SimConfig::new(41)
            .with_link(LinkConfig::ideal().with_delay(Duration::from_millis(20)))
            .with_transport(|t| {
                t.reliable_carriers = vec![CarrierId(1)];
                t.receive_window = WINDOW;
                t.stream_receive_window = WINDOW;
            });
        let mut sim = Sim::new(config);
        let udp = sim.server_address();
        let tls = SocketAddr::new(udp.ip(), udp.port() + 1);
        assert_eq!(sim.add_server_address(tls), CarrierId(1));
        sim.connect_failover(0, &[udp, tls])
            .expect("client has a key");
        let size = 40_000_000;
        let id = sim.add_workload(BulkTransfer::new(0, direction, size, 3).with_streams(4, 4));
        sim.advance(Duration::from_secs(1));
        let on = |sim: &mut Sim| {
            sim.client_connection(0)
                .expect("client")
                .paths()
                .iter()
                .find(|p| p.active)
                .map(|p| p.addr.carrier)
        };
        assert_eq!(
            on(&mut sim),
            Some(CarrierId(0)),
            "{direction:?}: starts on UDP"
        );
        let before = sim
            .workload::<BulkTransfer>(id)
            .expect("workload")
            .received();
        assert!(before > 0 && before < size, "{direction:?}: mid-transfer");

        sim.block_address(udp);
        let moved = sim.run_for(Duration::from_secs(5), |sim| {
            on(sim) == Some(CarrierId(1))
                && sim
                    .server_connection(0)
                    .is_some_and(|c| c.path().carrier == CarrierId(1))
        });
        assert!(moved, "{direction:?}: both ends on the reliable carrier");
        // Packets of carrier 0 in flight at the move are declared lost within an RTO or so;
        // from then on nothing is, the rest going over the reliable carrier.
        sim.advance(Duration::from_secs(1));
        let lost_settled = server_and_client_lost(&mut sim);
        assert!(
            sim.workload::<BulkTransfer>(id)
                .expect("workload")
                .received()
                < size,
            "{direction:?}: still transferring a second after the move"
        );
        assert!(
            sim.run_workloads(Duration::from_secs(60)),
            "{direction:?}: transfer did not finish on the reliable carrier"
        );
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
        assert_eq!(transfer.verify(), Ok(()), "{direction:?}");
        assert_eq!(transfer.received(), size, "{direction:?}");
        assert_eq!(sim.accepted().len(), 1, "{direction:?}: one handshake");
        assert_eq!(
            server_and_client_lost(&mut sim),
            lost_settled,
            "{direction:?}: nothing declared lost on the reliable carrier"
        );
        let conn = sim.client_connection(0).expect("connection kept");
        assert!(conn.is_established(), "{direction:?}");
        assert_eq!(conn.stats().carrier_switches, 1, "{direction:?}");
    }
}

/// Packets the server and the client declared lost, together.
fn server_and_client_lost(sim: &mut Sim) -> u64 {
    let server = sim
        .server_connection(0)
        .map_or(0, |c| c.stats().packets_lost);
    let client = sim
        .client_connection(0)
        .map_or(0, |c| c.stats().packets_lost);
    server + client
}
