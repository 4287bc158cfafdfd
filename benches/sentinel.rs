//! Sentinel failovers under load: redis-guard next to redis-rs's own `SentinelClient` (one
//! multiplexed connection, reopened through the sentinels when it fails, as its docs suggest)
//! and deadpool-redis's sentinel pool, in the same run. Each client gets a fresh deployment (a
//! primary, a replica, three sentinels) per fault, and 16 writers (INCR, with the port of the
//! node that acknowledged it) and 16 readers (GET) for 16 s; the fault comes after 1 s.
//!
//! - `SENTINEL FAILOVER`: the old primary stays up, and keeps acknowledging writes until
//!   Sentinel demotes it; every write it acknowledges after the promotion is lost.
//! - kill -9 of the primary, `down-after-milliseconds` 500.
//!
//! `cargo bench --all-features --bench sentinel` (about 2 min). Prints a markdown table.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis_guard::testkit::{MASTER_NAME, SentinelDeployment, SentinelOptions};
use redis_guard::{Config, RedisGuard};

const CONCURRENCY: usize = 16;
const LOAD: Duration = Duration::from_secs(16);
const FAULT_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Fault {
    Forced,
    Kill,
}

/// One client under test, as an application would hold it.
#[derive(Clone)]
enum Client {
    Guard(RedisGuard),
    RedisRs(Arc<Reopening>),
    Deadpool(deadpool_redis::sentinel::Pool),
}

const CLIENTS: [&str; 3] = [
    "redis-guard",
    "redis-rs SentinelClient",
    "deadpool-redis sentinel",
];

/// redis-rs's `SentinelClient` behind one shared multiplexed connection, reopened through
/// the sentinels when a command fails with its connection.
struct Reopening {
    client: tokio::sync::Mutex<SentinelClient>,
    conn: Mutex<(u64, MultiplexedConnection)>,
}

