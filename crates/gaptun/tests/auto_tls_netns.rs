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
#[path = "common/netns_flow.rs"]
mod netns_flow;

use std::time::{Duration, Instant};

use common::scratch;
use netns::{Topology, topology_or_skip};
use netns_flow::{Ports, client, server, transfer, wait_for_log};

/// The server is on UDP and fake TCP (`tunnel`), TLS (TCP 443) and QUIC (UDP 443); the
/// client's default list for `--carrier auto` has udp, faketcp as root, quic and tls, the last
/// two on the server's port 443.
const PORTS: Ports<'static> = Ports {
    tunnel: "29920",
    sink: 39021,
    forward: 39022,
};

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

/// Starts server and client with only `rule` passing the router; the client must connect over
/// `carrier` (the `kind remote` of its log line) within 3 s and carry 4 MiB intact.
fn connects_over(test: &str, rule: &str, carrier: &str) {
    let Some(topo) = topology_or_skip(test) else {
        return;
    };
    let dir = scratch(test);
    only(&topo, rule);
    let _server = server(&topo, &dir, PORTS, "all");
    let started = Instant::now();
    let client = client(&topo, &dir, PORTS, "auto");
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
    transfer(&topo, &client, PORTS, 4 << 20, Duration::from_secs(60));
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
