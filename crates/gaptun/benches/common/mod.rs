//! Helpers shared by the daemon benchmarks (`daemon`, `scale`): ports, scratch directories,
//! the `gaptun` binary, and the bulk source and sink.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use gaptun_bench_support::env_u64;

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty scratch directory of this process, named after the benchmark.
pub fn scratch(bench: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaptun-{bench}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn gaptun() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gaptun"));
    c.env_remove("RUST_LOG").env_remove("GAPTUN_KEY");
    c
}

/// Writes random data until the peer goes away.
pub async fn pump_out(mut tcp: TcpStream) {
    let mut block = vec![0u8; 256 * 1024];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    while tcp.write_all(&block).await.is_ok() {}
}

/// Reads and counts until EOF.
pub async fn pump_in(mut tcp: TcpStream, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
