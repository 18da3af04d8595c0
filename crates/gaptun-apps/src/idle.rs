//! Idle tracking for UDP relays, which have no end-of-stream of their own.
//!
//! UDP "connections" never close, so every relay of datagrams (server relay, UDP forward
//! sessions) remembers when a datagram last moved and ends itself after a quiet period;
//! otherwise sessions, sockets and tunnel streams would accumulate forever.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When traffic last moved, shared by the directions of one relay.
#[derive(Debug)]
pub(crate) struct Activity(Mutex<Instant>);

impl Activity {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Instant::now()))
    }

    /// Records that a datagram moved now.
    pub(crate) fn touch(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Instant::now();
        }
    }

    fn deadline(&self, idle: Duration) -> Instant {
        let last = self.0.lock().map_or_else(|_| Instant::now(), |last| *last);
        last + idle
    }

    /// Completes once nothing has moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.deadline(idle);
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn touching_postpones_the_idle_end() {
        let activity = Activity::new();
        let start = Instant::now();
        let idle = activity.idle_for(Duration::from_secs(10));
        let toucher = async {
            tokio::time::sleep(Duration::from_secs(6)).await;
            activity.touch();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = idle => {}
            () = toucher => {}
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(16));
    }
}
