//! The fault scenarios F1-F7 for every contender, against one real redis-server behind the
//! fault proxy, in the same run: failed requests, hangs, time to first success, worst latency.
//!
//! `cargo bench --all-features --bench faults` (about three minutes, bounded).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Contender, NAMES};
use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
use tokio::sync::Mutex;

/// A request slower than this counts as hung (and is abandoned).
const HANG: Duration = Duration::from_secs(2);
const REQUESTS: usize = 200;
const CONCURRENCY: usize = 8;

#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    hung: usize,
    first_success: Option<Duration>,
    worst: Duration,
}

impl Tally {
    fn record(&mut self, since: Instant, started: Instant, result: Option<Result<(), String>>) {
        let elapsed = started.elapsed();
        self.worst = self.worst.max(elapsed);
        match result {
            Some(Ok(())) => {
                self.ok += 1;
                if self.first_success.is_none() {
                    self.first_success = Some(since.elapsed());
                }
            }
            Some(Err(_)) => self.failed += 1,
            None => self.hung += 1,
        }
    }
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// `REQUESTS` GETs at `CONCURRENCY`, each abandoned after `HANG`, within 20 s in all.
async fn drive(contender: &Contender) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let since = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (contender, tally, next) = (contender.clone(), tally.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS
                    && since.elapsed() < Duration::from_secs(20)
                {
                    let started = Instant::now();
                    let result = tokio::time::timeout(HANG, contender.get()).await.ok();
                    tally.lock().await.record(since, started, result);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    Arc::try_unwrap(tally).ok().unwrap().into_inner()
}

async fn build_all(url: &str, scenario: &str) -> Vec<Contender> {
    let mut all = Vec::new();
    for i in 0..NAMES.len() {
        let name = format!("{scenario}-{i}");
        all.push(
            Contender::build(i, url, &name, Duration::from_secs(10))
                .await
                .unwrap(),
        );
    }
    // Fill every pool, then leave it idle past redis-guard's validation bypass window.
    for contender in &all {
        let deadline = Instant::now() + Duration::from_secs(5);
        while contender.get().await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let warm: Vec<_> = (0..64)
            .map(|_| {
                let c = contender.clone();
                tokio::spawn(async move { c.get().await })
            })
            .collect();
        for w in warm {
            let _ = w.await;
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    all
}

fn print_tally_table(title: &str, tallies: &[Tally]) {
    println!("\n#### {title}\n");
    println!("| client | ok | failed | hung (> {HANG:?}) | first success | worst |");
    println!("|---|---|---|---|---|---|");
    for (name, t) in NAMES.iter().zip(tallies) {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            t.ok,
            t.failed,
            t.hung,
            t.first_success.map_or("none".to_owned(), ms),
            ms(t.worst)
        );
    }
}

fn main() {
    let runtime = common::runtime();
    runtime.block_on(run());
}

async fn run() {
    let mut server = RedisServer::start().expect("redis-server");
    server.command(&["SET", common::KEY, "value"]).unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let url = proxy.url();
    println!(
        "\n### Fault scenarios: {REQUESTS} GETs at concurrency {CONCURRENCY} after each fault, pool of {}",
        common::POOL_SIZE
    );

    for scenario in [
        "F1 restart while idle",
        "F2 CLIENT KILL",
        "F3 server timeout",
        "F4 RST",
        "F5 frozen sockets",
    ] {
        let contenders = build_all(&url, &scenario[..2]).await;
        match &scenario[..2] {
            "F1" => tokio::task::block_in_place(|| server.restart()).unwrap(),
            "F2" => {
                server
                    .command(&["CLIENT", "KILL", "TYPE", "normal"])
                    .unwrap();
            }
            "F3" => {
                server.command(&["CONFIG", "SET", "timeout", "1"]).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(redis::Value::BulkString(list)) =
                        server.command(&["CLIENT", "LIST", "TYPE", "normal"])
                        && String::from_utf8_lossy(&list).lines().count() <= 1
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                server.command(&["CONFIG", "SET", "timeout", "0"]).unwrap();
            }
            "F4" => {
                proxy.reset_all().await;
            }
            _ => {
                proxy.freeze_all().await;
            }
        }
        if scenario.starts_with("F1") {
            server.command(&["SET", common::KEY, "value"]).unwrap();
        }
        let mut tallies = Vec::new();
        for contender in &contenders {
            tallies.push(drive(contender).await);
        }
        print_tally_table(scenario, &tallies);
    }

    // F6: Redis down when the service starts, then started.
    tokio::task::block_in_place(|| server.stop());
    println!("\n#### F6 Redis down at start-up, then started\n");
    println!("| client | a request while down | first success after Redis starts |");
    println!("|---|---|---|");
    let mut while_down = Vec::new();
    let mut built = Vec::new();
    for i in 0..NAMES.len() {
        let started = Instant::now();
        match Contender::build(i, &url, &format!("F6-{i}"), Duration::from_secs(15)).await {
            Ok(contender) => {
                let started = Instant::now();
                let outcome =
                    match tokio::time::timeout(Duration::from_secs(5), contender.get()).await {
                        Ok(Ok(())) => "succeeded?".to_owned(),
                        Ok(Err(_)) => format!("fails after {}", ms(started.elapsed())),
                        Err(_) => "hangs > 5 s".to_owned(),
                    };
                while_down.push(outcome);
                built.push(Some(contender));
            }
            Err(_) => {
                while_down.push(format!("constructor fails after {}", ms(started.elapsed())));
                built.push(None);
            }
        }
    }
    tokio::task::block_in_place(|| server.start_again()).unwrap();
    server.command(&["SET", common::KEY, "value"]).unwrap();
    let restarted = Instant::now();
    let recoveries = built.into_iter().enumerate().map(|(i, contender)| {
        let url = url.clone();
        tokio::spawn(async move {
            let contender = match contender {
                Some(c) => c,
                None => loop {
                    if let Ok(c) =
                        Contender::build(i, &url, "F6-retry", Duration::from_secs(1)).await
                    {
                        break c;
                    }
                },
            };
            while restarted.elapsed() < Duration::from_secs(30) {
                if let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_millis(200), contender.get()).await
                {
                    return Some(restarted.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        })
    });
    let recoveries: Vec<_> = recoveries.collect();
    for (i, recovery) in recoveries.into_iter().enumerate() {
        let recovered = recovery
            .await
            .unwrap()
            .map_or("none within 30 s".to_owned(), ms);
        println!("| {} | {} | {} |", NAMES[i], while_down[i], recovered);
    }

    // F7: Redis unreachable for 3 s under load (concurrency 32): the proxy refuses and resets.
    println!("\n#### F7 Redis unreachable for 3 s under load (32 clients)\n");
    println!(
        "| client | ok | failed | hung (> {HANG:?}) | worst | connects/s while down | first success after |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, name) in NAMES.iter().enumerate() {
        let contender = Contender::build(i, &url, &format!("F7-{i}"), Duration::from_secs(10))
            .await
            .unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let load: Vec<_> = (0..32)
            .map(|_| {
                let (contender, running, tally) =
                    (contender.clone(), running.clone(), tally.clone());
                tokio::spawn(async move {
                    let since = Instant::now();
                    while running.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let result = tokio::time::timeout(HANG, contender.get()).await.ok();
                        tally.lock().await.record(since, started, result);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let accepted_before = proxy.connections_accepted();
        proxy.set_mode(ProxyMode::Refuse);
        proxy.reset_all().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let connects = (proxy.connections_accepted() - accepted_before) as f64 / 3.0;
        let before_return = tally.lock().await.ok;
        proxy.set_mode(ProxyMode::Pass);
        let returned = Instant::now();
        let mut first_success = None;
        while returned.elapsed() < Duration::from_secs(15) {
            if tally.lock().await.ok > before_return {
                first_success = Some(returned.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        running.store(false, Ordering::Relaxed);
        for task in load {
            let _ = task.await;
        }
        let t = tally.lock().await;
        println!(
            "| {name} | {} | {} | {} | {} | {connects:.1} | {} |",
            t.ok,
            t.failed,
            t.hung,
            ms(t.worst),
            first_success.map_or("none within 15 s".to_owned(), ms)
        );
    }
}
