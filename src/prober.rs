//! The prober: one background task per pool that keeps readiness fresh and lets the pool
//! recover without traffic.
//!
//! - **Not yet connected, breaker open, or connects failing with no working connection** (and
//!   no caller waiting: those have bb8 connecting for them, restarted after each failure):
//!   it asks the connect gate for a connection, so an idle service connects, notices an
//!   outage and recovers too. The gate paces it with every other connect of the pool; a
//!   success goes into the pool and moves an open breaker to half-open. While connects fail
//!   it also PINGs an idle connection: one that answers shows Redis up, only refusing new
//!   connections.
//! - **Half-open**: PINGs through the pool at once, as trial calls, until the breaker closes;
//!   with no connection in the pool (a subscription's connect moved the breaker there), it
//!   connects one first.
//! - **Closed**: one PING when nothing has answered for `probe_interval`; none while traffic
//!   proves Redis alive, and none when every connection is busy (busy is not down).
//! - **An existing connection failed** (I/O error, timeout, closed socket): one fresh connect
//!   verifies Redis; its outcome is what the breaker counts.
//!
//! Its PINGs wait up to `response_timeout`, so a slow but answering Redis is ready. Readiness
//! is read from state this task keeps fresh, so a `/readyz` hit costs no Redis traffic.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::breaker::BreakerState;
use crate::connection::{GuardConnection, Verdict};
use crate::inner::PoolInner;
use crate::manager::Bb8Connection;
use crate::manager::{Attempt, Skip};
use crate::metrics::EvictionReason;
use crate::pool_core::PoolCore;
use crate::sanitize::server_text;

/// How long a restarted prober waits after a panic, so a bug cannot become a busy loop.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Runs the prober, restarting it if it panics: a dead prober would leave an open breaker
/// open for good.
pub(crate) async fn supervise(pool: Weak<PoolInner>, core: Arc<PoolCore>) {
    let name = core.name().to_owned();
    restart_on_panic(name, RESTART_PAUSE, || run(pool.clone(), core.clone())).await
}

