//! F8 and F9: cancellation and exhaustion under load.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use common::*;
use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
use redis_guard::{Redis, RedisGuardLayer};

#[derive(serde::Deserialize)]
struct Value {
    value: String,
}

/// A hand-written transaction, three round trips long, so that cancellation lands inside it:
/// a connection returned inside MULTI would answer the next user's commands with QUEUED.
async fn transaction(mut redis: Redis, Query(q): Query<Value>) -> (StatusCode, String) {
    let key = format!("tx:{}", q.value);
    let steps: redis::RedisResult<redis::Value> = async {
        redis::cmd("MULTI").query_async::<()>(&mut redis).await?;
        redis::cmd("SET")
            .arg(&key)
            .arg(&q.value)
            .query_async::<()>(&mut redis)
            .await?;
        redis::cmd("GET")
            .arg(&key)
            .query_async::<()>(&mut redis)
            .await?;
        redis::cmd("EXEC").query_async(&mut redis).await
    }
    .await;
    match steps {
        Ok(redis::Value::Array(replies))
            if replies.get(1) == Some(&redis::Value::BulkString(q.value.clone().into_bytes())) =>
        {
            (StatusCode::OK, q.value)
        }
        Ok(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("mismatch: {other:?}"),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("mismatch: {e}")),
    }
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_cancelled_requests_cause_no_cross_talk_and_leak_no_connection(mode: PoolMode) {
    let pool = pool_name(mode, "f8");
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    // Every reply takes a millisecond, so cancellations land mid-command.
    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(1)));
    let guard = guard(config_in(mode, &proxy.url(), "f8").max_size(max_size(mode, 4))).await;
    let app: Router = router(guard.clone()).merge(
        Router::new()
            .route("/tx", get(transaction))
            .layer(RedisGuardLayer::new(guard.clone())),
    );

    // Requests go on until both kinds are well represented, however busy the machine: how
    // many finish within their random deadlines depends on the CPU, not on the pool. Bounded
    // in count (and by TEST_DEADLINE).
    const EACH_AT_LEAST: u64 = 200;
    const MIN_REQUESTS: u64 = 2_000;
    const MAX_REQUESTS: u64 = 20_000;
    let next = Arc::new(AtomicU64::new(0));
    let (completed, cancelled, crossed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (app, next) = (app.clone(), next.clone());
            let (completed, cancelled, crossed) =
                (completed.clone(), cancelled.clone(), crossed.clone());
            tokio::spawn(async move {
                loop {
                    let issued = next.fetch_add(1, Ordering::Relaxed);
                    let enough = completed.load(Ordering::Relaxed) >= EACH_AT_LEAST
                        && cancelled.load(Ordering::Relaxed) >= EACH_AT_LEAST;
                    if issued >= MAX_REQUESTS || (issued >= MIN_REQUESTS && enough) {
                        break;
                    }
                    let value = unique_value();
                    let path = if fastrand::bool() { "echo" } else { "tx" };
                    let deadline = Duration::from_micros(fastrand::u64(0..30_000));
                    let uri = format!("/{path}?value={value}");
                    match tokio::time::timeout(deadline, call(&app, &uri)).await {
                        Err(_) => cancelled.fetch_add(1, Ordering::Relaxed),
                        Ok(outcome)
                            if outcome.status == StatusCode::OK && outcome.body == value =>
                        {
                            completed.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(outcome) => {
                            crossed.lock().unwrap().push(outcome);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::timeout(TEST_DEADLINE, async {
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await
    .expect("load finished");

    let crossed = std::mem::take(&mut *crossed.lock().unwrap());
    assert!(
        crossed.is_empty(),
        "{} requests got another's reply or failed: {:?}",
        crossed.len(),
        crossed.first()
    );
    let (completed, cancelled) = (
        completed.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed),
    );
    eprintln!("F8: completed {completed}, cancelled {cancelled}");
    assert!(
        completed >= EACH_AT_LEAST && cancelled >= EACH_AT_LEAST,
        "completed {completed}, cancelled {cancelled}"
    );
    assert!(
        evictions(&pool, "dirty") + evictions(&pool, "cancelled") >= 1.0,
        "transactions cut short were evicted"
    );

    // Every slot comes back: nothing in use, nobody waiting, and the whole pool can be held.
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = guard.state();
            s.in_use == 0 && s.waiting == 0 && s.idle + s.shared == s.connections
        })
        .await,
        "pool settled: {}",
        guard.state()
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = guard.get().await.expect("a free slot");
        // In shared mode a WATCH takes a connection of its own.
        let _: () = redis::cmd("WATCH")
            .arg("f8")
            .query_async(&mut conn)
            .await
            .unwrap();
        held.push(conn);
    }
    assert_eq!(guard.state().in_use, 4);
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_exhausted_pool_waits_a_bounded_time_then_names_its_state() {
    let server = RedisServer::start().unwrap();
    let budget = Duration::from_millis(300);
    let guard = guard(
        config(&server.url(), "f9")
            .max_size(4)
            .checkout_timeout(budget)
            .validation_timeout(Duration::from_millis(100)),
    )
    .await;
    let app = router(guard.clone());

    // 10x more concurrent requests than connections, each holding its connection 200 ms.
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, "/hold?ms=200").await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap());
    }
    let ok = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != StatusCode::OK)
        .collect();
    assert!((4..=12).contains(&ok), "{ok} requests got a connection");
    for o in &refused {
        assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(o.retry_after.as_deref(), Some("1"));
        assert!(o.body.contains("timed out"), "{}", o.body);
        assert!(
            o.elapsed < budget + Duration::from_millis(250),
            "waited {:?}",
            o.elapsed
        );
    }

    // The error a caller sees names the pool's state.
    let held: Vec<_> = hold_connections(&guard, 4).await;
    let err = guard.get().await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("4 connections (0 idle, 4 in use) of at most 4, 1 waiting"),
        "{message}"
    );
    assert!(message.contains("last connect error: none"), "{message}");
    drop(held);

    // Afterwards the pool is consistent and serves normally.
    let state = guard.state();
    assert_eq!(
        (state.in_use, state.waiting, state.idle),
        (0, 0, state.connections)
    );
    let outcomes = drive_echo(&app, 100, 8).await;
    assert!(failures(&outcomes).is_empty());
}

