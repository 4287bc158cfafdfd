//! [`Error`]: every failure a handler can see, and its one mapping to HTTP.

use std::fmt;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::connection::is_infrastructure_failure;

/// A snapshot of a pool, as named in checkout-timeout errors.
///
/// ```
/// # async fn demo(guard: redis_guard::RedisGuard) {
/// let state = guard.state();
/// assert!(state.idle + state.in_use == state.connections);
/// println!("{state}"); // "3 connections (1 idle, 2 in use) of at most 10, 0 waiting"
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// Live connections.
    pub connections: u32,
    /// Connections waiting in the pool.
    pub idle: u32,
    /// Connections checked out.
    pub in_use: u32,
    /// The configured maximum.
    pub max_size: u32,
    /// Callers inside a checkout, waiting for a connection or its validation.
    pub waiting: usize,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections ({} idle, {} in use) of at most {}, {} waiting",
            self.connections, self.idle, self.in_use, self.max_size, self.waiting
        )
    }
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
///     reason: "circuit breaker open".into(),
///     retry_after: Duration::from_secs(2),
/// };
/// let response = err.into_response();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "2");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis is known to be unreachable; the request was refused without waiting.
    #[error("redis pool '{pool}' is unavailable: {reason}")]
    Unavailable {
        /// The pool's name.
        pool: String,
        /// Why, in words an operator can act on.
        reason: String,
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
    /// A Redis command failed: an error reply, or a connection failure while in use.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl Error {
    /// Whether the failure is the infrastructure's (unreachable, slow, broken connection) rather
    /// than the command's (an error reply such as `WRONGTYPE`).
    ///
    /// ```
    /// let reply = redis::RedisError::from((redis::ErrorKind::Client, "WRONGTYPE"));
    /// assert!(!redis_guard::Error::Redis(reply).is_infrastructure());
    /// ```
    pub fn is_infrastructure(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Redis(e) => is_infrastructure_failure(e),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => Some(*retry_after),
            Error::Timeout { .. } => Some(Duration::from_secs(1)),
            Error::Redis(_) if self.is_infrastructure() => Some(Duration::from_secs(1)),
            Error::Redis(_) => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Redis unavailable"),
            Error::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Redis checkout timed out"),
            Error::Redis(_) if self.is_infrastructure() => {
                (StatusCode::SERVICE_UNAVAILABLE, "Redis connection failed")
            }
            Error::Redis(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Redis command failed"),
        };
        // Checkout failures are logged by the pool, and refusals come by the thousand during
        // an outage (the breaker's transitions say why); command failures are logged here.
        if let Error::Redis(e) = &self {
            tracing::warn!(error = %e, status = status.as_u16(), "redis command failed");
        }
        let retry_after = self.retry_after();
        problem_response(status, title, retry_after)
    }
}

/// An `application/problem+json` response, with `Retry-After` in whole seconds (at least 1).
pub(crate) fn problem_response(
    status: StatusCode,
    title: &str,
    retry_after: Option<Duration>,
) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
    });
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(after) = retry_after {
        let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
