//! Shared mode: plain commands from many checkouts go over one multiplexed connection, and a
//! command that needs a connection of its own takes an exclusive one, leaving the shared
//! connection's session as it was. The fault and command tests run in both modes in their
//! own files (`in_both_modes!`); these are the guarantees only shared mode has to keep.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{PoolMode, PooledConnection, RedisGuard};

/// `CLIENT INFO` of the connection `conn`'s next call goes over.
async fn client_info(conn: &mut PooledConnection) -> String {
    redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(conn)
        .await
        .unwrap()
}

fn field<'a>(info: &'a str, name: &str) -> &'a str {
    info.split(' ')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} in {info}"))
}

/// A shared-mode pool with both lanes open, so that every plain checkout starts on the one
/// read connection (until one is open, reads go over the writes' lane).
async fn shared_guard(server: &RedisServer, pool: &str) -> RedisGuard {
    let guard = guard(config_in(PoolMode::Shared, &server.url(), pool).max_size(4)).await;
    drop(guard.get().await.unwrap());
    assert!(
        eventually(Duration::from_secs(5), || guard.state().shared == LANES).await,
        "both lanes open: {}",
        guard.state()
    );
    guard
}

/// Shared connections of a [`shared_guard`] pool once both lanes are open: one for reads,
/// one for every call that may write.
const LANES: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_need_their_own_connection_take_one_and_leave_the_shared_one_clean() {
    let server = RedisServer::start().unwrap();
    let guard = shared_guard(&server, "own_connection").await;
    let mut probe = guard.get().await.unwrap();
    let shared_id = probe.connection_id();
    let redis_id_of_shared = field(&client_info(&mut probe).await, "id").to_owned();

    let session_changers: [&[&str]; 8] = [
        &["WATCH", "balance"],
        &["MULTI"],
        &["SELECT", "5"],
        &["BLPOP", "no-such-list", "0.05"],
        &["SUBSCRIBE", "news"],
        &["CLIENT", "SETNAME", "renamed"],
        &["CLIENT", "TRACKING", "ON"],
        &["QUIT"],
    ];
    for words in session_changers {
        let mut conn = guard.get().await.unwrap();
        assert!(conn.is_shared(), "a fresh checkout starts shared");
        assert_eq!(conn.connection_id(), shared_id);
        let mut cmd = redis::cmd(words[0]);
        for arg in &words[1..] {
            cmd.arg(*arg);
        }
        let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        assert!(!conn.is_shared(), "{words:?} took a connection of its own");
        assert_ne!(conn.connection_id(), shared_id, "{words:?}");
        // (Inside MULTI it would be queued, on a subscribed RESP2 connection refused, and
        // after QUIT the connection is gone.)
        let mut own_id = None;
        if !["MULTI", "SUBSCRIBE", "QUIT"].contains(&words[0]) {
            // Later plain commands follow it there, in its session.
            let info = client_info(&mut conn).await;
            assert_ne!(field(&info, "id"), redis_id_of_shared, "{words:?}");
            own_id = Some(field(&info, "id").to_owned());
        }

        // Meanwhile, other checkouts' plain commands go over the shared connections (the
        // lane for writes, here), whose session is untouched.
        let mut other = guard.get().await.unwrap();
        let _: () = other.set("other", "fine").await.unwrap();
        let info = client_info(&mut other).await;
        assert!(other.is_shared());
        assert_ne!(Some(field(&info, "id")), own_id.as_deref(), "{words:?}");
        for (name, clean) in [
            ("db", "0"),
            ("multi", "-1"),
            ("sub", "0"),
            ("name", guard.name()),
        ] {
            assert_eq!(field(&info, name), clean, "{name} after {words:?}: {info}");
        }
        assert!(
            !field(&info, "flags").contains('t'),
            "tracking after {words:?}"
        );
    }
    // Six sessions changed (the BLPOP's is clean). QUIT's connection is both tainted and
    // closed by the server: it is counted as dirty, or as broken if the server's close was
    // read before it came back. Either way it is not reused.
    let (dirty, broken) = (
        evictions(guard.name(), "dirty"),
        evictions(guard.name(), "broken"),
    );
    assert_eq!(
        dirty + broken,
        7.0,
        "each exclusive connection left with a changed session was closed: {dirty} dirty, \
         {broken} broken"
    );
    assert!(dirty >= 6.0, "{dirty} dirty, {broken} broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_transaction_runs_on_one_connection_of_its_own() {
    let server = RedisServer::start().unwrap();
    let guard = shared_guard(&server, "watched").await;
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("balance", 10).await.unwrap();
    let _: () = redis::cmd("WATCH")
        .arg("balance")
        .query_async(&mut conn)
        .await
        .unwrap();
    let balance: i64 = conn.get("balance").await.unwrap();
    // Another client changes the watched key: the transaction must see it, which it can only
    // if the WATCH, the read and the EXEC went over the same connection.
    let mut other = guard.get().await.unwrap();
    let _: () = other.set("balance", 0).await.unwrap();
    let applied: Option<(i64,)> = redis::pipe()
        .atomic()
        .set("balance", balance - 5)
        .ignore()
        .get("balance")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, None, "the EXEC saw the watched key change");
    let balance: i64 = other.get("balance").await.unwrap();
    assert_eq!(balance, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_pipelines_of_plain_commands_stay_on_the_shared_connection() {
    let server = RedisServer::start().unwrap();
    let guard = shared_guard(&server, "atomic").await;
    let mut conn = guard.get().await.unwrap();
    let (n, m): (i64, i64) = redis::pipe()
        .atomic()
        .incr("n", 1)
        .incr("n", 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((n, m), (1, 2));
    assert!(conn.is_shared());
    let info = client_info(&mut conn).await;
    assert_eq!(field(&info, "multi"), "-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_checkouts_share_the_lanes_connections() {
    let server = RedisServer::start().unwrap();
    let guard = shared_guard(&server, "many").await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let guard = guard.clone();
            tokio::spawn(async move {
                for j in 0..50 {
                    let mut conn = guard.get().await.unwrap();
                    let key = format!("k{i}");
                    let _: () = conn.set(&key, j).await.unwrap();
                    let read: i64 = conn.get(&key).await.unwrap();
                    assert_eq!(read, j, "no reply crossed to another caller");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let state = guard.state();
    assert_eq!(state.shared, LANES, "{state}");
    assert!(
        metric("redis_guard_connections_created_total", guard.name(), &[]) <= f64::from(LANES + 1),
        "64 concurrent callers went over the shared connections, not one each: {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_shared_call_leaves_no_reply_for_the_next_caller() {
    let server = RedisServer::start().unwrap();
    let guard = shared_guard(&server, "cancelled_shared").await;
    for i in 0..200 {
        let mut conn = guard.get().await.unwrap();
        let value = format!("v{i}");
        // Cut short at once, or after the command left: either way its reply is nobody's.
        let _ = tokio::time::timeout(
            Duration::from_micros(i % 50),
            redis::cmd("ECHO")
                .arg("cancelled")
                .query_async::<String>(&mut conn),
        )
        .await;
        let echoed: String = redis::cmd("ECHO")
            .arg(&value)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(echoed, value);
    }
    assert_eq!(
        guard.state().shared,
        LANES,
        "cancellations cost no connection"
    );
}

#[test]
fn shared_mode_needs_room_for_exclusive_connections() {
    let error = redis_guard::Config::builder("redis://127.0.0.1")
        .mode(PoolMode::Shared)
        .max_size(1)
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("shared_connections"), "{error}");
    assert!(error.contains("max_size"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_lets_a_checkout_taken_before_it_take_a_connection_of_its_own() {
    let server = RedisServer::start().unwrap();
    // min_idle 1, the default: the pool keeps an exclusive connection idle, and a closing pool
    // opens no new one.
    let guard = guard(
        config_in(PoolMode::Shared, &server.url(), "close_then_watch")
            .max_size(4)
            .min_idle(1),
    )
    .await;
    let mut conn = guard.get().await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || guard.state().idle == 1).await,
        "{}",
        guard.state()
    );
    let closing = {
        let guard = guard.clone();
        tokio::spawn(async move { guard.close(Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(guard.get().await.is_err(), "a new checkout is refused");
    // The request admitted before the close goes on: its WATCH needs a connection of its own.
    let _: () = redis::cmd("WATCH")
        .arg("counter")
        .query_async(&mut conn)
        .await
        .expect("a checkout taken before the close is not cut");
    let applied: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("counter", 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, Some((1,)));
    assert!(!closing.is_finished(), "the close waits for the request");
    drop(conn);
    assert_eq!(closing.await.unwrap(), 0, "every connection came back");
}

in_both_modes! {
/// Fault: `CLIENT PAUSE 2000 WRITE` while 4 writers (`INCR`) and 8 readers (`GET`) run, each
/// on its own checkouts. Redis answers a connection's commands in order, so a read queued
/// behind a paused write waits for the pause. Asserts: reads go on during the pause, their
/// p99 within 10 ms, and none fails (writes wait for the pause, or time out: it outlasts the
/// response timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_write_holds_no_read(mode: PoolMode) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "paused_writes").max_size(16)).await;
    // Let the pool learn which commands only read.
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("counter", 0).await.unwrap();
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (guard, running) = (guard.clone(), running.clone());
        let reader = i >= 4;
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            while running.load(Ordering::Relaxed) && log.len() < 100_000 {
                let at = Instant::now();
                let outcome: Result<(), String> = async {
                    let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                    if reader {
                        conn.get::<_, Option<i64>>("counter").await.map(drop)
                    } else {
                        conn.incr::<_, _, i64>("counter", 1).await.map(drop)
                    }
                    .map_err(|e| e.to_string())
                }
                .await;
                log.push((reader, at, at.elapsed(), outcome));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.command(&["CLIENT", "PAUSE", "2000", "WRITE"]).unwrap();
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    running.store(false, Ordering::Relaxed);
    let mut log = Vec::new();
    for task in tasks {
        log.extend(task.await.unwrap());
    }
    let failed: Vec<_> = log
        .iter()
        .filter(|(reader, .., o)| *reader && o.is_err())
        .collect();
    assert!(failed.is_empty(), "{} reads failed, e.g. {:?}", failed.len(), failed[0].3);
    let mut during: Vec<Duration> = log
        .iter()
        .filter(|(reader, at, elapsed, _)| {
            *reader && *at > paused && *at + *elapsed < paused + Duration::from_millis(1900)
        })
        .map(|(_, _, elapsed, _)| *elapsed)
        .collect();
    during.sort();
    assert!(during.len() > 100, "{} reads served during the pause", during.len());
    let p99 = during[during.len() * 99 / 100];
    assert!(p99 <= Duration::from_millis(10), "reads during the pause: p99 {p99:?}");
    eprintln!("{mode:?}: {} reads during the pause, p99 {p99:?}", during.len());
}
}
