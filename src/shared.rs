//! State shared by a pool's handle, its connection manager and its connections: the one place
//! where outcomes are recorded, so metrics and diagnostics never disagree.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::breaker::{Breaker, BreakerState, Transition};
use crate::clock::AtomicInstant;
use crate::config::Config;
use crate::metrics::{ConnectErrorKind, EvictionReason, PoolMetrics};

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) metrics: PoolMetrics,
    pub(crate) breaker: Breaker,
    /// Wakes the prober when the breaker opens, so recovery starts at once.
    pub(crate) breaker_opened: Notify,
    /// Wakes checkouts waiting on an empty pool when a connect fails: nothing will come.
    pub(crate) connect_failed: Notify,
    /// When the prober will next try, for `Retry-After`.
    next_probe_at: AtomicInstant,
    /// When a validation last timed out. Idle connections not used since are suspected of
    /// being frozen the same way, and validated off the caller's path.
    suspect_before: AtomicInstant,
    /// The last connect failure, redacted, for checkout-timeout errors; cleared by a success.
    last_connect_error: Mutex<Option<String>>,
    /// When a connect last failed, if none succeeded since.
    last_connect_failure: AtomicInstant,
    /// Evictions not yet made good by a new connection: the next connects are reconnects.
    replacement_debt: AtomicU64,
    next_connection_id: AtomicU64,
    /// Callers inside a checkout, waiting for bb8 or validating.
    waiting: AtomicUsize,
    /// One permit per connection, taken before bb8 is asked: tokio's semaphore queues callers
    /// first come, first served, where bb8's wake-ups let newcomers barge past sleepers (at 128
    /// callers on 16 connections some waited out the whole budget).
    pub(crate) checkout_permits: Arc<Semaphore>,
    /// Set when the pool is dropped, so connections closed by the shutdown are not counted as
    /// evictions.
    closing: AtomicBool,
}

impl Shared {
    /// A pool starts with its breaker open: not ready until a connect proves Redis there.
    pub(crate) fn new(config: Config) -> Self {
        let metrics = PoolMetrics::register(config.name());
        let checkout_permits = Arc::new(Semaphore::new(config.max_size as usize));
        metrics.breaker(BreakerState::Open, false);
        Self {
            metrics,
            breaker: Breaker::new(config.breaker, BreakerState::Open),
            breaker_opened: Notify::new(),
            connect_failed: Notify::new(),
            next_probe_at: AtomicInstant::default(),
            suspect_before: AtomicInstant::default(),
            config,
            last_connect_error: Mutex::new(None),
            last_connect_failure: AtomicInstant::default(),
            replacement_debt: AtomicU64::new(0),
            next_connection_id: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            checkout_permits,
            closing: AtomicBool::new(false),
        }
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn record_eviction(&self, reason: EvictionReason, connection_id: u64) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        tracing::debug!(pool = %self.config.name(), connection_id, reason = reason.as_label(), "evicting redis connection");
        self.metrics.eviction(reason);
        self.replacement_debt.fetch_add(1, Ordering::AcqRel);
        if reason == EvictionReason::IoError {
            self.record_failure();
        }
    }

    /// An infrastructure failure: for the breaker.
    pub(crate) fn record_failure(&self) {
        self.on_transition(self.breaker.record_failure(Instant::now()));
    }

    /// A call that reached Redis: for the breaker.
    pub(crate) fn record_success(&self) {
        self.on_transition(self.breaker.record_success(Instant::now()));
    }

    /// Logs and counts a breaker transition, and wakes the prober when the breaker opens.
    pub(crate) fn on_transition(&self, transition: Transition) {
        let Some((from, to)) = transition else { return };
        let pool = self.config.name();
        match to {
            BreakerState::Open => {
                let cause = self.last_connect_error();
                tracing::warn!(
                    pool,
                    from = from.as_label(),
                    cause = cause.as_deref().unwrap_or("failures"),
                    "redis circuit breaker open: refusing dependent requests"
                );
                self.breaker_opened.notify_one();
            }
            BreakerState::HalfOpen => {
                tracing::info!(pool, "redis answered the prober: circuit breaker half-open")
            }
            BreakerState::Closed => {
                tracing::info!(
                    pool,
                    from = from.as_label(),
                    "redis circuit breaker closed: serving"
                )
            }
        }
        self.metrics.breaker(to, true);
    }

    /// A validation timed out: suspect every connection not proven alive since `now`.
    pub(crate) fn suspect_connections_idle_since(&self, now: Instant) {
        self.suspect_before.set(now);
    }

    /// Whether a connection last proven alive at `last_success` is suspected frozen.
    pub(crate) fn is_suspect(&self, last_success: Instant) -> bool {
        self.suspect_before
            .get()
            .is_some_and(|before| last_success < before)
    }

    pub(crate) fn set_next_probe(&self, at: Instant) {
        self.next_probe_at.set(at);
    }

    /// Time until the prober's next attempt.
    pub(crate) fn until_next_probe(&self) -> Duration {
        self.next_probe_at.get().map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    pub(crate) fn record_connected(&self, connection_id: u64) {
        let replaced = self
            .replacement_debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                debt.checked_sub(1)
            })
            .is_ok();
        self.metrics.connection_created(replaced);
        *self.lock_last_error() = None;
        self.last_connect_failure.clear();
        tracing::debug!(pool = %self.config.name(), connection_id, replaced, "redis connection established");
    }

    /// `message` must already be free of secrets: it reaches logs and error messages.
    pub(crate) fn record_connect_error(&self, kind: ConnectErrorKind, message: String) {
        self.metrics.connect_error(kind);
        tracing::warn!(pool = %self.config.name(), kind = kind.as_label(), error = %message, "redis connect failed");
        *self.lock_last_error() = Some(message);
        self.last_connect_failure.set(Instant::now());
        self.record_failure();
        self.connect_failed.notify_waiters();
    }

    /// The last connect error, if a connect failed less than `probe_backoff_min` ago: the pool
    /// does not try again that soon, so a burst of checkouts against a dead Redis does not
    /// become a burst of connects. The prober is not held back.
    pub(crate) fn recent_connect_failure(&self) -> Option<String> {
        let at = self.last_connect_failure.get()?;
        if at.elapsed() >= self.config.probe_backoff_min {
            return None;
        }
        // A failure without a recorded message is impossible; be safe all the same.
        Some(self.last_connect_error().unwrap_or_default())
    }

    pub(crate) fn last_connect_error(&self) -> Option<String> {
        self.lock_last_error().clone()
    }

    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.last_connect_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts the caller as waiting until the returned guard drops (also on cancellation).
    pub(crate) fn wait(&self) -> WaitingGuard<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        WaitingGuard(&self.waiting)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

pub(crate) struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
