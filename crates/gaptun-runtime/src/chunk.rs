//! [`ChunkStream`]: a byte stream that can also pass data as [`Bytes`] chunks.
//!
//! The trait lives here, beside [`RtStream`], so that every crate that wraps a tunnel stream
//! (the apps' relays, the stats counters, the daemon's rate limiter) can implement it for its
//! own wrapper and keep the chunk path (no copy) through the wrapper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::RtStream;

/// Most bytes the copying fallback of [`ChunkStream::poll_read_chunks`] reads per call.
const FALLBACK_READ: usize = 64 * 1024;

/// A tunnel stream that can pass data as [`Bytes`] chunks. The runtime's streams do so without
/// copying (a received chunk is a slice of its datagram; a written chunk is queued as it is);
/// the default methods fall back to `AsyncRead`/`AsyncWrite` with a copy, for wrappers and test
/// streams.
pub trait ChunkStream: AsyncRead + AsyncWrite + Unpin {
    /// Appends the next pieces, at most `max` bytes in all, to `out`; nothing appended means
    /// the end of the stream.
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        let mut buf = vec![0u8; max.clamp(1, FALLBACK_READ)];
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *self).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                buf.truncate(n);
                if n > 0 {
                    out.push(Bytes::from(buf));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes the front of `data`, splitting off what was taken; returns how much.
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut *self).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                data.advance(n.min(data.len()));
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
}

impl ChunkStream for RtStream {
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        Self::poll_read_chunks(self, cx, max, out)
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        Self::poll_write_chunk(self, cx, data)
    }
}

/// In-memory pipes (tests, the in-memory tunnel) take the copying defaults.
impl ChunkStream for tokio::io::DuplexStream {}
