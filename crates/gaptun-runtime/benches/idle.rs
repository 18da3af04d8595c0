//! What idle connections cost a server: `cargo bench -p gaptun-runtime --bench idle`
//! (release build).
//!
//! For each count of idle connections (1, 1 000, 10 000 by default), one server endpoint on
//! loopback holds that many connections from one client endpoint that never uses them, and a
//! second client endpoint runs request/response round trips (1 byte each way) on one more
//! connection. Reported per count: the round trip's wall time, the server driver's busy time
//! per round trip (`ShardFigures::busy`: receiving, timers, events, sending), and, while
//! nothing but the idle connections exists, the server driver's busy time per second and the
//! CPU time per second of the whole process (server and idle client, each holding all the
//! connections and publishing its stats snapshot every 250 ms). Uses only the runtime's public
//! API, so the same file measures any version of the driver side by side.
//!
//! Environment: `GAPTUN_BENCH_IDLE` (comma-separated counts), `GAPTUN_BENCH_ROUNDS` (round
//! trips per count, default 4000), `GAPTUN_BENCH_IDLE_SECS` (length of the idle measurement,
//! default 2 s; 10 s or more covers a whole keepalive interval), `GAPTUN_BENCH_KEEPALIVE=off`
//! (no keepalives on either side, so that the idle figures show what the drivers do by
//! themselves: the timers and the stats snapshots). Prints a Markdown table on stdout,
//! progress on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gaptun_bench_support::{env_u64, loadavg, process_cpu};
use gaptun_proto::config::EndpointLimits;
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{RtConnection, RtEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn psk() -> Psk {
    Psk::from_bytes([42; 32])
}

/// Whether keepalives stay on (`GAPTUN_BENCH_KEEPALIVE=off` turns them off).
fn keepalive() -> bool {
    std::env::var("GAPTUN_BENCH_KEEPALIVE").map_or(true, |v| v != "off")
}

fn client_config() -> EndpointConfig {
    let mut config = EndpointConfig::client(psk());
    if !keepalive() {
        config.transport.keepalive_interval = None;
    }
    config
}

/// Limits that let one address open all the idle connections at once.
fn server_config(idle: usize) -> EndpointConfig {
    let mut config = EndpointConfig::server(vec![psk()]);
    if !keepalive() {
        config.transport.keepalive_interval = None;
    }
    config.limits = EndpointLimits::for_one_source(2 * idle + 16);
    config
}

fn server_busy(server: &RtEndpoint) -> Duration {
    server
        .refresh_snapshot()
        .shards
        .iter()
        .map(|s| s.busy)
        .sum()
}

/// Accepts connections; each one's streams are echoed byte for byte.
async fn echo_server(server: RtEndpoint) {
    while let Some(conn) = server.accept().await {
        tokio::spawn(async move {
            while let Some(mut stream) = conn.accept_stream().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

struct Figures {
    round_trip: Duration,
    busy_per_round_trip: Duration,
    idle_busy_per_s: Duration,
    idle_cpu_per_s: Duration,
}

async fn measure(idle: usize, rounds: u32, idle_secs: u64) -> Figures {
    let server = RtEndpoint::bind(loopback(), server_config(idle)).unwrap();
    let target = server.local_addr();
    tokio::spawn(echo_server(server.clone()));
    let idle_client = RtEndpoint::bind(loopback(), client_config()).unwrap();
    let mut idle_conns: Vec<RtConnection> = Vec::with_capacity(idle);
    // In batches, so the handshakes do not all time out waiting for one another.
    for chunk in 0..idle.div_ceil(250) {
        let n = (idle - chunk * 250).min(250);
        let mut tasks = Vec::new();
        for _ in 0..n {
            let c = idle_client.clone();
            tasks.push(tokio::spawn(async move { c.connect(target).await }));
        }
        for t in tasks {
            idle_conns.push(t.await.unwrap().expect("idle connection"));
        }
    }
    eprintln!("{idle} idle connections up");
    // Let the handshakes' tails (confirmations, delayed ACKs) pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = std::process::id();
    let (b0, c0, t0) = (server_busy(&server), process_cpu(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (b1, c1, t1) = (server_busy(&server), process_cpu(pid), Instant::now());
    let idle_busy_per_s = (b1 - b0).div_f64((t1 - t0).as_secs_f64());
    let idle_cpu_per_s = (c1 - c0).div_f64((t1 - t0).as_secs_f64());

    let client = RtEndpoint::bind(loopback(), client_config()).unwrap();
    let conn = client.connect(target).await.unwrap();
    let mut stream = conn.open_stream().await.unwrap();
    let mut byte = [0u8; 1];
    for _ in 0..rounds / 10 {
        stream.write_all(&[1]).await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
    }
    let (b0, t0) = (server_busy(&server), Instant::now());
    for i in 0..rounds {
        stream.write_all(&[i as u8]).await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte[0], i as u8, "echoed");
    }
    let (b1, t1) = (server_busy(&server), Instant::now());
    assert_eq!(server.refresh_snapshot().connections.len(), idle + 1);
    drop(stream);
    drop(conn);
    drop(idle_conns);
    client.close(0, b"");
    idle_client.close(0, b"");
    server.close(0, b"");
    Figures {
        round_trip: (t1 - t0) / rounds,
        busy_per_round_trip: (b1 - b0) / rounds,
        idle_busy_per_s,
        idle_cpu_per_s,
    }
}

async fn run() {
    let counts: Vec<usize> = std::env::var("GAPTUN_BENCH_IDLE")
        .unwrap_or_else(|_| "1,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: u32 = std::env::var("GAPTUN_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let idle_secs = env_u64("GAPTUN_BENCH_IDLE_SECS", 2).max(1);
    println!("load average before: {}", loadavg());
    println!(
        "idle measured over {idle_secs} s, keepalives {}\n",
        if keepalive() { "on" } else { "off" }
    );
    println!(
        "| idle connections | round trip (µs) | server driver busy per round trip (µs) | server driver busy while idle (ms/s) | process CPU while idle (ms/s) |"
    );
    println!("|---|---|---|---|---|");
    for idle in counts {
        let f = measure(idle, rounds, idle_secs).await;
        println!(
            "| {idle} | {:.1} | {:.1} | {:.2} | {:.1} |",
            f.round_trip.as_secs_f64() * 1e6,
            f.busy_per_round_trip.as_secs_f64() * 1e6,
            f.idle_busy_per_s.as_secs_f64() * 1e3,
            f.idle_cpu_per_s.as_secs_f64() * 1e3,
        );
    }
    println!("\nload average after: {}", loadavg());
}
