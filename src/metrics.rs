//! The metric contract: names, labels and the handles the pool records through.
//!
//! Every series goes through the [`metrics`] facade, so the application's recorder (the
//! `prometheus` feature's, axum-prometheus', an OpenTelemetry bridge) receives them; every
//! series carries a `pool` label. Handles are registered when the pool is created; a pool
//! created before the recorder was installed registers them once it is (checked every
//! second). Give your recorder the histogram buckets below ([`CHECKOUT_DURATION_BUCKETS`],
//! [`CONNECTION_HOLD_BUCKETS`]; the `prometheus` feature's `configure` does it for a
//! `PrometheusBuilder`), or the histograms render as summaries and the dashboard's `_bucket`
//! queries find nothing.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `redis_guard_pool_connections` | gauge | `state`=`idle`\|`in_use`\|`shared` |
//! | `redis_guard_pool_max_connections` | gauge | |
//! | `redis_guard_pool_pending_checkouts` | gauge | |
//! | `redis_guard_checkouts_total` | counter | `result`=`ok`\|`timeout`\|`rejected`\|`error` |
//! | `redis_guard_checkout_duration_seconds` | histogram | |
//! | `redis_guard_connection_hold_seconds` | histogram | |
//! | `redis_guard_validations_total` | counter | `result`=`passed`\|`failed`\|`skipped` |
//! | `redis_guard_stale_evictions_total` | counter | `reason` (see [`EvictionReason`]) |
//! | `redis_guard_connections_created_total` | counter | |
//! | `redis_guard_reconnects_total` | counter | |
//! | `redis_guard_connect_errors_total` | counter | `kind` (see [`ConnectErrorKind`]) |
//! | `redis_guard_breaker_state` | gauge | | 0 closed, 1 half-open, 2 open |
//! | `redis_guard_breaker_transitions_total` | counter | `to`=`open`\|`half_open`\|`closed` |
//! | `redis_guard_ready` | gauge | | 1 when the pool is ready |
//! | `redis_guard_retries_total` | counter | `result`=`ok`\|`failed` |
//! | `redis_guard_hedges_total` | counter | `result`=`won`\|`lost` | reads sent again while late |
//! | `redis_guard_primary_switches_total` | counter | | (under Sentinel) |
//! | `redis_guard_pubsub_subscriptions` | gauge | | subscriptions held (at most `max_subscriptions`) |
//! | `redis_guard_pubsub_resubscriptions_total` | counter | | subscriptions lost and made again |
//!
//! ```
//! // The names are public constants, for dashboards and tests.
//! assert_eq!(redis_guard::metrics::CHECKOUTS_TOTAL, "redis_guard_checkouts_total");
//! ```

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::breaker::BreakerState;

/// `redis_guard_pool_connections{state}`: live connections, idle, in use by one checkout, or
/// shared by every checkout (shared mode).
pub const POOL_CONNECTIONS: &str = "redis_guard_pool_connections";
/// `redis_guard_pool_max_connections`: the configured maximum.
pub const POOL_MAX_CONNECTIONS: &str = "redis_guard_pool_max_connections";
/// `redis_guard_pool_pending_checkouts`: callers waiting for a connection.
pub const POOL_PENDING_CHECKOUTS: &str = "redis_guard_pool_pending_checkouts";
/// `redis_guard_checkouts_total{result}`: checkouts by outcome.
pub const CHECKOUTS_TOTAL: &str = "redis_guard_checkouts_total";
/// `redis_guard_checkout_duration_seconds`: time to hand out a validated connection.
pub const CHECKOUT_DURATION_SECONDS: &str = "redis_guard_checkout_duration_seconds";
/// `redis_guard_connection_hold_seconds`: how long a checked-out connection was held, from
/// checkout to its return (HikariCP's "usage"). Long holds starve other requests.
pub const CONNECTION_HOLD_SECONDS: &str = "redis_guard_connection_hold_seconds";
/// `redis_guard_validations_total{result}`: checkout validations.
pub const VALIDATIONS_TOTAL: &str = "redis_guard_validations_total";
/// `redis_guard_stale_evictions_total{reason}`: connections evicted as stale or unusable.
pub const STALE_EVICTIONS_TOTAL: &str = "redis_guard_stale_evictions_total";
/// `redis_guard_connections_created_total`: successful connects.
pub const CONNECTIONS_CREATED_TOTAL: &str = "redis_guard_connections_created_total";
/// `redis_guard_reconnects_total`: connects that replaced a lost or evicted connection.
pub const RECONNECTS_TOTAL: &str = "redis_guard_reconnects_total";
/// `redis_guard_connect_errors_total{kind}`: failed connects.
pub const CONNECT_ERRORS_TOTAL: &str = "redis_guard_connect_errors_total";
/// `redis_guard_breaker_state`: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "redis_guard_breaker_state";
/// `redis_guard_breaker_transitions_total{to}`: breaker transitions.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "redis_guard_breaker_transitions_total";
/// `redis_guard_ready`: 1 when the pool is ready to serve.
pub const READY: &str = "redis_guard_ready";
/// `redis_guard_retries_total{result}`: read-only (or idempotent) calls sent again on a
/// fresh connection after theirs failed.
pub const RETRIES_TOTAL: &str = "redis_guard_retries_total";
/// `redis_guard_hedges_total{result}`: late reads sent again on another connection; `won`
/// when the copy answered first.
pub const HEDGES_TOTAL: &str = "redis_guard_hedges_total";
/// `redis_guard_primary_switches_total`: times the pool followed Sentinel to a new primary.
pub const PRIMARY_SWITCHES_TOTAL: &str = "redis_guard_primary_switches_total";

