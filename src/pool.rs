//! The public handle: [`RedisGuard`] and the [`PooledConnection`] it hands out.
//!
//! The machinery (bb8, the connect gate, the checkout loop) is in `inner.rs`; the prober in
//! `probe.rs`. This module only creates them and answers for them.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tracing::Instrument;

use crate::breaker::BreakerState;
use crate::config::Config;
use crate::connection::{
    GuardConnection, is_infrastructure_failure, is_refused_by_role, is_role_refusal, was_not_sent,
};
use crate::error::{Error, PoolState};
use crate::inner::{Bb8Connection, CheckedOut, PoolInner};
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

/// A pool is its own handle, so [`RedisFrom<RedisGuard>`](crate::RedisFrom) works with a
/// `RedisGuard` as the router's state.
impl AsRef<RedisGuard> for RedisGuard {
    fn as_ref(&self) -> &RedisGuard {
        self
    }
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
        let startup = config.startup();
        let inner = PoolInner::new(config);
        tracing::info!(pool = %inner.name(), url = %inner.shared.config().redacted_url(), ?startup, "redis pool created");
        if inner.shared.sentinel().is_some() {
            let follower = tokio::spawn(crate::sentinel::follow(inner.shared.clone()));
            inner.own_task(follower.abort_handle());
        }
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
    ///
    /// The steps, all under `checkout_timeout`:
    ///
    /// 1. the breaker admits the call, or it is refused at once;
    /// 2. the caller waits for a slot in arrival order (first come, first served);
    /// 3. it takes the most recently used idle connection, or a new one (every connect of the
    ///    pool passes one gate: one attempt at a time, paced after failures);
    /// 4. a connection whose socket is known closed, that outlived its lifetime, or that leads
    ///    to a demoted primary is evicted without a round trip, and the next one is taken;
    /// 5. one suspected of having failed like a peer that just failed is PINGed off the
    ///    caller's path, and the next one is taken meanwhile;
    /// 6. one that completed a command within `validation_bypass` is handed out as is;
    /// 7. any other is PINGed under `validation_timeout`, and evicted if that fails.
    pub async fn get(&self) -> Result<PooledConnection, Error> {
        let span = tracing::debug_span!("redis_guard.checkout", pool = %self.name());
        let CheckedOut { conn, permit } = self.inner.checkout().instrument(span).await?;
        Ok(PooledConnection {
            conn,
            _permit: permit,
            pool: self.inner.clone(),
            checked_out_at: Instant::now(),
        })
    }

