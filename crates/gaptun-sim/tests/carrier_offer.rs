//! The server's carrier offer (see `docs/protocol.md`, "Carrier offer"): it reaches the client
//! inside the encrypted handshake over a lossy link, a client never sends one, and a garbled
//! offer is dropped without costing the connection.

use std::time::Duration;

use gaptun_proto::handshake::{CarrierOffer, PortRange};
use gaptun_sim::{BulkTransfer, Direction, GilbertElliott, LinkConfig, Sim, SimConfig};

fn lossy() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(30))
        .with_rate_mbps(20.0)
        .with_queue_bytes(200_000)
        .with_loss(0.05)
        .with_burst_loss(GilbertElliott::with_mean_loss(0.02, 4.0))
        .with_reorder(0.01, Duration::from_millis(10))
}

/// Runs a 400 kB upload with the server offering `offer`; returns what the client learned
/// and what the server learned from the client.
fn run(seed: u64, offer: CarrierOffer) -> (Option<CarrierOffer>, Option<CarrierOffer>) {
    // Every endpoint's transport says "offer"; only the server's may reach the peer.
    let mut sim = Sim::new(
        SimConfig::new(seed)
            .with_link(lossy())
            .with_transport(|t| t.carrier_offer = Some(offer)),
    );
    sim.server().set_carrier_offer(Some(offer));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 400_000, seed));
    assert!(
        sim.run_workloads(Duration::from_secs(60)),
        "the transfer did not finish (seed {seed})"
    );
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload exists");
    assert_eq!(transfer.verify(), Ok(()));
    assert_eq!(transfer.received(), 400_000);
    let learned = sim
        .client_connection(0)
        .expect("client connection")
        .peer_carrier_offer();
    let from_client = sim
        .server_connection(0)
        .expect("server connection")
        .peer_carrier_offer();
    (learned, from_client)
}

#[test]
fn the_offer_reaches_the_client_and_no_offer_reaches_the_server() {
    let offer = CarrierOffer {
        udp: PortRange::new(4000, 4007),
        faketcp: PortRange::single(4000),
        tls: Some(8443),
        quic: Some(9443),
    };
    for seed in 1..=3 {
        let (learned, from_client) = run(seed, offer);
        assert_eq!(learned, Some(offer), "seed {seed}");
        assert_eq!(from_client, None, "a client announces no carriers");
    }
}

#[test]
fn a_garbled_offer_is_ignored_and_the_connection_works() {
    // Built past the checks of `PortRange::new`: a backwards range and port 0 parse as
    // garbage at the client, which must drop the offer and keep the connection.
    for (seed, offer) in [
        (
            4,
            CarrierOffer {
                udp: Some(PortRange {
                    first: 5000,
                    last: 4000,
                }),
                tls: Some(8443),
                ..CarrierOffer::default()
            },
        ),
        (
            5,
            CarrierOffer {
                tls: Some(0),
                ..CarrierOffer::default()
            },
        ),
    ] {
        let (learned, _) = run(seed, offer);
        assert_eq!(learned, None, "seed {seed}");
    }
}
