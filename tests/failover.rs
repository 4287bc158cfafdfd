//! F14, a primary failover as managed Redis services do it: the endpoint's DNS name (here the
//! fault proxy's upstream) moves to a promoted replica while pooled connections stay on the
//! demoted node. Each test states its fault, its load and what it asserts.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use redis::AsyncCommands;
use redis_guard::RedisGuard;
use redis_guard::testkit::{FaultProxy, RedisServer};

fn info_field(server: &RedisServer, section: &str, field: &str) -> Option<String> {
    let redis::Value::BulkString(info) = server.command(&["INFO", section]).ok()? else {
        return None;
    };
    String::from_utf8_lossy(&info).lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_owned())
    })
}

/// Connections of pool `pool` on `server`, by client name.
fn pool_clients(server: &RedisServer, pool: &str) -> usize {
    let Ok(redis::Value::BulkString(list)) = server.command(&["CLIENT", "LIST"]) else {
        return 0;
    };
    String::from_utf8_lossy(&list)
        .lines()
        .filter(|l| l.contains(&format!(" name={pool} ")))
        .count()
}

/// A primary with a synced replica, and a pool reaching the primary through a proxy that
/// stands for the endpoint's DNS name.
struct Deployment {
    old_primary: RedisServer,
    replica: RedisServer,
    proxy: FaultProxy,
    guard: RedisGuard,
}

impl Deployment {
    async fn start(pool: &str) -> Deployment {
        let old_primary = RedisServer::start().unwrap();
        let replica = RedisServer::start().unwrap();
        let _: () = replica
            .command(&["REPLICAOF", "127.0.0.1", &old_primary.port().to_string()])
            .map(drop)
            .unwrap();
        let synced = eventually(Duration::from_secs(5), || {
            info_field(&replica, "replication", "master_link_status").as_deref() == Some("up")
        })
        .await;
        assert!(synced, "the replica synced");
        let proxy = FaultProxy::start(old_primary.addr()).await.unwrap();
        let guard = guard(config(&proxy.url(), pool)).await;
        Deployment {
            old_primary,
            replica,
            proxy,
            guard,
        }
    }
}

/// One write: when it was made, and what came of it.
type Write = (Instant, Result<i64, String>);

/// Workers sending `INCR counter` in a loop, each outcome logged.
struct Writers {
    running: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Write>>>,
}

impl Writers {
    fn start(guard: &RedisGuard, count: usize) -> Writers {
        let running = Arc::new(AtomicBool::new(true));
        let workers = (0..count)
            .map(|_| {
                let (guard, running) = (guard.clone(), running.clone());
                tokio::spawn(async move {
                    let mut log = Vec::new();
                    while running.load(Ordering::Relaxed) && log.len() < 100_000 {
                        let result: Result<i64, String> = async {
                            let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                            conn.incr("counter", 1).await.map_err(|e| e.to_string())
                        }
                        .await;
                        log.push((Instant::now(), result));
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    log
                })
            })
            .collect();
        Writers { running, workers }
    }

    async fn stop(self) -> Vec<Write> {
        self.running.store(false, Ordering::Relaxed);
        let mut log = Vec::new();
        for worker in self.workers {
            log.extend(worker.await.unwrap());
        }
        log
    }
}

/// Fault: under a write load, the replica is promoted, the primary demoted to its replica, and
/// the endpoint moved to the new primary, while the pool's connections stay on the old one.
/// Load: 16 workers sending `INCR` through a pool of 8 for 3 s, and `/readyz` sampled every
/// 50 ms. Asserts: writes fail only around the switch, never after it has settled; every
/// connection to the demoted node is evicted (`role_change`) and none is left on it; the pool
/// stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f14_a_dns_failover_moves_every_connection_to_the_new_primary() {
    let Deployment {
        old_primary,
        replica,
        proxy,
        guard,
    } = Deployment::start("failover").await;
    let app = service(guard.clone());
    let writers = Writers::start(&guard, 16);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The failover: promote, demote, move the name.
    let _: () = replica
        .command(&["REPLICAOF", "NO", "ONE"])
        .map(drop)
        .unwrap();
    let _: () = old_primary
        .command(&["REPLICAOF", "127.0.0.1", &replica.port().to_string()])
        .map(drop)
        .unwrap();
    proxy.set_upstream(replica.addr());
    let switched = Instant::now();

    let mut not_ready = 0;
    while switched.elapsed() < Duration::from_secs(2) {
        if call(&app, "/readyz").await.status != StatusCode::OK {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = writers.stop().await;

    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    let settled = switched + Duration::from_millis(500);
    let late: Vec<_> = failed.iter().filter(|(at, _)| *at > settled).collect();
    assert!(
        late.is_empty(),
        "{} writes failed more than 500 ms after the switch, first: {:?}",
        late.len(),
        late.first().map(|(_, r)| r)
    );
    assert!(
        log.iter().any(|(at, r)| *at > settled && r.is_ok()),
        "writes succeed on the new primary"
    );
    assert_eq!(not_ready, 0, "/readyz stayed 200 through the failover");
    assert!(evictions("failover", "role_change") >= 1.0);
    assert_eq!(
        pool_clients(&old_primary, "failover"),
        0,
        "no connection left on the demoted node"
    );
    eprintln!(
        "F14: {} writes, {} failed (all within 500 ms of the switch), {} role_change evictions",
        log.len(),
        failed.len(),
        evictions("failover", "role_change")
    );
}

/// Fault: the endpoint leads to a replica (DNS not yet moved, or a reader endpoint by
/// mistake). Load: one `get()`. Asserts: a pool that wants the primary does not hand out a
/// connection to a replica, and says why; with `expect_primary(false)` it reads from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_lands_on_a_replica_is_not_handed_out() {
    let primary = RedisServer::start().unwrap();
    let replica = RedisServer::start().unwrap();
    let _: () = replica
        .command(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()])
        .map(drop)
        .unwrap();
    let wants_primary = unready_guard(config(&replica.url(), "wants_primary")).await;
    let err = wants_primary.get().await.unwrap_err();
    assert!(err.to_string().contains("not the primary"), "{err}");

