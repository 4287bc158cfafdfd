//! A storm of cancellations: what evicting connections returned with a reply outstanding
//! costs. 32 clients GET through a pool of 16 over a proxy that holds each reply back 1 ms (so
//! calls are in flight long enough to be cut); in the storm, half the calls are abandoned at a
//! random point within 2 ms, as a tower `TimeoutLayer` would under load. Prints a markdown
//! table: completed GETs a second, connects a second, for a calm run and the storm.
//!
//! `cargo bench --all-features --bench cancellation` (about 15 s).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
use redis_guard::{Config, RedisGuard};

const CONCURRENCY: usize = 32;
const RUN: Duration = Duration::from_secs(5);

struct Run {
    completed: u64,
    cancelled: u64,
    connects: u64,
}

async fn run(guard: &RedisGuard, proxy: &FaultProxy, storm: bool) -> Run {
    let running = Arc::new(AtomicBool::new(true));
    let completed = Arc::new(AtomicU64::new(0));
    let cancelled = Arc::new(AtomicU64::new(0));
    let connects_before = proxy.connections_accepted();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (guard, running) = (guard.clone(), running.clone());
            let (completed, cancelled) = (completed.clone(), cancelled.clone());
            tokio::spawn(async move {
                let mut count = 0u32;
                while running.load(Ordering::Relaxed) && count < 1_000_000 {
                    count += 1;
                    let call = async {
                        let mut conn = guard.get().await.ok()?;
                        conn.get::<_, Option<String>>(common::KEY).await.ok()
                    };
                    if storm && fastrand::bool() {
                        let limit = Duration::from_micros(fastrand::u64(0..2_000));
                        match tokio::time::timeout(limit, call).await {
                            Ok(Some(_)) => completed.fetch_add(1, Ordering::Relaxed),
                            Ok(None) => 0,
                            Err(_) => cancelled.fetch_add(1, Ordering::Relaxed),
                        };
                    } else if call.await.is_some() {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    Run {
        completed: completed.load(Ordering::Relaxed),
        cancelled: cancelled.load(Ordering::Relaxed),
        connects: proxy.connections_accepted() - connects_before,
    }
}

fn main() {
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server");
        let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
        proxy.set_mode(ProxyMode::Delay(Duration::from_millis(1)));
        let config = Config::builder(proxy.url())
            .name("cancellation")
            .max_size(common::POOL_SIZE)
            .build()
            .unwrap();
        let guard = RedisGuard::connect(config).await.unwrap();
        let calm = run(&guard, &proxy, false).await;
        let storm = run(&guard, &proxy, true).await;

        println!(
            "\n### Cancellation storm (GET, concurrency {CONCURRENCY}, pool {}, 1 ms reply delay, {RUN:?} each)\n",
            common::POOL_SIZE
        );
        println!("| run | completed GETs/s | cancelled calls/s | connects/s |");
        println!("|---|---|---|---|");
        let secs = RUN.as_secs_f64();
        for (name, r) in [
            ("calm", &calm),
            ("storm: half the calls abandoned within 2 ms", &storm),
        ] {
            println!(
                "| {name} | {:.0} | {:.0} | {:.1} |",
                r.completed as f64 / secs,
                r.cancelled as f64 / secs,
                r.connects as f64 / secs
            );
        }
    });
}
