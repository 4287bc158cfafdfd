//! The public handle: [`RedisGuard`] and the [`PooledConnection`] it hands out.
//!
//! The machinery (bb8, the connect gate, the checkout loop) is in `inner.rs`; the prober in
//! `probe.rs`. This module only creates them and answers for them.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::breaker::BreakerState;
use crate::config::Config;
use crate::connection::GuardConnection;
use crate::error::{Error, PoolState};
use crate::inner::{CheckedOut, PoolInner};
use crate::probe;

/// A health-checked pool of Redis connections: cheap to clone, one per Redis instance.
///
/// ```no_run
/// use redis::AsyncCommands;
/// use redis_guard::{Config, RedisGuard};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let guard = RedisGuard::connect(Config::builder("redis://127.0.0.1:6379").build()?).await?;
/// let mut conn = guard.get().await?;
/// let visits: i64 = conn.incr("visits", 1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisGuard {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for RedisGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGuard")
            .field("name", &self.name())
            .field("url", &self.config().redacted_url())
            .field("state", &self.state())
            .finish()
    }
}

impl RedisGuard {
    /// Creates the pool. What happens when Redis is unreachable depends on
    /// [`Config::startup`]: [`StartupMode::Lazy`](crate::StartupMode::Lazy) returns at once
    /// and connects in the background (a [`get`](Self::get) made meanwhile waits for that
    /// connect); the other modes return [`Error::Unavailable`] if no connection succeeds.
    ///
    /// Must run inside a Tokio runtime. Install your metrics recorder before this call.
    pub async fn connect(config: Config) -> Result<RedisGuard, Error> {
        let startup = config.startup;
        let inner = PoolInner::new(config);
        tracing::info!(pool = %inner.name(), url = %inner.shared.config().redacted_url(), ?startup, "redis pool created");
        inner.connect_at_startup(startup).await?;
        // Started after the start-up connect, so that is the only connect attempt until then;
        // it stops when it can no longer upgrade its weak reference to the pool.
        let prober = tokio::spawn(probe::supervise(
            Arc::downgrade(&inner),
            inner.shared.clone(),
        ));
        inner.own_task(prober.abort_handle());
        Ok(RedisGuard { inner })
    }

    /// Checks out a validated connection within the checkout budget.
    ///
    /// Dead, stale or unanswering connections met on the way are evicted and replaced without
    /// the caller seeing them. Fails with [`Error::Timeout`] when the budget runs out (every
    /// connection busy, say), and names the pool's state and the last connect error.
    ///
    /// While the circuit breaker is open it fails at once with [`Error::Unavailable`], and so
    /// it does when the pool has no connection and a connect attempt fails while it waits:
    /// waiting out the budget would only hide the cause. Before the pool's first connection
    /// it is not refused: it waits for that connect.
    pub async fn get(&self) -> Result<PooledConnection, Error> {
        let span = tracing::debug_span!("redis_guard.checkout", pool = %self.name());
        let CheckedOut { conn, permit } = self.inner.checkout().instrument(span).await?;
        Ok(PooledConnection {
            conn,
            _permit: permit,
        })
    }

    /// When a refused caller should try again: the pool's next connect attempt, at least 1 s.
    pub fn retry_after(&self) -> Duration {
        self.inner.retry_after()
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.shared.breaker_state()
    }

    /// Whether the pool is ready to serve: it has connected to Redis and the breaker is
    /// closed. Kept fresh by the prober; reading it costs no Redis traffic.
    pub fn is_ready(&self) -> bool {
        self.inner.shared.is_ready()
    }

    /// The error a dependent request gets right now, if the breaker is open: what
    /// [`RequireRedis`](crate::RequireRedis) answers with.
    pub fn refusal(&self) -> Option<Error> {
        (self.breaker_state() == BreakerState::Open).then(|| {
            self.inner.shared.checkout_rejected();
            self.inner.rejected()
        })
    }

    pub(crate) fn shared(&self) -> &crate::shared::Shared {
        &self.inner.shared
    }

    /// The pool's name (its `pool` metric label).
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &Config {
        self.inner.shared.config()
    }

    /// A consistent snapshot of the pool.
    pub fn state(&self) -> PoolState {
        self.inner.state()
    }
}

/// A checked-out connection; back to the pool on drop.
///
/// Implements [`ConnectionLike`](redis::aio::ConnectionLike), so every [`redis::AsyncCommands`]
/// method works on it, and derefs to [`GuardConnection`].
pub struct PooledConnection {
    conn: crate::inner::Bb8Connection,
    /// Released after the connection went back to bb8 (fields drop in order), so the next
    /// caller in line finds it there.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.conn, f)
    }
}

impl Deref for PooledConnection {
    type Target = GuardConnection;
    fn deref(&self) -> &GuardConnection {
        &self.conn
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut GuardConnection {
        &mut self.conn
    }
}

crate::connection::delegate_connection_like!(PooledConnection, conn);
