//! A service as users build it: two pools in one handler, handlers that read request bodies,
//! handlers that can do without Redis, and the wiring mistakes that used to be silent. Each
//! test states its setup and what it asserts.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Redis, RedisFrom, RedisGuard, RedisGuardLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
struct Cache(RedisGuard);
#[derive(Clone)]
struct Sessions(RedisGuard);

impl AsRef<RedisGuard> for Cache {
    fn as_ref(&self) -> &RedisGuard {
        &self.0
    }
}

impl AsRef<RedisGuard> for Sessions {
    fn as_ref(&self) -> &RedisGuard {
        &self.0
    }
}

#[derive(Clone, FromRef)]
struct AppState {
    cache: Cache,
    sessions: Sessions,
}

/// Setup: two servers, a pool on each, both in the router's state; one handler takes a
/// connection from each. Asserts: each write lands on its own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handler_uses_two_pools_chosen_by_type() {
    let (cache_server, sessions_server) =
        (RedisServer::start().unwrap(), RedisServer::start().unwrap());
    let state = AppState {
        cache: Cache(guard(config(&cache_server.url(), "app-cache")).await),
        sessions: Sessions(guard(config(&sessions_server.url(), "app-sessions")).await),
    };
    async fn both(
        mut cache: RedisFrom<Cache>,
        mut sessions: RedisFrom<Sessions>,
    ) -> Result<String, redis_guard::Error> {
        let _: () = cache.set("which", "cache").await?;
        let _: () = sessions.set("which", "sessions").await?;
        Ok("ok".to_owned())
    }
    let app = Router::new().route("/both", get(both)).with_state(state);
    let outcome = call(&app, "/both").await;
    assert_eq!(outcome.status, StatusCode::OK, "{}", outcome.body);
    let value = |server: &RedisServer| match server.command(&["GET", "which"]).unwrap() {
        redis::Value::BulkString(v) => String::from_utf8(v).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(value(&cache_server), "cache");
    assert_eq!(value(&sessions_server), "sessions");
}

/// Setup: two `RedisGuardLayer`s stacked on one route. Asserts: the handler gets the inner
/// layer's pool, and the mistake is reported (logged once), not silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_layers_are_reported() {
    let server = RedisServer::start().unwrap();
    let inner = unready_guard(config(&server.url(), "layer-inner")).await;
    let outer = unready_guard(config(&server.url(), "layer-outer")).await;
    let app = Router::new()
        .route(
            "/name",
            get(|guard: RedisGuard| async move { guard.name().to_owned() }),
        )
        .layer(RedisGuardLayer::new(inner))
        .layer(RedisGuardLayer::new(outer));
    let logs = common::capture_logs(async {
        for _ in 0..3 {
            assert_eq!(call(&app, "/name").await.body, "layer-inner");
        }
    })
    .await;
    let reports = logs.matches("two RedisGuardLayers on one route").count();
    assert_eq!(reports, 1, "reported once: {logs}");
    assert!(
        logs.contains("RedisFrom"),
        "says what to do instead: {logs}"
    );
}

/// Setup: a pool of 2; ten clients upload 1 KiB bodies a byte every 10 ms to a handler that
/// reads the body before it checks out (it takes `RedisGuard`). Asserts: meanwhile a
/// `Redis` handler is served at once; and the same uploads to a handler that takes `Redis`
/// itself do starve it (what the late checkout is for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_starve_a_handler_that_checks_out_late() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "late-checkout").max_size(2)).await;
    async fn late(guard: RedisGuard, body: String) -> Result<String, redis_guard::Error> {
        let mut conn = guard.get().await?;
        let n: i64 = conn.incr("uploads", body.len()).await?;
        Ok(n.to_string())
    }
    async fn early(mut redis: Redis, body: String) -> Result<String, redis_guard::Error> {
        let n: i64 = redis.incr("uploads", body.len()).await?;
        Ok(n.to_string())
    }
    async fn visits(mut redis: Redis) -> Result<String, redis_guard::Error> {
        let n: i64 = redis.incr("visits", 1).await?;
        Ok(n.to_string())
    }
    let app = Router::new()
        .route("/late", post(late))
        .route("/early", post(early))
        .route("/visits", get(visits))
        .layer(RedisGuardLayer::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    for (route, starves) in [("/late", false), ("/early", true)] {
        let uploads: Vec<_> = (0..10)
            .map(|_| tokio::spawn(slow_upload(addr, route, Duration::from_secs(3))))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let status = http_get(addr, "/visits").await;
        let took = started.elapsed();
        if starves {
            assert_eq!(status, 503, "{route}: every connection held by an upload");
        } else {
            assert_eq!(status, 200, "{route}");
            assert!(
                took < Duration::from_millis(500),
                "{route}: served in {took:?}"
            );
        }
        for upload in uploads {
            let _ = upload.await;
        }
    }
}

