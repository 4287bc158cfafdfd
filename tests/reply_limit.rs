//! `max_reply_size`: nothing a server sends makes the client buffer without bound. A reply over
//! the limit fails its call with an error naming the limit, closes its connection, and leaves
//! the pool, the breaker and every other request as they were. Against a real redis-server,
//! and against a hostile one (a listener that answers like Redis, then forges an 8 GiB reply).
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use redis_guard::BreakerState;
use redis_guard::testkit::RedisServer;
use redis_guard::{PubSubEvent, Subscription};

const LIMIT: u64 = 1024 * 1024;

fn retries(pool: &str, result: &str) -> f64 {
    metric("redis_guard_retries_total", pool, &[("result", result)])
}

in_both_modes! {
/// Fault: a `GET` of a 2 MiB value with `max_reply_size` 1 MiB. Load: one caller, then a small
/// `GET` on the same pool. Asserts: the large `GET` fails with an error naming the limit
/// (answered `500` without `Retry-After`: it would be as large again), is not sent again
/// elsewhere, its connection is evicted as `reply_too_large` (not `io_error`, which would
/// suspect Redis), the breaker stays closed and the pool ready, and the next `GET` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_limit_fails_its_call_and_nothing_else(mode: PoolMode) {
    let pool = pool_name(mode, "reply_limit");
    let server = RedisServer::start().unwrap();
    let big = "x".repeat(2 * 1024 * 1024);
    let _: () = server.command(&["SET", "big", &big]).map(drop).unwrap();
    let _: () = server.command(&["SET", "small", "fine"]).map(drop).unwrap();
    let guard = guard(
        config_in(mode, &server.url(), "reply_limit")
            .max_size(max_size(mode, 2))
            .max_reply_size(LIMIT),
    )
    .await;
    // Served once, so a failure of the connection would make a read eligible for a retry.
    let mut conn = guard.get().await.unwrap();
    let _: Option<String> = conn.get("small").await.unwrap();
    let started = Instant::now();
    let error = conn.get::<_, String>("big").await.expect_err("over the limit");
    let took = started.elapsed();
    drop(conn);
    let text = error.to_string();
    assert!(
        text.contains("exceeds max_reply_size (1048576 bytes)"),
        "the error names the limit: {text}"
    );
    assert!(took < Duration::from_secs(1), "failed at once, took {took:?}");
    let response = axum::response::IntoResponse::into_response(redis_guard::Error::Redis(error));
    assert_eq!(response.status(), 500, "the reply's size, not an outage");
    assert!(
        response.headers().get("retry-after").is_none(),
        "the same reply is as large the next time"
    );
    assert_eq!(retries(&pool, "success") + retries(&pool, "failure"), 0.0, "not sent again");
    assert!(
        eventually(Duration::from_secs(2), || evictions(&pool, "reply_too_large") == 1.0).await,
        "evicted as reply_too_large"
    );
    assert_eq!(evictions(&pool, "io_error"), 0.0);
    let mut conn = guard.get().await.unwrap();
    let small: String = conn.get("small").await.unwrap();
    assert_eq!(small, "fine");
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    assert!(guard.is_ready());
}
}

/// Fault: a message of 2 MiB published to a subscription with `max_reply_size` 1 MiB. Asserts:
/// the subscription reports a gap whose cause names the limit, and the next small message
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_a_gap_that_names_the_limit() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "reply_limit-pubsub").max_reply_size(LIMIT)).await;
    let mut subscriber = guard
        .subscribe(Subscription::new().channel("news"))
        .await
        .unwrap();
    let big = "x".repeat(2 * 1024 * 1024);
    let _: () = server
        .command(&["PUBLISH", "news", &big])
        .map(drop)
        .unwrap();
    let gap = match tokio::time::timeout(Duration::from_secs(5), subscriber.next()).await {
        Ok(Some(PubSubEvent::Gap(gap))) => gap,
        other => panic!("a gap, not the message: {other:?}"),
    };
    assert!(
        gap.cause.contains("exceeds max_reply_size (1048576 bytes)"),
        "{}",
        gap.cause
    );
    // Published until the new subscription hears one (it may not be subscribed yet).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _: () = server
            .command(&["PUBLISH", "news", "small"])
            .map(drop)
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await {
            Ok(Some(PubSubEvent::Message(m))) => {
                assert_eq!(m.get_payload::<String>().unwrap(), "small");
                break;
            }
            Ok(other) => panic!("a message: {other:?}"),
            Err(_) => assert!(Instant::now() < deadline, "messages flow again"),
        }
    }
}

/// Bytes a hostile server may send at most in the test below.
const HOSTILE_CAP: u64 = 1024 * 1024 * 1024;

/// A server that answers a client's set-up like Redis, then answers `GET` with a bulk header of
/// 8 GiB and writes data until the client goes, [`HOSTILE_CAP`] bytes or 5 s. Returns its port
/// and the bytes of forged data it could write.
fn hostile_server() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = Arc::new(AtomicU64::new(0));
    let counted = written.clone();
    std::thread::spawn(move || {
        // Each connection on its own thread: the pool opens a few.
        for stream in listener.incoming().take(16) {
            let Ok(stream) = stream else { return };
            let counted = counted.clone();
            std::thread::spawn(move || answer_like_redis(stream, &counted));
        }
    });
    (port, written)
}

