//! Secrets never shown, causes always named, every input answered: credentials in every URL
//! form redis-rs accepts never appear in any log line at any level, `Debug`, error, health
//! output or metric; a missing password and a least-privilege ACL user are each handled and
//! named; the health endpoints treat their query and headers as untrusted input.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::RedisServer;
use redis_guard::{Config, Error, Health, RedisGuard, UnavailableReason};

const PASSWORD: &str = "correct-horse-battery";
const WRONG: &str = "wrong-staple-guess";

/// Everything every test in this binary logs, at TRACE, from every target.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static CAPTURE: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let sink = buffer.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || Capture(sink.clone()))
                .init();
            buffer
        })
        .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned()
}

fn assert_no_secret(place: &str, text: &str) {
    for secret in [PASSWORD, WRONG] {
        assert!(!text.contains(secret), "{place} shows a password: {text}");
    }
}

/// What a user sees of a pool: its `Debug`, an error from it, `/readyz` in both formats, and
/// the metrics.
async fn everything_shown(guard: &RedisGuard) -> Vec<(String, String)> {
    let app = Health::new()
        .require(guard.clone())
        .show_details(true)
        .router();
    let verbose = call(&app, "/readyz?verbose").await.body;
    let json = call_with(
        &app,
        Request::get("/readyz")
            .header("accept", "application/health+json")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .body;
    let error = match guard.get().await {
        Ok(_) => String::new(),
        Err(e) => format!("{e} / {e:?}"),
    };
    vec![
        ("Debug".into(), format!("{guard:?} {:?}", guard.config())),
        ("error".into(), error),
        ("/readyz?verbose".into(), verbose),
        ("health+json".into(), json),
        ("/metrics".into(), metrics().render()),
    ]
}

/// Fault: none, then a wrong password. Load: pools over a unix socket with the password in
/// the query (`?pass=`, the only form redis-rs takes there) and over TCP in the user info, a
/// few commands each. Asserts: no password in any log line at TRACE, nor in `Debug`, errors,
/// `/readyz` (text and JSON) or `/metrics`; the good pool works, the bad one names its cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_form_is_ever_shown() {
    captured_logs();
    let socket_dir = tempfile_dir();
    let socket = socket_dir.join("redis.sock");
    let socket_arg = socket.to_str().unwrap().to_owned();
    let server = RedisServer::start_with_args(&[
        "--requirepass",
        PASSWORD,
        "--unixsocket",
        &socket_arg,
        "--unixsocketperm",
        "700",
    ])
    .unwrap();
    let urls = [
        (
            "unix_ok",
            format!("redis+unix://{socket_arg}?pass={PASSWORD}"),
        ),
        (
            "unix_bad",
            format!("redis+unix://{socket_arg}?pass={WRONG}"),
        ),
        (
            "tcp_ok",
            format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port()),
        ),
        (
            "tcp_bad",
            format!("redis://default:{WRONG}@127.0.0.1:{}", server.port()),
        ),
    ];
    for (name, url) in &urls {
        let builder = config(url, name);
        assert_no_secret("ConfigBuilder Debug", &format!("{builder:?}"));
        let guard = unready_guard(builder).await;
        if name.ends_with("_ok") {
            assert!(eventually(Duration::from_secs(3), || guard.is_ready()).await);
            let mut conn = guard.get().await.unwrap();
            let _: () = conn.set("k", "v").await.unwrap();
        } else {
            let failed = eventually(Duration::from_secs(3), || {
                metric(
                    "redis_guard_connect_errors_total",
                    name,
                    &[("kind", "auth")],
                ) >= 1.0
            });
            assert!(failed.await, "{name}: the wrong password is an auth error");
        }
        for (place, text) in everything_shown(&guard).await {
            assert_no_secret(&format!("{name}: {place}"), &text);
        }
    }
    let logs = logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the capture works"
    );
    assert!(logs.contains("redis pool created"), "the capture works");
    assert_no_secret("the logs", &logs);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redis-guard-secrets-{}-{}",
        std::process::id(),
        unique_value()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fault: Redis requires a password and the URL has none. Load: one `get()`. Asserts: within
