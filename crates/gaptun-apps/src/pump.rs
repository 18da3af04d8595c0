//! Bounded copy loops between two byte streams, with half-close propagation.
//!
//! Every relay in this crate (SOCKS5 CONNECT, TCP forwards, the server's dialled connections)
//! ends up here. Two properties matter:
//! - back-pressure: each direction owns one bounded buffer and writes it out completely before
//!   reading again, so a slow reader stalls the writer instead of growing memory;
//! - cheap idle connections: the buffer starts small and grows only while reads fill it (bulk
//!   transfer), and falls back once the flow turns light again. A proxy holds thousands of
//!   connections that mostly wait, each waiting on a read with its buffer allocated.
//! - half-close: EOF on one side becomes `shutdown()` (FIN) on the other, and the other
//!   direction keeps flowing until it ends too (protocols like `nc -q` or HTTP/1.0 clients
//!   rely on this).
//!
//! If either direction fails, both are dropped: a reset on one side must not leave the other
//! side waiting forever. Between a TCP connection and a tunnel stream ([`relay_tcp`]) the
//! failure is passed on as a failure, never as a clean end: the TCP connection is aborted with
//! a reset (RST) and the tunnel stream is dropped before its FIN, which resets it. A reader on
//! either side thus gets `ECONNRESET` for a transfer that was cut, and EOF only for one that
//! the far side ended itself; a client without a length (HTTP/1.0, `nc`, a tar stream) can
//! tell truncated data from complete data.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
pub use gaptun_runtime::ChunkStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

/// Largest buffer of one copy direction, reached during bulk transfers. Each read or write of
/// a local TCP socket costs a system call, a lock of the socket and, on the reading side, a
/// window update to the sender; on a fast path these per-call costs are a large part of a
/// relay's CPU. 256 KiB per call took 0.88–0.94 × the CPU per byte of 64 KiB on the loopback
/// expose bulk (two series, docs/benchmarks.md); 1 MiB saved nothing more. Idle connections never get
/// there: the buffer starts at [`INITIAL_COPY_BUF`] and grows only while reads fill it.
pub const COPY_BUF: usize = 256 * 1024;

/// Buffer a copy direction starts with, and returns to when reads are small.
pub const INITIAL_COPY_BUF: usize = 1024;

/// The buffer of one copy direction: grows ×4 while reads fill it, up to its limit, and shrinks
/// back to [`INITIAL_COPY_BUF`] after a read that used less than a sixteenth of it.
struct CopyBuf {
    buf: Vec<u8>,
    max: usize,
}

impl CopyBuf {
    fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            buf: vec![0u8; INITIAL_COPY_BUF.min(max)],
            max,
        }
    }

    /// Adapts the size after a read of `n` bytes (whose data has been used).
    fn adapt(&mut self, n: usize) {
        let len = self.buf.len();
        if n == len && len < self.max {
            self.buf = vec![0u8; (len * 4).min(self.max)];
        } else if n < len / 16 && len > INITIAL_COPY_BUF {
            self.buf = vec![0u8; INITIAL_COPY_BUF.min(self.max)];
        }
    }
}

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Copies `reader` into `writer` through one buffer of at most `buf_size` bytes until EOF,
/// then shuts the writer down (FIN). Never holds more than `buf_size` bytes that the writer
/// has not taken.
pub async fn copy_half<R, W>(reader: &mut R, writer: &mut W, buf_size: usize) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = CopyBuf::new(buf_size);
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf.buf).await?;
        let Some(chunk) = buf.buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        writer.write_all(chunk).await?;
        writer.flush().await?;
        total += n as u64;
        buf.adapt(n);
    }
    writer.shutdown().await?;
    Ok(total)
}

/// Relays between `a` and `b` in both directions until both have ended (or one failed).
pub async fn relay<A, B>(a: A, b: B) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let (a_to_b, b_to_a) = tokio::try_join!(
        copy_half(&mut a_read, &mut b_write, COPY_BUF),
        copy_half(&mut b_read, &mut a_write, COPY_BUF),
    )?;
    Ok(Transferred { a_to_b, b_to_a })
}

impl ChunkStream for crate::mem::MemStream {}

/// Locks the tunnel stream shared by the two directions of a relay. The lock is only held
/// inside one poll, so it is never contended; a poisoned lock (a panic while polling) ends the
/// relay with an error.
fn lock<S>(tunnel: &Mutex<S>) -> io::Result<std::sync::MutexGuard<'_, S>> {
    tunnel
        .lock()
        .map_err(|_| io::Error::other("tunnel stream lock poisoned"))
}

/// Reads a tunnel stream shared by a relay's two directions through `AsyncRead` (with a
/// copy), for what comes before the bulk data, such as a reply header.
pub struct LockedReader<'a, S>(pub &'a Mutex<S>);

