//! The user's own commands never hurt the pool or lose data: cancelled calls, blocking
//! commands, transactions, session state in pipelines, the set-up hook, and safe retries.
//! Each test states its fault, its load and what it asserts.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::{FaultProxy, RedisServer};
use redis_guard::{BreakerState, RedisGuard};
use tokio::time::timeout;

fn reconnects(pool: &str) -> f64 {
    metric("redis_guard_reconnects_total", pool, &[])
}

fn retries(pool: &str, result: &str) -> f64 {
    metric("redis_guard_retries_total", pool, &[("result", result)])
}

/// The length of list `key`, asked straight of the server.
fn llen(server: &RedisServer, key: &str) -> i64 {
    match server.command(&["LLEN", key]).unwrap() {
        redis::Value::Int(n) => n,
        other => panic!("LLEN answered {other:?}"),
    }
}

in_both_modes! {
/// Fault: a job worker's `BLPOP jobs 10` is cancelled after 200 ms (its HTTP client gave up),
/// then a job is pushed. Load: one connection (`max_size(1)`), so the next borrower gets the
/// same slot. Asserts: the job is still in the list (the orphaned BLPOP did not pop it), the
/// connection was evicted as `cancelled`, and the next borrower's command answers in under
/// 50 ms instead of waiting behind the BLPOP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_blpop_neither_eats_the_next_job_nor_stalls_the_next_borrower(mode: PoolMode) {
    let pool = pool_name(mode, "cancelled_blpop");
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "cancelled_blpop").max_size(max_size(mode, 1))).await;
    let worker = {
        let guard = guard.clone();
        async move {
            let mut conn = guard.get().await.unwrap();
            let _: Option<(String, String)> = conn.blpop("jobs", 10.0).await.unwrap();
        }
    };
    assert!(
        timeout(Duration::from_millis(200), worker).await.is_err(),
        "the BLPOP was still waiting when cancelled"
    );
    let _: () = server
        .command(&["RPUSH", "jobs", "job-3"])
        .map(drop)
        .unwrap();
    // Give an orphaned BLPOP every chance to pop the job.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(llen(&server, "jobs"), 1, "the job is still queued");
    assert_eq!(evictions(&pool, "cancelled"), 1.0);

    let started = Instant::now();
    let mut conn = guard.get().await.unwrap();
    let len: i64 = conn.llen("jobs").await.unwrap();
    let took = started.elapsed();
    assert_eq!(len, 1);
    assert!(
        took < Duration::from_millis(50),
        "next borrower took {took:?}"
    );
}
}

in_both_modes! {
/// Fault: none; a blocking command longer than the pool's response timeout. Load: `BLPOP k 3`
/// on a pool with `response_timeout` 1 s, an element pushed after 2 s; then six concurrent
/// `BLPOP`s of 2 s on a pool of six. Asserts: the BLPOP returns the element (not "timed out"),
/// the six blocked workers neither evict anything nor move the breaker, and `/readyz` stays
/// 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_wait_their_own_timeout_and_never_count_against_redis(mode: PoolMode) {
    let pool = pool_name(mode, "blocking");
    let server = RedisServer::start().unwrap();
    let guard = guard(
        config_in(mode, &server.url(), "blocking")
            .max_size(max_size(mode, 6))
            .response_timeout(Duration::from_secs(1)),
    )
    .await;
    let pusher = tokio::spawn({
        let url = server.url();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = conn.rpush("k", "late").await.unwrap();
        }
    });
    let mut conn = guard.get().await.unwrap();
    let popped: Option<(String, String)> = conn.blpop("k", 3.0).await.unwrap();
    assert_eq!(popped, Some(("k".into(), "late".into())));
    drop(conn);
    pusher.await.unwrap();

    let app = service(guard.clone());
    let workers: Vec<_> = (0..6)
        .map(|i| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let mut conn = guard.get().await.unwrap();
                let popped: Option<(String, String)> =
                    conn.blpop(format!("empty{i}"), 2.0).await.unwrap();
                popped
            })
        })
        .collect();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(call(&app, "/readyz").await.status, 200);
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
    }
    for worker in workers {
        assert_eq!(
            worker.await.unwrap(),
            None,
            "timed out empty, as Redis says"
        );
    }
    let evicted: f64 = ["io_error", "validation_failed", "cancelled", "dirty"]
        .iter()
        .map(|reason| evictions(&pool, reason))
        .sum();
    assert_eq!(evicted, 0.0, "blocking waits evict nothing");
}
}

