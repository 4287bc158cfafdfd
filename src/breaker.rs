//! The circuit breaker: one per pool, shared by every route that depends on it.
//!
//! ```text
//!            connect failures >= consecutive threshold, or
//!            failure rate >= threshold over the window (with enough calls)
//!   Closed ─────────────────────────────────────────────► Open
//!     ▲                                                 │  ▲
//!     │ trial_successes                a connect succeeds │  │ a connect fails
//!     │                                                 ▼  │
//!     └───────────────────────────────────────────── HalfOpen
//! ```
//!
//! The breaker only tallies; what counts as a failure is decided in one place, `pool_core/mod.rs`:
//! a new connection that fails, once per attempt. Busy pools, error replies, slow replies and
//! a single failing socket never count. Open moves to half-open when a connect succeeds (the
//! prober keeps trying, so a service with no traffic recovers too); while half-open, a few
//! trial calls are let through and the rest are refused as while open.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::clock::AtomicInstant;
use std::time::{Duration, Instant};

/// When the breaker trips and how it recovers. The defaults suit low traffic as well as high:
/// five failures in a row trip it whatever the rate, and the rate rule needs only ten calls.
///
/// The breaker judges Redis, not one socket and not load. A failure is a **new connection
/// that fails** (TCP connect, handshake, AUTH, its first PING), counted once per attempt
/// however many callers waited on it; one that lands on a replica does not count (Redis
/// answered), nor one made while an existing connection answered (Redis at `maxclients`).
/// A success is a new connection, or any reply (an error reply such as `WRONGTYPE` included).
/// Never counted: an I/O error or timeout on an existing connection (it is evicted, its idle
/// peers are suspected, and one fresh connect verifies Redis: that connect counts), a checkout
/// that waited because every connection was busy, a reply slower than `validation_timeout` but
/// within `response_timeout`.
///
/// One rule opens the breaker at once, whatever the counts: a connect timed out and a call on
/// an existing connection timed out too, with nothing answering since either began. That is
/// a Redis that accepts sockets and answers nothing (stopped, hung, behind a black hole);
/// either alone is not enough (zombie sockets time out while new connects succeed; a busy
/// Redis is slow to accept while it answers).
///
/// ```
/// use std::time::Duration;
/// use redis_guard::BreakerPolicy;
///
/// let policy = BreakerPolicy { consecutive_failures: 3, ..BreakerPolicy::default() };
/// assert_eq!(policy.window, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker, whatever the traffic.
    pub consecutive_failures: u32,
    /// Share of failed calls within `window` that opens the breaker (0.0 to 1.0)...
    pub failure_rate: f64,
    /// ...counted over this sliding window...
    pub window: Duration,
    /// ...once the window holds at least this many calls.
    pub min_calls: u32,
    /// Successful trial calls that close a half-open breaker.
    pub trial_successes: u32,
    /// Trial calls let through at once while half-open.
    pub trial_concurrency: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 10,
            trial_successes: 2,
            trial_concurrency: 2,
        }
    }
}

impl BreakerPolicy {
    /// What a policy needs to make sense; the message says what to change.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.consecutive_failures == 0 || self.min_calls == 0 || self.trial_successes == 0 {
            return Err(
                "consecutive_failures, min_calls and trial_successes must be at least 1".into(),
            );
        }
        if self.trial_concurrency == 0 {
            return Err("trial_concurrency must be at least 1".into());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!(
                "failure_rate {} must be in (0, 1]",
                self.failure_rate
            ));
        }
        if self.window.is_zero() || self.window > crate::clock::MAX_DURATION {
            return Err(format!(
                "window {:?} must be greater than zero and at most a year",
                self.window
            ));
        }
        Ok(())
    }
}