impl Reopening {
    async fn new(deployment: &SentinelDeployment) -> Arc<Reopening> {
        let mut client = SentinelClient::build(
            sentinel_urls(deployment),
            MASTER_NAME.to_owned(),
            None,
            SentinelServerType::Master,
        )
        .expect("sentinel client");
        let conn = client
            .get_async_connection()
            .await
            .expect("first connection");
        Arc::new(Reopening {
            client: tokio::sync::Mutex::new(client),
            conn: Mutex::new((0, conn)),
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        let (generation, mut conn) = self.conn.lock().unwrap().clone();
        let result = pipe.query_async(&mut conn).await;
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
        {
            let mut client = self.client.lock().await;
            if self.conn.lock().unwrap().0 == generation
                && let Ok(fresh) = client.get_async_connection().await
            {
                *self.conn.lock().unwrap() = (generation + 1, fresh);
            }
        }
        result
    }
}

fn sentinel_urls(deployment: &SentinelDeployment) -> Vec<String> {
    let url = deployment.url();
    let hosts = url
        .trim_start_matches("redis+sentinel://")
        .split('/')
        .next()
        .unwrap();
    hosts.split(',').map(|h| format!("redis://{h}")).collect()
}

fn write_pipe() -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("INCR")
        .arg("counter")
        .cmd("CONFIG")
        .arg("GET")
        .arg("port");
    pipe
}

impl Client {
    async fn build(index: usize, deployment: &SentinelDeployment) -> Client {
        match index {
            0 => {
                let config = Config::builder(deployment.url())
                    .name("bench-sentinel")
                    .max_size(2 * CONCURRENCY as u32)
                    .build()
                    .unwrap();
                Client::Guard(RedisGuard::connect(config).await.unwrap())
            }
            1 => Client::RedisRs(Reopening::new(deployment).await),
            _ => {
                let mut config = deadpool_redis::sentinel::Config::from_urls(
                    sentinel_urls(deployment),
                    MASTER_NAME.to_owned(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                config.pool = Some(deadpool_redis::PoolConfig::new(2 * CONCURRENCY));
                Client::Deadpool(
                    config
                        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                        .unwrap(),
                )
            }
        }
    }

    /// INCR, and the port of the node that acknowledged it.
    async fn write(&self) -> Result<(i64, u16), String> {
        let (value, (_, port)): (i64, (String, String)) = match self {
            Client::Guard(guard) => {
                let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                write_pipe().query_async(&mut *conn).await
            }
            Client::RedisRs(client) => client.run(&write_pipe()).await,
            Client::Deadpool(pool) => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                write_pipe().query_async(&mut *conn).await
            }
        }
        .map_err(|e| e.to_string())?;
        Ok((value, port.parse().map_err(|_| "port".to_owned())?))
    }

    async fn read(&self) -> Result<(), String> {
        let read: redis::RedisResult<Option<i64>> = match self {
            Client::Guard(guard) => {
                let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                conn.get("counter").await
            }
            Client::RedisRs(client) => {
                let mut pipe = redis::pipe();
                pipe.get("counter");
                client.run::<(Option<i64>,)>(&pipe).await.map(|(v,)| v)
            }
            Client::Deadpool(pool) => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                conn.get("counter").await
            }
        };
        read.map(drop).map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct Load {
    /// (when, port, value) of every acknowledged INCR.
    acks: Vec<(Instant, u16, i64)>,
    failed_writes: Vec<Instant>,
    failed_reads: Vec<Instant>,
}

async fn run_load(client: &Client, stop: Instant) -> Load {
    let load = Arc::new(Mutex::new(Load::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (writer, written) = (client.clone(), load.clone());
        tasks.spawn(async move {
            while Instant::now() < stop {
                let outcome = tokio::time::timeout(Duration::from_secs(2), writer.write()).await;
                let failed = !matches!(outcome, Ok(Ok(_)));
                match outcome {
                    Ok(Ok((value, port))) => {
                        written
                            .lock()
                            .unwrap()
                            .acks
                            .push((Instant::now(), port, value));
                    }
                    _ => written.lock().unwrap().failed_writes.push(Instant::now()),
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let (reader, read) = (client.clone(), load.clone());
        tasks.spawn(async move {
            while Instant::now() < stop {
                let outcome = tokio::time::timeout(Duration::from_secs(2), reader.read()).await;
                if !matches!(outcome, Ok(Ok(()))) {
                    read.lock().unwrap().failed_reads.push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(load).ok().unwrap().into_inner().unwrap()
}

struct Row {
    client: &'static str,
    fault: &'static str,
    acked: usize,
    failed_writes: usize,
    failed_reads: usize,
    first_on_new: Option<Duration>,
    last_on_old: Option<i128>,
    lost: usize,
    lost_share: f64,
    applied_twice: i64,
}

async fn measure(index: usize, fault: Fault) -> Row {
    let mut deployment = SentinelDeployment::start(SentinelOptions {
        down_after: Duration::from_millis(500),
        ..SentinelOptions::default()
    })
    .expect("deployment");
    let client = Client::build(index, &deployment).await;
    let announcements = deployment.watch_announcements().await.unwrap();
    let old_port = deployment.primary_port().unwrap();
    let stop = Instant::now() + LOAD;
    let load = {
        let client = client.clone();
        tokio::spawn(async move { run_load(&client, stop).await })
    };
    tokio::time::sleep(FAULT_AFTER).await;
    match fault {
        Fault::Forced => deployment.failover().expect("failover"),
        Fault::Kill => deployment.node_at(old_port).unwrap().kill(),
    }
    let load = load.await.unwrap();
    let announced = announcements.first().expect("announced");
    let new_port = deployment.primary_port().unwrap();
    let final_counter: i64 = deployment
        .node_command(new_port, &["GET", "counter"])
        .ok()
        .and_then(|v| redis::from_redis_value::<Option<i64>>(v).ok().flatten())
        .unwrap_or(0);
    let on_new: Vec<_> = load.acks.iter().filter(|a| a.1 == new_port).collect();
    let base = on_new.iter().map(|a| a.2).min().unwrap_or(1) - 1;
    let lost = load
        .acks
        .iter()
        .filter(|a| a.1 == old_port && a.2 > base)
        .count();
    let unknown = load.failed_writes.len() as i64;
    let applied_twice = (final_counter - base - on_new.len() as i64 - unknown).max(0);
    Row {
        client: CLIENTS[index],
        fault: match fault {
            Fault::Forced => "SENTINEL FAILOVER",
            Fault::Kill => "kill -9",
        },
        acked: load.acks.len(),
        failed_writes: load.failed_writes.len(),
        failed_reads: load.failed_reads.len(),
        first_on_new: on_new
            .iter()
            .map(|a| a.0)
            .min()
            .map(|at| at.saturating_duration_since(announced)),
        last_on_old: load
            .acks
            .iter()
            .filter(|a| a.1 == old_port)
            .map(|a| a.0)
            .max()
            .map(|at| {
                at.saturating_duration_since(announced).as_millis() as i128
                    - announced.saturating_duration_since(at).as_millis() as i128
            }),
        lost,
        lost_share: lost as f64 / load.acks.len().max(1) as f64,
        applied_twice,
    }
}

fn main() {
    common::runtime().block_on(async {
        let mut rows = Vec::new();
        for fault in [Fault::Forced, Fault::Kill] {
            for index in 0..CLIENTS.len() {
                rows.push(measure(index, fault).await);
            }
        }
        println!(
            "\n| fault | client | writes acked | failed writes | failed reads | first write on the new primary after the announcement | last write acked by the old primary (ms from the announcement) | acked writes lost | INCRs applied twice |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for row in rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} ({:.1} %) | {} |",
                row.fault,
                row.client,
                row.acked,
                row.failed_writes,
                row.failed_reads,
                row.first_on_new
                    .map_or("never".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
                row.last_on_old.map_or("-".to_owned(), |ms| format!("{ms:+}")),
                row.lost,
                row.lost_share * 100.0,
                row.applied_twice,
            );
        }
    });
}
