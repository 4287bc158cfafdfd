//! Redis down at start-up, then back: redis-guard next to bb8-redis with its defaults, against
//! one real redis-server, in the same run. Prints a markdown table.
//!
//! `cargo bench --all-features --bench outage` (about 40 s: bb8's default checkout waits 30 s).

use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, RedisGuard};

/// Polls `attempt` every 5 ms until it succeeds; returns how long that took.
async fn time_until_success<F, Fut>(mut attempt: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if attempt().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no success within 60 s");
}

#[tokio::main]
async fn main() {
    let mut server = RedisServer::start().expect("redis-server");
    server.stop();

    let guard = RedisGuard::connect(Config::builder(server.url()).name("down").build().unwrap())
        .await
        .unwrap();
    let manager = RedisConnectionManager::new(server.url()).unwrap();
    let bb8_pool = bb8::Pool::builder().build_unchecked(manager);

    let started = Instant::now();
    let refused = guard.get().await.is_err();
    let guard_fail = started.elapsed();
    let started = Instant::now();
    let bb8_failed = bb8_pool.get().await.is_err();
    let bb8_fail = started.elapsed();
    assert!(refused && bb8_failed);

    server.start_again().unwrap();
    let (guard_recovery, bb8_recovery) = tokio::join!(
        time_until_success(|| async { guard.get().await.is_ok() }),
        time_until_success(|| async {
            tokio::time::timeout(Duration::from_millis(50), bb8_pool.get())
                .await
                .is_ok_and(|r| r.is_ok())
        }),
    );

    println!("\n### Redis down at start-up, then started (loopback redis-server)\n");
    println!(
        "| pool | a request while Redis is down fails after | first success after Redis starts |"
    );
    println!("|---|---|---|");
    println!("| redis-guard (defaults) | {guard_fail:.2?} | {guard_recovery:.2?} |");
    println!("| bb8-redis (defaults) | {bb8_fail:.2?} | {bb8_recovery:.2?} |");
}
