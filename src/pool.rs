//! [`RedisGuard`]: the pool handle, and checkout with validation.
//!
//! A checkout runs under one budget (`checkout_timeout`), retries included:
//!
//! 1. take an idle connection from bb8 (or wait for one);
//! 2. a connection whose socket is known closed, or that outlived its lifetime, is evicted at
//!    no round trip, and the loop takes another;
//! 3. one that completed a command within `validation_bypass` is handed out as is;
//! 4. any other is PINGed under `validation_timeout`; if that fails it is evicted and the loop
//!    takes another.
//!
//! The caller sees a failure only when no healthy connection could be had within the budget,
//! and then the error names the pool's state and the last connect error.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::breaker::BreakerState;
use crate::clock::Backoff;
use crate::config::{Config, StartupMode};
use crate::connection::{GuardConnection, ValidationFailure, Verdict};
use crate::error::{Error, PoolState};
use crate::manager::GuardManager;
use crate::metrics::{CheckoutResult, EvictionReason, ValidationResult};
use crate::probe;
use crate::shared::Shared;

/// How often the pool gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// bb8's reaper runs at this rate unless the idle timeout asks for a finer one.
const MAX_REAPER_RATE: Duration = Duration::from_secs(30);

/// Why a checkout is made: requests are admitted by the breaker and counted in the checkout
/// metrics; the prober's are neither, and report their outcome themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Request,
    Probe,
}

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
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: bb8::Pool<GuardManager>,
    /// The pool's manager, for connects that must not wait (start-up, the prober).
    manager: GuardManager,
    shared: Arc<Shared>,
    /// The gauge sampler and the prober; they stop with the guard.
    tasks: std::sync::Mutex<Vec<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.mark_closing();
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
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
    /// [`Config::startup`]: [`StartupMode::Lazy`] returns at once and connects in the
    /// background; the other modes return [`Error::Unavailable`] if no connection succeeds.
    ///
    /// Must run inside a Tokio runtime. Install your metrics recorder before this call.
    pub async fn connect(config: Config) -> Result<RedisGuard, Error> {
        let startup = config.startup;
        let shared = Arc::new(Shared::new(config));
        let manager = GuardManager::new(shared.clone());
        let config = &shared.config;
        let reaper_rate = config
            .idle_timeout
            .map_or(MAX_REAPER_RATE, |idle| (idle / 2).min(MAX_REAPER_RATE))
            .max(Duration::from_millis(10));
        let pool = bb8::Pool::builder()
            .max_size(config.max_size)
            .min_idle((config.min_idle > 0).then_some(config.min_idle))
            // Validation is ours: it skips the PING for recently used connections.
            .test_on_check_out(false)
            .connection_timeout(config.checkout_timeout)
            .idle_timeout(config.idle_timeout)
            // Lifetimes are ours too: jittered per connection, checked at checkout and return.
            .max_lifetime(None)
            // One attempt per replenish: bb8's retry loop would run one per missing connection.
            .retry_connection(false)
            // The most recently used connection first: it is the one most likely inside the
            // validation bypass window, and the rest age out under the idle timeout.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .reaper_rate(reaper_rate)
            .error_sink(Box::new(bb8::NopErrorSink))
            .build_unchecked(manager.clone());

        let sampler = tokio::spawn(sample_gauges(shared.clone(), pool.clone())).abort_handle();
        let inner = Arc::new(Inner {
            pool,
            manager,
            shared: shared.clone(),
            tasks: std::sync::Mutex::new(vec![sampler]),
        });
        let guard = RedisGuard { inner };
        tracing::info!(pool = %guard.name(), url = %guard.config().redacted_url(), ?startup, "redis pool created");
        match startup {
            StartupMode::Lazy => {}
            StartupMode::FailFast => guard.connect_once_or_fail(Duration::ZERO).await?,
            StartupMode::WaitFor(limit) => guard.connect_once_or_fail(limit).await?,
        }
        // Started after the start-up connect, so that is the only connect attempt until then;
        // it stops when it can no longer upgrade its weak reference to the guard.
        let prober = tokio::spawn(probe::run(Arc::downgrade(&guard.inner), shared));
        guard
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(prober.abort_handle());
        Ok(guard)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<RedisGuard> {
        weak.upgrade().map(|inner| RedisGuard { inner })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn pool(&self) -> &bb8::Pool<GuardManager> {
        &self.inner.pool
    }

    pub(crate) fn manager(&self) -> &GuardManager {
        &self.inner.manager
    }

    /// Connects until one connection is in the pool, retrying with jittered exponential backoff
    /// for at most `limit`.
    async fn connect_once_or_fail(&self, limit: Duration) -> Result<(), Error> {
        let config = self.config();
        let deadline = Instant::now() + limit;
        let mut backoff = Backoff::new(config.probe_backoff_min, config.probe_backoff_max);
        loop {
            match self.inner.manager.connect_now().await {
                Ok(conn) => {
                    // A full pool (the prober won the race) simply drops this one.
                    let _ = self.inner.pool.add(conn);
                    let shared = &self.inner.shared;
                    shared.on_transition(shared.breaker.close());
                    return Ok(());
                }
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::Unavailable {
                            pool: self.name().to_owned(),
                            reason: format!("no connection at start-up: {e}"),
                            retry_after: config.probe_backoff_max,
                        });
                    }
                    tokio::time::sleep(backoff.pause().min(deadline - now)).await;
                }
            }
        }
    }

    /// Checks out a validated connection within the checkout budget.
    ///
    /// Dead, stale or unanswering connections met on the way are evicted and replaced without
    /// the caller seeing them. Fails with [`Error::Timeout`] when the budget runs out.
    ///
    /// While the circuit breaker is open it fails at once with [`Error::Unavailable`], and so it
    /// does when the pool has no connection left and a connect attempt just failed: waiting
    /// out the budget would only hide the cause.
    pub async fn get(&self) -> Result<PooledConnection, Error> {
        let span = tracing::debug_span!("redis_guard.checkout", pool = %self.name());
        self.checkout(Purpose::Request).instrument(span).await
    }

    pub(crate) async fn checkout(&self, purpose: Purpose) -> Result<PooledConnection, Error> {
        let shared = &self.inner.shared;
        let _admission = match purpose {
            Purpose::Probe => None,
            Purpose::Request => match shared.breaker.admit() {
                Some(admission) => Some(admission),
                None => return Err(self.rejected()),
            },
        };
        let started = Instant::now();
        let result = self.checkout_within_budget(started).await;
        if purpose == Purpose::Request {
            let elapsed = started.elapsed().as_secs_f64();
            match &result {
                Ok(_) => {
                    shared.metrics.checkout(CheckoutResult::Ok, Some(elapsed));
                    shared.record_success();
                }
                Err(error) => {
                    let (outcome, saturated) = match error {
                        Error::Timeout { state, .. } => {
                            (CheckoutResult::Timeout, state.in_use >= state.max_size)
                        }
                        _ => (CheckoutResult::Error, false),
                    };
                    shared.metrics.checkout(outcome, None);
                    // Every connection busy is load, not an outage: opening the breaker (and
                    // failing readiness) then would shed a healthy pod under load.
                    if !saturated {
                        shared.record_failure();
                    }
                    tracing::warn!(%error, "redis checkout failed");
                }
            }
        }
        result
    }

    async fn checkout_within_budget(&self, started: Instant) -> Result<PooledConnection, Error> {
        let shared = &self.inner.shared;
        let config = &shared.config;
        let deadline = started + config.checkout_timeout;
        let _waiting = shared.wait();
        let permit = tokio::time::timeout(
            config.checkout_timeout,
            shared.checkout_permits.clone().acquire_owned(),
        )
        .await;
        let Ok(Ok(permit)) = permit else {
            return Err(self.timed_out(started));
        };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let connect_failed = shared.connect_failed.notified();
            let mut conn = tokio::select! {
                biased;
                got = tokio::time::timeout(remaining, self.inner.pool.get_owned()) => match got {
                    Ok(Ok(conn)) => conn,
                    // bb8 reports connect failures to its error sink and only ever times out.
                    Ok(Err(_)) | Err(_) => return Err(self.timed_out(started)),
                },
                () = connect_failed => {
                    // Nothing to wait for: no connection exists and the one being opened failed.
                    if self.inner.pool.state().connections == 0 {
                        return Err(self.unavailable(format!(
                            "cannot connect: {}",
                            shared.last_connect_error().unwrap_or_default()
                        )));
                    }
                    continue;
                }
            };
            match conn.verdict(Instant::now()) {
                Verdict::Evict(reason) => conn.evict(reason),
                Verdict::Fresh => {
                    shared.metrics.validation(ValidationResult::Skipped);
                    return Ok(PooledConnection {
                        conn,
                        _permit: permit,
                    });
                }
                // Another connection of this age froze: validate this one off the caller's
                // path and look for a fresh one rather than wait out another timeout.
                Verdict::Validate if shared.is_suspect(conn.last_success()) => {
                    tokio::spawn(validate_in_background(conn, self.inner.shared.clone()));
                    continue;
                }
                Verdict::Validate => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match conn
                        .validate(config.validation_timeout.min(remaining))
                        .await
                    {
                        Ok(()) => {
                            shared.metrics.validation(ValidationResult::Passed);
                            return Ok(PooledConnection {
                                conn,
                                _permit: permit,
                            });
                        }
                        Err(failure) => {
                            shared.metrics.validation(ValidationResult::Failed);
                            tracing::debug!(connection_id = conn.connection_id(), %failure, "validation failed");
                            if let ValidationFailure::TimedOut(_) = failure {
                                shared.suspect_connections_idle_since(Instant::now());
                            }
                            conn.evict(EvictionReason::ValidationFailed);
                        }
                    }
                }
            }
            // Dropping the evicted connection returns it to bb8, which closes it, frees its
            // slot and starts a replacement.
        }
    }

    fn timed_out(&self, started: Instant) -> Error {
        Error::Timeout {
            pool: self.name().to_owned(),
            waited: started.elapsed(),
            state: self.state(),
            last_connect_error: self.inner.shared.last_connect_error(),
        }
    }

    /// Refused by the open breaker: counted, not logged (there may be thousands a second).
    fn rejected(&self) -> Error {
        let shared = &self.inner.shared;
        shared.metrics.checkout(CheckoutResult::Rejected, None);
        let cause = shared
            .last_connect_error()
            .map_or_else(String::new, |e| format!("; last connect error: {e}"));
        let state = match shared.breaker.state() {
            BreakerState::HalfOpen => "half-open, trial calls in flight",
            _ => "open",
        };
        self.unavailable(format!("circuit breaker {state}{cause}"))
    }

    fn unavailable(&self, reason: String) -> Error {
        Error::Unavailable {
            pool: self.name().to_owned(),
            reason,
            retry_after: self.retry_after(),
        }
    }

    /// When a refused caller should try again: the prober's next attempt, at least 1 s.
    pub fn retry_after(&self) -> Duration {
        self.inner
            .shared
            .until_next_probe()
            .max(Duration::from_secs(1))
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.shared.breaker.state()
    }

    /// Whether the pool is ready to serve: Redis answers and the breaker is closed. Kept
    /// fresh by the prober; reading it costs no Redis traffic.
    pub fn is_ready(&self) -> bool {
        self.breaker_state() == BreakerState::Closed
    }

    /// The error a dependent request gets right now, if the breaker is open: what
    /// [`RequireRedis`](crate::RequireRedis) answers with.
    pub fn refusal(&self) -> Option<Error> {
        (self.breaker_state() == BreakerState::Open).then(|| self.rejected())
    }

    /// The pool's name (its `pool` metric label).
    pub fn name(&self) -> &str {
        self.inner.shared.config.name()
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// A consistent snapshot of the pool.
    pub fn state(&self) -> PoolState {
        pool_state(&self.inner.pool, &self.inner.shared)
    }
}

