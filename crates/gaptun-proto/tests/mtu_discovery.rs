//! Path MTU discovery end to end, over simulated links that drop datagrams above a size (as a
//! real path does with the Don't Fragment bit set). Seeded and in virtual time.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gaptun_proto::ConnectionStats;
use gaptun_sim::{BulkTransfer, Direction, End, LinkConfig, Node, Path, Sim, SimConfig, Stage};

/// The defaults' ceiling: a 1500-byte IPv4 MTU.
const CEILING: usize = 1472;
/// The defaults' starting size.
const INITIAL: usize = 1350;
/// The search stops once the gap is narrower than this (`connection::mtu::SEARCH_PRECISION`).
const PRECISION: usize = 16;

/// 20 ms each way, 50 Mbit/s, a queue deep enough that the bottleneck drops nothing.
fn link() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_rate_mbps(50.0)
}

/// Sizes of the datagrams `node` emits, with their send time.
fn record_sizes(sim: &mut Sim, node: Node) -> Rc<RefCell<Vec<(Duration, usize)>>> {
    let sizes = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&sizes);
    sim.add_tap(move |e| {
        if e.stage == Stage::Sent && e.node == node {
            sink.borrow_mut().push((e.at, e.data.len()));
        }
    });
    sizes
}

fn stats(sim: &mut Sim, end: End) -> ConnectionStats {
    sim.connection(0, end).expect("connection exists").stats()
}

fn sender_node(direction: Direction) -> Node {
    match direction {
        Direction::ToServer => Node::Client(0),
        Direction::ToClient => Node::Server,
    }
}

fn sender_path(direction: Direction) -> Path {
    match direction {
        Direction::ToServer => Path::Uplink,
        Direction::ToClient => Path::Downlink,
    }
}

#[test]
fn without_a_limit_bulk_data_goes_in_ceiling_sized_datagrams() {
    for direction in [Direction::ToServer, Direction::ToClient] {
        let mut sim = Sim::new(SimConfig::new(71).with_link(link()));
        let sizes = record_sizes(&mut sim, sender_node(direction));
        let id = sim.add_workload(BulkTransfer::new(0, direction, 8_000_000, 3));
        assert!(sim.run_workloads(Duration::from_secs(30)), "{direction:?}");
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
        assert_eq!(transfer.verify(), Ok(()), "{direction:?}");
        let sender = stats(&mut sim, direction.sender());
        assert_eq!(sender.mtu, CEILING as u64, "{direction:?}");
        assert_eq!(
            sender.mtu_probes_acked, 1,
            "one probe straight to the ceiling"
        );
        assert_eq!(sender.mtu_probes_lost, 0);
        let sizes = sizes.borrow();
        assert_eq!(sizes.iter().map(|&(_, s)| s).max(), Some(CEILING));
        // Once the first probe is answered (within the first RTTs), data fills the ceiling.
        let late: Vec<usize> = sizes
            .iter()
            .filter(|&&(at, size)| at > Duration::from_millis(500) && size > 1000)
            .map(|&(_, s)| s)
            .collect();
        let full = late.iter().filter(|&&s| s == CEILING).count();
        assert!(
            late.len() > 2000,
            "{direction:?}: {} large datagrams",
            late.len()
        );
        assert!(
            full * 100 >= late.len() * 95,
            "{direction:?}: {full} of {} large datagrams at the ceiling",
            late.len()
        );
    }
}

#[test]
fn a_1400_byte_path_is_found_without_congestion_losses() {
    let limited = link().with_max_datagram(1400);
    for direction in [Direction::ToServer, Direction::ToClient] {
        let mut sim = Sim::new(SimConfig::new(72).with_link(limited.clone()));
        // Long enough for the whole search (three lost probes per size too large, each lost
        // only after its timeout): probing stops when no stream data waits.
        let id = sim.add_workload(BulkTransfer::new(0, direction, 20_000_000, 4));
        assert!(sim.run_workloads(Duration::from_secs(30)), "{direction:?}");
        let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
        assert_eq!(transfer.verify(), Ok(()), "{direction:?}");
        let sender = stats(&mut sim, direction.sender());
        let mtu = usize::try_from(sender.mtu).expect("small");
        assert!(
            mtu <= 1400 && mtu > 1400 - PRECISION,
            "{direction:?}: settled at {mtu}: {sender:?}"
        );
        // Probes above the limit were lost, and only they: nothing reached the congestion
        // controller as a loss, and the link dropped exactly the lost probes.
        assert!(sender.mtu_probes_lost >= 3, "{sender:?}");
        assert_eq!(sender.packets_lost, 0, "{direction:?}: {sender:?}");
        assert_eq!(sender.bytes_lost, 0);
        let link = sim.link_stats(sender_path(direction));
        assert_eq!(link.too_big, sender.mtu_probes_lost, "{direction:?}");
        assert_eq!(link.lost_random + link.queue_drops, 0);
    }
}