impl<S: ChunkStream> AsyncRead for LockedReader<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(self.0)?).poll_read(cx, buf)
    }
}

/// Copies `local` into the tunnel stream until EOF, then sends FIN. Reads go into one
/// [`BytesMut`] whose filled part is handed to the stream as it is (no copy); like
/// [`copy_half`], at most one buffer is read ahead of what the stream took, and the buffer
/// starts small and grows only while reads fill it.
pub async fn upload<L, S>(local: &mut L, tunnel: &Mutex<S>, buf_size: usize) -> io::Result<u64>
where
    L: AsyncRead + Unpin + ?Sized,
    S: ChunkStream,
{
    let max = buf_size.max(1);
    let mut size = INITIAL_COPY_BUF.min(max);
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    loop {
        // Reads go into what is left of the current allocation until a quarter of the target
        // size remains: chunks cut from one allocation keep all of it alive until the last is
        // acknowledged, so a fresh one per short read would pin far more than the data.
        // (`reserve` reuses the allocation if the stream already released every chunk of it.)
        if buf.capacity() <= size / 4 {
            buf.reserve(size);
        }
        let n = local.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            poll_fn(|cx| lock(tunnel)?.poll_write_chunk(cx, &mut chunk)).await?;
        }
        total += n as u64;
        if n >= size && size < max {
            size = (size * 4).min(max);
        } else if n < size / 16 && size > INITIAL_COPY_BUF {
            size = INITIAL_COPY_BUF.min(max);
            buf = BytesMut::new();
        }
    }
    poll_fn(|cx| Pin::new(&mut *lock(tunnel)?).poll_shutdown(cx)).await?;
    Ok(total)
}

/// Copies the tunnel stream into `local` until its end, then shuts `local` down (FIN). The
/// chunks the stream hands over are written as they are (no copy), many per vectored write;
/// at most [`COPY_BUF`] bytes are taken from the stream ahead of what `local` accepted.
pub async fn download<S, L>(tunnel: &Mutex<S>, local: &mut L) -> io::Result<u64>
where
    S: ChunkStream,
    L: AsyncWrite + Unpin + ?Sized,
{
    let mut total = 0u64;
    let mut chunks = Vec::new();
    loop {
        poll_fn(|cx| lock(tunnel)?.poll_read_chunks(cx, COPY_BUF, &mut chunks)).await?;
        if chunks.is_empty() {
            break;
        }
        total += write_all_chunks(local, &mut chunks).await?;
    }
    local.shutdown().await?;
    Ok(total)
}

/// Most buffers passed to one vectored write (Linux takes up to 1024).
const MAX_IOVECS: usize = 64;

/// Writes all of `chunks` to `local`, leaving `chunks` empty; returns the bytes written. A
/// writer with vectored writes (a TCP socket) gets many chunks per call without a copy; any
/// other writer gets them copied into one buffer, so that a batch still costs one write rather
/// than one per chunk (a packet).
async fn write_all_chunks<L>(local: &mut L, chunks: &mut Vec<Bytes>) -> io::Result<u64>
where
    L: AsyncWrite + Unpin + ?Sized,
{
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    if !local.is_write_vectored() {
        let joined = chunks.concat();
        chunks.clear();
        local.write_all(&joined).await?;
        return Ok(total);
    }
    let mut first = 0;
    while first < chunks.len() {
        let rest = chunks.get(first..).unwrap_or_default();
        let slices: Vec<io::IoSlice<'_>> = rest
            .iter()
            .take(MAX_IOVECS)
            .map(|c| io::IoSlice::new(c))
            .collect();
        let mut n = local.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(chunk) = chunks.get_mut(first) else {
                break;
            };
            let take = n.min(chunk.len());
            chunk.advance(take);
            n -= take;
            if chunk.is_empty() {
                first += 1;
            }
        }
    }
    chunks.clear();
    Ok(total)
}

/// Relays between a local connection and a tunnel stream in both directions until both have
/// ended (or one failed); like [`relay`], but through the stream's chunk methods.
/// `a_to_b` counts local → tunnel.
pub async fn relay_stream<L, S>(local: L, tunnel: S) -> io::Result<Transferred>
where
    L: AsyncRead + AsyncWrite + Unpin,
    S: ChunkStream,
{
    let (mut local_read, mut local_write) = tokio::io::split(local);
    let tunnel = Mutex::new(tunnel);
    let (a_to_b, b_to_a) = tokio::try_join!(
        upload(&mut local_read, &tunnel, COPY_BUF),
        download(&tunnel, &mut local_write),
    )?;
    Ok(Transferred { a_to_b, b_to_a })
}

