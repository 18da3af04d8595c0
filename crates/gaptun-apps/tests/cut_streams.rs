//! A transfer that was cut must reach the local side as a reset, never as a clean end
//! (issue 8, bug 8): with real TCP sockets on both ends, a reader gets `ConnectionReset` when
//! the far side reset, the tunnel stream was reset or the tunnel connection died mid-transfer,
//! and a clean EOF with every byte when the far side ended normally.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use gaptun_apps::forward::serve_tcp_forward;
use gaptun_apps::request::{ReplyCode, TunnelReply};
use gaptun_apps::{SocksConfig, StreamOpener, TargetAddr};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const BODY: usize = 1024 * 1024;

/// How a target ends the body it sends to the first connection it accepts.
#[derive(Clone, Copy)]
enum End {
    Fin,
    Reset,
}

/// A target that, once its first client sent one byte (so the relay is up, and a reset cannot
/// hit the server's connect), sends `BODY` bytes and then ends with FIN or RST.
async fn start_sender(end: End) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut go = [0u8; 1];
        tcp.read_exact(&mut go).await.unwrap();
        let _ = tcp.write_all(&payload(BODY, 5)).await;
        match end {
            End::Fin => {
                let _ = tcp.shutdown().await;
                // Wait for the client's end before closing, so nothing is reset.
                let mut sink = Vec::new();
                let _ = tcp.read_to_end(&mut sink).await;
            }
            End::Reset => {
                tcp.set_zero_linger().unwrap();
                drop(tcp);
            }
        }
    });
    addr
}

/// Reads until EOF or an error; returns how it ended, the byte count and their hash.
async fn read_all(tcp: &mut TcpStream) -> (io::Result<()>, usize, [u8; 32]) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    total += n;
                    hasher.update(&buf[..n]);
                }
                Err(e) => return Err(e),
            }
        }
    };
    let end = timeout(Duration::from_secs(10), read)
        .await
        .expect("the local side must see an end within 10 s");
    (end, total, hasher.finalize().into())
}

fn assert_reset(end: io::Result<()>, total: usize) {
    let err = end.expect_err("a cut transfer must not end with a clean EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(total <= BODY);
}

async fn start_forward<O: StreamOpener>(opener: O, target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp_forward(listener, TargetAddr::Ip(target), opener));
    addr
}

#[tokio::test]
async fn forward_passes_a_clean_end_on_as_eof_with_every_byte() {
    let target = start_sender(End::Fin).await;
    let forward = start_forward(tunnel(loopback_policy()), target).await;
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    tcp.write_all(b"g").await.unwrap();
    let (end, total, hash) = read_all(&mut tcp).await;
    end.unwrap();
    assert_eq!(total, BODY);
    assert_eq!(hash, sha256(&payload(BODY, 5)));
}

#[tokio::test]
async fn forward_passes_a_target_reset_on_as_a_reset() {
    let target = start_sender(End::Reset).await;
    let forward = start_forward(tunnel(loopback_policy()), target).await;
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    tcp.write_all(b"g").await.unwrap();
    let (end, total, _) = read_all(&mut tcp).await;
    assert_reset(end, total);
}

#[tokio::test]
async fn socks5_passes_a_target_reset_on_as_a_reset_and_a_clean_end_as_eof() {
    let proxy = start_socks(tunnel(loopback_policy()), SocksConfig::default()).await;

    let target = start_sender(End::Reset).await;
    let (rep, mut tcp) = socks_connect(proxy, &TargetAddr::Ip(target)).await;
    assert_eq!(rep, 0);
    tcp.write_all(b"g").await.unwrap();
    let (end, total, _) = read_all(&mut tcp).await;
    assert_reset(end, total);

    let target = start_sender(End::Fin).await;
    let (rep, mut tcp) = socks_connect(proxy, &TargetAddr::Ip(target)).await;
    assert_eq!(rep, 0);
    tcp.write_all(b"g").await.unwrap();
    let (end, total, hash) = read_all(&mut tcp).await;
    end.unwrap();
    assert_eq!((total, hash), (BODY, sha256(&payload(BODY, 5))));
}

/// A local client that resets its connection mid-upload makes the server reset its
/// connection to the target: the target does not take a partial upload for a whole one.
#[tokio::test]
async fn local_reset_mid_upload_resets_the_target_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let forward = start_forward(tunnel(loopback_policy()), target).await;

    let mut local = TcpStream::connect(forward).await.unwrap();
    local.write_all(&payload(64 * 1024, 9)).await.unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    let mut first = [0u8; 1024];
    accepted.read_exact(&mut first).await.unwrap();
    local.set_zero_linger().unwrap();
    drop(local);

    let (end, total, _) = read_all(&mut accepted).await;
    let err = end.expect_err("the target must not see a clean end");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(total <= 64 * 1024);
}

/// A tunnel whose streams answer the request, deliver `body` bytes and then fail with
/// `kind`: a stream reset by the server, or a tunnel connection that died.
#[derive(Clone)]
struct CutTunnel {
    body: usize,
    kind: io::ErrorKind,
}

struct CutStream {
    pending: Vec<u8>,
    kind: io::ErrorKind,
}

impl StreamOpener for CutTunnel {
    type Stream = CutStream;

    fn open(&self) -> impl Future<Output = io::Result<CutStream>> + Send {
        let mut pending = TunnelReply {
            code: ReplyCode::Succeeded,
            bound: TargetAddr::unspecified(),
        }
        .encode();
        pending.extend_from_slice(&payload(self.body, 5));
        std::future::ready(Ok(CutStream {
            pending,
            kind: self.kind,
        }))
    }
}

impl AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Err(io::Error::new(self.kind, "tunnel cut")));
        }
        let n = buf.remaining().min(self.pending.len());
        buf.put_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl gaptun_apps::pump::ChunkStream for CutStream {}

impl AsyncWrite for CutStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whatever error the transport reports on a tunnel stream (a RESET_STREAM, the connection
/// closed or timed out), the local reader of a forward and of a SOCKS5 CONNECT gets a reset.
#[tokio::test]
async fn tunnel_stream_errors_reach_local_readers_as_resets() {
    // Never dialled: the cut tunnel answers by itself.
    let target = closed_port().await;
    for kind in [
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::ConnectionAborted,
        io::ErrorKind::TimedOut,
        io::ErrorKind::NotConnected,
    ] {
        let cut = CutTunnel {
            body: 300_000,
            kind,
        };
        let forward = start_forward(cut.clone(), target).await;
        let mut tcp = TcpStream::connect(forward).await.unwrap();
        let (end, total, _) = read_all(&mut tcp).await;
        let err = end.expect_err("forward: a cut stream must not end with EOF");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "{kind:?}: {err}"
        );
        assert!(total <= 300_000);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        tokio::spawn(gaptun_apps::serve_socks(
            listener,
            cut,
            SocksConfig::default(),
        ));
        let (rep, mut tcp) = socks_connect(proxy, &TargetAddr::Ip(target)).await;
        assert_eq!(rep, 0);
        let (end, total, _) = read_all(&mut tcp).await;
        let err = end.expect_err("socks5: a cut stream must not end with EOF");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "{kind:?}: {err}"
        );
        assert!(total <= 300_000);
    }
}
