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

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// Largest buffer of one copy direction, reached during bulk transfers.
pub const COPY_BUF: usize = 64 * 1024;

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

/// Relays between a local TCP connection and a tunnel stream until both directions ended.
///
/// EOF on either side is passed on as FIN (half-close). Any error — the tunnel stream reset by
/// the peer, the tunnel connection lost, the TCP peer resetting — ends both directions at once:
/// the TCP connection is aborted with RST ([`abort_tcp`]) and the tunnel stream is dropped
/// without FIN (a reset for the transport; see [`crate::tunnel`]).
pub async fn relay_tcp<S>(mut tcp: TcpStream, mut tunnel: S) -> io::Result<Transferred>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        let (mut tunnel_read, mut tunnel_write) = tokio::io::split(&mut tunnel);
        tokio::try_join!(
            copy_half(&mut tcp_read, &mut tunnel_write, COPY_BUF),
            copy_half(&mut tunnel_read, &mut tcp_write, COPY_BUF),
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
