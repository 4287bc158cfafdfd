//! [`RedisGuardLayer`]: puts a [`RedisGuard`] into every request's extensions.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use redis::AsyncCommands;
//! use redis_guard::{Config, Redis, RedisGuard, RedisGuardLayer};
//!
//! async fn visits(mut redis: Redis) -> Result<String, redis_guard::Error> {
//!     let n: i64 = redis.incr("visits", 1).await?;
//!     Ok(n.to_string())
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = RedisGuard::connect(Config::from_env()?).await?;
//! let app: Router = Router::new()
//!     .route("/visits", get(visits))
//!     .layer(RedisGuardLayer::new(guard));
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::pool::RedisGuard;

/// A layer that makes a [`RedisGuard`] available to the [`Redis`](crate::Redis) and
/// [`RedisGuard`] extractors. Cloning it clones one `Arc`.
#[derive(Debug, Clone)]
pub struct RedisGuardLayer {
    guard: RedisGuard,
}

impl RedisGuardLayer {
    /// A layer that serves `guard` to the wrapped routes.
    pub fn new(guard: RedisGuard) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for RedisGuardLayer {
    type Service = RedisGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisGuardService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service made by [`RedisGuardLayer`]. It only adds the guard to the request; checkout
/// happens in the extractor, so routes that never touch Redis never pay for it.
#[derive(Debug, Clone)]
pub struct RedisGuardService<S> {
    inner: S,
    guard: RedisGuard,
}

impl<S, B> Service<Request<B>> for RedisGuardService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.guard.clone());
        self.inner.call(request)
    }
}
