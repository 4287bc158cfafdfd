//! axum extractors: [`Redis`] (a checked-out, validated connection from the pool of
//! [`RedisGuardLayer`](crate::RedisGuardLayer)), [`RedisFrom`] (one from a pool in the router's
//! state, chosen by type) and [`RedisGuard`] (the pool handle, to check out later), with their
//! rejections.
//!
//! Which to take:
//!
//! | handler | extractor |
//! |---|---|
//! | one pool, uses Redis for its whole run | [`Redis`] (with the layer) |
//! | several pools | [`RedisFrom<P>`] per pool, pools in the state (a pool missing from the state is a compile error) |
//! | reads a body, or calls a slow service before or after Redis | [`RedisGuard`] (or `State<P>`), then `get()` when needed: the connection is not held while the body uploads |
//! | can do without Redis (a cache) | `Option<Redis>` / `Option<RedisFrom<P>>`: `None` when no connection can be had |

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
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

crate::delegate::delegate_connection_like!(impl<> Redis, 0);

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
        layer_pool(parts).cloned()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Redis {
    type Rejection = RedisRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Redis(layer_pool(parts)?.get().await?))
    }
}

/// `Option<Redis>`: `None` when no connection can be had (the breaker is open, the checkout
/// timed out), for handlers that can do without, such as a cache. A missing layer is still
/// a `500`: it is a wiring bug, not an outage.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Redis {
    type Rejection = RedisRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(optional(layer_pool(parts)?.get().await).map(Redis))
    }
}

/// A validated connection from the pool `P` of the router's state, for handlers that use
/// several pools: `P` is a type of yours that holds a [`RedisGuard`] (one type per pool), and
/// the state provides it through axum's [`FromRef`]. A handler asking for a pool that the
/// state does not hold does not compile. Rejects like [`Redis`].
///
/// ```
/// use axum::extract::FromRef;
/// use redis::AsyncCommands;
/// use redis_guard::{RedisFrom, RedisGuard};
///
/// #[derive(Clone)]
/// struct Cache(RedisGuard);
/// #[derive(Clone)]
/// struct Sessions(RedisGuard);
/// impl AsRef<RedisGuard> for Cache {
///     fn as_ref(&self) -> &RedisGuard { &self.0 }
/// }
/// impl AsRef<RedisGuard> for Sessions {
///     fn as_ref(&self) -> &RedisGuard { &self.0 }
/// }
///
/// #[derive(Clone, FromRef)]
/// struct AppState {
///     cache: Cache,
///     sessions: Sessions,
/// }
///
/// async fn profile(
///     mut cache: RedisFrom<Cache>,
///     mut sessions: RedisFrom<Sessions>,
/// ) -> Result<String, redis_guard::Error> {
///     let user: Option<String> = sessions.get("session:abc").await?;
///     let profile: Option<String> = cache.get(format!("profile:{}", user.unwrap_or_default())).await?;
///     Ok(profile.unwrap_or_default())
/// }
///
/// fn app(state: AppState) -> axum::Router {
///     axum::Router::new()
///         .route("/profile", axum::routing::get(profile))
///         .with_state(state)
/// }
/// ```
///
/// A pool the state does not provide is caught by the compiler:
///
/// ```compile_fail
/// # use redis_guard::{RedisFrom, RedisGuard};
/// #[derive(Clone)]
/// struct Cache(RedisGuard);
/// impl AsRef<RedisGuard> for Cache {
///     fn as_ref(&self) -> &RedisGuard { &self.0 }
/// }
/// async fn handler(_cache: RedisFrom<Cache>) {}
/// // The state is a plain RedisGuard: there is no Cache to take.
/// fn app(guard: RedisGuard) -> axum::Router {
///     axum::Router::new()
///         .route("/", axum::routing::get(handler))
///         .with_state(guard)
/// }
/// ```
pub struct RedisFrom<P> {
    conn: PooledConnection,
    pool: PhantomData<fn() -> P>,
}

impl<P> RedisFrom<P> {
    /// The connection, out of the extractor.
    pub fn into_inner(self) -> PooledConnection {
        self.conn
    }
}

impl<P> std::fmt::Debug for RedisFrom<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisFrom").field(&self.conn).finish()
    }
}

impl<P> Deref for RedisFrom<P> {
    type Target = PooledConnection;
    fn deref(&self) -> &PooledConnection {
        &self.conn
    }
}

impl<P> DerefMut for RedisFrom<P> {
    fn deref_mut(&mut self) -> &mut PooledConnection {
        &mut self.conn
    }
}

crate::delegate::delegate_connection_like!(impl<P> RedisFrom<P>, conn);

impl<S, P> FromRequestParts<S> for RedisFrom<P>
where
    S: Send + Sync,
    P: FromRef<S> + AsRef<RedisGuard>,
{
    type Rejection = RedisRejection;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let guard = P::from_ref(state).as_ref().clone();
        let conn = guard.get().await?;
        Ok(RedisFrom {
            conn,
            pool: PhantomData,
        })
    }
}

/// `Option<RedisFrom<P>>`: `None` when no connection can be had, as `Option<Redis>`.
impl<S, P> OptionalFromRequestParts<S> for RedisFrom<P>
where
    S: Send + Sync,
    P: FromRef<S> + AsRef<RedisGuard>,
{
    type Rejection = RedisRejection;

    async fn from_request_parts(
        _parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let guard = P::from_ref(state).as_ref().clone();
        let checked_out = guard.get().await;
        Ok(optional(checked_out).map(|conn| RedisFrom {
            conn,
            pool: PhantomData,
        }))
    }
}

/// A checkout's outcome for an optional extractor: no connection is `None`, and logged once
/// by the pool like any failed checkout.
fn optional(checked_out: Result<PooledConnection, Error>) -> Option<PooledConnection> {
    checked_out.ok()
}

/// The pool [`RedisGuardLayer`](crate::RedisGuardLayer) put in the request, borrowed: a
/// checkout takes its own reference to the pool.
fn layer_pool(parts: &Parts) -> Result<&RedisGuard, RedisRejection> {
    parts
        .extensions
        .get::<RedisGuard>()
        .ok_or(RedisRejection::MissingLayer)
}
