//! Every setting but the URL, the name and the hook, each written once in `settings!`, and
//! their validation against what the pool, the kernel and the clock accept.

use std::time::Duration;

use super::*;

/// TCP keepalive probes for each pooled socket.
///
/// ```
/// use std::time::Duration;
/// use redis_guard::config::Keepalive;
///
/// let keepalive = Keepalive { idle: Duration::from_secs(60), ..Keepalive::default() };
/// assert_eq!(keepalive.retries, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (whole seconds, 1 to 32,767: Linux's limit).
    pub idle: Duration,
    /// Time between probes (whole seconds, 1 to 32,767).
    pub interval: Duration,
    /// Unanswered probes before the kernel closes the socket (1 to 127).
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: defaults::KEEPALIVE_IDLE,
            interval: defaults::KEEPALIVE_INTERVAL,
            retries: defaults::KEEPALIVE_RETRIES,
        }
    }
}

impl Keepalive {
    /// The kernel takes whole seconds up to 32,767 and at most 127 probes; anything else fails
    /// every connect with "Invalid argument" naming no setting, so it is refused here.
    fn validate(&self) -> Result<(), String> {
        const MAX_SECONDS: u64 = 32_767;
        for (part, value) in [("idle", self.idle), ("interval", self.interval)] {
            if value.subsec_nanos() != 0 || !(1..=MAX_SECONDS).contains(&value.as_secs()) {
                return Err(format!(
                    "{part} {value:?} must be whole seconds from 1 to {MAX_SECONDS} (the kernel's \
                     range)"
                ));
            }
        }
        if !(1..=127).contains(&self.retries) {
            return Err(format!(
                "retries {} must be from 1 to 127 (the kernel's range)",
                self.retries
            ));
        }
        Ok(())
    }
}

/// Each setting once: its doc, its type, its default, what the builder's setter takes, and the
/// environment variable (after `REDIS_GUARD_`) that sets it. Makes the settings struct, its
/// defaults, a getter on [`Config`], a setter on [`ConfigBuilder`] and the table `env.rs`
/// reads.
macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $default:expr, $arg:ty, $env:literal;)*) => {
        /// Every setting but the URL, the name and the hook.
        #[derive(Debug, Clone, PartialEq)]
        pub(crate) struct Settings {
            $( pub(crate) $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $name: $default, )* }
            }
        }

        impl Config {
            $( $(#[$doc])* pub fn $name(&self) -> $ty { self.settings.$name } )*
        }

        impl ConfigBuilder {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $arg) -> Self {
                    self.settings.$name = value.into();
                    self
                }
            )*
        }

        impl Settings {
            /// Every setting's variable, after `REDIS_GUARD_`.
            pub(super) const ENV_SUFFIXES: &'static [&'static str] = &[$($env),*];

            /// Sets each setting whose variable `lookup` finds, parsed by its type.
            /// `lookup` takes a variable's suffix and the setting's name, and returns the value
            /// and the variable's full name if it is set.
            pub(super) fn read_env(&mut self, lookup: &mut env::Lookup<'_>) -> Result<(), ConfigError> {
                $(
                    if let Some((raw, variable)) = lookup($env, stringify!($name))? {
                        self.$name = env::FromEnv::from_env(&raw)
                            .map_err(|reason| invalid(&variable, reason))?;
                    }
                )*
                Ok(())
            }
        }
    };
}