/// `redis_guard_pubsub_subscriptions`: subscriptions held, each on a Redis connection of its
/// own beside the pool's (at most `max_subscriptions`), also while one reconnects.
pub const PUBSUB_SUBSCRIPTIONS: &str = "redis_guard_pubsub_subscriptions";
/// `redis_guard_pubsub_resubscriptions_total`: subscriptions lost (restart, kill, reset,
/// frozen socket) and made again; each is a gap in which messages were missed.
pub const PUBSUB_RESUBSCRIPTIONS_TOTAL: &str = "redis_guard_pubsub_resubscriptions_total";

/// Every metric name of the contract, for dashboards and tests.
pub const ALL: &[&str] = &[
    POOL_CONNECTIONS,
    POOL_MAX_CONNECTIONS,
    POOL_PENDING_CHECKOUTS,
    CHECKOUTS_TOTAL,
    CHECKOUT_DURATION_SECONDS,
    CONNECTION_HOLD_SECONDS,
    VALIDATIONS_TOTAL,
    STALE_EVICTIONS_TOTAL,
    CONNECTIONS_CREATED_TOTAL,
    RECONNECTS_TOTAL,
    CONNECT_ERRORS_TOTAL,
    BREAKER_STATE,
    BREAKER_TRANSITIONS_TOTAL,
    READY,
    RETRIES_TOTAL,
    HEDGES_TOTAL,
    PRIMARY_SWITCHES_TOTAL,
    PUBSUB_SUBSCRIPTIONS,
    PUBSUB_RESUBSCRIPTIONS_TOTAL,
];

/// Histogram buckets for [`CHECKOUT_DURATION_SECONDS`], in seconds: from 50 µs (a hot
/// checkout, or a loopback PING) to 5 s. Configure your recorder with these; the `prometheus`
/// feature does.
pub const CHECKOUT_DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Histogram buckets for [`CONNECTION_HOLD_SECONDS`], in seconds: from 100 µs (one command) to
/// a minute (a blocking worker).
pub const CONNECTION_HOLD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Whether a metrics recorder is installed: the facade's no-op recorder, used until one is,
/// has no state.
pub(crate) fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// Why a connection was evicted: the `reason` label of [`STALE_EVICTIONS_TOTAL`].
///
/// ```
/// use redis_guard::metrics::EvictionReason;
/// assert_eq!(EvictionReason::Broken.as_label(), "broken");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvictionReason {
    /// The checkout PING failed or timed out.
    ValidationFailed,
    /// The socket was found closed (EOF, reset) without a round trip.
    Broken,
    /// A command failed with an I/O error or timed out while the connection was in use.
    IoError,
    /// The connection sat idle longer than the idle timeout.
    IdleTimeout,
    /// The connection outlived its (jittered) maximum lifetime.
    MaxLifetime,
    /// The connection was returned with session state a next user must not inherit: an open
    /// `MULTI` or `WATCH`, a `SELECT`ed database, a subscription.
    Dirty,
    /// The connection was returned with a call still waiting for its reply (the request was
    /// cancelled): the server may still be running it, so the socket is closed.
    Cancelled,
    /// The server is no longer the primary (`READONLY`), cannot serve (`MASTERDOWN`) or is
    /// loading its data (`LOADING`): a failover or restart is under way.
    RoleChange,
    /// A reply exceeded `max_reply_size`: its call failed and its connection was closed
    /// (Redis is not suspected).
    ReplyTooLarge,
}

