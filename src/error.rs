//! [`Error`]: every failure a handler can see, and its one mapping to HTTP.

use std::fmt;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::content_type;
use crate::not_sent::{NoConnection, NotSent};
use crate::redis_error::{is_busy, is_infrastructure_failure, is_refused_by_role};
use crate::reply_limit::ReplyTooLarge;
use crate::throttle::Throttle;

/// A snapshot of a pool, as named in checkout-timeout errors.
///
/// ```
/// # async fn demo(guard: redis_guard::RedisGuard) {
/// let state = guard.state();
/// assert!(state.idle + state.in_use == state.connections);
/// println!("{state}"); // "3 connections (1 idle, 2 in use) of at most 10, 0 waiting"
/// // With subscriptions: "...; 2 subscriptions of at most 64"
/// assert!(state.subscriptions <= state.max_subscriptions);
/// # }
/// ```
///
/// With the `serde` feature it serializes, for a status endpoint of your own:
///
/// ```
/// # #[cfg(feature = "serde")]
/// # async fn demo(guard: redis_guard::RedisGuard) {
/// let json = serde_json::to_string(&guard.state()).unwrap();
/// // {"connections":3,"idle":1,"in_use":2,"shared":0,"max_size":10,"waiting":0,
/// //  "subscriptions":2,"max_subscriptions":64}
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PoolState {
    /// Live connections.
    pub connections: u32,
    /// Connections waiting in the pool.
    pub idle: u32,
    /// Connections checked out by one caller each.
    pub in_use: u32,
    /// In shared mode, connections every checkout's plain commands go over (not counted in
    /// `in_use` nor `idle`).
    pub shared: u32,
    /// The configured maximum.
    pub max_size: u32,
    /// Callers inside a checkout, waiting for a connection or its validation.
    pub waiting: usize,
    /// Subscriptions held ([`RedisGuard::subscribe`](crate::RedisGuard::subscribe)), each on a
    /// connection of its own (not counted in `connections`), also while it reconnects.
    pub subscriptions: u32,
    /// The configured maximum of subscriptions.
    pub max_subscriptions: u32,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections ({} idle, {} in use",
            self.connections, self.idle, self.in_use
        )?;
        if self.shared > 0 {
            write!(f, ", {} shared", self.shared)?;
        }
        write!(
            f,
            ") of at most {}, {} waiting",
            self.max_size, self.waiting
        )?;
        if self.subscriptions > 0 {
            write!(
                f,
                "; {} subscriptions of at most {}",
                self.subscriptions, self.max_subscriptions
            )?;
        }
        Ok(())
    }
}

/// Why a pool answered [`Error::Unavailable`]: match on it to tell an outage the breaker
/// knows of from a connect that just failed.
///
/// ```
/// use redis_guard::UnavailableReason;
/// let reason = UnavailableReason::BreakerOpen { last_connect_error: Some("Connection refused".into()) };
/// assert_eq!(reason.to_string(), "circuit breaker open; last connect error: Connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// The circuit breaker is open: new connections to Redis keep failing. The pool recovers
    /// by itself once one succeeds.
    #[error("circuit breaker open{}", last_error(.last_connect_error))]
    BreakerOpen {
        /// The most recent connect failure, redacted.
        last_connect_error: Option<String>,
    },
    /// The breaker is half-open: a few trial calls decide, and this one was not among them.
    #[error("circuit breaker half-open, trial calls in flight{}", last_error(.last_connect_error))]
    BreakerHalfOpen {
        /// The most recent connect failure, redacted.
        last_connect_error: Option<String>,
    },
    /// The pool had no working connection and the connect attempt the caller waited for
    /// failed (or the next one could not start within its budget).
    #[error("cannot connect: {cause}")]
    CannotConnect {
        /// The connect failure, redacted.
        cause: String,
    },
    /// The pool was closed ([`RedisGuard::close`](crate::RedisGuard::close)): the service is
    /// shutting down.
    #[error("the pool is closed")]
    Closed,
    /// Every subscription the pool may hold is taken
    /// ([`max_subscriptions`](crate::ConfigBuilder::max_subscriptions)): each holds a Redis
    /// connection of its own, and one per HTTP client would run Redis out of connections.
    #[error(
        "all {max_subscriptions} subscriptions are taken (max_subscriptions); drop a Subscriber, \
         share one subscription among clients (a tokio broadcast channel), or raise \
         max_subscriptions"
    )]
    SubscriptionLimit {
        /// The configured maximum.
        max_subscriptions: u32,
    },
    /// [`StartupMode::FailFast`](crate::StartupMode::FailFast) or
    /// [`WaitFor`](crate::StartupMode::WaitFor) found no Redis.
    #[error("no connection at start-up: {cause}")]
    Startup {
        /// The last connect failure, redacted.
        cause: String,
    },
}

