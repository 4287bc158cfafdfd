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
    /// for a connection cut while it was set up. A waiting checkout compares it with the count
    /// when it began.
    failed: AtomicU64,
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
    /// twice, so a waiter fails on one decisive failure or two of any kind.
    pub(super) fn count_failure(&self, decisive: bool) {
        self.failed
            .fetch_add(if decisive { 2 } else { 1 }, Ordering::AcqRel);
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
