//! End-to-end tests of the runtime over real loopback UDP sockets.
//!
//! They need a working protocol core; run them with `cargo test -p gaptun-runtime --test
//! loopback`. Every test is bounded by a timeout so that a stuck transfer fails instead of
//! hanging the suite.

// Test helpers, not production code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{bounded, key, pattern, read_hashed};
use gaptun_proto::{ConnectionError, EndpointConfig, Psk};
use gaptun_runtime::lossy_relay::{LossyConfig, LossyRelay};
use gaptun_runtime::{ClientPool, ConnectError, PoolConfig, RtConnection, RtEndpoint, RtError};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK: &str = "127.0.0.1:0";

fn server(psk: Psk) -> RtEndpoint {
    server_at(LOOPBACK.parse().unwrap(), psk)
}

fn server_at(addr: SocketAddr, psk: Psk) -> RtEndpoint {
    let ep = RtEndpoint::bind(addr, EndpointConfig::server(vec![psk])).unwrap();
    tokio::spawn(echo_all(ep.clone()));
    ep
}

fn client(psk: Psk) -> RtEndpoint {
    RtEndpoint::bind(LOOPBACK.parse().unwrap(), EndpointConfig::client(psk)).unwrap()
}

/// Accepts every connection and echoes every stream back until its end.
async fn echo_all(ep: RtEndpoint) {
    while let Some(conn) = ep.accept().await {
        tokio::spawn(echo_conn(conn));
    }
}

