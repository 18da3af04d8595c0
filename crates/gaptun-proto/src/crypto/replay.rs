//! Anti-replay window over packet numbers (a sliding bitmap, as in IPsec and WireGuard).

/// Number of 64-bit words in the bitmap.
const WORDS: usize = (ReplayWindow::SIZE / 64) as usize;

/// Remembers which of the most recent [`ReplayWindow::SIZE`] packet numbers were received.
///
/// The bitmap is a ring indexed by `pn % SIZE`: it always describes the numbers
/// `largest - SIZE + 1 ..= largest`, and advancing `largest` clears the slots of the numbers that
/// fall out.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    bits: [u64; WORDS],
    largest: Option<u64>,
}

impl ReplayWindow {
    /// How far behind the highest packet number a packet may arrive and still be accepted.
    ///
    /// 32 768 packets (a 4 KiB bitmap per connection): the TLS carrier spreads one connection's
    /// packets over several TCP connections, and one of them can fall megabytes behind the
    /// others (its receiver not scheduled for a while, or TCP recovering a loss at 100 Mbit/s
    /// and more); with 4096 the packets of the one behind arrived "too old" and were dropped.
    pub const SIZE: u64 = 32_768;

    /// An empty window.
    pub fn new() -> Self {
        Self {
            bits: [0; WORDS],
            largest: None,
        }
    }

    /// Whether `pn` is new and not too old. Does not record it: call [`ReplayWindow::insert`]
    /// only after the packet has been authenticated.
    ///
    /// Fresh means: above the largest recorded number, or within the last [`Self::SIZE`] numbers
    /// (`pn > largest - SIZE`) and not recorded.
    pub fn is_fresh(&self, pn: u64) -> bool {
        match self.largest {
            None => true,
            Some(largest) if pn > largest => true,
            Some(largest) if largest - pn >= Self::SIZE => false,
            Some(_) => !self.get(pn),
        }
    }

    /// Records `pn` as received. Numbers too old for the window are ignored.
    pub fn insert(&mut self, pn: u64) {
        match self.largest {
            Some(largest) if pn <= largest => {
                if largest - pn < Self::SIZE {
                    self.set(pn);
                }
            }
            Some(largest) => {
                self.clear_range(largest + 1, pn);
                self.set(pn);
                self.largest = Some(pn);
            }
            None => {
                self.set(pn);
                self.largest = Some(pn);
            }
        }
    }

    /// The highest packet number recorded, if any.
    pub fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// Word index and bit mask of `pn`'s slot.
    fn slot(pn: u64) -> (usize, u64) {
        let index = pn % Self::SIZE;
        ((index / 64) as usize % WORDS, 1u64 << (index % 64))
    }

    fn get(&self, pn: u64) -> bool {
        let (word, mask) = Self::slot(pn);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set(&mut self, pn: u64) {
        let (word, mask) = Self::slot(pn);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= mask;
        }
    }

    /// Clears the slots of `from..=to` (which will hold those numbers from now on).
    fn clear_range(&mut self, from: u64, to: u64) {
        if to - from >= Self::SIZE {
            self.bits = [0; WORDS];
            return;
        }
        let mut pn = from;
        while pn <= to {
            let (word, _) = Self::slot(pn);
            let bit = pn % 64;
            // Clear from `bit` to the end of this word, or up to `to` if that comes first.
            let span = (64 - bit).min(to - pn + 1);
            let mask = if span == 64 {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << bit
            };
            if let Some(w) = self.bits.get_mut(word) {
                *w &= !mask;
            }
            match pn.checked_add(span) {
                Some(next) => pn = next,
                None => break,
            }
        }
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SIZE: u64 = ReplayWindow::SIZE;

    #[test]
    fn empty_window_accepts_everything() {
        let w = ReplayWindow::new();
        assert_eq!(w.largest(), None);
        assert!(w.is_fresh(0));
        assert!(w.is_fresh(u64::MAX));
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut w = ReplayWindow::default();
        for pn in [0, 5, 3, 4096, 100] {
            assert!(w.is_fresh(pn), "{pn}");
            w.insert(pn);
            assert!(!w.is_fresh(pn), "{pn}");
        }
        assert_eq!(w.largest(), Some(4096));
        assert!(w.is_fresh(1));
        assert!(w.is_fresh(4095));
    }

    #[test]
    fn window_edge() {
        let mut w = ReplayWindow::new();
        const TOP: u64 = SIZE + 10_000;
        w.insert(TOP);
        // Oldest accepted is largest - SIZE + 1.
        assert!(w.is_fresh(TOP - SIZE + 1));
        assert!(!w.is_fresh(TOP - SIZE));
        assert!(!w.is_fresh(0));
        w.insert(TOP - SIZE + 1);
        assert!(!w.is_fresh(TOP - SIZE + 1));
        // Too old to record: ignored, still refused.
        w.insert(TOP - SIZE);
        assert!(!w.is_fresh(TOP - SIZE));
        // The slot shared with TOP + 1 must not look received.
        assert!(w.is_fresh(TOP + 1));
    }

    #[test]
    fn advancing_clears_old_slots() {
        let mut w = ReplayWindow::new();
        for pn in 0..SIZE {
            w.insert(pn);
        }
        // Every number of the next window shares a slot with a received one.
        for pn in SIZE..2 * SIZE {
            assert!(w.is_fresh(pn));
        }
        w.insert(SIZE + 100);
        for pn in SIZE..SIZE + 100 {
            assert!(w.is_fresh(pn), "{pn}");
        }
        for pn in 101..SIZE {
            assert!(!w.is_fresh(pn), "{pn}");
        }
        for pn in 0..=100 {
            assert!(!w.is_fresh(pn), "{pn} is too old");
        }
        // A jump beyond the whole window clears everything.
        w.insert(10 * SIZE);
        for pn in 9 * SIZE + 1..10 * SIZE {
            assert!(w.is_fresh(pn), "{pn}");
        }
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let mut w = ReplayWindow::new();
        w.insert(u64::MAX - 1);
        assert!(w.is_fresh(u64::MAX));
        w.insert(u64::MAX);
        assert!(!w.is_fresh(u64::MAX));
        assert!(!w.is_fresh(u64::MAX - 1));
        assert!(w.is_fresh(u64::MAX - 2));
        assert!(!w.is_fresh(0));
    }

    proptest! {
        /// The bitmap agrees with a plain set plus the age rule, for any insertion order.
        #[test]
        fn matches_reference_model(pns in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            for pn in pns {
                let largest = seen.iter().next_back().copied();
                let expected = match largest {
                    None => true,
                    Some(l) => !seen.contains(&pn) && (pn > l || l - pn < SIZE),
                };
                prop_assert_eq!(w.is_fresh(pn), expected);
                w.insert(pn);
                seen.insert(pn);
                prop_assert_eq!(w.largest(), seen.iter().next_back().copied());
            }
        }
    }
}
