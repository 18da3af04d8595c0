//! The daemons and the data path of the tests through the fake-TCP tests' NAT router (client
//! namespace → router → server namespace): a server, a client forwarding a local TCP port to a
//! sink in the server namespace, and a SHA-256-checked transfer through that forward. Included
//! (with `#[path]`) by the tests that also include the namespaces as `netns`.
// Each test uses its own part of these.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, Daemon, KEY};
use crate::netns::Topology;

/// The ports of one test: the tunnel's (one port or a range `A-B`), the sink's in the server
/// namespace and the client's forward to it. Tests that may run at once use different ones.
#[derive(Debug, Clone, Copy)]
pub struct Ports<'a> {
    pub tunnel: &'a str,
    pub sink: u16,
    pub forward: u16,
}

/// The server on `ports.tunnel` with `carrier`.
pub fn server(topo: &Topology, dir: &Path, ports: Ports<'_>, carrier: &str) -> Daemon {
    server_at(topo, dir, &format!("0.0.0.0:{}", ports.tunnel), carrier)
}

/// The server listening on `listen` (an IPv6 address in brackets) with `carrier`.
pub fn server_at(topo: &Topology, dir: &Path, listen: &str, carrier: &str) -> Daemon {
    Daemon::spawn_in_netns(
        &topo.server,
        dir,
        "server",
        &[
            "server",
            "--listen",
            listen,
            "--key",
            KEY,
            "--allow-private",
            "--carrier",
            carrier,
        ],
    )
}

/// The client with `carrier`, forwarding `ports.forward` to the sink's port.
pub fn client(topo: &Topology, dir: &Path, ports: Ports<'_>, carrier: &str) -> Daemon {
    let server_addr = format!("{}:{}", topo.server_ip, ports.tunnel);
    client_at(topo, dir, &server_addr, ports, carrier)
}

/// The client connecting to `server_addr` (an IPv6 address in brackets) with `carrier`,
/// forwarding `ports.forward` to the sink's port.
pub fn client_at(
    topo: &Topology,
    dir: &Path,
    server_addr: &str,
    ports: Ports<'_>,
    carrier: &str,
) -> Daemon {
    let forward = format!("tcp:127.0.0.1:{}=127.0.0.1:{}", ports.forward, ports.sink);
    Daemon::spawn_in_netns(
        &topo.client,
        dir,
        "client",
        &[
            "client",
            "--server",
            server_addr,
            "--key",
            KEY,
            "--no-socks",
            "--forward",
            &forward,
            "--carrier",
            carrier,
        ],
    )
}

/// What the sink received: SHA-256, length, and (time, bytes so far) after each read.
pub struct Received {
    pub hash: [u8; 32],
    pub len: usize,
    pub samples: Vec<(Instant, usize)>,
}

/// A TCP sink on `port` in the server namespace for one connection; `progress` follows its
/// byte count. Returns once it listens.
pub fn sink(
    topo: &Topology,
    port: u16,
    progress: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Received> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = Topology::spawn_in(&topo.server, move || async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut hash = Sha256::new();
        let mut len = 0;
        let mut samples = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            len += n;
            progress.store(len, Ordering::Relaxed);
            samples.push((Instant::now(), len));
        }
        Received {
            hash: hash.finalize().into(),
            len,
            samples,
        }
    });
    ready_rx.recv().unwrap();
    handle
}

/// Sends `len` bytes of payload `seed` to `port` from the client namespace (in a thread),
/// within `limit`; returns their SHA-256.
pub fn send_through_forward(
    topo: &Topology,
    port: u16,
    len: usize,
    seed: u64,
    limit: Duration,
) -> std::thread::JoinHandle<[u8; 32]> {
    Topology::spawn_in(&topo.client, move || async move {
        let data = common::payload(len, seed);
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::timeout(limit, conn.write_all(&data))
            .await
            .unwrap_or_else(|_| panic!("sent within {limit:?}"))
            .unwrap();
        conn.shutdown().await.unwrap();
        Sha256::digest(&data).into()
    })
}

/// Moves `len` bytes through the client's forward to a sink (within `limit`) and checks length
/// and SHA-256.
pub fn transfer(
    topo: &Topology,
    client: &Daemon,
    ports: Ports<'_>,
    len: usize,
    limit: Duration,
) -> Received {
    let sink = sink(topo, ports.sink, Arc::default());
    let sent = send_through_forward(topo, ports.forward, len, 11, limit)
        .join()
        .unwrap();
    let received = sink.join().unwrap();
    assert_eq!(received.len, len, "client log:\n{}", client.stderr());
    assert_eq!(sent, received.hash, "SHA-256 intact");
    received
}

/// Waits (bounded) until the daemon's log has a line with every one of `words`.
pub fn wait_for_log(daemon: &Daemon, words: &[&str], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if daemon
            .stderr()
            .lines()
            .any(|l| words.iter().all(|w| l.contains(w)))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Counts what the router forwards by protocol, in its `gfcount` table: counters
/// `udp_packets` and `tcp_packets`.
pub fn count_by_protocol(topo: &Topology) {
    topo.router_nft(
        "table ip gfcount {\n\
           counter udp_packets {}\n\
           counter tcp_packets {}\n\
           chain tally { type filter hook forward priority filter - 2; policy accept;\n\
             meta l4proto udp counter name udp_packets\n\
             meta l4proto tcp counter name tcp_packets\n\
           }\n\
         }\n",
    )
    .unwrap();
}
