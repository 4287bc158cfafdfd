//! GET throughput and latency at several concurrencies, and an axum handler over loopback HTTP:
//! redis-guard next to bb8-redis, deadpool-redis, redis-rs `ConnectionManager` and
//! `redis-benchmark`, against one real redis-server, in the same run. Prints markdown tables.
//!
//! `cargo bench --all-features --bench throughput` (about a minute and a half).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bb8_redis::RedisConnectionManager;
use common::load::{Measured, ROUNDS, RUN, interleaved, micros, run_load};
use common::{Contender, KEY, NAMES, POOL_SIZE};
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Redis, RedisGuardLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `redis-benchmark -t get` at the same concurrency: the physical reference.
fn redis_benchmark(port: u16, concurrency: usize) -> Measured {
    let output = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "get",
            "--csv",
        ])
        .args(["-c", &concurrency.to_string(), "-n", "100000"])
        .output()
        .expect("redis-benchmark (package redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .expect("a GET row");
    let cols: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse().unwrap())
        .collect();
    Measured {
        ops_per_sec: cols[0],
        p50: Duration::from_secs_f64(cols[3] / 1000.0),
        p99: Duration::from_secs_f64(cols[5] / 1000.0),
        max: Duration::from_secs_f64(cols[6] / 1000.0),
    }
}

/// One keep-alive HTTP/1.1 connection sending `GET path` and reading the response whole.
struct HttpClient {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl HttpClient {
    async fn connect(addr: std::net::SocketAddr, path: &str) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
        Self {
            stream,
            request,
            buffer: Vec::with_capacity(1024),
        }
    }

    async fn call(&mut self) {
        self.stream.write_all(&self.request).await.unwrap();
        self.buffer.clear();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "server closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&self.buffer);
            if let Some(head_end) = text.find("\r\n\r\n") {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                let length: usize = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .parse()
                    .unwrap();
                if self.buffer.len() >= head_end + 4 + length {
                    return;
                }
            }
        }
    }
}

async fn guard_handler(mut redis: Redis) -> String {
    redis.get(KEY).await.unwrap()
}

async fn bb8_handler(State(pool): State<bb8::Pool<RedisConnectionManager>>) -> String {
    pool.get().await.unwrap().get(KEY).await.unwrap()
}

async fn http_load(
    addr: std::net::SocketAddr,
    path: &'static str,
    concurrency: usize,
) -> (f64, Vec<Duration>) {
    let clients: Vec<_> =
        futures_join((0..concurrency).map(|_| HttpClient::connect(addr, path))).await;
    let clients: Vec<_> = clients
        .into_iter()
        .map(|c| Arc::new(tokio::sync::Mutex::new(c)))
        .collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    run_load(concurrency, move || {
        let client = clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()].clone();
        async move { client.lock().await.call().await }
    })
    .await
}

async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

fn main() {
    let runtime = common::runtime();
    let server = RedisServer::start().expect("redis-server");
    common::pin_to_last_cpu(&server);
    let url = server.url();
    server.command(&["SET", KEY, "value"]).unwrap();

    runtime.block_on(async {
        let mut contenders = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let contender = Contender::build(i, &url, "throughput", Duration::from_secs(5))
                .await
                .unwrap();
            contenders.push((*name, contender));
        }
        // Every pool connected and warm before it is measured.
        for (_, contender) in &contenders {
            let deadline = Instant::now() + Duration::from_secs(5);
            while contender.get().await.is_err() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        println!("\n### GET throughput, pool of {POOL_SIZE}, loopback redis-server, 2 cores shared by client and server\n");
        println!("{ROUNDS} interleaved rounds of {RUN:?} per client: ops/s is the median round, latencies are over all rounds, ratios are the median (and range) of same-round ratios.");
        for concurrency in [1usize, 32, 128] {
            println!("\nconcurrency {concurrency}\n");
            println!("| client | ops/s | p50 | p99 | max | vs bb8 no check | vs ConnectionManager | vs ConnectionManager, TCP_NODELAY |");
            println!("|---|---|---|---|---|---|---|---|");
            let loads: Vec<_> = contenders
                .iter()
                .map(|(_, contender)| {
                    move || {
                        let contender = contender.clone();
                        run_load(concurrency, move || {
                            let c = contender.clone();
                            async move { c.get().await.expect("GET") }
                        })
                    }
                })
                .collect();
            let mut rounds = interleaved(&loads).await;
            for (i, (name, _)) in contenders.iter().enumerate() {
                let m = rounds[i].measured();
                println!(
                    "| {name} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    m.ops_per_sec,
                    micros(m.p50),
                    micros(m.p99),
                    micros(m.max),
                    rounds[i].ratio(&rounds[common::BB8_NO_CHECK]),
                    rounds[i].ratio(&rounds[common::MANAGER]),
                    rounds[i].ratio(&rounds[common::MANAGER_NODELAY]),
                );
            }
            let m = redis_benchmark(server.port(), concurrency);
            println!(
                "| redis-benchmark -t get (reference, one run) | {:.0} | {} | {} | {} | | | |",
                m.ops_per_sec,
                micros(m.p50),
                micros(m.p99),
                micros(m.max),
            );
        }

        // The same handler (one GET) behind redis-guard's layer and extractor, and on a bare
        // bb8-redis pool in router state, driven over loopback HTTP.
        let Contender::Guard(guard) = &contenders[common::GUARD].1 else { unreachable!() };
        let Contender::Guard(shared) = &contenders[common::GUARD_SHARED].1 else { unreachable!() };
        let Contender::Bb8(bare) = &contenders[common::BB8_NO_CHECK].1 else { unreachable!() };
        let app = Router::new()
            .route("/guard", get(guard_handler))
            .layer(RedisGuardLayer::new(guard.clone()))
            .merge(
                Router::new()
                    .route("/shared", get(guard_handler))
                    .layer(RedisGuardLayer::new(shared.clone())),
            )
            .merge(Router::new().route("/bb8", get(bb8_handler)).with_state(bare.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let concurrency = 32;
        let handlers = [
            ("redis-guard exclusive: layer + `Redis` extractor", "/guard"),
            ("redis-guard shared: layer + `Redis` extractor", "/shared"),
            ("bare bb8-redis pool in state (no check)", "/bb8"),
        ];
        let loads: Vec<_> = handlers
            .iter()
            .map(|&(_, path)| move || http_load(addr, path, concurrency))
            .collect();
        let mut rounds = interleaved(&loads).await;
        println!("\n### axum handler doing one GET, over loopback HTTP/1.1 keep-alive, concurrency {concurrency}\n");
        println!("| handler | requests/s | p50 | p99 | max | vs bare bb8 |");
        println!("|---|---|---|---|---|---|");
        for (i, (name, _)) in handlers.iter().enumerate() {
            let m = rounds[i].measured();
            println!(
                "| {name} | {:.0} | {} | {} | {} | {} |",
                m.ops_per_sec,
                micros(m.p50),
                micros(m.p99),
                micros(m.max),
                rounds[i].ratio(&rounds[2]),
            );
        }
    });
}
