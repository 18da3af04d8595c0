//! Counters of a client's SOCKS5 server and port forwards: the tunnel streams each opened
//! and the bytes that went through them, counted as they move (a long download shows while it
//! runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gaptun_apps::ByteCounter;

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
        Counted::new(stream, StreamCounter(Arc::clone(self)))
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
pub type Counted<S> = gaptun_apps::Counted<S, StreamCounter>;

/// One stream's share of a [`ForwardStats`]: writes go up the tunnel, reads come down, and
/// the stream stops being "open" when this is dropped (with its [`Counted`]).
#[derive(Debug)]
pub struct StreamCounter(Arc<ForwardStats>);

impl ByteCounter for StreamCounter {
    fn read(&self, n: u64) {
        self.0.down.fetch_add(n, Ordering::Relaxed);
    }

    fn written(&self, n: u64) {
        self.0.up.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for StreamCounter {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gaptun_runtime::ChunkStream;
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
