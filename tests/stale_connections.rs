//! F1-F4: connections that died while idle are evicted and replaced before any handler sees
//! them. Each test warms a pool, injects one real fault while it is idle, then sends 1,000
//! requests at concurrency 8 and requires every one to succeed.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use redis_guard::RedisGuard;
use redis_guard::testkit::{FaultProxy, RedisServer};

const REQUESTS: usize = 1_000;
const CONCURRENCY: usize = 8;

/// Fills the pool: 8 connections, all idle afterwards.
async fn warm(guard: &RedisGuard) -> u32 {
    let app = router(guard.clone());
    let outcomes = drive_echo(&app, 200, CONCURRENCY).await;
    assert!(
        failures(&outcomes).is_empty(),
        "warm-up failed: {:?}",
        failures(&outcomes)
    );
    // The prober may hold one for a moment (its PING), and the pool learns Redis's commands
    // once on a connection of its own, closed right after.
    let settled = eventually(Duration::from_secs(2), || guard.state().in_use == 0).await;
    assert!(settled, "pool settled: {}", guard.state());
    tokio::time::sleep(Duration::from_millis(200)).await;
    guard.state().connections
}

/// Sends the load and asserts that nothing failed and that the dead connections were found
/// without a round trip (no failed validation) and counted under `reason`.
async fn assert_no_request_fails(guard: &RedisGuard, reason: &str, dead: u32) {
    let pool = guard.name();
    let app = router(guard.clone());
    let outcomes = drive_echo(&app, REQUESTS, CONCURRENCY).await;
    assert_eq!(outcomes.len(), REQUESTS);
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    // At least one dead connection was met and counted; the pool's verifying connects after
    // the fault may be caught by it too, so there can be more than were pooled.
    let evicted = evictions(pool, reason);
    assert!(
        evicted >= 1.0,
        "{evicted} evictions for {reason}, {dead} connections were dead"
    );
    assert_eq!(
        validations(pool, "failed"),
        0.0,
        "dead sockets were noticed without a PING"
    );
    assert!(metric("redis_guard_reconnects_total", pool, &[]) >= 1.0);
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_server_restart_while_idle_fails_no_request(mode: PoolMode) {
    let mut server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "f1")).await;
    let dead = warm(&guard).await;
    server.restart().unwrap();
    assert_no_request_fails(&guard, "broken", dead).await;
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_client_kill_of_every_connection_fails_no_request(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "f2")).await;
    let dead = warm(&guard).await;
    let killed = server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert_eq!(killed, redis::Value::Int(i64::from(dead)));
    assert_no_request_fails(&guard, "broken", dead).await;
}
}

/// `CLIENT KILL` of every client but the caller, from a blocking call: on a one-thread
/// runtime, nothing reads the closes until the test awaits.
fn kill_every_connection(server: &RedisServer) {
    server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
}

/// `INCR writes` succeeds as the `call`-th applied.
async fn incr_applied_once(conn: &mut redis_guard::PooledConnection, call: i64) {
    let counted: i64 = conn
        .incr("writes", 1)
        .await
        .unwrap_or_else(|e| panic!("write {call} failed: {e}"));
    assert_eq!(counted, call, "each write applied once");
}

in_both_modes! {
/// F2, at the worst moment: each connection is killed just before its checkout, while the
/// runtime cannot poll for I/O (one thread, blocked in the kill), so the driver has not read
/// the close. Asserts: every `INCR` succeeds and is applied once. The checkout's peek sees the
/// close; without it the `INCR` would be written to the closed socket, and a write that was
/// written is never sent again.
#[tokio::test(flavor = "current_thread")]
async fn f2_a_write_after_a_kill_the_runtime_has_not_seen_is_not_lost(mode: PoolMode) {
    const CALLS: i64 = 100;
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "f2-unseen")).await;
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("writes", 0).await.unwrap();
    drop(conn);
    for call in 1..=CALLS {
        kill_every_connection(&server);
        let mut conn = guard.get().await.expect("checkout");
        incr_applied_once(&mut conn, call).await;
    }
}
}