fn last_error(error: &Option<String>) -> String {
    error
        .as_deref()
        .map_or_else(String::new, |e| format!("; last connect error: {e}"))
}

/// A redis-guard failure. Variants are stable: match on them to degrade gracefully.
///
/// As an axum response: `Unavailable` and `Timeout` are `503 Service Unavailable` with
/// `Retry-After`; a Redis connection failure is `503`, any other Redis error `500`. The body is
/// `application/problem+json` (RFC 9457) with a short description; the full error, which may
/// name hosts, goes to the log rather than to the client.
///
/// ```
/// use axum::response::IntoResponse;
/// use std::time::Duration;
///
/// let err = redis_guard::Error::Unavailable {
///     pool: "cache".into(),
///     reason: redis_guard::UnavailableReason::BreakerOpen { last_connect_error: None },
///     retry_after: Duration::from_secs(2),
/// };
/// let response = err.into_response();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "2");
/// ```
///
/// # In your own error type
///
/// A handler's `?` meets two error types: `redis_guard::Error` from the checkout and
/// `redis::RedisError` from each command. An application error takes both through
/// `redis_guard::Error` (which has `From<RedisError>`), and answers as it does:
///
/// ```
/// use axum::response::{IntoResponse, Response};
/// use redis::AsyncCommands;
///
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error(transparent)]
///     Redis(#[from] redis_guard::Error),
///     #[error("no such user")]
///     NotFound,
/// }
///
/// // Rust does not chain `From`: this one line lets `?` take a command's error.
/// impl From<redis::RedisError> for AppError {
///     fn from(e: redis::RedisError) -> Self {
///         AppError::Redis(e.into())
///     }
/// }
///
/// impl IntoResponse for AppError {
///     fn into_response(self) -> Response {
///         match self {
///             AppError::Redis(e) => e.into_response(), // 503 with Retry-After, or 500
///             AppError::NotFound => (http::StatusCode::NOT_FOUND, "no such user").into_response(),
///         }
///     }
/// }
///
/// async fn user(guard: redis_guard::RedisGuard) -> Result<String, AppError> {
///     let mut conn = guard.get().await?; // redis_guard::Error
///     let name: Option<String> = conn.get("user:1:name").await?; // redis::RedisError
///     name.ok_or(AppError::NotFound)
/// }
/// fn app(guard: redis_guard::RedisGuard) -> axum::Router {
///     axum::Router::new()
///         .route("/user", axum::routing::get(user))
///         .layer(redis_guard::RedisGuardLayer::new(guard))
/// }
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis is known to be unreachable; the request was refused without waiting.
    #[error("redis pool '{pool}' is unavailable: {reason}")]
    Unavailable {
        /// The pool's name.
        pool: String,
        /// Why, as a value to match on; its message is one an operator can act on.
        reason: UnavailableReason,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// No healthy connection could be had within the checkout budget.
    #[error(
        "checkout from redis pool '{pool}' timed out after {waited:?} ({state}); last connect error: {}",
        last_connect_error.as_deref().unwrap_or("none")
    )]
    Timeout {
        /// The pool's name.
        pool: String,
        /// How long the caller waited.
        waited: Duration,
        /// The pool when the budget ran out.
        state: PoolState,
        /// The most recent failed connect since the last successful one, if any.
        last_connect_error: Option<String>,
    },
    /// A Redis command failed: an error reply, a reply of another type than asked for, or a
    /// connection failure while in use. A reply of another type is shown without its value
    /// (it may be stored data); the `redis::RedisError` inside has it.
    #[error("{}", CommandFailure(.0))]
    Redis(#[from] redis::RedisError),
    /// The pool cannot start with this configuration (two live pools with one name).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Error {
    /// Whether the failure is the infrastructure's (unreachable, slow, broken connection) rather
    /// than the command's (an error reply such as `WRONGTYPE`).
    ///
    /// ```
    /// let reply = redis::RedisError::from((redis::ErrorKind::Client, "WRONGTYPE"));
    /// assert!(!redis_guard::Error::Redis(reply).is_infrastructure());
    /// ```
    ///
    /// A refusal by role (`READONLY`, `MASTERDOWN`, `LOADING`: the server cannot act as the
    /// primary right now) is the infrastructure's too: the command did not run, and the same
    /// call succeeds once the failover or the load is over.
    ///
    /// ```
    /// let refused = redis::RedisError::from((
    ///     redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
    ///     "You can't write against a read only replica.",
    /// ));
    /// assert!(redis_guard::Error::Redis(refused).is_infrastructure());
    /// ```
    pub fn is_infrastructure(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Redis(e) if is_type_error(e) || ReplyTooLarge::is_cause_of(e) => false,
            Error::Redis(e) => is_infrastructure_failure(e) || is_refused_by_role(e) || is_busy(e),
            Error::Config(_) => false,
        }
    }

    /// Whether the command may have run although the call failed: its connection failed
    /// after the call was written (a reset, no reply within the response timeout), so Redis
    /// may have applied it and only the reply was lost. Such a write answers `503` like any
    /// connection failure, yet must not be sent again blindly unless it is idempotent: look
    /// at its effect first, or answer the client that the outcome is unknown. `false` when
    /// nothing ran: refused before sending (breaker, checkout timeout, a connection found
    /// closed, a failover), refused by Redis (`READONLY`, `BUSY`), or Redis's own error reply.
    ///
    /// ```
    /// let reset = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    /// assert!(redis_guard::Error::Redis(reset).may_have_been_applied());
    /// let reply = redis::RedisError::from((redis::ErrorKind::Client, "WRONGTYPE"));
    /// assert!(!redis_guard::Error::Redis(reply).may_have_been_applied());
    /// ```
    pub fn may_have_been_applied(&self) -> bool {
        match self {
            Error::Redis(e) => {
                is_infrastructure_failure(e)
                    && NotSent::of(e).is_none()
                    && !NoConnection::is_cause_of(e)
            }
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::Config(_) => false,
        }
    }

    /// The HTTP status this error answers with: `503` when Redis is unreachable, slow, busy
    /// with a script (`BUSY`), refused the command for its role, or the connection failed;
    /// `500` for a command's error reply.
    ///
    /// ```
    /// let reply = redis::RedisError::from((redis::ErrorKind::Client, "WRONGTYPE"));
    /// assert_eq!(redis_guard::Error::Redis(reply).status(), 500);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status_and_title().0
    }

    /// The status and the problem title: short, fixed text that names no host or key.
    fn status_and_title(&self) -> (StatusCode, &'static str) {
        match self {
            // Redis is fine: this process holds as many subscriptions as it may.
            Error::Unavailable {
                reason: UnavailableReason::SubscriptionLimit { .. },
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis subscription limit reached",
            ),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Redis unavailable"),
            Error::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Redis checkout timed out"),
            Error::Redis(e)
                if is_refused_by_role(e) || NotSent::of(e) == Some(NotSent::PrimaryMoved) =>
            {
                (StatusCode::SERVICE_UNAVAILABLE, "Redis primary unavailable")
            }
            Error::Redis(e) if is_busy(e) => (StatusCode::SERVICE_UNAVAILABLE, "Redis busy"),
            Error::Redis(_) if self.is_infrastructure() => {
                (StatusCode::SERVICE_UNAVAILABLE, "Redis connection failed")
            }
            Error::Redis(e) if ReplyTooLarge::is_cause_of(e) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "Redis reply too large")
            }
            Error::Redis(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Redis command failed"),
            Error::Config(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Redis pool misconfigured",
            ),
        }
    }

    /// The `application/problem+json` body this error answers with.
    pub(crate) fn problem_body(&self) -> String {
        let (status, title) = self.status_and_title();
        problem_body(status, title)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => Some(*retry_after),
            Error::Timeout { .. } => Some(Duration::from_secs(1)),
            Error::Redis(_) if self.is_infrastructure() => Some(Duration::from_secs(1)),
            Error::Redis(_) | Error::Config(_) => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, title) = self.status_and_title();
        // Checkout failures are logged by the pool, and refusals come by the thousand during
        // an outage (the breaker's transitions say why). Command failures are logged here, one
        // line per interval at most: an incident must not flood the log at the request rate.
        // One allowance per kind of failure, so an outage's lines never hide the application's
        // own errors (a 500 right after a 503 was logged), nor the other way round.
        if let Error::Redis(e) = &self {
            static UNAVAILABLE: Throttle = Throttle::new(Duration::from_secs(10));
            static FAILED: Throttle = Throttle::new(Duration::from_secs(10));
            let throttle = match status {
                StatusCode::SERVICE_UNAVAILABLE => &UNAVAILABLE,
                _ => &FAILED,
            };
            match throttle.admit() {
                Some(held_back) => tracing::warn!(
                    error = %described(e),
                    status = status.as_u16(),
                    similar_lines_held_back = held_back,
                    "redis command failed"
                ),
                None => {
                    tracing::debug!(error = %described(e), status = status.as_u16(), "redis command failed")
                }
            }
        }
        let retry_after = self.retry_after();
        problem_response(status, title, retry_after)
    }
}

