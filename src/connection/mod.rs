//! One pooled Redis connection, and what the pool knows about its health.
//!
//! A [`GuardConnection`] owns a redis-rs `MultiplexedConnection` that nobody else can clone, so
//! every command passes through here and its outcome is noted:
//!
//! - a completed command (a reply, even an error reply) proves the socket alive and restarts
//!   the validation bypass window;
//! - an I/O error or a response timeout poisons the connection: a late reply may still be on
//!   its way, and a socket that went silent once is suspect;
//! - a call still waiting for its reply when the connection is returned (the request was
//!   cancelled) evicts it: the server may still be running it (a `BLPOP` would pop the next
//!   job for nobody), and closing the socket is the only way to stop it;
//! - what commands do to the session (`MULTI`, `WATCH`, `SELECT`, ...) is applied in order
//!   (`session.rs`), and a connection whose session is not back at its baseline is not reused;
//! - a blocking command's reply may take its own timeout plus `response_timeout`
//!   (`command.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};
use tokio::task::AbortHandle;

use crate::metrics::EvictionReason;
use crate::not_sent::NotSent;
use crate::redis_error::is_busy_code;
use crate::sanitize::server_text;
use crate::sentinel::Placement;
use crate::session::Session;
use crate::transport::{LinkHealth, LinkState, PeerProbe, PeerState};

mod call;
mod judgement;
mod outcome;
mod owner;

pub(crate) use call::{Call, Reply, call_span, watched};
pub(crate) use judgement::{Known, Verdict, on_demoted_primary};
pub(crate) use outcome::{Outcome, closed_link_eviction, unless_never_written};
use outcome::{proves_the_connection, server_error};
pub(crate) use owner::Owner;

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
    handle: MultiplexedConnection,
    link: Arc<LinkHealth>,
    /// Shared with the Sentinel watch, which shuts the socket when its server is demoted.
    probe: Arc<PeerProbe>,
    pool: Arc<dyn Owner>,
    driver: AbortHandle,
    id: u64,
    expires_at: Option<Instant>,
    last_success: Instant,
    returned_at: Instant,
    session: Session,
    /// A call is waiting for its reply. Still set when the connection comes back means the
    /// call was cancelled half-way.
    in_flight: bool,
    /// The reply wait for ordinary commands during this checkout; back to the pool's
    /// `response_timeout` when the connection is returned.
    response_timeout: Duration,
    eviction: Option<EvictionReason>,
    validations: u64,
    /// Redis answered a command or validation on it, beyond the connect's own PING.
    served: bool,
    /// Its last PING was answered `BUSY` (a script holds Redis), reported to the pool.
    pinged_busy: bool,
    /// When the server was last seen to be the primary (at connect, or by `ROLE`).
    role_checked: Instant,
    /// `ROLE` said replica while the pool wants the primary.
    on_replica: bool,
    /// No call was made since the checkout handed the connection out, and every checkout
    /// looks at the socket (a peek or a PING) just before: the first call needs no second look.
    first_call: bool,
    /// Under Sentinel: the primary this connection was opened to.
    placement: Option<Placement>,
    /// Where the connection leads (`server.address` and `server.port` in spans).
    server: Server,
}

/// Where a connection leads.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) server: Server,
    /// Under Sentinel: the primary it was opened to.
    pub(crate) placement: Option<Placement>,
}

/// A connection's server, as OpenTelemetry's `server.address` and `server.port`.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) address: String,
    pub(crate) port: Option<u16>,
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
    /// The server is no longer the primary.
    NotPrimary(String),
    /// An error or a wrong reply.
    Failed(String),
}

impl fmt::Display for ValidationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationFailure::TimedOut(after) => write!(f, "no PING reply within {after:?}"),
            ValidationFailure::Failed(reason) | ValidationFailure::NotPrimary(reason) => {
                f.write_str(reason)
            }
        }
    }
}

