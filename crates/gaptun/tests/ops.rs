//! What an operator meets when running the daemons: logs on closed pipes and in files, signals,
//! exit times, ICMP from a closed server port, `ctl stats` with two daemons on one host, accept
//! errors at the descriptor limit, start-up warnings. Real processes throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits (at most `secs`) until `d`'s log contains `needle`.
fn wait_log(d: &Daemon, needle: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !d.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bug 3: with stderr a pipe whose reader went away (`2>&1 | head -1`), logging must not kill
/// the client (it used to exit with 101, "failed printing to stderr"), and SIGTERM still closes
/// the tunnel, so the server hears of it at once. Bug 4: no colour codes in a log file.
#[test]
fn closed_stderr_pipe_neither_kills_the_client_nor_leaves_the_tunnel_open() {
    let dir = scratch("epipe");
    let port = free_udp_port();
    let server = server(&dir, "server", port, &[]);
    let control = dir.join("client.sock");
    let mut child = bin()
        .args(client_args(
            port,
            &["--socks", &format!("127.0.0.1:{}", free_tcp_port())],
        ))
        .args(["--control", control.to_str().unwrap()])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, as `head -1` does, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("connecting"), "{first}");
    assert!(!first.contains('\x1b'), "no colour on a pipe: {first:?}");
    wait_log(&server, "client connected", 10);
    // Every SIGHUP logs a line, now into a closed pipe.
    for _ in 0..3 {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the client died writing to a closed stderr"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "client did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "clean exit, not a panic");
    wait_log(
        &server,
        "client disconnected: closed by peer (code 0): shutting down",
        2,
    );
    let log = server.stderr();
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log file:\n{log}"
    );
}

/// Signals: SIGHUP is logged and ignored (the control socket stays and answers), and an idle
/// client exits promptly on SIGTERM (it always took 2.0 s).
#[test]
fn sighup_is_ignored_and_an_idle_client_exits_promptly() {
    let dir = scratch("signals");
    let port = free_udp_port();
    let mut server = server(&dir, "server", port, &[]);
    let mut client = client(
        &dir,
        "client",
        port,
        &[
            "--no-socks",
            "--forward",
            &format!("127.0.0.1:{}=127.0.0.1:9", free_tcp_port()),
        ],
    );
    server.signal("HUP");
    client.signal("HUP");
    wait_log(
        &server,
        "SIGHUP: reloading is not supported, signal ignored",
        5,
    );
    wait_log(
        &client,
        "SIGHUP: reloading is not supported, signal ignored",
        5,
    );
    assert!(server.is_running() && client.is_running());
    assert!(ctl(&server.control, &["stats"]).contains("gaptun server"));
    assert!(ctl(&client.control, &["stats"]).contains("gaptun client"));

    let started = Instant::now();
    let status = client.terminate();
    let took = started.elapsed();
    assert!(status.success());
    assert!(
        took < Duration::from_millis(1200),
        "idle client took {took:?} to exit"
    );
    assert!(!client.control.exists(), "control socket removed");
    eprintln!("idle client exit on SIGTERM: {took:?}");
    assert!(server.terminate().success());
    assert!(!server.control.exists());
}

