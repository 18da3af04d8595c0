//! The dashboard with the real binaries: `/api/stats` of both daemons after a known transfer
//! through a forward, basic auth on the server's (password from the config file), `ctl top`,
//! and the page in headless Chromium (table lists the connection, throughput rises above zero,
//! screenshot saved to docs/img/dashboard.png) inside a network namespace with only loopback.

// Test helpers, not production code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Daemon, bounded, connect, free_tcp_port, free_udp_port, payload, sha256};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes sent through the forward (and echoed back).
const SENT: usize = 3 << 20;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// One blocking HTTP/1.1 exchange on loopback; (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let mut tcp = StdTcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(a) = auth {
        let enc = base64::engine::general_purpose::STANDARD.encode(a);
        req.push_str(&format!("Authorization: Basic {enc}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    tcp.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly the body its Content-Length announces: chromedriver keeps
    // the connection open whatever the request says.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the headers");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while raw.len() < head_end + len {
                let n = tcp.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed in the body");
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            let _ = tcp.read_to_end(&mut raw);
        }
    }
    let rest = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&rest)
    } else {
        rest
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn api(addr: SocketAddr, auth: Option<&str>) -> Value {
    let (status, body) = http(addr, "GET", "/api/stats", auth, None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Sends `len` bytes through the TCP forward at `local` to the echo server and checks what
/// comes back.
async fn echo_through(local: SocketAddr, len: usize) {
    let data = payload(len, 7);
    let expected = sha256(&data);
    let tcp = connect(local).await;
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert!(sha256(&got) == expected, "echo corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_counts_a_known_transfer_and_asks_for_credentials() {
    let dir = common::scratch("dashboard-api");
    let echo = common::start_echo().await;
    let tunnel = free_udp_port();
    let server_dash: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let client_dash: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{tunnel}\"\nkey = \"{}\"\nallow_private = true\n\
             dashboard = \"{server_dash}\"\ndashboard_user = \"admin\"\n\
             dashboard_password = \"s3cret\"\n",
            common::KEY
        ),
    )
    .unwrap();
    let server = Daemon::spawn(
        &dir,
        "server",
        &strings(&["server", "--config", config.to_str().unwrap()]),
    );
    let local = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let client = common::client(
        &dir,
        "client",
        tunnel,
        &[
            "--no-socks",
            "--forward",
            &format!("{local}={echo}"),
            "--dashboard",
            &client_dash.to_string(),
        ],
    );
    bounded(60, async {
        echo_through(local, SENT).await;
        // The collector publishes once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let c = api(client_dash, None);
        assert_eq!(c["schema_version"], 1);
        assert_eq!(c["role"], "client");
        let f = &c["forwards"][0];
        assert_eq!(f["kind"], "tcp", "{c}");
        assert_eq!(f["listen"], local.to_string());
        assert_eq!(f["target"], echo.to_string());
        let up = f["bytes_up"].as_u64().unwrap();
        let down = f["bytes_down"].as_u64().unwrap();
        // The forward's stream carries the target request and its reply besides the data.
        assert!((SENT as u64..SENT as u64 + 64).contains(&up), "{f}");
        assert!((SENT as u64..SENT as u64 + 64).contains(&down), "{f}");
        assert_eq!(f["streams_total"], 1);
        let conn = &c["connections"][0];
        assert_eq!(conn["carrier"], "udp");
        let packets = conn["packets_sent"].as_u64().unwrap();
        let sent = conn["bytes_sent"].as_u64().unwrap();
        // Besides at most 128 bytes of headers and frames per packet, the bytes sent include
        // path MTU probes (padded up to the probed size, which on loopback is ~64 KB), FEC
        // parity and retransmitted stream data (a loaded machine can overflow the loopback
        // socket's receive buffer): all are counted, so all bound the difference.
        let probes = conn["mtu_probes_sent"].as_u64().unwrap() * conn["mtu"].as_u64().unwrap();
        let parity = conn["fec_parity_bytes"].as_u64().unwrap();
        let resent = conn["stream_bytes_retransmitted"].as_u64().unwrap();
        assert!(
            sent >= up && sent <= up + packets * 128 + probes + parity + resent,
            "{conn}"
        );
        assert!(c["totals"]["bytes_sent"].as_u64().unwrap() >= sent);

        // The server asks for credentials, on every path; its figures name the user.
        for path in ["/", "/api/stats", "/metrics"] {
            assert_eq!(http(server_dash, "GET", path, None, None).0, 401, "{path}");
            assert_eq!(
                http(server_dash, "GET", path, Some("admin:nope"), None).0,
                401,
                "{path}"
            );
        }
        let s = api(server_dash, Some("admin:s3cret"));
        assert_eq!(s["role"], "server");
        let u = &s["users"][0];
        assert_eq!(u["name"], "key 1", "{s}");
        assert_eq!(u["connections"], 1);
        let received = u["traffic"]["bytes_received"].as_u64().unwrap();
        assert!(received >= SENT as u64 && received <= sent + 4096, "{u}");
        assert_eq!(s["connections"][0]["user"], "key 1");
        let (status, metrics) = http(server_dash, "GET", "/metrics", Some("admin:s3cret"), None);
        assert_eq!(status, 200);
        assert!(
            metrics.contains("gaptun_user_received_bytes_total{user=\"key 1\"}"),
            "{metrics}"
        );
    })
    .await;

    // `ctl top` prints the screen (once here) with the forward's line.
    let top = common::ctl(&client.control, &["top", "--count", "1"]);
    assert!(top.starts_with("gaptun client on "), "{top}");
    assert!(top.contains(&format!("tcp {local}")), "{top}");
    let log = server.stderr();
    assert!(log.contains("dashboard on http://"), "{log}");
    assert!(
        !log.contains("s3cret"),
        "the password is never logged: {log}"
    );
}

/// A dashboard on a non-loopback address without a password is warned about loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_dashboard_is_warned_about_at_start() {
    let dir = common::scratch("dashboard-warn");
    let tunnel = free_udp_port();
    let server = common::server(
        &dir,
        "server",
        tunnel,
        &["--dashboard", &format!("0.0.0.0:{}", free_tcp_port())],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("HAS NO PASSWORD") {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = server.stderr();
    assert!(log.contains("WARN"), "{log}");
}

// ---- Headless Chromium -------------------------------------------------------------------

/// Set in the re-executed test inside its network namespace.
const IN_NETNS: &str = "GAPTUN_TEST_IN_NETNS";

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// The WebDriver endpoint and session.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path, profile: &Path) -> Self {
        let port = free_tcp_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while StdTcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_str().unwrap(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let (status, body) = http(addr, "POST", "/session", None, Some(&caps));
        assert_eq!(status, 200, "new session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Self {
            driver,
            addr,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let (status, text) = http(self.addr, method, &full, None, body.as_ref());
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads from the forward without end (the source writes without end) until the task stops.
async fn keep_downloading(local: SocketAddr) {
    let mut tcp = connect(local).await;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// A TCP service that sends bytes to whoever connects, without end.
async fn start_source() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x42u8; 16 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

#[test]
fn dashboard_in_headless_chromium() {
    let (Some(chromium), Some(chromedriver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        println!(
            "SKIPPED: chromium or chromedriver not installed (Debian: chromium chromium-driver)"
        );
        return;
    };
    if std::env::var_os(IN_NETNS).is_none() {
        // Run this test again in a new network namespace that has nothing but loopback, so the
        // browser cannot reach anything beyond this machine.
        let exe = std::env::current_exe().unwrap();
        let root = is_root();
        let mut cmd = Command::new("unshare");
        cmd.args(if root { vec!["-n"] } else { vec!["-r", "-n"] });
        let out = cmd
            .arg("--")
            .arg(exe)
            .args([
                "--exact",
                "dashboard_in_headless_chromium",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(IN_NETNS, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(
            out.status.success(),
            "browser test in its namespace failed:\n{text}"
        );
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success(), "cannot bring loopback up in the namespace");
    // Nothing but loopback in here.
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "{links}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = common::scratch("dashboard-browser");
    let source = rt.block_on(start_source());
    let tunnel = free_udp_port();
    let _server = common::server(&dir, "server", tunnel, &["--allow-private"]);
    let local = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let dash = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let _client = common::client(
        &dir,
        "client",
        tunnel,
        &[
            "--no-socks",
            "--forward",
            &format!("{local}={source}"),
            "--dashboard",
            &dash.to_string(),
        ],
    );
    let download = rt.spawn(keep_downloading(local));

    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let browser = Browser::start(&chromium, &chromedriver, &profile);
    browser.call(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{dash}/")})),
    );
    let probe = "return { rows: Array.from(document.querySelectorAll('#conn-table tbody tr'))\
                 .map(r => r.innerText), down: Number(document.getElementById('rate-recv').dataset.value), \
                 status: document.getElementById('status').textContent };";
    let deadline = Instant::now() + Duration::from_secs(30);
    let server_addr = format!("127.0.0.1:{tunnel}");
    let seen = loop {
        let v = browser.script(probe);
        let listed = v["rows"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r.as_str().is_some_and(|t| t.contains(&server_addr)))
        });
        if listed && v["down"].as_f64().is_some_and(|d| d > 0.0) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the connection and a rate: {v}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("page: {seen}");
    // A few more seconds of chart before the picture.
    std::thread::sleep(Duration::from_secs(8));
    let png = browser.call("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/img/dashboard.png");
    std::fs::write(&target, &png).unwrap();
    println!("screenshot: {} ({} bytes)", target.display(), png.len());
    drop(browser);
    download.abort();
}

/// Whether this process runs as root (then `unshare -n` needs no user namespace).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}
