//! Remembers recent Initials so that a replayed one is dropped.

use std::time::Duration;

/// Fingerprints of the Initials accepted within the last `window` (two rotating generations, so
/// memory is bounded by the handshake rate times twice the window).
#[derive(Debug)]
pub struct ReplayCache {
    _private: (),
}

impl ReplayCache {
    /// A cache for Initials whose timestamps are accepted within +- `window`.
    pub fn new(window: Duration) -> Self {
        let _ = window;
        todo!("helper: ReplayCache::new")
    }

    /// Records `fingerprint` seen at `unix_time`; false if it was already there (a replay).
    pub fn insert(&mut self, unix_time: Duration, fingerprint: [u8; 32]) -> bool {
        let _ = (unix_time, fingerprint);
        todo!("helper: ReplayCache::insert")
    }
}
