//! What the SOCKS5 server logs about refusals and failed logins: the target or the user is
//! named, the password never.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gaptun_apps::{SocksConfig, TargetAddr, TargetPolicy};
use tokio::net::TcpStream;

/// Logs at INFO and above into a buffer for the rest of the (single-threaded) test.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

#[tokio::test]
async fn failed_login_is_logged_with_the_user_and_without_the_password() {
    let (logs, _guard) = capture();
    let config = SocksConfig {
        auth: Some(("alice".into(), "s3cret".into())),
        ..SocksConfig::default()
    };
    let proxy = start_socks(tunnel(loopback_policy()), config).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[2]).await, 2);
    assert_ne!(login(&mut tcp, "mallory", "guess-Xy7").await, 0);
    assert!(closed_without_data(&mut tcp).await);

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("socks5 login failed"))
        .unwrap_or_else(|| panic!("no login failure logged in {text:?}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("user=\"mallory\""), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(!text.contains("guess-Xy7"), "password logged: {text}");
    assert!(!text.contains("s3cret"), "password logged: {text}");
}

#[tokio::test]
async fn client_without_an_acceptable_method_is_logged() {
    let (logs, _guard) = capture();
    let config = SocksConfig {
        auth: Some(("alice".into(), "s3cret".into())),
        ..SocksConfig::default()
    };
    let proxy = start_socks(tunnel(loopback_policy()), config).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0]).await, 0xff);
    assert!(closed_without_data(&mut tcp).await);
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("no acceptable method")),
        "{text}"
    );
}

#[tokio::test]
async fn policy_refusal_is_logged_with_the_target() {
    let (logs, _guard) = capture();
    // The default policy refuses loopback targets.
    let proxy = start_socks(tunnel(TargetPolicy::new()), SocksConfig::default()).await;
    let target = closed_port().await;
    let (rep, _tcp) = socks_connect(proxy, &TargetAddr::Ip(target)).await;
    assert_eq!(rep, 2, "not allowed");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("socks5 CONNECT refused"))
        .unwrap_or_else(|| panic!("no refusal logged in {text:?}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains(&format!("target={target}")), "{line}");
    assert!(line.contains("not allowed"), "{line}");
}

/// The server's UDP relay logs a refused destination once (at INFO, naming it), not once per
/// datagram.
#[tokio::test]
async fn udp_relay_logs_a_refused_destination_once() {
    let (logs, _guard) = capture();
    let refused = start_udp_echo().await;
    let proxy = start_socks(tunnel(TargetPolicy::new()), SocksConfig::default()).await;
    let mut control = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut control, &[0]).await, 0);
    let (rep, bound) = request(&mut control, 3, &TargetAddr::unspecified()).await;
    assert_eq!(rep, 0);
    let TargetAddr::Ip(relay) = bound else {
        panic!("relay address must be an IP: {bound}")
    };
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagram = vec![0, 0, 0];
    TargetAddr::Ip(refused).encode(&mut datagram);
    datagram.extend_from_slice(b"x");
    let wanted = format!("target={refused}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    // Datagrams are sent until the first refusal shows up in the log, then three more.
    while !logs.text().contains(&wanted) {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs.text());
        client.send_to(&datagram, relay).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        client.send_to(&datagram, relay).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = logs.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&wanted)).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("INFO") && lines[0].contains("udp relay refused"),
        "{text}"
    );
    assert!(lines[0].contains("loopback"), "{text}");
}
