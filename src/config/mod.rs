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
//!
//! The module has three parts: this file (the settings, written once in `settings!`, the
//! builder and validation against what the kernel and the clock accept), `env.rs` (reading
//! them from the environment) and `url.rs` (parsing and redacting Redis URLs).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionInfo, RedisFuture};

use crate::breaker::BreakerPolicy;

pub mod defaults;
mod env;
mod hook;
mod sentinel;
mod url;

pub use hook::{ConnectHook, SetUpConnection};
pub(crate) use sentinel::is_host;
pub use sentinel::{DEFAULT_SENTINEL_PORT, Sentinel};
pub use url::redact_url;

#[cfg(feature = "tls")]
pub use crate::tls::TlsSettings;

pub use crate::clock::MAX_DURATION;
/// The most connections a pool may hold: Redis's default `maxclients`.
pub const MAX_POOL_SIZE: u32 = 10_000;
/// The smallest `max_reply_size`: the pool's own largest reply (`COMMAND`, read once to learn
/// which commands only read, about 100 KB on Redis 7) fits ten times over.
pub const MIN_REPLY_SIZE: u64 = 1024 * 1024;
/// The largest `max_reply_size`: a client that may buffer more per connection has no bound
/// worth the name.
pub const MAX_REPLY_SIZE: u64 = 4 * 1024 * 1024 * 1024;

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
    /// Retry at the reconnect pace until one connection succeeds or the duration runs out
    /// (`Duration::MAX`: until it succeeds).
    WaitFor(Duration),
    /// Make one connection attempt and fail if it does not succeed.
    FailFast,
}

/// How the pool's connections serve callers.
///
/// ```
/// use redis_guard::{Config, PoolMode};
///
/// let config = Config::builder("redis://127.0.0.1:6379")
///     .mode(PoolMode::Shared)
///     .shared_connections(2)
///     .build()
///     .unwrap();
/// assert_eq!(config.mode(), PoolMode::Shared);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum PoolMode {
    /// Each checkout holds a connection of its own until it is dropped, as bb8 and deadpool
    /// hand them out: one command in flight per connection.
    #[default]
    Exclusive,
    /// Plain commands from every checkout are pipelined over
    /// [`shared_connections`](ConfigBuilder::shared_connections) multiplexed connections, as
    /// redis-rs's `ConnectionManager` does, with the same guarantees as exclusive connections
    /// (a closed socket is never used, one that stops answering is replaced, reads are sent
    /// again after a connection failure). A command that needs a connection of its own (a
    /// transaction, `WATCH`, a blocking command, `SELECT` and other session state) moves the
    /// checkout onto an exclusive connection for the rest of its life, decided from the
    /// command itself.
    Shared,
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
        /// The builder method, or the environment variable that was set.
        setting: String,
        /// What is wrong and what would work.
        reason: String,
    },
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
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

/// A validated pool configuration. Build one with [`Config::builder`] or [`Config::from_env`].
///
/// `Debug` and [`Config::redacted_url`] never show a credential.
#[derive(Clone)]
pub struct Config {
    /// The Redis nodes' settings; under Sentinel its address is a placeholder: the primary's
    /// is asked for on every connect.
    pub(crate) connection: ConnectionInfo,
    /// Where to ask for the primary, for a pool under Sentinel.
    pub(crate) sentinel: Option<Arc<Sentinel>>,
    redacted_url: String,
    name: String,
    pub(crate) settings: Settings,
    pub(crate) on_connect: Option<ConnectHook>,
    /// TLS, for `rediss://` URLs or [`ConfigBuilder::tls`].
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsClient>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted_url)
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("on_connect", &self.on_connect.as_ref().map(|_| "hook"))
            .field("tls", &self.tls_shown())
            .finish()
    }
}

impl Config {
    /// Starts a builder for the Redis at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path[?db=N&user=U&pass=P]`). Every other setting has a default from
    /// [`defaults`].
    pub fn builder(url: impl Into<String>) -> ConfigBuilder {
        Self::builder_for(Target::Url(url.into()))
    }

