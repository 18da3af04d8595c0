//! Helpers shared by the integration tests: local servers, a SOCKS5 client, payloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gaptun_apps::{DialConfig, MemTunnel, SocksConfig, TargetAddr, TargetPolicy, serve_socks};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Collects what a tracing subscriber writes (give it as the subscriber's writer).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// A policy that lets tests reach servers on 127.0.0.1 (and ::1), refused by default.
pub fn loopback_policy() -> TargetPolicy {
    TargetPolicy {
        allow: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        allow_private: false,
    }
}

pub fn tunnel(policy: TargetPolicy) -> MemTunnel {
    MemTunnel::new(policy, DialConfig::default())
}

/// Starts a SOCKS5 server over `tunnel` on an ephemeral loopback port.
pub async fn start_socks(tunnel: MemTunnel, config: SocksConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_socks(listener, tunnel, config));
    addr
}

/// A TCP echo server that honours half-close: it answers FIN with FIN after echoing all.
pub async fn start_echo(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            // Out of descriptors for a moment, or a peer that reset before the accept: the
            // service stays up, as a real one would.
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo server on 127.0.0.1.
pub async fn start_udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A port on 127.0.0.1 where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Writes `data` in chunks and closes the sending half while reading everything back;
/// returns the hash of what came back.
pub async fn echo_round_trip<S>(stream: S, data: &[u8]) -> [u8; 32]
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match try_echo_round_trip(stream, data).await {
        Ok(hash) => hash,
        Err(e) => panic!("{e}"),
    }
}

/// [`echo_round_trip`] that says what went wrong instead of panicking: how many bytes came
/// back before the end or the error, and which half failed.
pub async fn try_echo_round_trip<S>(stream: S, data: &[u8]) -> Result<[u8; 32], String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        let mut sent = 0;
        for chunk in data.chunks(32 * 1024) {
            w.write_all(chunk)
                .await
                .map_err(|e| format!("write failed after {sent} of {} bytes: {e}", data.len()))?;
            sent += chunk.len();
        }
        w.shutdown()
            .await
            .map_err(|e| format!("shutdown after writing failed: {e}"))
    };
    let reader = async {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = r
                .read(&mut buf)
                .await
                .map_err(|e| format!("read failed after {total} of {} bytes: {e}", data.len()))?;
            if n == 0 {
                break;
            }
            total += n;
            hasher.update(&buf[..n]);
        }
        if total != data.len() {
            return Err(format!(
                "read {total} of {} bytes, then end of stream",
                data.len()
            ));
        }
        Ok(<[u8; 32]>::from(hasher.finalize()))
    };
    // The reader's account first: a write failure follows from the connection's end.
    let (written, hash) = tokio::join!(writer, reader);
    let hash = hash?;
    written?;
    Ok(hash)
}

/// Greets a SOCKS5 server offering `methods` and returns the chosen method.
pub async fn greet(tcp: &mut TcpStream, methods: &[u8]) -> u8 {
    let mut msg = vec![5, methods.len() as u8];
    msg.extend_from_slice(methods);
    tcp.write_all(&msg).await.unwrap();
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice[0], 5);
    choice[1]
}

/// Sends RFC 1929 credentials; returns the status byte.
pub async fn login(tcp: &mut TcpStream, user: &str, pass: &str) -> u8 {
    let mut msg = vec![1, user.len() as u8];
    msg.extend_from_slice(user.as_bytes());
    msg.push(pass.len() as u8);
    msg.extend_from_slice(pass.as_bytes());
    tcp.write_all(&msg).await.unwrap();
    let mut status = [0u8; 2];
    tcp.read_exact(&mut status).await.unwrap();
    assert_eq!(status[0], 1);
    status[1]
}

/// Sends a request and reads the reply: returns (REP, BND address).
pub async fn request(tcp: &mut TcpStream, cmd: u8, target: &TargetAddr) -> (u8, TargetAddr) {
    let mut msg = vec![5, cmd, 0];
    target.encode(&mut msg);
    tcp.write_all(&msg).await.unwrap();
    read_reply(tcp).await
}

pub async fn read_reply(tcp: &mut TcpStream) -> (u8, TargetAddr) {
    let mut head = [0u8; 3];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 5);
    let bound = TargetAddr::read_from(tcp).await.unwrap();
    (head[1], bound)
}

/// A full no-auth CONNECT; returns the reply code and, on success, the relaying stream.
pub async fn socks_connect(proxy: SocketAddr, target: &TargetAddr) -> (u8, TcpStream) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(greet(&mut tcp, &[0]).await, 0);
    let (rep, _) = request(&mut tcp, 1, target).await;
    (rep, tcp)
}

/// Reads until EOF or error; true if the peer closed without sending anything more.
pub async fn closed_without_data(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}
