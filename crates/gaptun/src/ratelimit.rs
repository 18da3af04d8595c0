//! A user's rate limit on the server: one token bucket shared by every relay and expose stream
//! of the user's connections, charged for bytes in both directions.
//!
//! Bytes are charged after they move (a read or write is never split to fit the bucket): a
//! stream whose bucket is in debt waits until the debt is paid off before moving more. Over
//! time the user's streams together move `rate` bytes per second; a single read or write may
//! overshoot by its own size, which the following wait pays back.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gaptun_apps::pump::ChunkStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How much unused allowance a bucket keeps, in seconds of its rate: enough for a burst, not
/// enough to let an idle user exceed the rate for long.
const BURST_SECS: f64 = 0.05;

/// Smallest burst, in bytes: one read of the relay's buffers fits.
const MIN_BURST: f64 = 64.0 * 1024.0;

/// A token bucket in bytes.
#[derive(Debug)]
pub struct RateLimit {
    /// Bytes per second.
    rate: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Allowance left; negative: debt.
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A bucket for `mbit_per_s` megabits per second (10^6 bits).
    pub fn new(mbit_per_s: u32) -> Self {
        let rate = f64::from(mbit_per_s.max(1)) * 1e6 / 8.0;
        let burst = (rate * BURST_SECS).max(MIN_BURST);
        Self {
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// When the bucket is in debt: how long until it is not.
    fn wait(&self) -> Option<Duration> {
        let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / self.rate))
    }

    fn charge(&self, n: usize) {
        let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        b.tokens -= n as f64;
    }
}

/// A stream whose reads and writes draw from a shared [`RateLimit`] (none: not limited).
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    limit: Option<Arc<RateLimit>>,
    read_wait: Option<Pin<Box<Sleep>>>,
    write_wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Limited<S> {
    pub fn new(inner: S, limit: Option<Arc<RateLimit>>) -> Self {
        Self {
            inner,
            limit,
            read_wait: None,
            write_wait: None,
        }
    }
}

/// Ready when `limit` is out of debt; otherwise arms `wait` and returns `Pending`.
fn poll_allowance(
    limit: Option<&RateLimit>,
    wait: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let Some(limit) = limit else {
        return Poll::Ready(());
    };
    loop {
        if let Some(sleep) = wait.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *wait = None;
        }
        match limit.wait() {
            None => return Poll::Ready(()),
            Some(d) => *wait = Some(Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if poll_allowance(this.limit.as_deref(), &mut this.read_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(limit) = &this.limit {
            limit.charge(buf.filled().len() - before);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if poll_allowance(this.limit.as_deref(), &mut this.write_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, data);
        if let (Some(limit), Poll::Ready(Ok(n))) = (&this.limit, &res) {
            limit.charge(*n);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The chunk path draws from the same bucket as reads and writes.
impl<S: ChunkStream> ChunkStream for Limited<S> {
    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        if poll_allowance(self.limit.as_deref(), &mut self.read_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let before: usize = out.iter().map(Bytes::len).sum();
        let res = self.inner.poll_read_chunks(cx, max, out);
        if let Some(limit) = &self.limit {
            limit.charge(out.iter().map(Bytes::len).sum::<usize>() - before);
        }
        res
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if poll_allowance(self.limit.as_deref(), &mut self.write_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let res = self.inner.poll_write_chunk(cx, data);
        if let (Some(limit), Poll::Ready(Ok(n))) = (&self.limit, &res) {
            limit.charge(*n);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Two streams sharing an 8 Mbit/s bucket move 600 kB in about 0.6 s together, both ways
    /// counted; an unlimited stream is not slowed.
    #[tokio::test]
    async fn shared_bucket_holds_the_rate() {
        let limit = Arc::new(RateLimit::new(8)); // 1 MB/s
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (near, mut far) = tokio::io::duplex(64 * 1024);
            let mut limited = Limited::new(near, Some(Arc::clone(&limit)));
            tasks.push(tokio::spawn(async move {
                // 150 kB written through the limit, 150 kB read through it.
                let reader = tokio::spawn(async move {
                    let mut got = vec![0u8; 150_000];
                    far.read_exact(&mut got).await.unwrap();
                    far.write_all(&got).await.unwrap();
                });
                limited.write_all(&vec![7u8; 150_000]).await.unwrap();
                let mut back = vec![0u8; 150_000];
                limited.read_exact(&mut back).await.unwrap();
                reader.await.unwrap();
                assert!(back.iter().all(|&b| b == 7));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        // 600 kB at 1 MB/s, less the initial burst (64 kB) and one read's overshoot; a busy
        // machine may only add time.
        assert!((0.45..1.5).contains(&took), "took {took} s");

        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut free = Limited::new(near, None);
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1_000_000];
            far.read_exact(&mut got).await.unwrap();
        });
        free.write_all(&vec![1u8; 1_000_000]).await.unwrap();
        reader.await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(300));
    }
}
