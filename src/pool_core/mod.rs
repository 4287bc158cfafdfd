//! The pool's core: the state its handle, its connector, its connections and its prober all
//! report to, and the one place where outcomes are classified, counted, logged and turned
//! into breaker transitions.
//!
//! # What the breaker counts
//!
//! The breaker judges Redis, not one socket and not load. Every outcome reaches it through a
//! method here, and this table is the whole rule:
//!
//! | outcome | method | counts toward opening | what else happens |
//! |---|---|---|---|
//! | a new connection fails (TCP, handshake, AUTH, its first PING) | [`PoolCore::connect_failed`] | yes, once per attempt | last connect error kept; waiting checkouts on an empty pool fail fast |
//! | a new connection succeeds | [`PoolCore::connected`] | success | open breaker moves to half-open; the pool becomes ready |
//! | a new connection lands on a replica while the pool wants the primary | [`PoolCore::connect_failed`] | no (Redis answered) | not used; a waiting checkout fails with the cause |
//! | I/O error or response timeout on an existing connection, a failed validation, a socket found closed | [`PoolCore::evicted`] | no | the connections idle since are suspect; one verifying connect, whose outcome counts |
//! | a call with no reply for `validation_timeout`, nothing else answering | [`PoolCore::reply_overdue`] | no | one verifying connect, at once |
//! | a connect timed out and a call in use timed out, nothing answering since either began | [`PoolCore::call_timed_out`], [`PoolCore::connect_failed`] | opens it at once | Redis is unresponsive (frozen, hung host): waiting for five connect timeouts would cost every request its budget for seconds |
//! | a reply (also an error reply: `WRONGTYPE`, `OOM`, `NOSCRIPT`, ...) | [`PoolCore::answered`] | success | proves Redis alive to the prober |
//! | a `BUSY` reply (a script holds Redis), to a command or a PING | [`PoolCore::answered_busy`] | success | not ready until Redis answers anything else; the command answers `503` |
//! | a checkout that waited because every connection was busy (a request or the prober) | [`PoolCore::checkout_failed`] | no | counted as a timeout |
//! | a reply slower than `validation_timeout` but within `response_timeout` | (a reply) | success | |
//!
//! Fields are private: callers report what happened and never touch the breaker or the
//! metrics themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::command::ReadOnlyCommands;
use crate::config::Config;
use crate::error::{Error, PoolState, UnavailableReason};
use crate::metrics::{
    CheckoutResult, ConnectErrorKind, EvictionReason, PoolMetrics, ValidationResult,
};
use crate::refusals::{Refusal, Refusals};
use crate::reply_times::ReplyTimes;
use crate::sanitize::server_text;
use crate::sentinel::SentinelWatch;
use crate::transport::LinkHealth;
use connects::Connects;
use evidence::Evidence;
use series::Series;
use write_hold::WriteHold;

mod connects;
mod evidence;
mod hedging;
mod reports;
mod series;
mod write_hold;

/// The pool's core (see the module doc); one per pool, behind an `Arc`, named `core` wherever
/// it is held.
#[derive(Debug)]
pub(crate) struct PoolCore {
    config: Config,
    series: Series,
    breaker: Breaker,
    /// Set by the first successful connect: before it the pool is not ready, yet requests are
    /// not refused (they wait for that connect).
    connected_once: AtomicBool,
    /// Redis's last answer was `BUSY` (a script running): not ready until another answer.
    busy: AtomicBool,
    /// Wakes checkouts waiting on an empty pool when a connect fails: none is coming.
    connect_failed: Notify,
    /// Wakes the prober: an existing connection failed, verify Redis with a fresh connect.
    verify_requested: Notify,
    connects: Connects,
    evidence: Evidence,
    /// Writes held during a failover (see [`PoolCore::hold_writes`]) and the primary's moves.
    write_hold: WriteHold,
    next_connection_id: AtomicU64,
    /// Callers inside a checkout, waiting for a connection or validating one.
    waiting: AtomicUsize,
    /// Sockets open and not given up: connections that may still work, in the pool or checked
    /// out. A checkout fails fast on a connect failure only when there are none.
    working_links: AtomicUsize,
    /// One permit per connection, taken before bb8 is asked: tokio's semaphore queues callers
    /// first come, first served, where bb8's wake-ups let newcomers barge past sleepers (at 128
    /// callers on 16 connections some waited out the whole budget).
    checkout_permits: Arc<Semaphore>,
    /// Set when the pool is dropped: connections closed by the shutdown are not evictions,
    /// and connect attempts stop.
    closing: AtomicBool,
    closed: Notify,
    /// Requests refused since the last summary in the log.
    refusals: Refusals,
    /// How long reads take, for hedging them (see `hedge.rs`).
    reply_times: ReplyTimes,
    /// Which commands only read, as Redis describes them: for retries.
    read_only: Arc<ReadOnlyCommands>,
    /// Where the primary is, for a pool under Sentinel.
    sentinel: Option<SentinelWatch>,
}

