//! The daemons' life: reconnecting after a server restart, wrong keys, `ctl`, shutdown on
//! SIGTERM, logs (JSON, no key), key sources and several server keys, gap-proxy's config.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use common::*;
use gaptun_runtime::lossy_relay::{LossyConfig, LossyRelay};
use tokio::io::AsyncWriteExt;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_server_restart_and_keeps_its_window() {
    bounded(60, async {
        let dir = scratch("restart");
        let http = start_http().await;
        let port = free_udp_port();
        let mut first = server(&dir, "server1", port, &["--allow-private"]);
        let socks = loopback(free_tcp_port());
        let client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        assert!(hello_through(socks, http).await);
        // A new window applies to future connections too.
        assert_eq!(ctl(&client.control, &["wnd", "8M"]), "ok\n");

        assert!(first.terminate().success());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // A request made while the server is away waits for the reconnect.
        let early = tokio::spawn(hello_through(socks, http));
        tokio::time::sleep(Duration::from_millis(500)).await;

        let second = server(&dir, "server2", port, &["--allow-private"]);
        let back = Instant::now();
        loop {
            if hello_through(socks, http).await {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(2),
                "no reconnect in 2 s"
            );
        }
        let took = back.elapsed();
        eprintln!("SOCKS request succeeded {took:?} after the server came back");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            early.await.unwrap(),
            "the request made during the outage succeeds"
        );

        let s = stats(&client.control);
        let conns = s["connections"].as_array().unwrap();
        assert_eq!(conns.len(), 1, "{s}");
        assert_eq!(conns[0]["receive_window"], 8 << 20, "{s}");
        // Reconnect attempts that lost the race are closed by the client; on a loaded machine
        // the server may still count one for a moment, so wait for the end state.
        let settled = Instant::now();
        loop {
            let n = stats(&second.control)["connections"]
                .as_array()
                .unwrap()
                .len();
            if n == 1 {
                break;
            }
            assert!(
                settled.elapsed() < Duration::from_secs(3),
                "the restarted server still has {n} connections"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = client.stderr();
        assert!(log.contains("connection lost"), "{log}");
        assert!(log.contains("reconnected after"), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_recovers_quickly_from_a_server_crash() {
    bounded(60, async {
        let dir = scratch("crash");
        let http = start_http().await;
        let port = free_udp_port();
        let mut first = server(&dir, "server1", port, &["--allow-private"]);
        let socks = loopback(free_tcp_port());
        let client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        assert!(hello_through(socks, http).await);

        // No CLOSE this time: the new server knows nothing of the old connection.
        first.signal("KILL");
        first.wait_exit(Duration::from_secs(5));
        let _second = server(&dir, "server2", port, &["--allow-private"]);
        let back = Instant::now();
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(1), hello_through(socks, http));
            if attempt.await.unwrap_or(false) {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "not recovered; client log:\n{}",
                client.stderr()
            );
        }
        eprintln!("recovered {:?} after the server came back", back.elapsed());
        // The restarted server answered the old connection's packets with a stateless reset.
        assert!(
            client.stderr().contains("the server reset the connection"),
            "{}",
            client.stderr()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_wnd_changes_a_live_connection_and_stats_show_it() {
    bounded(30, async {
        let dir = scratch("ctl");
        let http = start_http().await;
        let port = free_udp_port();
        let server = server(&dir, "server", port, &["--allow-private"]);
        let socks = loopback(free_tcp_port());
        let client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        // A stream kept open during the change.
        let (code, mut open) = socks_connect(socks, &http.to_string()).await;
        assert_eq!(code, 0);
        assert!(hello_through(socks, http).await);
        // Wait until the finished request's stream is gone on both ends.
        for control in [&client.control, &server.control] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while stats(control)["connections"][0]["streams_open"] != 1 {
                assert!(Instant::now() < deadline, "{}", stats(control));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        let before = stats(&client.control);
        let c = &before["connections"][0];
        assert_eq!(c["receive_window"], 32 << 20, "{before}");
        assert_eq!(ctl(&client.control, &["wnd", "4M"]), "ok\n");
        let after = stats(&client.control);
        assert_eq!(after["receive_window"], 4 << 20, "{after}");
        let c = &after["connections"][0];
        assert_eq!(c["receive_window"], 4 << 20, "{after}");
        assert_eq!(after["connections"].as_array().unwrap().len(), 1);
        // The contents of `stats`: connections, streams, bytes, loss, RTT, retransmissions.
        assert_eq!(c["streams_open"], 1, "{after}");
        assert!(c["streams_opened_total"].as_u64().unwrap() >= 2, "{after}");
        assert!(c["bytes_sent"].as_u64().unwrap() > 0);
        assert!(c["bytes_received"].as_u64().unwrap() > 0);
        assert!(c["rtt_ms"].as_f64().unwrap() > 0.0);
        for key in [
            "packets_lost",
            "loss_percent",
            "packets_retransmitted",
            "min_rtt_ms",
        ] {
            assert!(c.get(key).is_some(), "{key} missing: {after}");
        }
        // The table says the same.
        let table = ctl(&client.control, &["stats"]);
        let mut lines = table.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .ends_with("1 connection(s), receive window 4.0M"),
            "{table}"
        );
        assert!(
            lines.next().unwrap().trim_start().starts_with("ID REMOTE "),
            "{table}"
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row[1], format!("127.0.0.1:{port}"), "{table}");
        assert_eq!(row[10], "1/2", "{table}");
        assert_eq!(row[11], "4.0M", "{table}");
        // The server has its own view.
        let s = stats(&server.control);
        assert_eq!(s["role"], "server");
        assert_eq!(s["accepted"], 1);
        assert_eq!(s["connections"][0]["streams_open"], 1);
        // Traffic still flows with the new window.
        assert!(hello_through(socks, http).await);
        open.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_server_stays_silent_and_logs_nothing_per_packet() {
    bounded(30, async {
        let dir = scratch("wrongkey");
        let port = free_udp_port();
        // Debug level: even then, no line per rejected packet.
        let server = server(&dir, "server", port, &["--log", "debug"]);
        let lines_at_start = server.stderr().lines().count();
        // Watch the wrong-key client's traffic through a relay that counts each direction.
        let relay = LossyRelay::spawn(LossyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            loopback(port),
        ))
        .await
        .unwrap();
        let mut args = client_args(relay.local_addr().port(), &["--handshake-timeout", "2"]);
        args.splice(4..5, ["wrong-key-passphrase".to_owned()]);
        args.extend(["--socks".into(), "127.0.0.1:0".into()]);
        let mut wrong = Daemon::spawn_nowait(&dir, "client", &args);
        let status = wrong.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1));
        let err = wrong.stderr();
        assert!(
            err.contains("no answer from server within 2 s: check address, port and key"),
            "{err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("gaptun: ")).count(),
            1,
            "{err}"
        );
        let (to_server, to_client) = relay.counts_by_direction();
        assert!(to_server >= 2, "the client tried: {to_server}");
        assert_eq!(to_client, 0, "the server must not answer a wrong key");

        // Garbage of every size gets no answer either.
        let raw = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        raw.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for i in 0..300usize {
            let junk = payload(1 + (i * 37) % 1400, i as u64);
            raw.send_to(&junk, loopback(port)).unwrap();
        }
        let mut buf = [0u8; 2048];
        assert!(raw.recv_from(&mut buf).is_err(), "the server answered junk");
        let log = server.stderr();
        let new_lines = log.lines().count() - lines_at_start;
        assert!(
            new_lines < 5,
            "{new_lines} log lines for rejected packets:\n{log}"
        );
        let s = stats(&server.control);
        assert!(s["dropped_unauthenticated"].as_u64().unwrap() >= 300, "{s}");
        assert_eq!(s["accepted"], 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_one_clear_line() {
    bounded(20, async {
        let dir = scratch("unreachable");
        // A peer that receives and never answers (a closed port would answer with ICMP port
        // unreachable, which fails at once: see tests/ops.rs).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let mut c = Daemon::spawn_nowait(
            &dir,
            "client",
            &client_args(
                port,
                &["--handshake-timeout", "1", "--socks", "127.0.0.1:0"],
            ),
        );
        assert_eq!(c.wait_exit(Duration::from_secs(10)).code(), Some(1));
        let err = c.stderr();
        let last = err.lines().last().unwrap_or_default().to_owned();
        assert_eq!(
            last,
            format!(
                "gaptun: cannot connect to 127.0.0.1:{port}: no answer from server within 1 s: check address, port and key"
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_streams_and_tells_the_peer() {
    bounded(30, async {
        let dir = scratch("shutdown");
        let echo = start_echo().await;
        let port = free_udp_port();
        let server = server(&dir, "server", port, &["--allow-private"]);
        let socks = loopback(free_tcp_port());
        let mut client = client(&dir, "client", port, &["--socks", &socks.to_string()]);
        let (code, mut tcp) = socks_connect(socks, &echo.to_string()).await;
        assert_eq!(code, 0);
        tcp.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut four)
            .await
            .unwrap();
        assert_eq!(&four, b"ping");
        assert_eq!(
            stats(&server.control)["connections"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let start = Instant::now();
        assert!(client.terminate().success(), "{}", client.stderr());
        // The local SOCKS connection ends at once rather than hanging: with a reset, since its
        // transfer was cut (the relay aborts it), or with the FIN the kernel sends if the
        // process exits first.
        let (rest, end) = read_to_end_or_error(&mut tcp, Duration::from_secs(3)).await;
        assert!(rest.is_empty());
        assert!(
            matches!(end, Ok(()) | Err(std::io::ErrorKind::ConnectionReset)),
            "{end:?}"
        );
        // The server heard the CLOSE at once instead of waiting for the idle timeout.
        loop {
            let n = stats(&server.control)["connections"]
                .as_array()
                .unwrap()
                .len();
            if n == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "server still has the connection"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!client.control.exists(), "control socket removed");
        assert!(
            server.stderr().contains("client disconnected"),
            "{}",
            server.stderr()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_contain_the_key() {
    bounded(30, async {
        let dir = scratch("json");
        let http = start_http().await;
        let port = free_udp_port();
        let server = server(
            &dir,
            "server",
            port,
            &["--allow-private", "--log", "trace", "--log-format", "json"],
        );
        let socks = loopback(free_tcp_port());
        let client = client(
            &dir,
            "client",
            port,
            &[
                "--socks",
                &socks.to_string(),
                "--log",
                "trace",
                "--log-format",
                "json",
                "--socks-user",
                "bob",
                "--socks-password",
                "hunter2-password",
            ],
        );
        let url = format!("http://127.0.0.1:{}/hello", http.port());
        let (code, body, err) = curl(&[
            "-x".into(),
            format!("socks5h://bob:hunter2-password@{socks}"),
            url,
        ])
        .await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(body, b"hello\n");
        for (name, log) in [("server", server.stderr()), ("client", client.stderr())] {
            assert!(log.lines().count() > 5, "{name} logged little:\n{log}");
            for line in log.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
                assert!(
                    v.get("level").is_some() && v.get("timestamp").is_some(),
                    "{line}"
                );
            }
            assert!(!log.contains(KEY), "{name} logged the key");
            assert!(!log.contains("hunter2"), "{name} logged the SOCKS password");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_accepts_several_keys_from_a_key_file() {
    bounded(30, async {
        let dir = scratch("keys");
        let http = start_http().await;
        let key_file = dir.join("keys");
        std::fs::write(
            &key_file,
            "# two clients\nfirst-client-passphrase\n\nsecond-client-passphrase\n",
        )
        .unwrap();
        let port = free_udp_port();
        let _server = Daemon::spawn(
            &dir,
            "server",
            &[
                "server".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--key-file".into(),
                key_file.to_str().unwrap().into(),
                "--allow-private".into(),
            ],
        );
        // One client with --key, one with GAPTUN_KEY.
        let socks1 = loopback(free_tcp_port());
        let mut args = client_args(port, &["--socks", &socks1.to_string()]);
        args.splice(4..5, ["first-client-passphrase".to_owned()]);
        let _c1 = Daemon::spawn(&dir, "client1", &args);
        assert!(hello_through(socks1, http).await);

        let socks2 = loopback(free_tcp_port());
        let control = dir.join("client2.sock");
        let mut c2 = bin()
            .args([
                "client",
                "--server",
                &format!("127.0.0.1:{port}"),
                "--socks",
                &socks2.to_string(),
                "--control",
                control.to_str().unwrap(),
            ])
            .env("GAPTUN_KEY", "second-client-passphrase")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !control.exists() {
            assert!(
                Instant::now() < deadline,
                "client with GAPTUN_KEY did not connect"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ok = hello_through(socks2, http).await;
        let _ = c2.kill();
        let _ = c2.wait();
        assert!(ok);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_proxy_config_json_runs_a_client() {
    bounded(30, async {
        let dir = scratch("gapproxy");
        let http = start_http().await;
        let port = free_udp_port();
        let _server = server(&dir, "server", port, &["--allow-private"]);
        let socks = loopback(free_tcp_port());
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            format!(
                "{{\n  \"local\": \"{socks}\",\n  \"server\": \"localhost:{port}\",\n  \"key\": \"{KEY}\"\n}}\n"
            ),
        )
        .unwrap();
        let _client = Daemon::spawn(
            &dir,
            "client",
            &["client".into(), "--config".into(), config.to_str().unwrap().into()],
        );
        assert!(hello_through(socks, http).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_forward_target_is_logged_in_one_line() {
    bounded(30, async {
        let dir = scratch("refused");
        let echo = start_echo().await;
        let port = free_udp_port();
        let server = server(&dir, "server", port, &[]);
        let listen = loopback(free_tcp_port());
        let spec = format!("tcp:{listen}={echo}");
        let client = client(&dir, "client", port, &["--no-socks", "--forward", &spec]);
        let mut tcp = connect(listen).await;
        let (got, end) = read_to_end_or_error(&mut tcp, Duration::from_secs(5)).await;
        // Reset, not closed: a FIN would look like an empty but complete answer.
        assert!(got.is_empty());
        assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
        let expected = format!("forward to {echo}: refused by the tunnel server: target not allowed by the server (see --allow)");
        let deadline = Instant::now() + Duration::from_secs(3);
        while !client.stderr().contains(&expected) {
            assert!(Instant::now() < deadline, "{}", client.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = server.stderr();
        assert!(
            log.contains(&format!("{echo}: target refused by policy: 127.0.0.1 is a loopback address and not on the allow list")),
            "{log}"
        );
    })
    .await;
}
