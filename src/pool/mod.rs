//! The public handle: [`RedisGuard`] and the [`PooledConnection`] it hands out.
//!
//! The machinery (bb8, the connect gate, the checkout loop) is in `inner/`; the prober in
//! `prober.rs`. This module only creates them and answers for them.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use tracing::instrument::WithSubscriber;

use crate::breaker::BreakerState;
use crate::config::Config;
use crate::error::{Error, PoolState};
use crate::inner::PoolInner;
use crate::names::NameClaim;
use crate::prober;

mod checkout;

use checkout::Reservation;
pub use checkout::{Checkout, Idempotent};

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
        let name_claim = NameClaim::take(config.name())?;
        let inner = PoolInner::new(config, name_claim);
        tracing::info!(pool = %inner.name(), url = %inner.core.config().redacted_url(), ?startup, "redis pool created");
        if inner.core.config().verifies_no_certificate() {
            tracing::warn!(
                pool = %inner.name(),
                "TLS certificate verification is off (insecure): the traffic is encrypted, but \
                 any server can pose as Redis and receive the password and the data; trust the \
                 server's CA (ca_file) instead"
            );
        }
        if inner.core.sentinel().is_some() {
            let following = crate::sentinel::follow(inner.core.clone());
            let follower = tokio::spawn(following.with_current_subscriber());
            inner.own_task(follower.abort_handle());
        }
        inner.connect_at_startup(startup).await?;
        // Started after the start-up connect, so that is the only connect attempt until then;
        // it stops when it can no longer upgrade its weak reference to the pool.
        let probing = prober::supervise(Arc::downgrade(&inner), inner.core.clone());
        let prober = tokio::spawn(probing.with_current_subscriber());
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
    /// 7. any other is PINGed under `validation_timeout`, and evicted if that fails; a PING
    ///    that the budget left cut short proves nothing either way, so the connection stays
    ///    in the pool and the checkout times out.
    ///
    /// In [`PoolMode::Shared`](crate::PoolMode::Shared) the same steps apply to the shared
    /// connection the checkout's plain commands will go over (3: a connection is opened when
    /// a slot is empty; 5: a suspect one is PINGed by one caller while the others wait for
    /// its answer), and the first command that needs a connection of its own takes an
    /// exclusive one through steps 2 to 7.
    pub async fn get(&self) -> Result<PooledConnection, Error> {
        let span = tracing::debug_span!("redis_guard.checkout", pool = %self.name());
        let (reservation, checked_out_at) = match &self.inner.multiplexed {
            None => {
                let (checked_out, at) = self.inner.checkout().instrument(span).await?;
                (checked_out.into(), at)
            }
            Some(lanes) => {
                let checkout = self.inner.checkout_shared(lanes.first());
                let (connection, at) = checkout.instrument(span).await?;
                (Reservation::Shared(connection), at)
            }
        };
        Ok(PooledConnection {
            checkout: Checkout {
                reservation,
                pool: self.inner.clone(),
                response_timeout: self.config().response_timeout(),
            },
            checked_out_at,
        })
    }

    /// Subscribes to the channels and patterns of `subscription` on a connection of its own,
    /// kept by the pool: PINGed while quiet, and after a restart, a kill, a reset or a frozen
    /// socket connected and subscribed again on its own, the gap reported in the stream (see
    /// [`Subscriber`](crate::Subscriber), also a `Stream`). Its connects pass the pool's one
    /// connect gate, paced with the pool's own however many subscribers reconnect.
    ///
    /// At most [`max_subscriptions`](crate::ConfigBuilder::max_subscriptions) are held at
    /// once; one more fails at once with
    /// [`UnavailableReason::SubscriptionLimit`](crate::UnavailableReason::SubscriptionLimit)
    /// (a 503). While Redis cannot be reached it follows [`Config::startup`]:
    /// [`StartupMode::Lazy`](crate::StartupMode::Lazy) returns a `Subscriber` that subscribes
    /// in the background (subscribed before it returns while Redis answers, so a message
    /// published after that is received); [`FailFast`](crate::StartupMode::FailFast) makes one
    /// attempt within `connect_timeout` (refused at once while the breaker is open) and
    /// [`WaitFor`](crate::StartupMode::WaitFor) tries at the reconnect pace until its limit,
    /// both then failing with [`Error::Unavailable`]. An error reply to `SUBSCRIBE` (an ACL
    /// without the channel) is [`Error::Redis`], in every mode. Closing the pool ends every
    /// subscription's stream, and a subscription is refused as closed.
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
        self.inner.core.breaker_state()
    }

    /// Whether the pool is ready to serve: it has connected to Redis and the breaker is
    /// closed. Kept fresh by the prober; reading it costs no Redis traffic.
    pub fn is_ready(&self) -> bool {
        self.inner.core.is_ready()
    }

    /// The error a dependent request gets right now, if the breaker is open: what
    /// [`RequireRedisLayer`](crate::RequireRedisLayer) answers with.
    pub fn refusal(&self) -> Option<Error> {
        (self.breaker_state() == BreakerState::Open).then(|| {
            self.inner.core.checkout_rejected();
            self.inner.rejected()
        })
    }

    /// Whether `other` is a handle on the same pool.
    pub(crate) fn is_same_pool(&self, other: &RedisGuard) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn core(&self) -> &crate::pool_core::PoolCore {
        &self.inner.core
    }

    /// The pool's name (its `pool` metric label).
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &Config {
        self.inner.core.config()
    }

    /// A consistent snapshot of the pool.
    pub fn state(&self) -> PoolState {
        self.inner.state()
    }
}

/// A checked-out connection; back to the pool on drop.
///
/// Implements [`ConnectionLike`](redis::aio::ConnectionLike), so every [`redis::AsyncCommands`] method works on it, and
/// derefs to the [`Checkout`] that does the work (so `query_async(&mut *conn)`, as written
/// for bb8, works too).
pub struct PooledConnection {
    checkout: Checkout,
    /// For `redis_guard_connection_hold_seconds`.
    checked_out_at: Instant,
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        self.checkout
            .pool
            .core
            .returned(self.checked_out_at.elapsed());
    }
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.checkout, f)
    }
}

impl Deref for PooledConnection {
    type Target = Checkout;
    fn deref(&self) -> &Checkout {
        &self.checkout
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut Checkout {
        &mut self.checkout
    }
}

crate::delegate::delegate_connection_like!(impl<> PooledConnection, checkout);

#[cfg(test)]
mod tests;
