//! When Redis is away: F5 zombies, F6 down at start-up, F7 down under load, F10 slow Redis,
//! and the health endpoints. Each test states its fault, its load and what it asserts.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use common::*;
use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
use redis_guard::{BreakerState, Redis, RedisGuardLayer};

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    values.sort();
    values[((values.len() - 1) as f64 * p) as usize]
}

in_both_modes! {
/// F5: the network forgets idle flows (NAT, firewall): pooled sockets go silent with no FIN or
/// RST. Load: 200 requests at concurrency 8. Asserts: none fails, none waits longer than
/// validation + response timeout, the first success comes well under a second, zombies are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_frozen_connections_are_evicted_without_failing_or_hanging_requests(mode: PoolMode) {
    let pool = pool_name(mode, "f5");
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let bypass = Duration::from_millis(100);
    let guard = guard(config_in(mode, &proxy.url(), "f5").validation_bypass(bypass)).await;
    let app = service(guard.clone());
    let warm = drive_echo(&app, 200, 8).await;
    assert!(failures(&warm).is_empty());
    let pooled = guard.state().connections;
    // The flows sit idle, then the middlebox forgets them.
    tokio::time::sleep(bypass * 2).await;
    assert_eq!(proxy.freeze_all().await, pooled as usize);

    let started = Instant::now();
    let outcomes = drive_echo(&app, 200, 8).await;
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    let config = guard.config();
    let bound = config.validation_timeout() + config.response_timeout();
    let worst = outcomes.iter().map(|o| o.elapsed).max().unwrap();
    assert!(worst < bound, "worst request took {worst:?}");
    let first_done = outcomes.iter().map(|o| o.elapsed).min().unwrap();
    assert!(
        first_done < Duration::from_millis(500),
        "first success after {first_done:?}"
    );
    assert!(
        evictions(&pool, "validation_failed") >= 1.0,
        "zombies were counted"
    );
    assert_eq!(
        guard.breaker_state(),
        BreakerState::Closed,
        "zombies are not an outage"
    );
    eprintln!(
        "F5: {pooled} frozen, worst {worst:?}, fastest {first_done:?}, whole run {:?}, evicted {}",
        started.elapsed(),
        evictions(&pool, "validation_failed")
    );
}
}

in_both_modes! {
/// F6: Redis is down when the service starts. Asserts: the router serves at once, /livez 200,
/// /readyz 503, dependent routes 503 with Retry-After without waiting; once Redis starts,
/// ready and serving within 2 s, with no error after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_redis_down_at_start_up_refuses_fast_and_recovers_by_itself(mode: PoolMode) {
    let mut server = RedisServer::start().unwrap();
    server.stop();
    let guard = unready_guard(config_in(mode, &server.url(), "f6")).await;
    let app = service(guard.clone());

    assert_eq!(call(&app, "/livez").await.status, StatusCode::OK);
    let ready = call(&app, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "readyz check failed")
    );

    let mut refusals = Vec::new();
    for _ in 0..200 {
        let outcome = call(&app, &format!("/echo?value={}", unique_value())).await;
        assert_eq!(outcome.status, StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = outcome.retry_after.as_deref().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
        assert!(
            outcome.body.contains("\"title\":\"Redis unavailable\""),
            "{}",
            outcome.body
        );
        refusals.push(outcome.elapsed);
    }
    let p50 = percentile(refusals.clone(), 0.5);
    assert!(p50 < Duration::from_millis(1), "refusal p50 {p50:?}");

    let restarted = Instant::now();
    server.start_again().unwrap();
    let recovered = eventually(Duration::from_secs(2), || guard.is_ready()).await;
    let recovery = restarted.elapsed();
    assert!(recovered, "ready within 2 s of redis starting");
    assert_eq!(call(&app, "/readyz").await.status, StatusCode::OK);
    let after = drive_echo(&app, 200, 8).await;
    assert!(
        failures(&after).is_empty(),
        "{:?}",
        failures(&after).first()
    );
    eprintln!(
        "F6: refusal p50 {p50:?} max {:?}; ready {recovery:?} after redis started",
        refusals.iter().max().unwrap()
    );
}
}