impl EvictionReason {
    /// Every reason, in label order.
    pub const ALL: [EvictionReason; 9] = [
        EvictionReason::ValidationFailed,
        EvictionReason::Broken,
        EvictionReason::IoError,
        EvictionReason::IdleTimeout,
        EvictionReason::MaxLifetime,
        EvictionReason::Dirty,
        EvictionReason::Cancelled,
        EvictionReason::RoleChange,
        EvictionReason::ReplyTooLarge,
    ];

    /// The label value.
    pub fn as_label(self) -> &'static str {
        match self {
            EvictionReason::ValidationFailed => "validation_failed",
            EvictionReason::Broken => "broken",
            EvictionReason::IoError => "io_error",
            EvictionReason::IdleTimeout => "idle_timeout",
            EvictionReason::MaxLifetime => "max_lifetime",
            EvictionReason::Dirty => "dirty",
            EvictionReason::Cancelled => "cancelled",
            EvictionReason::RoleChange => "role_change",
            EvictionReason::ReplyTooLarge => "reply_too_large",
        }
    }
}

/// Why a connect failed: the `kind` label of [`CONNECT_ERRORS_TOTAL`].
///
/// ```
/// use redis_guard::metrics::ConnectErrorKind;
/// assert_eq!(ConnectErrorKind::Refused.as_label(), "refused");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// Nothing listens there (Redis down, wrong port), or the connection was reset at once.
    Refused,
    /// No answer within the connect timeout.
    Timeout,
    /// Redis refused the credentials.
    Auth,
    /// The TLS handshake failed: unknown CA, wrong host name, expired certificate, client
    /// certificate required.
    Tls,
    /// Redis answered, as a replica, where the pool wants the primary (a failover the DNS
    /// name or the configuration has not followed yet).
    Replica,
    /// Redis turned the connection away at `maxclients`: the fix is on the server (raise the
    /// limit, find who holds the connections), not a restart.
    MaxClients,
    /// Anything else: DNS, protocol, configuration.
    Other,
}

impl ConnectErrorKind {
    const ALL: [ConnectErrorKind; 7] = [
        ConnectErrorKind::Refused,
        ConnectErrorKind::Timeout,
        ConnectErrorKind::Auth,
        ConnectErrorKind::Tls,
        ConnectErrorKind::Replica,
        ConnectErrorKind::MaxClients,
        ConnectErrorKind::Other,
    ];

    /// The label value.
    pub fn as_label(self) -> &'static str {
        match self {
            ConnectErrorKind::Refused => "refused",
            ConnectErrorKind::Timeout => "timeout",
            ConnectErrorKind::Auth => "auth",
            ConnectErrorKind::Tls => "tls",
            ConnectErrorKind::Replica => "replica",
            ConnectErrorKind::MaxClients => "maxclients",
            ConnectErrorKind::Other => "other",
        }
    }
}

/// The outcome of one checkout: the `result` label of [`CHECKOUTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckoutResult {
    Ok,
    Timeout,
    /// Refused at once: the breaker is open.
    Rejected,
    /// Failed fast: the pool had no connection and a connect attempt failed.
    Error,
}

/// The outcome of one validation: the `result` label of [`VALIDATIONS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValidationResult {
    Passed,
    Failed,
    Skipped,
}

