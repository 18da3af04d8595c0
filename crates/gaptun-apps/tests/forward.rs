//! End-to-end tests of the TCP and UDP port forwards over the in-memory tunnel.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use gaptun_apps::forward::{serve_tcp_forward, serve_udp_forward};
use gaptun_apps::{MemTunnel, TargetAddr, TargetPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

async fn start_tcp_forward(tunnel: MemTunnel, target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp_forward(listener, TargetAddr::Ip(target), tunnel));
    addr
}

async fn start_udp_forward(tunnel: MemTunnel, target: TargetAddr, idle: Duration) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(serve_udp_forward(socket, target, tunnel, idle));
    addr
}

#[tokio::test]
async fn tcp_forward_bulk_both_directions() {
    let echo = start_echo("127.0.0.1:0").await;
    let forward = start_tcp_forward(tunnel(loopback_policy()), echo).await;
    let tcp = TcpStream::connect(forward).await.unwrap();
    let data = payload(8 * 1024 * 1024, 7);
    assert_eq!(echo_round_trip(tcp, &data).await, sha256(&data));
}

#[tokio::test]
async fn tcp_forward_200_concurrent_streams() {
    let echo = start_echo("127.0.0.1:0").await;
    let tunnel = tunnel(loopback_policy());
    let forward = start_tcp_forward(tunnel.clone(), echo).await;
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            tokio::spawn(async move {
                let data = payload(32 * 1024 + i as usize * 97, i);
                let tcp = TcpStream::connect(forward).await.unwrap();
                echo_round_trip(tcp, &data).await == sha256(&data)
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert!(task.await.unwrap(), "stream {i} corrupted");
    }
    assert_eq!(tunnel.opened(), 200);
}

#[tokio::test]
async fn tcp_forward_closes_local_connection_when_refused() {
    let echo = start_echo("127.0.0.1:0").await;
    // The default policy refuses loopback targets.
    let forward = start_tcp_forward(tunnel(TargetPolicy::new()), echo).await;
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    let _ = tcp.write_all(b"hello?").await;
    assert!(closed_without_data(&mut tcp).await);

    let closed = closed_port().await;
    let forward = start_tcp_forward(tunnel(loopback_policy()), closed).await;
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    assert!(closed_without_data(&mut tcp).await);
}

#[tokio::test]
async fn tcp_forward_propagates_half_close() {
    // The target reads until EOF, then answers: works only if our FIN reaches it while the
    // other direction stays open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        tcp.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
    });
    let forward = start_tcp_forward(tunnel(loopback_policy()), target).await;
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    tcp.write_all(&[1u8; 1000]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 1000 bytes");
}

async fn udp_exchange(client: &UdpSocket, forward: SocketAddr, data: &[u8]) -> Vec<u8> {
    client.send_to(data, forward).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("udp answer")
        .unwrap();
    assert_eq!(from, forward);
    buf[..n].to_vec()
}

#[tokio::test]
async fn udp_forward_echo_per_source() {
    let echo = start_udp_echo().await;
    let tunnel = tunnel(loopback_policy());
    let forward = start_udp_forward(
        tunnel.clone(),
        TargetAddr::Ip(echo),
        Duration::from_secs(30),
    )
    .await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for round in 0..5u64 {
        let data_a = payload(100 + round as usize * 300, round);
        let data_b = payload(1200, 100 + round);
        assert_eq!(udp_exchange(&a, forward, &data_a).await, data_a);
        assert_eq!(udp_exchange(&b, forward, &data_b).await, data_b);
    }
    // One tunnel stream per source, reused across datagrams.
    assert_eq!(tunnel.opened(), 2);
}

#[tokio::test]
async fn udp_forward_by_name() {
    let echo = start_udp_echo().await;
    let target = TargetAddr::Domain("localhost".into(), echo.port());
    let forward =
        start_udp_forward(tunnel(loopback_policy()), target, Duration::from_secs(30)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        udp_exchange(&client, forward, b"dns-ish query").await,
        b"dns-ish query"
    );
}

#[tokio::test]
async fn udp_forward_sessions_expire_when_idle() {
    let echo = start_udp_echo().await;
    let tunnel = tunnel(loopback_policy());
    let forward = start_udp_forward(
        tunnel.clone(),
        TargetAddr::Ip(echo),
        Duration::from_millis(200),
    )
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_exchange(&client, forward, b"one").await, b"one");
    assert_eq!(tunnel.opened(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(udp_exchange(&client, forward, b"two").await, b"two");
    assert_eq!(
        tunnel.opened(),
        2,
        "the idle session should have been replaced"
    );
}

#[tokio::test]
async fn udp_forward_to_refused_target_is_not_relayed() {
    let echo = start_udp_echo().await;
    let forward = start_udp_forward(
        tunnel(TargetPolicy::new()),
        TargetAddr::Ip(echo),
        Duration::from_secs(5),
    )
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"x", forward).await.unwrap();
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
    assert!(got.is_err());
}
