//! The prober: one background task per pool that keeps readiness fresh and lets the pool
//! recover without traffic.
//!
//! - **Not yet connected, connects failing, or breaker open**: it asks the connect gate for a
//!   connection, so an idle service connects, notices an outage and recovers too. The gate
//!   paces it with every other connect of the pool; a success goes into the pool and moves an
//!   open breaker to half-open.
//! - **Half-open**: PINGs through the pool at once, as trial calls, until the breaker closes.
//! - **Closed**: one PING when nothing has answered for `probe_interval`; none while traffic
//!   proves Redis alive, and none when every connection is busy (busy is not down).
//! - **An existing connection failed** (I/O error, timeout, closed socket): one fresh connect
//!   verifies Redis; its outcome is what the breaker counts.
//!
//! Its PINGs wait up to `response_timeout`, so a slow but answering Redis is ready. Readiness
//! is read from state this task keeps fresh, so a `/readyz` hit costs no Redis traffic.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::breaker::BreakerState;
use crate::inner::PoolInner;
use crate::manager::Attempt;
use crate::metrics::EvictionReason;
use crate::shared::Shared;

/// How long a restarted prober waits after a panic, so a bug cannot become a busy loop.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Runs the prober, restarting it if it panics: a dead prober would leave an open breaker
/// open for good.
pub(crate) async fn supervise(pool: Weak<PoolInner>, shared: Arc<Shared>) {
    let name = shared.name().to_owned();
    restart_on_panic(name, RESTART_PAUSE, || run(pool.clone(), shared.clone())).await
}

/// Runs `task` again, `pause` after each panic, until it returns.
async fn restart_on_panic<F, Fut>(pool: String, pause: Duration, task: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(task()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(pool, "redis-guard prober panicked; restarting it");
                tokio::time::sleep(pause).await;
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// Runs until the pool drops. Holds only a weak reference between rounds, so it never keeps
/// the pool alive.
async fn run(pool: Weak<PoolInner>, shared: Arc<Shared>) {
    let interval = shared.config().probe_interval();
    loop {
        // Registered before the round, so a failure during it is not missed.
        let verify = shared.verification_requested();
        tokio::pin!(verify);
        verify.as_mut().enable();
        let Some(inner) = pool.upgrade() else { return };
        let asked = Instant::now();
        let must_connect = !shared.has_connected()
            || shared.connects_failing()
            || shared.breaker_state() == BreakerState::Open;
        let pause = if must_connect {
            connect(&inner, asked).await;
            // The gate paces the next attempt.
            Duration::ZERO
        } else if shared.breaker_state() == BreakerState::HalfOpen {
            ping(&inner).await;
            Duration::from_millis(10)
        } else {
            let quiet_for = shared.last_answer().map_or(interval, |at| at.elapsed());
            if quiet_for >= interval {
                ping(&inner).await;
                interval
            } else {
                interval - quiet_for
            }
        };
        drop(inner);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut verify => {
                let Some(inner) = pool.upgrade() else { return };
                connect(&inner, Instant::now()).await;
            }
        }
    }
}

/// One connect attempt through the gate, unless another attempt has ended since `asked`; a
/// connection it makes joins the pool.
async fn connect(inner: &PoolInner, asked: Instant) {
    if let Attempt::Connected(conn) = inner.manager.attempt(None, Some(asked)).await {
        // A full pool drops it: the point was to learn whether Redis accepts connections.
        let _ = inner.pool.add(conn);
    }
}

/// One PING on an idle connection, under `response_timeout`. No verdict when every
/// connection is busy or none can be had in time: that is load, and a failed connect
/// reports itself.
async fn ping(inner: &PoolInner) {
    let shared = &inner.shared;
    let timeout = shared.config().response_timeout();
    let Ok(_permit) = shared.checkout_permits().clone().try_acquire_owned() else {
        return;
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(timeout, inner.pool.get_owned()).await else {
        return;
    };
    if let crate::connection::Verdict::Evict(reason) = conn.verdict(Instant::now()) {
        conn.evict(reason);
        return;
    }
    match conn.validate(timeout).await {
        Ok(()) => shared.answered(Instant::now()),
        Err(failure) => {
            tracing::debug!(pool = %shared.name(), %failure, "probe failed");
            conn.evict(EvictionReason::ValidationFailed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_prober_is_restarted_until_it_returns() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        restart_on_panic("test".into(), Duration::from_millis(1), move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("probe bug");
                }
            }
        })
        .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a clean run"
        );
    }
}
