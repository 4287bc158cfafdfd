//! Reading a [`Config`] from the environment.
//!
//! `{prefix}REDIS_URL` is required; every setting has an optional `{prefix}REDIS_GUARD_*`
//! variable (its suffix is written next to the setting in `mod.rs`, TLS's are [`TLS_VARIABLES`]).
//! Errors name the variable that was set, never the builder method, and a validation error about
//! a setting that came from the environment names its variable. A `{prefix}REDIS_GUARD_*`
//! variable that names no setting is refused, with the closest one that does: a misspelt
//! variable silently ignored is a setting silently at its default. Values are never repeated in
//! an error: any of them may be a secret pasted into the wrong variable.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use super::{Config, ConfigBuilder, ConfigError, Keepalive, PoolMode, StartupMode, invalid};
use crate::breaker::BreakerPolicy;

/// What [`super::Settings::read_env`] asks for each setting: `(suffix, setting name)` ->
/// `(value, full variable name)` when the variable is set.
pub(super) type Lookup<'a> =
    dyn FnMut(&str, &'static str) -> Result<Option<(String, String)>, ConfigError> + 'a;

/// The variables after `REDIS_GUARD_` that configure TLS (feature `tls`).
pub(super) const TLS_VARIABLES: &[&str] = &[
    "TLS_CA_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_SERVER_NAME",
    "TLS_INSECURE",
];
/// The pool's name, after `REDIS_GUARD_`.
const NAME_VARIABLE: &str = "POOL_NAME";

/// Where a builder's settings came from, so that `build()` names variables, not methods.
#[derive(Debug, Clone, Default)]
pub(super) struct EnvOrigin {
    url_variable: String,
    /// `(setting, variable)` for each setting a variable set.
    settings: Vec<(&'static str, String)>,
}

impl EnvOrigin {
    /// `error` in terms of the variables that were set.
    pub(super) fn rename(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid { setting, reason } => {
                name_variables(setting, reason, &self.settings)
            }
            ConfigError::InvalidUrl { reason } => ConfigError::InvalidUrl {
                reason: format!("{reason} (in {})", self.url_variable),
            },
        }
    }
}

/// A builder from `vars` (as [`std::env::vars_os`] lists them), each name preceded by `prefix`.
pub(super) fn builder_from_vars(
    prefix: &str,
    vars: &[(OsString, OsString)],
) -> Result<ConfigBuilder, ConfigError> {
    let read = |variable: &str| -> Result<Option<String>, ConfigError> {
        vars.iter()
            .find(|(name, _)| name.as_os_str() == OsStr::new(variable))
            .map(|(_, value)| {
                value
                    .clone()
                    .into_string()
                    .map_err(|_| invalid(variable, "is not valid UTF-8"))
            })
            .transpose()
    };
    refuse_unknown(prefix, vars)?;
    let url_variable = format!("{prefix}REDIS_URL");
    let url = read(&url_variable)?.ok_or_else(|| {
        invalid(
            &url_variable,
            "not set; set it to redis://host:port (or redis+unix:///path)",
        )
    })?;
    let url_has_tls = url.trim_start().to_ascii_lowercase().starts_with("rediss");
    let mut builder = Config::builder(url).name(name_of_prefix(prefix));
    let mut origin = EnvOrigin {
        url_variable,
        settings: Vec::new(),
    };
    let name_variable = format!("{prefix}REDIS_GUARD_{NAME_VARIABLE}");
    if let Some(name) = read(&name_variable)? {
        builder = builder.name(name);
    }
    origin.settings.push(("name", name_variable));
    builder.settings.read_env(&mut |suffix, setting| {
        let variable = format!("{prefix}REDIS_GUARD_{suffix}");
        let value = read(&variable)?;
        if value.is_some() {
            origin.settings.push((setting, variable.clone()));
        }
        Ok(value.map(|value| (value, variable)))
    })?;
    let mut tls = Vec::new();
    for suffix in TLS_VARIABLES {
        let variable = format!("{prefix}REDIS_GUARD_{suffix}");
        if let Some(value) = read(&variable)? {
            origin
                .settings
                .push((tls_setting(suffix), variable.clone()));
            tls.push((*suffix, variable, value));
        }
    }
    // The URL's scheme alone says whether to use TLS: a platform that sets TLS variables for
    // every service must not turn a plain `redis://` pool into a TLS one. Variables that would
    // configure TLS for a URL without it are refused; a `false` changes nothing.
    tls.retain(|(suffix, _, value)| {
        *suffix != "TLS_INSECURE" || bool::from_env(value) != Ok(false)
    });
    if let Some((_, variable, _)) = tls.first() {
        if !url_has_tls {
            return Err(invalid(
                variable,
                format!(
                    "configures TLS, but {} is not a rediss:// URL; use rediss:// (or \
                     rediss+sentinel://) to connect with TLS, or unset it",
                    origin.url_variable
                ),
            ));
        }
        builder = with_tls(builder, prefix, &tls)?;
    }
    builder.env = Some(origin);
    Ok(builder)
}

/// The setting a TLS variable sets, as the TLS errors of `build()` name it.
fn tls_setting(suffix: &str) -> &'static str {
    match suffix {
        "TLS_CA_FILE" => "tls.ca_file",
        "TLS_CERT_FILE" => "tls.client_cert",
        "TLS_KEY_FILE" => "tls.client_key",
        "TLS_SERVER_NAME" => "tls.server_name",
        _ => "tls.insecure",
    }
}

