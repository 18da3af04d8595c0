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

/// A local UDP service echoing every datagram.
fn udp_echo() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    port
}

/// `ctl stats json` of a daemon, parsed.
fn stats(name: &str) -> serde_json::Value {
    let control = socket_path(name);
    let out = bin()
        .args([
            "ctl",
            "--socket",
            control.to_str().unwrap(),
            "stats",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `--expose udp:PORT=LOCAL` between two daemons: a visitor's 100 datagrams (up to 8000 bytes,
/// several packets each) come back from a UDP echo service intact and in order, carried as
/// transport datagrams (the connection's datagram counters show them), not on a stream.
#[test]
fn udp_expose_echoes_in_order_over_transport_datagrams() {
    let tunnel = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A port below the ephemeral range that is free for UDP too.
    let exposed = (free_tcp_port(3)..u16::MAX)
        .find(|p| UdpSocket::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let _server = server(tunnel, &exposed.to_string());
    let echo = udp_echo();
    let _client = Proc(
        client(tunnel, &format!("udp:{exposed}=127.0.0.1:{echo}"), "udp-c")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let visitor = UdpSocket::bind("127.0.0.1:0").unwrap();
    visitor.connect(("127.0.0.1", exposed)).unwrap();
    visitor
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    // Until the client has registered and the relay runs, datagrams are lost: retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        visitor.send(b"hello").unwrap();
        if visitor.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"hello") {
            break;
        }
        assert!(Instant::now() < deadline, "no echo through udp:{exposed}");
    }
    while visitor.recv(&mut buf).is_ok() {}

    let sizes = [4usize, 512, 1400, 8000];
    let sent: Vec<Vec<u8>> = (0..100u32)
        .map(|i| {
            let mut d: Vec<u8> = (0..sizes[i as usize % sizes.len()])
                .map(|j| (j as u32 ^ i.wrapping_mul(2_654_435_761)) as u8)
                .collect();
            d[..4].copy_from_slice(&i.to_be_bytes());
            d
        })
        .collect();
    visitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    for d in &sent {
        visitor.send(d).unwrap();
        let n = visitor.recv(&mut buf).unwrap();
        got.push(buf[..n].to_vec());
    }
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(g == s, "echo {i} differs");
    }
    // Datagrams and their order are kept when several are in flight at once.
    let burst: Vec<&Vec<u8>> = sent.iter().take(20).collect();
    for d in &burst {
        visitor.send(d).unwrap();
    }
    for (i, d) in burst.iter().enumerate() {
        let n = visitor.recv(&mut buf).unwrap();
        assert!(
            &buf[..n] == d.as_slice(),
            "burst echo {i} differs or came out of order"
        );
    }

    // The daemons publish their figures periodically: wait for them to catch up.
    let counted = |v: &serde_json::Value, field: &str| v[field].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = stats("udp-c")["connections"][0].clone();
        let s = stats(&format!("server-{tunnel}"))["connections"][0].clone();
        let done = counted(&c, "datagrams_sent") >= 120
            && counted(&c, "datagrams_received") >= 120
            && counted(&s, "datagrams_sent") >= 120;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not carried as datagrams: client {c}, server {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
