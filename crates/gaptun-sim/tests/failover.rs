//! Carrier failover (`--carrier auto`) in the simulator: the client reaches the server on two
//! carriers (two server addresses, each its own carrier on both ends), sends on the preferred
//! one only, moves to the other when the one in use is blocked mid-transfer, comes back once it
//! is unblocked, and does not move under steady random loss. Transfers are checked end to end
//! by SHA-256.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gaptun_proto::{PathSwitch, SwitchReason};
use gaptun_sim::{BulkTransfer, Direction, LinkConfig, Sim, SimConfig};

/// The preferred carrier's server address (think UDP) and the standby's (think fake TCP).
fn two_carriers(sim: &mut Sim) -> (SocketAddr, SocketAddr) {
    let main = sim.server_address();
    let standby = SocketAddr::new(main.ip(), main.port() + 1);
    let carrier = sim.add_server_address(standby);
    assert_eq!(carrier.0, 1);
    (main, standby)
}

fn link(loss: f64) -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(25))
        .with_rate_mbps(20.0)
        .with_queue_bytes(150_000)
        .with_loss(loss)
}

/// The server address the client's data goes to now (its active path).
fn active(sim: &mut Sim) -> Option<SocketAddr> {
    let conn = sim.client_connection(0)?;
    let active: Vec<SocketAddr> = conn
        .paths()
        .iter()
        .filter(|p| p.active)
        .map(|p| p.addr.remote)
        .collect();
    match active.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

fn switches(sim: &mut Sim) -> Vec<PathSwitch> {
    let mut out = Vec::new();
    if let Some(conn) = sim.client_connection(0) {
        while let Some(s) = conn.poll_path_switch() {
            out.push(s);
        }
    }
    out
}

/// Runs until the client's data goes to `to` (bounded by `limit`); returns when it did.
fn run_until_active(sim: &mut Sim, to: SocketAddr, limit: Duration) -> Option<Instant> {
    let done = sim.run_for(limit, |sim| active(sim) == Some(to));
    done.then(|| sim.now())
}

/// A transfer starts on the preferred carrier; the preferred carrier is blocked (both ways)
/// mid-transfer: the client moves to the standby within a second and a half (two and a half when
/// it downloads), goodput is back
/// above half the standby's steady rate within 3 s, every byte arrives intact; after the block
/// is lifted the client moves back to the preferred carrier.
#[test]
fn blocked_carrier_fails_over_mid_transfer_and_comes_back() {
    for direction in [Direction::ToServer, Direction::ToClient] {
        let mut sim = Sim::new(SimConfig::new(21).with_link(link(0.0)));
        let (main, standby) = two_carriers(&mut sim);
        sim.connect_failover(0, &[main, standby])
            .expect("client has a key");
        let id = sim.add_workload(
            BulkTransfer::new(0, direction, 25_000_000, 7)
                .with_streams(3, 8)
                .sampling_every(Duration::from_millis(100)),
        );
        sim.advance(Duration::from_secs(2));
        assert_eq!(
            active(&mut sim),
            Some(main),
            "{direction:?}: starts preferred"
        );
        let conn = sim.client_connection(0).expect("client connection");
        let paths = conn.paths();
        let probed = paths
            .iter()
            .find(|p| p.addr.remote == standby)
            .expect("standby path");
        assert!(
            probed.packets_sent >= 1 && probed.packets_sent <= 4,
            "{direction:?}: the standby gets probes, not data: {paths:?}"
        );
        assert!(switches(&mut sim).is_empty(), "{direction:?}");

        let blocked_at = sim.now();
        sim.block_address(main);
        let moved_at = run_until_active(&mut sim, standby, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{direction:?}: never moved to the standby"));
        let took = moved_at - blocked_at;
        eprintln!("{direction:?}: moved after {took:?}");
        // An uploading client's own data goes unanswered at once. A downloading one sends
        // little that must be answered (credit updates, every eighth of a window) and notices
        // at its liveness probe, a third of the dead-peer limit (1 s) after the last packet
        // heard, plus the probes' timeouts.
        let bound = match direction {
            Direction::ToServer => Duration::from_millis(1500),
            Direction::ToClient => Duration::from_millis(2500),
        };
        assert!(took <= bound, "{direction:?}: moved after {took:?}");
        let moves = switches(&mut sim);
        assert!(
            matches!(
                moves.as_slice(),
                [PathSwitch { from: Some(f), to, reason: SwitchReason::Silent(_) }]
                    if f.remote == main && to.remote == standby
            ),
            "{direction:?}: {moves:?}"
        );

        assert!(
            sim.run_workloads(Duration::from_secs(60)),
            "{direction:?}: transfer did not finish after the move"
        );
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
        assert_eq!(transfer.verify(), Ok(()), "{direction:?}");
        assert_eq!(transfer.received(), 25_000_000);
        // Goodput after the block: back above half the standby's steady rate within 3 s.
        let done = transfer.completed_at().expect("completed");
        let steady_from = blocked_at + Duration::from_secs(3);
        assert!(
            done > steady_from + Duration::from_secs(1),
            "{direction:?}: the transfer must outlast the block by a while to measure"
        );
        let steady = transfer.goodput_bps(steady_from, done);
        let recovered = (1..=30)
            .map(|i| blocked_at + Duration::from_millis(100 * i))
            .find(|&t| transfer.goodput_bps(t, t + Duration::from_millis(500)) >= steady / 2.0);
        let recovered = recovered.unwrap_or_else(|| {
            panic!("{direction:?}: goodput not back within 3 s (steady {steady} bit/s)")
        });
        eprintln!(
            "{direction:?}: goodput back above half of steady {steady} after {:?}",
            recovered - blocked_at
        );
        assert!(
            recovered - blocked_at <= Duration::from_secs(3),
            "{direction:?}: {:?}",
            recovered - blocked_at
        );
        assert_eq!(
            sim.accepted().len(),
            1,
            "{direction:?}: no second handshake"
        );

        // Unblocked: probes find the preferred carrier again and the data moves back.
        sim.unblock_address(main);
        let busy = sim.add_workload(BulkTransfer::new(0, direction, 30_000_000, 9));
        let back = run_until_active(&mut sim, main, Duration::from_secs(30));
        assert!(back.is_some(), "{direction:?}: never came back");
        let moves = switches(&mut sim);
        assert!(
            matches!(
                moves.as_slice(),
                [PathSwitch { from: Some(f), to, reason: SwitchReason::Recovered }]
                    if f.remote == standby && to.remote == main
            ),
            "{direction:?}: {moves:?}"
        );
        assert!(sim.run_workloads(Duration::from_secs(60)), "{direction:?}");
        let transfer = sim.workload::<BulkTransfer>(busy).expect("workload");
        assert_eq!(transfer.verify(), Ok(()), "{direction:?}");
        let conn = sim.client_connection(0).expect("connection kept");
        assert!(conn.is_established());
        assert_eq!(conn.stats().carrier_switches, 2, "{direction:?}");
    }
}

/// The preferred carrier is blocked before the client starts: the Initial went out on both
/// carriers at once, so the connection starts on the standby at once (no retry wait), and
/// moves to the preferred one once it works.
#[test]
fn a_blocked_carrier_at_start_costs_no_handshake_retry() {
    let mut sim = Sim::new(SimConfig::new(22).with_link(link(0.0)));
    let (main, standby) = two_carriers(&mut sim);
    sim.block_address(main);
    sim.connect_failover(0, &[main, standby])
        .expect("client has a key");
    let connected = sim.run_for(Duration::from_secs(3), |sim| {
        sim.client_connection(0).is_some_and(|c| c.is_established())
    });
    assert!(connected, "no connection over the standby");
    assert!(
        sim.elapsed() < Duration::from_millis(500),
        "connected after {:?}: waited for a retry",
        sim.elapsed()
    );
    assert_eq!(active(&mut sim), Some(standby));
    let moves = switches(&mut sim);
    assert!(
        matches!(moves.as_slice(), [PathSwitch { from: None, to, reason: SwitchReason::FirstAnswer }] if to.remote == standby),
        "{moves:?}"
    );
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 2_000_000, 3));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    assert_eq!(
        active(&mut sim),
        Some(standby),
        "the preferred one is still blocked"
    );
    sim.unblock_address(main);
    let busy = sim.add_workload(BulkTransfer::new(0, Direction::ToClient, 40_000_000, 4));
    assert!(
        run_until_active(&mut sim, main, Duration::from_secs(30)).is_some(),
        "never moved to the preferred carrier"
    );
    assert!(sim.run_workloads(Duration::from_secs(60)));
    assert_eq!(
        sim.workload::<BulkTransfer>(busy)
            .expect("workload")
            .verify(),
        Ok(())
    );
}