/// 2 s a connect error of kind `auth` is counted, the error and `/readyz?verbose` name
/// `NOAUTH`, and the WARN line appears once, not once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_is_named_and_counted() {
    captured_logs();
    let server = RedisServer::start_with_args(&["--requirepass", PASSWORD]).unwrap();
    let guard = unready_guard(config(&server.url(), "no_password")).await;
    let counted = eventually(Duration::from_secs(2), || {
        metric(
            "redis_guard_connect_errors_total",
            "no_password",
            &[("kind", "auth")],
        ) >= 1.0
    });
    assert!(counted.await, "a NOAUTH connect counted as auth");
    let err = guard.get().await.unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let app = Health::new()
        .require(guard.clone())
        .show_details(true)
        .router();
    let verbose = call(&app, "/readyz?verbose").await;
    assert_eq!(verbose.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(verbose.body.contains("NOAUTH"), "{}", verbose.body);
    // A second of attempts at the reconnect pace, one WARN for the unchanged cause.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = metric("redis_guard_connect_errors_total", "no_password", &[]);
    let warnings = logs()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no_password") && l.contains("connect failed"))
        .count();
    assert!(attempts >= 3.0, "{attempts} attempts");
    assert_eq!(
        warnings, 1,
        "one WARN for {attempts} attempts with the same cause"
    );
}

/// Fault: none; a least-privilege ACL user may `GET` and `SET` but not `PING`, `CLIENT` or
/// `COMMAND`. Load: a few commands. Asserts: the pool becomes ready and serves them (a PING
/// refused by the ACL still proves the connection), with no connect error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_ping_permission_is_served() {
    captured_logs();
    let server = RedisServer::start().unwrap();
    let _: () = server
        .command(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">app-secret",
            "~*",
            "-@all",
            "+get",
            "+set",
        ])
        .map(drop)
        .unwrap();
    let url = format!("redis://app:app-secret@127.0.0.1:{}", server.port());
    let guard = unready_guard(config(&url, "acl_app").validation_bypass(Duration::ZERO)).await;
    assert!(
        eventually(Duration::from_secs(2), || guard.is_ready()).await,
        "ready though PING is forbidden: {:?}",
        guard.shared_error()
    );
    for i in 0..5 {
        let mut conn = guard.get().await.unwrap();
        let _: () = conn.set("k", i).await.unwrap();
        let n: i64 = conn.get("k").await.unwrap();
        assert_eq!(n, i);
    }
    assert_eq!(
        metric("redis_guard_connect_errors_total", "acl_app", &[]),
        0.0
    );
}

/// Small helper trait for the assertion message above.
trait SharedError {
    fn shared_error(&self) -> Option<String>;
}

impl SharedError for RedisGuard {
    fn shared_error(&self) -> Option<String> {
        match self.refusal() {
            Some(Error::Unavailable { reason, .. }) => Some(reason.to_string()),
            _ => None,
        }
    }
}

/// Fault: none; hostile health queries and headers. Asserts: `?exclude=` values are never
/// repeated (CR/LF, markup) and unknown names are reported as not matching; every answer has
/// `nosniff`; `Accept` is read as media ranges (q=0 declines JSON, case does not matter);
/// `/readyz/{check}` honours it and does not echo an unknown name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_treat_their_input_as_untrusted() {
    captured_logs();
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "http_inputs")).await;
    let app = Health::new().require(guard.clone()).router();

    let hostile = call(
        &app,
        "/readyz?verbose&exclude=%0D%0AX-Injected:%201&exclude=%3Cscript%3Ealert(1)%3C/script%3E",
    )
    .await;
    assert_eq!(hostile.status, StatusCode::OK);
    assert!(!hostile.body.contains("<script>"), "{}", hostile.body);
    assert!(!hostile.body.contains("X-Injected"), "{}", hostile.body);
    assert!(
        hostile.body.contains("no matches for 2 name(s)"),
        "{}",
        hostile.body
    );
    let excluded = call(&app, "/readyz?verbose&exclude=redis:http_inputs").await;
    assert!(excluded.body.contains("[+]redis:http_inputs excluded: ok"));

    let response = |accept: &'static str, uri: &'static str| {
        let app = app.clone();
        async move {
            use tower::ServiceExt;
            app.oneshot(
                Request::get(uri)
                    .header("accept", accept)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
        }
    };
    for (accept, uri, json) in [
        ("application/health+json;q=0, text/plain", "/readyz", false),
        ("APPLICATION/HEALTH+JSON", "/readyz", true),
        ("text/html, application/health+json;q=0.5", "/readyz", true),
        ("application/health+json", "/readyz/redis:http_inputs", true),
        ("text/plain", "/readyz/redis:http_inputs", false),
    ] {
        let r = response(accept, uri).await;
        assert_eq!(
            r.headers()["x-content-type-options"],
            "nosniff",
            "{accept} {uri}"
        );
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(
            content_type == "application/health+json",
            json,
            "{accept} {uri}: {content_type}"
        );
    }
    let unknown = call(&app, "/readyz/%3Cscript%3E").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(!unknown.body.contains("script"), "{}", unknown.body);
}