/// Validates a suspect connection while the caller moves on: a live one goes back to the
/// pool, a frozen one is evicted. It holds its pool slot meanwhile, for at most the validation
/// timeout.
async fn validate_in_background(
    mut conn: bb8::PooledConnection<'static, GuardManager>,
    shared: Arc<Shared>,
) {
    match conn.validate(shared.config.validation_timeout).await {
        Ok(()) => shared.metrics.validation(ValidationResult::Passed),
        Err(failure) => {
            shared.metrics.validation(ValidationResult::Failed);
            tracing::debug!(connection_id = conn.connection_id(), %failure, "suspect connection failed validation");
            conn.evict(EvictionReason::ValidationFailed);
        }
    }
}

fn pool_state(pool: &bb8::Pool<GuardManager>, shared: &Shared) -> PoolState {
    let state = pool.state();
    PoolState {
        connections: state.connections,
        idle: state.idle_connections,
        in_use: state.connections.saturating_sub(state.idle_connections),
        max_size: shared.config.max_size,
        waiting: shared.waiting(),
    }
}

/// Samples the pool gauges from one snapshot; aborted when the guard is dropped.
async fn sample_gauges(shared: Arc<Shared>, pool: bb8::Pool<GuardManager>) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = pool_state(&pool, &shared);
        shared
            .metrics
            .set_pool_state(s.idle, s.in_use, s.max_size, s.waiting);
    }
}

/// A checked-out connection; back to the pool on drop.
///
/// Implements [`ConnectionLike`](redis::aio::ConnectionLike), so every [`redis::AsyncCommands`] method works on it, and
/// derefs to [`GuardConnection`].
pub struct PooledConnection {
    conn: bb8::PooledConnection<'static, GuardManager>,
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