/// Shows whatever [`Error`] shows: its `Display`, with the variant's name.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            Error::Unavailable { .. } => "Unavailable",
            Error::Timeout { .. } => "Timeout",
            Error::Redis(_) => "Redis",
            Error::Config(_) => "Config",
        };
        write!(f, "{variant}({self})")
    }
}

/// A command's error as [`Error`] shows it: redis-rs's words, except for a reply of another
/// type than asked for, whose words quote the reply.
struct CommandFailure<'a>(&'a redis::RedisError);

impl fmt::Display for CommandFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_type_error(self.0) {
            f.write_str(
                "the reply is not of the type the caller asked for (type error; the reply is \
                 not shown, it may hold stored data)",
            )
        } else {
            fmt::Display::fmt(self.0, f)
        }
    }
}

/// A reply that does not convert to the type the caller asked for (`WRONGTYPE` aside, which
/// is an error reply): the application's mistake, answered with 500. redis-rs gives the same
/// kind to a reply that cannot be parsed off the wire, but that breaks the connection, which
/// the pool evicts; what reaches the caller as `Parse` is, in practice, a conversion.
fn is_type_error(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
    )
}

/// A failed command for a log line: what kind of failure, never its text. A conversion
/// error's text quotes the stored value, and an error reply's may quote the command's
/// arguments (`unknown command 'x', with args beginning with: ...`).
fn described(e: &redis::RedisError) -> String {
    if is_type_error(e) {
        return "the reply is not of the type the caller asked for (type error)".to_owned();
    }
    if let Some(too_large) = crate::cause::io_cause::<ReplyTooLarge>(e) {
        return too_large.to_string();
    }
    if let Some(code) = e.code() {
        // The code is the reply's first word, from the server: letters and digits only.
        let code: String = code
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        return format!("error reply {code}");
    }
    if e.is_io_error() {
        return "connection failed".to_owned();
    }
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    format!("{:?}", e.kind())
}

