//! The daemons on the tls and quic carriers, as processes on loopback: one server (one
//! endpoint) on every carrier at once (`--carrier all`: udp, faketcp, tls, quic); a client on
//! tls, on quic and on udp each moves data through a TCP forward with its SHA-256 intact; curl
//! against the server's TLS port gets a plain 404. `all` includes fake TCP, which needs root
//! and nftables: without them the test says so and skips.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes echoed through each carrier.
const LEN: usize = 4 << 20;

/// Echoes `LEN` bytes through a client's forward at `forward`; checks the SHA-256.
async fn echo_through(forward: SocketAddr) {
    let data = payload(LEN, 7);
    let tcp = connect(forward).await;
    let (mut r, mut w) = tcp.into_split();
    let send = {
        let data = data.clone();
        tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        })
    };
    let mut got = Vec::with_capacity(LEN);
    r.read_to_end(&mut got).await.unwrap();
    send.await.unwrap();
    assert_eq!(got.len(), LEN);
    assert!(sha256(&got) == sha256(&data), "SHA-256 of the echo differs");
}

/// Why fake TCP (so `--carrier all`) cannot run here, if it cannot.
fn faketcp_unavailable() -> Option<String> {
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root".into());
    }
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no nft".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_on_every_carrier_serves_tls_quic_and_udp_clients() {
    if let Some(why) = faketcp_unavailable() {
        eprintln!(
            "SKIPPED: --carrier all includes fake TCP, which needs root and nftables ({why})"
        );
        return;
    }
    bounded(120, async {
        let dir = scratch("carriers");
        let echo = start_echo().await;
        let udp = free_udp_port();
        let tls = free_tcp_port();
        let quic = free_udp_port();
        let tls_listen = format!("127.0.0.1:{tls}");
        let quic_listen = format!("127.0.0.1:{quic}");
        let _server = server(
            &dir,
            "server",
            udp,
            &[
                "--carrier",
                "all",
                "--tls-listen",
                &tls_listen,
                "--quic-listen",
                &quic_listen,
                "--allow",
                "127.0.0.0/8",
            ],
        );
        for (name, port) in [("tls", tls), ("quic", quic), ("udp", udp)] {
            let forward_port = free_tcp_port();
            let forward = format!("tcp:127.0.0.1:{forward_port}={echo}");
            let _client = client(
                &dir,
                name,
                port,
                &["--carrier", name, "--no-socks", "--forward", &forward],
            );
            echo_through(SocketAddr::from(([127, 0, 0, 1], forward_port))).await;
        }
        // A browser-like client on the TLS port: an ordinary 404 page.
        let (code, body, err) = curl(&["-k".into(), format!("https://127.0.0.1:{tls}/")]).await;
        assert_eq!(code, Some(0), "curl failed: {err}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("404 Not Found"), "{body}");
        assert!(!body.to_lowercase().contains("gaptun"));
    })
    .await;
}

#[test]
fn an_unknown_carrier_names_the_choices() {
    let out = run(&[
        "client",
        "--server",
        "127.0.0.1:443",
        "--key",
        KEY,
        "--carrier",
        "tls,quic",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for choice in ["udp", "faketcp", "tls", "quic", "all"] {
        assert!(err.contains(choice), "{err}");
    }
}

/// A client without `--carrier` whose state directory is `state`, forwarding `forward` to
/// `echo` through the server at 127.0.0.1:`port`.
fn default_client(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    forward: &str,
    state: &std::path::Path,
) -> Daemon {
    let control = dir.join(format!("{name}.sock"));
    let log = dir.join(format!("{name}.log"));
    let child = bin()
        .args(client_args(port, &["--no-socks", "--forward", forward]))
        .args(["--control", control.to_str().unwrap()])
        .env("STATE_DIRECTORY", state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        control,
        log,
    };
    d.wait_ready();
    d
}

/// Against a server that offers only UDP (its default), a client without `--carrier` is a
/// UDP client: it stops trying the TLS port a stale remembered offer named, rewrites the
/// offer, and says nothing about `auto`; an unreadable remembered offer is ignored with a
/// warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_client_of_a_udp_server_drops_a_stale_offer() {
    bounded(60, async {
        let dir = scratch("stale-offer");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let echo = start_echo().await;
        let udp = free_udp_port();
        let stale_tls = free_tcp_port();
        let offer_file = state.join(format!("offer-127.0.0.1_{udp}"));
        std::fs::write(&offer_file, format!("udp = {udp}\ntls = {stale_tls}\n")).unwrap();
        let _server = server(&dir, "server", udp, &["--allow", "127.0.0.0/8"]);
        let forward_port = free_tcp_port();
        let forward = format!("tcp:127.0.0.1:{forward_port}={echo}");
        let client = default_client(&dir, "client", udp, &forward, &state);
        echo_through(SocketAddr::from(([127, 0, 0, 1], forward_port))).await;
        let log = client.stderr();
        assert!(
            log.contains("no longer offered by the server") && log.contains(&stale_tls.to_string()),
            "{log}"
        );
        assert!(!log.contains("carrier auto in use"), "{log}");
        assert_eq!(
            std::fs::read_to_string(&offer_file).unwrap(),
            format!("udp = {udp}\n")
        );
        let stats = stats(&client.control);
        assert_eq!(stats["offered_carriers"], format!("udp {udp}"), "{stats}");
        assert_eq!(stats["connections"][0]["carrier"], "udp", "{stats}");
        drop(client);

        std::fs::write(&offer_file, "tls = not a port\n").unwrap();
        let client = default_client(&dir, "client2", udp, &forward, &state);
        echo_through(SocketAddr::from(([127, 0, 0, 1], forward_port))).await;
        let log = client.stderr();
        assert!(log.contains("remembered carrier offer ignored"), "{log}");
        assert_eq!(
            std::fs::read_to_string(&offer_file).unwrap(),
            format!("udp = {udp}\n"),
            "rewritten from the live offer"
        );
    })
    .await;
}
