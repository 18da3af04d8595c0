//! The TLS and QUIC carriers on loopback with real sockets: a gaptun stream transfer arrives with
//! its SHA-256 intact on each, and clients that are not gaptun (curl, openssl s_client) get the
//! decoy's page or a plain 404, from a certificate that names nothing like gaptun.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{cert, key, loopback, state_dir, tls_pair};

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gaptun_carriers::{
    CertKey, CertSource, Decoy, Keys, QuicCarrier, QuicClientConfig, QuicServerConfig, TlsCarrier,
    TlsClientConfig, TlsServerConfig, load_or_generate,
};
use gaptun_runtime::proto::{ConnectionStats, EndpointConfig, Psk};
use gaptun_runtime::{Carrier, CarrierTransmit, RecvMeta, RtEndpoint};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bytes moved per transfer (debug builds: a few MiB keep the test quick).
const TRANSFER: usize = 8 * 1024 * 1024;

/// The decoy web server's page: what a prober must see.
const DECOY_PAGE: &str = "<html><body>Welcome to the photo archive</body></html>";

/// Deterministic pseudo-random bytes (xorshift).
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `TRANSFER` bytes from a client endpoint to a server endpoint on the given carriers,
/// checks them, and returns the client connection's statistics.
async fn transfer(
    server: Arc<dyn Carrier>,
    client: Arc<dyn Carrier>,
    server_addr: SocketAddr,
) -> ConnectionStats {
    transfer_with(
        server,
        client,
        server_addr,
        EndpointConfig::server(vec![key()]),
        EndpointConfig::client(key()),
    )
    .await
}

/// [`transfer`] with the endpoints' configurations given.
async fn transfer_with(
    server: Arc<dyn Carrier>,
    client: Arc<dyn Carrier>,
    server_addr: SocketAddr,
    server_config: EndpointConfig,
    client_config: EndpointConfig,
) -> ConnectionStats {
    let server_ep = RtEndpoint::with_carriers(vec![server], server_config).unwrap();
    let client_ep = RtEndpoint::with_carriers(vec![client], client_config).unwrap();
    let receiver = tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap();
        let mut stream = conn.accept_stream().await.unwrap();
        let mut got = Vec::with_capacity(TRANSFER);
        stream.read_to_end(&mut got).await.unwrap();
        stream.shutdown().await.unwrap();
        // The endpoint and connection stay up until the client has read its statistics.
        (Sha256::digest(&got), server_ep, conn)
    });
    let conn = tokio::time::timeout(Duration::from_secs(10), client_ep.connect(server_addr))
        .await
        .expect("handshake within 10 s")
        .unwrap();
    let data = pattern(TRANSFER);
    let mut stream = conn.open_stream().await.unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let (digest, _server_ep, _server_conn) =
        tokio::time::timeout(Duration::from_secs(60), receiver)
            .await
            .expect("transfer within 60 s")
            .unwrap();
    assert_eq!(digest, Sha256::digest(&data), "SHA-256 intact");
    let stats = conn.stats().unwrap();
    assert!(stats.stream_bytes_sent >= TRANSFER as u64);
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carrier_transfer_is_intact_over_several_connections() {
    let (server, client, addr) = tls_pair("tls-transfer", 3).await;
    assert!(
        client.reliable(),
        "TCP underneath: the core must not retransmit"
    );
    let server = Arc::new(server);
    let server_dyn: Arc<dyn Carrier> = server.clone();
    let stats = transfer(server_dyn, Arc::new(client), addr).await;
    assert_eq!(server.sessions(), 1, "three TCP connections, one peer");
    // Reordered across three connections, yet nothing declared lost or sent twice, and no
    // congestion window of gaptun's own on top of TCP's.
    assert_eq!(stats.packets_lost, 0);
    assert_eq!(stats.packets_retransmitted, 0);
    assert_eq!(stats.packets_duplicated, 0);
}

