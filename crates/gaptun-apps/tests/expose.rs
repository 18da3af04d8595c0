//! Expose end to end: real gaptun connections over loopback UDP (gaptun-runtime), real TCP
//! and UDP sockets for visitors and local services.
//!
//! A test server accepts two keys, owned by "alice" (key 1) and "bob" (key 2), and lets
//! clients expose the ports each test allows; visitors connect to 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Captured, loopback_policy, payload, sha256};
use gaptun_apps::DialConfig;
use gaptun_apps::expose::{
    ExposeClient, ExposeClientConfig, ExposePeer, ExposeServer, ExposeServerConfig, ExposeSpec,
    Refusal, Status,
};
use gaptun_apps::flow::{DatagramIo, FlowMux, ReadDatagram};
use gaptun_apps::tunnel::{StreamAcceptor, StreamOpener};
use gaptun_proto::{EndpointConfig, Psk};
use gaptun_runtime::{ClientPool, PoolConfig, RtConnection, RtDatagrams, RtEndpoint, RtStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const OWNERS: [&str; 2] = ["alice", "bob"];

fn key(owner: usize) -> Psk {
    Psk::from_bytes([u8::try_from(owner).unwrap() + 1; 32])
}

async fn bounded<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

/// Starts (once) collecting the warnings gaptun logs in this test process, for failure
/// messages. One subscriber for the whole process: the expose code logs from tasks on any
/// runtime thread, so a thread's default would miss them; lines of tests running at the same
/// time are mixed in.
fn capture_warnings() -> Captured {
    static WARNINGS: OnceLock<Captured> = OnceLock::new();
    WARNINGS
        .get_or_init(|| {
            let warnings = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(warnings.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            warnings
        })
        .clone()
}

/// One connection as the expose code sees it; with `flows`, UDP visitors on it use its
/// datagrams.
#[derive(Debug, Clone)]
struct Conn(RtConnection, Option<FlowMux>);

impl Conn {
    /// `conn`, with one flow mux over its datagrams if `datagrams` (one per connection: a
    /// second would steal the first one's datagrams).
    fn new(conn: RtConnection, datagrams: bool) -> Self {
        let flows = datagrams.then(|| FlowMux::new(Arc::new(Io(conn.datagrams()))));
        Self(conn, flows)
    }
}

/// The runtime's datagrams as the flows see them.
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

impl StreamOpener for Conn {
    type Stream = RtStream;

    fn open(&self) -> impl Future<Output = io::Result<RtStream>> + Send {
        let conn = self.0.clone();
        async move { conn.open_stream().await }
    }

    fn flows(&self, _stream: &RtStream) -> Option<FlowMux> {
        self.1.clone()
    }
}

impl StreamAcceptor for Conn {
    type Accepted = RtStream;

    fn accept(&self) -> impl Future<Output = Option<RtStream>> + Send {
        let conn = self.0.clone();
        async move { conn.accept_stream().await }
    }
}

struct Server {
    endpoint: RtEndpoint,
    expose: ExposeServer<Conn>,
    /// Every client connection accepted, for tests that cut them.
    conns: Arc<Mutex<Vec<RtConnection>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn start(at: SocketAddr, allowed: &str) -> Self {
        Self::start_with(at, allowed, false)
    }

    /// With `datagrams`, each client connection's UDP visitors go on datagram flows.
    fn start_with(at: SocketAddr, allowed: &str, datagrams: bool) -> Self {
        let endpoint = RtEndpoint::bind(at, EndpointConfig::server(vec![key(0), key(1)])).unwrap();
        let expose = ExposeServer::new(ExposeServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            allowed: allowed.parse().unwrap(),
            udp_idle_timeout: Duration::from_secs(5),
        });
        let conns: Arc<Mutex<Vec<RtConnection>>> = Arc::default();
        let task = tokio::spawn(accept_all(
            endpoint.clone(),
            expose.clone(),
            conns.clone(),
            datagrams,
        ));
        Self {
            endpoint,
            expose,
            conns,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    async fn stop(self) {
        self.task.abort();
        self.endpoint.shutdown(Duration::from_secs(2)).await;
    }
}

async fn accept_all(
    endpoint: RtEndpoint,
    expose: ExposeServer<Conn>,
    conns: Arc<Mutex<Vec<RtConnection>>>,
    datagrams: bool,
) {
    while let Some(conn) = endpoint.accept().await {
        conns.lock().unwrap().push(conn.clone());
        let owner = OWNERS[conn.key_index().unwrap()];
        let Conn(opener, flows) = Conn::new(conn.clone(), datagrams);
        let peer = ExposePeer {
            owner: owner.into(),
            opener: Conn(opener, None),
            allowed: None,
            flows,
        };
        let expose = expose.clone();
        tokio::spawn(async move {
            while let Some(stream) = conn.accept_stream().await {
                let (expose, peer) = (expose.clone(), peer.clone());
                tokio::spawn(async move {
                    let _ = expose
                        .serve_stream(stream, &peer, &loopback_policy(), &DialConfig::default())
                        .await;
                });
            }
        });
    }
}

/// A client process: a pool of `conns` connections with key `owner`, exposing `specs`.
struct Client {
    pool: ClientPool,
    expose: ExposeClient,
}

impl Client {
    /// Connects, registers on the first connection (returning its refusals, as the binary
    /// reports them at start-up), and keeps registering on every new connection.
    async fn start(server: SocketAddr, owner: usize, specs: &[String]) -> (Self, Vec<Refusal>) {
        Self::start_with(server, owner, specs, 1).await
    }

    async fn start_with(
        server: SocketAddr,
        owner: usize,
        specs: &[String],
        conns: usize,
    ) -> (Self, Vec<Refusal>) {
        Self::start_opts(server, owner, specs, conns, false).await
    }

    /// With `datagrams`, the client's connections offer datagram flows to UDP visitors.
    async fn start_opts(
        server: SocketAddr,
        owner: usize,
        specs: &[String],
        conns: usize,
        datagrams: bool,
    ) -> (Self, Vec<Refusal>) {
        let config = PoolConfig {
            conns,
            ..PoolConfig::default()
        };
        let pool = ClientPool::connect(
            &server.to_string(),
            EndpointConfig::client(key(owner)),
            config,
        )
        .await
        .unwrap();
        let specs: Vec<ExposeSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
        let expose = ExposeClient::new(specs, ExposeClientConfig::default()).unwrap();
        let mut feed = pool.connection_feed();
        let first = feed.recv().await.unwrap();
        let registration = expose.register(Conn::new(first, datagrams)).await.unwrap();
        let refusals = registration.refusals().to_vec();
        tokio::spawn(registration.serve());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(conn) = feed.recv().await {
                if tx.send(Conn::new(conn, datagrams)).is_err() {
                    return;
                }
            }
        });
        let runner = expose.clone();
        tokio::spawn(async move { runner.run(rx).await });
        (Self { pool, expose }, refusals)
    }

    async fn stop(self) {
        self.pool.shutdown(Duration::from_secs(2)).await;
    }
}

/// `n` consecutive ports on 127.0.0.1 free for TCP and UDP right now, below the ephemeral
/// range (so no outgoing connection of a parallel test takes one meanwhile).
fn free_ports(n: u16) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let salt = std::process::id() as usize;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = u16::try_from(12_000 + (salt * 7 + step * 37) % 20_000).unwrap();
        let all_free = (base..base + n).all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free {
            return base;
        }
    }
}

