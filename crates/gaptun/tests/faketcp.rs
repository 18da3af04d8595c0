//! The daemons with `--carrier`: fake TCP through a NAT router with strict conntrack (the
//! namespaces of gaptun-faketcp's tests), `--carrier all` with UDP blocked at the router, and
//! the one-line error without the privilege. Needs root; skips with a printed reason otherwise.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../gaptun-faketcp/tests/common/mod.rs"]
mod netns;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, KEY, scratch};
use netns::{Topology, topology_or_skip};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TUNNEL_PORT: u16 = 29900;
const SINK_PORT: u16 = 39001;
const FORWARD_PORT: u16 = 39002;

/// A TCP sink in the server namespace: returns the SHA-256 and length of one connection.
fn sink(topo: &Topology) -> std::thread::JoinHandle<([u8; 32], usize)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = Topology::spawn_in(&topo.server, move || async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", SINK_PORT))
            .await
            .unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut hash = Sha256::new();
        let mut total = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        (hash.finalize().into(), total)
    });
    ready_rx.recv().unwrap();
    handle
}

/// Sends `len` bytes through the client's forward from the client namespace.
fn send_through_forward(topo: &Topology, len: usize) -> [u8; 32] {
    Topology::spawn_in(&topo.client, move || async move {
        let data = common::payload(len, 7);
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", FORWARD_PORT))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), conn.write_all(&data))
            .await
            .expect("sent within 60 s")
            .unwrap();
        conn.shutdown().await.unwrap();
        Sha256::digest(&data).into()
    })
    .join()
    .unwrap()
}

/// Starts server and client with `carrier`, the client forwarding a local TCP port to the
/// sink's.
fn daemons(topo: &Topology, carrier: &str, dir: &Path) -> (Daemon, Daemon) {
    daemons_on(topo, carrier, dir, &TUNNEL_PORT.to_string())
}

/// As [`daemons`], the server listening on `ports` (one port or a range `A-B`) and the client
/// spreading over them.
fn daemons_on(topo: &Topology, carrier: &str, dir: &Path, ports: &str) -> (Daemon, Daemon) {
    let listen = format!("0.0.0.0:{ports}");
    let server = Daemon::spawn_in_netns(
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
            carrier,
        ],
    );
    let server_addr = format!("{}:{ports}", topo.server_ip);
    let forward = format!("tcp:127.0.0.1:{FORWARD_PORT}=127.0.0.1:{SINK_PORT}");
    let client = Daemon::spawn_in_netns(
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
            carrier,
        ],
    );
    (server, client)
}

/// Moves 8 MiB through the client's forward to the sink and checks it.
fn transfer(topo: &Topology, client: &Daemon) {
    transfer_len(topo, client, 8 << 20);
}

/// Moves `len` bytes through the client's forward to the sink and checks them.
fn transfer_len(topo: &Topology, client: &Daemon, len: usize) {
    let sink = sink(topo);
    let sent = send_through_forward(topo, len);
    let (received, got) = sink.join().unwrap();
    assert_eq!(got, len, "client log:\n{}", client.stderr());
    assert_eq!(sent, received, "SHA-256 intact");
}

/// Packets of a named counter in the router's `gfcount` table.
fn counted(topo: &Topology, name: &str) -> u64 {
    topo.router_counter("gfcount", name, "packets").unwrap_or(0)
}

#[test]
fn faketcp_daemons_through_strict_nat() {
    let Some(topo) = topology_or_skip("faketcp_daemons_through_strict_nat") else {
        return;
    };
    let topo = Arc::new(topo);
    let dir = scratch("faketcp-nat");
    let (mut server, mut client) = daemons(&topo, "faketcp", &dir);
    transfer(&topo, &client);
    assert_eq!(
        topo.invalid_packets(),
        0,
        "conntrack found no INVALID segment"
    );
    let tables = topo.exec(&topo.server, &["nft", "list", "tables"]).unwrap();
    assert!(
        tables.contains("gaptun_ft_"),
        "server's RST rules: {tables}"
    );
    // SIGTERM: the daemons remove their rules on the way out.
    client.terminate();
    server.terminate();
    for ns in [&topo.client, &topo.server] {
        let tables = topo.exec(ns, &["nft", "list", "tables"]).unwrap();
        assert!(
            !tables.contains("gaptun_ft_"),
            "rules left in {ns}: {tables}"
        );
    }
}

