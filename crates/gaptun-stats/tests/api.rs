//! The dashboard's HTTP API against a running tunnel over loopback: the JSON matches the schema
//! in `docs/stats-api.md` field by field, the bytes the test sent are what the API counts
//! (within the packets' headers), `/metrics` passes `promtool check metrics` and its counters
//! only grow, and with credentials set nothing is served without them.

// Test helpers, not production code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine;
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{RtConnection, RtEndpoint};
use gaptun_stats::{Collector, Credentials, Dashboard, ExposeRow, ForwardStats, Sources};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SENT: usize = 3_000_000;

/// A server endpoint that reads every stream to its end and answers with its length.
fn sink_server(psk: Psk) -> RtEndpoint {
    let config = EndpointConfig::server(vec![psk]);
    let ep = RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let accepting = ep.clone();
    tokio::spawn(async move {
        while let Some(conn) = accepting.accept().await {
            tokio::spawn(async move {
                while let Some(mut s) = conn.accept_stream().await {
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => n += k as u64,
                            }
                        }
                        let _ = s.write_all(&n.to_be_bytes()).await;
                        let _ = s.shutdown().await;
                    });
                }
            });
        }
    });
    ep
}

/// Sends `len` bytes through a counted stream and waits for the server's count.
async fn send_counted(conn: &RtConnection, stats: &Arc<ForwardStats>, len: usize) {
    let stream = conn.open_stream().await.unwrap();
    let mut s = stats.count(stream);
    let chunk = vec![0x5a; 32 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    s.shutdown().await.unwrap();
    let mut answer = [0u8; 8];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(u64::from_be_bytes(answer), len as u64);
}

/// One HTTP/1.1 request; (status, headers lowercased, body).
async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(a) = auth {
        let enc = base64::engine::general_purpose::STANDARD.encode(a);
        req.push_str(&format!("Authorization: Basic {enc}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The schema's tables: object name to (field to (type, optional)).
fn schema() -> BTreeMap<String, BTreeMap<String, (String, bool)>> {
    let doc = include_str!("../../../docs/stats-api.md");
    let mut objects = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("## ") {
            current = Some(name.trim().to_owned());
            continue;
        }
        let Some(name) = &current else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let field = cells[1].trim_matches('`').to_owned();
        let optional = cells[3].starts_with("*optional*");
        objects
            .entry(name.clone())
            .or_insert_with(BTreeMap::new)
            .insert(field, (cells[2].to_owned(), optional));
    }
    objects
}

/// Checks `value` against the schema's object `name`, recursively; returns what is wrong.
fn check(
    schema: &BTreeMap<String, BTreeMap<String, (String, bool)>>,
    name: &str,
    value: &Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    let Some(fields) = schema.get(name) else {
        problems.push(format!("{path}: no table `{name}` in docs/stats-api.md"));
        return;
    };
    let Some(obj) = value.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    let documented: BTreeSet<&String> = fields.keys().collect();
    for key in obj.keys() {
        if !documented.contains(key) {
            problems.push(format!("{path}.{key}: not documented"));
        }
    }
    for (field, (ty, optional)) in fields {
        let p = format!("{path}.{field}");
        match obj.get(field) {
            None if *optional => {}
            None => problems.push(format!("{p}: missing")),
            Some(v) => check_type(schema, ty, v, &p, problems),
        }
    }
}

fn check_type(
    schema: &BTreeMap<String, BTreeMap<String, (String, bool)>>,
    ty: &str,
    v: &Value,
    p: &str,
    problems: &mut Vec<String>,
) {
    if let Some(inner) = ty.strip_suffix(" or null") {
        if !v.is_null() {
            check_type(schema, inner, v, p, problems);
        }
        return;
    }
    if let Some(item) = ty.strip_prefix("array of ") {
        match v.as_array() {
            Some(items) => {
                for (i, it) in items.iter().enumerate() {
                    check(schema, item, it, &format!("{p}[{i}]"), problems);
                }
            }
            None => problems.push(format!("{p}: not an array")),
        }
        return;
    }
    if let Some(object) = ty.strip_prefix("object ") {
        check(schema, object, v, p, problems);
        return;
    }
    let ok = match ty {
        "integer" => v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        other => {
            problems.push(format!("{p}: unknown type `{other}` in the schema"));
            return;
        }
    };
    if !ok {
        problems.push(format!("{p}: not {ty}: {v}"));
    }
}

/// `name{labels} value` lines of counters (`_total`), by series.
fn counters(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            let value: f64 = value.parse().ok()?;
            name.ends_with("_total").then(|| (series.to_owned(), value))
        })
        .collect()
}

fn promtool_check(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        println!("SKIPPED promtool check: promtool not installed (Debian package prometheus)");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_schema_traffic_metrics_and_auth() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let psk = Psk::from_bytes([9; 32]);
        let server = sink_server(psk.clone());
        let client =
            RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::client(psk)).unwrap();
        let conn = client.connect(server.local_addr()).await.unwrap();
        let forward = ForwardStats::new("tcp", "127.0.0.1:2222".into(), Some("db:5432".into()));
        let collector = Collector::new(Sources {
            role: "client",
            version: "test".into(),
            endpoint: client.clone(),
            window: Arc::new(AtomicU64::new(1 << 20)),
            key_users: Vec::new(),
            exposes: Box::new(|| {
                vec![ExposeRow {
                    kind: "tcp".into(),
                    ports: "8000".into(),
                    user: None,
                    local: Some("127.0.0.1:9000".into()),
                    visitors_now: 0,
                    visitors_total: 0,
                    bytes_to_service: 0,
                    bytes_to_visitors: 0,
                    to_service_bytes_per_sec: 0.0,
                    to_visitors_bytes_per_sec: 0.0,
                }]
            }),
            forwards: vec![Arc::clone(&forward)],
            offered_carriers: Some("udp 29900, tls 8443".into()),
        });
        tokio::spawn(collector.clone().run());
        let dashboard = Dashboard::bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(Credentials::new("admin", "pw")),
        )
        .await
        .unwrap();
        let addr = dashboard.local_addr().unwrap();
        tokio::spawn(dashboard.serve(collector.clone()));
        let auth = Some("admin:pw");

        // Nothing without the right credentials, the page included.
        for path in [
            "/",
            "/app.js",
            "/api/stats",
            "/api/history",
            "/metrics",
            "/nope",
        ] {
            for wrong in [None, Some("admin:wrong"), Some("root:pw"), Some("admin")] {
                let (status, head, body) = get(addr, path, wrong).await;
                assert_eq!(status, 401, "{path} with {wrong:?}");
                assert!(head.contains("www-authenticate: basic"), "{head}");
                assert!(!body.contains("gaptun"), "{path}: {body}");
            }
        }
        let (status, head, page) = get(addr, "/", auth).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(page.contains("id=\"conn-table\""));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no outside assets"
        );
        assert_eq!(get(addr, "/nope", auth).await.0, 404);

        // Known traffic: the forward counts exactly what was written, the connection that
        // plus the packets' headers.
        send_counted(&conn, &forward, SENT).await;
        let fresh = collector.refresh();
        let c = &fresh.connections[0];
        let headers = 128 * c.packets_sent;
        assert!(
            c.stream_bytes_sent - c.stream_bytes_retransmitted >= SENT as u64
                && c.stream_bytes_sent - c.stream_bytes_retransmitted <= SENT as u64 + 2048,
            "{c:?}"
        );
        assert!(
            c.bytes_sent >= SENT as u64 && c.bytes_sent <= SENT as u64 + headers,
            "{c:?}"
        );

        // The collector's own publication (once a second) shows it with a rate.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (status, head, body) = get(addr, "/api/stats", auth).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let schema = schema();
        let mut problems = Vec::new();
        check(&schema, "stats", &v, "stats", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}\n{v:#}");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["role"], "client");
        assert_eq!(v["connections"].as_array().unwrap().len(), 1);
        assert_eq!(v["connections"][0]["carrier"], "udp");
        assert_eq!(v["offered_carriers"], "udp 29900, tls 8443");
        let f = &v["forwards"][0];
        assert_eq!(f["bytes_up"], SENT as u64, "{f}");
        assert_eq!(f["bytes_down"], 8, "{f}");
        assert_eq!(
            (f["streams_open"].as_u64(), f["streams_total"].as_u64()),
            (Some(0), Some(1))
        );
        let sent = v["totals"]["bytes_sent"].as_u64().unwrap();
        assert!(
            sent >= SENT as u64 && sent <= SENT as u64 + headers + 4096,
            "{v}"
        );

        let (status, _, hist) = get(addr, "/api/history", auth).await;
        assert_eq!(status, 200);
        let h: Value = serde_json::from_str(&hist).unwrap();
        check(&schema, "history", &h, "history", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}\n{h:#}");
        assert!(!h["points"].as_array().unwrap().is_empty());

        // Rates: during a transfer the published figures show bytes per second.
        let busy = {
            let conn = conn.clone();
            let forward = Arc::clone(&forward);
            tokio::spawn(async move { send_counted(&conn, &forward, 6 * SENT).await })
        };
        let mut rx = collector.subscribe();
        let mut seen_rate = 0.0f64;
        for _ in 0..6 {
            rx.changed().await.unwrap();
            let s = rx.borrow_and_update().clone();
            seen_rate = seen_rate.max(s.totals.send_bytes_per_sec);
            seen_rate = seen_rate.max(
                s.forwards[0]
                    .up_bytes_per_sec
                    .min(s.totals.send_bytes_per_sec),
            );
        }
        assert!(seen_rate > 10_000.0, "send rate {seen_rate}");

        // Metrics: valid for promtool, and counters only grow.
        let (status, head, m1) = get(addr, "/metrics", auth).await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        promtool_check(&m1);
        assert!(m1.contains("gaptun_sent_bytes_total "), "{m1}");
        assert!(
            m1.contains("gaptun_forward_up_bytes_total{forward=\"tcp:127.0.0.1:2222\"}"),
            "{m1}"
        );
        busy.await.unwrap();
        send_counted(&conn, &forward, 200_000).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (_, _, m2) = get(addr, "/metrics", auth).await;
        let (c1, c2) = (counters(&m1), counters(&m2));
        assert!(c1.len() >= 10, "{m1}");
        for (series, before) in &c1 {
            let after = c2.get(series).unwrap_or_else(|| panic!("{series} gone"));
            assert!(after >= before, "{series}: {before} then {after}");
        }
        assert!(
            c2["gaptun_sent_bytes_total"] > c1["gaptun_sent_bytes_total"],
            "traffic in between"
        );
        client.close(0, b"");
    })
    .await
    .unwrap();
}

