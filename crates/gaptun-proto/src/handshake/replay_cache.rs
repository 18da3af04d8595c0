//! Remembers recent Initials so that a replayed one is dropped, across restarts too when the
//! caller persists what [`ReplayCache::take_journal`] reports and loads it back.

use std::collections::HashMap;
use std::time::Duration;

/// One accepted Initial: its fingerprint and the server's Unix time (ms) when it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRecord {
    /// Server Unix time of acceptance, in milliseconds.
    pub unix_ms: u64,
    /// The Initial's fingerprint (the client's ephemeral public key).
    pub fingerprint: [u8; 32],
}

/// What changed since the last [`ReplayCache::take_journal`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayJournal {
    /// Records accepted since the last call, in order.
    pub new: Vec<ReplayRecord>,
    /// Whether a generation was dropped since: a persisted copy can be compacted to
    /// [`ReplayCache::records`].
    pub rotated: bool,
}

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
    current: HashMap<[u8; 32], u64>,
    previous: HashMap<[u8; 32], u64>,
    /// Initials stamped before this (client clock, ms) are refused: set to the server's start
    /// when no persisted state was loaded, since Initials recorded before a restart are unknown.
    not_before_ms: Option<u64>,
    journal: ReplayJournal,
}

impl ReplayCache {
    /// A cache for Initials whose timestamps are accepted within +- `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            period_ms: window.as_millis().saturating_mul(2).max(1),
            current_index: 0,
            current: HashMap::new(),
            previous: HashMap::new(),
            not_before_ms: None,
            journal: ReplayJournal::default(),
        }
    }

    /// Refuses Initials stamped before `unix_time` (see `docs/protocol.md`, "Replay cache").
    pub fn refuse_stamped_before(&mut self, unix_time: Duration) {
        self.not_before_ms = Some(u64::try_from(unix_time.as_millis()).unwrap_or(u64::MAX));
    }

    /// Whether an Initial stamped `client_ms` is older than the floor.
    pub(crate) fn stamped_too_early(&self, client_ms: u64) -> bool {
        self.not_before_ms.is_some_and(|floor| client_ms < floor)
    }

    /// Records `fingerprint` seen at `unix_time`; false if it was already there (a replay).
    ///
    /// A clock that steps backwards does not rotate; the entries stay until time passes the
    /// current generation again.
    pub fn insert(&mut self, unix_time: Duration, fingerprint: [u8; 32]) -> bool {
        self.rotate(unix_time);
        if self.previous.contains_key(&fingerprint) || self.current.contains_key(&fingerprint) {
            return false;
        }
        let unix_ms = u64::try_from(unix_time.as_millis()).unwrap_or(u64::MAX);
        self.current.insert(fingerprint, unix_ms);
        self.journal.new.push(ReplayRecord {
            unix_ms,
            fingerprint,
        });
        true
    }

    /// Loads persisted records at server time `unix_time`: those still within two generations
    /// are remembered again. Loading lifts the floor of [`ReplayCache::refuse_stamped_before`]:
    /// what was accepted before the restart is known.
    pub fn load(&mut self, unix_time: Duration, records: impl IntoIterator<Item = ReplayRecord>) {
        self.rotate(unix_time);
        for r in records {
            let index = u128::from(r.unix_ms) / self.period_ms;
            if index >= self.current_index {
                self.current.insert(r.fingerprint, r.unix_ms);
            } else if index + 1 == self.current_index {
                self.previous.insert(r.fingerprint, r.unix_ms);
            }
        }
        self.not_before_ms = None;
        self.journal = ReplayJournal {
            new: Vec::new(),
            rotated: true,
        };
    }

    /// Records accepted and generations dropped since the last call.
    pub fn take_journal(&mut self) -> ReplayJournal {
        std::mem::take(&mut self.journal)
    }

    /// Every remembered record, oldest generation first.
    pub fn records(&self) -> Vec<ReplayRecord> {
        let mut out: Vec<ReplayRecord> = Vec::with_capacity(self.len());
        for generation in [&self.previous, &self.current] {
            let mut part: Vec<ReplayRecord> = generation
                .iter()
                .map(|(&fingerprint, &unix_ms)| ReplayRecord {
                    unix_ms,
                    fingerprint,
                })
                .collect();
            part.sort_by_key(|r| (r.unix_ms, r.fingerprint));
            out.extend(part);
        }
        out
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
        self.journal.rotated = true;
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

    /// What a restarted server loads back refuses the same fingerprints; records older than two
    /// generations are not loaded; loading lifts the start-time floor.
    #[test]
    fn journal_and_load_survive_a_restart() {
        let mut c = ReplayCache::new(W);
        c.refuse_stamped_before(secs(1200));
        assert!(c.stamped_too_early(1_199_999));
        assert!(!c.stamped_too_early(1_200_000));
        assert!(c.insert(secs(1200), [1; 32]));
        assert!(c.insert(secs(1250), [2; 32]));
        let j = c.take_journal();
        assert!(j.rotated, "first insert moved to generation 10");
        assert_eq!(
            j.new,
            vec![
                ReplayRecord {
                    unix_ms: 1_200_000,
                    fingerprint: [1; 32]
                },
                ReplayRecord {
                    unix_ms: 1_250_000,
                    fingerprint: [2; 32]
                }
            ]
        );
        assert_eq!(c.take_journal(), ReplayJournal::default());
        let old = ReplayRecord {
            unix_ms: 1_000_000,
            fingerprint: [3; 32],
        };
        let mut records = c.records();
        records.push(old);

        let mut restarted = ReplayCache::new(W);
        restarted.refuse_stamped_before(secs(1330));
        restarted.load(secs(1330), records);
        assert!(!restarted.stamped_too_early(0));
        assert_eq!(restarted.len(), 2, "the record of generation 8 is gone");
        assert!(!restarted.insert(secs(1331), [1; 32]));
        assert!(!restarted.insert(secs(1331), [2; 32]));
        assert!(restarted.insert(secs(1331), [3; 32]));
        assert_eq!(restarted.records().len(), 3);
    }
}