impl PoolCore {
    pub(crate) fn new(config: Config) -> Self {
        let series = Series::register(config.name());
        series.get().breaker(BreakerState::Closed, false, false);
        Self {
            series,
            breaker: Breaker::new(config.breaker()),
            connected_once: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            connect_failed: Notify::new(),
            verify_requested: Notify::new(),
            connects: Connects::default(),
            evidence: Evidence::default(),
            write_hold: WriteHold::default(),
            next_connection_id: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            working_links: AtomicUsize::new(0),
            checkout_permits: Arc::new(Semaphore::new(config.max_size() as usize)),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            refusals: Refusals::default(),
            reply_times: ReplyTimes::default(),
            read_only: Arc::default(),
            sentinel: config.sentinel.clone().map(SentinelWatch::new),
            config,
        }
    }

    #[inline]
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    #[inline]
    fn metrics(&self) -> &PoolMetrics {
        self.series.get()
    }

    /// Registers the series with a recorder installed after the pool was created (checked with
    /// every gauge sample), and sets the gauges that only change on transitions.
    fn register_with_late_recorder(&self) {
        if let Some(metrics) = self.series.register_late(self.name()) {
            metrics.breaker(self.breaker.state(), false, self.is_ready());
        }
    }

    #[inline]
    pub(crate) fn name(&self) -> &str {
        self.config.name()
    }

    /// What the pool knows of the primary, under Sentinel.
    #[inline]
    pub(crate) fn sentinel(&self) -> Option<&SentinelWatch> {
        self.sentinel.as_ref()
    }

