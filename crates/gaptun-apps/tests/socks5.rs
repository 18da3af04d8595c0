//! End-to-end SOCKS5 tests: real sockets on loopback, the tunnel in memory.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gaptun_apps::{SocksConfig, TargetAddr, TargetPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const NOT_ALLOWED: u8 = 2;
const CONNECTION_REFUSED: u8 = 5;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 8;

async fn default_socks() -> SocketAddr {
    start_socks(tunnel(loopback_policy()), SocksConfig::default()).await
}

#[tokio::test]
async fn connect_ipv4_carries_megabytes_both_ways() {
    let echo = start_echo("127.0.0.1:0").await;
    let proxy = default_socks().await;
    let (rep, tcp) = socks_connect(proxy, &TargetAddr::Ip(echo)).await;
    assert_eq!(rep, SUCCEEDED);
    let data = payload(4 * 1024 * 1024, 1);
    assert_eq!(echo_round_trip(tcp, &data).await, sha256(&data));
}

#[tokio::test]
async fn connect_by_domain_name_resolved_on_the_server() {
    let echo = start_echo("127.0.0.1:0").await;
    // Only the name and port are allowed: the rule matches the name the client asked for.
    let policy = TargetPolicy {
        allow: vec![format!("localhost:{}", echo.port()).parse().unwrap()],
        allow_private: false,
    };
    let proxy = start_socks(tunnel(policy), SocksConfig::default()).await;
    let target = TargetAddr::Domain("localhost".into(), echo.port());
    let (rep, tcp) = socks_connect(proxy, &target).await;
    assert_eq!(rep, SUCCEEDED);
    let data = payload(256 * 1024, 2);
    assert_eq!(echo_round_trip(tcp, &data).await, sha256(&data));

    // The same server by IP is not covered by the name rule.
    let (rep, _) = socks_connect(proxy, &TargetAddr::Ip(echo)).await;
    assert_eq!(rep, NOT_ALLOWED);
}

#[tokio::test]
async fn connect_ipv6_loopback_if_available() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipping: no IPv6 loopback on this machine");
        return;
    };
    drop(listener);
    let echo = start_echo("[::1]:0").await;
    let proxy = default_socks().await;
    let (rep, tcp) = socks_connect(proxy, &TargetAddr::Ip(echo)).await;
    assert_eq!(rep, SUCCEEDED);
    let data = payload(512 * 1024, 3);
    assert_eq!(echo_round_trip(tcp, &data).await, sha256(&data));
}

fn auth_config() -> SocksConfig {
    SocksConfig {
        auth: Some(("alice".into(), "s3cret".into())),
        ..SocksConfig::default()
    }
}

#[tokio::test]
async fn username_password_success() {
    let echo = start_echo("127.0.0.1:0").await;
    let proxy = start_socks(tunnel(loopback_policy()), auth_config()).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0, 2]).await, 2);
    assert_eq!(login(&mut tcp, "alice", "s3cret").await, 0);
    let (rep, _) = request(&mut tcp, 1, &TargetAddr::Ip(echo)).await;
    assert_eq!(rep, SUCCEEDED);
    tcp.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
}

#[tokio::test]
async fn username_password_failures() {
    let proxy = start_socks(tunnel(loopback_policy()), auth_config()).await;

    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0, 2]).await, 2);
    assert_ne!(login(&mut tcp, "alice", "wrong").await, 0);
    assert!(closed_without_data(&mut tcp).await);

    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[2]).await, 2);
    assert_ne!(login(&mut tcp, "bob", "s3cret").await, 0);
    assert!(closed_without_data(&mut tcp).await);

    // A client that cannot authenticate gets "no acceptable methods".
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0]).await, 0xff);
    assert!(closed_without_data(&mut tcp).await);
}

#[tokio::test]
async fn no_auth_server_refuses_clients_that_only_offer_passwords() {
    let proxy = default_socks().await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[2]).await, 0xff);
    assert!(closed_without_data(&mut tcp).await);
}

/// Sends raw bytes after a no-auth greeting and returns everything the server sends back.
async fn raw_request(proxy: SocketAddr, bytes: &[u8], close_after: bool) -> Vec<u8> {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0]).await, 0);
    tcp.write_all(bytes).await.unwrap();
    if close_after {
        tcp.shutdown().await.unwrap();
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "server must close the connection");
    got
}