    /// Subscribes to the channels and patterns of `subscription` on a connection of its own,
    /// kept by the pool: PINGed while quiet, and after a restart, a kill, a reset or a frozen
    /// socket connected and subscribed again on its own, the gap reported in the stream (see
    /// [`Subscriber`](crate::Subscriber)). Fails with [`Error::Unavailable`] (a 503) if the
    /// first subscription cannot be made within `connect_timeout`, or while the pool is
    /// closed or its breaker open. Closing the pool ends every subscription's stream.
    ///
    /// ```no_run
    /// use redis_guard::{PubSubEvent, Subscription};
    /// # async fn demo(guard: redis_guard::RedisGuard) -> Result<(), redis_guard::Error> {
    /// let mut events = guard.subscribe(Subscription::new().pattern("events.*")).await?;
    /// if let Some(PubSubEvent::Message(message)) = events.next().await {
    ///     println!("on {}", message.get_channel_name());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(
        &self,
        subscription: crate::Subscription,
    ) -> Result<crate::Subscriber, Error> {
        crate::pubsub::subscribe(&self.inner, subscription).await
    }

    /// Closes the pool for a graceful shutdown: from now on checkouts fail with
    /// [`UnavailableReason::Closed`](crate::UnavailableReason::Closed) and `/readyz` answers
    /// 503; it waits up to `grace` for the connections in use to come back (their requests
    /// finish, none is cut mid-command), closes the idle sockets, ends every subscription's
    /// stream, and stops the pool's background tasks (prober, Sentinel subscriptions). A
    /// connection still in use after `grace` is closed when it comes back. Every clone of the
    /// handle sees the pool closed.
    ///
    /// Returns how many connections were still in use when `grace` ran out (0: all came back).
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_guard::RedisGuard) {
    /// use std::time::Duration;
    /// // On SIGTERM, after the HTTP server stopped accepting requests:
    /// let still_in_use = guard.close(Duration::from_secs(5)).await;
    /// assert_eq!(still_in_use, 0);
    /// # }
    /// ```
    pub async fn close(&self, grace: Duration) -> u32 {
        self.inner.close(grace).await
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
    /// [`RequireRedisLayer`](crate::RequireRedisLayer) answers with.
    pub fn refusal(&self) -> Option<Error> {
        (self.breaker_state() == BreakerState::Open).then(|| {
            self.inner.shared.checkout_rejected();
            self.inner.rejected()
        })
    }

    /// Whether `other` is a handle on the same pool.
    pub(crate) fn is_same_pool(&self, other: &RedisGuard) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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
/// Implements [`ConnectionLike`], so every [`redis::AsyncCommands`] method works on it, and
/// derefs to [`GuardConnection`].
///
/// **Safe retries.** A call made only of read-only commands (by Redis's own `COMMAND` flags,
/// learned when the pool first connects) that fails with its connection (I/O error, reset, response timeout) on a connection
/// that had served before, outside a transaction, while the breaker is closed, is sent once
/// more on a fresh connection within a new checkout budget: a socket that died in the pool
/// does not fail a read. Writes are never sent twice (the first may have been applied),
/// unless the caller says the call is idempotent with [`PooledConnection::idempotent`]. After
/// a failure the handle holds a fresh connection whenever one was needed to decide, so later
/// calls work. Counted in `redis_guard_retries_total`.
pub struct PooledConnection {
    conn: Bb8Connection,
    /// Released after the connection went back to bb8 (fields drop in order), so the next
    /// caller in line finds it there.
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// For a replacement connection when a call fails with its connection.
    pool: Arc<PoolInner>,
    /// For `redis_guard_connection_hold_seconds`.
    checked_out_at: Instant,
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        self.pool.shared.returned(self.checked_out_at.elapsed());
    }
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

impl PooledConnection {
    /// This connection, for calls the caller knows are safe to send twice (`SET k v`,
    /// `DEL k`, an `INCR` whose double application is acceptable): they are retried like
    /// reads.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_guard::RedisGuard) -> Result<(), redis_guard::Error> {
    /// let mut conn = guard.get().await?;
    /// let _: () = redis::cmd("SET")
    ///     .arg("greeting")
    ///     .arg("hello")
    ///     .query_async(&mut conn.idempotent())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn idempotent(&mut self) -> Idempotent<'_> {
        Idempotent(self)
    }

    async fn send(&mut self, call: Call<'_>, writes_too: bool) -> RedisResult<Reply> {
        // Judged before the call: a transaction or watch cannot be carried over to another
        // connection, and a fresh connection that fails without an answer says Redis failed.
        let clean = self.conn.session_is_clean();
        let served = self.conn.has_served();
        let result = call.send(&mut self.conn).await;
        if matches!(&result, Err(e) if was_not_sent(e)) && self.conn.session_is_clean() {
            return self
                .send_on_fresh_connection(call, result, "the primary moved")
                .await;
        }
        // A refusal for the server's role (READONLY, MASTERDOWN, LOADING) was given before the
        // command ran: sending it again, even a write, cannot apply it twice.
        let (refused, connection_failed) = match &result {
            Err(e) => (is_refused_by_role(e), is_infrastructure_failure(e)),
            Ok(Reply::Many(values)) => (values.iter().any(is_role_refusal), false),
            Ok(Reply::One(_)) => (false, false),
        };
        // A fresh connection whose socket was closed under it (EOF, reset) met a server that
        // closed it: one shutting down in a restart, which took the connection just before it
        // stopped listening. The next connection goes to the server that replaces it.
        let closed_under_it = matches!(&result, Err(e) if e.is_connection_dropped());
        let may_retry = clean && (served || closed_under_it);
        let shared = &self.pool.shared;
        if !may_retry
            || !(refused || connection_failed)
            || shared.breaker_state() != BreakerState::Closed
        {
            return result;
        }
        // Otherwise judged from the flags the pool learned from Redis when it first
        // connected; a call whose commands are not known yet is not retried (waiting to ask
        // would cost more than the failure).
        let retry =
            refused || writes_too || self.pool.shared.read_only().known(call.cmds()) == Some(true);
        if !retry {
            return result;
        }
        let why = if refused {
            "refused for the server's role"
        } else {
            "its connection failed"
        };
        self.send_on_fresh_connection(call, result, why).await
    }

    /// Sends `call` again on a fresh connection; `result` is what the caller gets if none can
    /// be had.
    async fn send_on_fresh_connection(
        &mut self,
        call: Call<'_>,
        result: RedisResult<Reply>,
        why: &'static str,
    ) -> RedisResult<Reply> {
        let shared = &self.pool.shared;
        // The failed connection is already marked for eviction; swapping it out closes it.
        let Ok(fresh) = self.pool.replacement().await else {
            shared.retried(false);
            return result;
        };
        let response_timeout = self.conn.response_timeout();
        drop(std::mem::replace(&mut self.conn, fresh));
        self.conn.set_response_timeout(response_timeout);
        tracing::debug!(pool = %shared.name(), why, "retrying a call on a fresh connection");
        let retried = call.send(&mut self.conn).await;
        shared.retried(retried.is_ok());
        retried
    }
}

/// A [`PooledConnection`] whose calls may be retried even when they write: see
/// [`PooledConnection::idempotent`].
#[derive(Debug)]
pub struct Idempotent<'a>(&'a mut PooledConnection);