/// An HTTP/1.0-like server: answers any request with `body`, then closes.
async fn http_server(body: Arc<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                let mut tcp = BufReader::new(tcp);
                let mut line = String::new();
                loop {
                    line.clear();
                    if tcp.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let mut tcp = tcp.into_inner();
                let _ = tcp.write_all(head.as_bytes()).await;
                for chunk in body.chunks(64 * 1024) {
                    if tcp.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// GET / through `port`; returns the body's hash and length.
async fn http_get(port: u16) -> ([u8; 32], usize) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end")
        + 4;
    let body = &all[split..];
    (sha256(body), body.len())
}

/// A TCP service that answers each connection with `tag` then echoes.
async fn tagged_echo(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = w.write_all(tag.as_bytes()).await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Connects to `port`, reads `tag.len()` bytes, sends `msg`, reads its echo.
async fn tagged_round_trip(port: u16, tag: &str, msg: &[u8]) -> io::Result<()> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut got = vec![0u8; tag.len()];
    tcp.read_exact(&mut got).await?;
    assert_eq!(got, tag.as_bytes());
    tcp.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tcp.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// Retries `tagged_round_trip` until it works; returns how long that took.
async fn works_within(port: u16, tag: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tagged_round_trip(port, tag, b"ping"),
        )
        .await;
        if let Ok(Ok(())) = attempt {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "port {port} did not work within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spec(kind: &str, remote: u16, local: SocketAddr) -> String {
    format!("{kind}:{remote}={local}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_download_of_32_mib_is_intact() {
    bounded(120, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let body = Arc::new(payload(32 * 1024 * 1024, 7));
        let local = http_server(Arc::clone(&body)).await;
        let (client, refusals) = Client::start(server.addr(), 0, &[spec("tcp", port, local)]).await;
        assert!(refusals.is_empty(), "{refusals:?}");

        let (hash, len) = http_get(port).await;
        assert_eq!(len, body.len());
        assert_eq!(hash, sha256(&body));

        // Stats on both sides saw one visitor and the whole body.
        let stats = client.expose.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].visitors_total, 1);
        assert!(stats[0].bytes_to_visitors >= body.len() as u64, "{stats:?}");
        let server_stats = server.expose.stats();
        assert_eq!(server_stats.len(), 1);
        assert_eq!(&*server_stats[0].0, "alice");
        assert!(server_stats[0].1.bytes_to_visitors >= body.len() as u64);
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_of_a_range_reaches_its_own_service() {
    bounded(60, async {
        let base = free_ports(4);
        let server = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            &format!("{base}-{}", base + 3),
        );
        // Four local services on consecutive ports, each answering with its own tag.
        const TAGS: [&str; 4] = ["svc-0", "svc-1", "svc-2", "svc-3"];
        let local_base = free_ports(4);
        let mut listeners = Vec::new();
        for (i, tag) in TAGS.iter().enumerate() {
            let l = TcpListener::bind(("127.0.0.1", local_base + i as u16))
                .await
                .unwrap();
            listeners.push((l, *tag));
        }
        for (l, tag) in listeners {
            tokio::spawn(async move {
                while let Ok((mut tcp, _)) = l.accept().await {
                    let _ = tcp.write_all(tag.as_bytes()).await;
                    let (mut r, mut w) = tcp.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
        }
        let spec = format!("{base}-{}=127.0.0.1:{local_base}", base + 3);
        let (client, refusals) = Client::start(server.addr(), 0, &[spec]).await;
        assert!(refusals.is_empty(), "{refusals:?}");
        for (i, tag) in TAGS.iter().enumerate() {
            tagged_round_trip(base + i as u16, tag, b"hello")
                .await
                .unwrap();
        }
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_through_a_udp_expose() {
    bounded(60, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let echo = common::start_udp_echo().await;
        let (client, refusals) = Client::start(server.addr(), 0, &[spec("udp", port, echo)]).await;
        assert!(refusals.is_empty(), "{refusals:?}");

        // Two visitors, each gets its own datagrams back, in both sizes.
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for (i, visitor) in [&a, &b].into_iter().enumerate() {
            for size in [1usize, 1200, 8000] {
                let msg = payload(size, (i * 10 + size) as u64);
                let mut buf = vec![0u8; 65536];
                // UDP may lose the first datagram while the relay starts: retry a few times.
                let mut got = None;
                for _ in 0..10 {
                    visitor.send_to(&msg, ("127.0.0.1", port)).await.unwrap();
                    if let Ok(Ok((n, from))) = tokio::time::timeout(
                        Duration::from_millis(500),
                        visitor.recv_from(&mut buf),
                    )
                    .await
                    {
                        assert_eq!(from.port(), port);
                        got = Some(buf[..n].to_vec());
                        break;
                    }
                }
                assert_eq!(got.as_deref(), Some(&msg[..]), "visitor {i}, {size} bytes");
            }
        }
        let stats = client.expose.stats();
        assert_eq!(stats[0].visitors_total, 2, "{stats:?}");
        client.stop().await;
        server.stop().await;
    })
    .await;
}

/// When the client's connection takes datagrams, a UDP expose carries its visitors' datagrams
/// as transport datagrams (not on the visitor stream): 200 echoed datagrams of sizes from 1
/// byte to 8000 (several packets each) come back intact and in the order sent, and the
/// connection's datagram counters show they travelled that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_through_a_udp_expose_rides_datagrams_in_order() {
    bounded(60, async {
        let port = free_ports(1);
        let server = Server::start_with("127.0.0.1:0".parse().unwrap(), &port.to_string(), true);
        let echo = common::start_udp_echo().await;
        let (client, refusals) =
            Client::start_opts(server.addr(), 0, &[spec("udp", port, echo)], 1, true).await;
        assert!(refusals.is_empty(), "{refusals:?}");

        let visitor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        visitor.connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = vec![0u8; 65536];
        // The first datagram starts the visitor's relay; retry until its echo comes back.
        let hello = b"hello".to_vec();
        let mut started = false;
        for _ in 0..10 {
            visitor.send(&hello).await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), visitor.recv(&mut buf)).await
            {
                assert_eq!(&buf[..n], &hello[..]);
                started = true;
                break;
            }
        }
        assert!(started, "no echo through the UDP expose");
        // Drain echoes of retried hellos.
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(200), visitor.recv(&mut buf)).await
        {}

        let sizes = [1usize, 100, 1400, 8000];
        let sent: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let mut d = payload(sizes[i as usize % sizes.len()].max(4), u64::from(i));
                d[..4].copy_from_slice(&i.to_be_bytes());
                d
            })
            .collect();
        let mut got = Vec::new();
        let receive = async {
            while got.len() < sent.len() {
                let n = visitor.recv(&mut buf).await.unwrap();
                got.push(buf[..n].to_vec());
            }
        };
        let send = async {
            for d in &sent {
                visitor.send(d).await.unwrap();
                // Paced a little: loopback socket buffers, not the tunnel, would drop a burst.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let finished = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(send, receive)
        })
        .await;
        assert!(
            finished.is_ok(),
            "{} of {} echoes came back",
            got.len(),
            sent.len()
        );
        assert_eq!(got.len(), sent.len());
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert!(g == s, "echo {i} differs (or came out of order)");
        }

        let conn = client.pool.connections().pop().unwrap();
        let dg = conn.stats().unwrap().datagrams;
        // 200 echoes each way at least, plus the hello: each one a transport datagram.
        assert!(dg.sent >= 200 && dg.received >= 200, "{dg:?}");
        let stats = client.expose.stats();
        assert_eq!(stats[0].visitors_total, 1, "{stats:?}");
        let bytes: u64 = sent.iter().map(|d| d.len() as u64).sum();
        assert!(stats[0].bytes_to_service >= bytes, "{stats:?}");
        assert!(stats[0].bytes_to_visitors >= bytes, "{stats:?}");
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_visitors_get_intact_data() {
    // Each visitor holds four descriptors in this process (its socket, the server's accepted
    // one, the client's dial to the service and the service's accepted one). Under the usual
    // soft limit of 1024 the client's dials fail with "too many open files" and visitors are
    // turned away; the binary raises its limit at start-up, as this does.
    const DESCRIPTORS: u64 = 4 * 500 + 512;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        limit >= DESCRIPTORS,
        "500 concurrent visitors need about {DESCRIPTORS} open files in this process; the \
         limit is {limit} and the hard limit allows no more (ulimit -Hn)"
    );
    bounded(120, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let echo = common::start_echo("127.0.0.1:0").await;
        let (client, refusals) = Client::start(server.addr(), 0, &[spec("tcp", port, echo)]).await;
        assert!(refusals.is_empty(), "{refusals:?}");

        let warnings = capture_warnings();
        let mut visitors = tokio::task::JoinSet::new();
        for i in 0..500u64 {
            visitors.spawn(async move {
                let tcp = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|e| format!("visitor {i}: connect: {e}"))?;
                let data = payload(16 * 1024 + i as usize * 7, i);
                let hash = common::try_echo_round_trip(tcp, &data)
                    .await
                    .map_err(|e| format!("visitor {i}: {e}"))?;
                if hash != sha256(&data) {
                    return Err(format!("visitor {i}: the data came back altered"));
                }
                Ok::<_, String>(())
            });
        }
        let mut failures = Vec::new();
        while let Some(r) = visitors.join_next().await {
            if let Err(e) = r.unwrap() {
                failures.push(e);
            }
        }
        // Every failed visitor by index and what it saw, with what gaptun logged about it.
        assert!(
            failures.is_empty(),
            "{} of 500 visitors failed:\n{}\nwarnings logged:\n{}\nserver expose stats: {:?}\n\
             client expose stats: {:?}",
            failures.len(),
            failures.join("\n"),
            warnings.text(),
            server.expose.stats(),
            client.expose.stats(),
        );
        let stats = client.expose.stats();
        assert_eq!(stats[0].visitors_total, 500);
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_whose_service_is_down_gets_a_reset_and_the_client_warns() {
    bounded(30, async {
        let warnings = capture_warnings();
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let down = common::closed_port().await;
        let (client, refusals) = Client::start(server.addr(), 0, &[spec("tcp", port, down)]).await;
        assert!(refusals.is_empty(), "{refusals:?}");
        // The reset may come so soon that it is already there when the connect completes.
        let e = match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(tcp) => common::try_echo_round_trip(tcp, b"hello")
                .await
                .expect_err("the visitor must not get an empty answer"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => format!("connect: {e}"),
            Err(e) => panic!("connect failed otherwise: {e}"),
        };
        // A reset, not an end of stream: an empty answer would look like a complete one.
        assert!(e.contains("reset"), "{e}");
        let line = format!(
            "expose visitor dropped: dialling 127.0.0.1:{} failed",
            down.port()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !warnings.text().contains(&line) {
            assert!(
                Instant::now() < deadline,
                "no warning {line:?} in:\n{}",
                warnings.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.stop().await;
        server.stop().await;
    })
    .await;
}

/// A TCP service that parses a PROXY header (v1 or v2, by hand from the specification) and
/// sends back the source address it read, then echoes.
async fn proxy_aware_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut tcp = BufReader::new(tcp);
                let mut first = [0u8; 1];
                tcp.read_exact(&mut first).await.unwrap();
                let (source, destination) = if first[0] == b'P' {
                    let mut line = String::new();
                    tcp.read_line(&mut line).await.unwrap();
                    let line = format!("P{line}");
                    let parts: Vec<&str> = line.trim_end_matches("\r\n").split(' ').collect();
                    assert_eq!(&parts[..2], ["PROXY", "TCP4"], "{line:?}");
                    let source: SocketAddr = format!("{}:{}", parts[2], parts[4]).parse().unwrap();
                    let dest: SocketAddr = format!("{}:{}", parts[3], parts[5]).parse().unwrap();
                    (source, dest)
                } else {
                    let mut rest = [0u8; 15];
                    tcp.read_exact(&mut rest).await.unwrap();
                    let sig = [&first[..], &rest[..11]].concat();
                    assert_eq!(sig, b"\r\n\r\n\0\r\nQUIT\n");
                    assert_eq!(rest[11], 0x21, "version 2, PROXY command");
                    assert_eq!(rest[12], 0x11, "TCP over IPv4");
                    let len = u16::from_be_bytes([rest[13], rest[14]]);
                    assert_eq!(len, 12);
                    let mut a = [0u8; 12];
                    tcp.read_exact(&mut a).await.unwrap();
                    let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
                    let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                    (
                        SocketAddr::new(ip(0).into(), port(8)),
                        SocketAddr::new(ip(4).into(), port(10)),
                    )
                };
                let mut tcp = tcp.into_inner();
                let answer = format!("{source} {destination}\n");
                tcp.write_all(answer.as_bytes()).await.unwrap();
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_carry_the_visitor_address() {
    bounded(60, async {
        let base = free_ports(2);
        let server = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            &format!("{base}-{}", base + 1),
        );
        let service = proxy_aware_service().await;
        let specs = [
            format!("{base}={service},proxy=v1"),
            format!("{}={service},proxy=v2", base + 1),
        ];
        let (client, refusals) = Client::start(server.addr(), 0, &specs).await;
        assert!(refusals.is_empty(), "{refusals:?}");
        for port in [base, base + 1] {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let visitor = tcp.local_addr().unwrap();
            let mut tcp = BufReader::new(tcp);
            let mut line = String::new();
            tcp.read_line(&mut line).await.unwrap();
            assert_eq!(
                line,
                format!("{visitor} 127.0.0.1:{port}\n"),
                "the service sees the visitor (port {port})"
            );
            let mut tcp = tcp.into_inner();
            tcp.write_all(b"after the header").await.unwrap();
            let mut back = [0u8; 16];
            tcp.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"after the header");
        }
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_port_and_the_reason() {
    bounded(60, async {
        let base = free_ports(3);
        let (allowed_a, allowed_busy, outside) = (base, base + 1, base + 2);
        let server = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            &format!("{allowed_a},{allowed_busy}"),
        );
        let service = tagged_echo("svc").await;

        // Outside the allowed ports.
        let (c1, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", outside, service)]).await;
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].status, Status::NotAllowed);
        assert_eq!(refusals[0].port, outside);
        let line = refusals[0].to_string();
        assert!(
            line.contains(&format!("tcp port {outside} is not allowed by the server")),
            "{line}"
        );
        c1.stop().await;

        // In use by another program on the server.
        let squatter = TcpListener::bind(("127.0.0.1", allowed_busy))
            .await
            .unwrap();
        let (c2, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", allowed_busy, service)]).await;
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].status, Status::InUse);
        assert!(
            refusals[0]
                .to_string()
                .contains(&format!("tcp port {allowed_busy} is in use on the server")),
            "{}",
            refusals[0]
        );
        c2.stop().await;
        drop(squatter);

        // Held by another key: alice has it, bob is refused, alice keeps serving.
        let (alice, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", allowed_a, service)]).await;
        assert!(refusals.is_empty(), "{refusals:?}");
        let (bob, refusals) =
            Client::start(server.addr(), 1, &[spec("tcp", allowed_a, service)]).await;
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].status, Status::HeldByOther);
        assert!(
            refusals[0].to_string().contains(&format!(
                "tcp port {allowed_a} is held on the server by another user"
            )),
            "{}",
            refusals[0]
        );
        tagged_round_trip(allowed_a, "svc", b"still alice")
            .await
            .unwrap();

        // A range is all or nothing: one bad port refuses it, naming that port.
        let range = format!("{allowed_a}-{outside}=127.0.0.1:{}", service.port());
        let (c3, refusals) = Client::start(server.addr(), 1, &[range]).await;
        assert_eq!(refusals[0].status, Status::HeldByOther);
        assert_eq!(refusals[0].port, allowed_a);
        c3.stop().await;

        bob.stop().await;
        alice.stop().await;
        // Nobody holds the port any more: the listener is closed, a visitor is refused.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", allowed_a)).await.is_ok() {
            assert!(Instant::now() < deadline, "listener still open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_stream_for_a_port_not_registered_is_reset_without_a_dial() {
    bounded(30, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local_addr = local.local_addr().unwrap();
        let (client, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", port, local_addr)]).await;
        assert!(refusals.is_empty());
        let conn = server.conns.lock().unwrap()[0].clone();
        // A server that names UDP on the registered port, then another TCP port.
        for (kind, named) in [(2u8, port), (1u8, port.wrapping_add(1))] {
            let mut stream = conn.open_stream().await.unwrap();
            let mut header = vec![1, kind];
            header.extend_from_slice(&named.to_be_bytes());
            header.extend_from_slice(&[1, 127, 0, 0, 1, 0, 1, 1, 127, 0, 0, 1, 0, 2]);
            header.extend_from_slice(b"payload");
            stream.write_all(&header).await.unwrap();
            let mut buf = [0u8; 16];
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                other => panic!("stream not reset: {other:?}"),
            }
        }
        let accepted = tokio::time::timeout(Duration::from_millis(300), local.accept()).await;
        assert!(
            accepted.is_err(),
            "the client dialled LOCAL for a stream it did not register"
        );
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_replaced_and_registered_again_within_3_s() {
    bounded(60, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let service = tagged_echo("svc").await;
        let (client, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", port, service)]).await;
        assert!(refusals.is_empty());
        tagged_round_trip(port, "svc", b"before").await.unwrap();

        // The server cuts the client's connection: the pool reconnects and registers again.
        let old = server.conns.lock().unwrap()[0].clone();
        old.close(0, b"cut by test");
        let took = works_within(port, "svc", Duration::from_secs(3)).await;
        assert!(
            server.conns.lock().unwrap().len() >= 2,
            "a new connection came"
        );
        println!("port back after {took:?}");
        client.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_takes_its_port_over_from_the_dead_one() {
    bounded(60, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let old_service = tagged_echo("old").await;
        let new_service = tagged_echo("new").await;
        let (old, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", port, old_service)]).await;
        assert!(refusals.is_empty());
        tagged_round_trip(port, "old", b"x").await.unwrap();

        // As after kill -9: the old client's connection is still open on the server when the
        // new client (same key, new process) registers. It takes the port at once.
        let start = Instant::now();
        let (new, refusals) =
            Client::start(server.addr(), 0, &[spec("tcp", port, new_service)]).await;
        assert!(refusals.is_empty(), "{refusals:?}");
        for _ in 0..5 {
            tagged_round_trip(port, "new", b"y").await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );

        // The old client going away later does not take the port from the new one.
        old.stop().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        tagged_round_trip(port, "new", b"z").await.unwrap();
        new.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposes_come_back_after_a_server_restart() {
    bounded(60, async {
        let port = free_ports(1);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &port.to_string());
        let addr = server.addr();
        let service = tagged_echo("svc").await;
        let (client, refusals) =
            Client::start_with(addr, 0, &[spec("tcp", port, service)], 2).await;
        assert!(refusals.is_empty());
        tagged_round_trip(port, "svc", b"before").await.unwrap();

        server.stop().await;
        // Nothing listens while the server is down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(Instant::now() < deadline, "listener still open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let restarted = Server::start(addr, &port.to_string());
        let took = works_within(port, "svc", Duration::from_secs(10)).await;
        println!("exposes back {took:?} after the restart");
        // Both connections of the pool registered again: visitors are spread over them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while restarted.conns.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "second connection not back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..4u8 {
            tagged_round_trip(port, "svc", &[i; 10]).await.unwrap();
        }
        client.stop().await;
        restarted.stop().await;
    })
    .await;
}