/// Setup: a handler taking `Option<Redis>`, and the pool's Redis stopped. Asserts: the
/// handler runs with `None` (it answers from elsewhere) instead of the request failing; with
/// Redis up it gets a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_connection_is_none_while_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "optional")).await;
    async fn cached(redis: Option<Redis>) -> &'static str {
        match redis {
            Some(_) => "from redis",
            None => "from the database",
        }
    }
    let app = Router::new()
        .route("/cached", get(cached))
        .layer(RedisGuardLayer::new(guard.clone()));
    assert_eq!(call(&app, "/cached").await.body, "from redis");
    server.stop();
    let outcome = call(&app, "/cached").await;
    assert_eq!(
        (outcome.status, outcome.body.as_str()),
        (StatusCode::OK, "from the database")
    );
    server.start_again().unwrap();
    assert!(eventually(Duration::from_secs(5), || guard.is_ready()).await);
    assert_eq!(call(&app, "/cached").await.body, "from redis");
}

/// Sends `POST route` with a 1 KiB body, a byte at a time over `over`.
async fn slow_upload(addr: std::net::SocketAddr, route: &str, over: Duration) {
    const LEN: usize = 100;
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let head = format!("POST {route} HTTP/1.1\r\nhost: x\r\ncontent-length: {LEN}\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for _ in 0..LEN {
        tokio::time::sleep(over / LEN as u32).await;
        if stream.write_all(b"x").await.is_err() {
            return;
        }
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
}

/// `GET route` over a new connection; the status code.
async fn http_get(addr: std::net::SocketAddr, route: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {route} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&reply)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap()
}

