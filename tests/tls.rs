//! TLS (`rediss://`) against a real redis-server with certificates made at test time: the
//! faults of plain TCP, mutual TLS, and each handshake failure named. Each test states its
//! fault, its load and what it asserts.
#![cfg(all(feature = "testkit", feature = "prometheus", feature = "tls"))]

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use redis_guard::config::TlsSettings;
use redis_guard::testkit::{FaultProxy, RedisServer, TestCertificates};
use redis_guard::{BreakerState, RedisGuard};

fn trusting(certs: &TestCertificates) -> TlsSettings {
    TlsSettings {
        ca_file: Some(certs.ca()),
        ..TlsSettings::default()
    }
}

fn tls_errors(pool: &str) -> f64 {
    metric("redis_guard_connect_errors_total", pool, &[("kind", "tls")])
}

/// 200 reads at concurrency 8, as a handler would make them. Reads: over TLS Redis may close a
/// killed connection a moment after it answers the `CLIENT KILL`, so a connection can be
/// handed out just before its close arrives; a read that meets it is retried on a fresh
/// connection, a write would fail (see the README on retries).
async fn assert_serves(guard: &RedisGuard, what: &str) {
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..25 {
                    let read: Result<Option<String>, String> = async {
                        let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                        conn.get("k").await.map_err(|e| e.to_string())
                    }
                    .await;
                    if let Err(e) = read {
                        failed.push(e);
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for worker in workers {
        failed.extend(worker.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{what}: {} of 200 failed, first: {:?}; retries ok {} failed {}; {}",
        failed.len(),
        failed.first(),
        metric(
            "redis_guard_retries_total",
            guard.name(),
            &[("result", "ok")]
        ),
        metric(
            "redis_guard_retries_total",
            guard.name(),
            &[("result", "failed")]
        ),
        guard.state()
    );
}

/// Faults F1-F5 over TLS: restart, `CLIENT KILL`, server `timeout`, RST through a proxy, and
/// sockets frozen by the proxy. Load: 200 reads at concurrency 8 after each. Asserts: no read
/// fails, as on plain TCP, and the breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faults_of_plain_tcp_fail_no_request_over_tls() {
    let certs = TestCertificates::generate(&["localhost", "127.0.0.1"]).unwrap();
    let mut server = RedisServer::start_tls(&certs, false, &[]).unwrap();
    let proxy = FaultProxy::start(server.tls_addr()).await.unwrap();
    let url = format!("rediss://127.0.0.1:{}", proxy.addr().port());
    let bypass = Duration::from_millis(100);
    let guard = guard(
        config(&url, "tls_faults")
            .tls(trusting(&certs))
            .validation_bypass(bypass),
    )
    .await;
    assert_serves(&guard, "warm").await;

    tokio::task::block_in_place(|| server.restart()).unwrap();
    assert_serves(&guard, "F1 restart").await;
    let _ = server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert_serves(&guard, "F2 CLIENT KILL").await;
    let _ = server.command(&["CONFIG", "SET", "timeout", "1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_serves(&guard, "F3 server timeout").await;
    let _ = server.command(&["CONFIG", "SET", "timeout", "0"]).unwrap();
    assert!(proxy.reset_all().await > 0);
    assert_serves(&guard, "F4 reset").await;
    tokio::time::sleep(bypass * 2).await;
    assert!(proxy.freeze_all().await > 0);
    assert_serves(&guard, "F5 frozen").await;
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    assert_eq!(tls_errors("tls_faults"), 0.0);
}

/// Fault: the server requires client certificates. Load: one command. Asserts: without a
/// client certificate every connect fails as `kind="tls"` with a message that says a client
/// certificate may be needed; with one, the pool serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_and_uses_a_client_certificate() {
    let certs = TestCertificates::generate(&["localhost"]).unwrap();
    let server = RedisServer::start_tls(&certs, true, &[]).unwrap();

    let anonymous =
        unready_guard(config(&server.tls_url(), "mtls_none").tls(trusting(&certs))).await;
    let err = anonymous.get().await.unwrap_err().to_string();
    assert!(err.contains("client certificate"), "{err}");
    assert!(tls_errors("mtls_none") >= 1.0);

    let settings = TlsSettings {
        client_cert: Some(certs.client()),
        ..trusting(&certs)
    };
    let authenticated = guard(config(&server.tls_url(), "mtls_cert").tls(settings)).await;
    let mut conn = authenticated.get().await.unwrap();
    let _: () = conn.set("k", "v").await.unwrap();
    let value: String = conn.get("k").await.unwrap();
    assert_eq!(value, "v");
}

/// Fault: the pool trusts another CA, then connects by a name the certificate does not list.
/// Load: one `get()` each. Asserts: each handshake failure is counted as `kind="tls"` and named
/// in the error (unknown issuer; not valid for this host name); `#insecure` connects anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_are_named() {
    let certs = TestCertificates::generate(&["redis.example"]).unwrap();
    let server = RedisServer::start_tls(&certs, false, &[]).unwrap();
    let by_ip = format!("rediss://127.0.0.1:{}", server.tls_addr().port());

    let wrong_ca = unready_guard(config(&by_ip, "tls_wrong_ca").tls(TlsSettings {
        ca_file: Some(certs.other_ca()),
        ..TlsSettings::default()
    }))
    .await;
    let err = wrong_ca.get().await.unwrap_err().to_string();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(tls_errors("tls_wrong_ca") >= 1.0);

    let wrong_name = unready_guard(config(&by_ip, "tls_wrong_name").tls(trusting(&certs))).await;
    let err = wrong_name.get().await.unwrap_err().to_string();
    assert!(err.contains("not valid for this host name"), "{err}");
    assert!(tls_errors("tls_wrong_name") >= 1.0);

    // The certificate lists a DNS name only: naming it connects by IP with verification on.
    let by_name = guard(config(&by_ip, "tls_server_name").tls(TlsSettings {
        server_name: Some("redis.example".into()),
        ..trusting(&certs)
    }))
    .await;
    let pong: String = redis::cmd("PING")
        .query_async(&mut by_name.get().await.unwrap())
        .await
        .unwrap();
    assert_eq!(pong, "PONG");

    // `#insecure` alone is refused; with its own setting it connects, and says so loudly.
    let refused = config(&format!("{by_ip}#insecure"), "tls_fragment_only")
        .build()
        .unwrap_err()
        .to_string();
    assert!(refused.contains("#insecure alone"), "{refused}");
    let insecure_config = config(&by_ip, "tls_insecure")
        .tls(TlsSettings {
            insecure: true,
            ..TlsSettings::default()
        })
        .build()
        .unwrap();
    assert!(insecure_config.redacted_url().ends_with("#insecure"));
    let logs = capture_logs(async {
        let insecure = RedisGuard::connect(insecure_config).await.unwrap();
        let mut conn = insecure.get().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    })
    .await;
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("TLS certificate verification is off")),
        "{logs}"
    );
}

