//! TLS next to plain TCP, in the same run against one redis-server listening on both: hot
//! checkout latency and GET throughput at concurrency 32 through redis-guard. Prints a
//! markdown table.
//!
//! `cargo bench --all-features --bench tls` (about 15 s).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_guard::config::TlsSettings;
use redis_guard::testkit::{RedisServer, TestCertificates};
use redis_guard::{Config, RedisGuard};

const SAMPLES: usize = 20_000;
const CONCURRENCY: usize = 32;
const RUN: Duration = Duration::from_secs(3);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Hot checkout: the connection was used right before, as in `benches/checkout.rs`.
async fn hot_checkout(guard: &RedisGuard) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        {
            let mut conn = guard.get().await.unwrap();
            let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        }
        let started = Instant::now();
        let conn = guard.get().await.unwrap();
        samples.push(started.elapsed());
        drop(conn);
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn throughput(guard: &RedisGuard) -> f64 {
    let running = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (guard, running, done) = (guard.clone(), running.clone(), done.clone());
            tokio::spawn(async move {
                let mut count = 0u64;
                while running.load(Ordering::Relaxed) && count < 10_000_000 {
                    let mut conn = guard.get().await.unwrap();
                    let _: Option<String> = conn.get(common::KEY).await.unwrap();
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / RUN.as_secs_f64()
}

fn main() {
    common::runtime().block_on(async {
        let certs = TestCertificates::generate(&["localhost"]).expect("certificates");
        let server = RedisServer::start_tls(&certs, false, &[]).expect("redis-server");
        let plain = Config::builder(server.url())
            .name("plain")
            .max_size(common::POOL_SIZE)
            .build()
            .unwrap();
        let tls = Config::builder(server.tls_url())
            .name("tls")
            .max_size(common::POOL_SIZE)
            .tls(TlsSettings {
                ca_file: Some(certs.ca()),
                ..TlsSettings::default()
            })
            .build()
            .unwrap();
        println!(
            "\n### TLS next to plain TCP (redis-guard, pool {}, loopback)\n",
            common::POOL_SIZE
        );
        println!("| transport | hot checkout p50 | p99 | GET ops/s at concurrency {CONCURRENCY} |");
        println!("|---|---|---|---|");
        for (name, config) in [("plain TCP", plain), ("TLS (rustls)", tls)] {
            let guard = RedisGuard::connect(config).await.unwrap();
            for _ in 0..100 {
                if guard.get().await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (p50, p99) = hot_checkout(&guard).await;
            let ops = throughput(&guard).await;
            println!("| {name} | {p50:.2?} | {p99:.2?} | {ops:.0} |");
        }
    });
}
