//! Hot-checkout latency: redis-guard (validation on, both modes) next to bb8-redis with and without its
//! PING-on-checkout, against one real redis-server, in the same run.
//!
//! `make bench` (or `cargo bench --all-features --bench checkout`) prints a markdown table.

use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, PoolMode, RedisGuard, StartupMode};

const WARMUP: usize = 2_000;
const SAMPLES: usize = 50_000;

struct Row {
    name: &'static str,
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarize(name: &'static str, mut samples: Vec<Duration>) -> Row {
    samples.sort();
    let total: Duration = samples.iter().sum();
    Row {
        name,
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
        mean: total / samples.len() as u32,
    }
}

/// Times `SAMPLES` checkouts of a hot connection: before each, a connection is checked out and
/// used for a PING, as the previous request would have, so every contender hands out a
/// connection used a moment ago and pays the same cache effects. Only the checkout is timed.
macro_rules! measure_hot_checkout {
    ($get:expr) => {{
        let mut samples = Vec::with_capacity(SAMPLES);
        for i in 0..(WARMUP + SAMPLES) {
            {
                let mut conn = $get.await.expect("checkout");
                let _: () = redis::cmd("PING")
                    .query_async(&mut *conn)
                    .await
                    .expect("ping");
            }
            let started = Instant::now();
            let conn = $get.await.expect("checkout");
            let elapsed = started.elapsed();
            drop(conn);
            if i >= WARMUP {
                samples.push(elapsed);
            }
        }
        samples
    }};
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start().expect("redis-server");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for (name, mode) in [
            (
                "redis-guard exclusive (validation on, hot)",
                PoolMode::Exclusive,
            ),
            ("redis-guard shared (validation on, hot)", PoolMode::Shared),
        ] {
            let config = Config::builder(server.url())
                .name(name)
                .mode(mode)
                .startup(StartupMode::WaitFor(Duration::from_secs(5)))
                .build()
                .unwrap();
            let guard = RedisGuard::connect(config).await.unwrap();
            rows.push(summarize(name, measure_hot_checkout!(guard.get())));
        }
        for (name, test) in [
            ("bb8-redis test_on_check_out=true (PING)", true),
            ("bb8-redis test_on_check_out=false", false),
        ] {
            let manager = RedisConnectionManager::new(server.url()).unwrap();
            let pool = bb8::Pool::builder()
                .max_size(10)
                .test_on_check_out(test)
                .build(manager)
                .await
                .unwrap();
            let samples = measure_hot_checkout!(pool.get());
            rows.push(summarize(name, samples));
        }
        rows
    });

    println!(
        "\n### Hot checkout latency ({SAMPLES} checkouts each, one task, loopback redis-server)\n"
    );
    println!("| pool | p50 | p99 | mean | p50 vs bb8 with PING |");
    println!("|---|---|---|---|---|");
    let baseline = rows[2].p50.as_secs_f64();
    for row in &rows {
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.2} µs | {:.3}x |",
            row.name,
            row.p50.as_secs_f64() * 1e6,
            row.p99.as_secs_f64() * 1e6,
            row.mean.as_secs_f64() * 1e6,
            row.p50.as_secs_f64() / baseline,
        );
    }
}
