//! A job queue on a Redis list: producers `LPUSH` from an HTTP route, workers wait on `BLPOP`.
//!
//! ```text
//! cargo run --example job_queue --features testkit
//! curl -s -X POST localhost:3002/jobs -d 'resize image 42'
//! ```
//!
//! Worth copying:
//! - a worker holds its connection only for one `BLPOP` at a time, so `max_size` bounds
//!   workers plus requests, and a worker never starves the routes of connections for long;
//! - a `BLPOP` waits its own timeout plus `response_timeout` before the pool gives up on it;
//! - if the worker is cancelled while it waits (shutdown), the pool closes that connection,
//!   so the server drops the `BLPOP` and the next job is not popped for nobody;
//! - on shutdown the pool is closed after the workers stop, with a grace for jobs in hand.

use std::time::Duration;

use axum::Router;
use axum::routing::post;
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, Redis, RedisGuard, RedisGuardLayer};

const QUEUE: &str = "jobs";
const WORKERS: usize = 2;

async fn enqueue(mut redis: Redis, body: String) -> Result<String, redis_guard::Error> {
    let queued: i64 = redis.lpush(QUEUE, body).await?;
    Ok(format!("queued, {queued} waiting\n"))
}

/// Takes jobs one at a time until cancelled. A checkout or command failure (Redis down)
/// is waited out: the pool's breaker refuses at once while Redis is unreachable.
async fn work(guard: RedisGuard, worker: usize) {
    loop {
        let job: Result<Option<(String, String)>, redis_guard::Error> = async {
            let mut conn = guard.get().await?;
            Ok(conn.blpop(QUEUE, 5.0).await?)
        }
        .await;
        match job {
            Ok(Some((_, job))) => println!("worker {worker}: {job}"),
            Ok(None) => {} // nothing within 5 s: wait again
            Err(e) => {
                eprintln!("worker {worker}: {e}");
                tokio::time::sleep(guard.retry_after()).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = RedisServer::start()?;
    let config = Config::builder(server.url())
        .name("jobs")
        .max_size(8)
        .build()?;
    let guard = RedisGuard::connect(config).await?;

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        workers.spawn(work(guard.clone(), worker));
    }
    let app = Router::new()
        .route("/jobs", post(enqueue))
        .layer(RedisGuardLayer::new(guard.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
    println!(
        "serving on http://{}; Ctrl-C to stop",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Workers waiting in BLPOP are cancelled: their connections are closed, no job is lost.
    workers.shutdown().await;
    guard.close(Duration::from_secs(5)).await;
    drop(server);
    Ok(())
}
