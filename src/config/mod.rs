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
//! The module's parts: this file (`Config` and its builder), `settings.rs` (every setting
//! written once in `settings!`, and its validation against what the kernel and the clock
//! accept), `defaults.rs`, `env.rs` (reading them from the environment), `url.rs` (parsing
//! and redacting Redis URLs), `sentinel.rs` and `hook.rs` (the set-up hook).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionInfo, RedisFuture};

use crate::breaker::BreakerPolicy;

pub mod defaults;
mod env;
mod hook;
mod sentinel;
mod settings;

pub use settings::Keepalive;
pub(crate) use settings::Settings;
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

#[cfg(test)]
mod tests;