async fn hold_connections(
    guard: &redis_guard::RedisGuard,
    n: usize,
) -> Vec<redis_guard::PooledConnection> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(guard.get().await.unwrap());
    }
    held
}

/// Overload: 128 callers on 4 connections, each holding its connection for a command. Callers
/// are served in turn, so none waits out the checkout budget while others are served over and
/// over (bb8 alone lets newcomers barge past sleeping waiters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_pool_serves_callers_in_turn_so_none_times_out() {
    let server = RedisServer::start().unwrap();
    // A short budget: served in turn, each caller waits about 128 / 4 short commands.
    let budget = Duration::from_millis(100);
    let guard = guard(
        config(&server.url(), "fair")
            .max_size(4)
            .checkout_timeout(budget)
            .validation_timeout(Duration::from_millis(50)),
    )
    .await;
    let tasks: Vec<_> = (0..128)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                for _ in 0..20 {
                    let started = std::time::Instant::now();
                    let mut conn = guard.get().await.expect("no checkout times out");
                    worst = worst.max(started.elapsed());
                    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                }
                worst
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for task in tasks {
        worst = worst.max(
            tokio::time::timeout(TEST_DEADLINE, task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    eprintln!("fair queue: worst checkout wait {worst:?} for 128 callers on 4 connections");
    assert_eq!(
        metric(
            "redis_guard_checkouts_total",
            "fair",
            &[("result", "timeout")]
        ),
        0.0
    );
}

/// A saturated pool hands its only connection to a waiter whose budget is nearly spent, and
/// the connection must be PINGed first (idle past the bypass window): the PING cannot come
/// back in the few milliseconds left. The waiter times out, but the connection is not taken
/// for a dead one: it stays in the pool, and the next checkout proves and gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_out_of_budget_does_not_evict_the_connection_it_was_validating() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let pool = "out-of-budget";
    // Every reply takes 100 ms: a PING needs that much, well within validation_timeout.
    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(100)));
    let guard = guard(
        config(&proxy.url(), pool)
            .max_size(1)
            .checkout_timeout(Duration::from_millis(400))
            .validation_timeout(Duration::from_millis(250))
            .validation_bypass(Duration::from_millis(50)),
    )
    .await;
    let held = guard.get().await.expect("the only connection");
    let id = held.connection_id();
    let waiter = tokio::spawn({
        let guard = guard.clone();
        async move { guard.get().await.map(|conn| conn.connection_id()) }
    });
    // Given back with about 40 ms of the waiter's 400 ms left, idle past the bypass window.
    tokio::time::sleep(Duration::from_millis(360)).await;
    drop(held);
    let waited = waiter.await.unwrap();
    assert!(
        matches!(waited, Err(redis_guard::Error::Timeout { .. })),
        "the waiter ran out of budget: {waited:?}"
    );
    assert_eq!(
        evictions(pool, "validation_failed"),
        0.0,
        "a PING cut short by the budget evicted a working connection"
    );
    let next = guard.get().await.expect("a checkout with its whole budget");
    assert_eq!(
        next.connection_id(),
        id,
        "the same connection, proven by a PING"
    );
}
