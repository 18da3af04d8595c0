//! UDP echo through a UDP forward over a lossy path (issue 10's latency target): a sender puts
//! one numbered datagram per 20 ms (50/s) into a `--forward udp:`-style forward, an echo server
//! behind the tunnel server sends each one back, and the round trip of every datagram that
//! comes back is recorded. The tunnel runs over real loopback UDP through
//! `gaptun_runtime::lossy_relay` (random loss and a fixed delay each way), in one process.
//!
//! It runs twice on the same path: relays over transport datagrams (this version) and relays
//! framed on their stream (what an older server gets, and what every relay used before), and
//! prints p50 / p99 / max in milliseconds and in RTTs. Run with
//! `cargo run --release -p gaptun-apps --example udp_echo_latency [SECONDS] [LOSS] [ONE_WAY_MS]`
//! (defaults: 60 s, 0.05, 50 ms).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaptun_apps::flow::{DatagramIo, FlowMux, ReadDatagram};
use gaptun_apps::forward::serve_udp_forward;
use gaptun_apps::policy::TargetPolicy;
use gaptun_apps::relay::serve_stream_with_flows;
use gaptun_apps::tunnel::StreamOpener;
use gaptun_apps::{DialConfig, TargetAddr};
use gaptun_proto::{CongestionKind, EndpointConfig, Psk};
use gaptun_runtime::lossy_relay::{LossyConfig, LossyRelay};
use gaptun_runtime::{RtConnection, RtDatagrams, RtEndpoint, RtStream};
use tokio::net::UdpSocket;

struct Io(RtDatagrams);

impl DatagramIo for Io {
    fn max_datagram_size(&self) -> Option<usize> {
        self.0.max_size()
    }
    fn send_datagram(&self, data: Vec<u8>) -> io::Result<()> {
        self.0.send(data)
    }
    fn read_datagram(&self) -> ReadDatagram<'_> {
        Box::pin(async move { self.0.read().await.map_err(io::Error::from) })
    }
}

/// The client's connection; with `flows`, UDP relays use its datagrams.
#[derive(Clone)]
struct Conn {
    conn: RtConnection,
    flows: Option<FlowMux>,
}

impl StreamOpener for Conn {
    type Stream = RtStream;

    fn open(&self) -> impl Future<Output = io::Result<RtStream>> + Send {
        let conn = self.conn.clone();
        async move { conn.open_stream().await }
    }

    fn flows(&self, _stream: &RtStream) -> Option<FlowMux> {
        self.flows.clone()
    }
}

struct Figures {
    sent: usize,
    received: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

async fn run(datagrams: bool, seconds: u64, loss: f64, one_way: Duration) -> Figures {
    let key = Psk::from_bytes([7; 32]);
    let mut server_config = EndpointConfig::server(vec![key.clone()]);
    let mut client_config = EndpointConfig::client(key);
    if let Ok(cc) = std::env::var("GAPTUN_BENCH_CC") {
        let kind = match cc.as_str() {
            "none" => CongestionKind::None,
            _ => CongestionKind::Bbr,
        };
        server_config.transport.congestion = kind;
        client_config.transport.congestion = kind;
    }
    let server = RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), server_config).unwrap();
    let server_ep = server.clone();
    tokio::spawn(async move {
        while let Some(conn) = server_ep.accept().await {
            let flows = datagrams.then(|| FlowMux::new(Arc::new(Io(conn.datagrams()))));
            tokio::spawn(async move {
                let mut policy = TargetPolicy::new();
                policy.allow_private = true;
                let policy = Arc::new(policy);
                while let Some(stream) = conn.accept_stream().await {
                    let (policy, flows) = (Arc::clone(&policy), flows.clone());
                    tokio::spawn(async move {
                        let dial = DialConfig::default();
                        let _ =
                            serve_stream_with_flows(stream, &policy, &dial, flows.as_ref()).await;
                    });
                }
            });
        }
    });
    let mut lossy = LossyConfig::new("127.0.0.1:0".parse().unwrap(), server.local_addr());
    lossy.loss = loss;
    lossy.delay = one_way;
    lossy.seed = 2026;
    let relay = LossyRelay::spawn(lossy).await.unwrap();

    // The echo service behind the tunnel server.
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });

    let client = RtEndpoint::bind("127.0.0.1:0".parse().unwrap(), client_config).unwrap();
    let conn = client.connect(relay.local_addr()).await.unwrap();
    let flows = datagrams.then(|| FlowMux::new(Arc::new(Io(conn.datagrams()))));
    let opener = Conn {
        conn: conn.clone(),
        flows,
    };
    let forward = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forward_addr: SocketAddr = forward.local_addr().unwrap();
    tokio::spawn(serve_udp_forward(
        forward,
        TargetAddr::Ip(echo_addr),
        opener,
        Duration::from_secs(120),
    ));

    let app = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let count = (seconds * 50) as u32;
    let start = Instant::now();
    let receiver = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut rtts = HashMap::new();
            let mut buf = vec![0u8; 2048];
            let deadline = tokio::time::sleep(Duration::from_secs(seconds + 3));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = app.recv_from(&mut buf) => {
                        let Ok((n, _)) = r else { break };
                        if n < 12 { continue; }
                        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                        let sent_us = u64::from_be_bytes(buf[4..12].try_into().unwrap());
                        let now_us = start.elapsed().as_micros() as u64;
                        rtts.entry(seq).or_insert(now_us.saturating_sub(sent_us));
                    }
                    () = &mut deadline => break,
                }
            }
            rtts
        })
    };
    // A warm-up datagram sets up the relay session (not counted).
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..count {
        ticker.tick().await;
        // 200 bytes: a voice or game packet.
        let mut d = vec![0u8; 200];
        d[..4].copy_from_slice(&seq.to_be_bytes());
        d[4..12].copy_from_slice(&(start.elapsed().as_micros() as u64).to_be_bytes());
        app.send_to(&d, forward_addr).await.unwrap();
    }
    let rtts = receiver.await.unwrap();
    // The first second is the relay set-up (handshake losses, reply): not steady state.
    let mut samples: Vec<f64> = rtts
        .iter()
        .filter(|(seq, _)| **seq >= 50)
        .map(|(_, us)| *us as f64 / 1000.0)
        .collect();
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Figures {
        sent: count as usize - 50,
        received: samples.len(),
        p50: pick(0.5),
        p99: pick(0.99),
        max: *samples.last().unwrap(),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(60, |a| a.parse().expect("seconds"));
    let loss: f64 = args.next().map_or(0.05, |a| a.parse().expect("loss"));
    let one_way = Duration::from_millis(args.next().map_or(50, |a| a.parse().expect("ms")));
    let rtt = one_way.as_secs_f64() * 2000.0;
    println!(
        "UDP echo through a forward, 50 datagrams/s of 200 bytes for {seconds} s, \
         {:.0} % loss each way, RTT {rtt:.0} ms",
        loss * 100.0
    );
    println!("| relay | sent | echoed | p50 ms | p99 ms | max ms | p99 / RTT | max / RTT |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, datagrams) in [("stream (before)", false), ("datagrams (after)", true)] {
        let f = run(datagrams, seconds, loss, one_way).await;
        println!(
            "| {name} | {} | {} ({:.1} %) | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            f.sent,
            f.received,
            f.received as f64 * 100.0 / f.sent as f64,
            f.p50,
            f.p99,
            f.max,
            f.p99 / rtt,
            f.max / rtt
        );
    }
}