/// Steady random loss on every path (both carriers alike) is no reason to move: bulk
/// transfers both ways and idle time in between, and not one switch.
#[test]
fn steady_random_loss_causes_no_flapping() {
    for (seed, loss) in [(31, 0.05), (32, 0.15), (33, 0.25)] {
        let mut sim = Sim::new(SimConfig::new(seed).with_link(link(loss)));
        let (main, standby) = two_carriers(&mut sim);
        sim.connect_failover(0, &[main, standby])
            .expect("client has a key");
        // A lost Initial on the preferred carrier may start the connection on the standby
        // (the first to answer), and it moves to the preferred one a few seconds later: that
        // is no flapping. From then on, no move.
        sim.advance(Duration::from_secs(8));
        let start = switches(&mut sim);
        assert!(
            start.iter().all(|s| matches!(
                s.reason,
                SwitchReason::FirstAnswer | SwitchReason::Recovered
            )),
            "loss {loss}: {start:?}"
        );
        assert_eq!(active(&mut sim), Some(main), "loss {loss}");
        let settled = sim
            .client_connection(0)
            .expect("connection")
            .stats()
            .carrier_switches;
        let up = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 4_000_000, 1));
        assert!(sim.run_workloads(Duration::from_secs(60)), "loss {loss}");
        sim.advance(Duration::from_secs(10));
        let down = sim.add_workload(BulkTransfer::new(0, Direction::ToClient, 4_000_000, 2));
        assert!(sim.run_workloads(Duration::from_secs(60)), "loss {loss}");
        sim.advance(Duration::from_secs(10));
        for id in [up, down] {
            let t = sim.workload::<BulkTransfer>(id).expect("workload");
            assert_eq!(t.verify(), Ok(()), "loss {loss}");
        }
        let moves = switches(&mut sim);
        assert!(moves.is_empty(), "loss {loss}: {moves:?}");
        assert_eq!(active(&mut sim), Some(main), "loss {loss}");
        let conn = sim.client_connection(0).expect("connection");
        assert_eq!(conn.stats().carrier_switches, settled);
        let standby_path = conn
            .paths()
            .into_iter()
            .find(|p| p.addr.remote == standby)
            .expect("standby");
        assert!(
            standby_path.packets_acked >= 10,
            "loss {loss}: the standby was probed all along: {standby_path:?}"
        );
    }
}

