//! Server crashes and restarts over real loopback sockets: a server that dies without a word
//! (its runtime is torn down, as `kill -9` would) must be noticed by a reading stream within
//! seconds, with an error rather than a clean end; clients must work again soon after the
//! server is back, also behind a NAT-like relay; and abandoned handshakes and closed
//! connections must leave the endpoint.

// Test helpers, not production code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{bounded, key};
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::lossy_relay::{LossyConfig, LossyRelay};
use gaptun_runtime::{ClientPool, PoolConfig, RtConnection, RtEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server on its own thread and tokio runtime, so that it can die without sending anything:
/// [`Server::kill`] tears the runtime down, dropping the socket and every connection unsent.
struct Server {
    addr: SocketAddr,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and serves: each stream gets its first byte echoed, then (for `b'S'`) an
    /// endless flow of data, or (for anything else) an echo of the rest.
    fn start(addr: SocketAddr, psk: Psk) -> Self {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ep = RtEndpoint::bind(addr, EndpointConfig::server(vec![psk])).unwrap();
                addr_tx.send(ep.local_addr()).unwrap();
                tokio::spawn(serve(ep.clone()));
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                // No goodbye: the endpoint must not get to send CLOSE frames.
                std::mem::forget(ep);
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Dies at once, like a process killed with SIGKILL; the port is free when this returns.
    fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn serve(ep: RtEndpoint) {
    while let Some(conn) = ep.accept().await {
        tokio::spawn(serve_conn(conn));
    }
}

async fn serve_conn(conn: RtConnection) {
    while let Some(stream) = conn.accept_stream().await {
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let mut first = [0u8; 1];
            if r.read_exact(&mut first).await.is_err() || w.write_all(&first).await.is_err() {
                return;
            }
            if first[0] == b'S' {
                let chunk = vec![0x5a; 64 * 1024];
                while w.write_all(&chunk).await.is_ok() {}
            } else {
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        });
    }
}

/// One request/answer on a new stream of the pool, within `limit`.
async fn works(pool: &ClientPool, limit: Duration) -> bool {
    let attempt = async {
        let mut stream = pool.open_stream().await.ok()?;
        stream.write_all(b"Ehello").await.ok()?;
        stream.shutdown().await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        (answer == b"Ehello").then_some(())
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(())))
}

/// Retries [`works`] until it succeeds; returns how long that took from `since`, or `None`
/// after `limit`.
async fn time_until_working(
    pool: &ClientPool,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if works(pool, Duration::from_millis(500)).await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn pool_config() -> PoolConfig {
    PoolConfig {
        open_wait: Duration::from_secs(3),
        ..PoolConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_the_reading_stream_and_the_pool_recovers() {
    bounded(40, async {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), key(31));
        let addr = server.addr;
        let pool = ClientPool::connect(
            &addr.to_string(),
            EndpointConfig::client(key(31)),
            pool_config(),
        )
        .await
        .unwrap();
        let mut stream = pool.open_stream().await.unwrap();
        stream.write_all(b"S").await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0usize;
        while received < 4 * 1024 * 1024 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended early");
            received += n;
        }
        server.kill();
        let killed = Instant::now();
        let error = loop {
            match stream.read(&mut buf).await {
                Ok(0) => panic!("a cut stream ended like a finished one"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let noticed = killed.elapsed();
        eprintln!(
            "reader got `{error}` ({:?}) {noticed:?} after the kill",
            error.kind()
        );
        assert!(noticed <= Duration::from_secs(6), "took {noticed:?}");

        let _server = Server::start(addr, key(31));
        let back = Instant::now();
        let took = time_until_working(&pool, back, Duration::from_secs(10)).await;
        eprintln!("a new stream worked {took:?} after the server came back");
        let took = took.expect("no working stream 10 s after the server came back");
        assert!(took <= Duration::from_secs(2), "took {took:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_behind_a_nat_gets_clients_back_at_once() {
    bounded(40, async {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), key(32));
        let addr = server.addr;
        let relay = LossyRelay::spawn(LossyConfig::new("127.0.0.1:0".parse().unwrap(), addr))
            .await
            .unwrap();
        let pool = ClientPool::connect(
            &relay.local_addr().to_string(),
            EndpointConfig::client(key(32)),
            pool_config(),
        )
        .await
        .unwrap();
        assert!(works(&pool, Duration::from_secs(2)).await);
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _server = Server::start(addr, key(32));
        let restarted = Instant::now();
        let took = time_until_working(&pool, restarted, Duration::from_secs(10)).await;
        eprintln!("a new stream worked {took:?} after the restart");
        let took = took.expect("no working stream 10 s after the restart");
        assert!(took <= Duration::from_secs(2), "took {took:?}");
        let resets = pool.endpoint().stats().resets_received;
        assert_eq!(resets, 1, "the old connection should have ended by a reset");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_cleared_after_an_outage() {
    bounded(60, async {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), key(33));
        let addr = server.addr;
        let config = PoolConfig {
            conns: 2,
            ..pool_config()
        };
        let pool = ClientPool::connect(&addr.to_string(), EndpointConfig::client(key(33)), config)
            .await
            .unwrap();
        assert!(works(&pool, Duration::from_secs(2)).await);
        // An outage long enough for the connections to die and for reconnect attempts to be
        // started and abandoned.
        server.kill();
        let _ = works(&pool, Duration::from_millis(300)).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let during = pool.endpoint().connection_stats();
        let half_open = during.iter().filter(|c| !c.established).count();
        eprintln!("{half_open} connections handshaking or closing during the outage");
        assert!(half_open > 0, "the outage should leave handshakes running");
        let _server = Server::start(addr, key(33));
        let back = Instant::now();
        assert!(
            time_until_working(&pool, back, Duration::from_secs(5))
                .await
                .is_some()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let conns = pool.endpoint().connection_stats();
            let half_open = conns.iter().filter(|c| !c.established).count();
            if half_open == 0 && conns.len() == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still {half_open} handshaking or closing (of {}) 10 s after recovery",
                conns.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}
