//! A windowed maximum: the largest value seen during the last `window` time units, kept in
//! constant space (Kathleen Nichols' algorithm, as used by BBR).
//!
//! Three samples are kept: the best, the best that arrived after it, and the best after that.
//! When the best ages out of the window the second takes its place, so the estimate degrades
//! gracefully instead of dropping to whatever the latest sample was.

/// One retained sample: `value` observed at `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    time: u64,
    value: u64,
}

/// Windowed maximum over `window` units of a caller-defined clock (BBR uses round trips).
#[derive(Debug, Clone)]
pub(crate) struct WindowedMax {
    window: u64,
    best: [Sample; 3],
}

impl WindowedMax {
    /// An empty filter (reports 0) over `window` time units.
    pub(crate) fn new(window: u64) -> Self {
        Self {
            window,
            best: [Sample { time: 0, value: 0 }; 3],
        }
    }

    /// The current maximum.
    pub(crate) fn get(&self) -> u64 {
        self.best[0].value
    }

    /// Forgets everything and starts again from `value` at `time`.
    pub(crate) fn reset(&mut self, time: u64, value: u64) {
        self.best = [Sample { time, value }; 3];
    }

    /// Adds `value` observed at `time` (non-decreasing) and returns the new maximum.
    pub(crate) fn update(&mut self, time: u64, value: u64) -> u64 {
        let s = Sample { time, value };
        let [first, second, third] = self.best;
        if value >= first.value || time.saturating_sub(third.time) > self.window {
            // A new overall maximum, or everything retained is too old.
            self.reset(time, value);
            return value;
        }
        if value >= second.value {
            self.best[1] = s;
            self.best[2] = s;
        } else if value >= third.value {
            self.best[2] = s;
        }
        self.age(s);
        self.best[0].value
    }

    /// Retires samples that left the window and keeps the three spread across it.
    fn age(&mut self, s: Sample) {
        let age = s.time.saturating_sub(self.best[0].time);
        if age > self.window {
            // The best expired: promote the others; the second may have expired as well.
            self.best = [self.best[1], self.best[2], s];
            if s.time.saturating_sub(self.best[0].time) > self.window {
                self.best = [self.best[1], self.best[2], s];
            }
        } else if self.best[1].time == self.best[0].time && age > self.window / 4 {
            // A quarter of the window passed without a second choice: take this one.
            self.best[1] = s;
            self.best[2] = s;
        } else if self.best[2].time == self.best[1].time && age > self.window / 2 {
            // Half the window passed without a third choice.
            self.best[2] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_maximum_within_the_window() {
        let mut f = WindowedMax::new(10);
        assert_eq!(f.get(), 0);
        assert_eq!(f.update(0, 100), 100);
        for t in 1..=10 {
            assert_eq!(f.update(t, 50), 100);
        }
        // At t = 11 the 100 sample is 11 > 10 units old.
        assert_eq!(f.update(11, 50), 50);
    }

    #[test]
    fn falls_back_to_the_next_best_not_the_latest() {
        let mut f = WindowedMax::new(10);
        f.update(0, 100);
        f.update(3, 80);
        f.update(6, 60);
        for t in 7..=10 {
            assert_eq!(f.update(t, 10), 100);
        }
        assert_eq!(f.update(11, 10), 80);
        assert_eq!(f.update(14, 10), 60);
        assert_eq!(f.update(17, 10), 10);
    }

    #[test]
    fn a_larger_sample_wins_at_once() {
        let mut f = WindowedMax::new(10);
        f.update(0, 100);
        assert_eq!(f.update(1, 200), 200);
        f.reset(5, 7);
        assert_eq!(f.get(), 7);
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let mut f = WindowedMax::new(10);
        f.update(u64::MAX, 5);
        assert_eq!(f.update(0, 3), 5);
        assert_eq!(f.update(u64::MAX, u64::MAX), u64::MAX);
    }
}
