//! Pool configuration: one builder, every default in one place, validation with clear errors.
//!
//! ```
//! use std::time::Duration;
//! use redis_guard::Config;
//!
//! let config = Config::builder("redis://:secret@127.0.0.1:6379/0")
//!     .name("cache")
//!     .max_size(16)
//!     .checkout_timeout(Duration::from_millis(500))
//!     .build()
//!     .expect("valid configuration");
//! assert_eq!(config.name(), "cache");
//! // The password never leaves the config in clear text.
//! assert_eq!(config.redacted_url(), "redis://:***@127.0.0.1:6379/0");
//! assert!(!format!("{config:?}").contains("secret"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisFuture};

use crate::connection::GuardConnection;

use crate::breaker::BreakerPolicy;

/// Every default, each with the reason for its value.
pub mod defaults {
    use std::time::Duration;

    /// The `pool` label value when none is given.
    pub const NAME: &str = "default";
    /// bb8-redis's default, so a service moving over keeps its connection footprint.
    pub const MAX_SIZE: u32 = 10;
    /// One warm connection, so the first request after start-up or an idle spell pays no connect.
    pub const MIN_IDLE: u32 = 1;
    /// The whole budget of one checkout, retries and validation included. bb8's 30 s default
    /// turns an outage into 30 s hangs; a cache lookup that cannot get a connection in 1 s
    /// should fail and let the caller degrade.
    pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(1);
    /// TCP connect plus the AUTH/SELECT handshake. Redis on a LAN answers in milliseconds;
    /// a SYN that goes unanswered for a second is an outage, not latency.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// The longest a single command may take. Cache commands take microseconds; a reply later
    /// than this means a frozen socket or a stuck server. Raise it for blocking commands.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
    /// The PING that proves an idle connection alive. A loopback or LAN PING takes well under
    /// a millisecond, so 250 ms only ever fires on a dead or frozen socket.
    pub const VALIDATION_TIMEOUT: Duration = Duration::from_millis(250);
    /// A connection that completed a command this recently is handed out without a PING
    /// (HikariCP's `aliveBypassWindowMs`): on a busy pool validation then costs nothing.
    pub const VALIDATION_BYPASS: Duration = Duration::from_millis(500);
    /// Idle connections are closed after this. Below the 4-minute idle cut-off of Azure's load
    /// balancers and the 350 s of AWS NLB, the shortest common middlebox timeouts.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
    /// Connections are renewed after this, so a failover, a DNS change or a server-side leak is
    /// picked up without a restart.
    pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
    /// Each connection's lifetime is shortened by a random share up to this, so a fleet started
    /// together does not reconnect in lockstep.
    pub const LIFETIME_JITTER: f64 = 0.05;
    /// TCP keepalive as go-redis and redis-py set it: the first probe after 30 s of silence,
    /// then every 5 s, 3 probes. Set per socket, so Windows' 2-hour registry default is moot.
    pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
    /// See [`KEEPALIVE_IDLE`].
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
    /// See [`KEEPALIVE_IDLE`].
    pub const KEEPALIVE_RETRIES: u32 = 3;
    /// Linux `TCP_USER_TIMEOUT`: idle + interval x probes, so the kernel gives up on unacked
    /// data at the same moment keepalive would have declared the peer dead.
    pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(45);
    /// While Redis is healthy and no command answered within this interval, the prober PINGs
    /// once: readiness is never older than this, at no more than one command per second per
    /// pod, and none while traffic proves Redis alive.
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
    /// After a failed connect the pool waits this long (plus up to 15 % jitter) before the
    /// next one, whoever asks for it: at most 5 connect attempts a second while Redis is
    /// down, and the first success within about 230 ms of Redis accepting connections again.
    pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(200);
    /// The pause doubles per failure up to this. Equal to the minimum by default: a quick
    /// recovery matters more than sparing a Redis that refuses connections in microseconds.
    pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(200);
}

/// A set-up hook: see [`ConfigBuilder::on_connect`].
pub type ConnectHook =
    Arc<dyn for<'c> Fn(&'c mut GuardConnection) -> RedisFuture<'c, ()> + Send + Sync>;

