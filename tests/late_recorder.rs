//! Metrics with the application's own recorder, installed after the pool (its own test
//! binary: a process has one global recorder). The pool must register its series once the
//! recorder arrives, and the helper must give the user's `PrometheusBuilder` real histogram
//! buckets.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_guard::prometheus::{PrometheusBuilder, PrometheusMetrics};
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, RedisGuard};

/// Setup: a pool created and used with no recorder installed; then the user's own
/// `PrometheusBuilder`, configured with `PrometheusMetrics::configure`, installed. Asserts:
/// within 2 s the pool's series appear, histograms with `_bucket` series, the gauges set
/// (ready 1), and traffic after that is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_installed_after_the_pool_gets_its_series() {
    let server = RedisServer::start().unwrap();
    let config = Config::builder(server.url()).name("late").build().unwrap();
    let guard = RedisGuard::connect(config).await.unwrap();
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("before", "recorder").await.unwrap();
    drop(conn);

    let builder = PrometheusMetrics::configure(PrometheusBuilder::new()).unwrap();
    let metrics = PrometheusMetrics::from_handle(builder.install_recorder().unwrap());
    let deadline = Instant::now() + Duration::from_secs(2);
    while !metrics
        .render()
        .contains("redis_guard_ready{pool=\"late\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "series registered within 2 s:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let mut conn = guard.get().await.unwrap();
        let _: () = conn.set("after", "recorder").await.unwrap();
    }
    let text = metrics.render();
    for series in [
        "redis_guard_checkout_duration_seconds_bucket{pool=\"late\",le=\"0.001\"}",
        "redis_guard_connection_hold_seconds_bucket{pool=\"late\",le=\"0.001\"}",
        "redis_guard_checkouts_total{pool=\"late\",result=\"ok\"} 5",
        "redis_guard_connection_hold_seconds_count{pool=\"late\"} 5",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}