in_both_modes! {
/// Fault: none; optimistic transactions under contention. Load: 1,000 transfers at
/// concurrency 8 between two accounts, each `WATCH a b`, read both, then an atomic pipeline
/// (`MULTI ... EXEC`, as redis-rs packs it) or hand-written `MULTI`/`EXEC` commands, retried
/// when a conflicting writer made `EXEC` abort. Asserts: the accounts always balance, no
/// connection is evicted as dirty, and no reconnect happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_then_an_atomic_pipeline_returns_a_clean_connection(mode: PoolMode) {
    let pool = pool_name(mode, "transactions");
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "transactions")).await;
    {
        let mut conn = guard.get().await.unwrap();
        let _: () = conn.set("a", 1_000).await.unwrap();
        let _: () = conn.set("b", 1_000).await.unwrap();
    }
    let reconnects_before = reconnects(&pool);
    let next = Arc::new(AtomicU64::new(0));
    let aborted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (guard, next, aborted) = (guard.clone(), next.clone(), aborted.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < 1_000 {
                    let hand_written = fastrand::bool();
                    loop {
                        let mut conn = guard.get().await.unwrap();
                        let _: () = redis::cmd("WATCH")
                            .arg("a")
                            .arg("b")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        let (a, b): (i64, i64) = conn.mget(&["a", "b"]).await.unwrap();
                        let (from, to) = if fastrand::bool() {
                            ("a", "b")
                        } else {
                            ("b", "a")
                        };
                        let _ = (a, b);
                        let committed: Option<(i64, i64)> = if hand_written {
                            let _: () = redis::cmd("MULTI").query_async(&mut conn).await.unwrap();
                            let _: () = redis::cmd("DECRBY")
                                .arg(from)
                                .arg(1)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                            let _: () = redis::cmd("INCRBY")
                                .arg(to)
                                .arg(1)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                            redis::cmd("EXEC").query_async(&mut conn).await.unwrap()
                        } else {
                            redis::pipe()
                                .atomic()
                                .decr(from, 1)
                                .incr(to, 1)
                                .query_async(&mut conn)
                                .await
                                .unwrap()
                        };
                        if committed.is_some() {
                            break;
                        }
                        aborted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    timeout(TEST_DEADLINE, async {
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await
    .expect("transfers finished");

    let mut conn = guard.get().await.unwrap();
    let (a, b): (i64, i64) = conn.mget(&["a", "b"]).await.unwrap();
    assert_eq!(a + b, 2_000, "every committed transfer balances");
    assert_eq!(evictions(&pool, "dirty"), 0.0);
    assert_eq!(reconnects(&pool) - reconnects_before, 0.0);
    eprintln!(
        "1,000 transfers, {} EXECs aborted by conflicting writers",
        aborted.load(Ordering::Relaxed)
    );
}
}

in_both_modes! {
/// Fault: none; pipelines that change the session in an order that matters. Load: one
/// connection (`max_size(1)`), so the next user gets whatever the last one left. Asserts:
/// `[RESET, SELECT 9]` and `[UNWATCH, WATCH k]` are not returned clean (the next user is on
/// database 0 and its transaction runs), while `[SELECT 9, SELECT 0]` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_tracked_in_command_order_through_pipelines(mode: PoolMode) {
    let pool = pool_name(mode, "ordering");
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "ordering").max_size(max_size(mode, 1))).await;
    let _: () = server.command(&["SET", "where", "db0"]).map(drop).unwrap();

    let mut conn = guard.get().await.unwrap();
    let _: () = redis::pipe()
        .cmd("RESET")
        .ignore()
        .cmd("SELECT")
        .arg(9)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut conn = guard.get().await.unwrap();
    let seen: Option<String> = conn.get("where").await.unwrap();
    assert_eq!(
        seen.as_deref(),
        Some("db0"),
        "the next user is on database 0"
    );
    drop(conn);

    let mut conn = guard.get().await.unwrap();
    let _: () = redis::pipe()
        .cmd("UNWATCH")
        .ignore()
        .cmd("WATCH")
        .arg("k")
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let _: () = server.command(&["SET", "k", "changed"]).map(drop).unwrap();
    let mut conn = guard.get().await.unwrap();
    let committed: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("counter", 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        committed.is_some(),
        "the next user's transaction was not discarded"
    );
    drop(conn);

    let dirty_before = evictions(&pool, "dirty");
    assert_eq!(dirty_before, 2.0, "both connections above were evicted");
    let mut conn = guard.get().await.unwrap();
    let _: () = redis::pipe()
        .cmd("SELECT")
        .arg(9)
        .ignore()
        .cmd("SELECT")
        .arg(0)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let _conn = guard.get().await.unwrap();
    assert_eq!(
        evictions(&pool, "dirty"),
        dirty_before,
        "back on its database: clean"
    );
}
}

