//! Expose with the real binaries: a client publishes a local service on the server's port, a
//! refused port ends the client at start-up with one line naming it, and a client killed with
//! SIGKILL is replaced by a new one that gets the port back at once.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "gt1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gaptun"));
    c.env_remove("GAPTUN_KEY").env_remove("RUST_LOG");
    c
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gaptun-expose-{}-{name}.sock", std::process::id()))
}

/// A port free for TCP now, below the ephemeral range.
fn free_tcp_port(salt: u16) -> u16 {
    let start = 12_000 + u16::try_from(std::process::id() % 9000).unwrap() + salt * 101;
    (start..start + 2000)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap()
}

/// A child process killed (SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(port: u16, expose_ports: &str) -> Proc {
    let control = socket_path(&format!("server-{port}"));
    let child = bin()
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--key",
            KEY,
        ])
        .args(["--expose-ports", expose_ports, "--expose-bind", "127.0.0.1"])
        .args(["--control", control.to_str().unwrap(), "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

fn client(server_port: u16, expose: &str, name: &str) -> Command {
    let control = socket_path(name);
    let mut c = bin();
    c.args([
        "client",
        "--server",
        &format!("127.0.0.1:{server_port}"),
        "--key",
        KEY,
    ])
    .args(["--expose", expose])
    .args(["--control", control.to_str().unwrap(), "--log", "warn"]);
    c
}

/// A local service answering every connection with `tag`.
fn service(tag: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { return };
            let _ = tcp.write_all(tag);
        }
    });
    port
}

/// Waits until a visitor of `port` reads `tag`; returns how long that took.
fn reaches(port: u16, tag: &[u8], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut tcp| {
            tcp.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = vec![0u8; tag.len()];
            tcp.read_exact(&mut buf)?;
            Ok(buf)
        });
        if got.as_deref().ok() == Some(tag) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "port {port} did not reach {tag:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn expose_refusal_and_restart_after_sigkill() {
    let tunnel = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exposed = free_tcp_port(1);
    let refused = free_tcp_port(2);
    let _server = server(tunnel, &exposed.to_string());

    let first_service = service(b"first");
    let first = Proc(
        client(
            tunnel,
            &format!("{exposed}=127.0.0.1:{first_service}"),
            "c1",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    reaches(exposed, b"first", Duration::from_secs(20));

    // A port outside --expose-ports: the client exits non-zero, naming the port.
    let out = client(
        tunnel,
        &format!("{refused}=127.0.0.1:{first_service}"),
        "c2",
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("tcp port {refused} is not allowed by the server")),
        "{stderr}"
    );

    // kill -9 of the client, then a new one: the port works again within 3 s of its start.
    drop(first);
    let second_service = service(b"second");
    let started = Instant::now();
    let _second = Proc(
        client(
            tunnel,
            &format!("{exposed}=127.0.0.1:{second_service}"),
            "c3",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    reaches(exposed, b"second", Duration::from_secs(3));
    println!(
        "port back {:?} after the new client started",
        started.elapsed()
    );
}
