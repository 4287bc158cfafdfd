//! A checkout: what a [`PooledConnection`](super::PooledConnection) holds, where each call
//! goes, and the retries that keep a dead socket from failing a call.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tracing::Instrument;

use crate::breaker::BreakerState;
use crate::connection::{Call, Reply};
use crate::error::Error;
use crate::hedge::Raced;
use crate::inner::{CheckedOut, PoolInner, WhenClosing};
use crate::manager::Bb8Connection;
use crate::metrics::EvictionReason;
use crate::multiplexed::{Lane, SharedConnection};
use crate::not_sent::{NoConnection, NotSent};
use crate::redis_error::{is_infrastructure_failure, is_refused_by_role};
use crate::reply_limit::ReplyTooLarge;

/// What a [`PooledConnection`](super::PooledConnection) holds, and where its calls go: a connection of its own, or in
/// shared mode the pool's shared connections until a command needs one of its own.
///
/// **Shared mode.** In [`PoolMode::Shared`](crate::PoolMode::Shared) the checkout holds no
/// connection of its own: each plain command goes over one of the pool's shared connections.
/// The first command that needs a connection of its own (`MULTI`, `WATCH`, `SELECT`, a
/// blocking command such as `BLPOP`, a subscription, other session state) takes an exclusive
/// connection from the pool, and every later call of this checkout goes there, so a
/// `WATCH`, the reads after it and the transaction share one session. An atomic pipeline of
/// plain commands is sent as one `MULTI ... EXEC` write and stays on the shared connection.
///
/// **Safe retries.** A call made only of read-only commands (by Redis's own `COMMAND` flags,
/// learned when the pool first connects) that fails with its connection (I/O error, reset,
/// response timeout) on a connection that had served before, outside a transaction, while the
/// breaker is closed, is sent once more on a fresh connection within a new checkout budget: a
/// socket that died in the pool does not fail a read. Writes are never sent twice (the first
/// may have been applied), unless the caller says the call is idempotent with
/// [`Checkout::idempotent`]. A call whose connection failed before any of it was written
/// never reached Redis, and is sent on a fresh connection whatever it does. After a failure
/// the checkout holds a fresh connection whenever one was needed to decide, so later calls
/// work. Counted in `redis_guard_retries_total`.
///
/// ```no_run
/// use redis::AsyncCommands;
/// # async fn demo(guard: redis_guard::RedisGuard) -> Result<(), redis_guard::Error> {
/// let mut conn = guard.get().await?;
/// let n: i64 = conn.incr("visits", 1).await?;
/// let name: Option<String> = redis::cmd("GET").arg("name").query_async(&mut *conn).await?;
/// # Ok(()) }
/// ```
pub struct Checkout {
    pub(super) reservation: Reservation,
    /// For a replacement connection when a call fails with its connection.
    pub(super) pool: Arc<PoolInner>,
    /// The reply wait for calls over a shared connection, in this checkout.
    pub(super) response_timeout: Duration,
}

/// What a checkout holds of the one pool (hyper-util's shape): a connection of its own, or
/// a share of one that stays in the pool for every checkout. A shared connection is an
/// ordinary bb8 connection the pool keeps checked out, with its permit, in shared mode's
/// lanes (`multiplexed.rs`).
pub(super) enum Reservation {
    /// A connection of its own, with the permit that keeps its place in the pool.
    Unique {
        conn: Bb8Connection,
        /// Released after the connection went back to bb8 (fields drop in order), so the
        /// next caller in line finds it there.
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// Shared mode: the shared connection its plain commands go over.
    Shared(Arc<SharedConnection>),
}

impl From<CheckedOut> for Reservation {
    fn from(CheckedOut { conn, permit }: CheckedOut) -> Self {
        Reservation::Unique {
            conn,
            _permit: permit,
        }
    }
}

impl fmt::Debug for Checkout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reservation {
            Reservation::Unique { conn, .. } => fmt::Debug::fmt(&**conn, f),
            Reservation::Shared(connection) => f
                .debug_struct("Checkout")
                .field("shared_connection_id", &connection.id())
                .finish_non_exhaustive(),
        }
    }
}

