//! A sentinel is not trusted with everything: with `allowed_primaries` set, a primary the
//! sentinels name outside it is never connected to, so it never receives the nodes' password
//! or a command. Three `redis-server --sentinel` processes, a primary, a replica and, for the
//! rogue, another real `redis-server` that accepts the same password.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::{MASTER_NAME, RedisServer, SentinelDeployment, SentinelOptions};

const NODE_PASSWORD: &str = "node-secret-7c1";

fn options() -> SentinelOptions {
    SentinelOptions {
        redis_password: Some(NODE_PASSWORD.to_owned()),
        ..SentinelOptions::default()
    }
}

/// The deployment's URL, with the pool allowed to connect to `allowed` only.
fn url_allowing(deployment: &SentinelDeployment, allowed: &str) -> String {
    let url = deployment.url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}allowed_primaries={allowed}")
}

/// How many calls of each command that would show the pool reached a server: its password
/// (`AUTH`, `HELLO`), its name (`CLIENT SETNAME`) and the application's `INCR`, from
/// `INFO commandstats` (calls that ran; the sentinels' own, unauthenticated, are rejected).
/// This question's own `AUTH` is not counted.
fn pool_traffic(server: &RedisServer) -> Vec<(String, u64)> {
    let stats = match server.command_as(Some(NODE_PASSWORD), &["INFO", "commandstats"]) {
        Ok(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(redis::Value::VerbatimString { text, .. }) => text,
        other => panic!("INFO commandstats: {other:?}"),
    };
    let mut traffic = Vec::new();
    for line in stats.lines() {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let calls: u64 = fields
            .split(',')
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0);
        let ours = if name == "cmdstat_auth" { 1 } else { 0 };
        let watched = [
            "cmdstat_auth",
            "cmdstat_hello",
            "cmdstat_incr",
            "cmdstat_client|setname",
        ];
        if watched.contains(&name) && calls > ours {
            traffic.push((name.to_owned(), calls - ours));
        }
    }
    traffic
}

/// The clients connected to the node at `port` under the pool's name.
fn pool_clients(deployment: &SentinelDeployment, port: u16, pool: &str) -> usize {
    match deployment.node_command(port, &["CLIENT", "LIST"]) {
        Ok(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(&format!(" name={pool} ")))
            .count(),
        Ok(redis::Value::VerbatimString { text, .. }) => text
            .lines()
            .filter(|line| line.contains(&format!(" name={pool} ")))
            .count(),
        other => panic!("CLIENT LIST: {other:?}"),
    }
}

/// Fault: every sentinel is reconfigured (`SENTINEL REMOVE`, `SENTINEL MONITOR`) to name a
/// rogue redis-server, which accepts the nodes' password, before the pool starts; the pool
/// allows the real primary only. Asserts: the checkout fails as unavailable, naming the
/// allowlist; the rogue receives no `AUTH`, `HELLO`, `CLIENT SETNAME` or `INCR`; a WARN line
/// names the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_outside_the_allowlist_receives_no_password_and_no_command() {
    let mut deployment = SentinelDeployment::start(options()).unwrap();
    let primary = deployment.primary_port().unwrap();
    let rogue = RedisServer::start_with_args(&["--requirepass", NODE_PASSWORD]).unwrap();
    let rogue_port = rogue.port().to_string();
    for sentinel in deployment.sentinels().iter() {
        sentinel
            .command(&["SENTINEL", "REMOVE", MASTER_NAME])
            .unwrap();
        sentinel
            .command(&[
                "SENTINEL",
                "MONITOR",
                MASTER_NAME,
                "127.0.0.1",
                &rogue_port,
                "2",
            ])
            .unwrap();
    }
    let pool = "sentinel-allowlist-start";
    let url = url_allowing(&deployment, &format!("127.0.0.1:{primary}"));
    let logs = capture_logs(async {
        let guard =
            unready_guard(config(&url, pool).checkout_timeout(Duration::from_secs(1))).await;
        let outcome = async {
            let mut conn = guard.get().await?;
            let n: i64 = conn.incr("rogue", 1).await?;
            Ok::<_, redis_guard::Error>(n)
        }
        .await;
        let error = outcome.expect_err("no primary the pool may connect to");
        eprintln!("checkout: {error}");
        assert!(error.is_infrastructure(), "{error}");
        assert!(error.to_string().contains("allow_primaries"), "{error}");
        guard.close(Duration::from_secs(1)).await;
    })
    .await;
    let traffic = pool_traffic(&rogue);
    eprintln!("rogue commandstats: {traffic:?}");
    assert!(traffic.is_empty(), "the rogue was reached: {traffic:?}");
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("outside allow_primaries")),
        "the refusal is logged at WARN"
    );
}

/// Fault: a real `SENTINEL FAILOVER` to the replica, which the allowlist (the primary's
/// exact address) does not hold. Load: writes before and for 3 s after the announcement.
/// Asserts: the pool never opens a connection to the replica (no client of the pool's name
/// there), and keeps its primary, whose writes keep succeeding until Sentinel demotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_node_outside_the_allowlist_is_not_followed() {
    let deployment = SentinelDeployment::start(options()).unwrap();
    let primary = deployment.primary_port().unwrap();
    let pool = "sentinel-allowlist-failover";
    let url = url_allowing(&deployment, &format!("127.0.0.1:{primary}"));
    let guard = guard(config(&url, pool)).await;
    let mut conn = guard.get().await.unwrap();
    let _: i64 = conn.incr("before", 1).await.unwrap();
    drop(conn);
    deployment.failover().unwrap();
    let moved = eventually(Duration::from_secs(10), || {
        deployment.primary_port().is_ok_and(|port| port != primary)
    })
    .await;
    assert!(moved, "the sentinels promoted the replica");
    let promoted = deployment.primary_port().unwrap();
    // Let the announcement and the polls that follow it reach the pool, with traffic.
    let stop = std::time::Instant::now() + Duration::from_secs(3);
    let (mut ok, mut failed) = (0, 0);
    while std::time::Instant::now() < stop {
        match guard.get().await {
            Ok(mut conn) => match conn.incr::<_, _, i64>("after", 1).await {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            },
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_promoted = pool_clients(&deployment, promoted, pool);
    let on_primary = pool_clients(&deployment, primary, pool);
    eprintln!(
        "after the failover: {ok} writes ok, {failed} failed; the pool's connections: {on_primary} \
         on the allowed node, {on_promoted} on the promoted one"
    );
    assert_eq!(
        on_promoted, 0,
        "the pool connected to a primary outside the allowlist"
    );
    assert!(
        metric("redis_guard_primary_switches_total", pool, &[]) == 0.0,
        "the pool did not move"
    );
}