    /// Starts a builder for the primary that `sentinel` knows: the builder form of a
    /// `redis+sentinel://` URL (see [`Sentinel`]).
    ///
    /// ```
    /// use redis_guard::config::Sentinel;
    /// let config = redis_guard::Config::sentinel(
    ///     Sentinel::new("mymaster").sentinel("10.0.0.1", 26379).sentinel("10.0.0.2", 26379),
    /// )
    /// .name("cache")
    /// .build()
    /// .unwrap();
    /// assert_eq!(config.name(), "cache");
    /// ```
    pub fn sentinel(sentinel: Sentinel) -> ConfigBuilder {
        Self::builder_for(Target::Sentinel(sentinel))
    }

    fn builder_for(target: Target) -> ConfigBuilder {
        ConfigBuilder {
            target,
            name: defaults::NAME.to_owned(),
            settings: Settings::default(),
            on_connect: None,
            #[cfg(feature = "tls")]
            tls: None,
            env: None,
        }
    }

    /// Reads the configuration from the environment: `REDIS_URL` (required), and for every
    /// setting an optional `REDIS_GUARD_*` variable (see the README's table): for example
    /// `REDIS_GUARD_POOL_NAME`, `REDIS_GUARD_MAX_SIZE`, `REDIS_GUARD_CHECKOUT_TIMEOUT_MS`,
    /// `REDIS_GUARD_IDLE_TIMEOUT_MS` (`none` to disable), `REDIS_GUARD_STARTUP`
    /// (`lazy`, `fail_fast`, `wait_for:<ms>`), and for TLS `REDIS_GUARD_TLS_CA_FILE`,
    /// `REDIS_GUARD_TLS_CERT_FILE` with `REDIS_GUARD_TLS_KEY_FILE`, `REDIS_GUARD_TLS_SERVER_NAME`
    /// and `REDIS_GUARD_TLS_INSECURE` (for a `rediss://` URL: only the scheme turns TLS on,
    /// and TLS variables with a `redis://` URL are an error). An error names the variable to
    /// fix, and a
    /// `REDIS_GUARD_*` variable that names no setting is an error too (with the closest that
    /// does). [`Config::builder_from_env`] lets code add to it.
    ///
    /// ```no_run
    /// let config = redis_guard::Config::from_env()?;
    /// # Ok::<(), redis_guard::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::builder_from_env()?.build()
    }

    /// [`Config::from_env`] with every variable name preceded by `prefix`, for a service with
    /// several pools: `from_env_prefixed("SESSIONS_")` reads `SESSIONS_REDIS_URL`,
    /// `SESSIONS_REDIS_GUARD_MAX_SIZE`, ... The pool is named after the prefix (`sessions`)
    /// unless `SESSIONS_REDIS_GUARD_POOL_NAME` names it.
    ///
    /// ```no_run
    /// let sessions = redis_guard::Config::from_env_prefixed("SESSIONS_")?;
    /// assert_eq!(sessions.name(), "sessions");
    /// # Ok::<(), redis_guard::ConfigError>(())
    /// ```
    pub fn from_env_prefixed(prefix: &str) -> Result<Config, ConfigError> {
        Self::builder_from_env_prefixed(prefix)?.build()
    }

    /// The environment's settings (as [`Config::from_env`] reads them) in a builder, for code
    /// to add what the environment cannot say: a set-up hook, a name, TLS files of its own.
    /// What code sets wins over the environment; errors from `build()` still name the
    /// variables that were set.
    ///
    /// ```no_run
    /// let config = redis_guard::Config::builder_from_env()?
    ///     .on_connect(|conn| {
    ///         Box::pin(async move { redis::cmd("SELECT").arg(2).query_async::<()>(conn).await })
    ///     })
    ///     .build()?;
    /// # Ok::<(), redis_guard::ConfigError>(())
    /// ```
    pub fn builder_from_env() -> Result<ConfigBuilder, ConfigError> {
        Self::builder_from_env_prefixed("")
    }

    /// [`Config::builder_from_env`] for the variables preceded by `prefix` (see
    /// [`Config::from_env_prefixed`]).
    ///
    /// ```no_run
    /// let sessions = redis_guard::Config::builder_from_env_prefixed("SESSIONS_")?
    ///     .max_size(4)
    ///     .build()?;
    /// # Ok::<(), redis_guard::ConfigError>(())
    /// ```
    pub fn builder_from_env_prefixed(prefix: &str) -> Result<ConfigBuilder, ConfigError> {
        let vars: Vec<_> = std::env::vars_os().collect();
        env::builder_from_vars(prefix, &vars)
    }

    /// The Redis URL with every credential replaced by `***`: safe to log.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The pool's name: the `pool` label on every metric and the check name in `/readyz`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TLS as `Debug` shows it: off, verified, or insecure.
    fn tls_shown(&self) -> &'static str {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return if tls.is_insecure() {
                "insecure (certificates not verified)"
            } else {
                "verified"
            };
        }
        "off"
    }

    /// Whether TLS is on without verifying the server ([`TlsSettings::insecure`](crate::config)).
    pub(crate) fn verifies_no_certificate(&self) -> bool {
        #[cfg(feature = "tls")]
        return self
            .tls
            .as_ref()
            .is_some_and(crate::tls::TlsClient::is_insecure);
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Whether connections use TLS (`rediss://`, or [`ConfigBuilder::tls`]).
    pub fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
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
    target: Target,
    name: String,
    settings: Settings,
    on_connect: Option<ConnectHook>,
    #[cfg(feature = "tls")]
    tls: Option<TlsSettings>,
    /// Set when the builder came from the environment: errors then name variables.
    env: Option<env::EnvOrigin>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL that does not pass validation is not shown at all: a password typed in the
        // wrong place would be shown as it is.
        let url = match &self.target {
            Target::Url(raw) => match parse_target(raw) {
                Ok(_) => redact_url(raw),
                Err(_) => "<invalid URL>".to_owned(),
            },
            Target::Sentinel(sentinel) => sentinel.redacted(false),
        };
        let mut shown = f.debug_struct("ConfigBuilder");
        shown
            .field("url", &url)
            .field("name", &self.name)
            .field("settings", &self.settings);
        #[cfg(feature = "tls")]
        shown.field("tls", &self.tls);
        shown.finish_non_exhaustive()
    }
}