/// A prefixed pool is named after its prefix (`SESSIONS_` names `sessions`), so that two pools
/// from the environment keep their metrics and readiness checks apart.
fn name_of_prefix(prefix: &str) -> String {
    let name = prefix.trim_end_matches('_').to_ascii_lowercase();
    if name.is_empty() {
        super::defaults::NAME.to_owned()
    } else {
        name
    }
}

/// Refuses a `{prefix}REDIS_GUARD_*` variable that names no setting.
fn refuse_unknown(prefix: &str, vars: &[(OsString, OsString)]) -> Result<(), ConfigError> {
    let start = format!("{prefix}REDIS_GUARD_");
    let known = || {
        super::Settings::ENV_SUFFIXES
            .iter()
            .chain(TLS_VARIABLES)
            .chain([NAME_VARIABLE].iter())
    };
    for (name, _) in vars {
        // Variable names are case-sensitive: `redis_guard_max_size` would be ignored.
        if let Some(name) = name.to_str()
            && let Some(meant) = known()
                .map(|known| format!("{start}{known}"))
                .find(|full| full != name && full.eq_ignore_ascii_case(name))
        {
            return Err(invalid(
                name,
                format!(
                    "is not a setting of redis-guard (names are case-sensitive); did you mean {meant}?"
                ),
            ));
        }
        let Some(suffix) = name.to_str().and_then(|name| name.strip_prefix(&start)) else {
            continue;
        };
        if !known().any(|known| *known == suffix) {
            // A name that holds the one typed (`CHECKOUT_TIMEOUT` for `CHECKOUT_TIMEOUT_MS`)
            // is the likeliest meaning, then the fewest edits.
            let closest = known()
                .min_by_key(|known| {
                    let contained = known.contains(suffix) || suffix.contains(*known);
                    (!contained, edit_distance(known, suffix))
                })
                .expect("there are settings");
            return Err(invalid(
                &format!("{start}{suffix}"),
                format!("is not a setting of redis-guard; did you mean {start}{closest}?"),
            ));
        }
    }
    Ok(())
}