/// How [`RedisGuard::connect`](crate::RedisGuard::connect) behaves when Redis cannot be
/// reached at start-up.
///
/// ```
/// use std::time::Duration;
/// use redis_guard::{Config, StartupMode};
///
/// let config = Config::builder("redis://127.0.0.1:6379")
///     .startup(StartupMode::WaitFor(Duration::from_secs(5)))
///     .build()
///     .unwrap();
/// assert_eq!(config.startup(), StartupMode::WaitFor(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartupMode {
    /// Return at once and connect in the background: the service starts serving, and the pool
    /// fills as soon as Redis answers.
    #[default]
    Lazy,
    /// Retry with backoff until one connection succeeds or the duration runs out.
    WaitFor(Duration),
    /// Make one connection attempt and fail if it does not succeed.
    FailFast,
}

/// A configuration that failed validation. The message says what to change.
///
/// ```
/// use redis_guard::{Config, ConfigError};
///
/// let err = Config::builder("redis://127.0.0.1").max_size(2).min_idle(3).build().unwrap_err();
/// assert!(matches!(err, ConfigError::Invalid { .. }));
/// assert!(err.to_string().contains("min_idle (3) exceeds max_size (2)"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The Redis URL could not be used. The URL itself is never repeated: it may hold a password.
    #[error("invalid Redis URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// A setting has a value the pool cannot work with.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The builder method or environment variable to fix.
        setting: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
}

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
    /// Silence before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel closes the socket.
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

/// A validated pool configuration. Build one with [`Config::builder`] or [`Config::from_env`].
///
/// `Debug` and [`Config::redacted_url`] never show the password.
#[derive(Clone)]
pub struct Config {
    pub(crate) connection: ConnectionInfo,
    pub(crate) redacted_url: String,
    pub(crate) name: String,
    pub(crate) max_size: u32,
    pub(crate) min_idle: u32,
    pub(crate) checkout_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) validation_timeout: Duration,
    pub(crate) validation_bypass: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: f64,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) tcp_user_timeout: Option<Duration>,
    pub(crate) startup: StartupMode,
    pub(crate) breaker: BreakerPolicy,
    pub(crate) probe_interval: Duration,
    pub(crate) reconnect_backoff_min: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    pub(crate) on_connect: Option<ConnectHook>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted_url)
            .field("name", &self.name)
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("validation_timeout", &self.validation_timeout)
            .field("validation_bypass", &self.validation_bypass)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("lifetime_jitter", &self.lifetime_jitter)
            .field("keepalive", &self.keepalive)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("startup", &self.startup)
            .field("breaker", &self.breaker)
            .field("probe_interval", &self.probe_interval)
            .field("reconnect_backoff_min", &self.reconnect_backoff_min)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("on_connect", &self.on_connect.as_ref().map(|_| "hook"))
            .finish()
    }
}

impl Config {
    /// Starts a builder for the Redis at `url` (`redis://[user][:password@]host[:port][/db]`
    /// or `redis+unix:///path`). Every other setting has a default from [`defaults`].
    pub fn builder(url: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder::new(url.into())
    }

