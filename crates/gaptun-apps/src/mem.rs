//! An in-memory tunnel: streams are `tokio::io::duplex` pipes served by [`serve_stream`].
//!
//! It stands in for the real encrypted transport in tests and demos, so the applications
//! (SOCKS5, forwards) and the server relay can be exercised end to end, with real sockets on
//! both ends, without the protocol core. The pipes have a bounded capacity, so back-pressure
//! behaves as it does over a real flow-controlled stream, and an end dropped before its
//! `shutdown` is a reset for the other end, as on the real transport.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tracing::debug;

use crate::policy::TargetPolicy;
use crate::relay::{DialConfig, serve_stream};
use crate::tunnel::StreamOpener;

/// Default capacity of each in-memory stream (bytes buffered per direction).
pub const MEM_STREAM_BUFFER: usize = 64 * 1024;

/// A [`StreamOpener`] whose streams are served in-process by a server with `policy`.
#[derive(Debug, Clone)]
pub struct MemTunnel {
    server: Arc<MemServer>,
    buffer: usize,
}

#[derive(Debug)]
struct MemServer {
    policy: TargetPolicy,
    dial: DialConfig,
    opened: AtomicUsize,
}

impl MemTunnel {
    /// A tunnel whose server applies `policy` and `dial`.
    pub fn new(policy: TargetPolicy, dial: DialConfig) -> Self {
        let server = MemServer {
            policy,
            dial,
            opened: AtomicUsize::new(0),
        };
        Self {
            server: Arc::new(server),
            buffer: MEM_STREAM_BUFFER,
        }
    }

    /// Sets the capacity of each stream's pipe (at least 1 byte).
    pub fn with_buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(1);
        self
    }

    /// How many streams have been opened so far.
    pub fn opened(&self) -> usize {
        self.server.opened.load(Ordering::Relaxed)
    }
}

impl StreamOpener for MemTunnel {
    type Stream = MemStream;

    fn open(&self) -> impl Future<Output = io::Result<MemStream>> + Send {
        let server = self.server.clone();
        let (client_end, server_end) = MemStream::pair(self.buffer);
        server.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = serve_stream(server_end, &server.policy, &server.dial).await {
                debug!("in-memory tunnel stream ended: {e}");
            }
        });
        std::future::ready(Ok(client_end))
    }
}

/// One end of an in-memory stream, with the transport's end-of-stream semantics:
/// `shutdown` is a FIN (the other end reads EOF once it has read everything), while dropping an
/// end before its `shutdown` is a reset (the other end's read fails with `ConnectionReset`
/// once the bytes already in the pipe are read).
#[derive(Debug)]
pub struct MemStream {
    io: DuplexStream,
    /// `[0]`: the first end was dropped before its FIN; `[1]`: the second end.
    abandoned: Arc<[AtomicBool; 2]>,
    /// Which end this is (0 or 1).
    side: usize,
    /// Our FIN was sent: dropping is a clean end.
    finished: bool,
}

impl MemStream {
    /// Two connected ends, each buffering up to `capacity` bytes per direction.
    pub fn pair(capacity: usize) -> (Self, Self) {
        let (a, b) = tokio::io::duplex(capacity.max(1));
        let abandoned = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let end = |io, side| Self {
            io,
            abandoned: abandoned.clone(),
            side,
            finished: false,
        };
        (end(a, 0), end(b, 1))
    }

    /// Abandons this end: the other end's reads fail with `ConnectionReset`, as after a
    /// RESET_STREAM on the real transport.
    pub fn reset(self) {
        drop(self);
    }

    fn peer_abandoned(&self) -> bool {
        self.abandoned
            .get(1 - self.side)
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }
}

impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if wanted && buf.filled().len() == before && self.peer_abandoned() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "in-memory stream reset by the other end",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
        self.finished = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        // Set before the pipe closes (the field drops after this), so the other end never sees
        // the EOF without the flag.
        if !self.finished
            && let Some(flag) = self.abandoned.get(self.side)
        {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn shutdown_is_eof_and_drop_is_reset() {
        let (mut a, mut b) = MemStream::pair(64);
        a.write_all(b"done").await.unwrap();
        a.shutdown().await.unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"done");

        let (mut a, mut b) = MemStream::pair(64);
        a.write_all(b"cut").await.unwrap();
        a.reset();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"cut", "bytes already sent are still read");
        let err = b.read(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
