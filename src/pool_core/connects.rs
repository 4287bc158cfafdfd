//! The record of the pool's connect attempts: whether they fail, why, when the next may
//! start, and how many connections evicted are still to be made good.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::AtomicInstant;

#[derive(Debug, Default)]
pub(super) struct Connects {
    /// When the next connect attempt may start, after a failed one: for `Retry-After`.
    next_at: AtomicInstant,
    /// The last connect failure, redacted, for errors and `/readyz`; cleared by a success.
    last_error: Mutex<Option<String>>,
    /// Whether the last connect attempt failed.
    failing: AtomicBool,
    /// Failed connect attempts since the pool was created, weighed: 2 for a decisive failure, 1
    /// for a connection cut while it was set up, 0 for one cut alongside the attempt that
    /// failed before it (one fault, a `CLIENT KILL` or a reset, cuts every handshake under
    /// way at its moment: only an attempt begun after a cut says the cut persists). A
    /// waiting checkout compares it with the count when it began.
    failed: AtomicU64,
    /// The same weight, since the last success: a connect that worked in between says the
    /// failures before it are not one condition.
    failed_in_a_row: AtomicU64,
    /// Evictions not yet made good by a new connection: the next connects are reconnects.
    replacement_debt: AtomicU64,
    /// When the last connect attempt ended: a failure counts toward the breaker only if nothing
    /// answered since the attempt before it.
    last_attempt_end: AtomicInstant,
}

/// What a failed attempt adds to the record.
pub(super) struct Failed {
    /// The first failure after a success, or another cause than the last one's.
    pub(super) new_cause: bool,
    /// When the attempt before this one ended.
    pub(super) previous_end: Option<Instant>,
    /// The attempt began before the previous one ended: they ran alongside each other.
    pub(super) overlapped: bool,
}

impl Connects {
    /// An attempt succeeded. One that `joins_the_pool` pays off an eviction (it is a
    /// reconnect). Returns (a reconnect, the first success after failures).
    pub(super) fn succeeded(&self, joins_the_pool: bool) -> (bool, bool) {
        let replaced = joins_the_pool
            && self
                .replacement_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                    debt.checked_sub(1)
                })
                .is_ok();
        self.last_attempt_end.set(Instant::now());
        self.failed_in_a_row.store(0, Ordering::Release);
        let recovered = self.failing.swap(false, Ordering::AcqRel);
        *self.lock_last_error() = None;
        self.next_at.clear();
        (replaced, recovered)
    }

    /// An attempt begun at `started` failed with `message` at `now`; the next may start after
    /// `retry_in`.
    pub(super) fn failed(
        &self,
        message: &str,
        now: Instant,
        retry_in: Duration,
        started: Instant,
    ) -> Failed {
        let first = !self.failing.swap(true, Ordering::AcqRel);
        let changed = {
            let mut last = self.lock_last_error();
            let changed = last.as_deref() != Some(message);
            *last = Some(message.to_owned());
            changed
        };
        self.next_at.set(now + retry_in);
        let previous_end = self.last_attempt_end.get();
        self.last_attempt_end.set(now);
        Failed {
            new_cause: first || changed,
            previous_end,
            overlapped: previous_end.is_some_and(|end| started < end),
        }
    }

    /// Counts a failed attempt for the checkouts waiting on one: a decisive failure counts
    /// twice, so a waiter fails on one decisive failure or two in a row of any kind.
    pub(super) fn count_failure(&self, decisive: bool, failed: &Failed) {
        let weight = match (decisive, failed.overlapped) {
            (true, _) => 2,
            (false, false) => 1,
            (false, true) => 0,
        };
        self.failed.fetch_add(weight, Ordering::AcqRel);
        self.failed_in_a_row.fetch_add(weight, Ordering::AcqRel);
    }

    /// Whether a checkout that began when [`failures`](Self::failures) was `seen` has seen
    /// enough to stop waiting for a connect: one decisive failure, or two cuts, since it began
    /// and with no success between them.
    pub(super) fn give_up_since(&self, seen: u64) -> bool {
        let since_arrival = self.failures().saturating_sub(seen);
        let in_a_row = self.failed_in_a_row.load(Ordering::Acquire);
        since_arrival.min(in_a_row) >= 2
    }

    /// A connection was evicted: the next connect replaces it.
    pub(super) fn owe_replacement(&self) {
        self.replacement_debt.fetch_add(1, Ordering::AcqRel);
    }

    /// The next attempt may start at once (the primary moved).
    pub(super) fn allow_now(&self) {
        self.next_at.clear();
    }

    pub(super) fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub(super) fn failures(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    pub(super) fn next_at(&self) -> Option<Instant> {
        self.next_at.get()
    }

    pub(super) fn last_error(&self) -> Option<String> {
        self.lock_last_error().clone()
    }

    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY_IN: Duration = Duration::from_millis(10);

    #[test]
    fn cuts_that_ran_alongside_each_other_count_once_for_waiters() {
        let connects = Connects::default();
        let t0 = Instant::now();
        let first = connects.failed("cut", t0 + Duration::from_millis(5), RETRY_IN, t0);
        connects.count_failure(false, &first);
        // Begun before the first one ended: the same fault cut both.
        let second = connects.failed("cut", t0 + Duration::from_millis(6), RETRY_IN, t0);
        assert!(second.overlapped);
        connects.count_failure(false, &second);
        assert_eq!(connects.failures(), 1);
        // Begun after the last cut: the cut persists.
        let third_start = t0 + Duration::from_millis(7);
        let third = connects.failed("cut", t0 + Duration::from_millis(9), RETRY_IN, third_start);
        assert!(!third.overlapped);
        connects.count_failure(false, &third);
        assert_eq!(connects.failures(), 2);
    }

    #[test]
    fn a_success_between_two_cuts_keeps_a_waiter_waiting() {
        let connects = Connects::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let seen = connects.failures();
        let first = connects.failed("cut", t0 + ms(5), RETRY_IN, t0 + ms(1));
        connects.count_failure(false, &first);
        connects.succeeded(true);
        let second = connects.failed("cut", t0 + ms(900), RETRY_IN, t0 + ms(800));
        connects.count_failure(false, &second);
        assert!(
            !connects.give_up_since(seen),
            "a connect worked between the two cuts"
        );
        let third = connects.failed("cut", t0 + ms(950), RETRY_IN, t0 + ms(920));
        connects.count_failure(false, &third);
        assert!(connects.give_up_since(seen), "two cuts in a row");
        assert!(
            !connects.give_up_since(connects.failures()),
            "none since a new arrival"
        );
    }

    #[test]
    fn a_decisive_failure_counts_twice_even_alongside_another() {
        let connects = Connects::default();
        let t0 = Instant::now();
        let first = connects.failed("refused", t0 + Duration::from_millis(5), RETRY_IN, t0);
        connects.count_failure(true, &first);
        let second = connects.failed("refused", t0 + Duration::from_millis(6), RETRY_IN, t0);
        connects.count_failure(true, &second);
        assert_eq!(connects.failures(), 4);
    }
}
