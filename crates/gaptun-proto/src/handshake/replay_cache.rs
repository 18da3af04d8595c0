//! Remembers recent Initials so that a replayed one is dropped.

use std::collections::HashSet;
use std::time::Duration;

/// Fingerprints of the Initials accepted within the last `window` (two rotating generations, so
/// memory is bounded by the handshake rate times twice the window).
///
/// An Initial stamped `T` is accepted while the server's clock is in `T - window ..= T + window`,
/// a span of `2 * window`, so a fingerprint must be remembered that long. Each generation
/// therefore covers `2 * window` of server time: a fingerprint lives through the rest of its own
/// generation and all of the next, at least `2 * window`. Memory is bounded by the handshake rate
/// times `4 * window`.
#[derive(Debug)]
pub struct ReplayCache {
    /// Length of one generation in milliseconds (at least 1).
    period_ms: u128,
    /// Index (`unix_time / period`) of the current generation.
    current_index: u128,
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
}

impl ReplayCache {
    /// A cache for Initials whose timestamps are accepted within +- `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            period_ms: window.as_millis().saturating_mul(2).max(1),
            current_index: 0,
            current: HashSet::new(),
            previous: HashSet::new(),
        }
    }

    /// Records `fingerprint` seen at `unix_time`; false if it was already there (a replay).
    ///
    /// A clock that steps backwards does not rotate; the entries stay until time passes the
    /// current generation again.
    pub fn insert(&mut self, unix_time: Duration, fingerprint: [u8; 32]) -> bool {
        self.rotate(unix_time);
        if self.previous.contains(&fingerprint) {
            return false;
        }
        self.current.insert(fingerprint)
    }

    /// How many fingerprints are remembered.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether no fingerprint is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate(&mut self, unix_time: Duration) {
        let index = unix_time.as_millis() / self.period_ms;
        if index <= self.current_index {
            return;
        }
        if index == self.current_index + 1 {
            self.previous = std::mem::take(&mut self.current);
        } else {
            self.previous.clear();
            self.current.clear();
        }
        self.current_index = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn duplicates_are_refused() {
        let mut c = ReplayCache::new(W);
        assert!(c.is_empty());
        assert!(c.insert(secs(1000), [1; 32]));
        assert!(c.insert(secs(1000), [2; 32]));
        assert!(!c.insert(secs(1001), [1; 32]));
        assert_eq!(c.len(), 2);
    }

    /// A fingerprint is remembered for at least twice the window, wherever in its generation
    /// it was inserted.
    #[test]
    fn remembered_for_twice_the_window() {
        for start in [1200u64, 1201, 1260, 1319] {
            let mut c = ReplayCache::new(W);
            assert!(c.insert(secs(start), [7; 32]));
            assert!(!c.insert(secs(start + 120), [7; 32]), "start {start}");
        }
    }

    #[test]
    fn forgotten_after_two_generations() {
        let mut c = ReplayCache::new(W);
        assert!(c.insert(secs(1200), [7; 32]));
        // Generation 10 (1200..1320), then 11 keeps it, 12 drops it.
        assert!(c.insert(secs(1330), [8; 32]));
        assert!(!c.insert(secs(1330), [7; 32]));
        assert!(c.insert(secs(1440), [9; 32]));
        assert!(c.insert(secs(1440), [7; 32]));
        // A jump over a whole generation clears everything.
        assert!(c.insert(secs(5000), [9; 32]));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn backwards_clock_keeps_entries() {
        let mut c = ReplayCache::new(W);
        assert!(c.insert(secs(1000), [1; 32]));
        assert!(!c.insert(secs(10), [1; 32]));
    }

    #[test]
    fn zero_window_does_not_divide_by_zero() {
        let mut c = ReplayCache::new(Duration::ZERO);
        assert!(c.insert(secs(1), [1; 32]));
        assert!(!c.insert(secs(1), [1; 32]));
        assert!(c.insert(secs(2), [1; 32]));
    }
}