    /// What the pool learned about Redis's commands.
    pub(crate) fn read_only(&self) -> &Arc<ReadOnlyCommands> {
        &self.read_only
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    // --- Outcomes -------------------------------------------------------------------------

    /// A new connection answered its first PING. One that `joins_the_pool` may make good a
    /// connection evicted from it (a reconnect); a subscription's does not.
    pub(crate) fn connected(&self, connection_id: u64, joins_the_pool: bool) {
        let (replaced, recovered) = self.connects.succeeded(joins_the_pool);
        self.metrics().connection_created(replaced);
        self.evidence.answered_now();
        let first = !self.connected_once.swap(true, Ordering::AcqRel);
        if recovered {
            tracing::info!(pool = %self.name(), connection_id, "redis connect succeeded again");
        } else {
            tracing::debug!(pool = %self.name(), connection_id, replaced, "redis connection established");
        }
        let now = Instant::now();
        let transition = match self.breaker.state() {
            BreakerState::Open => self.breaker.probe_succeeded(),
            _ => self.breaker.record_success(now),
        };
        if first && transition.is_none() {
            // Readiness changed without a breaker transition.
            self.metrics()
                .breaker(self.breaker.state(), false, self.is_ready());
        }
        self.on_transition(transition);
    }

    /// Start-up connected: Redis is there, close the breaker that failed attempts may have
    /// opened.
    pub(crate) fn proven_at_startup(&self) {
        self.on_transition(self.breaker.close());
    }

    /// A connect attempt failed. `message` must already be free of secrets: it reaches logs,
    /// errors and `/readyz?verbose`. `decisive`: the failure says Redis cannot be had (see
    /// `manager/failure.rs`), so a waiting checkout need not wait for another attempt. `counts`: the
    /// failure says Redis is unreachable (a replica answering instead of the primary does
    /// not). `started`: when the attempt began; attempts that ran alongside one whose
    /// outcome is already known count once between them.
    pub(crate) fn connect_failed(
        &self,
        kind: ConnectErrorKind,
        message: String,
        retry_in: Duration,
        decisive: bool,
        counts: bool,
        started: Instant,
    ) {
        // The message carries the server's words (a refusal line, an error reply): it goes to
        // the log, into errors and into health details.
        let message = server_text(message);
        self.metrics().connect_error(kind);
        let now = Instant::now();
        let failed = self.connects.failed(&message, now, retry_in, started);
        // One line per change of cause, not one per attempt: an outage lasting hours must not
        // flood the log at five lines a second.
        if failed.new_cause {
            tracing::warn!(pool = %self.name(), kind = kind.as_label(), error = %message, "redis connect failed");
        } else {
            tracing::debug!(pool = %self.name(), kind = kind.as_label(), error = %message, "redis connect failed again");
        }
        // Redis answered on an existing connection since the previous attempt: it is up and
        // refusing new connections (maxclients, a connection limit), which is no outage.
        let answered_since = self
            .evidence
            .last_answer()
            .is_some_and(|answer| failed.previous_end.is_none_or(|end| answer > end));
        if counts && !answered_since && !failed.overlapped {
            self.on_transition(self.breaker.record_failure(now));
        }
        if kind == ConnectErrorKind::Timeout && self.evidence.connect_timed_out(started) {
            self.trip_as_unresponsive();
        }
        self.connects.count_failure(decisive, &failed);
        self.connect_failed.notify_waiters();
    }

    /// A call on an existing connection sent at `sent` got no reply within its response
    /// timeout.
    pub(crate) fn call_timed_out(&self, sent: Instant) {
        if self.evidence.call_timed_out(sent) {
            self.trip_as_unresponsive();
        }
    }

    /// A call sent at `sent` has had no reply for `validation_timeout`: if nothing else
    /// answered since either, a fresh connect verifies Redis now rather than after the
    /// response timeout, so a frozen Redis is found within about one connect timeout.
    pub(crate) fn reply_overdue(&self, sent: Instant) {
        if !self.evidence.answered_since(sent) {
            self.verify_requested.notify_one();
        }
    }

    /// Opens the breaker at once: Redis is proven unresponsive (see `evidence.rs`). A frozen
    /// Redis (SIGSTOP, a hung host, a black-holing firewall) otherwise costs each request its
    /// whole budget until five connects have timed out, one by one.
    fn trip_as_unresponsive(&self) {
        if let Some(transition) = self.breaker.trip() {
            tracing::warn!(pool = %self.name(), "redis is not answering: a connect and the calls in use timed out");
            self.on_transition(Some(transition));
        }
    }

    /// A subscription was lost and made again.
    pub(crate) fn resubscribed(&self) {
        self.metrics().resubscribed();
    }

    /// A checked-out connection went back to the pool after `held`.
    pub(crate) fn returned(&self, held: Duration) {
        self.metrics().held(held.as_secs_f64());
    }

    /// Redis answered a command on an existing connection (an error reply counts: it travelled
    /// a working socket).
    #[inline]
    pub(crate) fn answered(&self, at: Instant) {
        self.evidence.answered(at);
        self.on_transition(self.breaker.record_success(at));
        // Read first: the common case writes nothing every core would have to read back.
        if self.busy.load(Ordering::Relaxed) && self.busy.swap(false, Ordering::AcqRel) {
            tracing::info!(pool = %self.name(), "redis serves commands again after a busy script");
            self.readiness_changed();
        }
    }

    /// Redis answered `BUSY` at `at`: it is alive, and refuses every command until a script
    /// ends. Not a failure (the breaker would open and close with each script), but the pool
    /// is not ready while it lasts, and the commands answer `503`.
    pub(crate) fn answered_busy(&self, at: Instant) {
        self.evidence.answered(at);
        self.on_transition(self.breaker.record_success(at));
        if !self.busy.swap(true, Ordering::AcqRel) {
            tracing::warn!(pool = %self.name(), "redis is busy running a script: every command is refused (BUSY) until it ends");
            self.readiness_changed();
        }
    }

    /// Readiness changed without a breaker transition: the gauges follow.
    fn readiness_changed(&self) {
        self.metrics()
            .breaker(self.breaker.state(), false, self.is_ready());
    }

    /// Whether Redis last answered `BUSY`: a script holds it.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// The health record of a new socket, for a connection being opened. Once established
    /// it counts as working until it closes.
    pub(crate) fn link_opened(self: &Arc<Self>) -> LinkHealth {
        let core = Arc::downgrade(self);
        LinkHealth::new(Box::new(move |state| {
            if let Some(core) = core.upgrade() {
                core.link_closed(state);
            }
        }))
    }

    /// A socket closed. One that failed on its own (EOF, reset), even while checked out, says
    /// Redis may be gone: its idle peers are suspect and one fresh connect verifies.
    fn link_closed(&self, state: crate::transport::LinkState) {
        self.working_links.fetch_sub(1, Ordering::AcqRel);
        if state.is_failure() && !self.is_closing() {
            self.evidence.suspect_now();
            self.verify_requested.notify_one();
        }
    }

    /// A connect succeeded on this socket: it works until it closes.
    pub(crate) fn link_established(&self, link: &LinkHealth) {
        if link.establish() {
            self.working_links.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Connections whose sockets may still work.
    pub(crate) fn working_links(&self) -> usize {
        self.working_links.load(Ordering::Acquire)
    }

    /// A connection is being closed for `reason`.
    pub(crate) fn evicted(&self, reason: EvictionReason, connection_id: u64) {
        if self.is_closing() {
            return;
        }
        tracing::debug!(pool = %self.name(), connection_id, reason = reason.as_label(), "evicting redis connection");
        self.metrics().eviction(reason);
        self.connects.owe_replacement();
        if reason == EvictionReason::RoleChange {
            // A failover: the other connections may lead to the demoted node too.
            self.evidence.suspect_roles_now();
        }
        if matches!(
            reason,
            EvictionReason::IoError
                | EvictionReason::ValidationFailed
                | EvictionReason::Broken
                | EvictionReason::RoleChange
        ) {
            // One socket failing says little about Redis: suspect its idle peers and let one
            // fresh connect decide.
            self.evidence.suspect_now();
            self.verify_requested.notify_one();
        }
    }

    /// A call that failed with its connection was sent again on a fresh one.
    pub(crate) fn retried(&self, ok: bool) {
        self.metrics().retry(ok);
    }

    /// A PING took `took`.
    pub(crate) fn round_trip(&self, took: Duration) {
        self.evidence.round_trip(took);
    }

    /// How long a validation PING may take: `validation_timeout`, or four average round trips
    /// when Redis is that far away, but never more than half the checkout budget (a few slow
    /// replies must not make frozen sockets expensive to find).
    #[inline]
    pub(crate) fn validation_timeout(&self) -> Duration {
        let round_trip = self.evidence.average_round_trip();
        let configured = self.config.validation_timeout();
        configured.max(
            round_trip
                .saturating_mul(4)
                .min(self.config.checkout_timeout() / 2),
        )
    }

    pub(crate) fn validated(&self, result: ValidationResult) {
        self.metrics().validation(result);
    }

    pub(crate) fn checkout_succeeded(&self, waited: Duration) {
        self.metrics()
            .checkout(CheckoutResult::Ok, Some(waited.as_secs_f64()));
        // A half-open trial that got a working connection.
        if self.breaker.state() == BreakerState::HalfOpen {
            self.on_transition(self.breaker.record_success(Instant::now()));
        }
    }

    /// A checkout failed: counted, and logged at debug (a failing Redis produces them by the
    /// thousand; the connect failure behind them is logged once). Never counted by the
    /// breaker: the connect attempts behind it already were.
    pub(crate) fn checkout_failed(&self, error: &Error) {
        let result = match error {
            Error::Timeout { .. } => CheckoutResult::Timeout,
            _ => CheckoutResult::Error,
        };
        self.metrics().checkout(result, None);
        tracing::debug!(error = %server_text(error), "redis checkout failed");
        match error {
            Error::Timeout { .. } => self.refusals.count(Refusal::TimedOut),
            Error::Unavailable {
                reason: UnavailableReason::CannotConnect { .. } | UnavailableReason::Startup { .. },
                ..
            } => self.refusals.count(Refusal::CannotConnect),
            _ => {}
        }
    }

    /// Refused by the breaker: counted, and summed up in the log (there may be thousands a
    /// second).
    pub(crate) fn checkout_rejected(&self) {
        self.metrics().checkout(CheckoutResult::Rejected, None);
        self.refusals.count(Refusal::BreakerOpen);
    }

    /// Logs what was refused since the last summary, if one is due (see `refusals.rs`).
    pub(crate) fn report_refusals(&self) {
        let Some(summary) = self.refusals.summary(Instant::now()) else {
            return;
        };
        let cause = self.last_connect_error();
        let cause = cause.as_deref().unwrap_or("none");
        tracing::warn!(
            pool = %self.name(),
            refused = summary.total(),
            breaker = self.breaker.state().as_label(),
            "{summary}; last connect error: {cause}"
        );
    }

    pub(crate) fn sample_pool_state(&self, state: &PoolState) {
        if self.is_closing() {
            return;
        }
        self.register_with_late_recorder();
        self.metrics().set_pool_state(state);
    }

    fn on_transition(&self, transition: Transition) {
        let Some((from, to)) = transition else { return };
        let pool = self.name();
        match to {
            BreakerState::Open => {
                let cause = self.last_connect_error();
                tracing::warn!(
                    pool,
                    from = from.as_label(),
                    cause = cause.as_deref().unwrap_or("unknown"),
                    "redis circuit breaker open: refusing dependent requests"
                );
            }
            BreakerState::HalfOpen => {
                tracing::info!(
                    pool,
                    "redis accepted a connection: circuit breaker half-open"
                )
            }
            BreakerState::Closed => {
                tracing::info!(
                    pool,
                    from = from.as_label(),
                    "redis circuit breaker closed: serving"
                )
            }
        }
        self.metrics().breaker(to, true, self.is_ready());
    }

    // --- What the outcomes add up to -----------------------------------------------------

    #[inline]
    pub(crate) fn admit(&self) -> Option<Admission<'_>> {
        self.breaker.admit()
    }

    #[inline]
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Ready: a connect has succeeded and the breaker is closed.
    pub(crate) fn is_ready(&self) -> bool {
        self.connected_once.load(Ordering::Acquire)
            && self.breaker.state() == BreakerState::Closed
            && !self.is_busy()
            && !self.is_closing()
    }

    pub(crate) fn has_connected(&self) -> bool {
        self.connected_once.load(Ordering::Acquire)
    }

    /// Whether a connection last proven alive at `last_success` is suspected of having failed
    /// like a peer did since.
    #[inline]
    pub(crate) fn is_suspect(&self, last_success: Instant) -> bool {
        self.evidence.is_suspect(last_success)
    }

    /// Whether a connection whose role was last seen at `role_checked` must show it again.
    #[inline]
    pub(crate) fn is_role_suspect(&self, role_checked: Instant) -> bool {
        self.evidence.is_role_suspect(role_checked)
    }

    /// When Redis last answered anything, on any connection.
    pub(crate) fn last_answer(&self) -> Option<Instant> {
        self.evidence.last_answer()
    }

    /// Whether the last connect attempt failed.
    pub(crate) fn connects_failing(&self) -> bool {
        self.connects.failing()
    }

    /// Failed connect attempts so far, weighed (see `connects.rs`): what a checkout notes
    /// when it begins.
    pub(crate) fn failed_connects(&self) -> u64 {
        self.connects.failures()
    }

    /// Whether a checkout that noted `seen` failures when it began need not wait for another
    /// connect attempt: one decisive failure, or two cuts in a row, since then.
    pub(crate) fn connects_failed_since(&self, seen: u64) -> bool {
        self.connects.give_up_since(seen)
    }

    /// When the next connect attempt may start, if the last one failed.
    pub(crate) fn next_connect_at(&self) -> Option<Instant> {
        self.connects.next_at()
    }

    pub(crate) fn last_connect_error(&self) -> Option<String> {
        self.connects.last_error()
    }

    // --- Waiting ---------------------------------------------------------------------------

    /// Resolves at the next failed connect attempt (create it before checking the pool, so
    /// none is missed).
    pub(crate) fn connect_failure(&self) -> tokio::sync::futures::Notified<'_> {
        self.connect_failed.notified()
    }

    /// Resolves when an existing connection failed and Redis should be verified.
    pub(crate) fn verification_requested(&self) -> tokio::sync::futures::Notified<'_> {
        self.verify_requested.notified()
    }

    pub(crate) fn checkout_permits(&self) -> &Arc<Semaphore> {
        &self.checkout_permits
    }

    /// Counts the caller as waiting until the returned guard drops (also on cancellation).
    #[inline]
    pub(crate) fn wait(&self) -> WaitingGuard<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        WaitingGuard(&self.waiting)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    // --- Shutdown --------------------------------------------------------------------------

    /// The pool is going away: stop connecting, count nothing more, and withdraw the gauges
    /// so a dropped pool does not go on reporting itself ready.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        // New checkouts waiting for a connection fail at once; the permits stay open for the
        // callers admitted before (see `inner::WhenClosing`).
        self.closed.notify_waiters();
        if let Some(watch) = &self.sentinel {
            watch.close();
        }
        self.metrics().withdraw();
    }

    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves once the pool is closing.
    pub(crate) async fn closed(&self) {
        let notified = self.closed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_closing() {
            notified.await;
        }
    }
}

pub(crate) struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
