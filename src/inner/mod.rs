//! The pool's machinery: bb8 and the connect gate behind one budgeted checkout loop.
//!
//! A checkout runs under one budget (`checkout_timeout`), retries included:
//!
//! 1. the breaker admits the call, or it is refused at once;
//! 2. a permit is taken in arrival order (bb8 alone lets newcomers barge past sleepers);
//! 3. bb8 hands out an idle connection, or one the connect gate opens for it. A checkout on a
//!    pool with no connection at all fails fast when a connect attempt fails while it waits,
//!    or at once if the next attempt could not start before its deadline: waiting out the
//!    budget would only hide the cause;
//! 4. a connection whose socket is known closed, or that outlived its lifetime, is evicted at
//!    no round trip, and the loop takes another;
//! 5. one suspected of having failed with a peer is validated off the caller's path;
//! 6. one that completed a command within `validation_bypass` is handed out as is;
//! 7. any other is PINGed under `validation_timeout`; if that fails it is evicted and the loop
//!    takes another. A PING cut short by what is left of the budget proves nothing: the
//!    connection stays, and the checkout times out.
//!
//! Outcomes go to [`PoolCore`], which alone decides what the breaker and the metrics make of
//! them. The prober uses this module, never the public handle.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;
use tracing::instrument::WithSubscriber;

use crate::config::{Config, PoolMode, StartupMode};
use crate::connection::{GuardConnection, Verdict};
use crate::error::{Error, PoolState, UnavailableReason};
use crate::manager::{self, Attempt, Bb8Connection, GuardManager, Skip};
use crate::metrics::ValidationResult;
use crate::multiplexed::Lanes;
use crate::names::NameClaim;
use crate::pool_core::PoolCore;
use crate::validate::{Validated, validate, validate_in_background};

mod shared_mode;

/// How often the pool gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// bb8's reaper runs at this rate unless the idle timeout asks for a finer one. It holds only
/// a weak reference, and notices the pool is gone at its next tick: a pool dropped leaves no
/// task behind for longer than this. A tick locks the idle list once: nothing to measure.
const MAX_REAPER_RATE: Duration = Duration::from_millis(500);
/// How often closing looks whether the connections in use came back.
const CLOSE_POLL: Duration = Duration::from_millis(10);

/// What closing the pool does to a checkout under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenClosing {
    /// A new checkout fails with `Closed`.
    Fail,
    /// A caller admitted before the close (a retry, or a shared-mode checkout taking a
    /// connection of its own) still gets one while the close waits for the connections in
    /// use: its request is not cut.
    CarryOn,
}

/// One checkout's budget: when it started, its deadline, the failed connects seen when it
/// began, and what a close does to it.
#[derive(Debug, Clone, Copy)]
struct Budget {
    started: Instant,
    deadline: Instant,
    failures_seen: u64,
    when_closing: WhenClosing,
    /// Connections that have not answered since are suspect to this checkout (a hedge's:
    /// they may be frozen like the connection whose read is late).
    proven_since: Option<Instant>,
}

impl Budget {
    fn new(core: &PoolCore, started: Instant, when_closing: WhenClosing) -> Self {
        Budget {
            started,
            deadline: started + core.config().checkout_timeout(),
            failures_seen: core.failed_connects(),
            when_closing,
            proven_since: None,
        }
    }
}

/// Whether a waited-for step starts over after a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Yes,
    No,
}

/// A connection handed out by a checkout, with the permit that keeps its caller's place.
pub(crate) struct CheckedOut {
    pub(crate) conn: Bb8Connection,
    /// Released after the connection went back to bb8 (fields drop in order), so the next
    /// caller in line finds it there.
    pub(crate) permit: OwnedSemaphorePermit,
}