in_both_modes! {
/// Fault: none; a set-up hook that selects database 3, and one that fails. Load: a few
/// checkouts. Asserts: `CLIENT LIST` names the pool's connections after the pool; the hook's
/// `SELECT` is the baseline (commands land in database 3, no dirty eviction, no reconnect per
/// use); a failing hook surfaces as a counted connect error naming its cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_set_up_hook_runs_once_per_connection_and_sets_the_baseline(mode: PoolMode) {
    let pool_hook_fails = pool_name(mode, "hook_fails");
    let pool_hooked = pool_name(mode, "hooked");
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "hooked").on_connect(|conn| {
        Box::pin(async move { redis::cmd("SELECT").arg(3).query_async::<()>(conn).await })
    }))
    .await;
    for i in 0..10 {
        let mut conn = guard.get().await.unwrap();
        let _: () = conn.set(format!("key{i}"), i).await.unwrap();
    }
    let redis::Value::BulkString(list) = server.command(&["CLIENT", "LIST"]).unwrap() else {
        panic!("CLIENT LIST answers a bulk string")
    };
    let list = String::from_utf8_lossy(&list).into_owned();
    assert!(
        list.lines()
            .any(|l| l.contains(&format!(" name={pool_hooked} ")) && l.contains(" db=3 ")),
        "{list}"
    );
    assert_eq!(evictions(&pool_hooked, "dirty"), 0.0);
    // One connection for the sequential checkouts; in shared mode, one per lane.
    let lanes = if mode == redis_guard::PoolMode::Exclusive { 1.0 } else { 2.0 };
    assert_eq!(
        metric("redis_guard_connections_created_total", &pool_hooked, &[]),
        lanes
    );
    let mut admin = redis::Client::open(format!("{}/3", server.url()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let n: i64 = admin.get("key9").await.unwrap();
    assert_eq!(n, 9);

    let failing = unready_guard(config_in(mode, &server.url(), "hook_fails").on_connect(|conn| {
        Box::pin(async move {
            redis::cmd("SELECT")
                .arg(99_999)
                .query_async::<()>(conn)
                .await
        })
    }))
    .await;
    let err = failing.get().await.unwrap_err();
    assert!(
        err.to_string().contains("DB index is out of range"),
        "{err}"
    );
    assert!(metric("redis_guard_connect_errors_total", &pool_hook_fails, &[]) >= 1.0);
}
}

/// Reads `value` through the pool, as a handler would.
async fn read(guard: &RedisGuard) -> Result<String, String> {
    let mut conn = guard.get().await.map_err(|e| e.to_string())?;
    conn.get("value").await.map_err(|e| e.to_string())
}

