//! Tower layers: [`RedisGuardLayer`] puts a pool's handle into each request, and
//! [`RequireRedisLayer`] answers 503 at once while the pool's breaker is open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::pool::RedisGuard;

/// A layer that makes a [`RedisGuard`] available to the [`Redis`](crate::Redis) and
/// [`RedisGuard`] extractors: the simple case of one pool. Cloning it clones one `Arc`. It
/// only adds the handle to the request: routes that never touch Redis never check out.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use redis::AsyncCommands;
/// use redis_guard::{Config, Redis, RedisGuard, RedisGuardLayer};
///
/// async fn visits(mut redis: Redis) -> Result<String, redis_guard::Error> {
///     let n: i64 = redis.incr("visits", 1).await?;
///     Ok(n.to_string())
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let guard = RedisGuard::connect(Config::from_env()?).await?;
/// let app: Router = Router::new()
///     .route("/visits", get(visits))
///     .layer(RedisGuardLayer::new(guard));
/// # Ok(()) }
/// ```
///
/// For several pools, put them in the router's state and use
/// [`RedisFrom`](crate::RedisFrom): a request has room for one `RedisGuard` in its
/// extensions, so of two stacked layers the handler sees only the innermost's pool. That
/// mistake is logged (once, as an error) rather than left silent.
#[derive(Debug, Clone)]
pub struct RedisGuardLayer {
    guard: RedisGuard,
    /// Set once a request arrived carrying another pool's guard.
    warned: Arc<AtomicBool>,
}

impl RedisGuardLayer {
    /// A layer that serves `guard` to the wrapped routes.
    pub fn new(guard: RedisGuard) -> Self {
        Self {
            guard,
            warned: Arc::default(),
        }
    }
}

impl<S> Layer<S> for RedisGuardLayer {
    type Service = RedisGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisGuardService {
            inner,
            guard: self.guard.clone(),
            warned: self.warned.clone(),
        }
    }
}

/// The service made by [`RedisGuardLayer`]. It only adds the guard to the request; checkout
/// happens in the extractor, so routes that never touch Redis never pay for it.
#[derive(Debug, Clone)]
pub struct RedisGuardService<S> {
    inner: S,
    guard: RedisGuard,
    warned: Arc<AtomicBool>,
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
        let outer = request.extensions_mut().insert(self.guard.clone());
        if let Some(outer) = outer
            && !outer.is_same_pool(&self.guard)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                pool = %self.guard.name(),
                hidden = %outer.name(),
                "two RedisGuardLayers on one route: its handlers get pool '{}' only, never '{}'; \
                 for several pools put them in the router's state and use RedisFrom<P>",
                self.guard.name(),
                outer.name()
            );
        }
        self.inner.call(request)
    }
}

/// A route layer for handlers that cannot work without Redis: while the pool's circuit
/// breaker is open it answers `503 Service Unavailable` at once, with `Retry-After` (seconds
/// until the prober's next attempt, at least 1) and an `application/problem+json` body, and
/// the handler is not called.
///
/// The [`Redis`](crate::Redis) extractor refuses the same way; this layer also covers handlers
/// that reach Redis some other way, and skips reading the request body.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use redis_guard::{RedisGuard, RedisGuardLayer, RequireRedisLayer};
///
/// # fn demo(guard: RedisGuard) {
/// let app: Router = Router::new()
///     .route("/cart", get(|| async { "from redis" }))
///     .route_layer(RequireRedisLayer::new(guard.clone()))
///     .route("/about", get(|| async { "works without redis" }))
///     .layer(RedisGuardLayer::new(guard));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RequireRedisLayer {
    guard: RedisGuard,
}

impl RequireRedisLayer {
    /// Refuses requests while `guard`'s breaker is open.
    pub fn new(guard: RedisGuard) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for RequireRedisLayer {
    type Service = RequireRedisService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireRedisService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service made by [`RequireRedisLayer`].
#[derive(Debug, Clone)]
pub struct RequireRedisService<S> {
    inner: S,
    guard: RedisGuard,
}

impl<S, B> Service<Request<B>> for RequireRedisService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RequireRedisFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.guard.refusal() {
            Some(error) => RequireRedisFuture::refused(error.into_response()),
            None => RequireRedisFuture::called(self.inner.call(request)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequireRedisService`].
    #[derive(Debug)]
    pub struct RequireRedisFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProjection]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F },
        Refused { response: Option<Response> },
    }
}

impl<F> RequireRedisFuture<F> {
    fn called(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
        }
    }

    fn refused(response: Response) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F, E> Future for RequireRedisFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Called { future } => future.poll(cx),
            KindProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
