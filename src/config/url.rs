//! Redis URLs: what redis-guard accepts, and how it shows one without its secrets.
//!
//! A URL is checked part by part before redis-rs reads it, so that every mistake gets a message
//! naming the part at fault, and no message ever repeats a value from the URL (any of them may
//! be a password typed in the wrong place). Credentials that redis-rs would silently ignore (a
//! `?password=` on a TCP URL, a user name with no password) are refused, not dropped: a service
//! must not run as Redis's `default` user while its logs suggest otherwise.

use redis::{ConnectionInfo, IntoConnectionInfo};

use super::ConfigError;

/// The forms the messages point to.
const TCP_FORM: &str = "redis://[user:password@]host[:port][/db]";
const UNIX_FORM: &str = "redis+unix:///path/to/socket[?db=N][&user=U&pass=P]";

/// Query parameters that carry credentials in some client's URL syntax.
pub(super) const CREDENTIAL_KEYS: &[&str] = &["pass", "password", "user", "username"];

pub(super) fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidUrl {
        reason: reason.into(),
    }
}

/// A checked URL: what redis-rs makes of it, and whether it asks for TLS.
pub(crate) struct ParsedUrl {
    pub(crate) info: ConnectionInfo,
    /// `Some(insecure)` for `rediss://` (`#insecure` skips certificate verification).
    pub(crate) tls: Option<bool>,
}

/// Parses and checks `raw`, then hands it to redis-rs.
pub(crate) fn parse_url(raw: &str) -> Result<ParsedUrl, ConfigError> {
    parse_checked(raw).map_err(|error| match error {
        // A password with `#`, `/` or `?` ends the user information early, and what is left
        // fails in ways that say nothing of the password (`empty host`).
        ConfigError::InvalidUrl { reason } if userinfo_needs_encoding(raw) => invalid(format!(
            "{reason}; if the password (or user) holds # / ? or @, percent-encode them as \
             %23 %2F %3F %40"
        )),
        other => other,
    })
}

/// Whether the text before the URL's last `@` holds a character that ends user information.
fn userinfo_needs_encoding(raw: &str) -> bool {
    let Some((_, rest)) = raw.split_once("://") else {
        return false;
    };
    rest.rfind('@')
        .is_some_and(|at| rest[..at].contains(['#', '/', '?']))
}

fn parse_checked(raw: &str) -> Result<ParsedUrl, ConfigError> {
    let mut url = url::Url::parse(raw.trim())
        .map_err(|e| invalid(format!("{e}; expected {TCP_FORM} or {UNIX_FORM}")))?;
    let tls = match (url.scheme(), url.fragment()) {
        ("rediss", Some("insecure")) => Some(true),
        ("rediss", None) => Some(false),
        ("rediss", Some(_)) => {
            return Err(invalid(
                "the only fragment a rediss:// URL takes is #insecure (no certificate check)",
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(
                "a fragment (#...) has no meaning in a Redis URL here; remove it",
            ));
        }
        (_, None) => None,
    };
    match url.scheme() {
        "redis" | "rediss" => check_tcp(&url)?,
        "redis+unix" | "unix" => check_unix(&url)?,
        other => {
            return Err(invalid(format!(
                "scheme {other:?} is not redis://, rediss://, redis+unix:// or redis+sentinel://"
            )));
        }
    }
    if tls.is_some() {
        if !cfg!(feature = "tls") {
            return Err(invalid(
                "rediss:// needs redis-guard's `tls` feature; enable it in Cargo.toml",
            ));
        }
        // The pool runs TLS itself, over its own socket: redis-rs sees a plain address.
        url.set_fragment(None);
        let _ = url.set_scheme("redis");
    }
    let info = url
        .as_str()
        .into_connection_info()
        // Every part redis-rs reads was checked above; its messages may quote a value.
        .map_err(|e| invalid(format!("redis-rs refused it ({:?})", e.kind())))?;
    Ok(ParsedUrl { info, tls })
}

fn check_tcp(url: &url::Url) -> Result<(), ConfigError> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("no host; expected {TCP_FORM}")));
    }
    decoded(url.username(), "the user name")?;
    if let Some(password) = url.password() {
        decoded(password, "the password")?;
    }
    if !url.username().is_empty() && url.password().is_none() {
        return Err(invalid(
            "a user name without a password: Redis would be used as its default user; write \
             redis://user:PASSWORD@host (or redis://:PASSWORD@host for the default user)",
        ));
    }
    let db = url.path().trim_matches('/');
    if !db.is_empty() {
        check_db(db, "the path")?;
    }
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "protocol" => check_protocol(&value)?,
            key if CREDENTIAL_KEYS.contains(&key) => {
                return Err(invalid(format!(
                    "credentials in the query ({key}=) are ignored for redis:// URLs; write \
                     {TCP_FORM}"
                )));
            }
            "db" => {
                return Err(invalid(
                    "db= in the query is ignored for redis:// URLs; put the database in the \
                     path: redis://host:6379/2",
                ));
            }
            _ => return Err(unknown_parameter(&key, "protocol")),
        }
    }
    Ok(())
}