/// The breaker's state, as reported by [`RedisGuard::breaker_state`](crate::RedisGuard::breaker_state)
/// and the `redis_guard_breaker_state` gauge (0, 1, 2).
///
/// ```text
///            connect failures >= consecutive threshold, or
///            failure rate >= threshold over the window (with enough calls)
///   Closed ─────────────────────────────────────────────► Open
///     ▲                                                 │  ▲
///     │ trial_successes                a connect succeeds │  │ a connect fails
///     │                                                 ▼  │
///     └───────────────────────────────────────────── HalfOpen
/// ```
///
/// Open moves to half-open when a connect succeeds: the pool keeps trying in the background,
/// so a service with no traffic recovers too. While half-open, `trial_concurrency` calls are
/// let through and the rest are refused as while open; `trial_successes` of them close it.
///
/// ```
/// assert_eq!(redis_guard::BreakerState::Open.as_gauge(), 2.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[repr(u8)]
pub enum BreakerState {
    /// Calls flow.
    Closed = 0,
    /// Redis answered the prober again; a few trial calls decide.
    HalfOpen = 1,
    /// Redis is considered down: calls are refused at once.
    Open = 2,
}

impl BreakerState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// The value of the `redis_guard_breaker_state` gauge.
    pub fn as_gauge(self) -> f64 {
        f64::from(self as u8)
    }

    /// The `to` label of `redis_guard_breaker_transitions_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// What [`Breaker::admit`] lets through.
#[derive(Debug)]
pub(crate) enum Admission<'a> {
    /// The breaker is closed.
    Call,
    /// A half-open trial; the slot frees when this drops.
    Trial {
        /// Held for its `Drop`.
        _slot: TrialSlot<'a>,
    },
}

#[derive(Debug)]
pub(crate) struct TrialSlot<'a>(&'a AtomicUsize);

impl Drop for TrialSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A transition that happened, for the caller to log and count.
pub(crate) type Transition = Option<(BreakerState, BreakerState)>;

#[derive(Debug)]
struct Counts {
    consecutive_failures: u32,
    trial_successes: u32,
    /// Outcomes within the window: (when, failed).
    recent: VecDeque<(Instant, bool)>,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    policy: BreakerPolicy,
    /// Read without the lock on every admission.
    state: AtomicU8,
    trials_in_flight: AtomicUsize,
    /// Whether the window may hold a failure; while it does not, a closed breaker has nothing
    /// to learn from a success and skips the lock (the hot path of every checkout). The rate
    /// is then computed over the calls since the window's first failure, which can only
    /// overstate it slightly at the start of a failure spell.
    last_failure: AtomicInstant,
    counts: Mutex<Counts>,
}

impl Breaker {
    /// A new breaker is closed: a pool that has not connected yet is not ready, but its
    /// requests wait for the first connect rather than being refused.
    pub(crate) fn new(policy: BreakerPolicy) -> Self {
        Self::in_state(policy, BreakerState::Closed)
    }

