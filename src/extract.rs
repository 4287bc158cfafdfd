//! axum extractors: [`Redis`] (a checked-out, validated connection) and [`RedisGuard`] (the
//! pool handle), with their rejections.

use std::ops::{Deref, DerefMut};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::error::{Error, problem_response};
use crate::pool::{PooledConnection, RedisGuard};

/// A validated Redis connection for one handler, checked out when the handler is called and
/// returned when it finishes. Use it with [`redis::AsyncCommands`].
///
/// Rejects with [`RedisRejection`]: `503` with `Retry-After` when Redis cannot be reached
/// within the checkout budget, `500` when [`RedisGuardLayer`](crate::RedisGuardLayer) is
/// missing.
///
/// ```
/// use redis::AsyncCommands;
/// use redis_guard::Redis;
///
/// async fn handler(mut redis: Redis) -> Result<String, redis_guard::Error> {
///     let value: Option<String> = redis.get("key").await?;
///     Ok(value.unwrap_or_default())
/// }
/// let app: axum::Router = axum::Router::new().route("/key", axum::routing::get(handler));
/// ```
#[derive(Debug)]
pub struct Redis(pub PooledConnection);

impl Deref for Redis {
    type Target = PooledConnection;
    fn deref(&self) -> &PooledConnection {
        &self.0
    }
}

impl DerefMut for Redis {
    fn deref_mut(&mut self) -> &mut PooledConnection {
        &mut self.0
    }
}

crate::connection::delegate_connection_like!(Redis, 0);

/// Why [`Redis`] or [`RedisGuard`] could not be extracted.
///
/// ```
/// use axum::response::IntoResponse;
/// let response = redis_guard::RedisRejection::MissingLayer.into_response();
/// assert_eq!(response.status(), 500);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisRejection {
    /// The route is not wrapped in [`RedisGuardLayer`](crate::RedisGuardLayer): a wiring bug.
    #[error("no RedisGuard in the request: wrap the router in RedisGuardLayer")]
    MissingLayer,
    /// No healthy connection could be checked out.
    #[error(transparent)]
    Checkout(#[from] Error),
}

/// The problem title of [`RedisRejection::MissingLayer`].
const MISSING_LAYER_TITLE: &str = "RedisGuardLayer is not installed on this route";

impl RedisRejection {
    /// The HTTP status of the rejection: `500` for a missing layer, else the checkout error's
    /// (see [`Error::status`]).
    ///
    /// ```
    /// assert_eq!(redis_guard::RedisRejection::MissingLayer.status(), 500);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            RedisRejection::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
            RedisRejection::Checkout(error) => error.status(),
        }
    }

    /// The response body the rejection answers with (`application/problem+json`): short, fixed
    /// text, never a host or a key.
    ///
    /// ```
    /// let body = redis_guard::RedisRejection::MissingLayer.body_text();
    /// assert!(body.contains("RedisGuardLayer is not installed"));
    /// ```
    pub fn body_text(&self) -> String {
        match self {
            RedisRejection::MissingLayer => {
                crate::error::problem_body(self.status(), MISSING_LAYER_TITLE)
            }
            RedisRejection::Checkout(error) => error.problem_body(),
        }
    }
}

impl IntoResponse for RedisRejection {
    fn into_response(self) -> Response {
        // As axum logs its rejections: at TRACE under a fixed target, so that a flood of them
        // costs nothing unless asked for. The pool logs the causes once.
        tracing::trace!(target: "redis_guard::rejection", status = self.status().as_u16(), rejection = %self, "rejecting request");
        match self {
            RedisRejection::MissingLayer => {
                problem_response(self.status(), MISSING_LAYER_TITLE, None)
            }
            RedisRejection::Checkout(error) => error.into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RedisGuard {
    type Rejection = RedisRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RedisGuard>()
            .cloned()
            .ok_or(RedisRejection::MissingLayer)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Redis {
    type Rejection = RedisRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let guard = RedisGuard::from_request_parts(parts, state).await?;
        Ok(Redis(guard.get().await?))
    }
}
