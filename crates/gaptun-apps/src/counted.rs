//! A byte-counting wrapper for any async socket or stream.
//!
//! Forwards, SOCKS5 and exposes all report bytes as they move (a long download shows up while
//! it runs, not when it ends). The wrapper is the same for all of them; what differs is where
//! the figures go and which way "read" means, so that is the [`ByteCounter`] each one brings.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gaptun_runtime::ChunkStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a [`Counted`] reports the bytes it moved. Only non-zero counts are reported.
///
/// A counter that must notice the end of its stream (an "open now" figure) does so in its own
/// `Drop`: it is dropped with the [`Counted`] that owns it.
pub trait ByteCounter {
    /// `n` bytes were read from the wrapped socket.
    fn read(&self, n: u64);
    /// `n` bytes were written to the wrapped socket.
    fn written(&self, n: u64);
}

/// A socket or stream whose reads and writes are reported to a [`ByteCounter`].
#[derive(Debug)]
pub struct Counted<S, C> {
    inner: S,
    counter: C,
}

impl<S, C: ByteCounter> Counted<S, C> {
    /// Counts `inner` into `counter` from now on.
    pub fn new(inner: S, counter: C) -> Self {
        Self { inner, counter }
    }

    /// The socket being counted (for what it carries besides bytes, such as its connection's
    /// datagrams).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin, C: ByteCounter + Unpin> AsyncRead for Counted<S, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.counter.read(n as u64);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin, C: ByteCounter + Unpin> AsyncWrite for Counted<S, C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.counter.written(n as u64);
        }
        res
    }

    /// Passed through, so that the relay's vectored writes of received chunks stay one
    /// system call per batch (the default writes only the first buffer).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.counter.written(n as u64);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counted chunk reads and writes keep the inner stream's chunk path (no copy).
impl<S: ChunkStream, C: ByteCounter + Unpin> ChunkStream for Counted<S, C> {
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        let before = out.len();
        let res = self.inner.poll_read_chunks(cx, max, out);
        let n: usize = out
            .get(before..)
            .unwrap_or_default()
            .iter()
            .map(Bytes::len)
            .sum();
        if n > 0 {
            self.counter.read(n as u64);
        }
        res
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let res = self.inner.poll_write_chunk(cx, data);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.counter.written(n as u64);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Default)]
    struct Tally {
        read: AtomicU64,
        written: AtomicU64,
        zero_reports: AtomicU64,
    }

    impl ByteCounter for Arc<Tally> {
        fn read(&self, n: u64) {
            if n == 0 {
                self.zero_reports.fetch_add(1, Ordering::Relaxed);
            }
            self.read.fetch_add(n, Ordering::Relaxed);
        }
        fn written(&self, n: u64) {
            if n == 0 {
                self.zero_reports.fetch_add(1, Ordering::Relaxed);
            }
            self.written.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn reports_bytes_read_and_written_and_no_empty_reads() {
        let tally = Arc::new(Tally::default());
        let (near, mut far) = tokio::io::duplex(1024);
        let mut counted = Counted::new(near, Arc::clone(&tally));
        counted.write_all(b"hello").await.unwrap();
        far.write_all(b"world!!").await.unwrap();
        drop(far);
        let mut got = Vec::new();
        counted.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"world!!");
        assert_eq!(tally.written.load(Ordering::Relaxed), 5);
        assert_eq!(tally.read.load(Ordering::Relaxed), 7);
        // read_to_end ended on a zero-byte read (EOF), which is not reported.
        assert_eq!(tally.zero_reports.load(Ordering::Relaxed), 0);
    }
}
