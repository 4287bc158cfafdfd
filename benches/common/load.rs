//! Load in interleaved rounds, shared by the throughput benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Each contender runs `ROUNDS` times per concurrency, in turns with the others (the order
/// rotates), so that a change of conditions during the run (where the scheduler puts
/// `redis-server`, the CPU's clock) falls on every contender alike; a ratio is taken between
/// runs of the same round, and the table gives their median and range.
pub const ROUNDS: usize = 5;
pub const WARMUP: Duration = Duration::from_millis(100);
pub const RUN: Duration = Duration::from_millis(400);

pub struct Measured {
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The longest single operation: under overload an unfair queue shows here, where a
    /// percentile hides the few callers it starved.
    pub max: Duration,
}

/// `concurrency` tasks call `op` in a loop; latencies after the warm-up are kept.
pub async fn run_load<F, Fut>(concurrency: usize, op: F) -> (f64, Vec<Duration>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    op().await;
                    if at >= started + WARMUP {
                        latencies.push(at.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(WARMUP + RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all.len() as f64 / RUN.as_secs_f64(), all)
}

/// Every round's throughput of one contender, and the latencies of all its rounds.
#[derive(Default)]
pub struct Rounds {
    ops_per_sec: Vec<f64>,
    latencies: Vec<Duration>,
}

impl Rounds {
    pub fn add(&mut self, (ops_per_sec, latencies): (f64, Vec<Duration>)) {
        self.ops_per_sec.push(ops_per_sec);
        self.latencies.extend(latencies);
    }

    pub fn measured(&mut self) -> Measured {
        self.latencies.sort();
        let all = &self.latencies;
        Measured {
            ops_per_sec: median(&self.ops_per_sec),
            p50: all[all.len() / 2],
            p99: all[all.len() * 99 / 100],
            max: *all.last().unwrap(),
        }
    }

    /// This contender's throughput over `other`'s, round by round: median and range.
    pub fn ratio(&self, other: &Rounds) -> String {
        let ratios: Vec<f64> = self
            .ops_per_sec
            .iter()
            .zip(&other.ops_per_sec)
            .map(|(a, b)| a / b)
            .collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        format!("{:.2}x ({low:.2}-{high:.2})", median(&ratios))
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Runs `loads` in turns, `ROUNDS` times, the first of each round rotating.
pub async fn interleaved<L, Fut>(loads: &[L]) -> Vec<Rounds>
where
    L: Fn() -> Fut,
    Fut: std::future::Future<Output = (f64, Vec<Duration>)>,
{
    let mut rounds: Vec<Rounds> = loads.iter().map(|_| Rounds::default()).collect();
    for round in 0..ROUNDS {
        for turn in 0..loads.len() {
            let index = (round + turn) % loads.len();
            rounds[index].add(loads[index]().await);
        }
    }
    rounds
}

pub fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
