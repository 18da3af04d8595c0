//! The client's SOCKS5 port against malformed and refused requests: the right reply code or a
//! clean close, and the daemon keeps serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `bytes` (after a no-auth greeting if `greet`), closes our sending half, and returns
/// everything the daemon answered before closing.
async fn exchange(socks: SocketAddr, greet: bool, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = connect(socks).await;
    if greet {
        tcp.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 0]);
    }
    // The daemon may close (or reset) before taking everything: that is a clean refusal too.
    let _ = tcp.write_all(bytes).await;
    let _ = tcp.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the daemon neither answered nor closed");
    answer
}

/// The reply code of a complete reply, checking its layout.
fn reply_code(answer: &[u8]) -> u8 {
    assert!(answer.len() >= 10, "not a full reply: {answer:?}");
    assert_eq!(answer[0], 5);
    assert_eq!(answer[2], 0);
    answer[1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_right_answer_and_never_break_the_daemon() {
    bounded(60, async {
        let dir = scratch("socks-malformed");
        let http = start_http().await;
        let port = free_udp_port();
        let _server = server(&dir, "server", port, &["--allow", "127.0.0.1"]);
        let socks = loopback(free_tcp_port());
        let mut client = client(&dir, "client", port, &["--socks", &socks.to_string()]);

        // Greetings.
        assert!(exchange(socks, false, &[]).await.is_empty(), "empty");
        assert!(
            exchange(socks, false, &[5]).await.is_empty(),
            "truncated greeting"
        );
        assert!(
            exchange(socks, false, &[5, 3, 0]).await.is_empty(),
            "truncated methods"
        );
        assert!(
            exchange(socks, false, &[4, 1, 0, 80, 127, 0, 0, 1, 0])
                .await
                .is_empty(),
            "SOCKS4"
        );
        assert_eq!(
            exchange(socks, false, &[5, 1, 2]).await,
            [5, 0xff],
            "no acceptable method"
        );

        // Requests after a good greeting.
        assert!(
            exchange(socks, true, &[5, 1]).await.is_empty(),
            "truncated request"
        );
        assert!(
            exchange(socks, true, &[5, 1, 0, 1, 127, 0])
                .await
                .is_empty(),
            "truncated IPv4"
        );
        assert!(
            exchange(socks, true, &[4, 1, 0, 1, 127, 0, 0, 1, 0, 80])
                .await
                .is_empty(),
            "bad version"
        );
        let unknown = [5, 9, 0, 1, 127, 0, 0, 1, 0, 80];
        assert_eq!(
            reply_code(&exchange(socks, true, &unknown).await),
            7,
            "unknown command"
        );
        let bind = [5, 2, 0, 1, 127, 0, 0, 1, 0, 80];
        assert_eq!(reply_code(&exchange(socks, true, &bind).await), 7, "BIND");
        let bad_type = [5, 1, 0, 7, 127, 0, 0, 1, 0, 80];
        assert_eq!(
            reply_code(&exchange(socks, true, &bad_type).await),
            8,
            "address type"
        );
        // Domain lengths: zero, longer than what follows, full of bytes no name has.
        assert_eq!(
            reply_code(&exchange(socks, true, &[5, 1, 0, 3, 0, 0, 80]).await),
            1,
            "empty name"
        );
        let mut short = vec![5, 1, 0, 3, 255];
        short.extend_from_slice(b"example.com");
        assert!(
            exchange(socks, true, &short).await.is_empty(),
            "name shorter than its length"
        );
        let mut binary = vec![5, 1, 0, 3, 255];
        binary.extend(std::iter::repeat_n(0u8, 255));
        binary.extend_from_slice(&[0, 80]);
        assert_eq!(
            reply_code(&exchange(socks, true, &binary).await),
            1,
            "binary name"
        );
        // A megabyte of noise.
        assert!(exchange(socks, false, &payload(1 << 20, 9)).await.len() <= 2);
        assert!(exchange(socks, true, &payload(1 << 20, 10)).await.len() <= 10);

        // Still serving, nothing panicked.
        assert!(hello_through(socks, http).await);
        assert!(client.is_running());
        assert!(!client.stderr().contains("panicked"), "{}", client.stderr());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_are_refused_with_the_matching_code() {
    bounded(60, async {
        let dir = scratch("socks-refused");
        let http = start_http().await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let port = free_udp_port();
        // No allow rule: every private, loopback and link-local target is refused.
        let _server = server(&dir, "server", port, &[]);
        let socks = loopback(free_tcp_port());
        let _client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        for target in [
            http.to_string(),
            format!("localhost:{}", http.port()),
            format!("[::1]:{}", http.port()),
            "10.1.2.3:80".to_owned(),
            "192.168.1.1:80".to_owned(),
            "169.254.169.254:80".to_owned(),
            "[fe80::1]:80".to_owned(),
            "0.0.0.0:80".to_owned(),
        ] {
            let (code, _) = socks_connect(socks, &target).await;
            assert_eq!(code, 2, "{target} must be not allowed");
        }

        // A second pair whose server allows loopback: refused and unreachable targets.
        let port = free_udp_port();
        let _server2 = server(&dir, "server2", port, &["--allow", "127.0.0.0/8"]);
        let socks = loopback(free_tcp_port());
        let _client2 = client(&dir, "client2", port, &["--socks", &socks.to_string()]);
        let (code, _) = socks_connect(socks, &closed.to_string()).await;
        assert_eq!(code, 5, "connection refused");
        let (code, _) = socks_connect(socks, "no-such-host.invalid:80").await;
        assert_eq!(code, 4, "host unreachable");
        let (code, _) = socks_connect(socks, &http.to_string()).await;
        assert_eq!(code, 0, "allowed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_carries_datagrams_through_the_tunnel() {
    bounded(30, async {
        let dir = scratch("socks-udp");
        let echo = start_udp_echo().await;
        let port = free_udp_port();
        let server = server(&dir, "server", port, &["--allow", &echo.to_string()]);
        let socks = loopback(free_tcp_port());
        let client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // UDP ASSOCIATE, announcing the address we will send from.
        let mut tcp = connect(socks).await;
        tcp.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await.unwrap();
        let SocketAddr::V4(from) = udp.local_addr().unwrap() else {
            unreachable!()
        };
        let mut req = vec![5, 3, 0, 1];
        req.extend_from_slice(&from.ip().octets());
        req.extend_from_slice(&from.port().to_be_bytes());
        tcp.write_all(&req).await.unwrap();
        let mut reply = [0u8; 10];
        tcp.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..4], &[5, 0, 0, 1], "UDP ASSOCIATE refused");
        let relay = SocketAddr::from((
            [reply[4], reply[5], reply[6], reply[7]],
            u16::from_be_bytes([reply[8], reply[9]]),
        ));
        let SocketAddr::V4(to) = echo else {
            unreachable!()
        };
        let mut header = vec![0, 0, 0, 1];
        header.extend_from_slice(&to.ip().octets());
        header.extend_from_slice(&to.port().to_be_bytes());
        let mut buf = vec![0u8; 65536];
        for (i, size) in [1usize, 500, 1400, 9000].into_iter().enumerate() {
            let body = payload(size, 700 + i as u64);
            let mut datagram = header.clone();
            datagram.extend_from_slice(&body);
            // UDP: resend until the answer comes back.
            let answer = loop {
                udp.send_to(&datagram, relay).await.unwrap();
                match tokio::time::timeout(Duration::from_millis(500), udp.recv_from(&mut buf))
                    .await
                {
                    Ok(Ok((n, _))) => break buf[..n].to_vec(),
                    _ => continue,
                }
            };
            assert_eq!(
                &answer[..header.len()],
                &header[..],
                "source is the echo server"
            );
            assert_eq!(
                &answer[header.len()..],
                &body[..],
                "datagram of {size} bytes"
            );
        }
        // As transport datagrams: both daemons are of this version.
        let c = &stats(&client.control)["connections"][0];
        let s = &stats(&server.control)["connections"][0];
        assert!(c["datagrams_sent"].as_u64().unwrap() >= 4, "{c}");
        assert!(s["datagrams_received"].as_u64().unwrap() >= 4, "{s}");
        assert!(s["datagrams_sent"].as_u64().unwrap() >= 4, "{s}");
    })
    .await;
}
