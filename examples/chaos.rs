//! The resilience tour: the demo service under steady load while Redis misbehaves.
//!
//! ```text
//! make chaos        # or: cargo run --release --all-features --example chaos [timeline.svg]
//! ```
//!
//! Starts an embedded redis-server behind the fault proxy and the demo service, drives steady
//! load at `/visits`, and walks through a restart, `CLIENT KILL`, connection resets, frozen
//! (half-open) sockets, an outage and the recovery. Prints a row per phase and writes an SVG
//! timeline (requests per outcome per 100 ms, phases shaded, breaker state underneath).

mod demo;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use redis_guard::prometheus::PrometheusMetrics;
use redis_guard::testkit::{FaultProxy, RedisServer};
use redis_guard::{BreakerState, Config, RedisGuard, StartupMode};
use tower::ServiceExt;

const WORKERS: usize = 16;
/// Each worker's pause between requests: steady load, not a saturation test.
const PACE: Duration = Duration::from_millis(4);
const BUCKET: Duration = Duration::from_millis(100);
const POOL: &str = "chaos";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused,
    Failed,
}

/// One request: when it started, how it ended, how long it took.
type Sample = (Instant, Outcome, Duration);

struct Phase {
    name: &'static str,
    start: Instant,
    end: Instant,
}

