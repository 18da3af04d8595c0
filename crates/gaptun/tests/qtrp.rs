//! QTRP's YAML files with the real binaries: `gaptun server --config server.yaml` and
//! `gaptun client --config client.yaml`, written the way QTRP's README writes them, publish a
//! local TCP service on the server's port (the bytes a visitor fetches there are hashed) and a
//! port range port by port; the start-up lines about QTRP settings that mean nothing here are
//! checked on both sides.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Bytes the local service sends to each visitor.
const PAYLOAD: usize = 8 << 20;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gaptun-qtrp-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The first of `n` consecutive ports free for TCP now, below the ephemeral range; `salt`
/// keeps the searches of one test apart.
fn free_tcp_ports(n: u16, salt: u16) -> u16 {
    let start = 21_000 + u16::try_from(std::process::id() % 9000).unwrap() + salt * 211;
    (start..start + 2000)
        .find(|p| (*p..*p + n).all(|q| TcpListener::bind(("127.0.0.1", q)).is_ok()))
        .unwrap()
}

/// A local service on `port` answering every connection with `tag`.
fn tag_service(port: u16, tag: &'static [u8]) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { return };
            let _ = tcp.write_all(tag);
        }
    });
}

/// A child process killed (SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gaptun(role: &str, config: &Path, control: &Path, log: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gaptun"));
    c.env_remove("GAPTUN_KEY")
        .env_remove("RUST_LOG")
        .args([role, "--config", config.to_str().unwrap()])
        .args(["--control", control.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap());
    c
}

/// Deterministic, incompressible-looking bytes (xorshift).
fn payload() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// The local service behind the client: each connection gets the whole payload.
fn service(data: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { return };
            let data = data.clone();
            std::thread::spawn(move || {
                let _ = tcp.write_all(&data);
            });
        }
    });
    port
}

/// Fetches everything a visitor of `port` gets, retrying until the expose is up.
fn fetch(port: u16, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut tcp| {
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = Vec::new();
            tcp.read_to_end(&mut buf)?;
            Ok(buf)
        });
        if let Ok(buf) = got
            && !buf.is_empty()
        {
            return buf;
        }
        assert!(start.elapsed() < limit, "port {port} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn qtrp_yaml_files_publish_a_service() {
    let d = dir();
    let tunnel = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exposed = free_tcp_ports(1, 0);
    let data = payload();
    let local = service(data.clone());
    // A range, QTRP's `8000-8005` form: each server port reaches its own local port.
    let range = free_tcp_ports(2, 1);
    let range_local = free_tcp_ports(2, 2);
    tag_service(range_local, b"range-first");
    tag_service(range_local + 1, b"range-second");

    // QTRP's server.yaml as its README shows it, on loopback, with other documented values.
    let server_yaml = d.join("server.yaml");
    std::fs::write(
        &server_yaml,
        format!(
            "bind: 127.0.0.1:{tunnel}           # 服务器绑定地址\n\
             transport: gnet\n\
             crypto: chacha20\n\
             auth:\n  tokens:\n    - qtrp-e2e-token\n\
             \n# 可选：拥塞控制\nbrutal:\n  enabled: true\n  target_mbps: 400\n"
        ),
    )
    .unwrap();
    let client_yaml = d.join("client.yaml");
    std::fs::write(
        &client_yaml,
        format!(
            "server: 127.0.0.1:{tunnel}\n\
             transport: quic\n\
             crypto: none\n\
             token: qtrp-e2e-token\n\
             proxies:\n  - remote_port: {exposed}\n    local_addr: 127.0.0.1:{local}\n\
             \x20 - remote_port: {range}-{}\n    local_addr: 127.0.0.1:{range_local}\n",
            range + 1
        ),
    )
    .unwrap();

    let (server_control, server_log) = (d.join("server.sock"), d.join("server.log"));
    let (client_control, client_log) = (d.join("client.sock"), d.join("client.log"));
    // Visitors only on loopback: the flag overrides the file (which has no such key).
    let _server = Proc(
        gaptun("server", &server_yaml, &server_control, &server_log)
            .args(["--expose-bind", "127.0.0.1"])
            .spawn()
            .unwrap(),
    );
    wait_for(&server_control, "server");
    let _client = Proc(
        gaptun("client", &client_yaml, &client_control, &client_log)
            .spawn()
            .unwrap(),
    );
    wait_for(&client_control, "client");

    let started = Instant::now();
    let got = fetch(exposed, Duration::from_secs(30));
    println!(
        "fetched {} bytes through the QTRP-configured expose in {:?}",
        got.len(),
        started.elapsed()
    );
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    assert_eq!(fetch(range, Duration::from_secs(10)), b"range-first");
    assert_eq!(fetch(range + 1, Duration::from_secs(10)), b"range-second");

    let server_log = std::fs::read_to_string(server_log).unwrap();
    for line in [
        "QTRP setting `transport: gnet` ignored: gaptun always runs its own reliable encrypted \
         transport over UDP (UDP port",
        "QTRP setting `crypto: chacha20` → cipher chacha20-poly1305",
        "a QTRP server file has no port allow-list: unless --expose-ports says otherwise, \
         clients with a token may expose any port 1024-65535",
        "clients may expose ports server_wide=1024-65535",
    ] {
        assert!(
            server_log.contains(line),
            "server log lacks {line:?}:\n{server_log}"
        );
    }
    let client_log = std::fs::read_to_string(client_log).unwrap();
    for line in [
        "QTRP setting `transport: quic` ignored",
        "QTRP setting `crypto: none` ignored: gaptun always encrypts",
    ] {
        assert!(
            client_log.contains(line),
            "client log lacks {line:?}:\n{client_log}"
        );
    }
    // The client has no SOCKS5 server: a QTRP client only publishes.
    assert!(!client_log.contains("SOCKS5 listening"), "{client_log}");
    let _ = std::fs::remove_dir_all(&d);
}