/// One pool's registered handles: recording is an atomic add, no label lookup on the hot path.
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    idle: Gauge,
    in_use: Gauge,
    shared: Gauge,
    max: Gauge,
    pending: Gauge,
    checkouts: [Counter; 4],
    checkout_duration: Histogram,
    hold: Histogram,
    validations: [Counter; 3],
    evictions: [Counter; EvictionReason::ALL.len()],
    created: Counter,
    reconnects: Counter,
    connect_errors: [Counter; ConnectErrorKind::ALL.len()],
    breaker_state: Gauge,
    breaker_transitions: [Counter; 3],
    ready: Gauge,
    retries: [Counter; 2],
    hedges: [Counter; 2],
    primary_switches: Counter,
    subscriptions: Gauge,
    resubscriptions: Counter,
}

impl PoolMetrics {
    pub(crate) fn register(pool: &str) -> Self {
        describe();
        let pool = pool.to_owned();
        let counter = |name: &'static str, label: &'static str, value: &'static str| metrics::counter!(name, "pool" => pool.clone(), label => value);
        Self {
            idle: metrics::gauge!(POOL_CONNECTIONS, "pool" => pool.clone(), "state" => "idle"),
            in_use: metrics::gauge!(POOL_CONNECTIONS, "pool" => pool.clone(), "state" => "in_use"),
            shared: metrics::gauge!(POOL_CONNECTIONS, "pool" => pool.clone(), "state" => "shared"),
            max: metrics::gauge!(POOL_MAX_CONNECTIONS, "pool" => pool.clone()),
            pending: metrics::gauge!(POOL_PENDING_CHECKOUTS, "pool" => pool.clone()),
            checkouts: ["ok", "timeout", "rejected", "error"]
                .map(|result| counter(CHECKOUTS_TOTAL, "result", result)),
            checkout_duration: metrics::histogram!(CHECKOUT_DURATION_SECONDS, "pool" => pool.clone()),
            hold: metrics::histogram!(CONNECTION_HOLD_SECONDS, "pool" => pool.clone()),
            validations: ["passed", "failed", "skipped"]
                .map(|result| counter(VALIDATIONS_TOTAL, "result", result)),
            evictions: EvictionReason::ALL
                .map(|reason| counter(STALE_EVICTIONS_TOTAL, "reason", reason.as_label())),
            created: metrics::counter!(CONNECTIONS_CREATED_TOTAL, "pool" => pool.clone()),
            reconnects: metrics::counter!(RECONNECTS_TOTAL, "pool" => pool.clone()),
            connect_errors: ConnectErrorKind::ALL
                .map(|kind| counter(CONNECT_ERRORS_TOTAL, "kind", kind.as_label())),
            breaker_state: metrics::gauge!(BREAKER_STATE, "pool" => pool.clone()),
            breaker_transitions: BREAKER_STATES
                .map(|state| counter(BREAKER_TRANSITIONS_TOTAL, "to", state.as_label())),
            ready: metrics::gauge!(READY, "pool" => pool.clone()),
            retries: ["ok", "failed"].map(|result| counter(RETRIES_TOTAL, "result", result)),
            hedges: ["won", "lost"].map(|result| counter(HEDGES_TOTAL, "result", result)),
            primary_switches: metrics::counter!(PRIMARY_SWITCHES_TOTAL, "pool" => pool.clone()),
            subscriptions: metrics::gauge!(PUBSUB_SUBSCRIPTIONS, "pool" => pool.clone()),
            resubscriptions: metrics::counter!(PUBSUB_RESUBSCRIPTIONS_TOTAL, "pool" => pool.clone()),
        }
    }

    pub(crate) fn set_pool_state(&self, state: &crate::PoolState) {
        self.idle.set(state.idle);
        self.in_use.set(state.in_use);
        self.shared.set(state.shared);
        self.max.set(state.max_size);
        self.pending.set(state.waiting as f64);
        self.subscriptions.set(state.subscriptions);
    }

    pub(crate) fn checkout(&self, result: CheckoutResult, seconds: Option<f64>) {
        self.checkouts[result as usize].increment(1);
        if let Some(seconds) = seconds {
            self.checkout_duration.record(seconds);
        }
    }

    pub(crate) fn held(&self, seconds: f64) {
        self.hold.record(seconds);
    }

    pub(crate) fn validation(&self, result: ValidationResult) {
        self.validations[result as usize].increment(1);
    }

    pub(crate) fn eviction(&self, reason: EvictionReason) {
        self.evictions[reason as usize].increment(1);
    }

