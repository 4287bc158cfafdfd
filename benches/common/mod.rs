//! The contenders the benchmarks compare, each configured as its users would by default, with
//! a pool of `POOL_SIZE` where it has a pool.
#![allow(dead_code)] // each benchmark uses its own subset

pub mod load;

use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, PoolMode, RedisGuard, StartupMode};

pub const POOL_SIZE: u32 = 16;

/// Pins `server` to the machine's last CPU with `taskset`, so that it does not share a core
/// with the clients' busiest threads by the scheduler's chance: unpinned, the multiplexed
/// clients ran at either about 300k or about 620k GET/s at concurrency 128 from one run to the
/// next. Prints what it did, or why it could not.
pub fn pin_to_last_cpu(server: &RedisServer) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pid = match server.command(&["INFO", "server"]) {
        Ok(redis::Value::BulkString(info)) => String::from_utf8_lossy(&info)
            .lines()
            .find_map(|line| line.strip_prefix("process_id:").map(str::to_owned)),
        _ => None,
    };
    let pinned = match (cpus, pid) {
        (1, _) => Err("one CPU".to_owned()),
        (_, None) => Err("no process_id in INFO".to_owned()),
        (_, Some(pid)) => std::process::Command::new("taskset")
            .args(["-p", "-c", &(cpus - 1).to_string(), pid.trim()])
            .output()
            .map_err(|e| format!("taskset: {e}"))
            .and_then(|out| match out.status.success() {
                true => Ok(()),
                false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            }),
    };
    match pinned {
        Ok(()) => println!("redis-server pinned to CPU {}", cpus - 1),
        Err(why) => println!("redis-server not pinned ({why})"),
    }
}

/// Two worker threads: the machine's cores, shared with the Redis server.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
pub const KEY: &str = "bench:key";

#[derive(Clone)]
pub enum Contender {
    Guard(RedisGuard),
    Bb8(bb8::Pool<RedisConnectionManager>),
    Deadpool(deadpool_redis::Pool),
    Manager(ConnectionManager),
}

/// Names and builders, in table order.
pub const NAMES: [&str; 7] = [
    "redis-guard exclusive (validation on)",
    "redis-guard shared (1 multiplexed connection)",
    "bb8-redis, PING on checkout (default)",
    "bb8-redis, no check",
    "deadpool-redis",
    "redis-rs ConnectionManager (1 multiplexed connection)",
    "redis-rs ConnectionManager, TCP_NODELAY",
];
/// Indices into [`NAMES`].
pub const GUARD: usize = 0;
pub const GUARD_SHARED: usize = 1;
pub const BB8_DEFAULT: usize = 2;
pub const BB8_NO_CHECK: usize = 3;
pub const DEADPOOL: usize = 4;
pub const MANAGER: usize = 5;
/// `ConnectionManager` with `TCP_NODELAY`, as every redis-guard socket has: redis-rs 1.x leaves
/// Nagle's algorithm on, which batches a multiplexed socket's writes on loopback but costs
/// latency and throughput across a real network (redis-rs 2.0 turns it off by default).
pub const MANAGER_NODELAY: usize = 6;

impl Contender {
    /// Builds contender `index` of [`NAMES`] for `url` without waiting for Redis, except
    /// `ConnectionManager`, whose constructor connects (bounded by `limit`).
    pub async fn build(
        index: usize,
        url: &str,
        name: &str,
        limit: Duration,
    ) -> Result<Contender, String> {
        Ok(match index {
            GUARD | GUARD_SHARED => {
                let mode = match index {
                    GUARD => PoolMode::Exclusive,
                    _ => PoolMode::Shared,
                };
                // Two live pools never share a name: the exclusive and the shared contender
                // of one scenario each get their own.
                let config = Config::builder(url)
                    .name(format!("{name}-{index}"))
                    .mode(mode)
                    .max_size(POOL_SIZE)
                    .startup(StartupMode::Lazy)
                    .build()
                    .map_err(|e| e.to_string())?;
                Contender::Guard(
                    RedisGuard::connect(config)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
            BB8_DEFAULT | BB8_NO_CHECK => Contender::Bb8(
                bb8::Pool::builder()
                    .max_size(POOL_SIZE)
                    .test_on_check_out(index == BB8_DEFAULT)
                    .build_unchecked(RedisConnectionManager::new(url).map_err(|e| e.to_string())?),
            ),
            DEADPOOL => {
                let mut config = deadpool_redis::Config::from_url(url);
                config.pool = Some(deadpool_redis::PoolConfig::new(POOL_SIZE as usize));
                Contender::Deadpool(
                    config
                        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(url)
                    .map_err(|e| e.to_string())?;
                if index == MANAGER_NODELAY {
                    info = info
                        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                }
                let client = redis::Client::open(info).map_err(|e| e.to_string())?;
                let manager = tokio::time::timeout(limit, ConnectionManager::new(client))
                    .await
                    .map_err(|_| format!("no connection within {limit:?}"))?
                    .map_err(|e| e.to_string())?;
                Contender::Manager(manager)
            }
        })
    }

    /// One GET of [`KEY`], as a request handler would do it.
    pub async fn get(&self) -> Result<(), String> {
        let value: redis::RedisResult<Option<String>> = match self {
            Contender::Guard(guard) => match guard.get().await {
                Ok(mut conn) => conn.get(KEY).await,
                Err(e) => return Err(e.to_string()),
            },
            Contender::Bb8(pool) => match pool.get().await {
                Ok(mut conn) => conn.get(KEY).await,
                Err(e) => return Err(e.to_string()),
            },
            Contender::Deadpool(pool) => match pool.get().await {
                Ok(mut conn) => conn.get(KEY).await,
                Err(e) => return Err(e.to_string()),
            },
            Contender::Manager(manager) => manager.clone().get(KEY).await,
        };
        value.map(|_| ()).map_err(|e| e.to_string())
    }
}