    fn in_state(policy: BreakerPolicy, initial: BreakerState) -> Self {
        Self {
            policy,
            state: AtomicU8::new(initial as u8),
            trials_in_flight: AtomicUsize::new(0),
            last_failure: AtomicInstant::default(),
            counts: Mutex::new(Counts {
                consecutive_failures: 0,
                trial_successes: 0,
                recent: VecDeque::new(),
            }),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether a call may proceed; `None` means refuse it now.
    pub(crate) fn admit(&self) -> Option<Admission<'_>> {
        match self.state() {
            BreakerState::Closed => Some(Admission::Call),
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                let limit = self.policy.trial_concurrency as usize;
                let taken =
                    self.trials_in_flight
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < limit).then_some(n + 1)
                        });
                taken.ok().map(|_| Admission::Trial {
                    _slot: TrialSlot(&self.trials_in_flight),
                })
            }
        }
    }

    pub(crate) fn record_success(&self, now: Instant) -> Transition {
        if self.state() == BreakerState::Closed {
            let recent_failure = self
                .last_failure
                .get()
                .is_some_and(|at| now.saturating_duration_since(at) <= self.policy.window);
            if !recent_failure {
                return None;
            }
        }
        let mut counts = self.lock();
        counts.consecutive_failures = 0;
        self.remember(&mut counts, now, false);
        match self.state() {
            BreakerState::HalfOpen => {
                counts.trial_successes += 1;
                (counts.trial_successes >= self.policy.trial_successes)
                    .then(|| self.move_to(&mut counts, BreakerState::Closed))
                    .flatten()
            }
            _ => None,
        }
    }

    pub(crate) fn record_failure(&self, now: Instant) -> Transition {
        self.last_failure.set(now);
        let mut counts = self.lock();
        counts.consecutive_failures = counts.consecutive_failures.saturating_add(1);
        self.remember(&mut counts, now, true);
        match self.state() {
            BreakerState::Open => None,
            BreakerState::HalfOpen => self.move_to(&mut counts, BreakerState::Open),
            BreakerState::Closed => {
                let calls = counts.recent.len();
                let failed = counts.recent.iter().filter(|(_, failed)| *failed).count();
                let by_streak = counts.consecutive_failures >= self.policy.consecutive_failures;
                let by_rate = calls >= self.policy.min_calls as usize
                    && failed as f64 >= self.policy.failure_rate * calls as f64;
                if by_streak || by_rate {
                    self.move_to(&mut counts, BreakerState::Open)
                } else {
                    None
                }
            }
        }
    }

    /// Redis is proven unresponsive at once (see `PoolCore::call_timed_out`): open now,
    /// whatever the counts.
    pub(crate) fn trip(&self) -> Transition {
        let mut counts = self.lock();
        match self.state() {
            BreakerState::Open => None,
            _ => self.move_to(&mut counts, BreakerState::Open),
        }
    }

    /// Redis is proven there (a start-up connect): serve at once.
    pub(crate) fn close(&self) -> Transition {
        let mut counts = self.lock();
        self.move_to(&mut counts, BreakerState::Closed)
    }

    /// The primary moved: failures of the old one say nothing about the new one. A closed
    /// breaker starts a fresh window; an open one stays open until a connect to the new
    /// primary succeeds (which the move starts at once).
    pub(crate) fn forget_failures(&self) {
        let mut counts = self.lock();
        counts.consecutive_failures = 0;
        counts.recent.clear();
        self.last_failure.clear();
    }

    /// A connect succeeded while the breaker was open: let trial calls decide.
    pub(crate) fn probe_succeeded(&self) -> Transition {
        let mut counts = self.lock();
        match self.state() {
            BreakerState::Open => self.move_to(&mut counts, BreakerState::HalfOpen),
            _ => None,
        }
    }

    fn move_to(&self, counts: &mut Counts, to: BreakerState) -> Transition {
        let from = BreakerState::from_u8(self.state.swap(to as u8, Ordering::AcqRel));
        counts.consecutive_failures = 0;
        counts.trial_successes = 0;
        // A fresh window after every transition: old outcomes describe the previous regime.
        counts.recent.clear();
        (from != to).then_some((from, to))
    }

    fn remember(&self, counts: &mut Counts, now: Instant, failed: bool) {
        counts.recent.push_back((now, failed));
        while counts
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.policy.window)
        {
            counts.recent.pop_front();
        }
        // Bounded memory whatever the traffic: a rate over the last 10,000 calls is plenty.
        if counts.recent.len() > 10_000 {
            counts.recent.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counts stay consistent across a panic elsewhere: every update is a single step.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(initial: BreakerState) -> Breaker {
        Breaker::in_state(BreakerPolicy::default(), initial)
    }

    fn fail(b: &Breaker, times: u32) -> Transition {
        let now = Instant::now();
        (0..times).fold(None, |t, _| t.or(b.record_failure(now)))
    }

    #[test]
    fn closed_opens_after_the_consecutive_failure_threshold() {
        let b = breaker(BreakerState::Closed);
        assert_eq!(fail(&b, 4), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            fail(&b, 1),
            Some((BreakerState::Closed, BreakerState::Open))
        );
        assert!(b.admit().is_none());
    }

    #[test]
    fn a_success_resets_the_streak() {
        let b = breaker(BreakerState::Closed);
        let now = Instant::now();
        fail(&b, 4);
        b.record_success(now);
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failure_rate_opens_once_the_window_has_enough_calls() {
        let b = breaker(BreakerState::Closed);
        let now = Instant::now();
        // Alternating: never 5 in a row, but half of all calls fail.
        for _ in 0..4 {
            assert_eq!(b.record_failure(now), None);
            b.record_success(now);
        }
        b.record_success(now);
        // The 10th call since the first failure reaches min_calls, 5 of 10 failed.
        assert_eq!(
            b.record_failure(now),
            Some((BreakerState::Closed, BreakerState::Open))
        );
    }

    #[test]
    fn low_traffic_is_judged_by_the_streak_not_the_rate() {
        // Two calls, both failed: 100% failure, but too few calls for the rate rule.
        let b = breaker(BreakerState::Closed);
        assert_eq!(fail(&b, 2), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn successes_without_recent_failures_skip_the_window() {
        let b = breaker(BreakerState::Closed);
        let now = Instant::now();
        for _ in 0..100 {
            b.record_success(now);
        }
        assert!(b.lock().recent.is_empty(), "the hot path took no lock");
        b.record_failure(now);
        b.record_success(now);
        assert_eq!(b.lock().recent.len(), 2);
    }

    #[test]
    fn a_new_breaker_admits_calls() {
        let b = Breaker::new(BreakerPolicy::default());
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(matches!(b.admit(), Some(Admission::Call)));
    }

    #[test]
    fn outcomes_older_than_the_window_do_not_count() {
        let b = breaker(BreakerState::Closed);
        let long_ago = Instant::now();
        for _ in 0..9 {
            b.record_failure(long_ago);
            b.record_success(long_ago);
        }
        let later = long_ago + Duration::from_secs(11);
        b.record_success(later);
        assert_eq!(b.record_failure(later), None, "only 2 calls in the window");
    }

    #[test]
    fn open_ignores_outcomes_and_moves_only_on_a_probe() {
        let b = breaker(BreakerState::Open);
        assert_eq!(b.record_success(Instant::now()), None);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.probe_succeeded(),
            Some((BreakerState::Open, BreakerState::HalfOpen))
        );
        assert_eq!(b.probe_succeeded(), None, "already half-open");
    }

    #[test]
    fn half_open_closes_after_trial_successes() {
        let b = breaker(BreakerState::HalfOpen);
        let now = Instant::now();
        assert_eq!(b.record_success(now), None);
        assert_eq!(
            b.record_success(now),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert!(matches!(b.admit(), Some(Admission::Call)));
    }

    #[test]
    fn half_open_reopens_on_any_failure() {
        let b = breaker(BreakerState::HalfOpen);
        b.record_success(Instant::now());
        assert_eq!(
            fail(&b, 1),
            Some((BreakerState::HalfOpen, BreakerState::Open))
        );
    }

    #[test]
    fn half_open_admits_a_bounded_number_of_trials() {
        let b = breaker(BreakerState::HalfOpen);
        let first = b.admit();
        let second = b.admit();
        assert!(matches!(first, Some(Admission::Trial { .. })));
        assert!(matches!(second, Some(Admission::Trial { .. })));
        assert!(b.admit().is_none(), "two trials already in flight");
        drop(first);
        assert!(b.admit().is_some(), "a finished trial frees its slot");
    }

    #[test]
    fn states_map_to_the_gauge_and_labels() {
        assert_eq!(BreakerState::Closed.as_gauge(), 0.0);
        assert_eq!(BreakerState::HalfOpen.as_gauge(), 1.0);
        assert_eq!(BreakerState::HalfOpen.as_label(), "half_open");
    }
}
