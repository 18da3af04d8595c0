//! Helpers shared by the runtime's end-to-end tests: keys, payloads, time bounds, SHA-256 of
//! what a stream carries, and a server that answers every stream with that hash.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{ClientPool, PoolConfig, RtConnection, RtEndpoint};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A pre-shared key; tests that must not meet each other's servers use different `n`.
pub fn key(n: u8) -> Psk {
    Psk::from_bytes([n; 32])
}

/// Runs `f`, failing the test if it takes more than `secs` seconds (a stuck transfer fails
/// instead of hanging the suite).
pub async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

/// Deterministic pseudo-random bytes (xorshift), so corruption cannot hide in repeated patterns.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads `reader` to its end (or first error): how many bytes came and their SHA-256.
pub async fn read_hashed<R: AsyncRead + Unpin>(reader: &mut R) -> (usize, Vec<u8>) {
    let mut hasher = Sha256::new();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n;
            }
        }
    }
    (total, hasher.finalize().to_vec())
}

/// Accepts connections; on each, reads every stream to its end and answers with the SHA-256 of
/// what it read.
pub async fn hash_server(ep: RtEndpoint) {
    while let Some(conn) = ep.accept().await {
        tokio::spawn(async move {
            while let Some(stream) = conn.accept_stream().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream);
                    let (_, digest) = read_hashed(&mut r).await;
                    let _ = w.write_all(&digest).await;
                    let _ = w.shutdown().await;
                });
            }
        });
    }
}

/// Sends `data` on a new stream in chunks, `pause` apart, and checks the server's hash of it.
pub async fn send_and_check(conn: &RtConnection, data: &[u8], chunk: usize, pause: Duration) {
    let stream = conn.open_stream().await.unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    for c in data.chunks(chunk) {
        w.write_all(c).await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    w.shutdown().await.unwrap();
    let mut answer = Vec::new();
    r.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, Sha256::digest(data).to_vec(), "data arrived intact");
}

/// `n` consecutive free UDP ports on 127.0.0.1, bound (kept open so nobody takes them).
pub fn consecutive_ports(n: u16) -> Vec<StdUdpSocket> {
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9;
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = 20_000 + ((seed >> 33) % 40_000) as u16;
        let bound: Vec<StdUdpSocket> = (0..n)
            .map_while(|i| StdUdpSocket::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if bound.len() == usize::from(n) {
            return bound;
        }
    }
    panic!("no {n} consecutive free UDP ports on loopback");
}

/// The addresses of bound sockets.
pub fn addrs(sockets: &[StdUdpSocket]) -> Vec<SocketAddr> {
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// A hash server (keyed `key(42)`) listening on `n` consecutive loopback ports, and its ports.
pub fn range_hash_server(n: u16) -> (RtEndpoint, Vec<SocketAddr>) {
    range_hash_server_skipping(n, 0)
}

/// As [`range_hash_server`], but the first `skip` ports of the range are left closed (they are
/// still returned). The ports are found free by binding them and freed for the endpoint to bind,
/// so another program (a client's ephemeral port) may take one in between: then another range
/// is tried.
pub fn range_hash_server_skipping(n: u16, skip: usize) -> (RtEndpoint, Vec<SocketAddr>) {
    for _ in 0..20 {
        let sockets = consecutive_ports(n);
        let ports = addrs(&sockets);
        drop(sockets);
        let config = EndpointConfig::server(vec![key(42)]);
        match RtEndpoint::bind_all(&ports[skip..], config) {
            Ok(server) => {
                tokio::spawn(hash_server(server.clone()));
                return (server, ports);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("cannot bind the server's ports: {e}"),
        }
    }
    panic!("no free range of {n} UDP ports stayed free long enough to bind");
}

/// A client pool (keyed `key(42)`) on the server port range `first`..=`last`.
pub async fn range_client(first: SocketAddr, last: SocketAddr, config: PoolConfig) -> ClientPool {
    let target = format!("{}:{}-{}", first.ip(), first.port(), last.port());
    ClientPool::connect(&target, EndpointConfig::client(key(42)), config)
        .await
        .unwrap()
}