impl ConfigBuilder {
    /// The pool's name, used as the `pool` metric label, the readiness check name and the
    /// connections' client name: 1 to 64 printable characters.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
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
        F: for<'c> Fn(&'c mut SetUpConnection<'c>) -> RedisFuture<'c, ()> + Send + Sync + 'static,
    {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// Uses TLS with `settings` (a custom CA, a client certificate, or `insecure`), also for a
    /// `redis://` URL; a `rediss://` URL alone uses the system's roots.
    ///
    /// ```
    /// use redis_guard::config::TlsSettings;
    /// let config = redis_guard::Config::builder("rediss://redis.example.com:6380")
    ///     .tls(TlsSettings { insecure: true, ..TlsSettings::default() })
    ///     .build()
    ///     .unwrap();
    /// assert!(config.uses_tls());
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, settings: TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }

    /// Validates every setting and returns the [`Config`], or the first problem found.
    pub fn build(mut self) -> Result<Config, ConfigError> {
        match self.env.take() {
            Some(origin) => self.validate().map_err(|e| origin.rename(e)),
            None => self.validate(),
        }
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let (
            url::ParsedUrl {
                info: connection,
                tls,
            },
            sentinel,
            redacted_url,
        ) = match &self.target {
            Target::Url(raw) => {
                let (parsed, sentinel) = parse_target(raw)?;
                (parsed, sentinel, redact_url(raw))
            }
            Target::Sentinel(sentinel) => {
                sentinel.validate()?;
                (
                    sentinel_nodes(sentinel, None),
                    Some(sentinel.clone()),
                    sentinel.redacted(false),
                )
            }
        };
        #[cfg(feature = "tls")]
        let tls = match (tls, self.tls) {
            (None, None) => None,
            (from_url, settings) => {
                let settings = settings.unwrap_or_default();
                if from_url == Some(true) && !settings.insecure {
                    return Err(url::invalid(
                        "#insecure alone does not turn certificate verification off; set \
                         REDIS_GUARD_TLS_INSECURE=true (or TlsSettings::insecure) as well, or \
                         remove #insecure to verify the server",
                    ));
                }
                if !matches!(connection.addr(), redis::ConnectionAddr::Tcp(..)) {
                    return Err(invalid("tls", "TLS needs a TCP address, not a unix socket"));
                }
                Some(
                    crate::tls::TlsClient::new(&settings)
                        .map_err(|(setting, reason)| invalid(setting, reason))?,
                )
            }
        };
        #[cfg(feature = "tls")]
        let redacted_url = shown_with_tls(
            redacted_url,
            tls.as_ref().map(crate::tls::TlsClient::is_insecure),
        );
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        validate_name(&self.name)?;
        self.settings.validate()?;
        Ok(Config {
            redacted_url,
            connection,
            sentinel: sentinel.map(Arc::new),
            name: self.name,
            settings: self.settings,
            on_connect: self.on_connect,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

/// A pool name becomes a metric label, a readiness check's name and `CLIENT SETNAME`: no
/// control characters, and no invisible format characters (Unicode category Cf, such as
/// U+202E, which reverses the text shown after it).
fn validate_name(name: &str) -> Result<(), ConfigError> {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}'
                | '\u{8e2}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}' | '\u{110bd}' | '\u{110cd}' | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}' | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}')
    };
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(invisible) {
        return Err(invalid(
            "name",
            "must be 1 to 64 printable characters (no control or invisible format characters)",
        ));
    }
    Ok(())
}