/// The preferred carrier is throttled mid-transfer (60 % of its datagrams dropped both ways,
/// the standby untouched): the client moves to the standby for the loss, not for silence,
/// every byte arrives, and it moves back once the throttle is lifted.
#[test]
fn throttled_carrier_fails_over_on_loss_and_comes_back() {
    let mut sim = Sim::new(SimConfig::new(23).with_link(link(0.0)));
    let (main, standby) = two_carriers(&mut sim);
    sim.connect_failover(0, &[main, standby])
        .expect("client has a key");
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 25_000_000, 5));
    // Long enough for the standby's probe record to be full (16 probes).
    sim.advance(Duration::from_secs(4));
    assert_eq!(active(&mut sim), Some(main));
    let throttled_at = sim.now();
    sim.throttle_address(main, 0.6);
    let moved_at = run_until_active(&mut sim, standby, Duration::from_secs(10))
        .expect("never moved off the throttled carrier");
    let moves = switches(&mut sim);
    assert!(
        matches!(
            moves.as_slice(),
            [PathSwitch { from: Some(f), to, reason: SwitchReason::Lossy { active, standby: s } }]
                if f.remote == main && to.remote == standby && *active >= 0.3 && *s <= *active / 4.0
        ),
        "{moves:?}"
    );
    eprintln!("throttled 60 %: moved after {:?}", moved_at - throttled_at);
    assert!(moved_at - throttled_at <= Duration::from_secs(3));
    assert!(sim.run_workloads(Duration::from_secs(60)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    sim.throttle_address(main, 0.0);
    let busy = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 30_000_000, 6));
    assert!(
        run_until_active(&mut sim, main, Duration::from_secs(30)).is_some(),
        "never came back"
    );
    assert!(sim.run_workloads(Duration::from_secs(60)));
    assert_eq!(
        sim.workload::<BulkTransfer>(busy)
            .expect("workload")
            .verify(),
        Ok(())
    );
}