/// With ceilings taken from routes (the daemons' default), a connection on TLS alone sends
/// datagrams far above the 1472-byte ceiling of a carrier without a route: a TCP stream has
/// no MTU, and per-datagram costs (seal, frame, queue entry, a pass through the core) made
/// 1.4 KB datagrams cost TLS 2.5 × UDP's CPU per byte. The data still arrives intact, and
/// nothing is lost or resent on the way up (path MTU probes over TCP all arrive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_datagrams_grow_past_ethernet_size_when_ceilings_come_from_routes() {
    let (server, client, addr) = tls_pair("tls-large", 2).await;
    let mut server_config = EndpointConfig::server(vec![key()]);
    server_config.transport.mtu_from_route = true;
    let mut client_config = EndpointConfig::client(key());
    client_config.transport.mtu_from_route = true;
    let stats = transfer_with(
        Arc::new(server),
        Arc::new(client),
        addr,
        server_config,
        client_config,
    )
    .await;
    assert!(
        stats.mtu > 16 * 1024,
        "datagrams grew to {} bytes only",
        stats.mtu
    );
    assert_eq!(stats.mtu_probes_lost, 0);
    assert_eq!(stats.packets_lost, 0);
    assert_eq!(stats.packets_retransmitted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_carrier_transfer_is_intact() {
    let (server, client, addr) = quic_pair("quic-transfer").await;
    assert!(!client.reliable());
    assert!(client.max_datagram_size().is_some_and(|m| m <= 1350));
    let stats = transfer(Arc::new(server), Arc::new(client), addr).await;
    assert_eq!(
        stats.congestion, "bbr",
        "gaptun's controller decides on QUIC"
    );
}

/// A QUIC carrier listening on loopback (its certificate named after `name`) and a client
/// connected to it, with the server's address.
async fn quic_pair(name: &str) -> (QuicCarrier, QuicCarrier, SocketAddr) {
    let server = QuicCarrier::listen(QuicServerConfig {
        listen: loopback(),
        cert: cert(name),
        keys: Keys::new(&[key()]),
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = QuicCarrier::connect(QuicClientConfig {
        server: addr,
        sni: "www.example.com".into(),
        keys: Keys::new(&[key()]),
    })
    .await
    .unwrap();
    (server, client, addr)
}

/// Sends one datagram on `client` to `to` at once and checks that `server` receives it within
/// 3 s. The tests below run on a current-thread runtime, so the client carrier's connection
/// task cannot have run before the send: the datagram must be queued for the connection it is
/// about to carry, not dropped (the handshake's first packet is sent just so, and a drop cost
/// it a 1 s retransmission timeout).
async fn first_datagram_arrives(server: &dyn Carrier, client: &dyn Carrier, to: SocketAddr) {
    let sent = b"the first datagram, sent at once";
    client
        .try_send(&CarrierTransmit {
            destination: to,
            contents: sent,
            segment_size: None,
        })
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let mut meta = [RecvMeta::default()];
    let received = tokio::time::timeout(
        Duration::from_secs(3),
        std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            server.poll_recv(cx, &mut bufs, &mut meta)
        }),
    )
    .await;
    match received {
        Ok(Ok(1)) => assert_eq!(&buf[..meta[0].len], &sent[..]),
        Ok(other) => panic!("receive: {other:?}"),
        Err(_) => panic!("the first datagram did not arrive within 3 s"),
    }
}

#[tokio::test]
async fn tls_datagram_sent_right_after_connect_arrives() {
    let (server, client, addr) = tls_pair("tls-first", 1).await;
    first_datagram_arrives(&server, &client, addr).await;
}

#[tokio::test]
async fn quic_datagram_sent_right_after_connect_arrives() {
    let (server, client, addr) = quic_pair("quic-first").await;
    first_datagram_arrives(&server, &client, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_with_the_wrong_key_gets_no_carrier() {
    let server = TlsCarrier::listen(TlsServerConfig {
        listen: loopback(),
        cert: cert("tls-wrong-key"),
        keys: Keys::new(&[key()]),
        decoy: Decoy::NotFound,
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let _client = TlsCarrier::connect(TlsClientConfig {
        server: addr,
        sni: "www.example.com".into(),
        connections: 1,
        keys: Keys::new(&[Psk::from_bytes([7; 32])]),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.sessions(),
        0,
        "a wrong token is a prober, not a session"
    );
}

/// A tiny HTTP server: answers every request with [`DECOY_PAGE`].
async fn decoy_server() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{DECOY_PAGE}",
                    DECOY_PAGE.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

/// Runs a command with a time limit off the runtime; returns its stdout.
async fn run(mut cmd: Command, stdin: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        // Keep stdin open a moment: s_client closes the connection at end of input.
        std::thread::sleep(Duration::from_millis(1500));
        drop(input);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

fn curl(port: u16) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-k",
        "-s",
        "--max-time",
        "10",
        "-w",
        "\nstatus=%{http_code}\n",
    ])
    .arg(format!("https://127.0.0.1:{port}/"));
    cmd
}

fn s_client(port: u16) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probers_get_the_decoy_page() {
    if !have("curl") || !have("openssl") {
        eprintln!("skipped: curl and openssl are needed (scripts/setup.sh installs them)");
        return;
    }
    let decoy = decoy_server().await;
    let server = TlsCarrier::listen(TlsServerConfig {
        listen: loopback(),
        cert: cert("tls-decoy"),
        keys: Keys::new(&[key()]),
        decoy: Decoy::Proxy(decoy),
    })
    .await
    .unwrap();
    let port = server.local_addr().unwrap().port();
    let out = run(curl(port), b"").await;
    assert!(out.contains(DECOY_PAGE), "curl got: {out}");
    assert!(out.contains("status=200"), "curl got: {out}");
    let out = run(s_client(port), b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
    assert!(out.contains(DECOY_PAGE), "s_client got: {out}");
    assert!(!out.to_lowercase().contains("gaptun"));
    assert_eq!(server.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probers_get_a_404_without_a_decoy() {
    if !have("curl") || !have("openssl") {
        eprintln!("skipped: curl and openssl are needed (scripts/setup.sh installs them)");
        return;
    }
    let server = TlsCarrier::listen(TlsServerConfig {
        listen: loopback(),
        cert: cert("tls-404"),
        keys: Keys::new(&[key()]),
        decoy: Decoy::NotFound,
    })
    .await
    .unwrap();
    let port = server.local_addr().unwrap().port();
    let out = run(curl(port), b"").await;
    assert!(out.contains("404 Not Found"), "curl got: {out}");
    assert!(out.contains("status=404"), "curl got: {out}");
    let out = run(s_client(port), b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 404 Not Found"),
        "s_client got: {out}"
    );
    assert!(!out.to_lowercase().contains("gaptun"));
}

#[test]
fn certificate_names_nothing_like_gaptun() {
    let dir = state_dir("cert-fields");
    load_or_generate(&CertSource::SelfSigned {
        dir: dir.clone(),
        name: "localhost".into(),
    })
    .unwrap();
    let pem = dir.join("tls-cert.pem");
    let der = CertKey::clone(
        &load_or_generate(&CertSource::SelfSigned {
            dir: dir.clone(),
            name: "localhost".into(),
        })
        .unwrap(),
    )
    .chain
    .remove(0);
    let raw = String::from_utf8_lossy(der.as_ref()).to_lowercase();
    for word in ["gaptun", "rcgen", "self signed"] {
        assert!(!raw.contains(word), "certificate bytes contain {word:?}");
    }
    if have("openssl") {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(text.contains("subject: cn = localhost"), "{text}");
        assert!(text.contains("issuer: cn = localhost"), "{text}");
        for word in ["gaptun", "rcgen", "self signed"] {
            assert!(!text.contains(word), "certificate text contains {word:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