#[test]
fn a_path_that_shrinks_mid_transfer_is_noticed_and_the_transfer_completes() {
    let mut sim = Sim::new(SimConfig::new(73).with_link(link().with_max_datagram(1472)));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 16_000_000, 5));
    sim.advance(Duration::from_secs(1));
    assert_eq!(stats(&mut sim, End::Client).mtu, CEILING as u64);
    let received = sim
        .workload::<BulkTransfer>(id)
        .expect("workload")
        .received();
    assert!(received > 1_000_000, "only {received} bytes after 1 s");
    // A route change: the uplink now carries 1250 bytes at most.
    let shrunk = link().with_max_datagram(1250);
    sim.link_mut(Path::Uplink).set_config(shrunk);
    let changed_at = sim.now();
    assert!(
        sim.run_workloads(Duration::from_secs(30)),
        "transfer stalled after the path shrank"
    );
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
    assert_eq!(transfer.verify(), Ok(()));
    // 16 MB at 50 Mbit/s is about 2.6 s; the detour through a black hole may cost a few
    // seconds, not the idle timeout.
    let done = transfer.completed_at().expect("completed");
    let after_change = done.saturating_duration_since(changed_at);
    let client = stats(&mut sim, End::Client);
    eprintln!("completed {after_change:?} after the change; {client:?}");
    assert!(
        after_change < Duration::from_secs(8),
        "took {after_change:?} after the change"
    );
    assert!(client.mtu <= 1250, "{client:?}");
    assert_eq!(client.mtu_black_holes, 1, "{client:?}");
    // After falling back to the base size the search went up again (it need not have finished
    // by the end of the transfer: probes only go while data waits).
    assert!(client.mtu > 1200, "search resumed: {client:?}");
}

#[test]
fn with_discovery_off_the_initial_size_is_kept() {
    let config = SimConfig::new(74)
        .with_link(link())
        .with_transport(|t| t.mtu_discovery = false);
    let mut sim = Sim::new(config);
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 4_000_000, 6));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    for end in [End::Client, End::Server] {
        let s = stats(&mut sim, end);
        assert_eq!(s.mtu, INITIAL as u64, "{end:?}");
        assert_eq!(s.mtu_probes_sent, 0, "{end:?}");
    }
    for path in [Path::Uplink, Path::Downlink] {
        assert!(sim.link_stats(path).max_datagram_sent <= INITIAL as u64);
    }
    assert_eq!(
        sim.link_stats(Path::Uplink).max_datagram_sent,
        INITIAL as u64
    );
}

#[test]
fn a_new_client_address_starts_the_search_again() {
    let mut sim = Sim::new(SimConfig::new(75).with_link(link()));
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToClient, 12_000_000, 7));
    sim.advance(Duration::from_millis(700));
    let before = stats(&mut sim, End::Server);
    assert_eq!(before.mtu, CEILING as u64);
    sim.rebind_client(0, "10.0.0.201:50001".parse().expect("address"));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    let after = stats(&mut sim, End::Server);
    assert_eq!(after.migrations, 1);
    assert_eq!(after.mtu, CEILING as u64, "found again on the new path");
    assert!(
        after.mtu_probes_acked > before.mtu_probes_acked,
        "{after:?}"
    );
}

