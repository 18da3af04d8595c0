//! Bulk data through the daemons, as processes on loopback: curl through SOCKS5 (directly and
//! through a lossy, reordering relay), TCP forwards in both directions and with many streams,
//! a UDP forward, and bounded memory with a client that does not read.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gaptun_runtime::lossy_relay::{LossyConfig, LossyRelay};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// curl through SOCKS5 (`socks5h://`: the name is resolved by the tunnel server) to `http`'s
/// `/file`; checks the SHA-256 of the 64 MiB body.
async fn curl_big_file(socks: SocketAddr, http: SocketAddr, auth: &str) {
    let url = format!("http://localhost:{}/file", http.port());
    let proxy = format!("socks5h://{auth}{socks}");
    let start = Instant::now();
    let (code, body, err) = curl(&["-x".into(), proxy, url]).await;
    assert_eq!(code, Some(0), "curl failed: {err}");
    assert_eq!(body.len(), BIG);
    assert!(
        sha256(&body) == big_body().1,
        "SHA-256 of the download differs"
    );
    eprintln!("64 MiB through SOCKS5 in {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks5h_downloads_64_mib_intact() {
    bounded(60, async {
        let dir = scratch("curl");
        let http = start_http().await;
        let port = free_udp_port();
        // HOST:PORT allow rule: the name as the client gave it.
        let allow = format!("localhost:{}", http.port());
        let _server = server(&dir, "server", port, &["--allow", &allow]);
        let socks = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let _client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        curl_big_file(socks, http, "").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_lossy_reordering_relay_downloads_64_mib_intact() {
    bounded(90, async {
        let dir = scratch("lossy");
        let http = start_http().await;
        let port = free_udp_port();
        // CIDR allow rule.
        let server = server(&dir, "server", port, &["--allow", "127.0.0.0/8"]);
        let relay = LossyRelay::spawn(LossyConfig {
            loss: 0.05,
            delay: Duration::from_millis(1),
            reorder: 0.05,
            reorder_delay: Duration::from_millis(3),
            seed: 5,
            ..LossyConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                SocketAddr::from(([127, 0, 0, 1], port)),
            )
        })
        .await
        .unwrap();
        let socks = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let client = client(
            &dir,
            "client",
            relay.local_addr().port(),
            &["--socks", &socks.to_string()],
        );
        curl_big_file(socks, http, "").await;
        let (forwarded, dropped) = relay.counts();
        assert!(
            dropped * 30 > forwarded,
            "about 5 % lost: {dropped}/{forwarded}"
        );
        assert!(relay.reordered() > 0);
        // The loss shows in the statistics of both ends.
        let s = stats(&server.control);
        let c = &s["connections"][0];
        assert!(c["packets_lost"].as_u64().unwrap() > 0, "{s}");
        assert!(c["packets_retransmitted"].as_u64().unwrap() > 0, "{s}");
        assert!(c["loss_percent"].as_f64().unwrap() > 1.0, "{s}");
        let s = stats(&client.control);
        assert!(s["connections"][0]["bytes_received"].as_u64().unwrap() > BIG as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_username_password() {
    bounded(30, async {
        let dir = scratch("auth");
        let http = start_http().await;
        let port = free_udp_port();
        let _server = server(&dir, "server", port, &["--allow-private"]);
        let socks = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let _client = client(
            &dir,
            "client",
            port,
            &[
                "--socks",
                &socks.to_string(),
                "--socks-user",
                "alice",
                "--socks-password",
                "s3cret",
            ],
        );
        let url = format!("http://127.0.0.1:{}/hello", http.port());
        let ok = curl(&[
            "-x".into(),
            format!("socks5h://alice:s3cret@{socks}"),
            url.clone(),
        ])
        .await;
        assert_eq!(ok.0, Some(0), "{}", ok.2);
        assert_eq!(ok.1, b"hello\n");
        let wrong = curl(&[
            "-x".into(),
            format!("socks5h://alice:wrong@{socks}"),
            url.clone(),
        ])
        .await;
        assert_ne!(wrong.0, Some(0));
        let none = curl(&["-x".into(), format!("socks5h://{socks}"), url]).await;
        assert_ne!(none.0, Some(0));
    })
    .await;
}

/// A TCP service that sends `down` bytes of `payload(.., 2)` while hashing everything it
/// receives until EOF; reports (bytes received, their hash).
async fn start_bulk_peer(
    down: usize,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<(u64, [u8; 32])>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let send = tokio::spawn(async move {
            let data = payload(down, 2);
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
        }
        send.await.unwrap();
        let _ = tx.send((total, hasher.finalize().into()));
    });
    (addr, rx)
}

/// `up` bytes to and `down` bytes from a service behind a TCP forward of a server and client
/// started with `server_extra` and `client_extra`, checked by SHA-256 both ways; returns the
/// daemons (still running) for their statistics.
async fn forward_bulk(
    dir: &Scratch,
    up: usize,
    down: usize,
    server_extra: &[&str],
    client_extra: &[&str],
) -> (Daemon, Daemon) {
    let (target, report) = start_bulk_peer(down).await;
    let port = free_udp_port();
    // IP:PORT allow rule.
    let target_rule = target.to_string();
    let mut args = vec!["--allow", target_rule.as_str()];
    args.extend_from_slice(server_extra);
    let server = server(dir, "server", port, &args);
    let listen = free_tcp_port();
    // A bare port as LISTEN means 127.0.0.1:PORT.
    let spec = format!("{listen}={target}");
    let mut args = vec!["--no-socks", "--forward", spec.as_str()];
    args.extend_from_slice(client_extra);
    let client = client(dir, "client", port, &args);
    let start = Instant::now();
    let tcp = connect(SocketAddr::from(([127, 0, 0, 1], listen))).await;
    let (mut r, mut w) = tcp.into_split();
    let sent = tokio::spawn(async move {
        let data = payload(up, 1);
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        sha256(&data)
    });
    let mut received = Vec::with_capacity(down);
    r.read_to_end(&mut received).await.unwrap();
    let up_hash = sent.await.unwrap();
    assert_eq!(received.len(), down);
    assert!(
        sha256(&received) == sha256(&payload(down, 2)),
        "download corrupted"
    );
    let (got, hash) = report.await.unwrap();
    assert_eq!(got, up as u64);
    assert!(hash == up_hash, "upload corrupted");
    eprintln!(
        "{} MiB up, {} MiB down through a TCP forward in {:?}",
        up >> 20,
        down >> 20,
        start.elapsed()
    );
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_forward_bulk_both_directions() {
    bounded(60, async {
        let dir = scratch("fwd-bulk");
        forward_bulk(&dir, 32 << 20, 32 << 20, &[], &[]).await;
    })
    .await;
}

/// The datagram size (`mtu`) of the only connection of `daemon` and of `other`, once both
/// daemons have published it above `at_least` (their figures are refreshed periodically), or
/// as they are after 5 s.
fn connection_mtus(daemon: &Daemon, other: &Daemon, at_least: u64) -> (u64, u64) {
    let mtu = |d: &Daemon| {
        stats(&d.control)["connections"][0]["mtu"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (a, b) = (mtu(daemon), mtu(other));
        if (a > at_least && b > at_least) || Instant::now() > deadline {
            return (a, b);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_loopback_daemons_send_64k_datagrams() {
    bounded(60, async {
        // No --mtu on either side: by default each asks its route to the other (loopback,
        // MTU 65 536), announces 65 507, and path MTU discovery confirms it (probes grow with
        // the congestion window, so a short transfer may stop a little below).
        let dir = scratch("fwd-route-mtu");
        let (server, client) = forward_bulk(&dir, 16 << 20, 16 << 20, &[], &[]).await;
        let (c, s) = connection_mtus(&client, &server, 60_000);
        let max = u64::from(gaptun_proto::MAX_UDP_PAYLOAD);
        assert!(c > 60_000 && c <= max, "client datagrams of {c} bytes");
        assert!(s > 60_000 && s <= max, "server datagrams of {s} bytes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_mtu_false_keeps_ethernet_sized_datagrams() {
    bounded(60, async {
        // --route-mtu=false on the client: its ceiling is the fixed 1472, which caps the
        // server's route-sized 65 507 too (each side stays within the other's announced size).
        let dir = scratch("fwd-route-mtu-off");
        let (server, client) =
            forward_bulk(&dir, 4 << 20, 4 << 20, &[], &["--route-mtu=false"]).await;
        let (c, s) = connection_mtus(&client, &server, 1471);
        assert_eq!((c, s), (1472, 1472));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_mtu_on_one_side_caps_both() {
    bounded(60, async {
        // --mtu on the client only: it overrides the client's route, and the server's route
        // ceiling (65 507) meets the client's announced 1400, so both send at most 1400.
        let dir = scratch("fwd-mtu-override");
        let (server, client) = forward_bulk(&dir, 4 << 20, 4 << 20, &[], &["--mtu", "1400"]).await;
        let (c, s) = connection_mtus(&client, &server, 1399);
        assert!(c > 1350 && c <= 1400, "client {c}");
        assert!(s > 1350 && s <= 1400, "server {s}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_forward_200_concurrent_streams() {
    bounded(60, async {
        let dir = scratch("fwd-200");
        let echo = start_echo().await;
        let port = free_udp_port();
        let server = server(&dir, "server", port, &["--allow", "127.0.0.1"]);
        let listen = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let spec = format!("tcp:{listen}={echo}");
        let _client = client(&dir, "client", port, &["--no-socks", "--forward", &spec]);
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            tasks.push(tokio::spawn(async move {
                let data = payload(64 * 1024, 100 + i);
                let tcp = connect(listen).await;
                let (mut r, mut w) = tcp.into_split();
                let expected = sha256(&data);
                let writer = async move {
                    w.write_all(&data).await.unwrap();
                    // Keep the stream open until everything came back, so that all 200 are
                    // open at the same time.
                    w
                };
                let reader = async move {
                    let mut got = vec![0u8; 64 * 1024];
                    r.read_exact(&mut got).await.unwrap();
                    got
                };
                let (w, got) = tokio::join!(writer, reader);
                assert!(sha256(&got) == expected, "stream {i} corrupted");
                w
            }));
        }
        let mut writers = Vec::new();
        for t in tasks {
            writers.push(t.await.unwrap());
        }
        // All 200 streams are open at once on the server's single connection.
        let s = stats(&server.control);
        let open = s["connections"][0]["streams_open"].as_u64().unwrap();
        assert!(open >= 200, "{s}");
        drop(writers);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_forward_echo() {
    bounded(30, async {
        let dir = scratch("fwd-udp");
        let echo = start_udp_echo().await;
        let port = free_udp_port();
        let server = server(&dir, "server", port, &["--allow-private"]);
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let spec = format!("udp:{listen}={echo}");
        let client = client(&dir, "client", port, &["--no-socks", "--forward", &spec]);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; 65536];
        // 1400 bytes: a WireGuard packet, more than one tunnel packet at the default MTU.
        let sizes = [1usize, 100, 1200, 1400, 8000, 30000];
        for (i, size) in sizes.into_iter().enumerate() {
            let datagram = payload(size, 300 + i as u64);
            // UDP: resend until the echo comes back.
            let got = loop {
                socket.send_to(&datagram, listen).await.unwrap();
                match tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
                    .await
                {
                    Ok(Ok((n, from))) => {
                        assert_eq!(from, listen);
                        break buf[..n].to_vec();
                    }
                    _ => continue,
                }
            };
            assert_eq!(got, datagram, "datagram of {size} bytes");
        }
        // They went as transport datagrams, not on a stream: both daemons are of this version.
        let c = &stats(&client.control)["connections"][0];
        let s = &stats(&server.control)["connections"][0];
        let sent = c["datagrams_sent"].as_u64().unwrap();
        assert!(sent >= sizes.len() as u64, "{c}");
        assert!(
            s["datagrams_received"].as_u64().unwrap() >= sizes.len() as u64,
            "{s}"
        );
        assert!(
            s["datagrams_sent"].as_u64().unwrap() >= sizes.len() as u64,
            "{s}"
        );
        assert!(c["stream_bytes_sent"].as_u64().unwrap() < 200, "{c}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_keeps_memory_bounded() {
    bounded(60, async {
        let dir = scratch("backpressure");
        // A target that writes as fast as it can, counting what the kernel accepted.
        let written = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let counter = Arc::clone(&written);
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let chunk = vec![7u8; 64 * 1024];
            while tcp.write_all(&chunk).await.is_ok() {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        let port = free_udp_port();
        let server = server(&dir, "server", port, &["--allow-private", "--window", "4M"]);
        let socks = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let client = client(
            &dir,
            "client",
            port,
            &["--socks", &socks.to_string(), "--window", "4M"],
        );
        let base = client.rss_kib() + server.rss_kib();
        let (code, mut tcp) = socks_connect(socks, &target.to_string()).await;
        assert_eq!(code, 0);
        // Read a little, then stop reading.
        let mut first = vec![0u8; 1 << 20];
        tcp.read_exact(&mut first).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stalled = written.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = written.load(Ordering::Relaxed);
        let grown = (client.rss_kib() + server.rss_kib()).saturating_sub(base);
        eprintln!("target wrote {stalled} then {later} bytes; daemons grew by {grown} KiB");
        assert_eq!(
            stalled, later,
            "the target must be stalled by back-pressure"
        );
        // Windows of 4 MiB, kernel socket buffers and one copy buffer per hop: well under 64 MiB.
        assert!(later < 64 << 20, "target wrote {later} bytes");
        assert!(grown < 48 * 1024, "daemons grew by {grown} KiB");
        // Reading again resumes the flow: what was held back drains, and the target writes on.
        let mut more = vec![0u8; 1 << 20];
        let mut drained = 0u64;
        while written.load(Ordering::Relaxed) == later {
            tcp.read_exact(&mut more).await.unwrap();
            drained += more.len() as u64;
            assert!(drained < 256 << 20, "the target stays stalled");
        }
    })
    .await;
}
