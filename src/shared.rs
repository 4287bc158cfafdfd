//! State shared by a pool's handle, its connection manager and its connections: the one place
//! where outcomes are recorded, so metrics and diagnostics never disagree.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::config::Config;
use crate::metrics::{ConnectErrorKind, EvictionReason, PoolMetrics};

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) metrics: PoolMetrics,
    /// The last connect failure, redacted, for checkout-timeout errors; cleared by a success.
    last_connect_error: Mutex<Option<String>>,
    /// Evictions not yet made good by a new connection: the next connects are reconnects.
    replacement_debt: AtomicU64,
    next_connection_id: AtomicU64,
    /// Callers inside a checkout, waiting for bb8 or validating.
    waiting: AtomicUsize,
    /// Set when the pool is dropped, so connections closed by the shutdown are not counted as
    /// evictions.
    closing: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            metrics: PoolMetrics::register(config.name()),
            config,
            last_connect_error: Mutex::new(None),
            replacement_debt: AtomicU64::new(0),
            next_connection_id: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
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
    }

    pub(crate) fn record_connected(&self, connection_id: u64) {
        let replaced = self
            .replacement_debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| debt.checked_sub(1))
            .is_ok();
        self.metrics.connection_created(replaced);
        *self.lock_last_error() = None;
        tracing::debug!(pool = %self.config.name(), connection_id, replaced, "redis connection established");
    }

    /// `message` must already be free of secrets: it reaches logs and error messages.
    pub(crate) fn record_connect_error(&self, kind: ConnectErrorKind, message: String) {
        self.metrics.connect_error(kind);
        tracing::warn!(pool = %self.config.name(), kind = kind.as_label(), error = %message, "redis connect failed");
        *self.lock_last_error() = Some(message);
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