pub(crate) struct PoolInner {
    /// bb8's store of idle connections, let go when the pool closes: its reaper task ends
    /// once the connections checked out then have come back.
    idle: ArcSwapOption<bb8::Pool<GuardManager>>,
    pub(crate) manager: GuardManager,
    pub(crate) core: Arc<PoolCore>,
    /// In shared mode, the connections every checkout's plain commands go over.
    pub(crate) multiplexed: Option<Lanes>,
    /// One permit per subscription, held by its task for as long as it may hold a socket:
    /// subscriptions are sockets beside `max_size`, and need a bound of their own.
    pub(crate) subscription_slots: Arc<tokio::sync::Semaphore>,
    /// The gauge sampler and the prober; they stop with the pool.
    tasks: Mutex<Vec<AbortHandle>>,
    /// The pool's name, unique among live pools until it closes.
    name_claim: NameClaim,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.core.close();
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl PoolInner {
    /// Builds the pool around bb8, which stores idle connections and asks the manager for new
    /// ones; every connect passes the manager's gate.
    pub(crate) fn new(config: Config, name_claim: NameClaim) -> Arc<PoolInner> {
        let core = Arc::new(PoolCore::new(config));
        let manager = GuardManager::new(core.clone());
        let config = core.config();
        let reaper_rate = config
            .idle_timeout()
            .map_or(MAX_REAPER_RATE, |idle| (idle / 2).min(MAX_REAPER_RATE))
            .max(Duration::from_millis(10));
        let pool = bb8::Pool::builder()
            // Every checkout, background validation and prober round holds a permit, so they
            // use at most max_size slots; the spare one lets a read that failed with its
            // connection be retried on a new one before the dead one is given back.
            .max_size(config.max_size() + 1)
            // The prober keeps min_idle connections, paced by the gate with every connect.
            .min_idle(None)
            // Validation is ours: it skips the PING for recently used connections.
            .test_on_check_out(false)
            .connection_timeout(config.checkout_timeout())
            .idle_timeout(config.idle_timeout())
            // Lifetimes are ours too: jittered per connection, checked at checkout and return.
            .max_lifetime(None)
            // The manager retries through its gate; bb8's loop would add one per slot.
            .retry_connection(false)
            // The most recently used connection first: it is the one most likely inside the
            // validation bypass window, and the rest age out under the idle timeout.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .reaper_rate(reaper_rate)
            .error_sink(Box::new(bb8::NopErrorSink))
            .build_unchecked(manager.clone());
        let subscription_slots = Arc::new(tokio::sync::Semaphore::new(
            config.max_subscriptions() as usize
        ));
        let multiplexed = (config.mode() == PoolMode::Shared)
            .then(|| Lanes::new(config.shared_connections(), config.max_size()));
        Arc::new_cyclic(|weak: &std::sync::Weak<PoolInner>| {
            // The pool's background tasks log where the pool was created.
            let sampling = sample_gauges(weak.clone()).with_current_subscriber();
            let sampler = tokio::spawn(sampling).abort_handle();
            PoolInner {
                idle: ArcSwapOption::from_pointee(pool),
                manager,
                core,
                multiplexed,
                subscription_slots,
                tasks: Mutex::new(vec![sampler]),
                name_claim,
            }
        })
    }

    /// Closes the pool: see [`RedisGuard::close`](crate::RedisGuard::close). Returns how many
    /// connections were still in use when `grace` ran out.
    pub(crate) async fn close(&self, grace: Duration) -> u32 {
        let core = &self.core;
        core.close();
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        // Each shared connection closes when its calls have ended, giving its permit back.
        if let Some(multiplexed) = &self.multiplexed {
            multiplexed.clear();
        }
        let max = core.config().max_size() as usize;
        let deadline = Instant::now() + grace;
        while core.checkout_permits().available_permits() < max && Instant::now() < deadline {
            tokio::time::sleep(CLOSE_POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        // Idle connections are handed out to be dropped: a closing pool keeps none.
        if let Some(pool) = self.idle.swap(None) {
            for _ in 0..pool.state().idle_connections {
                match tokio::time::timeout(CLOSE_POLL, pool.get()).await {
                    Ok(Ok(conn)) => drop(conn),
                    _ => break,
                }
            }
        }
        let in_use = max.saturating_sub(core.checkout_permits().available_permits());
        self.name_claim.release();
        tracing::info!(pool = %self.name(), in_use, "redis pool closed");
        in_use as u32
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `task` running until the pool drops.
    pub(crate) fn own_task(&self, task: AbortHandle) {
        self.lock_tasks().push(task);
    }

    pub(crate) fn name(&self) -> &str {
        self.core.name()
    }

    /// What start-up does before the pool is handed out: nothing for `Lazy`, one attempt for
    /// `FailFast`, attempts until the deadline for `WaitFor` (each bounded by what is left).
    pub(crate) async fn connect_at_startup(&self, mode: StartupMode) -> Result<(), Error> {
        let deadline = match mode {
            StartupMode::Lazy => return Ok(()),
            StartupMode::FailFast => None,
            // A limit too large for the clock means "until it works".
            StartupMode::WaitFor(limit) => Some(Instant::now().checked_add(limit)),
        };
        loop {
            match self.manager.attempt(deadline.flatten(), Skip::Never).await {
                Attempt::Connected(conn) => {
                    self.add(conn);
                    // Proven at start-up: serve at once, whatever the attempts before said.
                    self.core.proven_at_startup();
                    return Ok(());
                }
                Attempt::Failed(_)
                    if deadline.is_some_and(|d| d.is_none_or(|d| Instant::now() < d)) => {}
                _ => {
                    let cause = self.core.last_connect_error().unwrap_or_default();
                    return Err(self.unavailable(UnavailableReason::Startup { cause }));
                }
            }
        }
    }

    /// A checkout, and when it handed the connection out.
    pub(crate) async fn checkout(&self) -> Result<(CheckedOut, Instant), Error> {
        self.checkout_when_closing(WhenClosing::Fail).await
    }

    /// A checkout that a close fails, or lets carry on (see [`WhenClosing`]), and when it
    /// handed the connection out.
    pub(crate) async fn checkout_when_closing(
        &self,
        when_closing: WhenClosing,
    ) -> Result<(CheckedOut, Instant), Error> {
        self.admitted(when_closing, |started| {
            self.checkout_within_budget(Budget::new(&self.core, started, when_closing))
        })
        .await
    }

    /// Runs a checkout step under the breaker's admission, and counts its outcome. Returns
    /// the step's result with the instant it ended, which the caller's hold time starts from
    /// (a clock read costs as much as the rest of a hot shared checkout).
    async fn admitted<T, F: Future<Output = Result<T, Error>>>(
        &self,
        when_closing: WhenClosing,
        step: impl FnOnce(Instant) -> F,
    ) -> Result<(T, Instant), Error> {
        let core = &self.core;
        if when_closing == WhenClosing::Fail && core.is_closing() {
            return Err(self.unavailable(UnavailableReason::Closed));
        }
        let Some(_admission) = core.admit() else {
            core.checkout_rejected();
            return Err(self.rejected());
        };
        let started = Instant::now();
        let mut result = step(started).await;
        if result.is_err() && core.is_closing() {
            // Whatever it met on the way, it failed because the pool closed under it.
            result = Err(self.unavailable(UnavailableReason::Closed));
        }
        let ended = Instant::now();
        match &result {
            Ok(_) => core.checkout_succeeded(ended.saturating_duration_since(started)),
            Err(error) => core.checkout_failed(error),
        }
        result.map(|handed_out| (handed_out, ended))
    }

    async fn checkout_within_budget(&self, budget: Budget) -> Result<CheckedOut, Error> {
        let core = &self.core;
        let _waiting = core.wait();
        let permits = core.checkout_permits().clone();
        let permit = self
            .wait_for(|| permits.clone().acquire_owned(), Restart::No, budget)
            .await?
            .map_err(|_closed| self.unavailable(UnavailableReason::Closed))?;
        let conn = self.validated_connection(budget).await?;
        Ok(CheckedOut { conn, permit })
    }

    /// A connection to replace one that failed under its holder, who keeps its permit (and
    /// the dead connection until the replacement arrives: bb8 has one slot beyond max_size
    /// for this). Within a checkout budget of its own.
    pub(crate) async fn replacement(&self) -> Result<Bb8Connection, Error> {
        self.replacement_proven_since(None).await
    }

    /// A [`replacement`](Self::replacement) that has answered since `since`, if given: one
    /// that has not is proven (or evicted) first, off this caller's path when a permit is
    /// free.
    pub(crate) async fn replacement_proven_since(
        &self,
        since: Option<Instant>,
    ) -> Result<Bb8Connection, Error> {
        let core = &self.core;
        let _waiting = core.wait();
        let mut budget = Budget::new(core, Instant::now(), WhenClosing::CarryOn);
        budget.proven_since = since;
        self.validated_connection(budget).await
    }

    /// Steps 3 to 7 of the checkout: the next connection from bb8 that is alive.
    async fn validated_connection(&self, budget: Budget) -> Result<Bb8Connection, Error> {
        let core = &self.core;
        let pool = self
            .bb8()
            .ok_or_else(|| self.unavailable(UnavailableReason::Closed))?;
        loop {
            let mut conn = self
                .wait_for(|| pool.get_owned(), Restart::Yes, budget)
                .await?
                // bb8 only ever times out: its connects report to the gate, not to us.
                .map_err(|_| self.timed_out(budget.started))?;
            let mut verdict = conn.verdict(Instant::now());
            if matches!(verdict, Verdict::Recent | Verdict::Validate)
                && budget
                    .proven_since
                    .is_some_and(|since| conn.last_success() < since)
            {
                verdict = Verdict::Suspect;
            }
            match verdict {
                Verdict::Evict(reason) => conn.evict(reason),
                Verdict::Recent => {
                    core.validated(ValidationResult::Skipped);
                    return Ok(conn);
                }
                // A suspect one is validated off the caller's path, holding a permit of its own
                // so the pool stays within max_size; when none is free (a saturated pool), the
                // caller validates it.
                verdict @ (Verdict::Suspect | Verdict::Validate) => {
                    let background = match verdict {
                        Verdict::Suspect => {
                            core.checkout_permits().clone().try_acquire_owned().ok()
                        }
                        _ => None,
                    };
                    if let Some(permit) = background {
                        tokio::spawn(validate_in_background(conn, permit, core.clone()));
                    } else {
                        match validate(&mut conn, core, Some(budget.deadline)).await {
                            Validated::Alive => return Ok(conn),
                            Validated::Unknown => return Err(self.timed_out(budget.started)),
                            Validated::Dead => {}
                        }
                    }
                }
            }
            // Dropping an evicted connection returns it to bb8, which closes it and frees its
            // slot for a replacement.
        }
    }

    /// Waits for `step` (a permit, a connection) until `deadline`, or fails as soon as waiting
    /// is pointless: no connection exists, and a connect attempt failed since the checkout
    /// began (`failures_seen` is the count then) or the next one cannot start in time. A
    /// failure that happened before the caller arrived never fails it: it waits for the next
    /// attempt. While connections exist, a failed attempt restarts a `Restart::Yes` step
    /// (`make` builds it anew), so bb8 asks for another connect, paced by the gate, instead
    /// of leaving the caller to wait for one to be given back; a permit is never restarted, as
    /// that would lose the caller's place in line.
    async fn wait_for<T, F: Future<Output = T>>(
        &self,
        make: impl Fn() -> F,
        restart: Restart,
        budget: Budget,
    ) -> Result<T, Error> {
        let Budget {
            started,
            deadline,
            failures_seen,
            when_closing,
            ..
        } = budget;
        let core = &self.core;
        let step = make();
        tokio::pin!(step);
        // The hot path (a permit free, a connection idle) is done in one poll, without the
        // deadline's timer or the notifications below: each costs a lock or a reference count
        // to set up.
        if let Poll::Ready(done) =
            std::future::poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await
        {
            return Ok(done);
        }
        let expired = tokio::time::sleep_until(deadline.into());
        tokio::pin!(expired);
        // When to ask bb8 again after a failed connect: at the gate's next turn, by which time
        // bb8 has also counted the failed attempt (asking at once, it may believe the attempt
        // still pending and start none).
        let mut ask_again_at: Option<Instant> = None;
        loop {
            // Registered before the checks below, so a failure between them is not missed.
            let failure = core.connect_failure();
            tokio::pin!(failure);
            failure.as_mut().enable();
            // One decisive failure, or two cut connects one after the other with no success
            // between them, while this caller waited.
            let failed_since = core.connects_failed_since(failures_seen);
            let too_late =
                core.connects_failing() && core.next_connect_at().is_some_and(|at| at >= deadline);
            if (failed_since || too_late) && core.working_links() == 0 {
                return Err(self.cannot_connect());
            }
            let ask_again = tokio::time::sleep_until(ask_again_at.unwrap_or(deadline).into());
            tokio::select! {
                biased;
                done = &mut step => return Ok(done),
                () = &mut expired => return Err(self.timed_out(started)),
                // Woken once per failed attempt: look again, and ask again at the next turn.
                () = &mut failure => {
                    if restart == Restart::Yes {
                        ask_again_at = Some(core.next_connect_at().unwrap_or_else(Instant::now));
                    }
                }
                () = ask_again, if ask_again_at.is_some() => {
                    ask_again_at = None;
                    step.set(make());
                }
                () = core.closed(), if when_closing == WhenClosing::Fail => {
                    return Err(self.unavailable(UnavailableReason::Closed));
                }
            }
        }
    }

    fn timed_out(&self, started: Instant) -> Error {
        Error::Timeout {
            pool: self.name().to_owned(),
            waited: started.elapsed(),
            state: self.state(),
            last_connect_error: self.core.last_connect_error(),
        }
    }

    fn cannot_connect(&self) -> Error {
        let cause = self.core.last_connect_error().unwrap_or_default();
        self.unavailable(UnavailableReason::CannotConnect { cause })
    }

    pub(crate) fn rejected(&self) -> Error {
        let core = &self.core;
        let last_connect_error = core.last_connect_error();
        self.unavailable(match core.breaker_state() {
            crate::BreakerState::HalfOpen => {
                UnavailableReason::BreakerHalfOpen { last_connect_error }
            }
            _ => UnavailableReason::BreakerOpen { last_connect_error },
        })
    }

    pub(crate) fn unavailable(&self, reason: UnavailableReason) -> Error {
        Error::Unavailable {
            pool: self.name().to_owned(),
            reason,
            retry_after: self.retry_after(),
        }
    }

    /// When a refused caller should try again: the next connect attempt, at least 1 s.
    pub(crate) fn retry_after(&self) -> Duration {
        manager::until_next_attempt(&self.core).max(Duration::from_secs(1))
    }

    /// bb8's pool, until the pool closed.
    pub(crate) fn bb8(&self) -> Option<Arc<bb8::Pool<GuardManager>>> {
        self.idle.load_full()
    }

    /// Connections open, and of those idle, as bb8 counts them (none once closed).
    pub(crate) fn counts(&self) -> (u32, u32) {
        self.idle.load().as_ref().map_or((0, 0), |pool| {
            let state = pool.state();
            (state.connections, state.idle_connections)
        })
    }

    /// Puts a new connection in the pool, unless it closed (then the connection drops).
    pub(crate) fn add(&self, conn: Box<GuardConnection>) {
        if let Some(pool) = self.idle.load().as_ref() {
            let _ = pool.add(conn);
        }
    }

    pub(crate) fn state(&self) -> PoolState {
        let (connections, idle) = self.counts();
        let shared_connections = self.multiplexed.as_ref().map_or(0, Lanes::live);
        let in_use = connections.saturating_sub(idle);
        PoolState {
            connections,
            idle,
            in_use: in_use.saturating_sub(shared_connections),
            shared: shared_connections.min(in_use),
            max_size: self.core.config().max_size(),
            waiting: self.core.waiting(),
            subscriptions: self.subscriptions(),
            max_subscriptions: self.core.config().max_subscriptions(),
        }
    }

    /// Subscriptions held now.
    pub(crate) fn subscriptions(&self) -> u32 {
        let max = self.core.config().max_subscriptions() as usize;
        let free = self.subscription_slots.available_permits();
        u32::try_from(max.saturating_sub(free)).unwrap_or(u32::MAX)
    }
}

/// Samples the pool gauges from one snapshot; ends when the pool drops.
async fn sample_gauges(pool: std::sync::Weak<PoolInner>) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.core.sample_pool_state(&pool.state());
        pool.core.report_refusals();
    }
}
