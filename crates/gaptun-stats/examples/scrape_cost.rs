//! What the stats cost the data path: a server with 200 connections (one of them carrying a
//! bulk transfer, the others idle with an open stream each) is measured in alternating
//! windows with its collector running and `/metrics` plus `/api/stats` scraped every second,
//! and without either. Prints the goodput of each window and the difference of the means.
//!
//! ```text
//! cargo run --release -p gaptun-stats --example scrape_cost [ROUNDS] [WINDOW_SECS]
//! ```
//!
//! Everything runs on loopback in one process, on a 2-worker runtime like the daemons'.

// A benchmark program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gaptun_proto::config::TokenRate;
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{RtConnection, RtEndpoint};
use gaptun_stats::{Collector, Dashboard, Sources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 200;

async fn scrape(addr: SocketAddr, path: &str) -> usize {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut body = Vec::new();
    tcp.read_to_end(&mut body).await.unwrap();
    body.len()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let window = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(5));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rounds, window));
}

async fn run(rounds: usize, window: Duration) {
    let psk = Psk::from_bytes([7; 32]);
    let mut config = EndpointConfig::server(vec![psk.clone()]);
    config.limits.handshakes_per_source = TokenRate {
        burst: 1024,
        per_second: 1024,
    };
    let server = RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let received = Arc::new(AtomicU64::new(0));
    {
        let server = server.clone();
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(conn) = server.accept().await {
                let received = Arc::clone(&received);
                tokio::spawn(async move {
                    while let Some(mut s) = conn.accept_stream().await {
                        let received = Arc::clone(&received);
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            while let Ok(n) = s.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                received.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        });
                    }
                });
            }
        });
    }
    let client =
        RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::client(psk)).unwrap();
    let mut conns: Vec<RtConnection> = Vec::new();
    let mut idle_streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let c = client.connect(server.local_addr()).await.unwrap();
        let mut s = c.open_stream().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        idle_streams.push(s);
        conns.push(c);
    }
    println!("{CONNECTIONS} connections up");
    let bulk = conns[0].open_stream().await.unwrap();
    tokio::spawn(async move {
        let mut bulk = bulk;
        let chunk = vec![0x33u8; 64 * 1024];
        while bulk.write_all(&chunk).await.is_ok() {}
    });

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
    let dashboard = Dashboard::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let dash = dashboard.local_addr().unwrap();
    tokio::spawn(dashboard.serve(collector.clone()));

    // Warm up: let the transfer reach its pace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..rounds {
        // ABBA order, so that a drift of the machine's load favours neither side.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for scraping in order {
            let tasks = scraping.then(|| {
                let collecting = tokio::spawn(collector.clone().run());
                let scraper = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        let m = scrape(dash, "/metrics").await;
                        let a = scrape(dash, "/api/stats").await;
                        assert!(m > 1000 && a > 10_000, "scrapes answered ({m}, {a} bytes)");
                    }
                });
                (collecting, scraper)
            });
            let start_bytes = received.load(Ordering::Relaxed);
            let start = Instant::now();
            tokio::time::sleep(window).await;
            let bytes = received.load(Ordering::Relaxed) - start_bytes;
            let mbit = bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6;
            if let Some((c, s)) = tasks {
                c.abort();
                s.abort();
            }
            println!(
                "round {round} {:<12} {mbit:8.1} Mbit/s",
                if scraping { "scraped" } else { "not scraped" }
            );
            if scraping { &mut on } else { &mut off }.push(mbit);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (mean(&on), mean(&off));
    println!(
        "mean goodput: scraped {a:.1} Mbit/s, not scraped {b:.1} Mbit/s, change {:+.2} %",
        (a - b) * 100.0 / b
    );
    // The work itself, timed in a loop: what one second of stats costs with 200 connections
    // (the driver's four snapshots, one collection, one /api/stats and one /metrics), in CPU
    // time of this thread (wall time on a shared machine counts the others' turns too).
    const N: u32 = 200;
    let cpu = || {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
        Duration::from(t)
    };
    let t = cpu();
    for _ in 0..N {
        let _ = server.refresh_snapshot();
    }
    let snapshot = (cpu() - t) / N;
    let t = cpu();
    let mut json_len = 0;
    let mut metrics_len = 0;
    for _ in 0..N {
        let s = collector.refresh();
        json_len = serde_json::to_string(&*s).unwrap().len();
        metrics_len = gaptun_stats::prom::render(&s).unwrap().len();
    }
    let collect = (cpu() - t) / N;
    let per_second = snapshot * 4 + collect;
    println!(
        "stats work: driver snapshot {snapshot:?} (4 a second), collect + /api/stats ({json_len} B) + \
         /metrics ({metrics_len} B) {collect:?}: {per_second:?} per second = {:.3} % of one core (CPU time)",
        per_second.as_secs_f64() * 100.0
    );
    drop(idle_streams);
    client.close(0, b"");
}
