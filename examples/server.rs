//! The demo service: an axum app whose `/visits` counter lives in Redis, guarded by redis-guard.
//!
//! ```text
//! cargo run --example server --features testkit,prometheus
//! ```
//!
//! Listens on `LISTEN_ADDR` (default `127.0.0.1:3000`). Uses `REDIS_URL` when set; otherwise
//! starts an embedded `redis-server` on a free loopback port and says so.

mod demo;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use redis_guard::prometheus::{PrometheusBuilder, PrometheusMetrics};
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
    // The application's own recorder, with redis-guard's histogram buckets. Installed before
    // the pool: what a pool counts while no recorder is installed is lost.
    let handle = PrometheusMetrics::configure(PrometheusBuilder::new())?.install_recorder()?;
    let metrics = PrometheusMetrics::from_handle(handle);
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
    serve(listener, app, shutdown_signal()).await;
    println!("shutting down");
    // The pool first (requests still running get their connections back within the grace),
    // then the embedded redis-server: a `kill` of the demo leaves no orphan.
    let still_in_use = guard.close(Duration::from_secs(5)).await;
    if still_in_use > 0 {
        println!("{still_in_use} connection(s) still in use at shutdown");
    }
    drop(embedded);
    Ok(())
}

/// A client must send its request headers within this: slow-loris connections are dropped
/// instead of being held open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` over HTTP/1.1 with a header-read timeout, until `shutdown`
/// resolves; then stops accepting and lets requests in flight finish, for at most
/// [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}

/// Resolves on Ctrl-C or SIGTERM (what `kill` and orchestrators send).
pub async fn shutdown_signal() {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