settings! {
    /// Most connections the pool holds (1 to 10,000).
    max_size: u32 = defaults::MAX_SIZE, u32, "MAX_SIZE";
    /// Most subscriptions ([`RedisGuard::subscribe`](crate::RedisGuard::subscribe)) held at
    /// once, each on a connection of its own beside the pool's `max_size` (1 to 10,000); one
    /// more is refused with
    /// [`UnavailableReason::SubscriptionLimit`](crate::UnavailableReason::SubscriptionLimit).
    max_subscriptions: u32 = defaults::MAX_SUBSCRIPTIONS, u32, "MAX_SUBSCRIPTIONS";
    /// Idle connections kept open when possible (at most `max_size`).
    min_idle: u32 = defaults::MIN_IDLE, u32, "MIN_IDLE";
    /// Budget for one whole checkout, validation and retries included.
    checkout_timeout: Duration = defaults::CHECKOUT_TIMEOUT, Duration, "CHECKOUT_TIMEOUT_MS";
    /// Budget for one connect: TCP, the Redis handshake, the first PING and the set-up hook.
    connect_timeout: Duration = defaults::CONNECT_TIMEOUT, Duration, "CONNECT_TIMEOUT_MS";
    /// Longest wait for one reply (blocking commands add their own timeout).
    response_timeout: Duration = defaults::RESPONSE_TIMEOUT, Duration, "RESPONSE_TIMEOUT_MS";
    /// Longest wait for the validation PING (shorter than the checkout budget).
    validation_timeout: Duration = defaults::VALIDATION_TIMEOUT, Duration, "VALIDATION_TIMEOUT_MS";
    /// Connections that completed a command this recently are not PINGed at checkout;
    /// `Duration::ZERO` PINGs on every checkout.
    validation_bypass: Duration = defaults::VALIDATION_BYPASS, Duration, "VALIDATION_BYPASS_MS";
    /// Idle connections are closed after this; `None` keeps them open.
    idle_timeout: Option<Duration> = Some(defaults::IDLE_TIMEOUT), impl Into<Option<Duration>>, "IDLE_TIMEOUT_MS";
    /// Connections are renewed after at most this; `None` keeps them.
    max_lifetime: Option<Duration> = Some(defaults::MAX_LIFETIME), impl Into<Option<Duration>>, "MAX_LIFETIME_MS";
    /// Each lifetime is shortened by a random share up to this fraction (0.0 to 0.5).
    lifetime_jitter: f64 = defaults::LIFETIME_JITTER, f64, "LIFETIME_JITTER";
    /// TCP keepalive per socket; `None` leaves the system default.
    keepalive: Option<Keepalive> = Some(Keepalive::default()), impl Into<Option<Keepalive>>, "KEEPALIVE";
    /// Linux `TCP_USER_TIMEOUT` (1 ms to about 49 days); `None` leaves the system default.
    /// Ignored elsewhere.
    tcp_user_timeout: Option<Duration> = Some(defaults::TCP_USER_TIMEOUT), impl Into<Option<Duration>>, "TCP_USER_TIMEOUT_MS";
    /// Whether checkouts hold a connection of their own or share multiplexed ones.
    mode: PoolMode = PoolMode::Exclusive, PoolMode, "MODE";
    /// In [`PoolMode::Shared`]: how many connections the plain commands are pipelined over
    /// (1 to `max_size - 1`: the rest serve the commands that need a connection of their own).
    /// When `2 × shared_connections < max_size`, as many again carry only reads, so a write
    /// that waits (`CLIENT PAUSE WRITE`, a failover) holds no read queued behind it.
    shared_connections: u32 = defaults::SHARED_CONNECTIONS, u32, "SHARED_CONNECTIONS";
    /// What start-up does when Redis is unreachable.
    startup: StartupMode = StartupMode::Lazy, StartupMode, "STARTUP";
    /// When the circuit breaker trips and how it recovers.
    breaker: BreakerPolicy = BreakerPolicy::default(), BreakerPolicy, "BREAKER";
    /// Whether the pool wants the primary: each new connection asks `ROLE` (in the round trip
    /// of its first PING) and one that lands on a replica is not used; after a `READONLY`,
    /// `MASTERDOWN` or `LOADING` reply the other connections show their role again before
    /// reuse. Set `false` to read from replicas on purpose.
    expect_primary: bool = true, bool, "EXPECT_PRIMARY";
    /// Sends a read again on another connection when it is late by the measure of the pool's
    /// recent reads (at most `validation_timeout`), and takes the first answer: a frozen
    /// socket then costs a read milliseconds, not its response timeout. Only calls whose
    /// every command Redis flags read-only, on a clean session, are hedged.
    hedge_reads: bool = true, bool, "HEDGE_READS";
    /// The most bytes one reply may have (1 MiB to 4 GiB). A reply over it (a value, a
    /// `KEYS` listing, a pub/sub message, or a forged length from a hostile server) fails
    /// its call as soon as its size is announced or read, and its connection is closed: the
    /// client never buffers more than this per connection, whatever the command's timeout.
    /// The breaker does not count it: Redis answered.
    max_reply_size: u64 = defaults::MAX_REPLY_SIZE, u64, "MAX_REPLY_SIZE_BYTES";
    /// How long nothing may answer before the prober PINGs a healthy Redis.
    probe_interval: Duration = defaults::PROBE_INTERVAL, Duration, "PROBE_INTERVAL_MS";
    /// The pause between connect attempts from the second failure in a row (doubles per
    /// failure).
    reconnect_backoff_min: Duration = defaults::RECONNECT_BACKOFF_MIN, Duration, "RECONNECT_BACKOFF_MIN_MS";
    /// The longest pause between connect attempts while Redis is down.
    reconnect_backoff_max: Duration = defaults::RECONNECT_BACKOFF_MAX, Duration, "RECONNECT_BACKOFF_MAX_MS";
}

