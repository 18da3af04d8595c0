//! What the stats cost with many idle connections, outside the drivers: a server endpoint
//! holding `N` idle connections from one client endpoint on loopback, then, in this thread's
//! CPU time (20 repetitions each): bringing the endpoint's snapshot up to date
//! (`refresh_snapshot`, what `ctl stats` asks for: only the connections touched since the last
//! read are read again), one collection (`Collector::refresh`: every connection's row, the
//! totals, the users; the daemon collects once a second), and the `/api/stats` JSON plus the
//! `/metrics` text of one collection (per scrape).
//!
//! ```text
//! cargo run --release -p gaptun-stats --example collect_cost [N ...]   # default 1000 10000
//! ```

// A benchmark program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use gaptun_proto::config::EndpointLimits;
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{RtConnection, RtEndpoint};
use gaptun_stats::{Collector, Sources};

/// Repetitions of each piece of work.
const REPEAT: u32 = 20;

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1000, 10_000]
    } else {
        counts
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("load average before: {}\n", gaptun_bench_support::loadavg());
    println!(
        "| idle connections | refresh_snapshot (µs) | collection (ms) | /api/stats + /metrics (ms) | JSON size (MB) |"
    );
    println!("|---|---|---|---|---|");
    for n in counts {
        rt.block_on(measure(n));
    }
    println!("\nload average after: {}", gaptun_bench_support::loadavg());
}

/// This thread's CPU time so far.
fn cpu() -> Duration {
    Duration::from(nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap())
}

async fn measure(n: usize) {
    let psk = Psk::from_bytes([7; 32]);
    let mut config = EndpointConfig::server(vec![psk.clone()]);
    config.limits = EndpointLimits::for_one_source(n + 16);
    let server = RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let accepting = server.clone();
    let accepted = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(conn) = accepting.accept().await {
            held.push(conn);
        }
        held
    });
    let client =
        RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::client(psk)).unwrap();
    let mut conns: Vec<RtConnection> = Vec::with_capacity(n);
    // In batches, so the handshakes do not all time out waiting for one another.
    for batch in 0..n.div_ceil(250) {
        let mut tasks = Vec::new();
        for _ in 0..(n - batch * 250).min(250) {
            let c = client.clone();
            let target = server.local_addr();
            tasks.push(tokio::spawn(async move { c.connect(target).await }));
        }
        for t in tasks {
            conns.push(t.await.unwrap().unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let collector = Collector::new(Sources {
        role: "server",
        version: "bench".into(),
        endpoint: server.clone(),
        window: Arc::new(AtomicU64::new(0)),
        key_users: vec!["bench".into()],
        exposes: Box::new(Vec::new),
        forwards: Vec::new(),
        offered_carriers: None,
    });
    let t = cpu();
    for _ in 0..REPEAT {
        let _ = server.refresh_snapshot();
    }
    let snapshot = (cpu() - t) / REPEAT;
    let t = cpu();
    let mut rows = 0;
    for _ in 0..REPEAT {
        rows = collector.refresh().connections.len();
    }
    let collect = (cpu() - t) / REPEAT;
    assert_eq!(rows, n, "every connection established and listed");
    let stats = collector.latest();
    let t = cpu();
    let mut json = 0;
    for _ in 0..REPEAT {
        json = serde_json::to_string(&*stats).unwrap().len();
        let _ = gaptun_stats::prom::render(&stats).unwrap();
    }
    let scrape = (cpu() - t) / REPEAT;
    println!(
        "| {n} | {:.1} | {:.2} | {:.2} | {:.2} |",
        snapshot.as_secs_f64() * 1e6,
        collect.as_secs_f64() * 1e3,
        scrape.as_secs_f64() * 1e3,
        json as f64 / 1e6
    );
    drop(conns);
    client.close(0, b"");
    server.close(0, b"");
    accepted.abort();
}