#[test]
fn heavy_random_and_burst_loss_is_not_taken_for_a_black_hole() {
    for (seed, loss) in [(76, 0.05), (77, 0.20)] {
        let lossy = link()
            .with_loss(loss)
            .with_burst_loss(gaptun_sim::GilbertElliott::with_mean_loss(0.02, 4.0));
        let mut sim = Sim::new(SimConfig::new(seed).with_link(lossy));
        let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 4_000_000, 8));
        assert!(sim.run_workloads(Duration::from_secs(120)), "loss {loss}");
        assert_eq!(
            sim.workload::<BulkTransfer>(id).expect("workload").verify(),
            Ok(())
        );
        let client = stats(&mut sim, End::Client);
        eprintln!("loss {loss}: {client:?}");
        assert_eq!(client.mtu_black_holes, 0, "loss {loss}: {client:?}");
        assert_eq!(client.mtu, CEILING as u64, "loss {loss}");
    }
}

/// Payload of a 9000-byte jumbo frame over IPv4.
const JUMBO: usize = 8972;

/// A bulk transfer with both ends allowed `ceiling` bytes per datagram over `link`; returns the
/// sender's statistics and the largest datagram the link carried.
fn bulk_with_ceiling(seed: u64, ceiling: u16, link: LinkConfig) -> (ConnectionStats, u64, Sim) {
    let config = SimConfig::new(seed)
        .with_link(link)
        .with_transport(move |t| t.max_udp_payload = ceiling);
    let mut sim = Sim::new(config);
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 20_000_000, 8));
    assert!(sim.run_workloads(Duration::from_secs(30)));
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(())
    );
    let sender = stats(&mut sim, End::Client);
    let largest = sim.link_stats(Path::Uplink).max_datagram_sent;
    (sender, largest, sim)
}

#[test]
fn a_jumbo_frame_path_is_used_in_full() {
    let (sender, largest, _) = bulk_with_ceiling(76, JUMBO as u16, link().with_max_datagram(JUMBO));
    assert_eq!(sender.mtu, JUMBO as u64, "{sender:?}");
    assert_eq!(largest, JUMBO as u64);
    assert_eq!(sender.mtu_probes_lost, 0, "{sender:?}");
    // 20 MB in jumbo datagrams: about 2 300 packets instead of 14 000 at 1472 bytes.
    assert!(
        sender.packets_sent < 20_000_000 / 8000,
        "{} packets for 20 MB",
        sender.packets_sent
    );
}

#[test]
fn a_jumbo_ceiling_over_an_ethernet_path_settles_at_1472() {
    // The ends allow 9000-byte frames, the path drops anything above 1500.
    let (sender, largest, sim) =
        bulk_with_ceiling(77, JUMBO as u16, link().with_max_datagram(CEILING));
    assert_eq!(sender.mtu, CEILING as u64, "{sender:?}");
    assert!(largest <= JUMBO as u64);
    // Only probes were lost, never data: no congestion response to the search.
    assert!(sender.mtu_probes_lost >= 3, "{sender:?}");
    assert_eq!(sender.packets_lost, 0, "{sender:?}");
    let link = sim.link_stats(Path::Uplink);
    assert_eq!(link.too_big, sender.mtu_probes_lost);
}

#[test]
fn a_loopback_sized_ceiling_finds_a_jumbo_path() {
    let (sender, _, _) = bulk_with_ceiling(78, 65_507, link().with_max_datagram(JUMBO));
    assert!(
        sender.mtu <= JUMBO as u64 && sender.mtu > (JUMBO - PRECISION) as u64,
        "{sender:?}"
    );
    assert_eq!(sender.packets_lost, 0, "{sender:?}");
}

/// A route that carries jumbo frames.
fn jumbo_route(_: std::net::SocketAddr) -> Option<u16> {
    Some(JUMBO as u16)
}

/// A loopback-sized route.
fn loopback_route(_: std::net::SocketAddr) -> Option<u16> {
    Some(gaptun_proto::MAX_UDP_PAYLOAD)
}

/// A route whose MTU the system cannot tell.
fn unknown_route(_: std::net::SocketAddr) -> Option<u16> {
    None
}