in_both_modes! {
/// Fault: every pooled socket is reset (RST) while reads are in flight, then (second round)
/// every pooled socket freezes right after use. Load: 400 `GET`s at concurrency 8 through the
/// fault proxy, the fault injected in the middle. Asserts: no read fails (the ones in flight
/// on a dead socket are sent again on a fresh connection), and the retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_flight_on_a_dead_socket_are_retried_on_a_fresh_one(mode: PoolMode) {
    let pool = pool_name(mode, "read_retries");
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let guard =
        guard(config_in(mode, &proxy.url(), "read_retries").response_timeout(Duration::from_millis(300)))
            .await;
    let _: () = server.command(&["SET", "value", "v"]).map(drop).unwrap();
    for fault in ["reset", "freeze"] {
        let done = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (guard, done) = (guard.clone(), done.clone());
                tokio::spawn(async move {
                    let (mut failed, mut slowest) = (Vec::new(), Duration::ZERO);
                    while done.fetch_add(1, Ordering::Relaxed) < 400 {
                        let started = Instant::now();
                        if let Err(e) = read(&guard).await {
                            failed.push(e);
                        }
                        slowest = slowest.max(started.elapsed());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    (failed, slowest)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let hit = match fault {
            "reset" => proxy.reset_all().await,
            _ => proxy.freeze_all().await,
        };
        let faulted = Instant::now();
        let mut failed = Vec::new();
        let mut slowest = Duration::ZERO;
        for worker in workers {
            let (errors, worst) = worker.await.unwrap();
            failed.extend(errors);
            slowest = slowest.max(worst);
        }
        assert!(hit > 0, "{fault}: the fault hit pooled connections");
        eprintln!(
            "{fault} of {hit} pooled sockets under 8 readers: {} failed, slowest read {slowest:?}, \
             retries ok {} failed {}, run ended {:?} after the fault",
            failed.len(),
            retries(&pool, "ok"),
            retries(&pool, "failed"),
            faulted.elapsed()
        );
        assert!(
            failed.is_empty(),
            "{fault}: {} reads failed: {:?}",
            failed.len(),
            failed.first()
        );
    }
    assert!(
        retries(&pool, "ok") >= 1.0,
        "retries were needed and counted"
    );
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
}
}

in_both_modes! {
/// Fault: every pooled socket is reset while `INCR`s are in flight. Load: 400 `INCR`s at
/// concurrency 8. Asserts: an `INCR` in flight on a dead socket may fail, but none is
/// applied twice: the counter equals the number of `INCR`s that reported success, or exceeds
/// it only by failures that said they may have been applied
/// (`Error::may_have_been_applied`); a failure that said it was not never was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_never_sent_twice(mode: PoolMode) {
    let pool = pool_name(mode, "no_write_retries");
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let guard = guard(config_in(mode, &proxy.url(), "no_write_retries")).await;
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (guard, done) = (guard.clone(), done.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while done.fetch_add(1, Ordering::Relaxed) < 400 {
                    let result: Result<i64, redis_guard::Error> = async {
                        let mut conn = guard.get().await?;
                        Ok(conn.incr("counter", 1).await?)
                    }
                    .await;
                    match result {
                        Ok(_) => ok += 1,
                        Err(e) if e.may_have_been_applied() => failed += 1,
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hit = proxy.reset_all().await;
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed += f;
    }
    let redis::Value::BulkString(counter) = server.command(&["GET", "counter"]).unwrap() else {
        panic!("GET answers a bulk string")
    };
    let counter: u64 = String::from_utf8_lossy(&counter).parse().unwrap();
    assert!(hit > 0);
    // An `INCR` none of which was written before its socket failed may have been sent again
    // on another connection; one that was written never is.
    assert!(
        counter >= ok && counter <= ok + failed,
        "counter {counter}, {ok} acknowledged, {failed} failed and may have been applied: an \
         INCR was applied twice, or one said not applied was"
    );
    eprintln!(
        "INCR under RST: {ok} acknowledged, {failed} failed and may have been applied, counter {counter}, {} resent",
        retries(&pool, "ok")
    );
}
}

in_both_modes! {
/// Fault: Redis stops while a handler holds a connection. Load: an `INCR`, then a `GET`, on
/// that connection. Asserts: the write, which the dead connection never wrote, waits for
/// another connection within the checkout budget and fails with it, no retry succeeding; the
/// read fails within its budget once no replacement can be had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_dead_connection_fails_within_the_checkout_budget(mode: PoolMode) {
    let pool = pool_name(mode, "dead_write");
    let mut server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "dead_write")).await;
    // Let the pool learn Redis's commands first, as it does within a second of connecting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = guard.get().await.unwrap();
    let _: i64 = conn.incr("counter", 1).await.unwrap();
    tokio::task::block_in_place(|| server.stop());

    let started = Instant::now();
    let write: redis::RedisResult<i64> = conn.incr("counter", 1).await;
    let took = started.elapsed();
    let error = redis_guard::Error::Redis(write.expect_err("no Redis to write to"));
    assert!(!error.may_have_been_applied(), "never written, so never applied: {error}");
    let limit = guard.config().checkout_timeout() + Duration::from_millis(100);
    assert!(took < limit, "the write failed after {took:?}");
    assert_eq!(retries(&pool, "ok"), 0.0, "no retry succeeded");

    let started = Instant::now();
    let read: redis::RedisResult<Option<i64>> = conn.get("counter").await;
    assert!(read.is_err());
    assert!(
        started.elapsed() <= guard.config().checkout_timeout() + Duration::from_millis(100),
        "the read failed after {:?}",
        started.elapsed()
    );
}
}

