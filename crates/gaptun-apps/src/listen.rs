//! Accept loops that survive transient errors.
//!
//! `accept()` fails for reasons that say nothing about the listener (the peer reset before we
//! accepted, or we ran out of file descriptors under load). A proxy must not stop serving
//! because of them; it pauses and goes on. While the failures continue the pause grows (100 ms
//! up to 1 s), so running out of descriptors neither spins nor floods the log: at most one line
//! per [`LOG_INTERVAL`], saying how many similar failures it stands for.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// First pause after a failed `accept()`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest pause between attempts while `accept()` keeps failing.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most one "accept failed" line per interval (for the whole process).
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The pause before the next attempt: doubles per consecutive failure, from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The pause after one more failure.
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        pause
    }
}

/// Lets one log line through per interval and counts the ones held back.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that lets the first line through (`const`, for a `static`).
    pub(crate) const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// At `now`: `Some(n)` when a line may go out (`n` similar lines were held back since the
    /// last one), `None` when this one is held back.
    pub(crate) fn allow(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

static ACCEPT_LOG: Mutex<LogLimiter> = Mutex::new(LogLimiter::new());

/// Accepts the next connection, retrying transient failures.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Backoff::default();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                let pause = backoff.failed();
                log_accept_error(&e, pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn log_accept_error(e: &io::Error, pause: Duration) {
    if let Some(held) = limited(&ACCEPT_LOG) {
        warn!(
            "accept failed: {e}; retrying in {} ms{held}",
            pause.as_millis()
        );
    }
}

/// Whether a line limited by `limiter` may go out now: `Some` with what to append to it (how
/// many similar lines were held back, if any), `None` when this one is held back.
pub(crate) fn limited(limiter: &Mutex<LogLimiter>) -> Option<String> {
    let held = limiter
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allow(Instant::now(), LOG_INTERVAL)?;
    Some(match held {
        0 => String::new(),
        n => format!(
            " ({n} similar failures in the last {} s not logged)",
            LOG_INTERVAL.as_secs()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_one_second() {
        let mut b = Backoff::default();
        let pauses: Vec<u128> = (0..7).map(|_| b.failed().as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let interval = Duration::from_secs(10);
        assert_eq!(l.allow(at(0), interval), Some(0));
        // A failure every 50 ms (the old behaviour) for the rest of the interval: all held.
        let held = (1..200)
            .filter(|i| l.allow(at(i * 50), interval).is_none())
            .count();
        assert_eq!(held, 199);
        assert_eq!(l.allow(at(10_000), interval), Some(199));
        assert_eq!(l.allow(at(10_001), interval), None);
        assert_eq!(l.allow(at(25_000), interval), Some(1));
    }
}