/// A closed connection's bytes stay in the totals (and in the counters of `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_keep_closed_connections() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let psk = Psk::from_bytes([10; 32]);
        let server = sink_server(psk.clone());
        let client =
            RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::client(psk)).unwrap();
        let collector = Collector::new(Sources {
            role: "client",
            version: "test".into(),
            endpoint: client.clone(),
            window: Arc::new(AtomicU64::new(1 << 20)),
            key_users: Vec::new(),
            exposes: Box::new(Vec::new),
            forwards: Vec::new(),
            offered_carriers: None,
        });
        let forward = ForwardStats::new("socks", "127.0.0.1:1080".into(), None);
        let first = client.connect(server.local_addr()).await.unwrap();
        send_counted(&first, &forward, 500_000).await;
        let before = collector.refresh();
        assert!(before.totals.bytes_sent >= 500_000);
        first.close(0, b"done");
        drop(first);
        let second = client.connect(server.local_addr()).await.unwrap();
        send_counted(&second, &forward, 100_000).await;
        // Wait until the first connection has left the endpoint.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let s = collector.refresh();
            if s.connections.len() == 1 && s.not_established == 0 {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            after.totals.bytes_sent >= before.totals.bytes_sent + 100_000,
            "{:?} then {:?}",
            before.totals,
            after.totals
        );
        assert!(after.connections[0].bytes_sent < after.totals.bytes_sent - 500_000);
    })
    .await
    .unwrap();
}