/// Setup: 16 tasks checking out a pool of 4, each holding its connection 20 ms between two
/// commands. `close(2 s)` after 300 ms. Asserts: it returns within the bound with every
/// connection back (0 in use); no request was cut mid-command (every failure is a refused
/// checkout, "closed"); later checkouts fail at once with that reason; the pool is not ready;
/// Redis lists none of its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_under_load_waits_for_requests_and_cuts_none() {
    use redis_guard::{Error, UnavailableReason};
    let server = RedisServer::start().unwrap();
    let pool = "closing";
    let guard = guard(config(&server.url(), pool).max_size(4)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let guard = guard.clone();
        tasks.spawn(async move {
            let (mut served, mut refused) = (0, 0);
            let key = format!("close:{task}");
            for _ in 0..1000 {
                let mut conn = match guard.get().await {
                    Ok(conn) => conn,
                    Err(Error::Unavailable {
                        reason: UnavailableReason::Closed,
                        ..
                    }) => {
                        refused += 1;
                        break;
                    }
                    Err(other) => panic!("checkout: {other}"),
                };
                let _: () = conn.set(&key, "v").await.expect("not cut mid-request");
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _: String = conn.get(&key).await.expect("not cut mid-request");
                served += 1;
            }
            (served, refused)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let in_use = guard.close(Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert_eq!(in_use, 0, "every connection came back");
    assert!(took < Duration::from_secs(2), "closed in {took:?}");
    let (mut served, mut refused) = (0, 0);
    while let Some(outcome) = tasks.join_next().await {
        let (s, r) = outcome.expect("no request failed mid-command");
        served += s;
        refused += r;
    }
    assert!(
        served > 0 && refused == 16,
        "{served} served, {refused} refused"
    );
    assert!(!guard.is_ready());
    let error = guard.get().await.expect_err("closed");
    assert!(error.to_string().contains("closed"), "{error}");
    let listed = eventually(Duration::from_secs(2), || {
        match server.command(&["CLIENT", "LIST"]) {
            Ok(redis::Value::BulkString(list)) => {
                !String::from_utf8_lossy(&list).contains(&format!("name={pool} "))
            }
            _ => false,
        }
    })
    .await;
    assert!(listed, "no connection of the pool left on Redis");
}

/// Setup: this test binary run again as a child that starts a `RedisServer` and waits; the
/// child is then killed with SIGKILL (no destructor runs). Asserts: its redis-server dies with
/// it (the port stops answering within 2 s): no orphan survives a test binary or demo that is
/// killed.
#[test]
fn a_testkit_server_dies_with_the_process_that_started_it() {
    const HOLDER: &str = "REDIS_GUARD_TEST_HOLDER";
    if std::env::var_os(HOLDER).is_some() {
        let server = RedisServer::start().unwrap();
        println!("port={}", server.port());
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    use std::io::BufRead;
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_testkit_server_dies_with_the_process_that_started_it",
            "--nocapture",
        ])
        .env(HOLDER, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(holder.stdout.take().unwrap());
    let port: u16 = stdout
        .lines()
        .map_while(Result::ok)
        .take(50)
        .find_map(|line| line.strip_prefix("port=").map(|p| p.parse().unwrap()))
        .expect("the holder started a server");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "the server runs"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "redis-server outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Setup: a Redis pool and a Postgres-like dependency (a TCP listener standing for the
/// database) checked every 100 ms by `Health::check`. Asserts: `/readyz` is 200 while both
/// answer; once the database stops, 503 within a second with the check named in `?verbose`,
/// while the Redis check still passes; the checks run in the background (a flood of probes
/// does not reach the database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_check_joins_readyz() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "with-postgres")).await;
    let database = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = database.local_addr().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let health = redis_guard::Health::new()
        .require(guard)
        .show_details(true)
        .check("postgres", Duration::from_millis(100), move || {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("cannot reach the database: {e}"))
            }
        });
    let app: Router = Router::new().merge(health.router());
    assert!(
        wait_for_status(&app, StatusCode::OK).await,
        "ready while both answer"
    );
    let before = runs.load(Ordering::Relaxed);
    for _ in 0..200 {
        call(&app, "/readyz").await;
    }
    assert!(
        runs.load(Ordering::Relaxed) - before < 10,
        "probes do not run the check"
    );
    drop(database);
    assert!(
        wait_for_status(&app, StatusCode::SERVICE_UNAVAILABLE).await,
        "503 once the database is gone"
    );
    let verbose = call(&app, "/readyz?verbose").await.body;
    assert!(
        verbose.contains("[-]postgres failed: cannot reach the database"),
        "{verbose}"
    );
    assert!(verbose.contains("[+]redis:with-postgres ok"), "{verbose}");
}

/// Polls `/readyz` until it answers `status`, for up to five seconds.
async fn wait_for_status(app: &Router, status: StatusCode) -> bool {
    // A bound, not a speed: a panicking check's run takes the panic hook's time too (a
    // backtrace printed in a debug build, on a busy machine, can take a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if call(app, "/readyz").await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Setup: a subscriber recording every span, and a handler-like sequence: `SET` with a key
/// and a value, a pipeline, a transaction. Asserts: one `redis.command` span per call with
/// OpenTelemetry's database fields (operation name, batch size, server address and port), and
/// no key or value in any span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_a_span_with_the_operation_and_never_a_key_or_value() {
    use std::sync::{Arc, Mutex};
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<String>>>);
    struct Fields<'a>(&'a mut String);
    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _id: &tracing::span::Id,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut line = attrs.metadata().name().to_owned();
            attrs.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "spans")).await;
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(spans.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    async {
        let mut conn = guard.get().await.unwrap();
        let _: () = conn
            .set("user:42:email", "someone@example.com")
            .await
            .unwrap();
        let _: (i64, i64) = redis::pipe()
            .incr("visits:secret-key", 1)
            .incr("visits:secret-key", 1)
            .query_async(&mut *conn)
            .await
            .unwrap();
        let _: (i64,) = redis::pipe()
            .atomic()
            .incr("visits:secret-key", 1)
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    .with_subscriber(scoped_dispatch(subscriber))
    .await;
    let recorded = spans.0.lock().unwrap().clone();
    let commands: Vec<&String> = recorded
        .iter()
        .filter(|s| s.starts_with("redis.command"))
        .collect();
    let port = format!("server.port={}", server.port());
    let expect = |operation: &str, batch: &str| {
        commands.iter().any(|s| {
            s.contains(&format!("db.operation.name={operation}"))
                && s.contains(batch)
                && s.contains("server.address=127.0.0.1")
                && s.contains(&port)
                && s.contains("db.system.name=\"redis\"")
        })
    };
    assert!(expect("SET", ""), "{commands:#?}");
    assert!(
        expect("PIPELINE", "db.operation.batch.size=2"),
        "{commands:#?}"
    );
    assert!(expect("MULTI", ""), "{commands:#?}");
    for span in &recorded {
        for secret in ["user:42", "someone@example.com", "secret-key"] {
            assert!(!span.contains(secret), "a span shows {secret}: {span}");
        }
    }
}

/// Setup: a custom check that panics on every run after its first. Asserts: the panic counts
/// as a failure (503, "the check panicked"), and the check keeps running: once it stops
/// panicking, readiness comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_check_fails_and_keeps_running() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let health = redis_guard::Health::new().show_details(true).check(
        "flaky",
        Duration::from_millis(100),
        move || {
            let run = counted.fetch_add(1, Ordering::Relaxed);
            async move {
                // Nine runs in a row, so the failure lasts long enough to be seen between
                // two looks however slowly the runs go.
                if (1..10).contains(&run) {
                    panic!("the check's own bug");
                }
                Ok(())
            }
        },
    );
    let app: Router = Router::new().merge(health.router());
    assert!(
        wait_for_status(&app, StatusCode::OK).await,
        "the first run passes"
    );
    assert!(
        wait_for_status(&app, StatusCode::SERVICE_UNAVAILABLE).await,
        "a panic fails it"
    );
    let verbose = call(&app, "/readyz?verbose").await.body;
    assert!(
        verbose.contains("[-]flaky failed: the check panicked"),
        "{verbose}"
    );
    assert!(
        wait_for_status(&app, StatusCode::OK).await,
        "it runs again and recovers"
    );
    assert!(runs.load(Ordering::Relaxed) >= 11);
}