/// A bulk transfer `direction` over a jumbo-frame link, both ends taking their ceiling from
/// their routes when `from_route`: the client's route queries are `client`, the server's
/// `server`, each a list of (carrier, query). Returns the sender's statistics and the largest
/// datagram the link carried that way.
fn bulk_with_routes(
    seed: u64,
    direction: Direction,
    from_route: bool,
    client: &[(u16, RouteMtuQuery)],
    server: &[(u16, RouteMtuQuery)],
) -> (ConnectionStats, u64) {
    let config = SimConfig::new(seed)
        .with_link(link().with_max_datagram(JUMBO))
        .with_transport(move |t| t.mtu_from_route = from_route);
    let mut sim = Sim::new(config);
    for &(carrier, route) in client {
        sim.client(0)
            .set_route_mtu(gaptun_proto::CarrierId(carrier), Some(route));
    }
    for &(carrier, route) in server {
        sim.server()
            .set_route_mtu(gaptun_proto::CarrierId(carrier), Some(route));
    }
    let id = sim.add_workload(BulkTransfer::new(0, direction, 8_000_000, 4));
    assert!(sim.run_workloads(Duration::from_secs(30)), "{direction:?}");
    assert_eq!(
        sim.workload::<BulkTransfer>(id).expect("workload").verify(),
        Ok(()),
        "{direction:?}"
    );
    let sender = stats(&mut sim, direction.sender());
    let largest = sim.link_stats(sender_path(direction)).max_datagram_sent;
    (sender, largest)
}

/// Both directions with the client's route `client` and the server's jumbo route: data goes
/// in jumbo datagrams (although max_udp_payload is 1472) and no probe above them is lost.
fn jumbo_both_ways(seed: u64, client: RouteMtuQuery) {
    for direction in [Direction::ToServer, Direction::ToClient] {
        let (sender, largest) =
            bulk_with_routes(seed, direction, true, &[(0, client)], &[(0, jumbo_route)]);
        assert_eq!(sender.mtu, JUMBO as u64, "{direction:?}: {sender:?}");
        assert_eq!(largest, JUMBO as u64, "{direction:?}");
        assert_eq!(sender.mtu_probes_lost, 0, "{direction:?}: {sender:?}");
    }
}

#[test]
fn the_routes_ceiling_replaces_the_configured_one_on_both_sides() {
    // Both routes carry jumbo frames.
    jumbo_both_ways(81, jumbo_route);
}

#[test]
fn the_smaller_routes_ceiling_applies_and_the_server_announces_its_own() {
    // The client's route says loopback, the server's (to this client) jumbo: the server
    // announces its route's ceiling in its parameters, so both send at most 8972, and no
    // probe above it is wasted.
    jumbo_both_ways(82, loopback_route);
}

#[test]
fn a_route_query_that_fails_keeps_the_configured_ceiling() {
    for direction in [Direction::ToServer, Direction::ToClient] {
        let (sender, largest) = bulk_with_routes(
            83,
            direction,
            true,
            &[(0, unknown_route)],
            &[(0, jumbo_route)],
        );
        assert_eq!(sender.mtu, CEILING as u64, "{direction:?}: {sender:?}");
        assert_eq!(largest, CEILING as u64, "{direction:?}");
    }
}

type RouteMtuQuery = gaptun_proto::RouteMtuQuery;

/// The jumbo route as fake TCP sees it: 24 bytes less than UDP on the same route.
fn jumbo_route_fake_tcp(_: std::net::SocketAddr) -> Option<u16> {
    Some(JUMBO as u16 - 24)
}

#[test]
fn a_connection_takes_the_smallest_ceiling_of_its_endpoints_carriers() {
    // Both ends also have a second carrier (as `--carrier all` has fake TCP beside UDP) whose
    // route carries 24 bytes less. The connection starts on UDP but may move to the other
    // carrier later, and its ceiling is decided once: it must fit both.
    let routes: [(u16, RouteMtuQuery); 2] = [(0, jumbo_route), (1, jumbo_route_fake_tcp)];
    for direction in [Direction::ToServer, Direction::ToClient] {
        let (sender, largest) = bulk_with_routes(85, direction, true, &routes, &routes);
        assert_eq!(sender.mtu, JUMBO as u64 - 24, "{direction:?}: {sender:?}");
        assert_eq!(largest, JUMBO as u64 - 24, "{direction:?}");
    }
}

#[test]
fn an_explicit_ceiling_ignores_the_route() {
    // mtu_from_route off (an explicit --mtu): the routes' jumbo frames are not used.
    let (sender, largest) = bulk_with_routes(
        84,
        Direction::ToServer,
        false,
        &[(0, jumbo_route)],
        &[(0, jumbo_route)],
    );
    assert_eq!(sender.mtu, CEILING as u64, "{sender:?}");
    assert_eq!(largest, CEILING as u64);
}