/// Runs `task` again, `pause` after each panic, until it returns. In the caller's task, not
/// a child of its own: aborting the caller stops it.
async fn restart_on_panic<F, Fut>(pool: String, pause: Duration, task: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match AssertUnwindSafe(task()).catch_unwind().await {
            Ok(()) => return,
            Err(_) => {
                tracing::error!(pool, "redis-guard prober panicked; restarting it");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Runs until the pool closes or drops. Holds only a weak reference between rounds, so it
/// never keeps the pool alive.
async fn run(pool: Weak<PoolInner>, core: Arc<PoolCore>) {
    let interval = core.config().probe_interval();
    loop {
        // Registered before the round, so a failure during it is not missed.
        let verify = core.verification_requested();
        tokio::pin!(verify);
        verify.as_mut().enable();
        let Some(inner) = pool.upgrade() else { return };
        if core.is_closing() {
            return;
        }
        let asked = Instant::now();
        // While connects fail, keep trying only when no connection works and nobody waits
        // (waiting callers have bb8 connecting for them), or the breaker needs proof. At
        // maxclients with connections that work, the pool leaves Redis alone. Half-open with
        // no connection in the pool (a subscriber's connect moved the breaker there), the
        // trial PINGs need one: bb8 connects only for callers that wait.
        let breaker = core.breaker_state();
        let must_connect = !core.has_connected()
            || breaker == BreakerState::Open
            || (breaker == BreakerState::HalfOpen && inner.counts().0 == 0)
            || (core.connects_failing() && core.working_links() == 0 && core.waiting() == 0);
        let pause = if must_connect {
            connect(&inner, asked).await;
            if core.connects_failing() {
                // An idle connection that still answers shows Redis up, only refusing new
                // connections (maxclients): the failed connects then do not count.
                ping(&inner, Waiting::IdleOnly).await;
            }
            // The gate paces the next attempt.
            Duration::ZERO
        } else if breaker == BreakerState::HalfOpen {
            ping(&inner, Waiting::UpToResponseTimeout).await;
            Duration::from_millis(10)
        } else {
            keep_min_idle(&inner).await;
            let quiet_for = core.last_answer().map_or(interval, |at| at.elapsed());
            if quiet_for >= interval {
                ping(&inner, Waiting::UpToResponseTimeout).await;
                interval
            } else {
                interval - quiet_for
            }
        };
        drop(inner);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = core.closed() => return,
            () = &mut verify => {
                let Some(inner) = pool.upgrade() else { return };
                connect(&inner, Instant::now()).await;
            }
        }
    }
}

/// One connect attempt through the gate, unless another attempt has ended since `asked`; the
/// connection joins the pool if it has room below `max_size`. Returns whether it connected.
async fn connect(inner: &PoolInner, asked: Instant) -> bool {
    let skip = Skip::IfAnsweredSince(asked);
    let Attempt::Connected(conn) = inner.manager.attempt(None, skip).await else {
        return false;
    };
    // Callers that wait have bb8 connecting for them; a connection added beside theirs could
    // take the spare slot bb8 keeps for retries. Otherwise, a full pool drops it: the point
    // was to learn whether Redis accepts connections.
    let core = &inner.core;
    if core.waiting() == 0 && inner.counts().0 < core.config().max_size() {
        inner.add(conn);
    }
    true
}

/// Opens connections until `min_idle` are idle, within `max_size`. Holds a permit meanwhile,
/// like any checkout, so it never competes with callers for the last slots.
async fn keep_min_idle(inner: &PoolInner) {
    let config = inner.core.config();
    for _ in 0..config.min_idle() {
        let (connections, idle) = inner.counts();
        if idle >= config.min_idle() || connections >= config.max_size() {
            return;
        }
        let Ok(_permit) = inner.core.checkout_permits().clone().try_acquire_owned() else {
            return;
        };
        if !connect(inner, Instant::now()).await {
            return;
        }
    }
}

/// How long a probe may wait for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Only an idle connection, at once: never a connect.
    IdleOnly,
    /// An idle connection, or a new one within `response_timeout`.
    UpToResponseTimeout,
}

/// A connection for a probe, or none: when every connection is busy that is load, not an
/// outage, and a connect that fails reports itself.
async fn idle_connection(inner: &PoolInner, waiting: Waiting) -> Option<ProbeConnection> {
    let core = &inner.core;
    if waiting == Waiting::IdleOnly && inner.counts().1 == 0 {
        return None;
    }
    let permit = core.checkout_permits().clone().try_acquire_owned().ok()?;
    let timeout = core.config().response_timeout();
    let pool = inner.bb8()?;
    let mut conn = tokio::time::timeout(timeout, pool.get_owned())
        .await
        .ok()?
        .ok()?;
    if let Verdict::Evict(reason) = conn.verdict(Instant::now()) {
        conn.evict(reason);
        return None;
    }
    Some(ProbeConnection {
        conn,
        _permit: permit,
    })
}

struct ProbeConnection {
    conn: Bb8Connection,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for ProbeConnection {
    type Target = GuardConnection;
    fn deref(&self) -> &GuardConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for ProbeConnection {
    fn deref_mut(&mut self) -> &mut GuardConnection {
        &mut self.conn
    }
}

/// One PING under `response_timeout`, so a slow but answering Redis counts as up.
async fn ping(inner: &PoolInner, waiting: Waiting) {
    let core = &inner.core;
    let Some(mut conn) = idle_connection(inner, waiting).await else {
        return;
    };
    // The first connect learns which commands only read; if that failed, try again.
    if core.read_only().start_learning() {
        tokio::spawn(inner.manager.clone().learn_commands());
    }
    match conn.validate(core.config().response_timeout()).await {
        // Reported by the PING itself: Redis is alive, and serves nothing until it ends.
        Ok(()) if conn.pinged_busy() => {}
        Ok(()) => core.answered(Instant::now()),
        Err(failure) => {
            tracing::debug!(pool = %core.name(), failure = %server_text(&failure), "probe failed");
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
