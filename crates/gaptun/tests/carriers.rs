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
