//! gaptun streams over the fake-TCP carrier through the NAT router with strict conntrack:
//! a transfer arrives with its SHA-256 intact, no segment is INVALID, and a RST injected by
//! the router in the middle of a transfer costs a reconnection, not the stream.
//!
//! Size: `GAPTUN_FAKETCP_MIB` (default 32 MiB, quick in debug builds). The 256 MiB run of the
//! issue: `GAPTUN_FAKETCP_MIB=256 cargo test --release -p gaptun-faketcp --test transfer`.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Topology, ipv6_topology_or_skip, topology_or_skip};
use gaptun_faketcp::{ClientConfig, FakeTcpSocket, FakeTcpStats, ServerConfig, Timing};
use gaptun_runtime::proto::{EndpointConfig, Psk};
use gaptun_runtime::{Carrier, RtEndpoint};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 10001;

fn key() -> Psk {
    Psk::from_bytes([42; 32])
}

fn mib() -> usize {
    std::env::var("GAPTUN_FAKETCP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Deterministic pseudo-random bytes (xorshift), generated chunk by chunk.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// A gaptun server on fake TCP in the server namespace, listening on `listen` (`0.0.0.0` or
/// `::`): accepts one stream, returns the SHA-256 and length of everything read from it.
fn server(topo: &Topology, listen: IpAddr) -> std::thread::JoinHandle<([u8; 32], usize)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = Topology::spawn_in(&topo.server, move || async move {
        let carrier = FakeTcpSocket::server(ServerConfig {
            addr: listen,
            ports: PORT..=PORT,
            timing: Timing::default(),
        })
        .unwrap();
        let carriers: Vec<Arc<dyn Carrier>> = vec![Arc::new(carrier)];
        let ep = RtEndpoint::with_carriers(carriers, EndpointConfig::server(vec![key()])).unwrap();
        ready_tx.send(()).unwrap();
        let conn = ep.accept().await.unwrap();
        let mut stream = conn.accept_stream().await.unwrap();
        let mut hash = Sha256::new();
        let mut total = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        stream.shutdown().await.unwrap();
        // Let the last acknowledgements reach the client before the endpoint goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        (hash.finalize().into(), total)
    });
    ready_rx.recv().unwrap();
    handle
}

/// Sends `bytes` on one stream from the client namespace to `server_ip`; `during` runs once a
/// third is sent. Returns the SHA-256 sent, the time taken and the carrier's counters.
fn client(
    topo: &Arc<Topology>,
    server_ip: IpAddr,
    bytes: usize,
    during: impl FnOnce(&Topology) + Send + 'static,
) -> ([u8; 32], Duration, FakeTcpStats) {
    client_then(topo, server_ip, bytes, during, |_| {})
}

/// As [`client`]; `after` runs once the server has read everything, while both carriers
/// still run.
fn client_then(
    topo: &Arc<Topology>,
    server_ip: IpAddr,
    bytes: usize,
    during: impl FnOnce(&Topology) + Send + 'static,
    after: impl FnOnce(&Topology) + Send + 'static,
) -> ([u8; 32], Duration, FakeTcpStats) {
    let t = Arc::clone(topo);
    Topology::spawn_in(&topo.client, move || async move {
        let carrier = FakeTcpSocket::client(ClientConfig {
            server: server_ip,
            ports: PORT..=PORT,
            timing: Timing::default(),
        })
        .unwrap();
        let carriers: Vec<Arc<dyn Carrier>> = vec![Arc::new(carrier.clone())];
        let ep = RtEndpoint::with_carriers(carriers, EndpointConfig::client(key())).unwrap();
        let server = SocketAddr::new(server_ip, PORT);
        let conn = tokio::time::timeout(Duration::from_secs(10), ep.connect(server))
            .await
            .expect("handshake within 10 s")
            .unwrap();
        let mut stream = conn.open_stream().await.unwrap();
        let started = Instant::now();
        let mut pattern = Pattern(0x9e37_79b9_7f4a_7c15);
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        let mut during = Some(during);
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            pattern.fill(&mut chunk[..n]);
            hash.update(&chunk[..n]);
            stream.write_all(&chunk[..n]).await.unwrap();
            sent += n;
            if sent >= bytes / 3
                && let Some(f) = during.take()
            {
                let t = Arc::clone(&t);
                tokio::task::spawn_blocking(move || f(&t)).await.unwrap();
            }
        }
        stream.shutdown().await.unwrap();
        // The server closes its side once it has read everything.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut rest))
            .await
            .expect("server finished reading within 120 s")
            .unwrap();
        let elapsed = started.elapsed();
        after(&t);
        (hash.finalize().into(), elapsed, carrier.stats())
    })
    .join()
    .unwrap()
}