/// The database a connection is on, as the server sees it.
async fn database_of(conn: &mut redis_guard::PooledConnection) -> String {
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(conn)
        .await
        .unwrap();
    info.split_whitespace()
        .find_map(|field| field.strip_prefix("db="))
        .unwrap()
        .to_owned()
}

in_both_modes! {
/// Fault: none; transactions that run nothing: an `EXEC` answered nil (a watched key changed)
/// and one refused (`EXECABORT`), each queuing a `SELECT 0` after a `SELECT 9`. Load: one
/// connection (`max_size(1)`). Asserts: the next user is on database 0, not 9: the
/// connections were not returned as clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_ran_nothing_changes_nothing(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "exec_nothing").max_size(max_size(mode, 1))).await;

    let mut conn = guard.get().await.unwrap();
    for step in [&["SELECT", "9"][..], &["WATCH", "k"]] {
        let _: () = redis::cmd(step[0])
            .arg(&step[1..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // Another client changes the watched key, in database 9.
    let mut other = redis::Client::open(format!("{}/9", server.url()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = other.set("k", "changed").await.unwrap();
    let committed: Option<()> = redis::pipe()
        .atomic()
        .cmd("SELECT")
        .arg(0)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(committed, None, "the watched key changed: EXEC ran nothing");
    drop(conn);
    let mut next = guard.get().await.unwrap();
    assert_eq!(database_of(&mut next).await, "0", "after a nil EXEC");
    drop(next);

    let mut conn = guard.get().await.unwrap();
    let _: () = redis::cmd("SELECT")
        .arg(9)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("MULTI").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _ = redis::cmd("GET").query_async::<()>(&mut conn).await; // wrong arity: EXECABORT
    let aborted = redis::cmd("EXEC").query_async::<()>(&mut conn).await;
    assert!(aborted.is_err());
    drop(conn);
    let mut next = guard.get().await.unwrap();
    assert_eq!(database_of(&mut next).await, "0", "after EXECABORT");
}
}

in_both_modes! {
/// Fault: none; `RESET` on a connection of a password-protected Redis. Load: one connection.
/// Asserts: the next user gets a connection that is logged in (RESET logs out: that connection
/// is not reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_not_reused(mode: PoolMode) {
    let pool = pool_name(mode, "after_reset");
    let server = RedisServer::start_with_args(&["--requirepass", "reset-secret"]).unwrap();
    let url = format!("redis://:reset-secret@127.0.0.1:{}", server.port());
    let guard = guard(config_in(mode, &url, "after_reset").max_size(max_size(mode, 1))).await;
    let mut conn = guard.get().await.unwrap();
    let _: () = redis::cmd("RESET").query_async(&mut conn).await.unwrap();
    drop(conn);
    let mut next = guard.get().await.unwrap();
    let value: Option<String> = next.get("k").await.unwrap();
    assert_eq!(value, None);
    assert_eq!(evictions(&pool, "dirty"), 1.0);
}
}

in_both_modes! {
/// Fault: a Lua script runs longer than `busy-reply-threshold` (Redis answers `BUSY` to every
/// other command meanwhile). Load: a `GET` every 50 ms while it runs. Asserts: each refused
/// `GET` answers `503` with `Retry-After` (Redis is unavailable for now; the application did
/// nothing wrong), the pool is not ready while the script holds Redis, but nothing counts as
/// an outage: the breaker stays closed and no connection is given up. Once the script ends the
/// pool is ready again and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_script_is_unavailability_not_an_outage(mode: PoolMode) {
    let server = RedisServer::start_with_args(&["--busy-reply-threshold", "100"]).unwrap();
    let pool = pool_name(mode, "busy_script");
    let guard = guard(config_in(mode, &server.url(), "busy_script").validation_bypass(Duration::ZERO)).await;
    let evicted_before = metric("redis_guard_stale_evictions_total", &pool, &[]);
    // Run by another client, as a batch job's script would be.
    let mut other_client = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await
        .unwrap();
    let script = {
        tokio::spawn(async move {
            let spin = "local t = redis.call('TIME') \
                        while true do local n = redis.call('TIME') \
                        if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 1200000 then break end end";
            redis::cmd("EVAL_RO")
                .arg(spin)
                .arg(0)
                .query_async::<()>(&mut other_client)
                .await
        })
    };
    let (mut refused, mut unready) = (0, false);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(mut conn) = guard.get().await
            && let Err(error) = conn.get::<_, Option<String>>("k").await
        {
            let response = axum::response::IntoResponse::into_response(redis_guard::Error::Redis(error));
            assert_eq!(response.status(), 503, "BUSY is unavailability, not the application's error");
            assert!(response.headers().get("retry-after").is_some());
            refused += 1;
        }
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        unready |= !guard.is_ready();
    }
    script.await.unwrap().expect("the script ran to its end");
    assert!(refused > 0, "no GET met the script: it ran too early or too late");
    assert!(unready, "the pool said it was ready while Redis refused every command");
    assert!(
        eventually(Duration::from_secs(3), || guard.is_ready()).await,
        "ready again once the script ended"
    );
    let mut conn = guard.get().await.unwrap();
    let _: Option<String> = conn.get("k").await.expect("served after the script");
    assert_eq!(
        metric("redis_guard_stale_evictions_total", &pool, &[]),
        evicted_before,
        "a BUSY reply gives up no connection"
    );
}
}

in_both_modes! {
/// Fault: the set-up hook panics on its first calls. Load: checkouts until it works, then
/// every slot held at once. Asserts: the panic is a counted connect error, not a lost slot:
/// afterwards all `max_size` connections can be had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_set_up_hook_is_a_connect_error_and_loses_no_slot(mode: PoolMode) {
    let pool = pool_name(mode, "hook_panics");
    let server = RedisServer::start().unwrap();
    let panics = Arc::new(AtomicU64::new(3));
    let hook_panics = panics.clone();
    let guard = unready_guard(config_in(mode, &server.url(), "hook_panics").max_size(max_size(mode, 3)).on_connect(
        move |conn| {
            let panic = hook_panics
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            Box::pin(async move {
                assert!(!panic, "a bug in the hook");
                redis::cmd("PING").query_async::<()>(conn).await
            })
        },
    ))
    .await;
    assert!(eventually(Duration::from_secs(5), || guard.is_ready()).await);
    assert!(metric("redis_guard_connect_errors_total", &pool, &[]) >= 1.0);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            timeout(Duration::from_secs(3), guard.get())
                .await
                .expect("bounded")
                .expect("every slot can be had"),
        );
    }
}
}