#[tokio::test]
async fn malformed_requests_get_precise_replies_or_a_clean_close() {
    let proxy = default_socks().await;

    // Unknown command and BIND: command not supported.
    for cmd in [2u8, 9] {
        let got = raw_request(proxy, &[5, cmd, 0, 1, 127, 0, 0, 1, 0, 80], false).await;
        assert_eq!(
            got,
            [5, COMMAND_NOT_SUPPORTED, 0, 1, 0, 0, 0, 0, 0, 0],
            "cmd {cmd}"
        );
    }
    // Unknown address type.
    let got = raw_request(proxy, &[5, 1, 0, 5, 1, 2, 3, 4, 0, 80], false).await;
    assert_eq!(got, [5, ADDRESS_TYPE_NOT_SUPPORTED, 0, 1, 0, 0, 0, 0, 0, 0]);
    // Zero-length domain name.
    let got = raw_request(proxy, &[5, 1, 0, 3, 0, 0, 80], false).await;
    assert_eq!(got, [5, GENERAL_FAILURE, 0, 1, 0, 0, 0, 0, 0, 0]);
    // Domain with a byte that is not visible ASCII.
    let got = raw_request(proxy, &[5, 1, 0, 3, 2, b'a', 0, 0, 80], false).await;
    assert_eq!(got[1], GENERAL_FAILURE);
    // A 255-byte domain announced, only a few bytes sent: clean close, no reply.
    let got = raw_request(proxy, &[5, 1, 0, 3, 255, b'a', b'b'], true).await;
    assert!(got.is_empty());
    // Truncated IPv4 request.
    let got = raw_request(proxy, &[5, 1, 0, 1, 127], true).await;
    assert!(got.is_empty());
    // Wrong version in the request.
    let got = raw_request(proxy, &[4, 1, 0, 1, 127, 0, 0, 1, 0, 80], false).await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn wrong_greeting_version_is_closed() {
    let proxy = default_socks().await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&[4, 1, 0, 80, 127, 0, 0, 1, 0])
        .await
        .unwrap();
    assert!(closed_without_data(&mut tcp).await);
    // The server keeps serving after bad clients.
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0]).await, 0);
}

#[tokio::test]
async fn idle_handshake_times_out() {
    let config = SocksConfig {
        handshake_timeout: Duration::from_millis(200),
        ..SocksConfig::default()
    };
    let proxy = start_socks(tunnel(loopback_policy()), config).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&[5, 1]).await.unwrap(); // greeting never completed
    let start = std::time::Instant::now();
    assert!(closed_without_data(&mut tcp).await);
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn private_target_is_not_allowed() {
    let echo = start_echo("127.0.0.1:0").await;
    let proxy = start_socks(tunnel(TargetPolicy::new()), SocksConfig::default()).await;
    let (rep, mut tcp) = socks_connect(proxy, &TargetAddr::Ip(echo)).await;
    assert_eq!(rep, NOT_ALLOWED);
    assert!(closed_without_data(&mut tcp).await);
    // A name resolving to loopback is refused as well.
    let (rep, _) = socks_connect(proxy, &TargetAddr::Domain("localhost".into(), echo.port())).await;
    assert_eq!(rep, NOT_ALLOWED);
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let port = closed_port().await;
    let proxy = default_socks().await;
    let (rep, mut tcp) = socks_connect(proxy, &TargetAddr::Ip(port)).await;
    assert_eq!(rep, CONNECTION_REFUSED);
    assert!(closed_without_data(&mut tcp).await);
}

/// Opens a UDP association; returns the control connection and the relay address.
async fn associate(proxy: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut control = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut control, &[0]).await, 0);
    let (rep, bound) = request(&mut control, 3, &TargetAddr::unspecified()).await;
    assert_eq!(rep, SUCCEEDED);
    let TargetAddr::Ip(relay) = bound else {
        panic!("relay address must be an IP: {bound}")
    };
    (control, relay)
}

fn socks_udp(target: &TargetAddr, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0];
    target.encode(&mut out);
    out.extend_from_slice(data);
    out
}

async fn recv_socks_udp(socket: &UdpSocket) -> (TargetAddr, Vec<u8>) {
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("udp reply")
        .unwrap();
    assert_eq!(&buf[..3], &[0, 0, 0]);
    let (source, used) = TargetAddr::decode(&buf[3..n]).unwrap();
    (source, buf[3 + used..n].to_vec())
}