in_both_modes! {
/// F7: Redis stops for 3 s under load (concurrency 32). Asserts: no request waits longer than
/// the checkout budget, refusals are immediate once the breaker is open, connect attempts
/// during the outage stay around the prober's pace (not one per request), and service is back
/// within 2 s of Redis returning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_outage_under_load_fails_fast_with_bounded_reconnects_and_recovers(mode: PoolMode) {
    let pool = pool_name(mode, "f7");
    let mut server = RedisServer::start().unwrap();
    let guard = guard(config_in(mode, &server.url(), "f7").max_size(max_size(mode, 16))).await;
    let app = service(guard.clone());

    let running = Arc::new(AtomicBool::new(true));
    let test_started = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (app, running) = (app.clone(), running.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                while running.load(Ordering::Relaxed) && log.len() < 200_000 {
                    let at = Instant::now();
                    let outcome = call(&app, &format!("/echo?value={}", unique_value())).await;
                    log.push((at, outcome));
                    // A refusal completes without awaiting anything; a real client would wait
                    // on its socket. Yield so 32 clients cannot starve the runtime.
                    tokio::task::yield_now().await;
                }
                log
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors_before = metric("redis_guard_connect_errors_total", &pool, &[]);
    let stopped = Instant::now();
    tokio::task::block_in_place(|| server.stop());
    let opened = eventually(Duration::from_secs(2), || {
        guard.breaker_state() == BreakerState::Open
    })
    .await;
    assert!(opened, "the breaker opened");
    let opened_at = Instant::now();
    // Checkouts already queued in bb8 when Redis died each start one connect (at most
    // max_size, all refused within milliseconds); count from after that burst.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let errors_at_open = metric("redis_guard_connect_errors_total", &pool, &[]);
    let open_counted_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;
    let outage = stopped.elapsed();
    let errors_at_end = metric("redis_guard_connect_errors_total", &pool, &[]);
    let connect_attempts = errors_at_end - errors_before;
    // While open only the prober connects: jittered backoff from 100 ms to 1 s.
    let while_open = errors_at_end - errors_at_open;
    let open_for = open_counted_from.elapsed();
    let restarted = Instant::now();
    tokio::task::block_in_place(|| server.start_again()).unwrap();
    let recovered = eventually(Duration::from_secs(2), || guard.is_ready()).await;
    let recovery = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.unwrap());
    }

    assert!(
        recovered,
        "ready within 2 s of redis returning ({recovery:?})"
    );
    let budget = guard.config().checkout_timeout();
    let worst = log.iter().map(|(_, o)| o.elapsed).max().unwrap();
    assert!(
        worst < budget + Duration::from_millis(250),
        "worst request {worst:?}"
    );
    let refusals: Vec<Duration> = log
        .iter()
        .filter(|(at, _)| *at > opened_at && *at < restarted)
        .map(|(_, o)| {
            assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE);
            o.elapsed
        })
        .collect();
    assert!(
        refusals.len() > 100,
        "{} requests while open",
        refusals.len()
    );
    let refusal_p99 = percentile(refusals.clone(), 0.99);
    assert!(
        refusal_p99 < Duration::from_millis(20),
        "refusal p99 {refusal_p99:?}"
    );
    let per_second = while_open / open_for.as_secs_f64();
    // Plus the few connects a healthy pool runs at once, which all fail together when Redis
    // goes (after a failure, one at a time).
    assert!(
        connect_attempts <= 5.0 * outage.as_secs_f64() + 2.0 + 3.0,
        "{connect_attempts} connect attempts in {outage:?} for {} requests",
        refusals.len()
    );
    // One attempt at a time, at least the reconnect backoff (200 ms) apart: 5 a second.
    assert!(
        while_open <= 5.0 * open_for.as_secs_f64() + 1.0,
        "{while_open} connect attempts in {open_for:?} while open"
    );
    // Once recovered, requests succeed again.
    let after_recovery: Vec<_> = log
        .iter()
        .filter(|(at, _)| *at > restarted + recovery + Duration::from_millis(50))
        .collect();
    assert!(!after_recovery.is_empty());
    assert!(
        after_recovery
            .iter()
            .all(|(_, o)| o.status == StatusCode::OK)
    );
    let first_refusal = log
        .iter()
        .filter(|(at, o)| *at >= stopped && o.status == StatusCode::SERVICE_UNAVAILABLE)
        .map(|(at, o)| at.duration_since(stopped) + o.elapsed)
        .min();
    eprintln!(
        "F7: {} requests in {:?}; first 503 {:?} after the stop; refusal p99 {refusal_p99:?}; \
         {connect_attempts} connect attempts in the {outage:?} outage, {while_open} of them in \
         {open_for:?} while open ({per_second:.1}/s); worst {worst:?}; \
         ready {recovery:?} after redis returned",
        log.len(),
        test_started.elapsed(),
        first_refusal,
    );
}
}