    pub(crate) fn connection_created(&self, replaced_a_lost_one: bool) {
        self.created.increment(1);
        if replaced_a_lost_one {
            self.reconnects.increment(1);
        }
    }

    pub(crate) fn resubscribed(&self) {
        self.resubscriptions.increment(1);
    }

    pub(crate) fn primary_moved(&self) {
        self.primary_switches.increment(1);
    }

    pub(crate) fn retry(&self, ok: bool) {
        self.retries[usize::from(!ok)].increment(1);
    }

    pub(crate) fn hedge(&self, won: bool) {
        self.hedges[usize::from(!won)].increment(1);
    }

    pub(crate) fn connect_error(&self, kind: ConnectErrorKind) {
        self.connect_errors[kind as usize].increment(1);
    }

    /// Sets the breaker and readiness gauges; counts a transition into `state` if `transition`.
    pub(crate) fn breaker(&self, state: BreakerState, transition: bool, ready: bool) {
        if transition {
            self.breaker_transitions[state as usize].increment(1);
        }
        self.breaker_state.set(state.as_gauge());
        self.ready.set(if ready { 1.0 } else { 0.0 });
    }

    /// Zeroes the gauges of a pool that is gone: the facade cannot unregister a series, and a
    /// dropped pool must not go on reporting itself ready or holding connections.
    pub(crate) fn withdraw(&self) {
        for gauge in [
            &self.idle,
            &self.in_use,
            &self.shared,
            &self.max,
            &self.pending,
            &self.subscriptions,
        ] {
            gauge.set(0.0);
        }
        self.breaker_state.set(0.0);
        self.ready.set(0.0);
    }
}

/// Indexed by `BreakerState as usize`.
const BREAKER_STATES: [BreakerState; 3] = [
    BreakerState::Closed,
    BreakerState::HalfOpen,
    BreakerState::Open,
];

/// HELP texts; the facade keeps the first description of each name, so repeating it per pool
/// is harmless.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(POOL_CONNECTIONS, "Live Redis connections, by state.");
    describe_gauge!(
        POOL_MAX_CONNECTIONS,
        "Configured maximum of Redis connections."
    );
    describe_gauge!(
        POOL_PENDING_CHECKOUTS,
        "Callers waiting for a Redis connection."
    );
    describe_counter!(CHECKOUTS_TOTAL, "Redis connection checkouts, by result.");
    describe_histogram!(
        CHECKOUT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to hand out a validated Redis connection."
    );
    describe_histogram!(
        CONNECTION_HOLD_SECONDS,
        Unit::Seconds,
        "How long a checked-out Redis connection was held before its return."
    );
    describe_counter!(VALIDATIONS_TOTAL, "Checkout validations, by result.");
    describe_counter!(
        STALE_EVICTIONS_TOTAL,
        "Stale or unusable connections evicted, by reason."
    );
    describe_counter!(CONNECTIONS_CREATED_TOTAL, "Successful Redis connects.");
    describe_counter!(
        RECONNECTS_TOTAL,
        "Connects that replaced a lost or evicted connection."
    );
    describe_counter!(CONNECT_ERRORS_TOTAL, "Failed Redis connects, by kind.");
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        BREAKER_TRANSITIONS_TOTAL,
        "Circuit breaker transitions, by target state."
    );
    describe_gauge!(READY, "1 when the Redis pool is ready to serve, else 0.");
    describe_counter!(
        RETRIES_TOTAL,
        "Read-only or idempotent calls retried on a fresh connection, by result."
    );
    describe_gauge!(
        PUBSUB_SUBSCRIPTIONS,
        "Pub/sub subscriptions held, each on a Redis connection of its own."
    );
    describe_counter!(
        PUBSUB_RESUBSCRIPTIONS_TOTAL,
        "Subscriptions lost and made again (messages in between were missed)."
    );
    describe_counter!(
        PRIMARY_SWITCHES_TOTAL,
        "Times the pool followed Sentinel to a new primary."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handles are indexed by discriminant: the `ALL` lists must be in declaration order.
    #[test]
    fn label_lists_are_in_declaration_order() {
        for (i, reason) in EvictionReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.as_label());
        }
        for (i, kind) in ConnectErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{}", kind.as_label());
        }
    }
}
