//! The daemons with `--carrier`: fake TCP through a NAT router with strict conntrack (the
//! namespaces of gaptun-faketcp's tests), `--carrier all` with UDP blocked at the router, and
//! the one-line error without the privilege. Needs root; skips with a printed reason otherwise.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../gaptun-faketcp/tests/common/mod.rs"]
mod netns;
#[path = "common/netns_flow.rs"]
mod netns_flow;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, KEY, scratch};
use netns::{Topology, ipv6_topology_or_skip, topology_or_skip};
use netns_flow::{Ports, client, client_at, count_by_protocol, server, server_at};

const TUNNEL_PORT: u16 = 29900;
const PORTS: Ports<'static> = Ports {
    tunnel: "29900",
    sink: 39001,
    forward: 39002,
};

/// Starts server and client with `carrier`, the client forwarding a local TCP port to the
/// sink's.
fn daemons(topo: &Topology, carrier: &str, dir: &Path) -> (Daemon, Daemon) {
    daemons_on(topo, carrier, dir, &TUNNEL_PORT.to_string())
}

/// As [`daemons`], the server listening on `ports` (one port or a range `A-B`) and the client
/// spreading over them.
fn daemons_on(topo: &Topology, carrier: &str, dir: &Path, ports: &str) -> (Daemon, Daemon) {
    let ports = Ports {
        tunnel: ports,
        ..PORTS
    };
    let server = server(topo, dir, ports, carrier);
    (server, client(topo, dir, ports, carrier))
}

/// Moves 8 MiB through the client's forward to the sink and checks it.
fn transfer(topo: &Topology, client: &Daemon) {
    transfer_len(topo, client, 8 << 20);
}

/// Moves `len` bytes through the client's forward to the sink and checks them.
fn transfer_len(topo: &Topology, client: &Daemon, len: usize) {
    netns_flow::transfer(topo, client, PORTS, len, Duration::from_secs(60));
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
    rule_tables_present_then_gone(&topo, &[&topo.server], "", &mut server, &mut client);
}

/// The same over IPv6: the server listens on `[::]`, the client connects to the server's IPv6
/// address through the router's NAT66 (strict conntrack). The data arrives intact, no segment
/// is INVALID, no kernel RST crosses the router, and both `ip6` rule tables go at exit.
#[test]
fn faketcp_daemons_over_ipv6_through_strict_nat66() {
    let Some(topo) = ipv6_topology_or_skip("faketcp_daemons_over_ipv6_through_strict_nat66") else {
        return;
    };
    let topo = Arc::new(topo);
    let dir = scratch("faketcp-nat66");
    let listen = format!("[::]:{TUNNEL_PORT}");
    let server_addr = format!("[{}]:{TUNNEL_PORT}", topo.server_ip6);
    let mut server = server_at(&topo, &dir, &listen, "faketcp");
    let mut client = client_at(&topo, &dir, &server_addr, PORTS, "faketcp");
    transfer(&topo, &client);
    assert_eq!(
        topo.invalid6_packets(),
        0,
        "conntrack found no INVALID segment"
    );
    assert_eq!(topo.rst6_packets(), 0, "no kernel RST crossed the router");
    rule_tables_present_then_gone(
        &topo,
        &[&topo.client, &topo.server],
        "table ip6 ",
        &mut server,
        &mut client,
    );
}

/// The fake-TCP carrier's RST rules: a `gaptun_ft_` table (named after `prefix`, e.g.
/// `"table ip6 "` for the IPv6 carrier's, `""` for any) is in each of `running_in` while the
/// daemons run, and none is left in either namespace once SIGTERM has stopped them (the
/// daemons remove their rules on the way out).
fn rule_tables_present_then_gone(
    topo: &Topology,
    running_in: &[&str],
    prefix: &str,
    server: &mut Daemon,
    client: &mut Daemon,
) {
    let wanted = format!("{prefix}gaptun_ft_");
    for ns in running_in {
        let tables = topo.exec(ns, &["nft", "list", "tables"]).unwrap();
        assert!(
            tables.contains(&wanted),
            "RST rules ({wanted}) in {ns}: {tables}"
        );
    }
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
    count_by_protocol(&topo);
    let topo = Arc::new(topo);
    let dir = scratch("faketcp-all");
    let (_server, client) = daemons(&topo, "all", &dir);
    // What the client sent on each carrier so far, by `ctl stats`.
    let sent = || -> (u64, u64, serde_json::Value) {
        let stats = common::stats(&client.control);
        let paths = stats["connections"][0]["paths"].clone();
        let on = |carrier: &str| -> u64 {
            paths
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["carrier"] == carrier)
                .filter_map(|p| p["bytes_sent"].as_u64())
                .sum()
        };
        (on("udp"), on("faketcp"), paths)
    };
    // The server takes a packet from a new path only once that path answered its challenge, so
    // the first packets the client spreads onto its second carrier are dropped, and that path
    // may be given up until its first retry a second later. A warm-up transfer and a pause
    // past that retry; then the steady state is measured.
    transfer(&topo, &client);
    std::thread::sleep(Duration::from_millis(1500));
    let (udp_before, tcp_before, _) = sent();
    transfer_len(&topo, &client, 128 << 20);
    let (udp, tcp) = (counted(&topo, "udp_packets"), counted(&topo, "tcp_packets"));
    eprintln!("--carrier all through the router: {udp} UDP and {tcp} TCP packets");
    let (udp_after, tcp_after, paths) = sent();
    let (on_udp, on_tcp) = (
        udp_after.saturating_sub(udp_before),
        tcp_after.saturating_sub(tcp_before),
    );
    let total = (on_udp + on_tcp).max(1);
    eprintln!("client bytes sent in the 128 MiB: {on_udp} on UDP, {on_tcp} on fake TCP");
    // Both paths deliver alike here, so each gets about half; the share floor alone would keep
    // a live path above a tenth.
    assert!(
        on_udp * 10 > total && on_tcp * 10 > total,
        "both carriers carry more than 10 %: {on_udp} UDP, {on_tcp} fake TCP: {paths}"
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
