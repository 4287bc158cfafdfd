//! Start-up modes against a real server, and passwords that never leak.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Error, RedisGuard, StartupMode};

const PASSWORD: &str = "correct-horse-battery";
const WRONG: &str = "wrong-staple-guess";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reaches_redis_but_no_error_log_or_metric() {
    let server = RedisServer::start_with_args(&["--requirepass", PASSWORD]).unwrap();
    let good = format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port());
    let guard = guard(config(&good, "secret_ok")).await;
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("k", "v").await.unwrap();
    assert!(!format!("{guard:?} {conn:?}").contains(PASSWORD));
    drop(conn);

    let bad = format!("redis://:{WRONG}@127.0.0.1:{}", server.port());
    let guard = unready_guard(config(&bad, "secret_bad")).await;
    let refused = eventually(Duration::from_secs(5), || {
        metric(
            "redis_guard_connect_errors_total",
            "secret_bad",
            &[("kind", "auth")],
        ) >= 1.0
    });
    assert!(
        refused.await,
        "the prober's connect was refused as an auth error"
    );
    let err = guard.get().await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Unavailable { .. }), "{message}");
    assert!(
        message.contains("Password authentication failed"),
        "{message}"
    );
    for text in [
        message,
        format!("{err:?}"),
        format!("{guard:?}"),
        metrics().render(),
    ] {
        assert!(
            !text.contains(WRONG) && !text.contains(PASSWORD),
            "leaked in {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_reports_an_unreachable_redis_at_once() {
    let mut server = RedisServer::start().unwrap();
    server.stop();
    let started = Instant::now();
    let err = RedisGuard::connect(
        config(&server.url(), "fail_fast")
            .startup(StartupMode::FailFast)
            .build()
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Unavailable { .. }));
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(
        metric(
            "redis_guard_connect_errors_total",
            "fail_fast",
            &[("kind", "refused")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_succeeds_once_redis_comes_up_and_gives_up_at_its_limit() {
    let mut server = RedisServer::start().unwrap();
    server.stop();
    let gives_up = RedisGuard::connect(
        config(&server.url(), "wait_for_gives_up")
            .startup(StartupMode::WaitFor(Duration::from_millis(500)))
            .build()
            .unwrap(),
    );
    let started = Instant::now();
    assert!(matches!(gives_up.await, Err(Error::Unavailable { .. })));
    let waited = started.elapsed();
    // It kept trying at the reconnect pace and gave up once no attempt could start in time:
    // within the limit plus a few milliseconds, never a whole connect timeout beyond it.
    assert!(waited < Duration::from_millis(550), "{waited:?}");
    let attempts = metric(
        "redis_guard_connect_errors_total",
        "wait_for_gives_up",
        &[("kind", "refused")],
    );
    assert!(attempts >= 2.0, "{attempts} attempts in {waited:?}");

    let url = server.url();
    let starter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        server.start_again().unwrap();
        server
    });
    let guard = RedisGuard::connect(
        config(&url, "wait_for_succeeds")
            .startup(StartupMode::WaitFor(Duration::from_secs(10)))
            .build()
            .unwrap(),
    )
    .await
    .expect("connected once redis started");
    let _server = starter.await.unwrap();
    assert!(guard.state().connections >= 1);
    let mut conn = guard.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_start_serves_at_once_and_connects_when_redis_appears() {
    let mut server = RedisServer::start().unwrap();
    server.stop();
    let started = Instant::now();
    let guard = unready_guard(config(&server.url(), "lazy").min_idle(1)).await;
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(!guard.is_ready());
    // Not refused by the breaker: it waited for a connect attempt, which failed.
    let err = guard.get().await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    server.start_again().unwrap();
    assert!(eventually(Duration::from_secs(3), || guard.is_ready()).await);
    let mut conn = guard.get().await.expect("connects once redis is up");
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_during_connect_counts_as_refused() {
    let server = RedisServer::start().unwrap();
    let proxy = redis_guard::testkit::FaultProxy::start(server.addr())
        .await
        .unwrap();
    proxy.set_mode(redis_guard::testkit::ProxyMode::Refuse);
    let err = RedisGuard::connect(
        config(&proxy.url(), "reset_at_connect")
            .startup(StartupMode::FailFast)
            .build()
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert_eq!(
        metric(
            "redis_guard_connect_errors_total",
            "reset_at_connect",
            &[("kind", "refused")]
        ),
        1.0
    );
}
