//! The pool's metric series, registered again once a recorder is installed after the pool
//! was created (such a pool got the facade's no-op handles).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::PoolMetrics;

#[derive(Debug)]
pub(super) struct Series {
    /// The series, registered when the pool was created.
    first: PoolMetrics,
    /// The series registered once a recorder arrived, for a pool created before it.
    late: OnceLock<PoolMetrics>,
    awaiting_recorder: AtomicBool,
}

impl Series {
    pub(super) fn register(pool: &str) -> Self {
        let awaiting_recorder = !crate::metrics::recorder_installed();
        if awaiting_recorder {
            tracing::debug!(
                pool,
                "no metrics recorder installed yet; the pool's series are registered once one is"
            );
        }
        Self {
            first: PoolMetrics::register(pool),
            late: OnceLock::new(),
            awaiting_recorder: AtomicBool::new(awaiting_recorder),
        }
    }

    /// The series in use: those registered once a recorder arrived, if it came late.
    #[inline]
    pub(super) fn get(&self) -> &PoolMetrics {
        self.late.get().unwrap_or(&self.first)
    }

    /// Registers the series with a recorder installed since the pool was created, if one
    /// was, and returns them for the gauges that only change on transitions.
    pub(super) fn register_late(&self, pool: &str) -> Option<&PoolMetrics> {
        if !self.awaiting_recorder.load(Ordering::Relaxed) || !crate::metrics::recorder_installed()
        {
            return None;
        }
        self.awaiting_recorder.store(false, Ordering::Relaxed);
        let _ = self.late.set(PoolMetrics::register(pool));
        tracing::info!(
            pool,
            "metrics recorder found; the pool's series are registered"
        );
        self.late.get()
    }
}
