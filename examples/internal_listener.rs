//! Health and metrics on an internal listener, apart from the public application.
//!
//! ```text
//! cargo run --example internal_listener --features testkit,prometheus
//! ```
//!
//! The public app listens on `PUBLIC_ADDR` (default `0.0.0.0:3000`): its own routes only, no
//! `/readyz`, no `/metrics`. Health (with details) and metrics listen on `INTERNAL_ADDR`
//! (default `127.0.0.1:9090`): reachable from the host itself, or, in Kubernetes, bound to
//! the pod IP and named in the probes and the scrape config but in no Service or Ingress.
//! Uses `REDIS_URL` when set; otherwise starts an embedded `redis-server`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use redis::AsyncCommands;
use redis_guard::prometheus::PrometheusMetrics;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, Health, Redis, RedisGuard, RedisGuardLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();

    // Kept alive for as long as the service runs.
    let mut embedded = None;
    let config = match std::env::var("REDIS_URL") {
        Ok(_) => Config::from_env()?,
        Err(_) => {
            let server = RedisServer::start()?;
            let config = Config::builder(server.url()).name("app").build()?;
            embedded = Some(server);
            config
        }
    };
    // Before the pool: what a pool counts while no recorder is installed is lost.
    let metrics = PrometheusMetrics::install()?;
    let guard = RedisGuard::connect(config).await?;

    // What the public reaches: the application's routes, nothing about the inside.
    let public: Router = Router::new()
        .route(
            "/visits",
            get(|Redis(mut conn): Redis| async move {
                let visits: i64 = conn.incr("visits", 1).await?;
                Ok::<_, redis_guard::Error>(visits.to_string())
            }),
        )
        .layer(RedisGuardLayer::new(guard.clone()));

    // What operators, the orchestrator and Prometheus reach: why a check fails, and graphs.
    let internal: Router = Health::new()
        .require(guard.clone())
        .show_details(true)
        .router()
        .merge(metrics.router());

    let public_addr: SocketAddr = env_addr("PUBLIC_ADDR", "0.0.0.0:3000")?;
    let internal_addr: SocketAddr = env_addr("INTERNAL_ADDR", "127.0.0.1:9090")?;
    let public_listener = tokio::net::TcpListener::bind(public_addr).await?;
    let internal_listener = tokio::net::TcpListener::bind(internal_addr).await?;
    println!(
        "public app on http://{}/visits; health and metrics on http://{}/readyz?verbose and /metrics",
        public_listener.local_addr()?,
        internal_listener.local_addr()?
    );

    // Either listener failing ends the service: a pod without probes or graphs is not one
    // to keep running.
    tokio::select! {
        served = axum::serve(public_listener, public) => served?,
        served = axum::serve(internal_listener, internal) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    guard.close(Duration::from_secs(5)).await;
    drop(embedded);
    Ok(())
}

fn env_addr(variable: &str, default: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    Ok(std::env::var(variable)
        .unwrap_or_else(|_| default.to_owned())
        .parse()?)
}