impl Settings {
    /// Checks every setting against what the pool, the kernel and `Instant` arithmetic accept.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_POOL_SIZE).contains(&self.max_size) {
            return Err(invalid(
                "max_size",
                format!("{} must be from 1 to {MAX_POOL_SIZE}", self.max_size),
            ));
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.max_subscriptions) {
            return Err(invalid(
                "max_subscriptions",
                format!(
                    "{} must be from 1 to {MAX_POOL_SIZE}",
                    self.max_subscriptions
                ),
            ));
        }
        if self.min_idle > self.max_size {
            return Err(invalid(
                "min_idle",
                format!(
                    "min_idle ({}) exceeds max_size ({}); lower min_idle or raise max_size",
                    self.min_idle, self.max_size
                ),
            ));
        }
        for (setting, value) in [
            ("checkout_timeout", self.checkout_timeout),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("validation_timeout", self.validation_timeout),
            ("probe_interval", self.probe_interval),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
        ] {
            if value.is_zero() {
                // Not "0ns": the unit is the variable's or the caller's, and zero has none.
                return Err(invalid(setting, "0 must be greater than zero".to_owned()));
            }
            if value > MAX_DURATION {
                return Err(invalid(
                    setting,
                    format!("{value:?} must be at most a year"),
                ));
            }
        }
        if self.validation_bypass > MAX_DURATION || self.reconnect_backoff_max > MAX_DURATION {
            let setting = if self.validation_bypass > MAX_DURATION {
                "validation_bypass"
            } else {
                "reconnect_backoff_max"
            };
            return Err(invalid(setting, "must be at most a year"));
        }
        if self.validation_timeout >= self.checkout_timeout {
            return Err(invalid(
                "validation_timeout",
                format!(
                    "{:?} leaves nothing of the checkout budget ({:?}) to replace a dead \
                     connection; make validation_timeout shorter than checkout_timeout",
                    self.validation_timeout, self.checkout_timeout
                ),
            ));
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return Err(invalid(
                "reconnect_backoff_max",
                format!(
                    "{:?} is below reconnect_backoff_min ({:?})",
                    self.reconnect_backoff_max, self.reconnect_backoff_min
                ),
            ));
        }
        for (setting, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            if value.is_some_and(|d| d.is_zero() || d > MAX_DURATION) {
                return Err(invalid(
                    setting,
                    "must be greater than zero and at most a year, or None to disable",
                ));
            }
        }
        if !(0.0..=0.5).contains(&self.lifetime_jitter) {
            return Err(invalid(
                "lifetime_jitter",
                format!("{} is outside 0.0 to 0.5", self.lifetime_jitter),
            ));
        }
        if let Some(keepalive) = self.keepalive {
            keepalive
                .validate()
                .map_err(|reason| invalid("keepalive", reason))?;
        }
        if let Some(timeout) = self.tcp_user_timeout {
            // The kernel takes milliseconds in an unsigned 32-bit integer.
            if timeout < Duration::from_millis(1) || timeout.as_millis() > u128::from(u32::MAX) {
                return Err(invalid(
                    "tcp_user_timeout",
                    format!("{timeout:?} must be from 1 ms to {} ms, or None", u32::MAX),
                ));
            }
        }
        if !(MIN_REPLY_SIZE..=MAX_REPLY_SIZE).contains(&self.max_reply_size) {
            return Err(invalid(
                "max_reply_size",
                format!(
                    "{} bytes must be from {MIN_REPLY_SIZE} (1 MiB) to {MAX_REPLY_SIZE} (4 GiB)",
                    self.max_reply_size
                ),
            ));
        }
        if self.mode == PoolMode::Shared && self.shared_connections == 0 {
            return Err(invalid(
                "shared_connections",
                "shared mode needs at least 1 shared connection",
            ));
        }
        if self.mode == PoolMode::Shared && self.shared_connections >= self.max_size {
            return Err(invalid(
                "shared_connections",
                format!(
                    "{} shared connections with max_size {} leave none for the commands that \
                     need a connection of their own; use from 1 to max_size - 1 ({})",
                    self.shared_connections,
                    self.max_size,
                    self.max_size.saturating_sub(1)
                ),
            ));
        }
        if self.startup == StartupMode::WaitFor(Duration::ZERO) {
            return Err(invalid(
                "startup",
                "WaitFor needs a non-zero duration; use FailFast for a single attempt",
            ));
        }
        self.breaker
            .validate()
            .map_err(|reason| invalid("breaker", reason))
    }
}