async fn echo_conn(conn: RtConnection) {
    let datagrams = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = datagrams.read_datagram().await {
            let _ = datagrams.send_datagram(d);
        }
    });
    while let Some(stream) = conn.accept_stream().await {
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Sends `len` bytes on a new stream of `conn`, reads the echo, and checks it by SHA-256.
async fn echo_roundtrip(conn: &RtConnection, len: usize, seed: u64) {
    let stream = conn.open_stream().await.unwrap();
    let data = pattern(len, seed);
    let sent_hash = Sha256::digest(&data);
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(16 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        w
    });
    let (total, got_hash) = read_hashed(&mut r).await;
    let _w = writer.await.unwrap();
    assert_eq!(total, len);
    assert_eq!(got_hash, sent_hash.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_8_mib_hashed() {
    bounded(60, async {
        let srv = server(key(1));
        let cli = client(key(1));
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        echo_roundtrip(&conn, 8 * 1024 * 1024, 7).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_of_every_size_echo_over_loopback() {
    bounded(30, async {
        let srv = server(key(11));
        let cli = client(key(11));
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        assert_eq!(conn.max_datagram_size(), Some(65_535));
        // Small, WireGuard-sized (more than one packet at the default MTU), 4 KiB, largest.
        for (i, len) in [1usize, 1400, 4096, 65_535].into_iter().enumerate() {
            let data = pattern(len, i as u64 + 1);
            conn.send_datagram(data.clone()).unwrap();
            let echo = conn.read_datagram().await.unwrap();
            assert_eq!(Sha256::digest(&echo), Sha256::digest(&data), "{len} bytes");
        }
        let err = conn.send_datagram(vec![0; 65_536]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let stats = conn.stats().unwrap().datagrams;
        assert_eq!((stats.sent, stats.received), (4, 4));
        conn.close(0, b"");
        assert!(conn.read_datagram().await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams() {
    bounded(60, async {
        let srv = server(key(2));
        let cli = client(key(2));
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100u64 {
            let conn = conn.clone();
            tasks.spawn(async move { echo_roundtrip(&conn, 64 * 1024, i + 1).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_fails_with_handshake_timeout() {
    bounded(20, async {
        let srv = server(key(3));
        let mut config = EndpointConfig::client(key(4));
        config.transport.handshake_timeout = Duration::from_secs(1);
        let cli = RtEndpoint::bind(LOOPBACK.parse().unwrap(), config).unwrap();
        let start = Instant::now();
        let err = cli.connect(srv.local_addr()).await.unwrap_err();
        assert!(
            matches!(
                err,
                ConnectError::Lost(RtError::Connection(ConnectionError::HandshakeTimeout(_)))
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("check address, port and key"),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_counted() {
    bounded(30, async {
        let srv = server(key(5));
        let cli = client(key(5));
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        echo_roundtrip(&conn, 256 * 1024, 3).await;
        let stats = conn.stats().unwrap();
        assert!(stats.bytes_sent > 256 * 1024, "{stats:?}");
        assert!(stats.bytes_received > 256 * 1024, "{stats:?}");
        assert!(
            stats.packets_sent > 0 && stats.packets_received > 0,
            "{stats:?}"
        );
        assert!(stats.rtt > Duration::ZERO, "{stats:?}");
        let infos = cli.connection_stats();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].remote, srv.local_addr());
        assert_eq!(srv.stats().accepted, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reaches_the_peer() {
    bounded(30, async {
        let srv = server(key(6));
        let cli = client(key(6));
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        echo_roundtrip(&conn, 1024, 1).await;
        srv.shutdown(Duration::from_secs(2)).await;
        let reason = conn.closed().await;
        assert!(
            matches!(
                reason,
                RtError::Connection(ConnectionError::ClosedByPeer { .. })
            ),
            "{reason:?}"
        );
        assert!(conn.open_stream().await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reconnects_after_server_restart() {
    bounded(60, async {
        let first = server(key(7));
        let addr = first.local_addr();
        let config = PoolConfig {
            conns: 2,
            ..PoolConfig::default()
        };
        let pool = ClientPool::connect(&addr.to_string(), EndpointConfig::client(key(7)), config)
            .await
            .unwrap();
        let conn = pool.connections().into_iter().next().unwrap();
        echo_roundtrip(&conn, 64 * 1024, 1).await;

        first.shutdown(Duration::from_secs(2)).await;
        drop(first);
        let _second = server_at(addr, key(7));

        // The pool notices the CLOSE, reconnects, and streams work again.
        let stream = pool.open_stream().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        w.write_all(b"after restart").await.unwrap();
        w.shutdown().await.unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"after restart");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.connections().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pool.connections().len(), 2);
        pool.shutdown(Duration::from_secs(2)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_lossy_relay() {
    bounded(120, async {
        let srv = server(key(8));
        let relay = LossyRelay::spawn(LossyConfig {
            loss: 0.02,
            delay: Duration::from_millis(30),
            seed: 42,
            ..LossyConfig::new(LOOPBACK.parse().unwrap(), srv.local_addr())
        })
        .await
        .unwrap();
        let cli = client(key(8));
        let conn = cli.connect(relay.local_addr()).await.unwrap();
        echo_roundtrip(&conn, 1024 * 1024, 9).await;
        let stats = conn.stats().unwrap();
        assert!(stats.min_rtt >= Duration::from_millis(55), "{stats:?}");
        let (_, dropped) = relay.counts();
        assert!(dropped > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_early_does_not_break_the_connection() {
    bounded(30, async {
        let srv = server(key(9));
        let cli = client(key(9));
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        let mut s = conn.open_stream().await.unwrap();
        s.write_all(&pattern(100_000, 5)).await.unwrap();
        drop(s); // abandoned: reset + stop
        echo_roundtrip(&conn, 100_000, 6).await;
    })
    .await;
}

/// Binds a server and a client on `ip` (port 0); `None` where that address family is missing.
fn pair_on(ip: &str, psk: u8) -> Option<(RtEndpoint, RtEndpoint)> {
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    let srv = RtEndpoint::bind(addr, EndpointConfig::server(vec![key(psk)])).ok()?;
    tokio::spawn(echo_all(srv.clone()));
    let cli = RtEndpoint::bind(addr, EndpointConfig::client(key(psk))).ok()?;
    Some((srv, cli))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mtu_discovery_reaches_the_ceiling_over_real_sockets() {
    bounded(60, async {
        // Loopback carries far more than the ceiling: 1472 over IPv4, 20 bytes less over IPv6.
        for (ip, ceiling) in [("127.0.0.1", 1472), ("[::1]", 1452)] {
            let Some((srv, cli)) = pair_on(ip, 11) else {
                eprintln!("skipping {ip}: cannot bind");
                continue;
            };
            let conn = cli.connect(srv.local_addr()).await.unwrap();
            echo_roundtrip(&conn, 2 * 1024 * 1024, 11).await;
            let stats = conn.stats().unwrap();
            assert_eq!(stats.mtu, ceiling, "{ip}: {stats:?}");
            assert!(stats.mtu_probes_acked >= 1, "{ip}: {stats:?}");
            assert_eq!(stats.mtu_probes_lost, 0, "{ip}: {stats:?}");
        }
    })
    .await;
}

/// Both ends take their ceiling from the route (no configured MTU): over loopback (MTU 65 536)
/// data goes in 65 507-byte datagrams (20 bytes less over IPv6), intact, and none arrives cut
/// short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceilings_from_the_loopback_route_reach_64k_datagrams() {
    bounded(60, async {
        let max = gaptun_proto::MAX_UDP_PAYLOAD;
        for (ip, ceiling) in [("127.0.0.1", max), ("[::1]", max - 20)] {
            let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
            let mut server = EndpointConfig::server(vec![key(12)]);
            server.transport.mtu_from_route = true;
            let mut client = EndpointConfig::client(key(12));
            client.transport.mtu_from_route = true;
            let Ok(srv) = RtEndpoint::bind(addr, server) else {
                eprintln!("skipping {ip}: cannot bind");
                continue;
            };
            tokio::spawn(echo_all(srv.clone()));
            let cli = RtEndpoint::bind(addr, client).unwrap();
            let conn = cli.connect(srv.local_addr()).await.unwrap();
            echo_roundtrip(&conn, 8 * 1024 * 1024, 12).await;
            let stats = conn.stats().unwrap();
            // Confirmed by discovery up to the ceiling (or within its last steps: probes are
            // capped by the congestion window).
            let ceiling = u64::from(ceiling);
            assert!(
                stats.mtu > 60_000 && stats.mtu <= ceiling,
                "{ip}: {stats:?}"
            );
            assert_eq!(stats.mtu_probes_lost, 0, "{ip}: {stats:?}");
            // Most of the 8 MiB each way went in full-size datagrams.
            assert!(
                stats.packets_sent < 2 * 8 * 1024 * 1024 / 60_000 + 200,
                "{ip}: {} packets sent",
                stats.packets_sent
            );
            for ep in [&srv, &cli] {
                let snap = ep.refresh_snapshot();
                assert_eq!(
                    snap.shards.iter().map(|s| s.truncated).sum::<u64>(),
                    0,
                    "{ip}"
                );
                let mtu = snap.connections.first().map_or(0, |c| c.stats.mtu);
                assert!(mtu > 60_000 && mtu <= ceiling, "{ip}: {mtu}");
            }
        }
    })
    .await;
}

/// The driver publishes the figures by itself: after a transfer the published snapshot shows
/// the connection and at least the bytes sent, and an idle endpoint's snapshot keeps being
/// renewed (its time moves on) without anyone asking.
#[tokio::test]
async fn snapshot_is_published_by_the_driver() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let psk = key(41);
        let srv = server(psk.clone());
        let cli = client(psk);
        let mut watch = cli.watch_snapshot();
        let conn = cli.connect(srv.local_addr()).await.unwrap();
        echo_roundtrip(&conn, 200_000, 41).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let snap = loop {
            watch.changed().await.unwrap();
            let snap = watch.borrow_and_update().clone();
            let sent = snap
                .connections
                .iter()
                .map(|c| c.stats.stream_bytes_sent)
                .sum::<u64>();
            if sent >= 200_000 || Instant::now() > deadline {
                break snap;
            }
        };
        assert_eq!(snap.connections.len(), 1);
        let c = snap.connections.first().unwrap();
        assert!(c.established);
        assert_eq!(c.carrier, "udp");
        assert!(c.stats.stream_bytes_sent >= 200_000, "{:?}", c.stats);
        assert!(c.stats.bytes_received >= 200_000, "{:?}", c.stats);
        let first = cli.snapshot().taken;
        tokio::time::sleep(gaptun_runtime::SNAPSHOT_INTERVAL * 3).await;
        assert!(
            cli.snapshot().taken > first,
            "idle endpoint's snapshot renewed"
        );
    })
    .await
    .unwrap();
}