    /// Reads the configuration from the environment: `REDIS_URL` (required) and the optional
    /// `REDIS_GUARD_POOL_NAME`, `REDIS_GUARD_MAX_SIZE`, `REDIS_GUARD_MIN_IDLE`, and the
    /// durations in milliseconds `REDIS_GUARD_CHECKOUT_TIMEOUT_MS`,
    /// `REDIS_GUARD_CONNECT_TIMEOUT_MS`, `REDIS_GUARD_RESPONSE_TIMEOUT_MS`,
    /// `REDIS_GUARD_VALIDATION_TIMEOUT_MS`, `REDIS_GUARD_VALIDATION_BYPASS_MS`.
    ///
    /// ```no_run
    /// let config = redis_guard::Config::from_env()?;
    /// # Ok::<(), redis_guard::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// [`Config::from_env`] over any key lookup, so it can be tested without touching the
    /// process environment.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let url = get("REDIS_URL").ok_or(ConfigError::Invalid {
            setting: "REDIS_URL",
            reason: "not set; set it to redis://host:port".into(),
        })?;
        let mut builder = Config::builder(url);
        if let Some(name) = get("REDIS_GUARD_POOL_NAME") {
            builder = builder.name(name);
        }
        let number = |key: &'static str| -> Result<Option<u64>, ConfigError> {
            get(key)
                .map(|raw| {
                    raw.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                        setting: key,
                        reason: format!("{raw:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        let count = |key: &'static str| -> Result<Option<u32>, ConfigError> {
            number(key)?
                .map(|n| {
                    u32::try_from(n).map_err(|_| ConfigError::Invalid {
                        setting: key,
                        reason: format!("{n} is too large"),
                    })
                })
                .transpose()
        };
        if let Some(n) = count("REDIS_GUARD_MAX_SIZE")? {
            builder = builder.max_size(n);
        }
        if let Some(n) = count("REDIS_GUARD_MIN_IDLE")? {
            builder = builder.min_idle(n);
        }
        let millis = |key| Ok::<_, ConfigError>(number(key)?.map(Duration::from_millis));
        if let Some(d) = millis("REDIS_GUARD_CHECKOUT_TIMEOUT_MS")? {
            builder = builder.checkout_timeout(d);
        }
        if let Some(d) = millis("REDIS_GUARD_CONNECT_TIMEOUT_MS")? {
            builder = builder.connect_timeout(d);
        }
        if let Some(d) = millis("REDIS_GUARD_RESPONSE_TIMEOUT_MS")? {
            builder = builder.response_timeout(d);
        }
        if let Some(d) = millis("REDIS_GUARD_VALIDATION_TIMEOUT_MS")? {
            builder = builder.validation_timeout(d);
        }
        if let Some(d) = millis("REDIS_GUARD_VALIDATION_BYPASS_MS")? {
            builder = builder.validation_bypass(d);
        }
        builder.build()
    }

    /// The Redis URL with any password replaced by `***`: safe to log.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The pool's name: the `pool` label on every metric and the check name in `/readyz`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Builds a [`Config`]; [`ConfigBuilder::build`] validates every setting.
///
/// ```
/// use std::time::Duration;
/// let config = redis_guard::Config::builder("redis://127.0.0.1:6379")
///     .validation_bypass(Duration::ZERO) // PING every checkout
///     .idle_timeout(None)
///     .build()
///     .unwrap();
/// assert_eq!(config.idle_timeout(), None);
/// ```
#[derive(Clone)]
pub struct ConfigBuilder {
    url: String,
    config: ConfigDraft,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

/// The settings before validation; `Config` minus what is derived from the URL.
#[derive(Clone)]
struct ConfigDraft {
    name: String,
    max_size: u32,
    min_idle: u32,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    validation_timeout: Duration,
    validation_bypass: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    lifetime_jitter: f64,
    keepalive: Option<Keepalive>,
    tcp_user_timeout: Option<Duration>,
    startup: StartupMode,
    breaker: BreakerPolicy,
    probe_interval: Duration,
    reconnect_backoff_min: Duration,
    reconnect_backoff_max: Duration,
    on_connect: Option<ConnectHook>,
}

impl ConfigBuilder {
    fn new(url: String) -> Self {
        Self {
            url,
            config: ConfigDraft {
                name: defaults::NAME.to_owned(),
                max_size: defaults::MAX_SIZE,
                min_idle: defaults::MIN_IDLE,
                checkout_timeout: defaults::CHECKOUT_TIMEOUT,
                connect_timeout: defaults::CONNECT_TIMEOUT,
                response_timeout: defaults::RESPONSE_TIMEOUT,
                validation_timeout: defaults::VALIDATION_TIMEOUT,
                validation_bypass: defaults::VALIDATION_BYPASS,
                idle_timeout: Some(defaults::IDLE_TIMEOUT),
                max_lifetime: Some(defaults::MAX_LIFETIME),
                lifetime_jitter: defaults::LIFETIME_JITTER,
                keepalive: Some(Keepalive::default()),
                tcp_user_timeout: Some(defaults::TCP_USER_TIMEOUT),
                startup: StartupMode::default(),
                breaker: BreakerPolicy::default(),
                probe_interval: defaults::PROBE_INTERVAL,
                reconnect_backoff_min: defaults::RECONNECT_BACKOFF_MIN,
                reconnect_backoff_max: defaults::RECONNECT_BACKOFF_MAX,
                on_connect: None,
            },
        }
    }

    /// Runs `hook` on every new connection before it joins the pool, as HikariCP's
    /// `connectionInitSql` or deadpool's `post_create`: `SELECT` a database, `CLIENT TRACKING
    /// ON`, load a script. It runs within `connect_timeout`; if it fails, the connect fails
    /// (counted and reported like any connect error). What it sets is the connection's
    /// baseline: the connection is not evicted as dirty for it.
    ///
    /// Every connection is also named after the pool (`CLIENT SETNAME`, skipped quietly where
    /// the ACL forbids it), so operators can find the pool's connections in `CLIENT LIST`.
    ///
    /// ```
    /// let config = redis_guard::Config::builder("redis://127.0.0.1:6379")
    ///     .on_connect(|conn| {
    ///         Box::pin(async move {
    ///             redis::cmd("SELECT").arg(2).query_async::<()>(conn).await
    ///         })
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(config);
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut GuardConnection) -> RedisFuture<'c, ()> + Send + Sync + 'static,
    {
        self.config.on_connect = Some(Arc::new(hook));
        self
    }

    /// The pool's name, used as the `pool` metric label and the readiness check name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Validates every setting and returns the [`Config`], or the first problem found.
    pub fn build(self) -> Result<Config, ConfigError> {
        let connection = parse_url(&self.url)?;
        let c = self.config;
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if c.name.is_empty() || c.name.chars().any(|ch| ch.is_control()) {
            return invalid("name", "must be non-empty printable text".into());
        }
        if c.max_size == 0 {
            return invalid("max_size", "must be at least 1".into());
        }
        if c.min_idle > c.max_size {
            return invalid(
                "min_idle",
                format!(
                    "min_idle ({}) exceeds max_size ({}); lower min_idle or raise max_size",
                    c.min_idle, c.max_size
                ),
            );
        }
        for (setting, value) in [
            ("checkout_timeout", c.checkout_timeout),
            ("connect_timeout", c.connect_timeout),
            ("response_timeout", c.response_timeout),
            ("validation_timeout", c.validation_timeout),
        ] {
            if value.is_zero() {
                return invalid(setting, "must be greater than zero".into());
            }
        }
        if c.validation_timeout >= c.checkout_timeout {
            return invalid(
                "validation_timeout",
                format!(
                    "{:?} leaves nothing of the checkout budget ({:?}) to replace a dead \
                     connection; make it shorter than checkout_timeout",
                    c.validation_timeout, c.checkout_timeout
                ),
            );
        }
        for (setting, value) in [
            ("idle_timeout", c.idle_timeout),
            ("max_lifetime", c.max_lifetime),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return invalid(
                    setting,
                    "must be greater than zero, or None to disable".into(),
                );
            }
        }
        if !(0.0..=0.5).contains(&c.lifetime_jitter) {
            return invalid(
                "lifetime_jitter",
                format!("{} is outside 0.0 to 0.5", c.lifetime_jitter),
            );
        }
        if let Some(k) = c.keepalive
            && (k.idle.is_zero() || k.interval.is_zero() || k.retries == 0)
        {
            return invalid(
                "keepalive",
                "idle, interval and retries must be non-zero".into(),
            );
        }
        if c.tcp_user_timeout.is_some_and(|d| d.is_zero()) {
            return invalid(
                "tcp_user_timeout",
                "must be greater than zero, or None".into(),
            );
        }
        if let StartupMode::WaitFor(d) = c.startup
            && d.is_zero()
        {
            return invalid("startup", "WaitFor needs a non-zero duration".into());
        }
        let b = c.breaker;
        if b.consecutive_failures == 0 || b.min_calls == 0 || b.trial_successes == 0 {
            return invalid(
                "breaker",
                "consecutive_failures, min_calls and trial_successes must be at least 1".into(),
            );
        }
        if b.trial_concurrency == 0 {
            return invalid("breaker", "trial_concurrency must be at least 1".into());
        }
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) || b.window.is_zero() {
            return invalid(
                "breaker",
                format!(
                    "failure_rate {} must be in (0, 1] and window non-zero",
                    b.failure_rate
                ),
            );
        }
        for (setting, value) in [
            ("probe_interval", c.probe_interval),
            ("reconnect_backoff_min", c.reconnect_backoff_min),
        ] {
            if value.is_zero() {
                return invalid(setting, "must be greater than zero".into());
            }
        }
        if c.reconnect_backoff_max < c.reconnect_backoff_min {
            return invalid(
                "reconnect_backoff_max",
                format!(
                    "{:?} is below reconnect_backoff_min ({:?})",
                    c.reconnect_backoff_max, c.reconnect_backoff_min
                ),
            );
        }
        Ok(Config {
            redacted_url: redact_url(&self.url),
            connection,
            name: c.name,
            max_size: c.max_size,
            min_idle: c.min_idle,
            checkout_timeout: c.checkout_timeout,
            connect_timeout: c.connect_timeout,
            response_timeout: c.response_timeout,
            validation_timeout: c.validation_timeout,
            validation_bypass: c.validation_bypass,
            idle_timeout: c.idle_timeout,
            max_lifetime: c.max_lifetime,
            lifetime_jitter: c.lifetime_jitter,
            keepalive: c.keepalive,
            tcp_user_timeout: c.tcp_user_timeout,
            startup: c.startup,
            breaker: c.breaker,
            probe_interval: c.probe_interval,
            reconnect_backoff_min: c.reconnect_backoff_min,
            reconnect_backoff_max: c.reconnect_backoff_max,
            on_connect: c.on_connect,
        })
    }
}