/// One call as redis-rs hands it over: a command, or a pipeline's slice of replies.
#[derive(Clone, Copy)]
enum Call<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Call<'_> {
    fn cmds(&self) -> Box<dyn Iterator<Item = &Cmd> + '_> {
        match self {
            Call::One(cmd) => Box::new(std::iter::once(*cmd)),
            Call::Many(pipeline, ..) => Box::new(pipeline.cmd_iter()),
        }
    }

    async fn send(self, conn: &mut GuardConnection) -> RedisResult<Reply> {
        match self {
            Call::One(cmd) => conn.req_packed_command(cmd).await.map(Reply::One),
            Call::Many(pipeline, offset, count) => conn
                .req_packed_commands(pipeline, offset, count)
                .await
                .map(Reply::Many),
        }
    }
}

/// The `ConnectionLike` of a handle whose calls go through [`PooledConnection::send`].
macro_rules! retrying_connection_like {
    ($wrapper:ty, $conn:ident => $pooled:expr, $writes_too:expr) => {
        impl ConnectionLike for $wrapper {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                Box::pin(async move {
                    let $conn = self;
                    match $pooled.send(Call::One(cmd), $writes_too).await? {
                        Reply::One(value) => Ok(value),
                        Reply::Many(_) => unreachable!("one command, one reply"),
                    }
                })
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                Box::pin(async move {
                    let $conn = self;
                    let call = Call::Many(pipeline, offset, count);
                    match $pooled.send(call, $writes_too).await? {
                        Reply::Many(values) => Ok(values),
                        Reply::One(_) => unreachable!("a pipeline, its replies"),
                    }
                })
            }

            fn get_db(&self) -> i64 {
                let $conn = self;
                $pooled.conn.get_db()
            }
        }
    };
}

retrying_connection_like!(PooledConnection, this => this, false);
retrying_connection_like!(Idempotent<'_>, this => this.0, true);