/// `--carrier all`: the client spreads its packets over a UDP and a fake-TCP path at once
/// (each a share by what it delivers), so both carry a fair part of a transfer; when the
/// router starts dropping UDP, transfers go on over fake TCP.
#[test]
fn carrier_all_keeps_working_with_udp_blocked() {
    let Some(topo) = topology_or_skip("carrier_all_keeps_working_with_udp_blocked") else {
        return;
    };
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
    let topo = Arc::new(topo);
    let dir = scratch("faketcp-all");
    let (_server, client) = daemons(&topo, "all", &dir);
    // Long enough (a few seconds) for a path lost while the server validated it to be retried.
    transfer_len(&topo, &client, 128 << 20);
    let (udp, tcp) = (counted(&topo, "udp_packets"), counted(&topo, "tcp_packets"));
    eprintln!("--carrier all through the router: {udp} UDP and {tcp} TCP packets");
    // What the client sent on each carrier, by `ctl stats`.
    let stats = common::stats(&client.control);
    let paths = stats["connections"][0]["paths"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sent_on = |carrier: &str| -> u64 {
        paths
            .iter()
            .filter(|p| p["carrier"] == carrier)
            .filter_map(|p| p["bytes_sent"].as_u64())
            .sum()
    };
    let (on_udp, on_tcp) = (sent_on("udp"), sent_on("faketcp"));
    let total = (on_udp + on_tcp).max(1);
    eprintln!("client bytes sent: {on_udp} on UDP, {on_tcp} on fake TCP");
    assert!(
        on_udp * 10 > total && on_tcp * 10 > total,
        "both carriers carry more than 10 %: {on_udp} UDP, {on_tcp} fake TCP: {paths:?}"
    );

    topo.router_nft(
        "table ip gfblock {\n\
           chain block_udp { type filter hook forward priority filter - 1; policy accept;\n\
             meta l4proto udp drop\n\
           }\n\
         }\n",
    )
    .unwrap();
    transfer(&topo, &client);
    assert_eq!(topo.invalid_packets(), 0);
}

/// `--carrier faketcp` over a range of ten server ports, through the strict NAT router with
/// two of the ports dropped both ways: the client gives those up and an 8 MiB transfer
/// arrives intact (SHA-256) over the other eight, with no INVALID segment at the router.
#[test]
fn faketcp_over_a_port_range_with_two_ports_dropped() {
    let Some(topo) = topology_or_skip("faketcp_over_a_port_range_with_two_ports_dropped") else {
        return;
    };
    const FIRST: u16 = 29901;
    const LAST: u16 = 29910;
    const DEAD: [u16; 2] = [29903, 29907];
    let dead = DEAD.map(|p| p.to_string()).join(", ");
    topo.router_nft(&format!(
        "table ip gfdead {{\n\
           counter dropped {{}}\n\
           chain dead_ports {{ type filter hook forward priority filter - 1; policy accept;\n\
             tcp dport {{ {dead} }} counter name dropped drop\n\
             tcp sport {{ {dead} }} counter name dropped drop\n\
           }}\n\
         }}\n"
    ))
    .unwrap();
    let topo = Arc::new(topo);
    let dir = scratch("faketcp-range");
    let (_server, client) = daemons_on(&topo, "faketcp", &dir, &format!("{FIRST}-{LAST}"));
    transfer(&topo, &client);
    let dropped = topo
        .router_counter("gfdead", "dropped", "packets")
        .unwrap_or(0);
    assert!(dropped > 0, "the client tried the dead ports too");
    assert_eq!(
        topo.invalid_packets(),
        0,
        "conntrack found no INVALID segment"
    );
    // One connection throughout: the client never had to reconnect.
    let log = client.stderr();
    assert_eq!(
        log.matches("connection lost").count(),
        0,
        "client log:\n{log}"
    );
}

#[test]
fn faketcp_without_privilege_is_one_clear_line() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP faketcp_without_privilege_is_one_clear_line: needs root to drop it");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps",
            "-all",
        ])
        .arg(env!("CARGO_BIN_EXE_gaptun"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:29931",
            "--key",
            KEY,
            "--carrier",
            "faketcp",
        ])
        .args(["--control", "/tmp/gaptun-faketcp-noprivilege.sock"])
        .env_remove("GAPTUN_KEY")
        .env("STATE_DIRECTORY", std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("fake TCP needs root or CAP_NET_RAW"),
        "stderr: {stderr}"
    );
}