impl Checkout {
    /// The id of the connection the next call goes over (in shared mode, a shared one until
    /// a command needs a connection of its own): unique within the pool, for logs and tests.
    pub fn connection_id(&self) -> u64 {
        match &self.reservation {
            Reservation::Unique { conn, .. } => conn.connection_id(),
            Reservation::Shared(connection) => connection.id(),
        }
    }

    /// Whether that connection's socket is still open as far as can be known without a round
    /// trip.
    pub fn is_open(&self) -> bool {
        match &self.reservation {
            Reservation::Unique { conn, .. } => conn.is_open(),
            Reservation::Shared(connection) => connection.is_open(),
        }
    }

    /// Whether calls go over a shared connection (shared mode, until a command needed a
    /// connection of its own).
    pub fn is_shared(&self) -> bool {
        matches!(self.reservation, Reservation::Shared(_))
    }

    /// Sets how long ordinary commands wait for their reply for the rest of this checkout
    /// (a slow `EVAL`, a big `KEYS`); the pool's `response_timeout` applies again to the next
    /// checkout. Blocking commands wait their own timeout on top of this.
    ///
    /// ```no_run
    /// # async fn demo(guard: redis_guard::RedisGuard) -> Result<(), redis_guard::Error> {
    /// use std::time::Duration;
    /// let mut conn = guard.get().await?;
    /// conn.set_response_timeout(Duration::from_secs(10));
    /// let _: () = redis::cmd("EVAL").arg("return 1").arg(0).query_async(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub fn set_response_timeout(&mut self, timeout: Duration) {
        self.response_timeout = timeout;
        if let Reservation::Unique { conn, .. } = &mut self.reservation {
            conn.set_response_timeout(timeout);
        }
    }

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

    pub(super) async fn send(&mut self, call: Call<'_>, writes_too: bool) -> RedisResult<Reply> {
        let core = &self.pool.core;
        // A failover under way (Sentinel): a write would be acknowledged by the old primary
        // and lost. It waits, unsent; once the primary moved it finds its connection retired
        // and goes to the new one.
        let reads_only = core.read_only().known(call.cmds()) == Some(true);
        if core.holds_writes() && !reads_only {
            Box::pin(core.writes_released()).await;
        }
        if reads_only && self.may_hedge(call) {
            return Box::pin(self.send_hedged(call, writes_too)).await;
        }
        self.send_unhedged(call, writes_too).await
    }

    /// Whether a read-only `call` may be hedged (see `hedge.rs`): it does not block on the
    /// server, and its session is clean, so another connection gives the same answer.
    fn may_hedge(&self, call: Call<'_>) -> bool {
        let clean = match &self.reservation {
            Reservation::Unique { conn, .. } => conn.session_is_clean(),
            Reservation::Shared(_) => !call.cmds().any(crate::session::needs_own_connection),
        };
        clean && !call.blocks() && self.pool.core.config().hedge_reads()
    }

    /// Sends a read, and a copy on another connection once it is late; the first answer
    /// wins. A copy that wins on a connection of its own takes the late one's place.
    async fn send_hedged(&mut self, call: Call<'_>, writes_too: bool) -> RedisResult<Reply> {
        let pool = self.pool.clone();
        let delay = pool.core.hedge_delay();
        let sent = Instant::now();
        let on_shared = matches!(self.reservation, Reservation::Shared(_));
        let raced = {
            let original = std::pin::pin!(self.send_unhedged(call, writes_too));
            crate::hedge::race(&pool, call, original, sent, delay, on_shared).await
        };
        match raced {
            Raced::Original(result) => result,
            // Another connection answered while this one returned nothing at all: it is
            // frozen, or stuck behind a slow reply. Either way no new call goes to it, and
            // its idle peers are suspected (the eviction says so).
            Raced::Hedge(reply, fresh) => {
                match &mut self.reservation {
                    Reservation::Unique { conn, .. } => {
                        conn.evict(EvictionReason::ValidationFailed);
                        let response_timeout = conn.response_timeout();
                        drop(std::mem::replace(conn, fresh));
                        conn.set_response_timeout(response_timeout);
                    }
                    Reservation::Shared(connection) => {
                        if !connection.answered_since(sent) {
                            connection.retire(EvictionReason::ValidationFailed);
                            self.pool.let_go_if_retired(connection);
                        }
                    }
                }
                Ok(reply)
            }
        }
    }

    /// Sends `call` on the checkout's connection, and once more on another if it failed
    /// with its connection and may be sent twice.
    async fn send_unhedged(&mut self, call: Call<'_>, writes_too: bool) -> RedisResult<Reply> {
        if let Reservation::Shared(connection) = &self.reservation {
            if !call.cmds().any(crate::session::needs_own_connection) {
                let mut connection = connection.clone();
                let reads_only = self.pool.core.read_only().known(call.cmds()) == Some(true);
                // The first call that may write moves the checkout to the lane that carries
                // writes, for the rest of it; while that lane has no connection yet (it is
                // opened in the background), the call goes where it is rather than wait for a
                // connect.
                if connection.lane() == Lane::Reads && !reads_only && self.pool.writes_lane_open() {
                    connection =
                        Box::pin(self.another_shared_connection(Lane::Writes, None)).await?;
                }
                return self.send_shared(connection, call, writes_too).await;
            }
            Box::pin(self.take_own_connection()).await?;
        }
        let Reservation::Unique { conn, .. } = &mut self.reservation else {
            unreachable!("a connection of its own was just taken");
        };
        // Judged before the call: a transaction or watch cannot be carried over to another
        // connection, and a fresh connection that fails without an answer says Redis failed.
        let clean = conn.session_is_clean();
        let served = conn.has_served();
        let result = call.send(conn).await;
        let why = match unsent(&result) {
            Some(why) if conn.session_is_clean() => Some(why),
            _ => self.retry_reason(call, &result, clean, served, writes_too),
        };
        match why {
            Some(why) => Box::pin(self.send_on_fresh_connection(call, result, why)).await,
            None => result,
        }
    }

    /// Whether a failed call may be sent once more on another connection, and why.
    fn retry_reason(
        &self,
        call: Call<'_>,
        result: &RedisResult<Reply>,
        clean: bool,
        served: bool,
        writes_too: bool,
    ) -> Option<&'static str> {
        // A refusal for the server's role (READONLY, MASTERDOWN, LOADING) was given before the
        // command ran: sending it again, even a write, cannot apply it twice.
        let (refused, connection_failed) = match result {
            // A reply too large for the limit is as large on any connection.
            Err(e) => (
                is_refused_by_role(e),
                is_infrastructure_failure(e) && !ReplyTooLarge::is_cause_of(e),
            ),
            Ok(reply) => (reply.refused_by_role(), false),
        };
        // A fresh connection whose socket was closed under it (EOF, reset) met a server that
        // closed it: one shutting down in a restart, which took the connection just before it
        // stopped listening. The next connection goes to the server that replaces it.
        let closed_under_it = matches!(result, Err(e) if e.is_connection_dropped());
        let may_retry = clean && (served || closed_under_it);
        if !may_retry
            || !(refused || connection_failed)
            || self.pool.core.breaker_state() != BreakerState::Closed
        {
            return None;
        }
        // Otherwise judged from the flags the pool learned from Redis when it first
        // connected; a call whose commands are not known yet is not retried (waiting to ask
        // would cost more than the failure).
        if refused {
            Some("refused for the server's role")
        } else if writes_too || self.pool.core.read_only().known(call.cmds()) == Some(true) {
            Some("its connection failed")
        } else {
            None
        }
    }

    /// Shared mode: sends `call` over `connection`, or over another shared connection if that
    /// one is known closed; a call that failed with its connection is retried by the rules
    /// of [`send`](Self::send), on a connection Redis has answered on since the failure.
    async fn send_shared(
        &mut self,
        mut connection: Arc<SharedConnection>,
        call: Call<'_>,
        writes_too: bool,
    ) -> RedisResult<Reply> {
        if !connection.is_open() {
            connection = Box::pin(self.another_shared_connection(connection.lane(), None)).await?;
        }
        let core = &self.pool.core;
        let served = connection.has_served();
        let result = connection.call(core, call, self.response_timeout).await;
        self.pool.let_go_if_retired(&connection);
        let why =
            unsent(&result).or_else(|| self.retry_reason(call, &result, true, served, writes_too));
        let Some(why) = why else {
            return result;
        };
        let failed_at = Instant::now();
        let fresh = Box::pin(self.another_shared_connection(connection.lane(), Some(failed_at)))
            .await
            .map_err(drop);
        let Ok(fresh) = fresh else {
            self.pool.core.retried(false);
            return result;
        };
        tracing::debug!(pool = %self.pool.name(), why, "retrying a call on another shared connection");
        let retried = fresh
            .call(&self.pool.core, call, self.response_timeout)
            .await;
        self.pool.let_go_if_retired(&fresh);
        self.pool.core.retried(retried.is_ok());
        retried
    }

    /// Moves this checkout onto another shared connection, within a budget of its own.
    async fn another_shared_connection(
        &mut self,
        lane: Lane,
        proven_since: Option<Instant>,
    ) -> RedisResult<Arc<SharedConnection>> {
        let connection = self
            .pool
            .another_shared_connection(lane, proven_since)
            .await
            .map_err(no_connection)?;
        self.reservation = Reservation::Shared(connection.clone());
        Ok(connection)
    }

    /// Shared mode: takes a connection of its own for the rest of this checkout.
    async fn take_own_connection(&mut self) -> RedisResult<()> {
        let span = tracing::debug_span!("redis_guard.checkout", pool = %self.pool.name());
        // Admitted before any close: the request goes on while a close waits for it.
        let (checked_out, _) = self
            .pool
            .checkout_when_closing(WhenClosing::CarryOn)
            .instrument(span)
            .await
            .map_err(no_connection)?;
        self.reservation = checked_out.into();
        if let Reservation::Unique { conn, .. } = &mut self.reservation {
            conn.set_response_timeout(self.response_timeout);
        }
        Ok(())
    }

    /// Sends `call` again on a fresh connection; `result` is what the caller gets if none can
    /// be had.
    async fn send_on_fresh_connection(
        &mut self,
        call: Call<'_>,
        result: RedisResult<Reply>,
        why: &'static str,
    ) -> RedisResult<Reply> {
        let core = &self.pool.core;
        // The failed connection is already marked for eviction; swapping it out closes it.
        let Ok(fresh) = self.pool.replacement().await else {
            core.retried(false);
            return result;
        };
        let Reservation::Unique { conn, .. } = &mut self.reservation else {
            unreachable!("only a connection of its own is replaced");
        };
        let response_timeout = conn.response_timeout();
        drop(std::mem::replace(conn, fresh));
        conn.set_response_timeout(response_timeout);
        tracing::debug!(pool = %core.name(), why, "retrying a call on a fresh connection");
        let retried = call.send(conn).await;
        core.retried(retried.is_ok());
        retried
    }
}

/// Why `result` may be sent again whatever its commands do: its connection failed before
/// any of it was written.
fn unsent(result: &RedisResult<Reply>) -> Option<&'static str> {
    result
        .as_ref()
        .err()
        .and_then(NotSent::of)
        .map(NotSent::reason)
}

/// The error a call gets when no connection could be had for it: the checkout's error
/// (unavailable, timed out) as an I/O error, so it answers 503 like a connection failure and
/// is never retried.
fn no_connection(error: Error) -> redis::RedisError {
    NoConnection::error(error)
}

/// A [`Checkout`] whose calls may be retried even when they write: see
/// [`Checkout::idempotent`].
#[derive(Debug)]
pub struct Idempotent<'a>(&'a mut Checkout);

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
                match &$pooled.reservation {
                    Reservation::Unique { conn, .. } => conn.get_db(),
                    Reservation::Shared(connection) => connection.db(),
                }
            }
        }
    };
}

retrying_connection_like!(Checkout, this => this, false);
retrying_connection_like!(Idempotent<'_>, this => this.0, true);