in_both_modes! {
/// F10: a Redis slower than the response timeout (600 ms replies, 300 ms timeout). Asserts:
/// the response timeout fires, the connection is not reused; the fresh connect that verifies
/// Redis cannot finish its handshake and first PING within the connect timeout either, and
/// with nothing answering since the call was sent, that opens the breaker within one connect
/// timeout or two. The call's connection is handed out without a PING however long the
/// set-up took on a busy machine (a long `validation_bypass`): the subject is the call's
/// timeout, not the checkout's validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f10_slow_replies_time_out_poison_the_connection_and_trip_the_breaker(mode: PoolMode) {
    let pool = pool_name(mode, "f10");
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let response_timeout = Duration::from_millis(300);
    let guard = guard(
        config_in(mode, &proxy.url(), "f10")
            .max_size(max_size(mode, 2))
            .response_timeout(response_timeout)
            .connect_timeout(Duration::from_millis(500))
            .validation_bypass(Duration::from_secs(60))
            .probe_interval(Duration::from_secs(60)),
    )
    .await;
    let app = router(guard.clone());

    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(600)));
    let outcome = call(&app, "/echo?value=slow").await;
    assert_eq!(
        outcome.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        outcome.body
    );
    assert!(outcome.body.contains("timed out"), "{}", outcome.body);
    assert!(
        outcome.elapsed < response_timeout + Duration::from_millis(200),
        "{:?}",
        outcome.elapsed
    );
    assert_eq!(evictions(&pool, "io_error"), 1.0);
    assert_eq!(
        guard.state().connections,
        0,
        "the timed-out connection was not put back"
    );

    let opened = eventually(Duration::from_secs(2), || {
        guard.breaker_state() == BreakerState::Open
    })
    .await;
    assert!(opened, "the breaker opened on a failing connect");
    assert!(
        metric(
            "redis_guard_connect_errors_total",
            &pool,
            &[("kind", "timeout")]
        ) >= 1.0
    );
    assert!(
        metric(
            "redis_guard_breaker_transitions_total",
            &pool,
            &[("to", "open")]
        ) >= 1.0
    );
}
}

