//! Loopback bulk through an expose: one visitor downloads from a local service published by a
//! client, everything in one process over real loopback sockets (gaptun on UDP, TCP for the
//! visitor and the service). Prints Gbit/s. Run with
//! `cargo run --release -p gaptun-apps --example expose_bulk [MiB]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use gaptun_apps::DialConfig;
use gaptun_apps::expose::{
    ExposeClient, ExposeClientConfig, ExposePeer, ExposeServer, ExposeServerConfig,
};
use gaptun_apps::policy::TargetPolicy;
use gaptun_apps::tunnel::{StreamAcceptor, StreamOpener};
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{ClientPool, PoolConfig, RtConnection, RtEndpoint, RtStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
struct Conn(RtConnection);

impl StreamOpener for Conn {
    type Stream = RtStream;

    fn open(&self) -> impl Future<Output = io::Result<RtStream>> + Send {
        let conn = self.0.clone();
        async move { conn.open_stream().await }
    }
}

impl StreamAcceptor for Conn {
    type Accepted = RtStream;

    fn accept(&self) -> impl Future<Output = Option<RtStream>> + Send {
        let conn = self.0.clone();
        async move { conn.accept_stream().await }
    }
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(1024, |a| a.parse().expect("size in MiB"));
    let total = mib * 1024 * 1024;
    let key = Psk::from_bytes([9; 32]);

    // Find a free port for the expose.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let endpoint = RtEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointConfig::server(vec![key.clone()]),
    )
    .unwrap();
    let expose: ExposeServer<Conn> = ExposeServer::new(ExposeServerConfig {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        allowed: port.to_string().parse().unwrap(),
        ..ExposeServerConfig::default()
    });
    let server_ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(conn) = server_ep.accept().await {
            let peer = ExposePeer {
                owner: "bench".into(),
                opener: Conn(conn.clone()),
                allowed: None,
                flows: None,
            };
            let expose = expose.clone();
            tokio::spawn(async move {
                while let Some(stream) = conn.accept_stream().await {
                    let (expose, peer) = (expose.clone(), peer.clone());
                    tokio::spawn(async move {
                        let policy = TargetPolicy::new();
                        let _ = expose
                            .serve_stream(stream, &peer, &policy, &DialConfig::default())
                            .await;
                    });
                }
            });
        }
    });

    // The local service: sends `total` bytes to whoever connects.
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = service.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = service.accept().await.unwrap();
        let chunk = vec![0x5au8; 256 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            tcp.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        tcp.shutdown().await.unwrap();
    });

    let pool = ClientPool::connect(
        &endpoint.local_addr().to_string(),
        EndpointConfig::client(key),
        PoolConfig::default(),
    )
    .await
    .unwrap();
    let spec = format!("{port}={service_addr}").parse().unwrap();
    let client = ExposeClient::new(vec![spec], ExposeClientConfig::default()).unwrap();
    let conn = pool.connections().into_iter().next().unwrap();
    let registration = client.register(Conn(conn)).await.unwrap();
    assert!(registration.refusals().is_empty());
    tokio::spawn(registration.serve());

    let start = Instant::now();
    let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let first_byte = {
        let mut one = [0u8; 1];
        visitor.read_exact(&mut one).await.unwrap();
        start.elapsed()
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 1usize;
    loop {
        let n = visitor.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, total);
    println!(
        "expose loopback bulk: {mib} MiB in {secs:.2} s = {:.2} Gbit/s (first byte after {:.2} ms)",
        total as f64 * 8.0 / secs / 1e9,
        first_byte.as_secs_f64() * 1e3
    );
    pool.shutdown(Duration::from_secs(1)).await;
    endpoint.shutdown(Duration::from_secs(1)).await;
}