#[test]
fn gaptun_stream_over_fake_tcp_through_strict_nat_is_intact() {
    let Some(topo) = topology_or_skip("gaptun_stream_over_fake_tcp_through_strict_nat_is_intact")
    else {
        return;
    };
    let topo = Arc::new(topo);
    let bytes = mib() << 20;
    let server = server(&topo, Ipv4Addr::UNSPECIFIED.into());
    let (sent, elapsed, stats) = client(&topo, topo.server_ip.into(), bytes, |_| {});
    let (received, len) = server.join().unwrap();
    eprintln!(
        "fake TCP through NAT: {} MiB in {:.2} s = {:.0} Mbit/s; client {stats:?}",
        bytes >> 20,
        elapsed.as_secs_f64(),
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    assert_eq!(len, bytes);
    assert_eq!(sent, received, "SHA-256 intact");
    assert_eq!(
        topo.invalid_packets(),
        0,
        "conntrack found no INVALID segment"
    );
    assert_eq!(stats.resets + stats.fins + stats.idle_timeouts, 0);
    assert_eq!(stats.established, 1);
}

#[test]
fn stream_survives_a_router_rst() {
    let Some(topo) = topology_or_skip("stream_survives_a_router_rst") else {
        return;
    };
    let topo = Arc::new(topo);
    let bytes = 16 << 20;
    let server = server(&topo, Ipv4Addr::UNSPECIFIED.into());
    let (sent, _elapsed, stats) = client(&topo, topo.server_ip.into(), bytes, |t| {
        // For 300 ms the router answers the client's data with RSTs.
        t.router_nft(
            "table ip gfreject {\n\
               chain reject_data { type filter hook forward priority filter - 1; policy accept;\n\
                 tcp dport 10001 tcp flags & (syn | rst) == 0 reject with tcp reset\n\
               }\n\
             }\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        t.router(&["nft", "delete", "table", "ip", "gfreject"])
            .unwrap();
    });
    let (received, len) = server.join().unwrap();
    assert!(
        stats.resets >= 1,
        "the router's RST reached the client: {stats:?}"
    );
    assert!(
        stats.established >= 2,
        "the client opened a new flow: {stats:?}"
    );
    assert_eq!(len, bytes);
    assert_eq!(
        sent, received,
        "the stream continued intact over the new flow"
    );
}

/// The same transfer over IPv6, through the router's NAT66 under the same strict conntrack:
/// SHA-256 intact, no INVALID packet, no RST from either kernel while both carriers run (the
/// router forwards none), the carriers' `ip6` rule tables present while they run and gone when
/// they are dropped. (Once one carrier is gone, its kernel may answer the other's last
/// segments with a RST: that is the kernel's own TCP doing its job, and not counted.)
#[test]
fn gaptun_stream_over_fake_tcp_over_ipv6_is_intact_and_leaves_no_rules() {
    let test = "gaptun_stream_over_fake_tcp_over_ipv6_is_intact_and_leaves_no_rules";
    let Some(topo) = ipv6_topology_or_skip(test) else {
        return;
    };
    let topo = Arc::new(topo);
    let bytes = mib().min(16) << 20;
    let server = server(&topo, Ipv6Addr::UNSPECIFIED.into());
    let tables = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&tables);
    let rsts = Arc::new(std::sync::Mutex::new(None));
    let rsts_seen = Arc::clone(&rsts);
    let during = move |t: &Topology| {
        for ns in [&t.client, &t.server] {
            let listing = t.exec(ns, &["nft", "list", "tables"]).unwrap_or_default();
            seen.lock().unwrap().push(listing);
        }
    };
    let after = move |t: &Topology| *rsts_seen.lock().unwrap() = Some(t.rst6_packets());
    let (sent, elapsed, stats) = client_then(&topo, topo.server_ip6.into(), bytes, during, after);
    let (received, len) = server.join().unwrap();
    eprintln!(
        "fake TCP over IPv6 through NAT66: {} MiB in {:.2} s = {:.0} Mbit/s; client {stats:?}",
        bytes >> 20,
        elapsed.as_secs_f64(),
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    assert_eq!(len, bytes);
    assert_eq!(sent, received, "SHA-256 intact");
    assert_eq!(stats.established, 1, "one flow: {stats:?}");
    assert_eq!(stats.resets + stats.fins + stats.idle_timeouts, 0);
    assert!(stats.data_sent > 0 && stats.data_received > 0);
    assert_eq!(
        topo.invalid6_packets(),
        0,
        "conntrack found no INVALID segment"
    );
    assert_eq!(
        *rsts.lock().unwrap(),
        Some(0),
        "no kernel RST crossed the router"
    );
    let running = tables.lock().unwrap().clone();
    assert_eq!(running.len(), 2);
    for listing in &running {
        assert!(
            listing.contains("table ip6 gaptun_ft_"),
            "an ip6 rule table while running: {listing}"
        );
    }
    for ns in [&topo.client, &topo.server] {
        let listing = topo
            .exec(ns, &["nft", "list", "tables"])
            .unwrap_or_default();
        assert!(
            !listing.contains("gaptun_ft_"),
            "left behind in {ns}: {listing}"
        );
    }
}