pub(crate) fn problem_body(status: StatusCode, title: &str) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
    })
    .to_string()
}

/// An `application/problem+json` response, with `Retry-After` in whole seconds (at least 1).
pub(crate) fn problem_response(
    status: StatusCode,
    title: &str,
    retry_after: Option<Duration>,
) -> Response {
    let mut response = content_type::typed(
        (status, problem_body(status, title)).into_response(),
        content_type::PROBLEM_JSON,
    );
    if let Some(after) = retry_after {
        let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::PoolState;
    use crate::BreakerState;

    #[test]
    fn pool_state_and_breaker_state_serialize_with_their_field_names() {
        let state = PoolState {
            connections: 3,
            idle: 1,
            in_use: 2,
            shared: 0,
            max_size: 10,
            waiting: 0,
            subscriptions: 2,
            max_subscriptions: 64,
        };
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"connections":3,"idle":1,"in_use":2,"shared":0,"max_size":10,"waiting":0,"subscriptions":2,"max_subscriptions":64}"#
        );
        assert_eq!(
            state.to_string(),
            "3 connections (1 idle, 2 in use) of at most 10, 0 waiting; 2 subscriptions of at most 64"
        );
        assert_eq!(
            serde_json::to_string(&BreakerState::HalfOpen).unwrap(),
            r#""half_open""#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_error_is_logged_right_after_an_outage_line() {
        use std::sync::{Arc, Mutex};
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                drop(Error::Redis(redis::RedisError::from(reset)).into_response());
            }
            let bug = redis::RedisError::from((
                redis::ErrorKind::Client,
                "ERR",
                "unknown command".into(),
            ));
            drop(Error::Redis(bug).into_response());
        });
        let text = String::from_utf8_lossy(&lines.lock().unwrap()).into_owned();
        assert_eq!(text.matches("redis command failed").count(), 2, "{text}");
        assert!(
            text.contains("status=503") && text.contains("status=500"),
            "{text}"
        );
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_subscription_table_is_not_called_an_outage() {
        let error = Error::Unavailable {
            pool: "default".into(),
            reason: UnavailableReason::SubscriptionLimit {
                max_subscriptions: 2,
            },
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            error
                .problem_body()
                .contains("\"title\":\"Redis subscription limit reached\""),
            "{}",
            error.problem_body()
        );
    }
}