impl GuardConnection {
    pub(crate) fn new(
        handle: MultiplexedConnection,
        link: Arc<LinkHealth>,
        probe: Arc<PeerProbe>,
        pool: Arc<dyn Owner>,
        driver: AbortHandle,
        id: u64,
        Peer { server, placement }: Peer,
    ) -> Self {
        let now = Instant::now();
        let config = pool.config();
        let expires_at = config.max_lifetime().map(|lifetime| {
            // Shortened by a random share so connections opened together expire apart.
            let jitter = fastrand::f64() * config.lifetime_jitter();
            now + lifetime.mul_f64(1.0 - jitter)
        });
        let session = Session::new(config.connection.redis_settings().db());
        if let (Some(placement), Some(watch)) = (&placement, pool.sentinel()) {
            watch.register(placement, &probe);
        }
        let response_timeout = config.response_timeout();
        Self {
            handle,
            link,
            probe,
            pool,
            driver,
            id,
            expires_at,
            last_success: now,
            returned_at: now,
            session,
            in_flight: false,
            response_timeout,
            eviction: None,
            validations: 0,
            served: false,
            pinged_busy: false,
            role_checked: now,
            on_replica: false,
            first_call: true,
            placement,
            server,
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

    /// What a checkout must do with it before handing it out (see `judgement.rs`).
    pub(crate) fn verdict(&self, now: Instant) -> Verdict {
        let known = Known {
            link: &self.link,
            placement: self.placement.as_ref(),
            peer: Some(self.probe.peer_state()),
            expires_at: self.expires_at,
            last_success: self.last_success,
            role_checked: self.role_checked,
        };
        known.verdict(&*self.pool, now)
    }

    /// Under Sentinel: whether the primary moved away from this connection's server.
    pub(crate) fn on_demoted_primary(&self) -> bool {
        judgement::on_demoted_primary(self.placement.as_ref(), &*self.pool)
    }

    /// Refuses a call before it is sent to a demoted primary: it has not reached Redis, so it
    /// may go to the new primary whatever it does.
    fn refuse_if_demoted(&mut self) -> RedisResult<()> {
        if !self.on_demoted_primary() {
            return Ok(());
        }
        self.evict(EvictionReason::RoleChange);
        Err(NotSent::PrimaryMoved.error("Sentinel failover"))
    }

    /// Refuses a call before it is sent on a socket the peer closed while the checkout held
    /// it: redis-rs writes before it reads, so a call sent there would be written to a
    /// closed socket and fail, and could not be known unapplied. The checkout's own look
    /// covers its first call.
    fn refuse_if_closed(&mut self) -> RedisResult<()> {
        let first_call = std::mem::take(&mut self.first_call);
        if self.link.is_open() && (first_call || self.probe.peer_state() != PeerState::Closed) {
            return Ok(());
        }
        self.evict(EvictionReason::Broken);
        Err(NotSent::ConnectionFailed.error("the peer closed the connection"))
    }

    /// Whether Redis has answered anything on this connection since it was opened (beyond the
    /// connect's own PING): a connection that has is not fresh, so its failure may be its
    /// socket's, not Redis's.
    pub(crate) fn has_served(&self) -> bool {
        self.served
    }

    /// Whether its last PING was answered `BUSY`: the PING proved the socket, not that Redis
    /// serves commands (already reported to the pool).
    pub(crate) fn pinged_busy(&self) -> bool {
        self.pinged_busy
    }

    /// A PING refused over this socket (see `proves_the_connection`): the connection works.
    /// A `BUSY` is reported, since Redis serves no command while it lasts.
    fn refused_ping(&mut self, code: &str) {
        self.last_success = Instant::now();
        self.served = true;
        self.pinged_busy = self.report_if_busy(code);
    }

    /// Reports a PING refused with `code` to the pool if it is `BUSY`: Redis serves no command
    /// while it lasts. Returns whether it was.
    fn report_if_busy(&self, code: &str) -> bool {
        let busy = is_busy_code(code);
        if busy {
            self.pool.answered_busy(Instant::now());
        }
        busy
    }

    /// Whether the session is at its baseline (no transaction, watch or changed state).
    pub(crate) fn session_is_clean(&self) -> bool {
        !self.session.is_dirty()
    }

    /// A new connection's first round trip: names it after the pool (for `CLIENT LIST`) and
    /// PINGs, both sent at once. Only a reply proves Redis, not just a socket, there.
    ///
    /// The name is best effort (an ACL may forbid `CLIENT SETNAME`). A PING refused by the ACL
    /// (`NOPERM`) still proves the connection: a reply came back. Other errors are kept whole,
    /// so `NOAUTH` or `WRONGPASS` can be told from a dead socket.
    pub(crate) async fn introduce(&mut self, pool: &str) -> RedisResult<()> {
        // Redis refuses spaces and control characters in names.
        let name: String = pool
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        let setname = redis::cmd("CLIENT").arg("SETNAME").arg(name).to_owned();
        let ping = redis::cmd("PING").to_owned();
        let mut naming = self.handle.clone();
        let mut asking_role = self.handle.clone();
        let wants_primary = self.pool.config().expect_primary();
        let sent = Instant::now();
        let (named, pinged, role) = tokio::join!(
            naming.send_packed_command(&setname),
            self.handle.send_packed_command(&ping),
            async {
                match wants_primary {
                    true => Some(asking_role.send_packed_command(&redis::cmd("ROLE")).await),
                    false => None,
                }
            }
        );
        if let Some(error) = server_error(named) {
            tracing::debug!(connection_id = self.id, error = %server_text(&error), "CLIENT SETNAME refused; connection left unnamed");
        }
        self.expect_primary(role).await?;
        match pinged {
            Ok(Value::SimpleString(_) | Value::BulkString(_)) => {}
            Ok(Value::ServerError(e)) if proves_the_connection(e.code()) => {
                tracing::debug!(
                    connection_id = self.id,
                    code = e.code(),
                    "PING refused; the refusal proves the connection"
                );
                self.report_if_busy(e.code());
            }
            Err(e) if e.code().is_some_and(proves_the_connection) => {
                self.report_if_busy(e.code().unwrap_or_default());
            }
            Ok(Value::ServerError(e)) => return Err(e.into()),
            Err(e) => return Err(e),
            Ok(other) => {
                return Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "unexpected PING reply",
                    format!("{other:?}"),
                )));
            }
        }
        self.last_success = Instant::now();
        self.pool.round_trip(self.last_success - sent);
        Ok(())
    }

    /// Checks a `ROLE` reply when the pool wants the primary: a replica is refused (after a
    /// failover its DNS name may still lead to the demoted node); a reply that says nothing
    /// (the ACL forbids `ROLE`) is taken on trust.
    async fn expect_primary(&mut self, role: Option<RedisResult<Value>>) -> RedisResult<()> {
        let Some(Ok(Value::Array(fields))) = role else {
            return Ok(());
        };
        let name = match fields.first() {
            Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
            Some(Value::SimpleString(name)) => name.clone(),
            _ => return Ok(()),
        };
        if name == "master" {
            self.role_checked = Instant::now();
            return Ok(());
        }
        self.on_replica = true;
        if let (Some(placement), Some(watch)) = (&self.placement, self.pool.sentinel()) {
            watch.refuted(&placement.addr, self.pool.name());
        }
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "connected to a replica, not the primary",
            format!("ROLE {name}; set expect_primary(false) to use replicas"),
        )))
    }

    /// PINGs with a payload unique to this attempt, so a stale reply cannot pass for the
    /// answer. When a peer was refused for its role since this connection's role was last
    /// seen, asks `ROLE` too, in the same round trip.
    pub(crate) async fn validate(&mut self, timeout: Duration) -> Result<(), ValidationFailure> {
        if self.pool.config().expect_primary() && self.pool.is_role_suspect(self.role_checked) {
            let mut asking = self.handle.clone();
            let role = redis::cmd("ROLE").to_owned();
            let (pinged, role) = tokio::join!(
                self.ping(timeout),
                tokio::time::timeout(timeout, asking.send_packed_command(&role))
            );
            pinged?;
            let role = role.map_err(|_| ValidationFailure::TimedOut(timeout))?;
            return self
                .expect_primary(Some(role))
                .await
                .map_err(|e| ValidationFailure::NotPrimary(e.to_string()));
        }
        self.ping(timeout).await
    }

    async fn ping(&mut self, timeout: Duration) -> Result<(), ValidationFailure> {
        self.validations += 1;
        let nonce = format!("redis-guard:{}:{}", self.id, self.validations);
        let ping = redis::cmd("PING").arg(&nonce).to_owned();
        let sent = Instant::now();
        match tokio::time::timeout(timeout, self.handle.send_packed_command(&ping)).await {
            Ok(Ok(Value::BulkString(reply))) if reply == nonce.as_bytes() => {
                self.pinged_busy = false;
                self.last_success = Instant::now();
                self.pool.round_trip(self.last_success - sent);
                self.served = true;
                Ok(())
            }
            // PING forbidden by the ACL, or Redis busy with a script: the refusal came back over
            // this socket, in order.
            Ok(Ok(Value::ServerError(e))) if proves_the_connection(e.code()) => {
                self.refused_ping(e.code());
                Ok(())
            }
            Ok(Err(e)) if e.code().is_some_and(proves_the_connection) => {
                self.refused_ping(e.code().unwrap_or_default());
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
            self.pool.evicted(reason, self.id);
            // No longer one of the pool's working sockets, whatever its socket says.
            self.link.close(LinkState::Retired);
        }
    }

    /// Sets how long ordinary commands wait for their reply for the rest of this checkout
    /// (a slow `EVAL`, a big `KEYS`); the pool's `response_timeout` applies again once the
    /// connection is returned. Blocking commands wait their own timeout on top of this.
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
    }

    /// The reply wait for ordinary commands in this checkout.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Called once the connect has succeeded (the set-up hook included): what the hook
    /// established is this connection's baseline, not state to evict it for, and the socket
    /// now counts as one of the pool's working ones. A hook that left a transaction, a watch
    /// or state that cannot be pooled (a subscription, ...) is refused.
    pub(crate) fn established(&mut self) -> RedisResult<()> {
        if !self.session.can_be_baseline() {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the on_connect hook left the connection inside MULTI or WATCH, or with state \
                 that cannot be pooled",
            )));
        }
        self.session.adopt_as_baseline();
        // The connect budget gave the handshake and the hook their time; from here each
        // command has the response timeout.
        self.response_timeout = self.pool.config().response_timeout();
        self.handle.set_response_timeout(self.response_timeout);
        self.pool.link_established(&self.link);
        Ok(())
    }

    /// When Redis last answered on it (or it was opened).
    pub(crate) fn last_success(&self) -> Instant {
        self.last_success
    }

    /// The error line Redis turned this connection away with, for a connect that failed
    /// (see [`LinkHealth::turned_away`]).
    pub(crate) fn turned_away(&self) -> Option<String> {
        self.link.turned_away(&self.probe.take_unread())
    }

    /// Whether `ROLE` said replica while the pool wants the primary.
    pub(crate) fn is_on_replica(&self) -> bool {
        self.on_replica
    }

    /// A handle on the same connection for the pool's own background query, which must not
    /// hold the connection up.
    pub(crate) fn background_handle(&self) -> MultiplexedConnection {
        self.handle.clone()
    }

    /// Called by the pool when the connection comes back: decides whether it may be reused.
    pub(crate) fn on_return(&mut self) -> bool {
        self.returned_at = Instant::now();
        self.first_call = true;
        self.response_timeout = self.pool.config().response_timeout();
        if self.eviction.is_none() {
            let reason = if self.on_demoted_primary() {
                Some(EvictionReason::RoleChange)
            } else if !self.link.is_open() {
                Some(closed_link_eviction(&self.link))
            } else if self.in_flight {
                Some(EvictionReason::Cancelled)
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

    /// Applies what a call's outcome does to this connection ([`Outcome::consequence`], the
    /// rule shared connections apply too).
    fn note_outcome<T>(&mut self, result: &RedisResult<T>, refused_in: impl FnOnce(&T) -> bool) {
        let consequence = Outcome::judge(result, &self.link, refused_in)
            .consequence(|| self.on_demoted_primary());
        if consequence.answered {
            self.last_success = Instant::now();
            match consequence.busy {
                true => self.pool.answered_busy(self.last_success),
                false => self.pool.answered(self.last_success),
            }
        }
        self.served |= consequence.served;
        if let Some(reason) = consequence.evict {
            self.evict(reason);
        }
    }

    /// What a shared connection needs to serve calls without borrowing this one.
    pub(crate) fn parts(&self) -> SharedParts {
        SharedParts {
            handle: self.handle.clone(),
            link: self.link.clone(),
            probe: self.probe.clone(),
            id: self.id,
            expires_at: self.expires_at,
            placement: self.placement.clone(),
            server: self.server.clone(),
        }
    }
}

/// The pieces of a connection a shared connection works with: see [`GuardConnection::parts`].
pub(crate) struct SharedParts {
    pub(crate) handle: MultiplexedConnection,
    pub(crate) link: Arc<LinkHealth>,
    pub(crate) probe: Arc<PeerProbe>,
    pub(crate) id: u64,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) placement: Option<Placement>,
    pub(crate) server: Server,
}

impl Drop for GuardConnection {
    fn drop(&mut self) {
        // bb8's reaper closes idle connections without asking the manager; count those here.
        if self.eviction.is_none()
            && self
                .pool
                .config()
                .idle_timeout()
                .is_some_and(|idle| self.returned_at.elapsed() >= idle)
        {
            self.evict(EvictionReason::IdleTimeout);
        }
        // Closes the socket now, even if a blocking command is still waiting for its reply:
        // the FIN leaves before this returns, so the server drops a cancelled BLPOP before
        // anything the caller does next can reach it. The driver ends with it.
        self.link.close(LinkState::Retired);
        self.probe.shutdown();
        self.driver.abort();
    }
}