in_both_modes! {
/// Fault: Redis out of memory (`maxmemory 1`, `noeviction`): every write is refused while
/// queued, so each transaction ends in `EXECABORT` having run nothing. Load: 8 workers, 25
/// transactions each, half explicit `MULTI ... EXEC` (`WATCH` first), half atomic pipelines.
/// Asserts: every transaction fails with the refusal, no connection is evicted and none
/// opened after the first ones: a transaction that ran nothing leaves its session as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_refused_under_oom_evict_nothing(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    let pool = pool_name(mode, "oom_transactions");
    let guard = guard(config_in(mode, &server.url(), &pool).max_size(max_size(mode, 8))).await;
    server.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]).unwrap();
    server.command(&["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0..25 {
                    let mut conn = guard.get().await.unwrap();
                    let key = format!("oom:{worker}:{i}");
                    let outcome: redis::RedisResult<()> = if i % 2 == 0 {
                        redis::pipe().atomic().set(&key, i).incr(&key, 1).query_async(&mut conn).await
                    } else {
                        let _: () = redis::cmd("WATCH").arg(&key).query_async(&mut conn).await.unwrap();
                        let _: () = redis::cmd("MULTI").query_async(&mut conn).await.unwrap();
                        let queued: redis::RedisResult<()> =
                            redis::cmd("SET").arg(&key).arg(i).query_async(&mut conn).await;
                        assert!(queued.is_err(), "the write is refused while queued");
                        redis::cmd("EXEC").query_async(&mut conn).await
                    };
                    let error = outcome.expect_err("the transaction is refused");
                    assert_eq!(error.code(), Some("EXECABORT"), "{error}");
                    refused += 1;
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for worker in workers {
        refused += worker.await.unwrap();
    }
    assert_eq!(refused, 200);
    let evicted = metric("redis_guard_stale_evictions_total", &pool, &[]);
    let opened = metric("redis_guard_connections_created_total", &pool, &[]);
    assert_eq!(evicted, 0.0, "no connection evicted for a transaction that ran nothing");
    assert!(opened <= f64::from(max_size(mode, 8)), "{opened} connections opened for a pool of {}", max_size(mode, 8));
}
}
