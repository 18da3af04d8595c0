//! Counters per expose (for `ctl stats`): visitors now and in total, bytes both ways.
//!
//! Bytes are counted as they move ([`Counted`]), not when a connection closes, so a long
//! download shows up while it runs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::spec::{ExposeKind, PortRange};

/// Live counters of one expose, shared by its ports and visitors.
#[derive(Debug, Default)]
pub(crate) struct ExposeStats {
    visitors_now: AtomicU64,
    visitors_total: AtomicU64,
    /// From visitors towards the service.
    to_service: AtomicU64,
    /// From the service back to visitors.
    to_visitors: AtomicU64,
}

impl ExposeStats {
    /// Counts a visitor until the guard is dropped.
    pub(crate) fn visitor(self: &Arc<Self>) -> VisitorGuard {
        self.visitors_now.fetch_add(1, Ordering::Relaxed);
        self.visitors_total.fetch_add(1, Ordering::Relaxed);
        VisitorGuard(Arc::clone(self))
    }

    pub(crate) fn add_to_service(&self, n: u64) {
        self.to_service.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_to_visitors(&self, n: u64) {
        self.to_visitors.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, kind: ExposeKind, ports: PortRange) -> ExposeSnapshot {
        ExposeSnapshot {
            kind,
            ports,
            visitors_now: self.visitors_now.load(Ordering::Relaxed),
            visitors_total: self.visitors_total.load(Ordering::Relaxed),
            bytes_to_service: self.to_service.load(Ordering::Relaxed),
            bytes_to_visitors: self.to_visitors.load(Ordering::Relaxed),
        }
    }
}

/// Keeps a visitor counted in "now".
#[derive(Debug)]
pub(crate) struct VisitorGuard(Arc<ExposeStats>);

impl Drop for VisitorGuard {
    fn drop(&mut self) {
        self.0.visitors_now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One expose's figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeSnapshot {
    /// TCP or UDP.
    pub kind: ExposeKind,
    /// The server ports.
    pub ports: PortRange,
    /// Visitors being served now (TCP connections, UDP visitor addresses).
    pub visitors_now: u64,
    /// Visitors served since the expose was registered.
    pub visitors_total: u64,
    /// Bytes from visitors to the service.
    pub bytes_to_service: u64,
    /// Bytes from the service to visitors.
    pub bytes_to_visitors: u64,
}

/// Which way bytes read from the wrapped socket go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// The socket is the visitor's (server side): reads go to the service.
    Visitor,
    /// The socket is the service's (client side): reads go to the visitor.
    Service,
}

/// A socket whose reads and writes are counted into an expose's stats.
pub(crate) struct Counted<S> {
    inner: S,
    stats: Arc<ExposeStats>,
    side: Side,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, stats: Arc<ExposeStats>, side: Side) -> Self {
        Self { inner, stats, side }
    }

    fn count_read(&self, n: usize) {
        match self.side {
            Side::Visitor => self.stats.add_to_service(n as u64),
            Side::Service => self.stats.add_to_visitors(n as u64),
        }
    }

    fn count_written(&self, n: usize) {
        match self.side {
            Side::Visitor => self.stats.add_to_visitors(n as u64),
            Side::Service => self.stats.add_to_service(n as u64),
        }
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
        let n = buf.filled().len() - before;
        if n > 0 {
            self.count_read(n);
        }
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
            self.count_written(n);
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
        if let Poll::Ready(Ok(n)) = res {
            self.count_written(n);
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_visitors_and_bytes_both_ways() {
        let stats = Arc::new(ExposeStats::default());
        let ports = PortRange::new(80, 81).unwrap();
        let guard = stats.visitor();
        let (near, mut far) = tokio::io::duplex(1024);
        let mut counted = Counted::new(near, Arc::clone(&stats), Side::Visitor);
        far.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 7];
        counted.read_exact(&mut buf).await.unwrap();
        counted.write_all(b"response!").await.unwrap();
        let snap = stats.snapshot(ExposeKind::Tcp, ports);
        assert_eq!((snap.visitors_now, snap.visitors_total), (1, 1), "{snap:?}");
        assert_eq!((snap.bytes_to_service, snap.bytes_to_visitors), (7, 9));
        drop(guard);
        let _second = stats.visitor();
        let snap = stats.snapshot(ExposeKind::Tcp, ports);
        assert_eq!((snap.visitors_now, snap.visitors_total), (1, 2));

        let mut service = Counted::new(&mut far, Arc::clone(&stats), Side::Service);
        let mut nine = [0u8; 9];
        service.read_exact(&mut nine).await.unwrap();
        service.write_all(b"x").await.unwrap();
        let snap = stats.snapshot(ExposeKind::Tcp, ports);
        assert_eq!((snap.bytes_to_service, snap.bytes_to_visitors), (8, 18));
    }
}