in_both_modes! {
/// F2 under a handler that holds its checkout: the connection is killed while the handler is
/// busy. Every other time the driver has read the close before the next command; otherwise
/// the runtime could not poll for I/O (one thread, blocked in the kill) and the close is only
/// in the kernel. Asserts: each `INCR` (a write) succeeds on a fresh connection and is applied
/// once, since none of it was written to the dead one. Many rounds, since a kill sometimes
/// also cuts the handshakes of connects under way (the pool refilling), which must not fail
/// the checkout waiting on them: cuts that ran alongside each other are one fault.
#[tokio::test(flavor = "current_thread")]
async fn f2_a_write_on_a_held_connection_killed_before_it_is_sent_once_elsewhere(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "f2-held")).await;
    let mut conn = guard.get().await.unwrap();
    // Even the checkout's first call, closed under it since the checkout looked.
    kill_every_connection(&server);
    assert!(eventually(Duration::from_secs(2), || !conn.is_open()).await);
    let _: () = conn.set("writes", 0).await.unwrap();
    for call in 1..=400 {
        kill_every_connection(&server);
        if call % 2 == 0 {
            let read = eventually(Duration::from_secs(2), || !conn.is_open()).await;
            assert!(read, "the driver reads the close");
        }
        incr_applied_once(&mut conn, call).await;
    }
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_server_idle_timeout_closing_connections_fails_no_request(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    // The prober's PINGs would keep one connection from ever idling: probe rarely here.
    let guard = guard(config_in(mode, &server.url(), "f3").probe_interval(Duration::from_secs(60))).await;
    let dead = warm(&guard).await;
    let client_ids = || -> Vec<String> {
        let Ok(redis::Value::BulkString(list)) =
            server.command(&["CLIENT", "LIST", "TYPE", "normal"])
        else {
            return Vec::new();
        };
        let name = format!("name={} ", guard.name());
        String::from_utf8_lossy(&list)
            .lines()
            .filter(|line| line.contains(&name))
            .filter_map(|line| line.split(' ').next().map(str::to_owned))
            .collect()
    };
    let pooled = client_ids();
    assert_eq!(pooled.len(), dead as usize, "the pool's connections: {pooled:?}");
    server.command(&["CONFIG", "SET", "timeout", "1"]).unwrap();
    // The pool may open a connection to verify Redis once its sockets closed; the ones it
    // pooled before must all be gone.
    let pooled_clients_gone = eventually(Duration::from_secs(10), || {
        !client_ids().iter().any(|id| pooled.contains(id))
    })
    .await;
    assert!(pooled_clients_gone, "redis closed the idle pool connections");
    server.command(&["CONFIG", "SET", "timeout", "0"]).unwrap();
    assert_no_request_fails(&guard, "broken", dead).await;
}
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_connection_reset_by_peer_fails_no_request(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let guard = guard(config_in(mode, &proxy.url(), "f4")).await;
    let dead = warm(&guard).await;
    assert_eq!(proxy.reset_all().await, dead as usize);
    assert_no_request_fails(&guard, "broken", dead).await;
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_while_checked_out_is_not_returned_to_the_pool() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "has_broken").max_size(1)).await;
    let mut conn = guard.get().await.unwrap();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await
        .unwrap();
    let first = conn.connection_id();
    server
        .command(&["CLIENT", "KILL", "ID", &id.to_string()])
        .unwrap();
    // No command is sent on `conn`: the driver's read of the EOF is all that marks it.
    assert!(eventually(Duration::from_secs(5), || !conn.is_open()).await);
    drop(conn);
    assert_eq!(evictions("has_broken", "broken"), 1.0);
    // The pool holds one connection at most: a replacement can only be there if the dead one
    // is gone.
    let replacement = guard.get().await.unwrap();
    assert_ne!(
        replacement.connection_id(),
        first,
        "the dead one was handed out"
    );
    assert!(replacement.is_open());
    assert_eq!(
        validations("has_broken", "passed") + validations("has_broken", "failed"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout_and_counted() {
    let server = RedisServer::start().unwrap();
    let idle = Duration::from_millis(200);
    let guard = guard(
        config(&server.url(), "idle")
            .idle_timeout(idle)
            .probe_interval(Duration::from_secs(60)),
    )
    .await;
    let _ = guard.get().await.unwrap();
    assert!(guard.state().idle >= 1);
    // bb8's reaper runs every idle_timeout / 2; the connection idles past the timeout.
    assert!(eventually(Duration::from_secs(3), || guard.state().connections == 0).await);
    assert!(evictions("idle", "idle_timeout") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_lifetime_are_replaced_at_checkout() {
    let server = RedisServer::start().unwrap();
    let lifetime = Duration::from_millis(300);
    let guard = guard(
        config(&server.url(), "lifetime")
            .max_size(1)
            .max_lifetime(lifetime)
            .probe_interval(Duration::from_secs(60)),
    )
    .await;
    let first = guard.get().await.unwrap().connection_id();
    tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
    let mut conn = guard.get().await.unwrap();
    assert_ne!(
        conn.connection_id(),
        first,
        "the expired connection was not handed out"
    );
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(evictions("lifetime", "max_lifetime"), 1.0);
}

in_both_modes! {
/// Fault: every socket frozen (half-open: no reply, no FIN, no RST) by the proxy right after
/// traffic, inside the validation bypass window, while 8 readers run (`GET` through their own
/// checkouts, 16 connections at most); new connections still pass. Asserts: in steady state
/// under 1 % of reads are hedged; the first read made after the freeze is answered within
/// 100 ms (a late read is sent again on a connection that answers, not left to its 1 s
/// response timeout), and no read fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_frozen_sockets_are_hedged(mode: PoolMode) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let pool = pool_name(mode, "hedged");
    let guard = guard(config_in(mode, &proxy.url(), "hedged").max_size(16)).await;
    let running = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (guard, running) = (guard.clone(), running.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                while running.load(Ordering::Relaxed) && log.len() < 200_000 {
                    let started = Instant::now();
                    let read: Result<Option<String>, String> = async {
                        let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                        conn.get("k").await.map_err(|e| e.to_string())
                    }
                    .await;
                    log.push((started, Instant::now(), read.map(drop)));
                }
                log
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hedges_before = metric("redis_guard_hedges_total", &pool, &[]);
    let frozen = Instant::now();
    proxy.freeze_all().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    running.store(false, Ordering::Relaxed);
    let mut log = Vec::new();
    for reader in readers {
        log.extend(reader.await.unwrap());
    }
    let steady = log.iter().filter(|(_, ended, _)| *ended < frozen).count();
    assert!(steady > 1000, "{steady} reads before the freeze");
    assert!(
        hedges_before * 100.0 < steady as f64,
        "{hedges_before} hedges for {steady} reads in steady state"
    );
    let failed: Vec<_> = log.iter().filter(|(.., r)| r.is_err()).collect();
    assert!(failed.is_empty(), "{} reads failed, e.g. {:?}", failed.len(), failed[0].2);
    let first = log
        .iter()
        .filter(|(started, _, r)| *started > frozen && r.is_ok())
        .map(|(_, ended, _)| *ended - frozen)
        .min()
        .expect("reads made after the freeze are answered");
    assert!(
        first <= Duration::from_millis(100),
        "first read answered {first:?} after the freeze"
    );
    eprintln!(
        "{mode:?}: {steady} reads, {hedges_before} hedged before the freeze; first read {first:?} \
         after it; {} hedges in all",
        metric("redis_guard_hedges_total", &pool, &[])
    );
}
}
