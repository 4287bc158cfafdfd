//! One pooled Redis connection, and what the pool knows about its health.
//!
//! A [`GuardConnection`] owns a redis-rs `MultiplexedConnection` that nobody else can clone, so
//! every command passes through here and its outcome is noted:
//!
//! - a completed command (a reply, even an error reply) proves the socket alive and restarts
//!   the validation bypass window;
//! - an I/O error or a response timeout poisons the connection: a late reply may still be on
//!   its way, and a socket that went silent once is suspect;
//! - a command that changes session state (`MULTI`, `WATCH`, `SELECT`, `SUBSCRIBE`, ...) and is
//!   not undone before the connection is returned makes it dirty, so no next user inherits it.
//!
//! A request cancelled mid-command cannot leave its reply for the next user: the multiplexer
//! matches replies to requests in order and discards the replies of dropped requests.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::task::AbortHandle;

use crate::metrics::EvictionReason;
use crate::shared::Shared;
use crate::transport::{LinkHealth, PeerProbe};

/// A pooled Redis connection. Use it with [`redis::AsyncCommands`] or any `query_async`.
///
/// You get one through [`RedisGuard::get`](crate::RedisGuard::get) or the
/// [`Redis`](crate::Redis) extractor; it goes back to the pool when dropped.
///
/// ```no_run
/// use redis::AsyncCommands;
/// # async fn demo(guard: redis_guard::RedisGuard) -> Result<(), redis_guard::Error> {
/// let mut conn = guard.get().await?;
/// let _: () = conn.set("greeting", "hello").await?;
/// let greeting: String = conn.get("greeting").await?;
/// assert_eq!(conn.connection_id() > 0, true);
/// # Ok(()) }
/// ```
pub struct GuardConnection {
    inner: MultiplexedConnection,
    link: Arc<LinkHealth>,
    probe: PeerProbe,
    shared: Arc<Shared>,
    driver: AbortHandle,
    id: u64,
    expires_at: Option<Instant>,
    last_success: Instant,
    returned_at: Instant,
    session: SessionState,
    eviction: Option<EvictionReason>,
    validations: u64,
}

impl fmt::Debug for GuardConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardConnection")
            .field("id", &self.id)
            .field("link", &self.link.state())
            .field("eviction", &self.eviction)
            .finish_non_exhaustive()
    }
}

/// Why a validation PING did not prove the connection alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValidationFailure {
    /// No reply in time: a frozen (half-open) socket, whose siblings may be frozen too.
    TimedOut(Duration),
    /// An error or a wrong reply.
    Failed(String),
}

impl fmt::Display for ValidationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationFailure::TimedOut(after) => write!(f, "no PING reply within {after:?}"),
            ValidationFailure::Failed(reason) => f.write_str(reason),
        }
    }
}

/// What a checkout must do with an idle connection before handing it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Evict it and try another.
    Evict(EvictionReason),
    /// It completed a command within the bypass window: hand it out as is.
    Fresh,
    /// Prove it alive with a PING first.
    Validate,
    /// A peer failed since this one last answered: it may have failed the same way (a
    /// middlebox forgets every flow at once). Validate it off the caller's path.
    Suspect,
}

impl GuardConnection {
    pub(crate) fn new(
        inner: MultiplexedConnection,
        link: Arc<LinkHealth>,
        probe: PeerProbe,
        shared: Arc<Shared>,
        driver: AbortHandle,
        id: u64,
    ) -> Self {
        let now = Instant::now();
        let config = shared.config();
        let expires_at = config.max_lifetime.map(|lifetime| {
            // Shortened by a random share so connections opened together expire apart.
            let jitter = fastrand::f64() * config.lifetime_jitter;
            now + lifetime.mul_f64(1.0 - jitter)
        });
        Self {
            inner,
            link,
            probe,
            shared,
            driver,
            id,
            expires_at,
            last_success: now,
            returned_at: now,
            session: SessionState::default(),
            eviction: None,
            validations: 0,
        }
    }

    /// A number unique within the pool, for logs and tests.
    pub fn connection_id(&self) -> u64 {
        self.id
    }

    /// Whether the socket is still open as far as can be known without a round trip.
    pub fn is_open(&self) -> bool {
        self.link.is_open() && self.eviction.is_none()
    }

    pub(crate) fn verdict(&self, now: Instant) -> Verdict {
        if !self.link.is_open() || self.probe.peer_closed() {
            return Verdict::Evict(EvictionReason::Broken);
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Verdict::Evict(EvictionReason::MaxLifetime);
        }
        // Before the bypass: a socket frozen right after its last reply looks fresh.
        if self.shared.is_suspect(self.last_success) {
            return Verdict::Suspect;
        }
        if now.saturating_duration_since(self.last_success) < self.shared.config().validation_bypass
        {
            Verdict::Fresh
        } else {
            Verdict::Validate
        }
    }

