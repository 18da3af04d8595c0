//! A set of `u64` stored as disjoint, non-adjacent half-open ranges.
//!
//! Used for received packet numbers (what an ACK frame reports), for acknowledged stream bytes
//! and for the receive-side reassembly of stream data. Ranges are kept merged, so the size of the
//! set is the number of holes, not the number of elements.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint half-open ranges of `u64`, merged on insert.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (exclusive)
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `range`. Returns true if any element was not already present.
    pub fn insert(&mut self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        let (mut start, mut end) = (range.start, range.end);
        // Already fully covered by the range that starts at or before `start`?
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= end {
                return false;
            }
            if e >= start {
                start = s;
            }
        }
        // Not covered by one range, so (ranges being merged) not covered at all. Absorb every
        // range that overlaps or touches [start, end).
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            end = end.max(e);
        }
        self.map.insert(start, end);
        true
    }

    /// Adds one element. Returns true if it was not already present.
    pub fn insert_one(&mut self, x: u64) -> bool {
        self.insert(x..x.saturating_add(1))
    }

    /// Removes every element of `range`.
    pub fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // Split a range that straddles range.start.
        if let Some((&s, &e)) = self.map.range(..range.start).next_back()
            && e > range.start
        {
            self.map.insert(s, range.start);
            if e > range.end {
                self.map.insert(range.end, e);
            }
        }
        // Drop or trim ranges that start inside [range.start, range.end).
        while let Some((&s, &e)) = self.map.range(range.start..range.end).next() {
            self.map.remove(&s);
            if e > range.end {
                self.map.insert(range.end, e);
                break;
            }
        }
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &e)| x < e)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Smallest element.
    pub fn min(&self) -> Option<u64> {
        self.map.keys().next().copied()
    }

    /// Largest element.
    pub fn max(&self) -> Option<u64> {
        self.map.values().next_back().map(|end| end - 1)
    }

    /// The ranges in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        self.map.pop_first().map(|(s, e)| s..e)
    }

    /// The parts of `range` that are not in the set, in ascending order.
    ///
    /// Used to store only the new bytes of a retransmitted STREAM frame and to queue only the
    /// unacknowledged bytes of a lost one.
    pub fn missing_in(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        let mut pos = range.start;
        if let Some((_, &e)) = self.map.range(..=range.start).next_back() {
            pos = pos.max(e);
        }
        for (&s, &e) in self.map.range(range.start..range.end) {
            if pos >= range.end {
                break;
            }
            if s > pos {
                out.push(pos..s);
            }
            pos = pos.max(e);
        }
        if pos < range.end {
            out.push(pos..range.end);
        }
        out
    }

    /// Removes every element below `x`.
    pub fn remove_below(&mut self, x: u64) {
        self.remove(0..x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[Range<u64>]) -> RangeSet {
        let mut s = RangeSet::new();
        for r in ranges {
            s.insert(r.clone());
        }
        s
    }

    #[test]
    fn missing_in_lists_the_holes() {
        let s = set(&[10..20, 30..40]);
        assert_eq!(s.missing_in(0..50), vec![0..10, 20..30, 40..50]);
        assert_eq!(s.missing_in(12..18), Vec::<Range<u64>>::new());
        assert_eq!(s.missing_in(15..35), vec![20..30]);
        assert_eq!(s.missing_in(20..30), vec![20..30]);
        assert_eq!(s.missing_in(5..10), vec![5..10]);
        assert_eq!(s.missing_in(40..41), vec![40..41]);
        assert_eq!(s.missing_in(7..7), Vec::<Range<u64>>::new());
        assert_eq!(RangeSet::new().missing_in(3..9), vec![3..9]);
    }
}
