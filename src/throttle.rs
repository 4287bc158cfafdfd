//! Log lines that would repeat with every request during an incident: one per interval, with
//! the number held back since, so log volume does not grow with client traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::AtomicInstant;

/// One log line's allowance.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    last: AtomicInstant,
    held_back: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: AtomicInstant::new(),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when a line may be written now; `None` (and the
    /// line is counted as held back) otherwise.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let due = self
            .last
            .get()
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due && self.last.replace_if_unchanged(now) {
            Some(self.held_back.swap(0, Ordering::AcqRel))
        } else {
            self.held_back.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..99 {
            assert_eq!(throttle.admit(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.admit(), Some(99));
        assert_eq!(throttle.admit(), None);
    }
}