/// Each setting once: its doc, its type in `Config`, and what the builder's setter takes. Makes
/// a getter on [`Config`] and a setter on [`ConfigBuilder`] for each.
macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident: $ty:ty, $arg:ty;)*) => {
        impl Config {
            $( $(#[$doc])* pub fn $name(&self) -> $ty { self.$name } )*
        }

        impl ConfigBuilder {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $arg) -> Self {
                    self.config.$name = value.into();
                    self
                }
            )*
        }
    };
}

settings! {
    /// Most connections the pool holds (at least 1).
    max_size: u32, u32;
    /// Idle connections kept open when possible (at most `max_size`).
    min_idle: u32, u32;
    /// Budget for one whole checkout, validation and retries included.
    checkout_timeout: Duration, Duration;
    /// Budget for one connect: TCP plus the Redis handshake.
    connect_timeout: Duration, Duration;
    /// Longest wait for one command's reply.
    response_timeout: Duration, Duration;
    /// Longest wait for the validation PING (shorter than the checkout budget).
    validation_timeout: Duration, Duration;
    /// Connections that completed a command this recently are not PINGed at checkout;
    /// `Duration::ZERO` PINGs on every checkout.
    validation_bypass: Duration, Duration;
    /// Idle connections are closed after this; `None` keeps them open.
    idle_timeout: Option<Duration>, impl Into<Option<Duration>>;
    /// Connections are renewed after at most this; `None` keeps them.
    max_lifetime: Option<Duration>, impl Into<Option<Duration>>;
    /// Each lifetime is shortened by a random share up to this fraction (0.0 to 0.5).
    lifetime_jitter: f64, f64;
    /// TCP keepalive per socket; `None` leaves the system default.
    keepalive: Option<Keepalive>, impl Into<Option<Keepalive>>;
    /// Linux `TCP_USER_TIMEOUT`; `None` leaves the system default. Ignored elsewhere.
    tcp_user_timeout: Option<Duration>, impl Into<Option<Duration>>;
    /// What start-up does when Redis is unreachable.
    startup: StartupMode, StartupMode;
    /// When the circuit breaker trips and how it recovers.
    breaker: BreakerPolicy, BreakerPolicy;
    /// How often the prober checks a healthy Redis.
    probe_interval: Duration, Duration;
    /// The pause after a failed connect before the pool tries again (doubles per failure).
    reconnect_backoff_min: Duration, Duration;
    /// The longest pause between connect attempts while Redis is down.
    reconnect_backoff_max: Duration, Duration;
}