/// Fault: none. Asserts: no key material appears in `Debug` or errors, and a missing CA file
/// is refused at `build()` naming the file.
#[test]
fn tls_settings_show_no_key_material_and_bad_files_fail_at_build() {
    let certs = TestCertificates::generate(&["localhost"]).unwrap();
    let config = redis_guard::Config::builder("rediss://localhost:6380")
        .tls(TlsSettings {
            client_cert: Some(certs.client()),
            ..trusting(&certs)
        })
        .build()
        .unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("BEGIN"),
        "{shown}"
    );
    assert!(config.uses_tls());

    let missing = redis_guard::Config::builder("rediss://localhost:6380")
        .tls(TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read the CA certificate file /nonexistent/ca.pem"),
        "{missing}"
    );
}

/// Fault: `rediss://` pointed at a plain Redis port (which reads the TLS greeting as the start
/// of an inline command and waits for its end), and `redis://` at a TLS port (which resets
/// the connection). Asserts: each connect fails at once (well within a 5 s connect timeout)
/// with an error that names the likely mistake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_of_the_other_kind_is_named() {
    let certs = TestCertificates::generate(&["localhost"]).unwrap();
    let server = RedisServer::start_tls(&certs, false, &[]).unwrap();
    let plain_port = format!("rediss://localhost:{}", server.addr().port());
    let guard = unready_guard(
        config(&plain_port, "tls_on_plain_port")
            .tls(trusting(&certs))
            .connect_timeout(Duration::from_secs(5))
            .checkout_timeout(Duration::from_secs(6)),
    )
    .await;
    let started = std::time::Instant::now();
    let err = guard.get().await.unwrap_err().to_string();
    assert!(
        err.contains("speaks Redis without TLS on this port") && err.contains("use redis://"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The other way round: a TLS port resets a plain client at its first bytes.
    let tls_port = format!("redis://localhost:{}", server.tls_addr().port());
    let guard = unready_guard(config(&tls_port, "plain_on_tls_port")).await;
    let started = std::time::Instant::now();
    let err = guard.get().await.unwrap_err().to_string();
    assert!(
        err.contains("if this port serves TLS, use rediss://"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// A port that serves both: a TLS greeting (first byte 0x16) goes to `tls` after `delay`,
/// anything else straight to `plain`. Like a protocol-sniffing proxy in front of a Redis
/// moving to TLS. Serves until the test ends.
async fn dual_port(
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    delay: Duration,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0; 4096];
                let Ok(read) = client.read(&mut first).await else {
                    return;
                };
                let target = if first.first() == Some(&0x16) {
                    tokio::time::sleep(delay).await;
                    tls
                } else {
                    plain
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                if server.write_all(&first[..read]).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// Fault: `rediss://` to a port that answers plain Redis too, and whose TLS handshake takes
/// 400 ms (the point at which the pool asks the port in plain text has passed). Asserts: the
/// pool connects over TLS and serves: answering in plain text does not make a port plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_serving_both_is_not_taken_for_plain_redis() {
    let certs = TestCertificates::generate(&["localhost"]).unwrap();
    let server = RedisServer::start_tls(&certs, false, &[]).unwrap();
    let both = dual_port(server.addr(), server.tls_addr(), Duration::from_millis(400)).await;
    let guard = unready_guard(
        config(
            &format!("rediss://localhost:{}", both.port()),
            "tls_dual_port",
        )
        .tls(trusting(&certs))
        .connect_timeout(Duration::from_secs(3))
        .checkout_timeout(Duration::from_secs(4)),
    )
    .await;
    let mut conn = guard.get().await.expect("connected over TLS");
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
}