/// ICMP port unreachable from a closed server port ends the first attempt with a clear error,
/// well before the handshake timeout; `--log-format json` puts the fatal error in a field.
#[test]
fn closed_server_port_fails_at_once_with_a_clear_error() {
    let port = free_udp_port();
    let started = Instant::now();
    let o = bin()
        .args(client_args(
            port,
            &["--socks", &format!("127.0.0.1:{}", free_tcp_port())],
        ))
        .args(["--control", "/tmp/gaptun-unused-test.sock"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "gaptun: cannot connect to 127.0.0.1:{port}: server port closed (ICMP port unreachable)"
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eprintln!("closed server port reported after {took:?}");

    let o = bin()
        .args(client_args(
            port,
            &[
                "--socks",
                &format!("127.0.0.1:{}", free_tcp_port()),
                "--log-format",
                "json",
            ],
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let last: serde_json::Value =
        serde_json::from_str(err.lines().last().unwrap()).expect("the last line is JSON");
    assert_eq!(last["level"], "ERROR", "{err}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .unwrap()
            .ends_with("server port closed (ICMP port unreachable)"),
        "{err}"
    );
}

/// `gaptun ctl stats` as the README shows it, with a client and a server on one host using
/// their default sockets; `--socket` after the command; a connection id and age per row.
#[test]
fn ctl_stats_with_a_client_and_a_server_on_one_host() {
    let dir = scratch("ctl-both");
    let port = free_udp_port();
    let spawn = |args: Vec<String>, name: &str| {
        bin()
            .args(args)
            .env("XDG_RUNTIME_DIR", &*dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut s = spawn(
        [
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--key",
            KEY,
        ]
        .map(String::from)
        .to_vec(),
        "server",
    );
    // The client fails at once on ICMP port unreachable: start it once the server is bound.
    let server_sock = dir.join("gaptun-server.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server_sock.exists() {
        assert!(Instant::now() < deadline, "server not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = spawn(
        client_args(
            port,
            &[
                "--socks",
                &format!("127.0.0.1:{}", free_tcp_port()),
                "--conns",
                "2",
            ],
        ),
        "client",
    );
    let client_sock = dir.join("gaptun-client.sock");
    while !client_sock.exists() {
        assert!(Instant::now() < deadline, "daemons not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ctl_here = |args: &[&str]| {
        bin()
            .arg("ctl")
            .args(args)
            .env("XDG_RUNTIME_DIR", &*dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Wait for the client's second connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let table = loop {
        let o = ctl_here(&["stats"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let t = String::from_utf8(o.stdout).unwrap();
        if t.contains("gaptun server on") && t.contains("2 connection(s)") {
            break t;
        }
        assert!(Instant::now() < deadline, "{t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(table.contains("gaptun client on"), "{table}");
    // Two connections from one client: the server's rows differ in their ID column.
    let server_part = &table[table.find("gaptun server on").unwrap()..];
    let ids: Vec<&str> = server_part
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 2, "{table}");
    assert_ne!(ids[0], ids[1], "{table}");

    // The first RTT sample comes with the first ACK after the handshake: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let both = loop {
        let o = ctl_here(&["stats", "json"]);
        let both: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if both[0]["connections"][0]["rtt_ms"].as_f64().is_some() {
            break both;
        }
        assert!(Instant::now() < deadline, "no RTT sample: {both}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let roles: Vec<&str> = both
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["client", "server"]);
    let conn = &both[0]["connections"][0];
    assert!(conn["rtt_ms"].as_f64().is_some(), "{conn}");
    assert!(
        ["aes-256-gcm", "chacha20-poly1305"].contains(&conn["cipher"].as_str().unwrap()),
        "{conn}"
    );

    // `wnd` needs a choice; `--socket` is accepted after the command too.
    let o = ctl_here(&["wnd", "1M"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose one with --socket"));
    let o = ctl_here(&["stats", "--socket", server_sock.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = String::from_utf8(o.stdout).unwrap();
    assert!(
        t.starts_with("gaptun server on") && !t.contains("gaptun client"),
        "{t}"
    );
    let o = ctl_here(&["wnd", "1M", "--socket", client_sock.to_str().unwrap()]);
    assert!(o.status.success());

    for child in [&mut c, &mut s] {
        assert!(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let _ = child.wait();
    }
    assert!(!client_sock.exists() && !server_sock.exists());
}

/// Bug 11: at the descriptor limit, "accept failed" is logged once per interval, not 20 times
/// a second. The client runs under a low RLIMIT_NOFILE (set by the shell, soft and hard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_at_the_descriptor_limit_are_rate_limited() {
    bounded(40, async {
        let dir = scratch("emfile");
        let port = free_udp_port();
        let _server = server(&dir, "server", port, &["--allow-private"]);
        let echo = start_echo().await;
        let listen = loopback(free_tcp_port());
        let control = dir.join("client.sock");
        let log = dir.join("client.log");
        let mut args = vec![
            "-c".to_owned(),
            "ulimit -n 48 && exec \"$0\" \"$@\"".to_owned(),
        ];
        args.push(env!("CARGO_BIN_EXE_gaptun").to_owned());
        args.extend(client_args(
            port,
            &["--no-socks", "--forward", &format!("{listen}={echo}")],
        ));
        args.extend(["--control".to_owned(), control.to_str().unwrap().to_owned()]);
        let child = Command::new("sh")
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let client = Daemon {
            child,
            control,
            log,
        };
        client.wait_ready();
        // Hold open more connections than the client has descriptors left.
        let mut held = Vec::new();
        for _ in 0..80 {
            let mut tcp = connect(listen).await;
            let _ = tcp.write_all(b"x").await;
            held.push(tcp);
        }
        wait_log(&client, "Too many open files", 10);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let log = client.stderr();
        let lines = log.matches("accept failed").count();
        assert!(
            (1..=2).contains(&lines),
            "{lines} accept-failure lines in about 3 s:\n{log}"
        );
        assert!(log.contains("retrying in"), "{log}");
        // Descriptors freed: the forward serves again.
        drop(held);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut tcp = connect(listen).await;
        tcp.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut back))
            .await
            .expect("echo through the forward after the limit")
            .unwrap();
        assert_eq!(&back, b"ping");
    })
    .await;
}

/// Start-up lines: one INFO line per forward, the cipher of each connection on both sides,
/// and one warning each for a key file others can read and an open SOCKS5 proxy.
#[test]
fn start_up_lines_and_local_trust_warnings() {
    let dir = scratch("startup");
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_udp_port();
    let server = Daemon::spawn(
        &dir,
        "server",
        &[
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--key-file",
            key_file.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let tcp_fwd = format!("127.0.0.1:{}=127.0.0.1:22", free_tcp_port());
    let udp_fwd = format!("udp:127.0.0.1:{}=127.0.0.1:53", free_udp_port());
    let client = client(
        &dir,
        "client",
        port,
        &[
            "--socks",
            &format!("0.0.0.0:{}", free_tcp_port()),
            "--forward",
            &tcp_fwd,
            "--forward",
            &udp_fwd,
        ],
    );
    wait_log(&client, "UDP forward listening", 5);
    let log = client.stderr();
    assert_eq!(log.matches("TCP forward listening").count(), 1, "{log}");
    assert!(log.contains("target=127.0.0.1:22"), "{log}");
    assert!(log.contains("target=127.0.0.1:53"), "{log}");
    assert_eq!(
        log.matches("accepts anyone who can reach it").count(),
        1,
        "{log}"
    );
    let cipher_line = log.lines().find(|l| l.contains(" connected")).unwrap();
    assert!(
        cipher_line.contains("cipher=aes-256-gcm")
            || cipher_line.contains("cipher=chacha20-poly1305"),
        "{log}"
    );
    wait_log(&server, "client connected", 5);
    let slog = server.stderr();
    assert_eq!(
        slog.matches("is readable by group or others (mode 644)")
            .count(),
        1,
        "{slog}"
    );
    assert!(slog.contains("WARN"), "{slog}");
    let connected = slog
        .lines()
        .find(|l| l.contains("client connected"))
        .unwrap();
    assert!(connected.contains("cipher="), "{connected}");
}

/// A control socket in a directory others may write to (no sticky bit) is refused; a missing
/// directory is one clear line that names the OS error once.
#[test]
fn untrusted_control_directory_is_refused() {
    let dir = scratch("ctl-dir");
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_udp_port();
    let sock = open.join("s.sock");
    let o = run(&[
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--key",
        KEY,
        "--control",
        sock.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing control socket") && err.contains("without the sticky bit"),
        "{err}"
    );
    assert!(!sock.exists());

    let o = run(&[
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--key",
        KEY,
        "--control",
        "/nonexistent/dir/s.sock",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim_end().lines().last().unwrap(),
        "gaptun: cannot create control socket /nonexistent/dir/s.sock: directory /nonexistent/dir does not exist"
    );
}

/// A failed SOCKS5 login is a WARN line naming the user (never the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_socks_login_is_logged_with_the_user() {
    bounded(30, async {
        let dir = scratch("socks-login");
        let port = free_udp_port();
        let _server = server(&dir, "server", port, &[]);
        let socks = loopback(free_tcp_port());
        let client = client(
            &dir,
            "client",
            port,
            &[
                "--socks",
                &socks.to_string(),
                "--socks-user",
                "alice",
                "--socks-password",
                "right-one",
            ],
        );
        let mut tcp = connect(socks).await;
        tcp.write_all(&[5, 1, 2]).await.unwrap();
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 2]);
        let mut auth = vec![1, 3];
        auth.extend_from_slice(b"bob");
        auth.push(9);
        auth.extend_from_slice(b"wrong-one");
        tcp.write_all(&auth).await.unwrap();
        let mut status = [0u8; 2];
        tcp.read_exact(&mut status).await.unwrap();
        assert_ne!(status[1], 0);
        wait_log(&client, "socks5 login failed", 5);
        let log = client.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("socks5 login failed"))
            .unwrap();
        assert!(
            line.contains("WARN") && line.contains("user=\"bob\""),
            "{line}"
        );
        assert!(!log.contains("wrong-one"), "{log}");
    })
    .await;
}