fn parse_url(raw: &str) -> Result<ConnectionInfo, ConfigError> {
    let bad = |reason: &str| ConfigError::InvalidUrl {
        reason: reason.to_owned(),
    };
    let parsed = url::Url::parse(raw.trim()).map_err(|e| ConfigError::InvalidUrl {
        reason: format!("{e}; expected redis://[user][:password@]host[:port][/db]"),
    })?;
    match parsed.scheme() {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" => {
            return Err(bad(
                "TLS (rediss://) is not supported yet; terminate TLS in a sidecar or use redis://",
            ));
        }
        other => {
            return Err(ConfigError::InvalidUrl {
                reason: format!("scheme {other:?} is not redis:// or redis+unix://"),
            });
        }
    }
    if parsed.scheme() == "redis" && parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host; expected redis://host:port"));
    }
    let info = parsed
        .as_str()
        .into_connection_info()
        .map_err(|e| ConfigError::InvalidUrl {
            // redis-rs details name the part at fault, never the whole URL.
            reason: e.detail().unwrap_or("not a Redis URL").to_owned(),
        })?;
    if let ConnectionAddr::TcpTls { .. } = info.addr() {
        return Err(bad("TLS is not supported yet"));
    }
    Ok(info)
}

/// Returns `url` with its password replaced by `***`, for logs, errors and metrics.
/// A string that does not parse as a URL is replaced whole: it might be a secret.
///
/// ```
/// use redis_guard::config::redact_url;
/// assert_eq!(redact_url("redis://user:pa55@host:6379"), "redis://user:***@host:6379");
/// assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
/// assert_eq!(redact_url("not a url pa55"), "<unparseable URL>");
/// ```
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL that has a password has a host to hold it.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-pa55";

    fn error_of(builder: ConfigBuilder) -> String {
        builder.build().expect_err("invalid").to_string()
    }

    #[test]
    fn every_bad_setting_says_what_to_fix() {
        let url = "redis://127.0.0.1";
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (
                Config::builder(url).max_size(0),
                "invalid setting max_size: must be at least 1",
            ),
            (
                Config::builder(url).max_size(4).min_idle(5),
                "min_idle (5) exceeds max_size (4); lower min_idle or raise max_size",
            ),
            (
                Config::builder(url).checkout_timeout(Duration::ZERO),
                "invalid setting checkout_timeout: must be greater than zero",
            ),
            (
                Config::builder(url).connect_timeout(Duration::ZERO),
                "invalid setting connect_timeout: must be greater than zero",
            ),
            (
                Config::builder(url).response_timeout(Duration::ZERO),
                "invalid setting response_timeout: must be greater than zero",
            ),
            (
                Config::builder(url).validation_timeout(Duration::from_secs(2)),
                "make it shorter than checkout_timeout",
            ),
            (
                Config::builder(url).idle_timeout(Duration::ZERO),
                "idle_timeout: must be greater than zero, or None to disable",
            ),
            (
                Config::builder(url).max_lifetime(Duration::ZERO),
                "max_lifetime: must be greater than zero, or None to disable",
            ),
            (
                Config::builder(url).lifetime_jitter(0.9),
                "0.9 is outside 0.0 to 0.5",
            ),
            (
                Config::builder(url).keepalive(Keepalive {
                    retries: 0,
                    ..Keepalive::default()
                }),
                "idle, interval and retries must be non-zero",
            ),
            (Config::builder(url).name(""), "name: must be non-empty"),
            (
                Config::builder(url).startup(StartupMode::WaitFor(Duration::ZERO)),
                "WaitFor needs a non-zero duration",
            ),
            (
                Config::builder(url).breaker(BreakerPolicy {
                    failure_rate: 1.5,
                    ..BreakerPolicy::default()
                }),
                "failure_rate 1.5 must be in (0, 1]",
            ),
            (
                Config::builder(url).breaker(BreakerPolicy {
                    consecutive_failures: 0,
                    ..BreakerPolicy::default()
                }),
                "consecutive_failures, min_calls and trial_successes must be at least 1",
            ),
            (
                Config::builder(url).reconnect_backoff_max(Duration::from_millis(10)),
                "is below reconnect_backoff_min",
            ),
        ];
        for (builder, expected) in cases {
            let message = error_of(builder);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn bad_urls_are_rejected_without_repeating_them() {
        let cases = [
            (
                format!("localhost:{SECRET}"),
                "scheme \"localhost\" is not redis://",
            ),
            (
                format!("http://u:{SECRET}@host"),
                "is not redis:// or redis+unix://",
            ),
            (
                format!("rediss://u:{SECRET}@host"),
                "TLS (rediss://) is not supported yet",
            ),
            (format!("redis://:{SECRET}@"), "invalid Redis URL"),
            (format!("not a url {SECRET}"), "expected redis://"),
            ("redis://host:99999".to_owned(), "invalid Redis URL"),
        ];
        for (url, expected) in cases {
            let message = error_of(Config::builder(url.clone()));
            assert!(
                message.contains(expected),
                "{url}: {message:?} lacks {expected:?}"
            );
            assert!(!message.contains(SECRET), "{message:?} leaks the password");
        }
    }

    #[test]
    fn password_never_appears_in_debug_or_redacted_url() {
        let url = format!("redis://user:{SECRET}@10.0.0.1:6380/2");
        let builder = Config::builder(url.clone());
        assert!(!format!("{builder:?}").contains(SECRET));
        let config = builder.build().unwrap();
        assert_eq!(config.redacted_url(), "redis://user:***@10.0.0.1:6380/2");
        assert!(!format!("{config:?}").contains(SECRET));
        assert!(!format!("{config:#?}").contains(SECRET));
        // The password still reaches the handshake.
        assert_eq!(config.connection.redis_settings().password(), Some(SECRET));
        assert_eq!(config.connection.redis_settings().db(), 2);
    }

    #[test]
    fn from_env_reads_every_variable_and_names_the_bad_one() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let config = Config::from_lookup(env(&[
            ("REDIS_URL", "redis://127.0.0.1:7000"),
            ("REDIS_GUARD_POOL_NAME", "sessions"),
            ("REDIS_GUARD_MAX_SIZE", "32"),
            ("REDIS_GUARD_MIN_IDLE", "4"),
            ("REDIS_GUARD_CHECKOUT_TIMEOUT_MS", "2000"),
            ("REDIS_GUARD_CONNECT_TIMEOUT_MS", "300"),
            ("REDIS_GUARD_RESPONSE_TIMEOUT_MS", "700"),
            ("REDIS_GUARD_VALIDATION_TIMEOUT_MS", "100"),
            ("REDIS_GUARD_VALIDATION_BYPASS_MS", "0"),
        ]))
        .unwrap();
        assert_eq!(config.name(), "sessions");
        assert_eq!((config.max_size(), config.min_idle()), (32, 4));
        assert_eq!(config.checkout_timeout(), Duration::from_secs(2));
        assert_eq!(config.connect_timeout(), Duration::from_millis(300));
        assert_eq!(config.response_timeout(), Duration::from_millis(700));
        assert_eq!(config.validation_timeout(), Duration::from_millis(100));
        assert_eq!(config.validation_bypass(), Duration::ZERO);

        let missing = Config::from_lookup(env(&[])).unwrap_err().to_string();
        assert_eq!(
            missing,
            "invalid setting REDIS_URL: not set; set it to redis://host:port"
        );
        let bad = Config::from_lookup(env(&[
            ("REDIS_URL", "redis://127.0.0.1"),
            ("REDIS_GUARD_MAX_SIZE", "ten"),
        ]))
        .unwrap_err()
        .to_string();
        assert_eq!(
            bad,
            "invalid setting REDIS_GUARD_MAX_SIZE: \"ten\" is not a whole number"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::builder("redis://127.0.0.1").build().unwrap();
        assert_eq!(config.name(), defaults::NAME);
        assert_eq!(config.max_size(), defaults::MAX_SIZE);
        assert_eq!(config.checkout_timeout(), defaults::CHECKOUT_TIMEOUT);
        assert_eq!(config.validation_bypass(), defaults::VALIDATION_BYPASS);
        assert_eq!(config.idle_timeout(), Some(defaults::IDLE_TIMEOUT));
        assert_eq!(config.startup(), StartupMode::Lazy);
        assert_eq!(config.keepalive(), Some(Keepalive::default()));
    }
}