/// A connection whose datagrams grow from the initial 1350 bytes to 65 507 (a loopback-sized
/// ceiling, confirmed by the first probe) while a bulk transfer runs over a lossy link, and
/// whose BBR then enters ProbeRTT (the link's delay grows after the start, so the minimum RTT
/// is not seen again and expires after 10 s). ProbeRTT's window is its floor, 4 packets: kept
/// in packets of the size the controller was built with, it was 4 × 1350 bytes, less than one
/// 64 KB packet, and the connection stopped sending. Here the floor must be 4 packets of the
/// new size, no second may pass without the sender sending while data waits, and the data
/// must arrive intact.
#[test]
fn datagrams_growing_to_64k_mid_transfer_never_stall_probe_rtt() {
    const BIG: u64 = gaptun_proto::MAX_UDP_PAYLOAD as u64;
    let lossy = LinkConfig::ideal()
        .with_delay(Duration::from_millis(10))
        .with_rate_mbps(100.0)
        .with_queue_bytes(4 << 20)
        .with_loss(0.01);
    let config = SimConfig::new(91)
        .with_link(lossy.clone())
        .with_transport(|t| t.max_udp_payload = gaptun_proto::MAX_UDP_PAYLOAD);
    let mut sim = Sim::new(config);
    let sent = record_sizes(&mut sim, Node::Client(0));
    // 100 Mbit/s for about 16 s: past ProbeRTT (about 11 s in) and out of it again.
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 200_000_000, 91));
    let slower = lossy.with_delay(Duration::from_millis(20));
    let mut slowed = false;
    // Sample the sender's MTU and window after every instant. The search ends within
    // `SEARCH_PRECISION` of the ceiling after a few probes cut to a quarter of the window.
    let mut grown_at = None;
    let mut below_floor = None;
    let mut probe_rtt_windows = 0u32;
    let done = sim.run_for(Duration::from_secs(60), |sim| {
        // A second in, the path's delay grows by 10 ms each way: the 20 ms minimum RTT measured
        // so far is never matched again and expires 10 s later.
        if !slowed && sim.elapsed() >= Duration::from_secs(1) {
            slowed = true;
            sim.link_mut(Path::Uplink).set_config(slower.clone());
            sim.link_mut(Path::Downlink).set_config(slower.clone());
        }
        let s = sim.connection(0, End::Client).map(|c| c.stats());
        if let Some(s) = s
            && s.mtu > BIG - PRECISION as u64
        {
            grown_at.get_or_insert(sim.elapsed());
            if s.cwnd < 4 * s.mtu {
                below_floor.get_or_insert((sim.elapsed(), s.cwnd, s.mtu));
            }
            if s.cwnd == 4 * s.mtu {
                probe_rtt_windows += 1;
            }
        }
        sim.workloads_done()
    });
    let sender = stats(&mut sim, End::Client);
    assert!(done, "transfer did not finish: {sender:?}");
    let transfer = sim.workload::<BulkTransfer>(id).expect("workload");
    assert_eq!(transfer.verify(), Ok(()));
    let grown_at = grown_at.unwrap_or_else(|| panic!("never reached 65 507: {sender:?}"));
    assert!(grown_at < Duration::from_secs(1), "grew at {grown_at:?}");
    // ProbeRTT ran, at a floor of 4 packets of the new size, and the window was never below it.
    assert!(
        probe_rtt_windows > 0,
        "ProbeRTT was not entered: {sender:?}"
    );
    assert_eq!(below_floor, None, "(when, window, mtu)");
    let completed = transfer.completed_at().expect("completed") - sim.start();
    assert!(
        completed > Duration::from_secs(12),
        "ended before ProbeRTT: {completed:?}"
    );
    // The sender never went a second without sending while the transfer was running.
    let sent = sent.borrow();
    let times: Vec<Duration> = sent
        .iter()
        .map(|&(at, _)| at)
        .filter(|&at| at <= completed)
        .collect();
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_secs(1),
        "sender silent for {longest:?}"
    );
    // And most of the transfer went in 64 KB datagrams.
    let big = sent
        .iter()
        .filter(|&&(_, s)| s as u64 == sender.mtu)
        .count() as u64;
    assert!(
        big * sender.mtu > 150_000_000,
        "{big} datagrams of {} bytes",
        sender.mtu
    );
}
