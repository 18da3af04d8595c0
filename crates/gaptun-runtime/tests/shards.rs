//! A server split into shards over real loopback sockets: many clients at once with their
//! data checked by SHA-256, and a client that keeps changing its source port (so the kernel
//! hands its datagrams to other shards' sockets) staying on its one connection.

// Test helpers, not production code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{hash_server, key, pattern, send_and_check};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use gaptun_proto::EndpointConfig;
use gaptun_runtime::{ClientPool, PoolConfig, RtEndpoint};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// 16 clients, each on its own socket, upload at once to a server of 4 shards: every stream
/// arrives intact, the kernel spread the clients over more than one shard, and no two
/// connections share a handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_on_four_shards_arrive_intact() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server =
            RtEndpoint::bind_sharded(&[loopback()], EndpointConfig::server(vec![key(43)]), 4)
                .unwrap();
        let target = server.local_addr();
        tokio::spawn(hash_server(server.clone()));
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            tasks.push(tokio::spawn(async move {
                let client = RtEndpoint::bind(loopback(), EndpointConfig::client(key(43))).unwrap();
                let conn = client.connect(target).await.unwrap();
                let data = pattern(256 * 1024 + i as usize * 977, i + 1);
                send_and_check(&conn, &data, 16 * 1024, Duration::ZERO).await;
                // Kept open until every client is done, so the server still lists them all.
                (client, conn)
            }));
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap());
        }
        let snap = server.refresh_snapshot();
        assert_eq!(snap.connections.len(), 16, "{snap:?}");
        let handles: HashSet<_> = snap.connections.iter().map(|c| c.handle).collect();
        assert_eq!(handles.len(), 16, "handles are unique across shards");
        assert_eq!(snap.shards.len(), 4);
        assert_eq!(snap.shards.iter().map(|s| s.connections).sum::<usize>(), 16);
        let used = snap.shards.iter().filter(|s| s.connections > 0).count();
        // All 16 on one shard by chance: 4 × 4^-16.
        assert!(
            used >= 2,
            "clients spread over the shards: {:?}",
            snap.shards
        );
        assert!(snap.shards.iter().all(|s| s.busy > Duration::ZERO));
        assert_eq!(server.stats().accepted, 16);
        for (client, _) in &clients {
            client.close(0, b"");
        }
        server.shutdown(Duration::from_secs(2)).await;
    })
    .await
    .expect("finished within 60 s");
}

/// A client hopping to a new source port every 200 ms: the kernel hashes each new address to
/// any of the 4 shards' sockets, so its datagrams keep reaching shards that do not own its
/// connection and are handed over. The transfer stays on its one connection, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hopping_client_keeps_its_connection_across_shards() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server =
            RtEndpoint::bind_sharded(&[loopback()], EndpointConfig::server(vec![key(43)]), 4)
                .unwrap();
        tokio::spawn(hash_server(server.clone()));
        let config = PoolConfig {
            hop_interval: Some(Duration::from_millis(200)),
            ..PoolConfig::default()
        };
        let target = server.local_addr().to_string();
        let pool = ClientPool::connect(&target, EndpointConfig::client(key(43)), config)
            .await
            .unwrap();
        let conn = pool.connections().pop().unwrap();
        // Rounds of about 1.2 s (6 hops each) until some datagrams were handed over; a new
        // port hashes to the owning shard with probability 1/4, so one round nearly always is
        // enough, and 10 rounds fail to hand anything over with odds of 4^-60.
        let mut round = 0;
        loop {
            let data = pattern(512 * 1024, round + 7);
            send_and_check(&conn, &data, 16 * 1024, Duration::from_millis(40)).await;
            let snap = server.refresh_snapshot();
            let passed: u64 = snap.shards.iter().map(|s| s.passed_in).sum();
            if passed > 0 && snap.connections.first().unwrap().stats.migrations >= 3 {
                break;
            }
            round += 1;
            assert!(round < 10, "no datagram was handed over: {:?}", snap.shards);
        }
        assert!(!conn.is_closed());
        let snap = server.refresh_snapshot();
        assert_eq!(snap.connections.len(), 1, "no second handshake");
        assert_eq!(server.stats().accepted, 1);
        assert_eq!(
            snap.shards.iter().map(|s| s.dropped_passing).sum::<u64>(),
            0
        );
        pool.shutdown(Duration::from_secs(1)).await;
        server.shutdown(Duration::from_secs(2)).await;
    })
    .await
    .expect("finished within 60 s");
}

/// The port of a sharded server is its own: a second server (sharded or not) cannot bind it.
#[tokio::test]
async fn a_sharded_port_is_not_shared_with_another_server() {
    let first =
        RtEndpoint::bind_sharded(&[loopback()], EndpointConfig::server(vec![key(43)]), 2).unwrap();
    let addr = first.local_addr();
    for shards in [1, 2] {
        let again =
            RtEndpoint::bind_sharded(&[addr], EndpointConfig::server(vec![key(43)]), shards);
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse),
            "{shards} shards"
        );
    }
    first.close(0, b"");
}
