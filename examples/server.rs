//! The demo service: an axum app whose `/visits` counter lives in Redis, guarded by redis-guard.
//!
//! ```text
//! cargo run --example server --features testkit,prometheus
//! ```
//!
//! Listens on `LISTEN_ADDR` (default `127.0.0.1:3000`). Uses `REDIS_URL` when set; otherwise
//! starts an embedded `redis-server` on a free loopback port and says so.

mod demo;

use std::net::SocketAddr;

use redis_guard::prometheus::PrometheusMetrics;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, RedisGuard};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    // Before the pool, so it registers its series with this recorder.
    let metrics = PrometheusMetrics::install()?;

    // Kept alive for as long as the service runs.
    let mut embedded = None;
    let config = match std::env::var("REDIS_URL") {
        Ok(_) => Config::from_env()?,
        Err(_) => {
            let server = RedisServer::start()?;
            println!(
                "REDIS_URL is not set: started an embedded redis-server at {}",
                server.url()
            );
            let config = Config::builder(server.url()).name("demo").build()?;
            embedded = Some(server);
            config
        }
    };
    let guard = RedisGuard::connect(config).await?;

    let app = demo::app(guard.clone(), &metrics);

    let addr: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!(
        "redis-guard demo serving on http://{addr} (pool '{}', {})",
        guard.name(),
        guard.config().redacted_url()
    );
    println!("  curl http://{addr}/visits");
    println!("  curl http://{addr}/readyz?verbose");
    println!("  curl http://{addr}/livez");
    println!("  curl http://{addr}/metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    drop(embedded);
    Ok(())
}
