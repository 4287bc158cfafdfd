//! The prober: one background task per pool that keeps readiness fresh and drives the breaker
//! back to closed.
//!
//! - **Closed**: every `probe_interval`, a checkout and a PING through the pool, so readiness
//!   is never older than that interval even when no request comes. A failed probe is retried
//!   after the short backoff, so an idle service notices an outage within a second or two.
//! - **Open**: the prober is the only thing that connects. It opens one fresh connection
//!   after a jittered, doubling backoff (from `probe_backoff_min` to `probe_backoff_max`); the
//!   first that succeeds goes into the pool and the breaker turns half-open.
//! - **Half-open**: trial PINGs through the pool, at once, until the breaker closes or opens.
//!
//! Readiness is read from the breaker's state, so a `/readyz` hit costs no Redis traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::breaker::BreakerState;
use crate::clock::Backoff;
use crate::pool::{Purpose, RedisGuard};
use crate::shared::Shared;

/// Runs until aborted (when the guard is dropped). Holds only a weak view of the guard
/// between probes, so it never keeps the pool alive.
pub(crate) async fn run(guard: std::sync::Weak<crate::pool::Inner>, shared: Arc<Shared>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.probe_backoff_min, config.probe_backoff_max);
    // The first probe goes at once: a lazily started pool connects immediately.
    let mut pause = Duration::ZERO;
    loop {
        shared.set_next_probe(Instant::now() + pause);
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // The breaker just opened: start the backoff from its beginning.
                _ = shared.breaker_opened.notified() => backoff.reset(),
            }
        }
        let Some(guard) = RedisGuard::upgrade(&guard) else {
            return;
        };
        let healthy = match shared.breaker.state() {
            BreakerState::Open => guard.probe_by_connecting().await,
            BreakerState::HalfOpen | BreakerState::Closed => guard.probe_through_pool().await,
        };
        drop(guard);
        pause = match (healthy, shared.breaker.state()) {
            (true, BreakerState::Closed) => {
                backoff.reset();
                config.probe_interval
            }
            // Trials continue at once until the breaker decides.
            (true, _) => Duration::ZERO,
            (false, _) => backoff.pause(),
        };
    }
}

impl RedisGuard {
    /// While open: one fresh connection, proven with a PING, handed to the pool.
    async fn probe_by_connecting(&self) -> bool {
        let shared = self.shared();
        let Ok(mut conn) = self.manager().connect_now().await else {
            return false;
        };
        if conn
            .validate(shared.config.validation_timeout)
            .await
            .is_err()
        {
            return false;
        }
        // A full pool drops it: the point was to prove Redis reachable.
        let _ = self.pool().add(conn);
        shared.on_transition(shared.breaker.probe_succeeded());
        true
    }

    /// While closed or half-open: a checkout and a PING, recorded like any call.
    async fn probe_through_pool(&self) -> bool {
        let shared = self.shared();
        let Ok(mut conn) = self.checkout(Purpose::Probe).await else {
            shared.record_failure();
            return false;
        };
        match conn.validate(shared.config.validation_timeout).await {
            Ok(()) => {
                shared.record_success();
                true
            }
            Err(failure) => {
                tracing::debug!(pool = %shared.config.name(), %failure, "probe failed");
                conn.evict(crate::metrics::EvictionReason::ValidationFailed);
                shared.record_failure();
                false
            }
        }
    }
}