/// Fault: none. Asserts: a URL that would carry a password redis-rs ignores, or a user with
/// no password, is refused at `build()` with a message saying how to write it, never
/// repeating the password.
#[test]
fn urls_that_would_lose_a_credential_are_refused() {
    for (url, expected) in [
        (
            format!("redis://127.0.0.1/?password={PASSWORD}"),
            "credentials in the query (password=) are ignored",
        ),
        (
            "redis://ro@127.0.0.1".to_owned(),
            "a user name without a password",
        ),
    ] {
        let err = Config::builder(url).build().unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
        assert_no_secret("the error", &err);
    }
    // The reason is something to match on, not only text.
    let reason = UnavailableReason::CannotConnect {
        cause: "NOAUTH".into(),
    };
    assert_eq!(reason.to_string(), "cannot connect: NOAUTH");
}

/// Fault: none; an application bug reads a string key as a number. Asserts: the answer is 500
/// without `Retry-After` (retrying cannot help), the log names a type error and never the
/// stored value, nor does the error's `Display` or `Debug` (a service logs `%e`), and the
/// connection stays in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_read_is_the_applications_500_and_logs_no_value() {
    captured_logs();
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "wrong_type")).await;
    let stored = "StoredTok-4f1c9e";
    let _: () = guard
        .get()
        .await
        .unwrap()
        .set("token", stored)
        .await
        .unwrap();
    let before = guard.state().connections;
    // Past the log throttle of other tests' failures in this binary.
    let mut last = None;
    for _ in 0..3 {
        let read: Result<i64, Error> = async {
            let mut conn = guard.get().await?;
            Ok(conn.get::<_, i64>("token").await?)
        }
        .await;
        let error = read.unwrap_err();
        assert!(!error.is_infrastructure(), "{error:?}");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains(stored), "{shown}");
            assert!(shown.contains("type error"), "{shown}");
        }
        last = Some(error);
    }
    let response = axum::response::IntoResponse::into_response(last.unwrap());
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(guard.state().connections, before, "nothing evicted");
    let logs = logs();
    assert!(!logs.contains(stored), "the stored value reached the log");
}

/// Fault: none; a service starts two pools with one name. Asserts: the second is refused,
/// naming the fix, and the name is free again once the first pool is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_pools_with_one_name_are_refused() {
    let server = RedisServer::start().unwrap();
    let first = guard(config(&server.url(), "one_name")).await;
    let second = RedisGuard::connect(config(&server.url(), "one_name").build().unwrap()).await;
    let error = second
        .expect_err("a second pool named one_name")
        .to_string();
    assert!(
        error.contains("a live pool is already named \"one_name\""),
        "{error}"
    );
    first.close(Duration::from_secs(1)).await;
    let again = RedisGuard::connect(config(&server.url(), "one_name").build().unwrap()).await;
    assert!(again.is_ok(), "the name is free after close");
}

