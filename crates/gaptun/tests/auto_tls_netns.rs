//! `--carrier auto` where only one web port gets through, through the NAT router of the
//! fake-TCP tests (client namespace → router → server namespace, the server on every carrier
//! with `--carrier all`): with everything but TCP 443 dropped at the router the client starts
//! over TLS, and with everything but UDP 443 dropped over QUIC; a transfer through a forward
//! keeps its SHA-256, and the time from the client's start to the connection is printed and
//! bounded. The TLS and QUIC carriers connect in the background while the Initial goes out on
//! UDP and fake TCP, so the blocked carriers cost no wait. Needs root; skips otherwise.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../gaptun-faketcp/tests/common/mod.rs"]
mod netns;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, KEY, scratch};
use netns::{Topology, topology_or_skip};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TUNNEL_PORT: u16 = 29920;
const SINK_PORT: u16 = 39021;
const FORWARD_PORT: u16 = 39022;

/// The server on UDP and fake TCP (`TUNNEL_PORT`), TLS (TCP 443) and QUIC (UDP 443).
fn server(topo: &Topology, dir: &Path) -> Daemon {
    let listen = format!("0.0.0.0:{TUNNEL_PORT}");
    Daemon::spawn_in_netns(
        &topo.server,
        dir,
        "server",
        &[
            "server",
            "--listen",
            &listen,
            "--key",
            KEY,
            "--allow-private",
            "--carrier",
            "all",
        ],
    )
}

/// The client with `--carrier auto` and its default list (udp, faketcp as root, quic, tls,
/// the last two on the server's port 443), forwarding a local TCP port to the sink's.
fn client(topo: &Topology, dir: &Path) -> Daemon {
    let server_addr = format!("{}:{TUNNEL_PORT}", topo.server_ip);
    let forward = format!("tcp:127.0.0.1:{FORWARD_PORT}=127.0.0.1:{SINK_PORT}");
    Daemon::spawn_in_netns(
        &topo.client,
        dir,
        "client",
        &[
            "client",
            "--server",
            &server_addr,
            "--key",
            KEY,
            "--no-socks",
            "--forward",
            &forward,
            "--carrier",
            "auto",
        ],
    )
}

/// Lets through the router only what `rule` accepts (and the answers to it).
fn only(topo: &Topology, rule: &str) {
    topo.router_nft(&format!(
        "table ip gfonly {{\n\
           chain only {{ type filter hook forward priority filter - 1; policy drop;\n\
             ct state established,related accept\n\
             {rule} accept\n\
           }}\n\
         }}\n"
    ))
    .unwrap();
}

/// Waits (bounded) until the daemon's log has a line with every one of `words`.
fn wait_for_log(daemon: &Daemon, words: &[&str], limit: Duration) -> bool {
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

/// Seconds since midnight of the first log line containing `words`, from its timestamp
/// (`2026-01-01T12:34:56.789012Z ...`).
fn seconds_at(log: &str, words: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(words))?;
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut parts = time.trim_end_matches('Z').split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Moves `len` bytes through the client's forward to a sink in the server namespace; checks
/// length and SHA-256.
fn transfer(topo: &Topology, client: &Daemon, len: usize) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = Topology::spawn_in(&topo.server, move || async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", SINK_PORT))
            .await
            .unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut hash = Sha256::new();
        let mut got = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            got += n;
        }
        (got, <[u8; 32]>::from(hash.finalize()))
    });
    ready_rx.recv().unwrap();
    let sent = Topology::spawn_in(&topo.client, move || async move {
        let data = common::payload(len, 13);
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", FORWARD_PORT))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), conn.write_all(&data))
            .await
            .expect("sent within 60 s")
            .unwrap();
        conn.shutdown().await.unwrap();
        <[u8; 32]>::from(Sha256::digest(&data))
    })
    .join()
    .unwrap();
    let (got, hash) = sink.join().unwrap();
    assert_eq!(got, len, "client log:\n{}", client.stderr());
    assert_eq!(hash, sent, "SHA-256 intact");
}

/// Starts server and client with only `rule` passing the router; the client must connect over
/// `carrier` (the `kind remote` of its log line) within 3 s and carry 4 MiB intact.
fn connects_over(test: &str, rule: &str, carrier: &str) {
    let Some(topo) = topology_or_skip(test) else {
        return;
    };
    let dir = scratch(test);
    only(&topo, rule);
    let _server = server(&topo, &dir);
    let started = Instant::now();
    let client = client(&topo, &dir);
    let to = format!("to={carrier} {}:443", topo.server_ip);
    assert!(
        wait_for_log(&client, &["carrier chosen", &to], Duration::from_secs(10)),
        "no connection over {carrier}; client log:\n{}",
        client.stderr()
    );
    let took = started.elapsed();
    let log = client.stderr();
    let inside = seconds_at(&log, "connecting")
        .zip(seconds_at(&log, "carrier chosen"))
        .map(|(from, to)| to - from);
    eprintln!(
        "--carrier auto, only {rule} open: connected over {carrier} {took:?} after the process \
         started, {inside:?} s after its `connecting` line"
    );
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    transfer(&topo, &client, 4 << 20);
    let stats = common::stats(&client.control);
    let conn = &stats["connections"][0];
    assert_eq!(conn["carrier"], carrier, "ctl stats: {conn}");
}

#[test]
fn auto_connects_over_tls_when_only_tcp_443_is_open() {
    connects_over(
        "auto_connects_over_tls_when_only_tcp_443_is_open",
        "tcp dport 443",
        "tls",
    );
}

#[test]
fn auto_connects_over_quic_when_only_udp_443_is_open() {
    connects_over(
        "auto_connects_over_quic_when_only_udp_443_is_open",
        "udp dport 443",
        "quic",
    );
}
