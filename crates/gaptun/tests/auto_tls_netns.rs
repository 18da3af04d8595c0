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

/// The ports of the test of the default carrier: the server's TLS and QUIC carriers are on
/// ports of their own (not 443), which the client only learns from the server's offer.
const OFFER_PORTS: Ports<'static> = Ports {
    tunnel: "29940",
    sink: 39041,
    forward: 39042,
};
const OFFER_TLS_PORT: u16 = 29943;
const OFFER_QUIC_PORT: u16 = 29944;

/// A client with no `--carrier` (nor `--tls-server`): it goes by the server's offer.
fn default_client(topo: &Topology, dir: &std::path::Path, name: &str) -> common::Daemon {
    let server_addr = format!("{}:{}", topo.server_ip, OFFER_PORTS.tunnel);
    let forward = format!(
        "tcp:127.0.0.1:{}=127.0.0.1:{}",
        OFFER_PORTS.forward, OFFER_PORTS.sink
    );
    common::Daemon::spawn_in_netns(
        &topo.client,
        dir,
        name,
        &[
            "client",
            "--server",
            &server_addr,
            "--key",
            common::KEY,
            "--no-socks",
            "--forward",
            &forward,
        ],
    )
}

/// Drops at the router every UDP packet and the fake-TCP port: of the server's carriers only
/// TLS gets through.
fn only_tls_gets_through(topo: &Topology) {
    topo.router_nft(&format!(
        "table ip gfoffer {{\n\
           chain block {{ type filter hook forward priority filter - 1; policy accept;\n\
             meta l4proto udp drop\n\
             tcp dport {} drop\n\
           }}\n\
         }}\n",
        OFFER_PORTS.tunnel
    ))
    .unwrap();
}

#[test]
fn the_default_client_follows_the_offer_to_tls_and_remembers_it() {
    let test = "the_default_client_follows_the_offer_to_tls_and_remembers_it";
    let Some(topo) = topology_or_skip(test) else {
        return;
    };
    let topo = std::sync::Arc::new(topo);
    let dir = scratch("default-offer");
    let tls_listen = format!("0.0.0.0:{OFFER_TLS_PORT}");
    let quic_listen = format!("0.0.0.0:{OFFER_QUIC_PORT}");
    let _server = common::Daemon::spawn_in_netns(
        &topo.server,
        &dir,
        "server",
        &[
            "server",
            "--listen",
            &format!("0.0.0.0:{}", OFFER_PORTS.tunnel),
            "--key",
            common::KEY,
            "--allow-private",
            "--carrier",
            "all",
            "--tls-listen",
            &tls_listen,
            "--quic-listen",
            &quic_listen,
        ],
    );
    let client = default_client(&topo, &dir, "client");
    // Connected over UDP, it learns the offer and says so once; the TLS carrier at the
    // offered port joins as a standby path.
    assert!(
        wait_for_log(
            &client,
            &["carrier auto in use", "tls 29943", "carriers=udp,tls"],
            Duration::from_secs(10)
        ),
        "client log:\n{}",
        client.stderr()
    );
    assert!(
        wait_for_log(
            &client,
            &["carrier ready", "carrier=\"tls\""],
            Duration::from_secs(10)
        ),
        "client log:\n{}",
        client.stderr()
    );
    let stats = common::stats(&client.control);
    assert_eq!(
        stats["offered_carriers"],
        format!("udp 29940, faketcp 29940, tls {OFFER_TLS_PORT}, quic {OFFER_QUIC_PORT}"),
        "{stats}"
    );
    assert_eq!(stats["connections"][0]["carrier"], "udp", "{stats}");

    // A transfer started over UDP goes on over TLS when the router drops UDP mid-way.
    let len = 32 << 20;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sink = netns_flow::sink(&topo, OFFER_PORTS.sink, std::sync::Arc::clone(&progress));
    let sender = netns_flow::send_through_forward(
        &topo,
        OFFER_PORTS.forward,
        len,
        11,
        Duration::from_secs(120),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < len / 4 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    only_tls_gets_through(&topo);
    let sent = sender.join().unwrap();
    let received = sink.join().unwrap();
    assert_eq!(received.len, len, "client log:\n{}", client.stderr());
    assert_eq!(sent, received.hash, "SHA-256 intact across the move to TLS");
    assert!(
        wait_for_log(
            &client,
            &["carrier switch", "from=udp", "to=tls"],
            Duration::from_secs(1)
        ),
        "client log:\n{}",
        client.stderr()
    );
    let log = client.stderr();
    assert!(
        !log.contains(":443"),
        "the client tried port 443, which nothing offered:\n{log}"
    );
    drop(client);

    // Restarted with UDP still dropped: the remembered offer finds TLS at once.
    let started = Instant::now();
    let client = default_client(&topo, &dir, "client2");
    let to = format!("to=tls {}:{OFFER_TLS_PORT}", topo.server_ip);
    assert!(
        wait_for_log(&client, &["carrier chosen", &to], Duration::from_secs(10)),
        "no connection over TLS; client log:\n{}",
        client.stderr()
    );
    let took = started.elapsed();
    eprintln!("restarted default client, UDP blocked: connected over TLS {took:?} after start");
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    transfer(
        &topo,
        &client,
        OFFER_PORTS,
        4 << 20,
        Duration::from_secs(60),
    );
    assert_eq!(
        common::stats(&client.control)["connections"][0]["carrier"],
        "tls"
    );
}