    /// A new connection's first command: only a reply proves Redis (not just a socket) there.
    /// Its errors are kept whole, so `NOAUTH` or `NOPERM` can be told from a dead socket.
    pub(crate) async fn first_ping(&mut self) -> RedisResult<()> {
        match self
            .inner
            .send_packed_command(&redis::cmd("PING").to_owned())
            .await?
        {
            Value::SimpleString(_) | Value::BulkString(_) => {
                self.last_success = Instant::now();
                Ok(())
            }
            Value::ServerError(e) => Err(e.into()),
            other => Err(RedisError::from((
                redis::ErrorKind::Client,
                "unexpected PING reply",
                format!("{other:?}"),
            ))),
        }
    }

    /// PINGs with a payload unique to this attempt, so a stale reply cannot pass for the answer.
    pub(crate) async fn validate(&mut self, timeout: Duration) -> Result<(), ValidationFailure> {
        self.validations += 1;
        let nonce = format!("redis-guard:{}:{}", self.id, self.validations);
        let ping = redis::cmd("PING").arg(&nonce).to_owned();
        match tokio::time::timeout(timeout, self.inner.send_packed_command(&ping)).await {
            Ok(Ok(Value::BulkString(reply))) if reply == nonce.as_bytes() => {
                self.last_success = Instant::now();
                Ok(())
            }
            Ok(Ok(other)) => Err(ValidationFailure::Failed(format!(
                "unexpected PING reply {other:?}"
            ))),
            Ok(Err(e)) => Err(ValidationFailure::Failed(e.to_string())),
            Err(_) => Err(ValidationFailure::TimedOut(timeout)),
        }
    }

    /// Marks the connection for eviction; it is closed when it returns to the pool.
    pub(crate) fn evict(&mut self, reason: EvictionReason) {
        if self.eviction.is_none() {
            self.eviction = Some(reason);
            self.shared.evicted(reason, self.id);
        }
    }

    /// Called by the pool when the connection comes back: decides whether it may be reused.
    pub(crate) fn on_return(&mut self) -> bool {
        self.returned_at = Instant::now();
        if self.eviction.is_none() {
            let reason = if !self.link.is_open() {
                Some(EvictionReason::Broken)
            } else if self.session.is_dirty() {
                Some(EvictionReason::Dirty)
            } else if self.expires_at.is_some_and(|at| self.returned_at >= at) {
                Some(EvictionReason::MaxLifetime)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.evict(reason);
            }
        }
        self.eviction.is_none()
    }

    fn note_outcome<T>(&mut self, result: &RedisResult<T>) {
        match result {
            Err(e) if is_infrastructure_failure(e) => self.evict(EvictionReason::IoError),
            // A reply, or an error reply (WRONGTYPE, NOSCRIPT, ...): it travelled a working
            // socket.
            _ => {
                self.last_success = Instant::now();
                self.shared.answered(self.last_success);
            }
        }
    }
}

impl Drop for GuardConnection {
    fn drop(&mut self) {
        // bb8's reaper closes idle connections without asking the manager; count those here.
        if self.eviction.is_none()
            && self
                .shared
                .config()
                .idle_timeout
                .is_some_and(|idle| self.returned_at.elapsed() >= idle)
        {
            self.evict(EvictionReason::IdleTimeout);
        }
        // Closes the socket now, even if a blocking command is still waiting for its reply.
        self.driver.abort();
    }
}

/// Implements `ConnectionLike` for a wrapper by handing every call to `self.$field`, so that
/// `AsyncCommands` and `query_async(&mut wrapper)` work on the wrappers users hold.
macro_rules! delegate_connection_like {
    ($wrapper:ty, $field:tt) => {
        impl redis::aio::ConnectionLike for $wrapper {
            fn req_packed_command<'a>(
                &'a mut self,
                cmd: &'a redis::Cmd,
            ) -> redis::RedisFuture<'a, redis::Value> {
                self.$field.req_packed_command(cmd)
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a redis::Pipeline,
                offset: usize,
                count: usize,
            ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
                self.$field.req_packed_commands(pipeline, offset, count)
            }

            fn get_db(&self) -> i64 {
                self.$field.get_db()
            }
        }
    };
}
pub(crate) use delegate_connection_like;

