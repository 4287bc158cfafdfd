//! Fixtures shared by the integration tests: a router over a guarded pool, a bounded load
//! driver, and metric readings from the real Prometheus recorder.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use redis_guard::prometheus::PrometheusMetrics;
use redis_guard::{
    Config, ConfigBuilder, Health, PoolMode, Redis, RedisGuard, RedisGuardLayer, RequireRedisLayer,
};
use tower::ServiceExt;

/// Every test's own bound: no test waits on anything for longer.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A value no other request in this process uses.
pub fn unique_value() -> String {
    format!(
        "v{}-{}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Tasks alive in the test's runtime: a pool's background tasks, connection drivers, ...
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Logs to the test output when `RUST_LOG` is set. Installs nothing otherwise: a test binary
/// that captures logs installs its own subscriber, whichever test runs first.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The Prometheus recorder, installed once per test binary before any pool is created.
pub fn metrics() -> PrometheusMetrics {
    init_tracing();
    PrometheusMetrics::install().expect("no other recorder in the tests")
}

/// Reads one series of pool `pool` from the recorder; 0 when absent.
pub fn metric(name: &str, pool: &str, labels: &[(&str, &str)]) -> f64 {
    let text = metrics().render();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && series.contains(&format!("pool=\"{pool}\""))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("numeric sample"))
        .sum()
}

pub fn evictions(pool: &str, reason: &str) -> f64 {
    metric(
        "redis_guard_stale_evictions_total",
        pool,
        &[("reason", reason)],
    )
}

pub fn validations(pool: &str, result: &str) -> f64 {
    metric("redis_guard_validations_total", pool, &[("result", result)])
}

/// A config for `url` named `pool`, as the tests use it.
pub fn config(url: &str, pool: &str) -> ConfigBuilder {
    metrics();
    Config::builder(url).name(pool).max_size(8).min_idle(0)
}

/// [`config`] in `mode`; a shared-mode pool's name ends in `-shared`, so the two runs of a
/// test keep their metrics apart.
pub fn config_in(mode: PoolMode, url: &str, pool: &str) -> ConfigBuilder {
    config(url, &pool_name(mode, pool)).mode(mode)
}

/// The name of pool `base` in `mode`.
pub fn pool_name(mode: PoolMode, base: &str) -> String {
    match mode {
        PoolMode::Exclusive => base.to_owned(),
        _ => format!("{base}-shared"),
    }
}

/// A `max_size` that leaves `exclusive` connections for callers who need their own: in
/// shared mode, the shared connections of both lanes (reads, and every call that may write)
/// come on top.
pub fn max_size(mode: PoolMode, exclusive: u32) -> u32 {
    match mode {
        PoolMode::Exclusive => exclusive,
        _ => exclusive + 2 * redis_guard::config::defaults::SHARED_CONNECTIONS,
    }
}

/// Defines a test that runs once per pool mode, as `name::exclusive` and `name::shared`: the
/// body gets the mode and builds its pool with [`config_in`].
#[macro_export]
macro_rules! in_both_modes {
    ($(#[$attr:meta])* async fn $name:ident($mode:ident: PoolMode) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($mode: redis_guard::PoolMode) $body

            $(#[$attr])*
            async fn exclusive() {
                run(redis_guard::PoolMode::Exclusive).await
            }

            $(#[$attr])*
            async fn shared() {
                run(redis_guard::PoolMode::Shared).await
            }
        }
    };
}

/// A lazily started guard, once it is ready (Redis reachable, breaker closed).
pub async fn guard(builder: ConfigBuilder) -> RedisGuard {
    let guard = unready_guard(builder).await;
    assert!(
        eventually(Duration::from_secs(5), || guard.is_ready()).await,
        "pool ready within 5 s"
    );
    guard
}

/// A lazily started guard, as it is the moment `connect` returns.
pub async fn unready_guard(builder: ConfigBuilder) -> RedisGuard {
    RedisGuard::connect(builder.build().expect("valid test config"))
        .await
        .expect("lazy start-up never fails")
}

#[derive(serde::Deserialize)]
pub struct EchoQuery {
    pub value: String,
}

/// `GET /echo?value=v`: ECHOes `v` through Redis and answers 200 with the reply, or 500
/// `mismatch` if Redis answered something else. `GET /hold?ms=n` holds a connection.
pub fn router(guard: RedisGuard) -> Router {
    Router::new()
        .route("/echo", get(echo))
        .route("/hold", get(hold))
        .layer(RedisGuardLayer::new(guard))
}

/// The routes of [`router`] behind `RequireRedisLayer`, with `/livez` and `/readyz` beside them
/// (with details: the tests read them as an operator would).
pub fn service(guard: RedisGuard) -> Router {
    Router::new()
        .route("/echo", get(echo))
        .route("/hold", get(hold))
        .route_layer(RequireRedisLayer::new(guard.clone()))
        .layer(RedisGuardLayer::new(guard.clone()))
        .merge(Health::new().require(guard).show_details(true).router())
}

async fn echo(mut redis: Redis, Query(q): Query<EchoQuery>) -> (StatusCode, String) {
    let reply: Result<String, _> = redis::cmd("ECHO")
        .arg(&q.value)
        .query_async(&mut redis)
        .await;
    match reply {
        Ok(reply) if reply == q.value => (StatusCode::OK, reply),
        Ok(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("mismatch: {other}"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
pub struct HoldQuery {
    pub ms: u64,
}

async fn hold(redis: Redis, Query(q): Query<HoldQuery>) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(q.ms)).await;
    drop(redis);
    StatusCode::OK
}

/// One response: status, body, and how long it took.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub body: String,
    pub elapsed: Duration,
}

pub async fn call(app: &Router, uri: &str) -> Outcome {
    call_with(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub async fn call_with(app: &Router, request: Request<Body>) -> Outcome {
    let started = Instant::now();
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Outcome {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Sends `total` echo requests, `concurrency` at a time, each with a unique value.
pub async fn drive_echo(app: &Router, total: usize, concurrency: usize) -> Vec<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..concurrency).map(|_| {
        let app = app.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < total {
                let value = unique_value();
                outcomes.push(call(&app, &format!("/echo?value={value}")).await);
                // As a client waiting on its socket would: refusals complete without a yield.
                tokio::task::yield_now().await;
            }
            outcomes
        })
    });
    let all = tokio::time::timeout(TEST_DEADLINE, futures_join(workers.collect()))
        .await
        .expect("load finished within the test deadline");
    all.into_iter().flatten().collect()
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("worker panicked"));
    }
    out
}

/// The failures among `outcomes`, for assertion messages.
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status != StatusCode::OK)
        .collect()
}

/// Waits until `condition` holds, checking every 5 ms for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

/// What `future` logs (every level, every target) while it runs, as text: the subscriber is
/// scoped to this future, so other tests' logs do not mix in.
pub async fn capture_logs<F: std::future::Future>(future: F) -> String {
    use tracing::instrument::WithSubscriber;
    let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || LogSink(sink.clone()))
        .finish();
    future.with_subscriber(scoped_dispatch(subscriber)).await;
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// `subscriber` as a dispatcher for one future that sees every callsite, whichever test
/// reached it first. tracing caches each callsite's interest for the whole process, and
/// while one dispatcher is registered it asks only the current thread's (a test running
/// without one, on another thread, caches "never" and the span is gone for everyone). A
/// second dispatcher, alive for the whole binary, makes every registration ask them all.
pub fn scoped_dispatch(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::Dispatch {
    static BYSTANDER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    BYSTANDER.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    tracing::Dispatch::new(subscriber)
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
