//! Helpers for the end-to-end tests: the `gaptun` binary as child processes (killed by PID when
//! dropped), local TCP/HTTP/UDP services, a raw SOCKS5 client, deterministic payloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The key every test daemon uses (a passphrase, so a leak into logs is easy to spot).
pub const KEY: &str = "end-to-end-test-passphrase";

/// Size of the big HTTP download.
pub const BIG: usize = 64 << 20;

/// Runs `f`, failing the test if it takes longer than `secs` seconds. Child processes are
/// killed when the test's `Daemon`s are dropped during the unwind.
pub async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// A fresh directory for one test's sockets and logs; removed when the test passes, kept (with
/// the daemons' logs) when it fails.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // CI keeps only the test output: the end of each daemon's log goes there too.
            print_log_tails(&self.0, 60);
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Prints the last `lines` lines of every `*.log` file in `dir` to stderr.
fn print_log_tails(dir: &Path, lines: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        eprintln!(
            "--- last {} lines of {} ---\n{}",
            tail.len(),
            log.file_name().unwrap_or_default().to_string_lossy(),
            tail.join("\n")
        );
    }
}

pub fn scratch(name: &str) -> Scratch {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gaptun-e2e-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

pub fn free_tcp_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    StdUdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary, with no key or log level inherited from the environment.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gaptun"));
    c.env_remove("GAPTUN_KEY")
        .env_remove("RUST_LOG")
        .env_remove("GAPTUN_SOCKS_PASSWORD")
        .env_remove("GAPTUN_DASHBOARD_PASSWORD")
        // Servers keep their replay state here, not in the user's state directory.
        .env(
            "STATE_DIRECTORY",
            std::env::temp_dir().join("gaptun-test-state"),
        );
    c
}

/// Runs the binary to completion.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

