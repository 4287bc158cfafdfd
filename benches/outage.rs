//! Redis outages under load: redis-guard next to bb8-redis and deadpool-redis with their
//! defaults, in the same run, against one real redis-server that is stopped for 3 s ten times
//! while 32 clients per pool keep sending GETs. Each pool reaches Redis through its own fault
//! proxy (in pass mode), which counts its connect attempts. Prints a markdown table.
//!
//! `cargo bench --all-features --bench outage` (about 70 s).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Contender, NAMES};
use redis_guard::testkit::{FaultProxy, RedisServer};

const OUTAGES: usize = 10;
const OUTAGE: Duration = Duration::from_secs(3);
/// Service between outages, so every pool is back to steady state.
const STEADY: Duration = Duration::from_secs(2);
const CONCURRENCY: usize = 32;
/// The contenders of [`NAMES`] compared here: redis-guard in both modes, bb8-redis and
/// deadpool-redis with their defaults.
const CONTENDERS: [usize; 4] = [
    common::GUARD,
    common::GUARD_SHARED,
    common::BB8_DEFAULT,
    common::DEADPOOL,
];
/// Requests made this long after the stop are "while down": every pool has noticed by then.
const NOTICED: Duration = Duration::from_millis(500);

/// One request: when it started, how long it took, whether it succeeded.
#[derive(Clone, Copy)]
struct Sample {
    started: Instant,
    took: Duration,
    ok: bool,
}

struct Outage {
    stopped: Instant,
    restarted: Instant,
    /// Connect attempts per contender while Redis was down.
    attempts: Vec<u64>,
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    common::runtime().block_on(run());
}

async fn run() {
    let mut server = RedisServer::start().expect("redis-server");
    let mut proxies = Vec::new();
    let mut contenders = Vec::new();
    for index in CONTENDERS {
        let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
        let contender = Contender::build(
            index,
            &proxy.url(),
            &format!("outage{index}"),
            Duration::from_secs(5),
        )
        .await
        .expect("contender");
        for _ in 0..50 {
            if contender.get().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxies.push(proxy);
        contenders.push(contender);
    }

    let running = Arc::new(AtomicBool::new(true));
    let logs: Vec<Arc<Mutex<Vec<Sample>>>> = CONTENDERS.iter().map(|_| Arc::default()).collect();
    let mut workers = Vec::new();
    for (contender, log) in contenders.iter().zip(&logs) {
        for _ in 0..CONCURRENCY {
            let (contender, log, running) = (contender.clone(), log.clone(), running.clone());
            workers.push(tokio::spawn(async move {
                let mut count = 0u32;
                while running.load(Ordering::Relaxed) && count < 2_000_000 {
                    let started = Instant::now();
                    let ok = contender.get().await.is_ok();
                    log.lock().unwrap().push(Sample {
                        started,
                        took: started.elapsed(),
                        ok,
                    });
                    count += 1;
                    // A client that got an immediate refusal would still wait on its socket.
                    tokio::task::yield_now().await;
                }
            }));
        }
    }

    let mut outages = Vec::new();
    for _ in 0..OUTAGES {
        tokio::time::sleep(STEADY).await;
        let before: Vec<u64> = proxies.iter().map(|p| p.connections_accepted()).collect();
        let stopped = Instant::now();
        tokio::task::block_in_place(|| server.stop());
        tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
        let attempts = proxies
            .iter()
            .zip(&before)
            .map(|(p, b)| p.connections_accepted() - b)
            .collect();
        tokio::task::block_in_place(|| server.start_again()).expect("redis restarts");
        outages.push(Outage {
            stopped,
            restarted: Instant::now(),
            attempts,
        });
    }
    tokio::time::sleep(STEADY).await;
    running.store(false, Ordering::Relaxed);
    // bb8's checkouts may still be waiting out their 30 s; do not wait for them.
    for worker in workers {
        worker.abort();
    }

    println!(
        "\n### {OUTAGES} outages of {OUTAGE:?} under load (GET, concurrency {CONCURRENCY} per pool, \
         loopback redis-server stopped and started)\n"
    );
    println!(
        "| pool | connect attempts/s while down (mean / worst outage) | first success after Redis \
         is back: p50 / p95 / max | requests made while down: p99 latency | failed while down | \
         slowest request of the run |"
    );
    println!("|---|---|---|---|---|---|");
    for (slot, index) in CONTENDERS.iter().enumerate() {
        let log = logs[slot].lock().unwrap().clone();
        let rates: Vec<f64> = outages
            .iter()
            .map(|o| o.attempts[slot] as f64 / OUTAGE.as_secs_f64())
            .collect();
        let mean_rate = rates.iter().sum::<f64>() / rates.len() as f64;
        let worst_rate = rates.iter().cloned().fold(0.0, f64::max);
        // Only a success before the next outage counts as recovery from this one.
        let recoveries: Vec<Duration> = outages
            .iter()
            .filter_map(|o| {
                log.iter()
                    .filter(|s| s.ok)
                    .map(|s| s.started + s.took)
                    .filter(|done| *done >= o.restarted && *done < o.restarted + STEADY)
                    .map(|done| done.duration_since(o.restarted))
                    .min()
            })
            .collect();
        let recovery = if recoveries.is_empty() {
            format!("none within {STEADY:?} in any outage")
        } else {
            let missed = OUTAGES - recoveries.len();
            let missed = if missed == 0 {
                String::new()
            } else {
                format!(" (none within {STEADY:?} in {missed})")
            };
            format!(
                "{:.0?} / {:.0?} / {:.0?}{missed}",
                percentile(recoveries.clone(), 0.5),
                percentile(recoveries.clone(), 0.95),
                recoveries.iter().max().unwrap(),
            )
        };
        let worst = log.iter().map(|s| s.took).max().unwrap_or_default();
        let while_down: Vec<&Sample> = log
            .iter()
            .filter(|s| {
                outages
                    .iter()
                    .any(|o| s.started >= o.stopped + NOTICED && s.started < o.restarted)
            })
            .collect();
        let failed = while_down.iter().filter(|s| !s.ok).count();
        let latency_p99 = percentile(while_down.iter().map(|s| s.took).collect(), 0.99);
        println!(
            "| {} | {mean_rate:.1} / {worst_rate:.1} | {recovery} | {latency_p99:.2?} | {failed} of {} | {worst:.2?} |",
            NAMES[*index],
            while_down.len(),
        );
    }
}
