//! The daemons end to end, as processes. These need the protocol core (key parsing, handshake),
//! so they pass only once it is implemented: `cargo test -p gaptun --test daemon`.

#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "integration-test-passphrase";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gaptun"));
    c.env_remove("GAPTUN_KEY").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gaptun-it-{}-{name}.sock", std::process::id()))
}

/// A server process, stopped with SIGTERM on drop.
struct Server {
    child: Child,
    port: u16,
    control: PathBuf,
}

impl Server {
    fn start() -> Self {
        let port = free_udp_port();
        let control = socket_path(&format!("server-{port}"));
        let child = bin()
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--key",
                KEY,
            ])
            .args(["--control", control.to_str().unwrap(), "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !control.exists() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            control,
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn keygen_prints_a_usable_key() {
    let o = run(&["keygen"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = String::from_utf8(o.stdout).unwrap();
    let key = key.trim();
    assert!(key.starts_with("gt1:"), "{key}");
    gaptun_proto::Psk::parse(key).unwrap();
    assert_ne!(run(&["keygen"]).stdout, key.as_bytes(), "keys must differ");
}

#[test]
fn wrong_key_is_a_handshake_timeout() {
    let server = Server::start();
    let o = run(&[
        "client",
        "--server",
        &format!("127.0.0.1:{}", server.port),
        "--key",
        "a-different-passphrase",
        "--handshake-timeout",
        "1",
        "--socks",
        "127.0.0.1:0",
        "--control",
        socket_path("client-wrong").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("no answer from server within 1 s: check address, port and key"),
        "{err}"
    );
}

#[test]
fn socks_port_in_use_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let o = run(&[
        "client",
        "--server",
        "127.0.0.1:9",
        "--key",
        KEY,
        "--socks",
        &addr.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("address {addr} already in use (socks)")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn server_port_in_use_is_reported() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let o = run(&["server", "--listen", &addr.to_string(), "--key", KEY]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("address {addr} already in use (tunnel)")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ctl_talks_to_the_server_and_sigterm_stops_it() {
    let mut server = Server::start();
    let socket = server.control.to_str().unwrap().to_owned();
    let o = run(&["ctl", "--socket", &socket, "wnd", "8M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
    let o = run(&["ctl", "--socket", &socket, "stats"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.starts_with(&format!("gaptun server on 127.0.0.1:{}", server.port)),
        "{out}"
    );
    assert!(out.contains("receive window 8.0M"), "{out}");
    let o = run(&["ctl", "--socket", &socket, "stats", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["role"], "server");
    assert_eq!(v["receive_window"], 8 << 20);
    // Out-of-range windows are refused before they reach the daemon (a usage error).
    for (size, why) in [
        ("1K", "too small"),
        ("999999G", "too large: use at most 4G"),
    ] {
        let o = run(&["ctl", "--socket", &socket, "wnd", size]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
    }

    // A second server on the same control socket is refused.
    let o = run(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--key",
        KEY,
        "--control",
        &socket,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already listening on control socket"),
        "{}",
        stderr(&o)
    );

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!server.control.exists(), "control socket removed on exit");
}