/// The redacted URL as the pool really connects: `rediss` when TLS is on (also by
/// [`ConfigBuilder::tls`] on a `redis://` URL), and `#insecure` when nothing is verified.
#[cfg(feature = "tls")]
fn shown_with_tls(redacted: String, insecure: Option<bool>) -> String {
    let Some(insecure) = insecure else {
        return redacted;
    };
    let mut shown = match redacted.split_once("://") {
        Some(("redis", rest)) => format!("rediss://{rest}"),
        Some(("redis+sentinel", rest)) => format!("rediss+sentinel://{rest}"),
        _ => redacted,
    };
    if insecure && !shown.ends_with("#insecure") {
        shown.push_str("#insecure");
    }
    shown
}

/// What a pool connects to: a URL, or a primary found through Sentinel.
#[derive(Clone)]
enum Target {
    Url(String),
    Sentinel(Sentinel),
}

/// Parses a URL of any scheme: a sentinel URL gives the nodes' settings and the sentinels.
fn parse_target(raw: &str) -> Result<(url::ParsedUrl, Option<Sentinel>), ConfigError> {
    match sentinel::parse_sentinel_url(raw)? {
        Some(parsed) => Ok((
            sentinel_nodes(&parsed.sentinel, parsed.tls),
            Some(parsed.sentinel),
        )),
        None => Ok((url::parse_url(raw)?, None)),
    }
}

/// The nodes' settings under Sentinel, at a placeholder address.
fn sentinel_nodes(sentinel: &Sentinel, tls: Option<bool>) -> url::ParsedUrl {
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
        String::new(),
        0,
    ))
    .expect("an address is always a connection info")
    .set_redis_settings(sentinel.redis.clone());
    url::ParsedUrl { info, tls }
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
            const ENV_SUFFIXES: &'static [&'static str] = &[$($env),*];

            /// Sets each setting whose variable `lookup` finds, parsed by its type.
            /// `lookup` takes a variable's suffix and the setting's name, and returns the value
            /// and the variable's full name if it is set.
            fn read_env(&mut self, lookup: &mut env::Lookup<'_>) -> Result<(), ConfigError> {
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
    fn validate(&self) -> Result<(), ConfigError> {
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
            if value.is_zero() || value > MAX_DURATION {
                return Err(invalid(
                    setting,
                    format!("{value:?} must be greater than zero and at most a year"),
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

#[cfg(test)]
mod tests;