#[tokio::test]
async fn udp_associate_round_trip() {
    let echo = start_udp_echo().await;
    let proxy = default_socks().await;
    let (control, relay) = associate(proxy).await;
    assert_eq!(relay.ip(), Ipv4Addr::LOCALHOST);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    for (i, size) in [1usize, 512, 1400, 8000].into_iter().enumerate() {
        let data = payload(size, i as u64);
        client
            .send_to(&socks_udp(&TargetAddr::Ip(echo), &data), relay)
            .await
            .unwrap();
        let (source, got) = recv_socks_udp(&client).await;
        assert_eq!(source, TargetAddr::Ip(echo));
        assert_eq!(got, data);
    }

    // A domain-addressed datagram is resolved by the server.
    let by_name = TargetAddr::Domain("localhost".into(), echo.port());
    client
        .send_to(&socks_udp(&by_name, b"named"), relay)
        .await
        .unwrap();
    let (source, got) = recv_socks_udp(&client).await;
    assert_eq!(got, b"named");
    assert_eq!(source, TargetAddr::Ip(echo));

    // Fragments are dropped; the next datagram still goes through.
    let mut fragment = socks_udp(&TargetAddr::Ip(echo), b"frag");
    fragment[2] = 1;
    client.send_to(&fragment, relay).await.unwrap();
    client
        .send_to(&socks_udp(&TargetAddr::Ip(echo), b"whole"), relay)
        .await
        .unwrap();
    let (_, got) = recv_socks_udp(&client).await;
    assert_eq!(got, b"whole");

    // Closing the control connection ends the association.
    drop(control);
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .send_to(&socks_udp(&TargetAddr::Ip(echo), b"late"), relay)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let late = tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
    assert!(!matches!(late, Ok(Ok(_))), "association must be gone");
}

#[tokio::test]
async fn udp_to_private_target_is_dropped_by_the_server() {
    let echo = start_udp_echo().await;
    let proxy = start_socks(tunnel(TargetPolicy::new()), SocksConfig::default()).await;
    let (_control, relay) = associate(proxy).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&socks_udp(&TargetAddr::Ip(echo), b"x"), relay)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a refused destination must not answer");
}

#[tokio::test]
async fn slow_reader_does_not_grow_memory() {
    // A target that writes as fast as it can, counting what the network accepted.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let chunk = vec![0x5a; 16 * 1024];
        while tcp.write_all(&chunk).await.is_ok() {
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let proxy = default_socks().await;
    let (rep, mut tcp) = socks_connect(proxy, &TargetAddr::Ip(target)).await;
    assert_eq!(rep, SUCCEEDED);

    // Nobody reads: the amount written must level off (back-pressure all the way through).
    let plateau = wait_for_plateau(&written).await;
    eprintln!("writer stalled after {plateau} bytes");
    assert!(plateau > 0);
    assert!(
        plateau < 64 * 1024 * 1024,
        "{plateau} bytes buffered for a reader that never reads"
    );

    // Reading resumes the flow.
    let mut buf = vec![0u8; 1024 * 1024];
    let mut drained = 0;
    while drained < 2 * 1024 * 1024 {
        drained += tcp.read(&mut buf).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(written.load(Ordering::Relaxed) > plateau);
}

/// Waits until `counter` stops changing for half a second; returns its value then.
async fn wait_for_plateau(counter: &AtomicU64) -> u64 {
    let mut last = counter.load(Ordering::Relaxed);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counter.load(Ordering::Relaxed);
        if now == last && now > 0 {
            return now;
        }
        last = now;
    }
    panic!("writer never stalled: {last} bytes written");
}

/// A minimal HTTP/1.0 server answering every request with `body`.
async fn start_http(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

fn curl_available() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn curl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn curl_through_the_socks_server() {
    if !curl_available() {
        eprintln!("skipping: curl is not installed");
        return;
    }
    let http = start_http("hello through gaptun\n").await;
    let proxy = start_socks(tunnel(loopback_policy()), auth_config()).await;
    let url = format!("http://localhost:{}/index.html", http.port());
    let base = |mode: &str| {
        vec![
            "-sS".to_string(),
            "--max-time".into(),
            "10".into(),
            format!("--{mode}"),
            proxy.to_string(),
            "--proxy-user".into(),
            "alice:s3cret".into(),
            url.clone(),
        ]
    };
    for mode in ["socks5-hostname", "socks5"] {
        let out = curl(base(mode)).await;
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"hello through gaptun\n", "{mode}");
    }
    // A refused target surfaces as a SOCKS error in curl (exit code 97: proxy handshake).
    let closed = closed_port().await;
    let mut args = base("socks5-hostname");
    let last = args.len() - 1;
    args[last] = format!("http://127.0.0.1:{}/", closed.port());
    let out = curl(args).await;
    assert!(!out.status.success());
}