/// A server with two threads: `ctl stats json` (the collector's figures) has one row per
/// shard whose connections add up to the server's, as docs/stats-api.md describes them, and
/// `/metrics` has the per-shard families
/// (valid for promtool), the inbox drops among them; one shard has no rows and no families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_server_reports_each_shard() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let psk = Psk::from_bytes([9; 32]);
        let server = RtEndpoint::bind_sharded(
            &["127.0.0.1:0".parse().unwrap()],
            EndpointConfig::server(vec![psk.clone()]),
            2,
        )
        .unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let client = RtEndpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                EndpointConfig::client(psk.clone()),
            )
            .unwrap();
            let conn = client.connect(server.local_addr()).await.unwrap();
            clients.push((client, conn));
        }
        let sources = |endpoint: RtEndpoint| Sources {
            role: "server",
            version: "test".into(),
            endpoint,
            window: Arc::new(AtomicU64::new(1 << 20)),
            key_users: Vec::new(),
            exposes: Box::new(Vec::new),
            forwards: Vec::new(),
            offered_carriers: None,
        };
        let stats = Collector::new(sources(server.clone())).refresh();
        assert_eq!(stats.shards.len(), 2, "{stats:?}");
        assert_eq!(stats.shards.iter().map(|s| s.connections).sum::<u64>(), 4);
        assert!(stats.shards.iter().all(|s| s.passed_dropped == 0));
        let json: Value = serde_json::to_value(&*stats).unwrap();
        let mut problems = Vec::new();
        check(&schema(), "stats", &json, "stats", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}\n{json:#}");
        assert_eq!(json["shards"].as_array().map(Vec::len), Some(2));
        assert!(json["shards"][1].get("passed_dropped").is_some());
        let text = gaptun_stats::prom::render(&stats).unwrap();
        for family in [
            "gaptun_shard_connections{shard=\"1\"}",
            "gaptun_shard_busy_seconds_total{shard=\"0\"}",
            "gaptun_shard_passed_datagrams_total{shard=\"1\"} 0",
            "gaptun_shard_passed_dropped_datagrams_total{shard=\"0\"} 0",
            "gaptun_shard_truncated_datagrams_total{shard=\"1\"} 0",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        promtool_check(&text);

        let (client, _) = &clients[0];
        let single = Collector::new(sources(client.clone())).refresh();
        assert!(single.shards.is_empty());
        let json: Value = serde_json::to_value(&*single).unwrap();
        assert!(json.get("shards").is_none(), "left out with one shard");
        assert!(
            !gaptun_stats::prom::render(&single)
                .unwrap()
                .contains("gaptun_shard_")
        );
        for (client, _) in &clients {
            client.close(0, b"");
        }
        server.close(0, b"");
    })
    .await
    .expect("within 60 s");
}