fn answer_like_redis(mut stream: std::net::TcpStream, written: &AtomicU64) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        // Commands arrive as arrays of bulk strings: answer by the first word of each whole one.
        while let Some((command, used)) = first_word(&pending) {
            pending.drain(..used);
            let reply: &[u8] = match command.to_ascii_uppercase().as_slice() {
                b"PING" => b"+PONG\r\n",
                b"ROLE" => b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n",
                b"COMMAND" => b"*0\r\n",
                b"GET" => {
                    forge_huge_reply(&mut stream, written);
                    return;
                }
                _ => b"+OK\r\n",
            };
            if stream.write_all(reply).is_err() {
                return;
            }
        }
    }
}

fn forge_huge_reply(stream: &mut std::net::TcpStream, written: &AtomicU64) {
    if stream.write_all(b"$8589934592\r\n").is_err() {
        return;
    }
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    while written.load(Ordering::Relaxed) < HOSTILE_CAP
        && started.elapsed() < Duration::from_secs(5)
    {
        match stream.write(&chunk) {
            Ok(n) => {
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => return,
        }
    }
}

/// The first word of the first whole command in `bytes`, and the bytes the command takes.
fn first_word(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        Some((&bytes[at..at + end], at + end + 2))
    };
    let (header, mut at) = line(0)?;
    let count: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut word = None;
    for _ in 0..count {
        let (len, next) = line(at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if bytes.len() < next + len + 2 {
            return None;
        }
        word.get_or_insert_with(|| bytes[next..next + len].to_vec());
        at = next + len + 2;
    }
    Some((word?, at))
}

/// Fault: a hostile server answers `GET` with a forged bulk header of 8 GiB and streams data
/// behind it. The caller's response timeout is 5 s, so without a bound the client would read
/// and buffer what comes for 5 s. Asserts: the call fails at once (well within the timeout)
/// with the error naming the limit, and the server could write only what socket buffers hold
/// before the client closed the connection (under 64 MiB, against the 1 GiB it offers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_huge_reply_is_refused_at_its_header() {
    let (port, written) = hostile_server();
    let url = format!("redis://127.0.0.1:{port}");
    let guard = guard(
        config(&url, "reply_limit-hostile")
            .max_reply_size(LIMIT)
            .response_timeout(Duration::from_secs(5))
            .hedge_reads(false),
    )
    .await;
    let mut conn = guard.get().await.unwrap();
    let started = Instant::now();
    let error = conn.get::<_, String>("key").await.expect_err("forged");
    let took = started.elapsed();
    // Let the server's writes run into the closed socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = written.load(Ordering::Relaxed);
    assert!(
        sent < 64 * 1024 * 1024,
        "the client stopped reading: the server could write {sent} bytes (the call took {took:?})"
    );
    assert!(
        took < Duration::from_secs(1),
        "failed at once, took {took:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("reply of at least 8589934607 bytes exceeds max_reply_size (1048576 bytes)"),
        "{text}"
    );
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
}

/// Fault: shared mode, 12 `GET`s of a 2 MiB value (limit 1 MiB) among 8 tasks of small
/// `INCR`s and `GET`s over the same shared connections. Asserts: the large `GET`s fail; no
/// small call is answered "reply too large" (`500`): redis-rs fails every call waiting on the
/// closed connection with the same error, and only the large reply's owner may say so. A
/// small call may fail as a connection failure (`503`, worth a retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_shared_mode_a_large_reply_is_not_blamed_on_its_neighbours() {
    let server = RedisServer::start().unwrap();
    let big = "x".repeat(2 * 1024 * 1024);
    let _: () = server.command(&["SET", "big", &big]).map(drop).unwrap();
    let guard = guard(
        config_in(
            redis_guard::PoolMode::Shared,
            &server.url(),
            "reply_limit_neighbours",
        )
        .max_reply_size(LIMIT),
    )
    .await;
    let small: Vec<_> = (0..8)
        .map(|task| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let mut blamed = Vec::new();
                for call in 0..60 {
                    let result: Result<(), redis_guard::Error> = async {
                        let mut conn = guard.get().await?;
                        if call % 2 == 0 {
                            let _: i64 = conn.incr(format!("n{task}"), 1).await?;
                        } else {
                            let _: Option<i64> = conn.get(format!("n{task}")).await?;
                        }
                        Ok(())
                    }
                    .await;
                    if let Err(e) = result
                        && e.status() == 500
                    {
                        blamed.push(e.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                blamed
            })
        })
        .collect();
    let mut large_failed = 0;
    for _ in 0..12 {
        let mut conn = guard.get().await.unwrap();
        if conn.get::<_, String>("big").await.is_err() {
            large_failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut blamed = Vec::new();
    for task in small {
        blamed.extend(task.await.unwrap());
    }
    assert_eq!(large_failed, 12, "every large reply refused");
    assert!(
        blamed.is_empty(),
        "{} small calls blamed: {:?}",
        blamed.len(),
        blamed.first()
    );
}
