//! Counters of a client's SOCKS5 server and port forwards: the tunnel streams each opened
//! and the bytes that went through them, counted as they move (a long download shows while it
//! runs).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use gaptun_runtime::ChunkStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::schema::ForwardRow;

/// Live counters of one forward (or of SOCKS5).
#[derive(Debug)]
pub struct ForwardStats {
    kind: &'static str,
    listen: String,
    target: Option<String>,
    streams_open: AtomicU64,
    streams_total: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl ForwardStats {
    /// `kind`: `socks`, `tcp` or `udp`; `target`: `None` for SOCKS5.
    pub fn new(kind: &'static str, listen: String, target: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            kind,
            listen,
            target,
            streams_open: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        })
    }

    /// Counts `stream` (a tunnel stream of this forward) until it is dropped: writes go up
    /// the tunnel, reads come down.
    pub fn count<S>(self: &Arc<Self>, stream: S) -> Counted<S> {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        Counted {
            inner: stream,
            stats: Arc::clone(self),
        }
    }

    /// The figures now (rates left at zero: the collector measures them).
    pub fn row(&self) -> ForwardRow {
        ForwardRow {
            kind: self.kind.to_owned(),
            listen: self.listen.clone(),
            target: self.target.clone(),
            streams_open: self.streams_open.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
            up_bytes_per_sec: 0.0,
            down_bytes_per_sec: 0.0,
        }
    }
}

/// A tunnel stream counted into a [`ForwardStats`].
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    stats: Arc<ForwardStats>,
}

impl<S> Counted<S> {
    /// The stream being counted (for what it carries besides bytes, such as its connection's
    /// datagrams).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.stats.down.fetch_add(n as u64, Ordering::Relaxed);
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            self.stats.up.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counted chunk reads and writes keep the inner stream's chunk path (no copy).
impl<S: ChunkStream> ChunkStream for Counted<S> {
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        let before = out.len();
        let res = self.inner.poll_read_chunks(cx, max, out);
        let n: usize = out[before..].iter().map(Bytes::len).sum();
        self.stats.down.fetch_add(n as u64, Ordering::Relaxed);
        res
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let res = self.inner.poll_write_chunk(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            self.stats.up.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_streams_and_bytes_both_ways() {
        let stats = ForwardStats::new("tcp", "127.0.0.1:2222".into(), Some("db:5432".into()));
        let (near, mut far) = tokio::io::duplex(1024);
        let mut counted = stats.count(near);
        counted.write_all(b"hello").await.unwrap();
        far.write_all(b"world!!").await.unwrap();
        let mut buf = [0u8; 7];
        counted.read_exact(&mut buf).await.unwrap();
        let row = stats.row();
        assert_eq!((row.streams_open, row.streams_total), (1, 1));
        assert_eq!((row.bytes_up, row.bytes_down), (5, 7));
        drop(counted);
        let row = stats.row();
        assert_eq!((row.streams_open, row.streams_total), (0, 1));
        assert_eq!(row.target.as_deref(), Some("db:5432"));
    }

    #[tokio::test]
    async fn counts_chunk_reads_and_writes() {
        let stats = ForwardStats::new("tcp", "127.0.0.1:2222".into(), None);
        let (near, mut far) = tokio::io::duplex(1024);
        let mut counted = stats.count(near);
        let mut data = Bytes::from_static(b"hello");
        let n = std::future::poll_fn(|cx| counted.poll_write_chunk(cx, &mut data))
            .await
            .unwrap();
        assert_eq!((n, data.len()), (5, 0));
        far.write_all(b"world!!").await.unwrap();
        let mut got = Vec::new();
        std::future::poll_fn(|cx| counted.poll_read_chunks(cx, 64, &mut got))
            .await
            .unwrap();
        assert_eq!(got.concat(), b"world!!");
        let row = stats.row();
        assert_eq!((row.bytes_up, row.bytes_down), (5, 7));
    }
}