/// Relays between a local TCP connection and a tunnel stream until both directions ended.
///
/// EOF on either side is passed on as FIN (half-close). Any error — the tunnel stream reset by
/// the peer, the tunnel connection lost, the TCP peer resetting — ends both directions at once:
/// the TCP connection is aborted with RST ([`abort_tcp`]) and the tunnel stream is dropped
/// without FIN (a reset for the transport; see [`crate::tunnel`]).
pub async fn relay_tcp<S>(mut tcp: TcpStream, tunnel: S) -> io::Result<Transferred>
where
    S: ChunkStream,
{
    let tunnel = Mutex::new(tunnel);
    let result = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        tokio::try_join!(
            upload(&mut tcp_read, &tunnel, COPY_BUF),
            download(&tunnel, &mut tcp_write),
        )
    };
    match result {
        Ok((to_tunnel, from_tunnel)) => Ok(Transferred {
            a_to_b: to_tunnel,
            b_to_a: from_tunnel,
        }),
        Err(e) => {
            abort_tcp(tcp);
            drop(tunnel);
            Err(e)
        }
    }
}

/// Closes `tcp` with a reset (SO_LINGER 0, then close) rather than a FIN, so that its peer
/// reads `ECONNRESET` and knows the data it got is incomplete.
pub fn abort_tcp(tcp: TcpStream) {
    if let Err(e) = tcp.set_zero_linger() {
        debug!("cannot set SO_LINGER 0 before a reset: {e}");
    }
    drop(tcp);
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;

    use super::*;

    /// An endless source of bytes that counts how much was taken from it.
    struct CountingSource(Arc<AtomicU64>);

    impl AsyncRead for CountingSource {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = buf.remaining();
            buf.put_slice(&vec![7u8; n]);
            self.0.fetch_add(n as u64, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn buffer_grows_with_full_reads_and_shrinks_with_small_ones() {
        let mut b = CopyBuf::new(64 * 1024);
        assert_eq!(b.buf.len(), 1024);
        b.adapt(100);
        assert_eq!(b.buf.len(), 1024, "a partial read keeps the size");
        b.adapt(1024);
        assert_eq!(b.buf.len(), 4096);
        b.adapt(4096);
        b.adapt(16 * 1024);
        assert_eq!(b.buf.len(), 64 * 1024);
        b.adapt(64 * 1024);
        assert_eq!(b.buf.len(), 64 * 1024, "capped");
        b.adapt(8 * 1024);
        assert_eq!(b.buf.len(), 64 * 1024, "a read of an eighth keeps it");
        b.adapt(100);
        assert_eq!(b.buf.len(), 1024, "a small read shrinks it");
        let small = CopyBuf::new(100);
        assert_eq!(small.buf.len(), 100);
    }

    #[tokio::test]
    async fn slow_writer_bounds_what_is_read_ahead() {
        let taken = Arc::new(AtomicU64::new(0));
        let mut source = CountingSource(taken.clone());
        // A pipe of 4 KiB whose far end nobody reads: the writer blocks once it is full.
        let (mut near, _far) = tokio::io::duplex(4096);
        let copy = copy_half(&mut source, &mut near, 1000);
        let res = tokio::time::timeout(Duration::from_millis(200), copy).await;
        assert!(res.is_err(), "copy must block, not finish");
        let taken = taken.load(Ordering::Relaxed);
        // At most: what fits in the pipe plus one buffer in flight.
        assert!(taken <= 4096 + 1000, "read {taken} bytes ahead");
        assert!(taken >= 4096, "copy should fill the pipe, read {taken}");
    }

    /// Chunks written through a pipe that takes a few bytes at a time arrive whole and in
    /// order, whatever the split points of the vectored writes.
    #[tokio::test]
    async fn chunks_survive_partial_vectored_writes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut at = 0;
        for size in [1usize, 1300, 7, 65_536, 2, 999].iter().cycle() {
            let end = (at + size).min(data.len());
            chunks.push(Bytes::copy_from_slice(&data[at..end]));
            at = end;
            if at == data.len() {
                break;
            }
        }
        let (mut near, mut far) = tokio::io::duplex(333);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.map(|_| got)
        });
        let written = write_all_chunks(&mut near, &mut chunks).await.unwrap();
        drop(near);
        assert_eq!(written, data.len() as u64);
        assert!(chunks.is_empty());
        assert_eq!(reader.await.unwrap().unwrap(), data);
    }

    #[tokio::test]
    async fn half_close_propagates_and_other_direction_continues() {
        let (client, relay_a) = tokio::io::duplex(1024);
        let (relay_b, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(relay_a, relay_b));
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);

        client_w.write_all(b"request").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");

        // The server still answers after the client's FIN.
        server_w.write_all(b"response").await.unwrap();
        server_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");

        let moved = task.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                a_to_b: 7,
                b_to_a: 8
            }
        );
    }
}