/// A failing check's details as a client sees them: `?verbose`, `/readyz/{check}` and
/// `health+json`, from a health router built by `health`.
async fn failing_health_answers(health: Health, pool: &str) -> Vec<(String, String)> {
    let app = health.router();
    let verbose = call(&app, "/readyz?verbose").await;
    assert_eq!(verbose.status, StatusCode::SERVICE_UNAVAILABLE);
    let one = call(&app, &format!("/readyz/redis:{pool}")).await;
    assert_eq!(one.status, StatusCode::SERVICE_UNAVAILABLE);
    let json = call_with(
        &app,
        Request::get("/readyz")
            .header("accept", "application/health+json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    vec![
        ("/readyz?verbose".into(), verbose.body),
        (format!("/readyz/redis:{pool}"), one.body),
        ("health+json".into(), json.body),
    ]
}

/// Fault: nothing listens where the pool's sentinel should be (its connect error names the
/// sentinel's address), and a custom check fails with text naming a database host, with a
/// newline and an ANSI escape. Asserts: by default `?verbose` says only which checks failed
/// (`reason withheld`), `/readyz/{check}` gives the check's name, `health+json` the status of
/// each check and nothing else; with `show_details(true)` the causes are shown on one line
/// each, with every address replaced and no escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_details_are_withheld_by_default_and_never_name_an_address() {
    captured_logs();
    let nothing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nothing.local_addr().unwrap().port();
    drop(nothing);
    let pool = "health_details";
    let guard = unready_guard(config(
        &format!("redis+sentinel://127.0.0.1:{port}/mymaster"),
        pool,
    ))
    .await;
    // A checkout waits for an attempt, whose failure the health check then reports.
    let error = guard.get().await.unwrap_err();
    assert!(error.to_string().contains("cannot be reached"), "{error}");
    let database_check = || async {
        Err::<(), String>(
            "cannot reach db.internal.example:5432 (10.1.2.3)\n\u{1b}[31mINJECTED".to_owned(),
        )
    };
    let checks = Health::new().require(guard.clone()).check(
        "postgres",
        Duration::from_millis(100),
        database_check,
    );
    // The custom check runs in the background once routed: wait for its first result.
    let _started: axum::Router = checks.clone().router();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = || checks.clone();

    let public = failing_health_answers(health(), pool).await;
    eprintln!("without details: {public:#?}");
    let [(_, verbose), (_, one), (_, json)] = &public[..] else {
        unreachable!()
    };
    assert!(
        verbose.contains(&format!("[-]redis:{pool} failed: reason withheld\n"))
            && verbose.contains("[-]postgres failed: reason withheld\n"),
        "{verbose}"
    );
    assert_eq!(one, &format!("[-]redis:{pool} failed"));
    let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
    for check in [format!("redis:{pool}"), "postgres".to_owned()] {
        assert_eq!(
            parsed["checks"][&check],
            serde_json::json!([{ "status": "fail" }]),
            "{json}"
        );
    }
    for (place, shown) in &public {
        for detail in ["cannot", "refused", "breaker", "INJECTED", "5432"] {
            assert!(!shown.contains(detail), "{place} shows {detail:?}: {shown}");
        }
    }

    let internal = failing_health_answers(health().show_details(true), pool).await;
    eprintln!("with details: {internal:#?}");
    let [(_, verbose), (_, one), (_, json)] = &internal[..] else {
        unreachable!()
    };
    assert!(
        verbose.contains("[-]postgres failed: cannot reach <address> (<address>) INJECTED\n"),
        "{verbose}"
    );
    assert!(verbose.contains("cannot be reached"), "{verbose}");
    assert!(one.contains("cannot be reached"), "{one}");
    assert!(json.contains("<address>"), "{json}");
    for (place, shown) in &internal {
        for address in [
            "127.0.0.1",
            &port.to_string(),
            "10.1.2.3",
            "db.internal",
            "\u{1b}",
        ] {
            assert!(
                !shown.contains(address),
                "{place} shows {address:?}: {shown}"
            );
        }
    }
}

/// Fault: none. Asserts: every response the crate writes itself, a problem+json refusal of
/// the extractor and of an `Error`, health in both formats and `/metrics`, carries
/// `X-Content-Type-Options: nosniff`, and its text types name `charset=utf-8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_of_the_crate_forbids_sniffing() {
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    captured_logs();
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "nosniff")).await;
    let without_layer: axum::Router = axum::Router::new().route(
        "/needs-redis",
        axum::routing::get(|_redis: redis_guard::Redis| async { "unreachable" }),
    );
    let app = without_layer
        .merge(Health::new().require(guard.clone()).router())
        .merge(metrics().router());
    let mut responses = Vec::new();
    for (uri, accept) in [
        ("/needs-redis", "*/*"),
        ("/readyz?verbose", "text/plain"),
        ("/readyz", "application/health+json"),
        ("/livez", "text/plain"),
        ("/metrics", "text/plain"),
    ] {
        let response = app
            .clone()
            .oneshot(
                Request::get(uri)
                    .header("accept", accept)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        responses.push((uri.to_owned(), response));
    }
    let command_failed = Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Client,
        "WRONGTYPE",
    )));
    responses.push((
        "Error::into_response".into(),
        command_failed.into_response(),
    ));
    for (place, response) in &responses {
        let headers = response.headers();
        let content_type = headers["content-type"].to_str().unwrap();
        eprintln!("{place}: {} {content_type}", response.status());
        assert_eq!(
            headers
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{place}"
        );
        if content_type.starts_with("text/") {
            assert!(
                content_type.ends_with("charset=utf-8"),
                "{place}: {content_type}"
            );
        }
    }
    assert_eq!(
        responses[0].1.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        responses[4].1.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
}
