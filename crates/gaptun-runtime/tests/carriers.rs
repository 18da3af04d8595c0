//! Carriers over real loopback sockets: a server on a 10-port range reached through a relay
//! that drops everything on 2 of the ports, and a client that hops to a new source port every
//! second during a transfer. Data is checked end to end by SHA-256; every test is bounded.

// Test helpers, not production code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    addrs, bounded, consecutive_ports, pattern, range_client, range_hash_server,
    range_hash_server_skipping, send_and_check,
};
use gaptun_runtime::PoolConfig;
use tokio::net::UdpSocket;

/// A relay for a port range that keeps one upstream socket for all ports (as a NAT keeps one
/// mapping for one client socket): what arrives on relay port `i` goes to server port `i`, and
/// what server port `i` sends back leaves from relay port `i`. Ports in `dead` drop everything,
/// both ways. Returns the datagrams dropped so far.
fn port_range_relay(
    downstream: Vec<StdUdpSocket>,
    server_ports: Vec<SocketAddr>,
    dead: &'static [usize],
) -> Arc<AtomicU64> {
    let dropped = Arc::new(AtomicU64::new(0));
    let upstream = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let upstream = Arc::new(UdpSocket::from_std(upstream).unwrap());
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let mut downs = Vec::new();
    for (i, sock) in downstream.into_iter().enumerate() {
        sock.set_nonblocking(true).unwrap();
        let down = Arc::new(UdpSocket::from_std(sock).unwrap());
        downs.push(Arc::clone(&down));
        let (up, to, client, dropped) = (
            Arc::clone(&upstream),
            server_ports[i],
            Arc::clone(&client),
            Arc::clone(&dropped),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = down.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if dead.contains(&i) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = up.send_to(&buf[..n], to).await;
            }
        });
    }
    let dropped_up = Arc::clone(&dropped);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
            let Some(i) = server_ports.iter().position(|&p| p == from) else {
                continue;
            };
            let Some(to) = *client.lock().unwrap() else {
                continue;
            };
            if dead.contains(&i) {
                dropped_up.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let _ = downs[i].send_to(&buf[..n], to).await;
        }
    });
    dropped
}

/// `gaptun server --listen 127.0.0.1:A-B` and `gaptun client --server 127.0.0.1:C-D` through
/// a relay on which 2 of the 10 ports drop everything: the handshake gets through, an 8 MB
/// upload arrives intact, no connection is lost, and the client has given up the 2 dead ports
/// while using all 8 others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_port_range_with_two_dead_ports_loses_nothing() {
    bounded(60, async {
        let (server, server_addrs) = range_hash_server(10);
        assert_eq!(server.carriers().len(), 10);

        let relay_sockets = consecutive_ports(10);
        let relay_addrs = addrs(&relay_sockets);
        static DEAD: [usize; 2] = [0, 6];
        let dropped = port_range_relay(relay_sockets, server_addrs.clone(), &DEAD);

        let pool = range_client(relay_addrs[0], relay_addrs[9], PoolConfig::default()).await;
        let conn = pool.connections().pop().unwrap();
        let data = pattern(8 * 1024 * 1024, 7);
        send_and_check(&conn, &data, 256 * 1024, Duration::ZERO).await;
        // A second, slower transfer lets the dead paths' retries happen and fail again.
        send_and_check(
            &conn,
            &data[..1024 * 1024],
            64 * 1024,
            Duration::from_millis(50),
        )
        .await;

        assert!(!conn.is_closed(), "connection kept");
        assert_eq!(
            server.connection_stats().len(),
            1,
            "one connection, never replaced"
        );
        assert!(
            dropped.load(Ordering::Relaxed) > 0,
            "the dead ports did drop"
        );
        let paths = conn.paths();
        assert_eq!(paths.len(), 10);
        for (i, p) in paths.iter().enumerate() {
            let port_index = relay_addrs
                .iter()
                .position(|a| *a == p.addr.remote)
                .unwrap();
            if DEAD.contains(&port_index) {
                assert!(
                    p.deaths >= 1 && p.packets_acked == 0,
                    "dead port {port_index} abandoned: {p:?}"
                );
            } else {
                assert!(
                    p.packets_acked > 0,
                    "path {i} (port {port_index}) carried: {p:?}"
                );
            }
        }
        let stats = conn.stats().unwrap();
        assert!(stats.paths_abandoned >= 2, "{stats:?}");
        let server_side = &server.connection_stats()[0];
        assert!(
            server_side.stats.paths_alive >= 8,
            "{:?}",
            server_side.stats
        );
        pool.shutdown(Duration::from_secs(1)).await;
    })
    .await;
}

/// `--hop-interval 1`: a transfer of about five seconds survives several hops to new source
/// ports (and, with a port range, new server ports), each validated by the server without a
/// new handshake; old sockets are closed after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_hopping_every_second_keeps_a_transfer_alive() {
    bounded(60, async {
        let (server, server_addrs) = range_hash_server(3);
        let config = PoolConfig {
            hop_interval: Some(Duration::from_secs(1)),
            ..PoolConfig::default()
        };
        let pool = range_client(server_addrs[0], server_addrs[2], config).await;
        let conn = pool.connections().pop().unwrap();
        let first_local = pool.endpoint().local_addr();
        let data = pattern(5 * 1024 * 1024, 11);
        // 80 chunks 60 ms apart: about five seconds.
        send_and_check(&conn, &data, 64 * 1024, Duration::from_millis(60)).await;

        assert!(!conn.is_closed(), "connection kept");
        let server_side = server.connection_stats();
        assert_eq!(server_side.len(), 1, "no second handshake");
        let migrations = server_side[0].stats.migrations;
        assert!(
            migrations >= 3,
            "server followed several hops: {migrations}"
        );
        // The first socket goes 3 s after the first hop; at most the sockets of the last
        // grace period (about 3 hops) and the current one remain.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let carriers = loop {
            let carriers = pool.endpoint().carriers();
            if carriers.iter().all(|(id, _, _)| id.0 != 0) {
                break carriers;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first socket was not dropped: {carriers:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(carriers.len() <= 5, "old sockets are dropped: {carriers:?}");
        assert!(
            carriers
                .iter()
                .all(|(_, kind, local)| *kind == "udp" && *local != Some(first_local)),
            "{carriers:?}"
        );
        // The server now talks to a client port other than the first.
        assert_ne!(server_side[0].remote.port(), first_local.port());
        pool.shutdown(Duration::from_secs(1)).await;
    })
    .await;
}

/// A range whose first port is closed (ICMP port unreachable comes back at once): the handshake
/// is not failed by it, its repeat goes to the next port, and the connection carries data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_first_port_of_a_range_does_not_fail_the_handshake() {
    bounded(30, async {
        let (_server, all) = range_hash_server_skipping(3, 1);
        let pool = range_client(all[0], all[2], PoolConfig::default()).await;
        let conn = pool.connections().pop().unwrap();
        send_and_check(&conn, &pattern(256 * 1024, 5), 64 * 1024, Duration::ZERO).await;
        pool.shutdown(Duration::from_secs(1)).await;
    })
    .await;
}