/// Setup: every connection frozen at the proxy (accepted, never answered), a checkout waiting
/// on its connect, then `close(100 ms)`. Asserts: the waiting checkout fails at once as
/// closed, not after the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_a_checkout_that_waits_on_a_connect() {
    use redis_guard::testkit::{FaultProxy, ProxyMode};
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Freeze);
    let guard = unready_guard(config(&proxy.url(), "close-connecting")).await;
    let waiting = {
        let guard = guard.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (guard.get().await.map(drop), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    guard.close(Duration::from_millis(100)).await;
    let (result, waited) = waiting.await.unwrap();
    let error = result.expect_err("closed");
    assert!(error.to_string().contains("closed"), "{error}");
    assert!(
        waited < Duration::from_millis(600),
        "failed after {waited:?}"
    );
}

in_both_modes! {
/// Setup: a pool with idle connections kept (`min_idle(2)`) that served a load, closed while
/// its handles are still held; then a second pool that is never closed, only dropped.
/// Asserts: 1 s after `close()` no task of the pool is alive (prober, gauge sampler,
/// connection drivers, bb8's reaper), though handles remain; 1 s after the last handle of the
/// second pool drops, likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_closed_or_dropped_pool_runs(mode: PoolMode) {
    let server = RedisServer::start().unwrap();
    // The metrics recorder may start a task of its own in the runtime that installs it.
    metrics();
    let before = alive_tasks();
    let closed = guard(config_in(mode, &server.url(), "close_tasks").min_idle(2)).await;
    let outcomes = drive_echo(&router(closed.clone()), 200, 8).await;
    assert!(failures(&outcomes).is_empty());
    let held = closed.clone();
    closed.close(Duration::from_secs(1)).await;
    let quiet = eventually(Duration::from_secs(1), || alive_tasks() <= before).await;
    assert!(quiet, "{} tasks alive 1 s after close()", alive_tasks() - before);
    drop((closed, held));

    let dropped = guard(config_in(mode, &server.url(), "drop_tasks").min_idle(2)).await;
    let outcomes = drive_echo(&router(dropped.clone()), 200, 8).await;
    assert!(failures(&outcomes).is_empty());
    drop(dropped);
    let quiet = eventually(Duration::from_secs(1), || alive_tasks() <= before).await;
    assert!(quiet, "{} tasks alive 1 s after the last handle dropped", alive_tasks() - before);
}
}