/// Levenshtein distance, for the suggestion in an unknown variable's error.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// TLS from its variables: `(suffix, variable, value)` for each one set.
#[cfg(feature = "tls")]
fn with_tls(
    builder: ConfigBuilder,
    prefix: &str,
    set: &[(&str, String, String)],
) -> Result<ConfigBuilder, ConfigError> {
    let mut settings = crate::tls::TlsSettings::default();
    let value = |suffix: &str| set.iter().find(|(s, ..)| *s == suffix);
    if let Some((_, _, file)) = value("TLS_CA_FILE") {
        settings.ca_file = Some(file.into());
    }
    match (value("TLS_CERT_FILE"), value("TLS_KEY_FILE")) {
        (Some((_, _, cert)), Some((_, _, key))) => {
            settings.client_cert = Some((cert.into(), key.into()));
        }
        (Some((_, variable, _)), None) | (None, Some((_, variable, _))) => {
            return Err(invalid(
                variable,
                format!(
                    "a client certificate needs both {prefix}REDIS_GUARD_TLS_CERT_FILE and \
                     {prefix}REDIS_GUARD_TLS_KEY_FILE; set the other one too"
                ),
            ));
        }
        (None, None) => {}
    }
    if let Some((_, _, name)) = value("TLS_SERVER_NAME") {
        settings.server_name = Some(name.clone());
    }
    if let Some((_, variable, raw)) = value("TLS_INSECURE") {
        settings.insecure = bool::from_env(raw).map_err(|reason| invalid(variable, reason))?;
    }
    Ok(builder.tls(settings))
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    _builder: ConfigBuilder,
    _prefix: &str,
    set: &[(&str, String, String)],
) -> Result<ConfigBuilder, ConfigError> {
    Err(invalid(
        &set[0].1,
        "TLS needs redis-guard's `tls` feature; enable it in Cargo.toml",
    ))
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
        // Only a setting's own identifier (`checkout_timeout`, `tls.ca_file`), as a whole
        // word: a plain word (`name`) or part of a path (`/etc/hostname_certs`) is left alone.
        if *name != setting
            && name.contains(['_', '.'])
            && let Some(replaced) = replace_word(&reason, name, variable)
        {
            reason = replaced;
            named.get_or_insert_with(|| variable.clone());
        }
    }
    ConfigError::Invalid {
        setting: named.unwrap_or(setting),
        reason,
    }
}

/// `text` with every whole-word `word` (not inside a longer identifier or path) replaced by
/// `with`; `None` if there is none.
fn replace_word(text: &str, word: &str, with: &str) -> Option<String> {
    let is_part = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut replaced = false;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        // A full stop ends a sentence, not a word.
        let after_is_part = after.is_some_and(|c| is_part(c) && c != '.');
        out.push_str(&rest[..at]);
        if before.is_some_and(is_part) || after_is_part {
            out.push_str(word);
        } else {
            out.push_str(with);
            replaced = true;
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    replaced.then_some(out)
}

/// A setting's type, read from its variable. The error says what was expected, never the value.
pub(super) trait FromEnv: Sized {
    fn from_env(raw: &str) -> Result<Self, String>;
}

/// A whole number; one too large for its type is called that, not "not a number".
fn whole<T: TryFrom<u64>>(raw: &str) -> Result<T, String> {
    let raw = raw.trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the value is not a whole number".to_owned());
    }
    raw.parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| "the value is too large".to_owned())
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
            _ => Err("the value is not true or false".to_owned()),
        }
    }
}

impl FromEnv for f64 {
    fn from_env(raw: &str) -> Result<Self, String> {
        raw.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| "the value is not a number".to_owned())
    }
}

/// Milliseconds, as the variable's `_MS` says; the error names the unit.
impl FromEnv for Duration {
    fn from_env(raw: &str) -> Result<Self, String> {
        whole(raw)
            .map(Duration::from_millis)
            .map_err(|e| format!("{e} of milliseconds (write 1500 for 1.5 s, no unit)"))
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
            .map_err(|e| format!("{e}, or none"))
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
            return Err(
                "the value is not IDLE_SECONDS,INTERVAL_SECONDS,RETRIES (e.g. 30,5,3) or none"
                    .to_owned(),
            );
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
            Err("the value is not exclusive or shared".to_owned())
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
            Err("the value is not lazy, fail_fast or wait_for:<milliseconds>".to_owned())
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
                .ok_or_else(|| "a part of the value is not key=value".to_owned())?;
            match key.trim() {
                "consecutive_failures" => policy.consecutive_failures = whole(value)?,
                "failure_rate" => policy.failure_rate = f64::from_env(value)?,
                "window_ms" => policy.window = Duration::from_env(value)?,
                "min_calls" => policy.min_calls = whole(value)?,
                "trial_successes" => policy.trial_successes = whole(value)?,
                "trial_concurrency" => policy.trial_concurrency = whole(value)?,
                _ => {
                    return Err("a key is not one of consecutive_failures, failure_rate, \
                                window_ms, min_calls, trial_successes, trial_concurrency"
                        .to_owned());
                }
            }
        }
        Ok(policy)
    }
}