/// Whether an error means the connection (not the command) failed: the failures that poison
/// a connection.
pub(crate) fn is_infrastructure_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl ConnectionLike for GuardConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let pending = self.session.before(std::iter::once(cmd));
            let result = self.inner.send_packed_command(cmd).await;
            self.note_outcome(&result);
            if result.is_ok() {
                self.session.after(pending);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let pending = self.session.before(pipeline.cmd_iter());
            let result = self
                .inner
                .send_packed_commands(pipeline, offset, count)
                .await;
            self.note_outcome(&result);
            if result.is_ok() {
                self.session.after(pending);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Session state a command can leave on a connection.
///
/// Entering a state is recorded before the command is sent and leaving it only after the reply
/// arrives, so a command cancelled half-way leaves the connection marked, never falsely clean.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SessionState {
    in_multi: bool,
    watching: bool,
    /// State that cannot be undone cheaply: a `SELECT`ed database, a subscription, ...
    tainted: bool,
}

/// What a batch of commands undoes once it succeeds.
#[derive(Debug, Default, Clone, Copy)]
struct PendingExit {
    multi: bool,
    watch: bool,
    all: bool,
}

impl SessionState {
    fn is_dirty(&self) -> bool {
        self.in_multi || self.watching || self.tainted
    }

    fn before<'c>(&mut self, cmds: impl Iterator<Item = &'c Cmd>) -> PendingExit {
        let mut exit = PendingExit::default();
        for cmd in cmds {
            let mut args = cmd.args_iter().filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(bytes),
                _ => None,
            });
            let Some(name) = args.next() else { continue };
            let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
            if is("MULTI") {
                self.in_multi = true;
            } else if is("WATCH") {
                self.watching = true;
            } else if is("EXEC") || is("DISCARD") {
                exit.multi = true;
                exit.watch = true;
            } else if is("UNWATCH") {
                exit.watch = true;
            } else if is("RESET") {
                exit.all = true;
            } else if [
                "SELECT",
                "SUBSCRIBE",
                "PSUBSCRIBE",
                "SSUBSCRIBE",
                "MONITOR",
                "HELLO",
            ]
            .iter()
            .any(|w| is(w))
                || ["AUTH", "READONLY", "READWRITE", "SWAPDB"]
                    .iter()
                    .any(|w| is(w))
                || (is("CLIENT")
                    && args.next().is_some_and(|sub| {
                        ["REPLY", "TRACKING", "SETNAME", "NO-EVICT", "NO-TOUCH"]
                            .iter()
                            .any(|w| sub.eq_ignore_ascii_case(w.as_bytes()))
                    }))
            {
                self.tainted = true;
            }
        }
        exit
    }

    fn after(&mut self, exit: PendingExit) {
        if exit.all {
            *self = SessionState::default();
            return;
        }
        if exit.multi {
            self.in_multi = false;
        }
        if exit.watch {
            self.watching = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut SessionState, cmds: &[Cmd], replied: bool) {
        let exit = state.before(cmds.iter());
        if replied {
            state.after(exit);
        }
    }

    #[test]
    fn plain_commands_leave_the_session_clean() {
        let mut s = SessionState::default();
        run(&mut s, &[redis::cmd("GET").arg("k").to_owned()], false);
        run(&mut s, &[redis::cmd("client").arg("id").to_owned()], true);
        assert!(!s.is_dirty());
    }

    #[test]
    fn completed_transaction_is_clean_and_cancelled_one_is_dirty() {
        let mut s = SessionState::default();
        run(&mut s, &[redis::cmd("WATCH").arg("k").to_owned()], true);
        run(&mut s, &[redis::cmd("multi").to_owned()], true);
        assert!(s.is_dirty());
        run(&mut s, &[redis::cmd("EXEC").to_owned()], true);
        assert!(!s.is_dirty());

        run(&mut s, &[redis::cmd("MULTI").to_owned()], true);
        run(&mut s, &[redis::cmd("EXEC").to_owned()], false);
        assert!(s.is_dirty(), "an EXEC without a reply may never have run");
    }

    #[test]
    fn atomic_pipeline_is_clean_once_answered() {
        let mut s = SessionState::default();
        let pipe = redis::pipe().atomic().set("a", 1).get("a").to_owned();
        let exit = s.before(pipe.cmd_iter());
        // redis-rs adds MULTI/EXEC when packing, not to cmd_iter: nothing to track.
        s.after(exit);
        assert!(!s.is_dirty());
    }

    #[test]
    fn irreversible_state_taints_until_reset() {
        for cmd in [
            redis::cmd("SELECT").arg(2).to_owned(),
            redis::cmd("SUBSCRIBE").arg("ch").to_owned(),
            redis::cmd("CLIENT").arg("REPLY").arg("OFF").to_owned(),
        ] {
            let mut s = SessionState::default();
            run(&mut s, std::slice::from_ref(&cmd), true);
            assert!(s.is_dirty(), "{:?}", cmd.args_iter().next());
            run(&mut s, &[redis::cmd("RESET").to_owned()], true);
            assert!(!s.is_dirty());
        }
    }
}