async fn debug_sleep(mut redis: Redis) -> StatusCode {
    match redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(2)
        .query_async::<()>(&mut redis)
        .await
    {
        Ok(()) => StatusCode::OK,
        Err(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn wrong_type(mut redis: Redis) -> StatusCode {
    let _: () = redis::cmd("SET")
        .arg("a-string")
        .arg("x")
        .query_async(&mut redis)
        .await
        .unwrap();
    match redis::cmd("LPUSH")
        .arg("a-string")
        .arg("y")
        .query_async::<()>(&mut redis)
        .await
    {
        Err(e) if e.code() == Some("WRONGTYPE") => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    }
}

in_both_modes! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f10_debug_sleep_hits_the_response_timeout_and_error_replies_never_trip_the_breaker(mode: PoolMode) {
    let pool = pool_name(mode, "f10_debug");
    let server = RedisServer::start_with_args(&["--enable-debug-command", "yes"]).unwrap();
    let guard = guard(
        config_in(mode, &server.url(), "f10_debug")
            .response_timeout(Duration::from_millis(300))
            .probe_interval(Duration::from_secs(60)),
    )
    .await;
    let app: Router = Router::new()
        .route("/sleep", get(debug_sleep))
        .route("/wrongtype", get(wrong_type))
        .layer(RedisGuardLayer::new(guard.clone()));

    let started = Instant::now();
    assert_eq!(
        call(&app, "/sleep").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(started.elapsed() < Duration::from_millis(600));
    assert_eq!(evictions(&pool, "io_error"), 1.0);

    // Redis is still asleep for a moment: answering nothing for over a connect timeout, it
    // may open the breaker. Once it answers again, the pool serves again.
    assert!(eventually(Duration::from_secs(5), || server.command(&["PING"]).is_ok()).await);
    assert!(eventually(Duration::from_secs(3), || guard.is_ready()).await);
    for _ in 0..50 {
        assert_eq!(call(&app, "/wrongtype").await.status, StatusCode::CONFLICT);
    }
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    assert_eq!(
        evictions(&pool, "io_error"),
        1.0,
        "error replies evict nothing"
    );
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flood_sends_no_traffic_to_redis() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "flood")).await;
    let app = service(guard);
    let commands = || -> u64 {
        let redis::Value::BulkString(info) = server.command(&["INFO", "stats"]).unwrap() else {
            panic!("INFO answers a bulk string")
        };
        String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = commands();
    let started = Instant::now();
    for _ in 0..2_000 {
        assert_eq!(call(&app, "/readyz").await.status, StatusCode::OK);
    }
    let elapsed = started.elapsed();
    // Our own INFO connections (handshake + INFO) and the prober's PINGs: one per second.
    let during = commands() - before;
    let allowed = 10 + 2 * elapsed.as_secs();
    assert!(
        during <= allowed,
        "{during} commands during 2,000 /readyz in {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_kubernetes_and_ietf_conventions() {
    let up = RedisServer::start().unwrap();
    let mut down = RedisServer::start().unwrap();
    down.stop();
    let sessions = guard(config(&up.url(), "sessions")).await;
    let cache = unready_guard(config(&down.url(), "cache")).await;
    let required_down = unready_guard(config(&down.url(), "queue")).await;
    // Five refused connects open each breaker (about a second at the reconnect pace).
    for pool in [&cache, &required_down] {
        let opened = eventually(Duration::from_secs(3), || {
            pool.breaker_state() == BreakerState::Open
        })
        .await;
        assert!(opened, "{} opened", pool.name());
    }

    let optional_only: Router = redis_guard::Health::new()
        .require(sessions.clone())
        .optional(cache.clone())
        .show_details(true)
        .router();
    let verbose = call(&optional_only, "/readyz?verbose").await;
    assert_eq!(
        verbose.status,
        StatusCode::OK,
        "an optional pool does not fail readiness"
    );
    assert_eq!(
        verbose.body,
        "[+]redis:sessions ok\n[+]redis:cache warn: unreachable: circuit breaker open; last connect error: Connection refused (os error 111) (optional)\nreadyz check passed\n"
    );
    let json = call_with(
        &optional_only,
        Request::get("/readyz")
            .header("accept", "application/health+json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(json.status, StatusCode::OK);
    let parsed: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(parsed["status"], "warn");
    assert_eq!(parsed["checks"]["redis:sessions"][0]["status"], "pass");
    assert_eq!(parsed["checks"]["redis:cache"][0]["status"], "warn");
    assert_eq!(parsed["checks"]["redis:cache"][0]["observedValue"], "open");

    let with_required: Router = redis_guard::Health::new()
        .require(sessions.clone())
        .require(required_down.clone())
        .router();
    let failing = call(&with_required, "/readyz?verbose").await;
    assert_eq!(failing.status, StatusCode::SERVICE_UNAVAILABLE);
    // Without details, as the public port would answer: which check, not why.
    assert!(
        failing
            .body
            .contains("[-]redis:queue failed: reason withheld\n"),
        "{}",
        failing.body
    );
    assert!(failing.body.ends_with("readyz check failed\n"));
    let excluded = call(&with_required, "/readyz?exclude=redis:queue").await;
    assert_eq!(
        (excluded.status, excluded.body.as_str()),
        (StatusCode::OK, "ok")
    );
    assert_eq!(
        call(&with_required, "/readyz/redis:sessions").await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&with_required, "/readyz/redis:queue").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(&with_required, "/readyz/redis:nope").await.status,
        StatusCode::NOT_FOUND
    );
    let live = call(&with_required, "/livez?verbose").await;
    assert_eq!(
        (live.status, live.body.as_str()),
        (StatusCode::OK, "[+]ping ok\nlivez check passed\n")
    );
    let fail_json = call_with(
        &with_required,
        Request::get("/readyz")
            .header("accept", "application/health+json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(fail_json.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(fail_json.body.contains("\"status\":\"fail\""));
    for body in [&verbose.body, &json.body, &failing.body, &fail_json.body] {
        assert!(
            !body.contains("127.0.0.1"),
            "health output names no hosts: {body}"
        );
    }
}

/// Fault: a server slow to answer (every reply held back 150 ms by the proxy), with a
/// response timeout of 100 ms and the default connect timeout of 1 s. Asserts: start-up in
/// `FailFast` mode connects (the handshake, the first PING and the set-up hook together are
/// the connect, judged by the connect timeout, not by one command's response timeout), no
/// connect error is counted, and the hook's commands ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slow_to_greet_connects_within_the_connect_timeout() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(150)));
    let pool = "slow_greeting";
    let builder = config(&proxy.url(), pool)
        .response_timeout(Duration::from_millis(100))
        .startup(redis_guard::StartupMode::FailFast)
        .on_connect(|conn| {
            Box::pin(async move {
                redis::cmd("SET")
                    .arg("greeted")
                    .arg("yes")
                    .query_async::<()>(conn)
                    .await
            })
        });
    let guard = redis_guard::RedisGuard::connect(builder.build().unwrap())
        .await
        .expect("a slow handshake within the connect timeout connects");
    assert!(guard.is_ready());
    assert_eq!(metric("redis_guard_connect_errors_total", pool, &[]), 0.0);
    assert!(matches!(
        server.command(&["GET", "greeted"]).unwrap(),
        redis::Value::BulkString(v) if v == b"yes"
    ));
}

/// Fault: Redis stopped under load (8 callers through the service for 3 s). Asserts: the log
/// gets one WARN summary of what the clients were refused (a count, the reasons, the last
/// connect error), not one line per request and not nothing; the next would come 10 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_leaves_a_summary_of_the_refusals_in_the_log() {
    let mut server = RedisServer::start().unwrap();
    let logs = capture_logs(async {
        let guard = guard(config(&server.url(), "refusal_log")).await;
        let app = service(guard);
        tokio::task::block_in_place(|| server.stop());
        let stop = Instant::now() + Duration::from_secs(3);
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move {
                    let mut refused = 0;
                    while Instant::now() < stop && refused < 100_000 {
                        if call(&app, "/echo?value=x").await.status != StatusCode::OK {
                            refused += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    refused
                })
            })
            .collect();
        let mut refused = 0;
        for caller in callers {
            refused += caller.await.unwrap();
        }
        assert!(refused > 100, "{refused} requests refused");
    })
    .await;
    let summaries: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("requests in the last"))
        .collect();
    assert_eq!(summaries.len(), 1, "one summary in 3 s: {summaries:#?}");
    let summary = summaries[0];
    // Within a second of the first refusal: before or after the breaker opened.
    assert!(
        summary.contains("breaker open (") || summary.contains("cannot connect ("),
        "{summary}"
    );
    assert!(summary.contains("last connect error: "), "{summary}");
    assert!(!summary.contains("last connect error: none"), "{summary}");
    let warnings = logs.lines().filter(|line| line.contains("WARN")).count();
    assert!(
        warnings <= 5,
        "no WARN line per refused request: {warnings}\n{logs}"
    );
}

/// Fault: Redis frozen (SIGSTOP: sockets accept, nothing answers) under load (8 callers
/// through the service). Asserts: the breaker is open within 2 s of the freeze (a connect and
/// the calls in use timed out with nothing answering: that is the evidence, not five connect
/// timeouts one by one); requests made after it opened are refused within 5 ms, every one
/// with the same problem title; once Redis resumes, the pool serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_opens_the_breaker_within_2s() {
    let mut server = RedisServer::start().unwrap();
    let pool = "frozen_trip";
    let guard = guard(config(&server.url(), pool)).await;
    let app = service(guard.clone());
    let running = Arc::new(AtomicBool::new(true));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (app, running) = (app.clone(), running.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                while running.load(Ordering::Relaxed) && log.len() < 100_000 {
                    let at = Instant::now();
                    log.push((at, call(&app, "/echo?value=x").await));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                log
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause();
    let frozen = Instant::now();
    let opened = eventually(Duration::from_secs(4), || {
        guard.breaker_state() == BreakerState::Open
    })
    .await;
    let open_after = frozen.elapsed();
    let opened_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    let mut log = Vec::new();
    for caller in callers {
        log.extend(caller.await.unwrap());
    }
    server.resume();
    assert!(opened, "the breaker opened");
    assert!(
        open_after <= Duration::from_secs(2),
        "open {open_after:?} after the freeze"
    );
    let refused: Vec<_> = log.iter().filter(|(at, _)| *at > opened_at).collect();
    assert!(refused.len() > 50, "{} requests while open", refused.len());
    let slow = refused
        .iter()
        .filter(|(_, o)| o.elapsed > Duration::from_millis(5))
        .count();
    assert!(
        slow * 100 <= refused.len(),
        "{slow} of {} refusals took over 5 ms",
        refused.len()
    );
    let titles: std::collections::BTreeSet<_> = refused
        .iter()
        .map(|(_, o)| {
            assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE);
            o.body.clone()
        })
        .collect();
    assert_eq!(titles.len(), 1, "one reason: {titles:?}");
    assert!(
        eventually(Duration::from_secs(5), || guard.is_ready()).await,
        "serves again once Redis resumes"
    );
    eprintln!(
        "frozen: breaker open {open_after:?} after the freeze; {} refusals, {slow} over 5 ms",
        refused.len()
    );
}
