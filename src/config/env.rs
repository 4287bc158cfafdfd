//! Reading a [`Config`] from the environment.
//!
//! `{prefix}REDIS_URL` is required; every setting has an optional `{prefix}REDIS_GUARD_*`
//! variable (its suffix is written next to the setting in `mod.rs`). Errors name the variable
//! that was set, never the builder method, and a validation error about a setting that came
//! from the environment names its variable.

use std::ffi::OsString;
use std::time::Duration;

use super::{Config, ConfigError, Keepalive, PoolMode, StartupMode, invalid};
use crate::breaker::BreakerPolicy;

/// What [`super::Settings::read_env`] asks for each setting: `(suffix, setting name)` ->
/// `(value, full variable name)` when the variable is set.
pub(super) type Lookup<'a> =
    dyn FnMut(&str, &'static str) -> Result<Option<(String, String)>, ConfigError> + 'a;

/// Builds a config from the variables `get` finds, each name preceded by `prefix`.
pub(super) fn from_lookup(
    prefix: &str,
    get: impl Fn(&str) -> Option<OsString>,
) -> Result<Config, ConfigError> {
    let read = |variable: &str| -> Result<Option<String>, ConfigError> {
        get(variable)
            .map(|value| {
                value
                    .into_string()
                    .map_err(|_| invalid(variable, "is not valid UTF-8"))
            })
            .transpose()
    };
    let url_variable = format!("{prefix}REDIS_URL");
    let url = read(&url_variable)?.ok_or_else(|| {
        invalid(
            &url_variable,
            "not set; set it to redis://host:port (or redis+unix:///path)",
        )
    })?;
    let mut builder = Config::builder(url);
    let name_variable = format!("{prefix}REDIS_GUARD_POOL_NAME");
    if let Some(name) = read(&name_variable)? {
        builder = builder.name(name);
    }
    // Which settings came from which variable, to name the variable in validation errors.
    let mut from_env: Vec<(&'static str, String)> = vec![("name", name_variable)];
    builder.settings.read_env(&mut |suffix, setting| {
        let variable = format!("{prefix}REDIS_GUARD_{suffix}");
        let value = read(&variable)?;
        if value.is_some() {
            from_env.push((setting, variable.clone()));
        }
        Ok(value.map(|value| (value, variable)))
    })?;
    builder.build().map_err(|error| match error {
        ConfigError::Invalid { setting, reason } => name_variables(setting, reason, &from_env),
        ConfigError::InvalidUrl { reason } => ConfigError::InvalidUrl {
            reason: format!("{reason} (in {url_variable})"),
        },
    })
}

/// Rewrites a validation error in terms of the variables that were set: the setting at fault
/// becomes its variable, and so does any other setting the reason mentions. When the setting at
/// fault was not set but a setting it is checked against was (`validation_timeout` against
/// `REDIS_GUARD_CHECKOUT_TIMEOUT_MS`), the error names that variable.
fn name_variables(
    setting: String,
    mut reason: String,
    from_env: &[(&'static str, String)],
) -> ConfigError {
    let mut named = from_env
        .iter()
        .find(|(name, _)| *name == setting)
        .map(|(_, variable)| variable.clone());
    for (name, variable) in from_env {
        if *name != setting && reason.contains(name) {
            reason = reason.replace(name, variable);
            named.get_or_insert_with(|| variable.clone());
        }
    }
    ConfigError::Invalid {
        setting: named.unwrap_or(setting),
        reason,
    }
}

/// A setting's type, read from its variable. The error says what was expected; a value is
/// quoted only when short (these variables hold numbers and words, not secrets).
pub(super) trait FromEnv: Sized {
    fn from_env(raw: &str) -> Result<Self, String>;
}

fn quoted(raw: &str) -> String {
    if raw.chars().count() <= 32 {
        format!("{raw:?}")
    } else {
        "the value".to_owned()
    }
}

/// A whole number; one too large for its type is called that, not "not a number".
fn whole<T: TryFrom<u64>>(raw: &str) -> Result<T, String> {
    let raw = raw.trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a whole number", quoted(raw)));
    }
    raw.parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{} is too large", quoted(raw)))
}

impl FromEnv for u32 {
    fn from_env(raw: &str) -> Result<Self, String> {
        whole(raw)
    }
}

impl FromEnv for u64 {
    fn from_env(raw: &str) -> Result<Self, String> {
        whole(raw)
    }
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`).
impl FromEnv for bool {
    fn from_env(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("{} is not true or false", quoted(raw))),
        }
    }
}

impl FromEnv for f64 {
    fn from_env(raw: &str) -> Result<Self, String> {
        raw.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{} is not a number", quoted(raw)))
    }
}

/// Milliseconds.
impl FromEnv for Duration {
    fn from_env(raw: &str) -> Result<Self, String> {
        whole(raw).map(Duration::from_millis)
    }
}

fn disabled(raw: &str) -> bool {
    ["none", "off"]
        .iter()
        .any(|word| raw.trim().eq_ignore_ascii_case(word))
}

/// Milliseconds, or `none` / `off`.
impl FromEnv for Option<Duration> {
    fn from_env(raw: &str) -> Result<Self, String> {
        if disabled(raw) {
            return Ok(None);
        }
        Duration::from_env(raw)
            .map(Some)
            .map_err(|e| format!("{e}; expected milliseconds, or none"))
    }
}

/// `IDLE_SECONDS,INTERVAL_SECONDS,RETRIES` (e.g. `30,5,3`), or `none` / `off`.
impl FromEnv for Option<Keepalive> {
    fn from_env(raw: &str) -> Result<Self, String> {
        if disabled(raw) {
            return Ok(None);
        }
        let parts: Vec<&str> = raw.split(',').collect();
        let [idle, interval, retries] = parts[..] else {
            return Err(format!(
                "{} is not IDLE_SECONDS,INTERVAL_SECONDS,RETRIES (e.g. 30,5,3) or none",
                quoted(raw)
            ));
        };
        Ok(Some(Keepalive {
            idle: Duration::from_secs(whole(idle)?),
            interval: Duration::from_secs(whole(interval)?),
            retries: whole(retries)?,
        }))
    }
}

/// `exclusive` or `shared`.
impl FromEnv for PoolMode {
    fn from_env(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("exclusive") {
            Ok(PoolMode::Exclusive)
        } else if raw.eq_ignore_ascii_case("shared") {
            Ok(PoolMode::Shared)
        } else {
            Err(format!("{} is not exclusive or shared", quoted(raw)))
        }
    }
}

/// `lazy`, `fail_fast`, or `wait_for:<milliseconds>`.
impl FromEnv for StartupMode {
    fn from_env(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("lazy") {
            Ok(StartupMode::Lazy)
        } else if raw.eq_ignore_ascii_case("fail_fast") {
            Ok(StartupMode::FailFast)
        } else if let Some(ms) = raw
            .get(..9)
            .filter(|prefix| prefix.eq_ignore_ascii_case("wait_for:"))
            .map(|_| &raw[9..])
        {
            Duration::from_env(ms).map(StartupMode::WaitFor)
        } else {
            Err(format!(
                "{} is not lazy, fail_fast or wait_for:<milliseconds>",
                quoted(raw)
            ))
        }
    }
}

/// Comma-separated `key=value` pairs over the defaults, e.g.
/// `consecutive_failures=3,window_ms=30000`.
impl FromEnv for BreakerPolicy {
    fn from_env(raw: &str) -> Result<Self, String> {
        let mut policy = BreakerPolicy::default();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{} is not key=value", quoted(pair)))?;
            match key.trim() {
                "consecutive_failures" => policy.consecutive_failures = whole(value)?,
                "failure_rate" => policy.failure_rate = f64::from_env(value)?,
                "window_ms" => policy.window = Duration::from_env(value)?,
                "min_calls" => policy.min_calls = whole(value)?,
                "trial_successes" => policy.trial_successes = whole(value)?,
                "trial_concurrency" => policy.trial_concurrency = whole(value)?,
                other => {
                    return Err(format!(
                        "{} is not one of consecutive_failures, failure_rate, window_ms, \
                         min_calls, trial_successes, trial_concurrency",
                        quoted(other)
                    ));
                }
            }
        }
        Ok(policy)
    }
}