fn check_unix(url: &url::Url) -> Result<(), ConfigError> {
    if url.path().is_empty() || url.path() == "/" {
        return Err(invalid(format!("no socket path; expected {UNIX_FORM}")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!(
            "credentials before the path are ignored for unix sockets; write {UNIX_FORM}"
        )));
    }
    let (mut user, mut pass) = (false, false);
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "db" => check_db(&value, "db=")?,
            "protocol" => check_protocol(&value)?,
            "user" => user = true,
            "pass" => pass = true,
            "password" | "username" => {
                return Err(invalid(format!(
                    "{key}= is ignored for unix sockets; write {UNIX_FORM}"
                )));
            }
            _ => return Err(unknown_parameter(&key, "db, user, pass, protocol")),
        }
    }
    if user && !pass {
        return Err(invalid(format!(
            "a user name without a password: Redis would be used as its default user; write \
             {UNIX_FORM}"
        )));
    }
    Ok(())
}

/// The parameter is not named: it is a key, not a value, but a password pasted in the wrong
/// place (`?S3cret`) is a key too.
fn unknown_parameter(_key: &str, supported: &str) -> ConfigError {
    invalid(format!(
        "a query parameter is not one redis-rs reads from the URL (it reads {supported}); set \
         pool settings on the builder or with REDIS_GUARD_* variables"
    ))
}

fn decoded(part: &str, what: &str) -> Result<(), ConfigError> {
    // redis-rs would keep such an escape as it is and send it: the AUTH fails at run time,
    // and a pool that starts lazily serves 503 for what is a mistake in the URL.
    let bytes = part.as_bytes();
    let stray_percent = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if stray_percent {
        return Err(invalid(format!(
            "{what} has a % not followed by two hex digits: write a literal % as %25"
        )));
    }
    percent_decode(part)
        .map(drop)
        .ok_or_else(|| invalid(format!("{what} is not valid UTF-8 once percent-decoded")))
}

/// Percent-decodes `part` as redis-rs does (an invalid escape stays as it is), strictly UTF-8.
pub(super) fn percent_decode(part: &str) -> Option<String> {
    let raw = part.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = (raw[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn check_db(db: &str, place: &str) -> Result<(), ConfigError> {
    match db.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(()),
        _ if !db.is_empty() && db.chars().all(|c| c.is_ascii_digit()) => Err(invalid(format!(
            "the database number in {place} is too large"
        ))),
        _ => Err(invalid(format!(
            "the database in {place} is not a number; expected e.g. redis://host:6379/2"
        ))),
    }
}

fn check_protocol(value: &str) -> Result<(), ConfigError> {
    match value {
        "2" | "resp2" | "3" | "resp3" => Ok(()),
        _ => Err(invalid(
            "invalid protocol version: use protocol=resp2 or protocol=resp3",
        )),
    }
}

/// Returns `url` with every credential replaced by `***`: the password in the user info, and
/// the values of `pass`, `password`, `user` and `username` query parameters; a fragment is
/// dropped. For logs, errors, `Debug` and metrics. A string that does not parse as a URL is
/// replaced whole: it might be a secret.
///
/// ```
/// use redis_guard::config::redact_url;
/// assert_eq!(redact_url("redis://user:pa55@host:6379"), "redis://user:***@host:6379");
/// assert_eq!(
///     redact_url("redis+unix:///run/redis.sock?db=1&user=app&pass=pa55"),
///     "redis+unix:///run/redis.sock?db=1&user=***&pass=***"
/// );
/// assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
/// assert_eq!(
///     redact_url("redis+sentinel://:pa55@s1,s2:26380/mymaster?sentinel_password=pa55"),
///     "redis+sentinel://:***@s1:26379,s2:26380/mymaster?sentinel_password=***"
/// );
/// assert_eq!(redact_url("not a url pa55"), "<unparseable URL>");
/// assert_eq!(redact_url("localhost:pa55"), "<not a Redis URL>");
/// ```
pub fn redact_url(url: &str) -> String {
    match super::sentinel::parse_sentinel_url(url) {
        Ok(None) => {}
        Ok(Some(parsed)) => {
            let mut redacted = parsed.sentinel.redacted(parsed.tls.is_some());
            if parsed.tls == Some(true) {
                redacted.push_str("#insecure");
            }
            return redacted;
        }
        Err(_) => return "<invalid sentinel URL>".to_owned(),
    }
    let Ok(mut parsed) = url::Url::parse(url.trim()) else {
        return "<unparseable URL>".to_owned();
    };
    if !["redis", "rediss", "redis+unix", "unix"].contains(&parsed.scheme()) {
        // `host:password` parses as scheme `host` with the password as its path.
        return "<not a Redis URL>".to_owned();
    }
    if parsed.password().is_some() {
        // Cannot fail: a URL that has a password has a host to hold it.
        let _ = parsed.set_password(Some("***"));
    }
    // `#insecure` is no secret, and worth seeing in a log.
    if parsed.fragment() != Some("insecure") {
        parsed.set_fragment(None);
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let secret = CREDENTIAL_KEYS.contains(&key.as_ref());
                (
                    key.into_owned(),
                    if secret {
                        "***".into()
                    } else {
                        value.into_owned()
                    },
                )
            })
            .collect();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in &pairs {
            query.append_pair(key, value);
        }
        let query = query.finish().replace("%2A%2A%2A", "***");
        parsed.set_query(Some(&query));
    }
    parsed.to_string()
}
