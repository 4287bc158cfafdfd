//! The demo service's routes, shared by the `server` and `chaos` examples.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use redis::AsyncCommands;
use redis_guard::prometheus::PrometheusMetrics;
use redis_guard::{Health, Redis, RedisGuard, RedisGuardLayer, RequireRedisLayer};
use serde_json::{Value, json};

async fn visits(mut redis: Redis) -> Result<Json<Value>, redis_guard::Error> {
    let visits: i64 = redis.incr("redis-guard:demo:visits", 1).await?;
    Ok(Json(json!({ "visits": visits })))
}

/// `GET /visits` (needs Redis), `/livez`, `/readyz` and `/metrics`.
pub fn app(guard: RedisGuard, metrics: &PrometheusMetrics) -> Router {
    Router::new()
        // GET counts a visit; HEAD must not (axum would run the GET handler for it).
        .route(
            "/visits",
            get(visits).head(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        // While Redis is down, /visits answers 503 at once instead of waiting on timeouts.
        .route_layer(RequireRedisLayer::new(guard.clone()))
        .layer(RedisGuardLayer::new(guard.clone()))
        .merge(Health::new().require(guard).router())
        .merge(metrics.router())
}