    let reads = guard(config(&replica.url(), "reads_replica").expect_primary(false)).await;
    let mut conn = reads.get().await.unwrap();
    let value: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(value, None);
}

/// Fault: the primary is demoted and the replica promoted, but the endpoint (a DNS name with a
/// TTL) moves only 1 s later: meanwhile new connections land on the demoted node. Load: 16
/// workers sending `INCR` through a pool of 8. Asserts: the breaker never opens and `/readyz`
/// stays 200 (Redis is reachable, only not yet at its new address, so no pod should leave the
/// load balancer); writes fail at most until shortly after the endpoint moved; none is applied
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f14_a_late_moving_endpoint_does_not_open_the_breaker() {
    let Deployment {
        old_primary,
        replica,
        proxy,
        guard,
    } = Deployment::start("late_dns").await;
    let app = service(guard.clone());
    let writers = Writers::start(&guard, 16);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = old_primary
        .command(&["REPLICAOF", "127.0.0.1", &replica.port().to_string()])
        .map(drop)
        .unwrap();
    let _: () = replica
        .command(&["REPLICAOF", "NO", "ONE"])
        .map(drop)
        .unwrap();
    let mut not_ready = 0;
    let demoted = Instant::now();
    while demoted.elapsed() < Duration::from_secs(1) {
        if call(&app, "/readyz").await.status != StatusCode::OK {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set_upstream(replica.addr());
    let moved = Instant::now();
    while moved.elapsed() < Duration::from_secs(1) {
        if call(&app, "/readyz").await.status != StatusCode::OK {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = writers.stop().await;

    assert_eq!(not_ready, 0, "/readyz stayed 200");
    assert_eq!(
        metric(
            "redis_guard_breaker_transitions_total",
            "late_dns",
            &[("to", "open")]
        ),
        0.0,
        "a replica answering is not an outage"
    );
    let settled = moved + Duration::from_millis(500);
    let late = log
        .iter()
        .filter(|(at, r)| *at > settled && r.is_err())
        .count();
    assert_eq!(late, 0, "writes succeed once the endpoint moved");
    let acknowledged = log.iter().filter(|(_, r)| r.is_ok()).count() as i64;
    let redis::Value::BulkString(counter) = replica.command(&["GET", "counter"]).unwrap() else {
        panic!("GET answers a bulk string")
    };
    let counter: i64 = String::from_utf8_lossy(&counter).parse().unwrap();
    assert!(
        counter <= acknowledged + 16,
        "counter {counter}, {acknowledged} acknowledged: a write applied twice"
    );
    eprintln!(
        "F14 late DNS: {} writes, {} failed, counter {counter} for {acknowledged} acknowledged",
        log.len(),
        log.iter().filter(|(_, r)| r.is_err()).count()
    );
}

/// `INCR counter` in a handler that answers with the crate's error, as services do.
async fn incr_handler(mut redis: redis_guard::Redis) -> Result<String, redis_guard::Error> {
    let value: i64 = redis.incr("counter", 1).await?;
    Ok(value.to_string())
}

/// Fault: a plain primary (no Sentinel, no proxy) demoted by `REPLICAOF` under a write load
/// through handlers that return the crate's error; nothing replaces it. Load: 16 workers
/// sending `INCR` for 1.5 s after the demotion. Asserts: every failed write answers 503 with
/// `Retry-After` (a refusal by role is unavailability, never a 500 "command failed"), and the
/// connects that land on the replica are counted as `kind="replica"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_role_answers_503_with_retry_after() {
    let primary = RedisServer::start().unwrap();
    let other = RedisServer::start().unwrap();
    let pool = "demoted_plain";
    let guard = guard(config(&primary.url(), pool)).await;
    let app = axum::Router::new()
        .route("/incr", axum::routing::get(incr_handler))
        .layer(redis_guard::RedisGuardLayer::new(guard.clone()));
    let stop = Instant::now() + Duration::from_secs(2);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while Instant::now() < stop && outcomes.len() < 100_000 {
                    outcomes.push(call(&app, "/incr").await);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = primary
        .command(&["REPLICAOF", "127.0.0.1", &other.port().to_string()])
        .map(drop)
        .unwrap();
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != StatusCode::OK)
        .collect();
    assert!(!failed.is_empty(), "writes to a replica fail");
    let wrong: Vec<_> = failed
        .iter()
        .filter(|o| o.status != StatusCode::SERVICE_UNAVAILABLE || o.retry_after.is_none())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} failed writes were not 503 with Retry-After, e.g. {:?} {:?}",
        wrong.len(),
        failed.len(),
        wrong[0].status,
        wrong[0].body
    );
    assert!(
        metric(
            "redis_guard_connect_errors_total",
            pool,
            &[("kind", "replica")]
        ) >= 1.0,
        "connects that land on the replica are named"
    );
    eprintln!(
        "role refusals: {} writes, {} failed, all 503 with Retry-After",
        outcomes.len(),
        failed.len()
    );
}