/// A counter or gauge of pool `chaos`, summed over its other labels.
fn metric(metrics: &PrometheusMetrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("pool=\"{POOL}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn drive(app: Router, samples: Arc<Mutex<Vec<Sample>>>, running: Arc<AtomicBool>) {
    while running.load(Ordering::Relaxed) {
        let at = Instant::now();
        let request = Request::get("/visits").body(Body::empty()).unwrap();
        let outcome = match app.clone().oneshot(request).await.map(|r| r.status()) {
            Ok(StatusCode::OK) => Outcome::Ok,
            Ok(StatusCode::SERVICE_UNAVAILABLE) => Outcome::Refused,
            _ => Outcome::Failed,
        };
        samples.lock().unwrap().push((at, outcome, at.elapsed()));
        tokio::time::sleep(PACE).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let svg_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/chaos.svg".to_owned());
    let metrics = PrometheusMetrics::install()?;
    let mut server = RedisServer::start()?;
    let proxy = FaultProxy::start(server.addr()).await?;
    let config = Config::builder(proxy.url())
        .name(POOL)
        .validation_bypass(Duration::from_millis(200))
        .startup(StartupMode::WaitFor(Duration::from_secs(5)))
        .build()?;
    let guard = RedisGuard::connect(config).await?;
    let app = demo::app(guard.clone(), &metrics);

    let samples = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    let start_load = || -> Vec<_> {
        running.store(true, Ordering::Relaxed);
        (0..WORKERS)
            .map(|_| tokio::spawn(drive(app.clone(), samples.clone(), running.clone())))
            .collect()
    };
    let mut workers = start_load();
    let breaker_log = Arc::new(Mutex::new(Vec::new()));
    let touring = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (guard, log, touring) = (guard.clone(), breaker_log.clone(), touring.clone());
        tokio::spawn(async move {
            while touring.load(Ordering::Relaxed) {
                log.lock()
                    .unwrap()
                    .push((Instant::now(), guard.breaker_state()));
                tokio::time::sleep(BUCKET / 4).await;
            }
        })
    };

    let started = Instant::now();
    let mut phases = Vec::new();
    let mut rows = Vec::new();
    let steps: [(&str, Duration); 7] = [
        ("steady", Duration::from_secs(3)),
        ("server restart", Duration::from_secs(3)),
        ("CLIENT KILL", Duration::from_secs(3)),
        ("connection reset", Duration::from_secs(3)),
        ("frozen sockets", Duration::from_secs(3)),
        ("outage", Duration::from_secs(4)),
        ("recovery", Duration::from_secs(4)),
    ];
    println!("redis-guard resilience tour: {WORKERS} clients on /visits, pool '{POOL}'\n");
    println!("| phase | ok | 503 | failed | p99 | stale evictions | reconnects | breaker at end |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, length) in steps {
        let evictions_before = metric(&metrics, "redis_guard_stale_evictions_total");
        let reconnects_before = metric(&metrics, "redis_guard_reconnects_total");
        let start = Instant::now();
        match name {
            "server restart" => tokio::task::block_in_place(|| server.restart())?,
            "CLIENT KILL" => {
                server.command(&["CLIENT", "KILL", "TYPE", "normal"])?;
            }
            "connection reset" => {
                proxy.reset_all().await;
            }
            "frozen sockets" => {
                // A middlebox forgets flows that sat idle: pause the load past the bypass
                // window, freeze every open socket, and resume the load on the frozen pool.
                running.store(false, Ordering::Relaxed);
                for worker in workers.drain(..) {
                    worker.await?;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.freeze_all().await;
                workers = start_load();
            }
            "outage" => tokio::task::block_in_place(|| server.stop()),
            "recovery" => tokio::task::block_in_place(|| server.start_again())?,
            _ => {}
        }
        tokio::time::sleep(length.saturating_sub(start.elapsed())).await;
        let end = Instant::now();
        let (ok, refused, failed, p99) = summarize(&samples.lock().unwrap(), start, end);
        rows.push(format!(
            "| {name} | {ok} | {refused} | {failed} | {:.1} ms | {} | {} | {} |",
            p99.as_secs_f64() * 1e3,
            metric(&metrics, "redis_guard_stale_evictions_total") - evictions_before,
            metric(&metrics, "redis_guard_reconnects_total") - reconnects_before,
            guard.breaker_state().as_label(),
        ));
        println!("{}", rows.last().unwrap());
        phases.push(Phase { name, start, end });
    }
    running.store(false, Ordering::Relaxed);
    touring.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    sampler.await?;

    let samples = samples.lock().unwrap();
    let svg = timeline_svg(&samples, &breaker_log.lock().unwrap(), &phases, started);
    if let Some(dir) = std::path::Path::new(&svg_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&svg_path, svg)?;
    println!("\ntimeline written to {svg_path}");
    Ok(())
}

fn summarize(samples: &[Sample], start: Instant, end: Instant) -> (usize, usize, usize, Duration) {
    let phase: Vec<&Sample> = samples
        .iter()
        .filter(|(at, _, _)| *at >= start && *at < end)
        .collect();
    let count = |o: Outcome| phase.iter().filter(|(_, x, _)| *x == o).count();
    let mut latencies: Vec<Duration> = phase.iter().map(|(_, _, d)| *d).collect();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    (
        count(Outcome::Ok),
        count(Outcome::Refused),
        count(Outcome::Failed),
        p99,
    )
}

fn timeline_svg(
    samples: &[Sample],
    breaker: &[(Instant, BreakerState)],
    phases: &[Phase],
    started: Instant,
) -> String {
    let total = phases.last().map_or(Duration::ZERO, |p| p.end - started);
    let buckets = (total.as_millis() / BUCKET.as_millis()) as usize + 1;
    let mut counts = vec![[0usize; 3]; buckets];
    for (at, outcome, _) in samples {
        let i = ((*at - started).as_millis() / BUCKET.as_millis()) as usize;
        if let Some(bucket) = counts.get_mut(i) {
            bucket[*outcome as usize] += 1;
        }
    }
    let peak = counts
        .iter()
        .map(|c| c.iter().sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (left, top, width, height) = (60.0, 40.0, 1000.0, 260.0);
    let bar = width / buckets as f64;
    let x_of = |t: Instant| left + (t - started).as_secs_f64() / total.as_secs_f64() * width;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="20" font-size="15">redis-guard under faults: requests per 100 ms by outcome, breaker state below</text>
"#,
        left + width + 20.0,
        top + height + 110.0
    );
    for (i, phase) in phases.iter().enumerate() {
        let (x0, x1) = (x_of(phase.start), x_of(phase.end));
        let shade = if i % 2 == 0 { "#f2f2f2" } else { "#e4e9f2" };
        svg += &format!(
            r#"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{height}" fill="{shade}"/>
<text x="{:.1}" y="{}" text-anchor="middle">{}</text>
"#,
            x1 - x0,
            (x0 + x1) / 2.0,
            top + height + 16.0,
            phase.name
        );
    }
    let colors = ["#3a9d4a", "#e0a030", "#c83232"];
    for (i, bucket) in counts.iter().enumerate() {
        let mut y = top + height;
        for (outcome, color) in colors.iter().enumerate() {
            let h = bucket[outcome] as f64 / peak as f64 * (height - 10.0);
            if h > 0.0 {
                y -= h;
                svg += &format!(
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>
"#,
                    left + i as f64 * bar,
                    bar.max(1.0)
                );
            }
        }
    }
    let strip = top + height + 26.0;
    for window in breaker.windows(2) {
        let (at, state) = window[0];
        let color = match state {
            BreakerState::Closed => "#3a9d4a",
            BreakerState::HalfOpen => "#e0a030",
            BreakerState::Open => "#c83232",
        };
        let (x0, x1) = (x_of(at.max(started)), x_of(window[1].0));
        svg += &format!(
            r#"<rect x="{x0:.1}" y="{strip}" width="{:.1}" height="14" fill="{color}"/>
"#,
            // Overlap the next sample a little so the strip has no hairline gaps.
            (x1 - x0) + 0.6
        );
    }
    svg += &format!(
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">breaker</text>
<text x="{:.1}" y="{:.1}" text-anchor="end">{peak}</text>
<text x="{:.1}" y="{:.1}" text-anchor="end">0</text>
<rect x="{left}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">ok (200)</text>
<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">503 (refused at once or Redis unreachable)</text>
<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">failed (other errors)</text>
<text x="{:.1}" y="{:.1}">breaker strip: green closed, amber half-open, red open</text>
</svg>
"#,
        left - 6.0,
        strip + 11.0,
        left - 6.0,
        top + 10.0,
        left - 6.0,
        top + height,
        strip + 30.0,
        colors[0],
        left + 16.0,
        strip + 41.0,
        left + 110.0,
        strip + 30.0,
        colors[1],
        left + 126.0,
        strip + 41.0,
        left + 400.0,
        strip + 30.0,
        colors[2],
        left + 416.0,
        strip + 41.0,
        left + 600.0,
        strip + 41.0,
    );
    svg
}