/// `gaptun ctl --socket SOCKET ARGS...`; returns stdout, panicking on failure.
pub fn ctl(socket: &Path, args: &[&str]) -> String {
    let mut all = vec!["ctl", "--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(
        o.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `ctl stats json`, parsed.
pub fn stats(socket: &Path) -> serde_json::Value {
    serde_json::from_str(&ctl(socket, &["stats", "json"])).unwrap()
}

/// A running daemon. Dropping it kills the process (by its PID) and reaps it.
pub struct Daemon {
    pub child: Child,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `gaptun ARGS --control <dir>/<name>.sock` with stderr going to `<dir>/<name>.log`,
    /// and waits until the control socket exists (for a client: until it is connected).
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Self {
        let d = Self::spawn_nowait(dir, name, args);
        d.wait_ready();
        d
    }

    /// Like [`Daemon::spawn`], without waiting.
    pub fn spawn_nowait(dir: &Path, name: &str, args: &[String]) -> Self {
        let control = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = bin()
            .args(args)
            .args(["--control", control.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            control,
            log,
        }
    }

    /// `gaptun ARGS` inside network namespace `ns` (`ip netns exec`), logging to
    /// `<dir>/<name>.log` at info level, its state kept in `dir`; waits until it is ready.
    pub fn spawn_in_netns(ns: &str, dir: &Path, name: &str, args: &[&str]) -> Self {
        let control = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_gaptun")])
            .args(args)
            .args(["--control", control.to_str().unwrap()])
            .env_remove("GAPTUN_KEY")
            .env(
                "RUST_LOG",
                std::env::var("GAPTUN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("STATE_DIRECTORY", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self {
            child,
            control,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.control.exists() {
            assert!(
                Instant::now() < deadline,
                "daemon not ready; its log:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit; its log:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `gaptun server` on 127.0.0.1:`port` with the test key and `extra` arguments.
pub fn server(dir: &Path, name: &str, port: u16, extra: &[&str]) -> Daemon {
    let mut args = strings(&[
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--key",
        KEY,
    ]);
    args.extend(strings(extra));
    Daemon::spawn(dir, name, &args)
}

/// `gaptun client` to 127.0.0.1:`server_port` with the test key and `extra` arguments.
pub fn client_args(server_port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "client",
        "--server",
        &format!("127.0.0.1:{server_port}"),
        "--key",
        KEY,
    ]);
    args.extend(strings(extra));
    args
}

pub fn client(dir: &Path, name: &str, server_port: u16, extra: &[&str]) -> Daemon {
    Daemon::spawn(dir, name, &client_args(server_port, extra))
}

/// Deterministic pseudo-random bytes (xorshift64), different for each seed.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The 64 MiB body the HTTP server serves, and its SHA-256 (computed once per test binary).
pub fn big_body() -> &'static (Vec<u8>, [u8; 32]) {
    static BODY: OnceLock<(Vec<u8>, [u8; 32])> = OnceLock::new();
    BODY.get_or_init(|| {
        let body = payload(BIG, 64);
        let hash = sha256(&body);
        (body, hash)
    })
}

/// A minimal HTTP/1.1 server on 127.0.0.1: `GET /file` returns [`big_body`], `GET /hello`
/// returns `hello\n`, anything else 404. One request per connection.
pub async fn start_http() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_http(tcp));
        }
    });
    addr
}

async fn serve_http(mut tcp: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let body: &[u8] = match path {
        "/file" => &big_body().0,
        "/hello" => b"hello\n",
        _ => {
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if tcp.write_all(header.as_bytes()).await.is_ok() && tcp.write_all(body).await.is_ok() {
        let _ = tcp.shutdown().await;
    }
}

/// Runs curl (blocking, on a blocking thread) with `args`; returns (exit code, stdout, stderr).
pub async fn curl(args: &[String]) -> (Option<i32>, Vec<u8>, String) {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let o = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "60"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("curl is needed for these tests: run scripts/setup.sh");
        (
            o.status.code(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A TCP echo server on 127.0.0.1 (answers FIN with FIN after echoing everything).
pub async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo server on 127.0.0.1.
pub async fn start_udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Connects to `addr`, retrying for a moment while the listener comes up.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// SOCKS5 greeting without authentication, then a CONNECT to `target` (`host:port` as a
/// domain, or an IPv4 socket address); returns the reply code and the stream.
pub async fn socks_connect(socks: SocketAddr, target: &str) -> (u8, TcpStream) {
    let mut tcp = connect(socks).await;
    tcp.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    tcp.write_all(&connect_request(target)).await.unwrap();
    let code = read_reply(&mut tcp).await.expect("a SOCKS5 reply");
    (code, tcp)
}

/// The bytes of a CONNECT request for `target`.
pub fn connect_request(target: &str) -> Vec<u8> {
    let mut req = vec![5, 1, 0];
    match target.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(v4)) => {
            req.push(1);
            req.extend_from_slice(&v4.ip().octets());
            req.extend_from_slice(&v4.port().to_be_bytes());
        }
        Ok(SocketAddr::V6(v6)) => {
            req.push(4);
            req.extend_from_slice(&v6.ip().octets());
            req.extend_from_slice(&v6.port().to_be_bytes());
        }
        Err(_) => {
            let (host, port) = target.rsplit_once(':').unwrap();
            req.push(3);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
            req.extend_from_slice(&port.parse::<u16>().unwrap().to_be_bytes());
        }
    }
    req
}

/// Reads a SOCKS5 reply; returns its code, or `None` if the connection closed first.
pub async fn read_reply(tcp: &mut TcpStream) -> Option<u8> {
    let mut head = [0u8; 4];
    tcp.read_exact(&mut head).await.ok()?;
    assert_eq!(head[0], 5, "reply version");
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            tcp.read_exact(&mut len).await.ok()?;
            usize::from(len[0]) + 2
        }
        other => panic!("bad address type {other} in reply"),
    };
    let mut skip = vec![0u8; rest];
    tcp.read_exact(&mut skip).await.ok()?;
    Some(head[1])
}

/// Reads until EOF (or `limit`); returns what was read and whether EOF was seen.
pub async fn read_to_eof(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, tcp.read_to_end(&mut out)).await;
    let eof = matches!(r, Ok(Ok(_)));
    (out, eof)
}

/// Reads until the connection ends within `limit` (panics on a hang); returns what was read and
/// how it ended: `Ok(())` for EOF (the far side finished), the error kind otherwise
/// (`ConnectionReset` for a transfer that was cut or refused).
pub async fn read_to_end_or_error(
    tcp: &mut TcpStream,
    limit: Duration,
) -> (Vec<u8>, Result<(), std::io::ErrorKind>) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, tcp.read_to_end(&mut out))
        .await
        .expect("the connection must end, not hang");
    (out, r.map(|_| ()).map_err(|e| e.kind()))
}

/// `GET /hello` through SOCKS5 at `socks` to `http`; returns whether the body arrived.
pub async fn hello_through(socks: SocketAddr, http: SocketAddr) -> bool {
    let (code, mut tcp) = socks_connect(socks, &http.to_string()).await;
    if code != 0 {
        return false;
    }
    if tcp
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let (body, _) = read_to_eof(&mut tcp, Duration::from_secs(5)).await;
    body.ends_with(b"\r\n\r\nhello\n")
}
