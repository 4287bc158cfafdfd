//! F14 under Sentinel: three `redis-server --sentinel` processes, a primary and a
//! replica, all real. A pool built on a `redis+sentinel://` URL must find the primary through
//! the sentinels, follow a failover within 100 ms of its announcement, and never let the
//! demoted primary acknowledge a write after that: Sentinel turns it into a replica only
//! seconds later, and every write it acknowledged meanwhile is lost.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use redis_guard::testkit::{MASTER_NAME, SentinelDeployment, SentinelOptions};
use redis_guard::{Config, PoolMode, RedisGuard, StartupMode};

/// Writers and readers each, as the measurements.
const CONCURRENCY: usize = 16;
/// How late after the announcement the old primary may still acknowledge, and the new one
/// may first acknowledge.
const FOLLOW_WITHIN: Duration = Duration::from_millis(100);

/// `INCR counter` through the pool, with the port of the node that acknowledged it (asked in
/// the same pipeline): the new value and the port.
async fn incr(guard: &RedisGuard) -> Result<(i64, u16), String> {
    let mut conn = guard.get().await.map_err(|e| e.to_string())?;
    let (value, (_, port)): (i64, (String, String)) = redis::pipe()
        .cmd("INCR")
        .arg("counter")
        .cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok((value, port.parse().map_err(|_| "port")?))
}

/// One acknowledged INCR: when, by which node, and the value it returned.
#[derive(Debug, Clone, Copy)]
struct Ack {
    at: Instant,
    port: u16,
    value: i64,
}

#[derive(Debug, Default)]
struct Load {
    acks: Vec<Ack>,
    failed_writes: Vec<(Instant, String)>,
    reads: usize,
    failed_reads: Vec<(Instant, String)>,
}

/// INCRs (each with the port of the node that acknowledged it, in the same pipeline) and
/// GETs at `CONCURRENCY` each, until `stop`.
async fn run_load(guard: &RedisGuard, stop: Instant) -> Load {
    let load = Arc::new(Mutex::new(Load::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (writer, written) = (guard.clone(), load.clone());
        tasks.spawn(async move {
            let (guard, load) = (writer, written);
            while Instant::now() < stop {
                let acked = incr(&guard).await;
                let failed = acked.is_err();
                match acked {
                    Ok((value, port)) => load.lock().unwrap().acks.push(Ack {
                        at: Instant::now(),
                        port,
                        value,
                    }),
                    Err(e) => load.lock().unwrap().failed_writes.push((Instant::now(), e)),
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let (guard, load) = (guard.clone(), load.clone());
        tasks.spawn(async move {
            while Instant::now() < stop {
                let read: Result<Option<i64>, String> = async {
                    let mut conn = guard.get().await.map_err(|e| e.to_string())?;
                    conn.get("counter").await.map_err(|e| e.to_string())
                }
                .await;
                let failed = read.is_err();
                {
                    let mut load = load.lock().unwrap();
                    load.reads += 1;
                    if let Err(e) = read {
                        load.failed_reads.push((Instant::now(), e));
                    }
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(load).unwrap().into_inner().unwrap()
}

fn sentinel_config(url: &str, pool: &str) -> redis_guard::ConfigBuilder {
    config(url, pool).max_size(2 * CONCURRENCY as u32)
}

/// What a failover run came to, for the assertions and the note.
struct Run {
    load: Load,
    announced: Instant,
    old_port: u16,
    new_port: u16,
    final_counter: i64,
}

impl Run {
    fn report(&self, name: &str) {
        let first_new = self.acks_on(self.new_port).map(|a| a.at).min();
        let last_old = self.acks_on(self.old_port).map(|a| a.at).max();
        eprintln!(
            "{name}: {} writes acked, {} failed; {} reads, {} failed; first write on the new \
             primary {:?} after the announcement; last write acked by the old primary {:?} \
             after it; final counter {}",
            self.load.acks.len(),
            self.load.failed_writes.len(),
            self.load.reads,
            self.load.failed_reads.len(),
            first_new.map(|at| signed(at, self.announced)),
            last_old.map(|at| signed(at, self.announced)),
            self.final_counter,
        );
        for (at, e) in self.load.failed_writes.iter().take(3) {
            eprintln!("  failed write {:?}: {e}", signed(*at, self.announced));
        }
    }

    fn acks_on(&self, port: u16) -> impl Iterator<Item = &Ack> {
        self.load.acks.iter().filter(move |a| a.port == port)
    }

    /// The new primary acknowledged its first write within [`FOLLOW_WITHIN`] of the
    /// announcement, and the old one none later than that.
    fn assert_followed_in_time(&self) {
        let first_new = self
            .acks_on(self.new_port)
            .map(|a| a.at)
            .min()
            .expect("writes reached the new primary");
        assert!(
            first_new <= self.announced + FOLLOW_WITHIN,
            "first write on the new primary {:?} after the announcement",
            signed(first_new, self.announced)
        );
        let late: Vec<_> = self
            .acks_on(self.old_port)
            .filter(|a| a.at > self.announced + FOLLOW_WITHIN)
            .collect();
        assert!(
            late.is_empty(),
            "{} writes acknowledged by the demoted primary more than {FOLLOW_WITHIN:?} after \
             the announcement, the last {:?} after",
            late.len(),
            late.last().map(|a| signed(a.at, self.announced))
        );
    }

    /// The INCRs the old primary acknowledged after the new one's counter began: each is
    /// lost (the new primary's values start where replication left off).
    fn lost_writes(&self) -> Vec<&Ack> {
        let base = self
            .acks_on(self.new_port)
            .map(|a| a.value)
            .min()
            .expect("writes on the new primary")
            - 1;
        self.acks_on(self.old_port)
            .filter(|a| a.value > base)
            .collect()
    }

    /// Every INCR acknowledged by the new primary is in its counter once: the counter grew by
    /// exactly those, plus writes whose outcome is unknown (they failed, but may have run).
    fn assert_no_write_applied_twice(&self) {
        let on_new: Vec<i64> = self.acks_on(self.new_port).map(|a| a.value).collect();
        let base = on_new.iter().min().expect("writes on the new primary") - 1;
        let grown = self.final_counter - base;
        let acked = on_new.len() as i64;
        let unknown = self
            .load
            .failed_writes
            .iter()
            // As heard by the pool, the announcement may come a moment earlier.
            .filter(|(at, _)| *at + FOLLOW_WITHIN >= self.announced)
            .count() as i64;
        assert!(
            grown >= acked && grown <= acked + unknown,
            "the new primary's counter grew by {grown}, for {acked} acknowledged INCRs and \
             {unknown} failed ones"
        );
    }
}

fn signed(at: Instant, reference: Instant) -> String {
    match at.checked_duration_since(reference) {
        Some(after) => format!("+{after:?}"),
        None => format!("-{:?}", reference - at),
    }
}

/// Runs the load across `fault`, and reads the outcome once the announcement was seen.
async fn failover_under_load<F: FnOnce(&mut SentinelDeployment)>(
    deployment: &mut SentinelDeployment,
    pool: &str,
    fault: F,
) -> Run {
    failover_under_load_in(PoolMode::Exclusive, deployment, pool, fault).await
}

/// [`failover_under_load`] with a pool in `mode`.
async fn failover_under_load_in<F: FnOnce(&mut SentinelDeployment)>(
    mode: PoolMode,
    deployment: &mut SentinelDeployment,
    pool: &str,
    fault: F,
) -> Run {
    let guard = common::guard(sentinel_config(&deployment.url(), pool).mode(mode)).await;
    let old_port = deployment.primary_port().unwrap();
    let announcements = deployment.watch_announcements().await.unwrap();
    let load = {
        let guard = guard.clone();
        tokio::spawn(async move { run_load(&guard, Instant::now() + Duration::from_secs(8)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    fault(deployment);
    let load = load.await.unwrap();
    let announced = announcements
        .first()
        .expect("a sentinel announced the failover");
    let new_port = deployment.primary_port().unwrap();
    assert_ne!(new_port, old_port, "the primary moved");
    let final_counter: i64 = match deployment
        .node_command(new_port, &["GET", "counter"])
        .unwrap()
    {
        redis::Value::BulkString(v) => String::from_utf8(v).unwrap().parse().unwrap(),
        other => panic!("counter: {other:?}"),
    };
    Run {
        load,
        announced,
        old_port,
        new_port,
        final_counter,
    }
}

/// Fault: `SENTINEL FAILOVER` while 16 writers and 16 readers run; the old primary stays up
/// and keeps accepting writes until Sentinel demotes it, seconds later.
/// Asserts: no read fails; writes fail only at the announcement (those in flight to the old
/// primary are cut there, rather than acknowledged by it and lost), a few at most; the first
/// write lands on the new primary within 100 ms of the announcement and the old primary
/// acknowledges none after that; no INCR is applied twice; the pool counts the switch and
/// evicts the old primary's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_is_followed_within_100ms_without_a_failed_read() {
    let mut deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let pool = "f14s-forced";
    let run = tokio::time::timeout(
        TEST_DEADLINE,
        failover_under_load(&mut deployment, pool, |d| d.failover().unwrap()),
    )
    .await
    .expect("bounded");
    run.report("forced failover");
    assert!(
        run.load.failed_reads.is_empty(),
        "failed reads: {:?}",
        &run.load.failed_reads[..run.load.failed_reads.len().min(3)]
    );
    let outside: Vec<_> = run
        .load
        .failed_writes
        .iter()
        // The pool may hear the announcement a moment before the test's own subscriber.
        .filter(|(at, _)| {
            at.saturating_duration_since(run.announced) > FOLLOW_WITHIN
                || run.announced.saturating_duration_since(*at) > FOLLOW_WITHIN
        })
        .collect();
    assert!(
        outside.is_empty(),
        "writes failed away from the announcement: {outside:?}"
    );
    assert!(
        run.load.failed_writes.len() <= CONCURRENCY,
        "at most the writes in flight fail: {}",
        run.load.failed_writes.len()
    );
    run.assert_followed_in_time();
    run.assert_no_write_applied_twice();
    assert_eq!(metric("redis_guard_primary_switches_total", pool, &[]), 1.0);
    assert!(evictions(pool, "role_change") >= 1.0);
}

in_both_modes! {
/// Fault: `SENTINEL FAILOVER` under 16 writers and 16 readers, as above. Sentinel promotes the
/// replica about a second before it announces the switch, and the old primary acknowledges
/// writes all that time. Asserts: no acknowledged write is lost (none acknowledged by the old
/// primary after the new one's counter began), none applied twice, no read fails, and writes
/// are held, not failed: only those in flight at the switch may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_loses_no_acknowledged_write(mode: PoolMode) {
    let mut deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let pool = pool_name(mode, "f14s-no-loss");
    let run = tokio::time::timeout(
        TEST_DEADLINE,
        failover_under_load_in(mode, &mut deployment, &pool, |d| d.failover().unwrap()),
    )
    .await
    .expect("bounded");
    run.report("forced failover, writes held");
    let lost = run.lost_writes();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, the last {:?} after the announcement",
        lost.len(),
        lost.last().map(|a| signed(a.at, run.announced))
    );
    assert!(
        run.load.failed_reads.is_empty(),
        "failed reads: {:?}",
        &run.load.failed_reads[..run.load.failed_reads.len().min(3)]
    );
    assert!(
        run.load.failed_writes.len() <= CONCURRENCY,
        "writes are held, not failed: {} failed",
        run.load.failed_writes.len()
    );
    run.assert_followed_in_time();
    run.assert_no_write_applied_twice();
}
}

/// Fault: kill -9 of the primary (`down-after-milliseconds` 500) under the same load.
/// Asserts: requests fail only while Sentinel detects the failure (between the kill and the
/// announcement); the first write lands on the new primary within 100 ms of the
/// announcement; no INCR is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_within_100ms_of_the_announcement() {
    lost_primary_is_replaced("f14s-kill", "kill -9", |node| node.kill()).await;
}

/// Fault: the primary frozen (SIGSTOP: its sockets accept and never answer) under the same
/// load, until Sentinel fails over. Connect attempts to it are in flight when the
/// announcement comes, and must not hold up the move. Asserts as for kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_replaced_within_100ms_of_the_announcement() {
    lost_primary_is_replaced("f14s-frozen", "SIGSTOP", |node| node.pause()).await;
}

/// Loses the primary to `fault` under load and checks the pool follows Sentinel's failover.
async fn lost_primary_is_replaced(
    pool: &str,
    name: &str,
    fault: fn(&mut redis_guard::testkit::RedisServer),
) {
    let mut deployment = SentinelDeployment::start(SentinelOptions {
        down_after: Duration::from_millis(500),
        ..SentinelOptions::default()
    })
    .unwrap();
    let lost_at = Arc::new(Mutex::new(None));
    let lost = lost_at.clone();
    let run = tokio::time::timeout(
        TEST_DEADLINE,
        failover_under_load(&mut deployment, pool, move |d| {
            let old = d.primary_port().unwrap();
            let node = d.node_at(old).unwrap();
            *lost.lock().unwrap() = Some(Instant::now());
            fault(node);
        }),
    )
    .await
    .expect("bounded");
    run.report(name);
    let lost_at = lost_at.lock().unwrap().unwrap();
    let outside: Vec<_> = run
        .load
        .failed_writes
        .iter()
        .chain(&run.load.failed_reads)
        .filter(|(at, _)| *at < lost_at || *at > run.announced + FOLLOW_WITHIN)
        .collect();
    assert!(
        outside.is_empty(),
        "{} requests failed outside Sentinel's detection, e.g. {:?}",
        outside.len(),
        outside
            .first()
            .map(|(at, e)| (signed(*at, run.announced), e))
    );
    run.assert_followed_in_time();
    run.assert_no_write_applied_twice();
}

/// Fault: both Redis nodes down at start-up, only the sentinels up (which, like the nodes,
/// want a password). Asserts: the pool starts lazily, is not ready, fails requests with the
/// cause (the primary's address refused) and never shows a password; once the primary is
/// back, it serves within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_the_sentinels_up_at_start_the_pool_waits_for_the_primary() {
    // Characters that mean something in a URL: the testkit's URL encodes them.
    const NODE_SECRET: &str = "node+s3cret&pw%";
    const SENTINEL_SECRET: &str = "sentinel+s3cret&pw#";
    let mut deployment = SentinelDeployment::start(SentinelOptions {
        redis_password: Some(NODE_SECRET.into()),
        sentinel_password: Some(SENTINEL_SECRET.into()),
        down_after: Duration::from_secs(30),
        ..SentinelOptions::default()
    })
    .unwrap();
    for node in deployment.nodes().iter_mut() {
        node.kill();
    }
    let pool = "f14s-down-at-start";
    let guard = unready_guard(sentinel_config(&deployment.url(), pool)).await;
    let error = guard.get().await.expect_err("no primary to connect to");
    let text = format!("{error} {error:?}");
    assert!(!guard.is_ready());
    assert!(text.contains("refused"), "the cause is named: {text}");
    let readyz = call(&router(guard.clone()), "/readyz?verbose").await;
    let exported = metrics().render();
    for shown in [
        &text,
        &readyz.body,
        &exported,
        &format!("{:?}", guard.config()),
    ] {
        assert!(!shown.contains(NODE_SECRET) && !shown.contains(SENTINEL_SECRET));
    }
    let primary_port = deployment.primary_port().unwrap();
    deployment
        .node_at(primary_port)
        .unwrap()
        .start_again()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || guard.is_ready()).await,
        "ready once the primary is back"
    );
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("after", "start").await.unwrap();
}

/// Fault: every sentinel killed after the pool connected, then every pool connection
/// killed. Asserts: the pool reconnects to the last primary the sentinels named, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_its_primary_while_no_sentinel_answers() {
    let mut deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let pool = "f14s-no-sentinel";
    let guard = common::guard(sentinel_config(&deployment.url(), pool)).await;
    let primary_port = deployment.primary_port().unwrap();
    for sentinel in deployment.sentinels().iter_mut() {
        sentinel.kill();
    }
    let created = metric("redis_guard_connections_created_total", pool, &[]);
    deployment
        .node_command(primary_port, &["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    let mut conn = guard.get().await.expect("reconnected to the known primary");
    let _: () = conn.set("no", "sentinel").await.unwrap();
    assert!(
        metric("redis_guard_connections_created_total", pool, &[]) > created,
        "served by a connection opened while no sentinel answered"
    );
    assert!(guard.is_ready());
}

/// A master name the sentinels do not monitor fails the start-up connect with that cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_named_in_the_error() {
    let deployment = SentinelDeployment::start(SentinelOptions {
        sentinels: 1,
        ..SentinelOptions::default()
    })
    .unwrap();
    let url = deployment.url().replace(MASTER_NAME, "no-such-master");
    let config = Config::builder(url)
        .name("f14s-unknown-master")
        .startup(StartupMode::FailFast)
        .build()
        .unwrap();
    let error = RedisGuard::connect(config)
        .await
        .expect_err("no such master");
    assert!(
        error
            .to_string()
            .contains("do not monitor a master named \"no-such-master\""),
        "{error}"
    );
}

/// TLS everywhere (`rediss+sentinel://`, a custom CA): the pool asks the sentinels over TLS,
/// connects to the primary over TLS, and follows a forced failover; reads never fail.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_sentinels_and_the_primary_are_reached_and_followed() {
    use redis_guard::config::TlsSettings;
    use redis_guard::testkit::TestCertificates;

    let certs = Arc::new(TestCertificates::generate(&["localhost", "127.0.0.1"]).unwrap());
    let deployment = SentinelDeployment::start(SentinelOptions {
        tls: Some(certs.clone()),
        ..SentinelOptions::default()
    })
    .unwrap();
    assert!(deployment.url().starts_with("rediss+sentinel://localhost:"));
    let builder = sentinel_config(&deployment.url(), "f14s-tls").tls(TlsSettings {
        ca_file: Some(certs.ca()),
        ..TlsSettings::default()
    });
    let guard = common::guard(builder).await;
    let old_port = deployment.primary_port().unwrap();
    let mut conn = guard.get().await.unwrap();
    let _: () = conn.set("over", "tls").await.unwrap();
    drop(conn);
    deployment.failover().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut moved = false;
    while Instant::now() < deadline && !moved {
        let mut conn = guard.get().await.expect("reads never fail");
        let value: String = conn.get("over").await.expect("reads never fail");
        assert_eq!(value, "tls");
        let port: (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("tls-port")
            .query_async(&mut *conn)
            .await
            .unwrap();
        moved = port.1.parse::<u16>().unwrap() != old_port;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved, "the pool reached the new primary over TLS");
}

/// What [`write_until`] saw: (when, port) of every acknowledgement, and every failure.
#[derive(Debug, Default)]
struct Writes {
    acks: Vec<(Instant, u16)>,
    failures: Vec<(Instant, String)>,
}

impl Writes {
    /// The writes in words, relative to `since`, for a failed assertion.
    fn summary(&self, since: Instant) -> String {
        let mut ports: Vec<(u16, usize, Duration)> = Vec::new();
        for (at, port) in &self.acks {
            match ports.iter_mut().find(|(p, _, _)| p == port) {
                Some((_, count, last)) => {
                    *count += 1;
                    *last = at.duration_since(since);
                }
                None => ports.push((*port, 1, at.duration_since(since))),
            }
        }
        let mut errors: Vec<&str> = self.failures.iter().map(|(_, e)| e.as_str()).collect();
        errors.dedup();
        format!(
            "acks by port (count, last at) {ports:?}; {} failures, last at {:?}: {errors:?}",
            self.failures.len(),
            self.failures.last().map(|(at, _)| at.duration_since(since)),
        )
    }
}

/// Writes `INCR` through the pool until `stop`.
async fn write_until(guard: &RedisGuard, stop: Instant) -> Writes {
    let mut writes = Writes::default();
    while Instant::now() < stop {
        match incr(guard).await {
            Ok((_, port)) => writes.acks.push((Instant::now(), port)),
            Err(e) => writes.failures.push((Instant::now(), e)),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writes
}

/// Fault: a first failover the pool hears announced; then a second one whose announcements it
/// misses (every subscription to the sentinels killed every 20 ms around it). Asserts: the
/// pool still finds the second one by polling, within 4 s of its announcement (a second after
/// the cutting stops, the subscriptions are made again and poll): it does not take the first
/// announcement's epoch for newer than the sentinels' own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_whose_announcement_was_missed_is_found_by_polling() {
    let mut deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let pool = "f14s-missed";
    let guard = common::guard(sentinel_config(&deployment.url(), pool)).await;
    let announcements = deployment.watch_announcements().await.unwrap();
    deployment.failover().unwrap();
    let followed = eventually(Duration::from_secs(15), || {
        metric("redis_guard_primary_switches_total", pool, &[]) == 1.0
    })
    .await;
    assert!(
        followed,
        "the first failover is followed: {} switches, announced {:?}, the sentinels name port {:?}",
        metric("redis_guard_primary_switches_total", pool, &[]),
        announcements.first(),
        deployment.primary_port(),
    );
    deployment.wait_until_ready().unwrap();

    /// Stops the cutting however the test ends: the runtime waits for its blocking task.
    struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let cutting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _stop_cutting = StopOnDrop(cutting.clone());
    let sentinel_ports: Vec<u16> = deployment.sentinels().iter().map(|s| s.port()).collect();
    let cutter = {
        let cutting = cutting.clone();
        tokio::task::spawn_blocking(move || {
            while cutting.load(std::sync::atomic::Ordering::Relaxed) {
                for port in &sentinel_ports {
                    let _ = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                        .and_then(|c| c.get_connection())
                        .and_then(|mut c| {
                            redis::cmd("CLIENT")
                                .arg("KILL")
                                .arg("TYPE")
                                .arg("pubsub")
                                .query::<redis::Value>(&mut c)
                        });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let old_port = deployment.primary_port().unwrap();
    deployment.failover().unwrap();
    // Subscriptions are cut, the test's too: the announcement is when a sentinel first names
    // the new primary.
    let deadline = Instant::now() + Duration::from_secs(15);
    while deployment.primary_port().unwrap() == old_port {
        assert!(
            Instant::now() < deadline,
            "the sentinels name a new primary"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let announced = Instant::now();
    let acks = write_until(&guard, announced + Duration::from_secs(1)).await;
    cutting.store(false, std::sync::atomic::Ordering::Relaxed);
    cutter.await.unwrap();
    // Subscriptions are made again a probe interval after they fail, and poll at once.
    let later = write_until(&guard, announced + Duration::from_secs(4)).await;
    let new_port = deployment.primary_port().unwrap();
    assert_ne!(new_port, old_port);
    let seen = || {
        format!(
            "old primary {old_port}, new {new_port}; while cut: {}; after: {}; switches {}; {:?}",
            acks.summary(announced),
            later.summary(announced),
            metric("redis_guard_primary_switches_total", pool, &[]),
            guard.state(),
        )
    };
    let on_new = acks
        .acks
        .iter()
        .chain(&later.acks)
        .filter(|(_, port)| *port == new_port)
        .count();
    assert!(
        on_new > 0,
        "writes reach the new primary within 4 s of the announcement; {}",
        seen()
    );
    let first_on_new = later
        .acks
        .iter()
        .position(|(_, port)| *port == new_port)
        .unwrap_or(0);
    assert!(
        later.acks[first_on_new..]
            .iter()
            .all(|(_, port)| *port == new_port),
        "none goes to the old primary once the pool followed; {}",
        seen()
    );
    assert_eq!(metric("redis_guard_primary_switches_total", pool, &[]), 2.0);
}

/// Fault: Sentinel rebuilt by an operator after a failover: every sentinel forgets the
/// master, the nodes swap roles by hand, and the sentinels monitor the other node afresh, so
/// its configuration epoch starts again at 0, below the one the pool learned. Asserts: once
/// the pool finds its primary serving as a replica it takes the sentinels' word over the
/// epoch, and writes reach the new primary within 5 s, none to the old one afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_rebuilt_with_a_fresh_epoch_are_followed_once_the_primary_is_a_replica() {
    let mut deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let pool = "f14s-rebuilt";
    let guard = common::guard(sentinel_config(&deployment.url(), pool)).await;
    let first = deployment.primary_port().unwrap();
    deployment.failover().unwrap();
    let followed = eventually(Duration::from_secs(15), || {
        metric("redis_guard_primary_switches_total", pool, &[]) == 1.0
    })
    .await;
    assert!(followed, "the failover is followed");
    let second = deployment.primary_port().unwrap();
    // The pool polls each sentinel every probe interval: let it learn the failover's epoch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(incr(&guard).await.unwrap().1, second);

    let monitor_first = first.to_string();
    for sentinel in deployment.sentinels().iter() {
        sentinel
            .command(&["SENTINEL", "REMOVE", MASTER_NAME])
            .unwrap();
    }
    deployment
        .node_command(first, &["REPLICAOF", "NO", "ONE"])
        .unwrap();
    deployment
        .node_command(second, &["REPLICAOF", "127.0.0.1", &monitor_first])
        .unwrap();
    for sentinel in deployment.sentinels().iter() {
        sentinel
            .command(&[
                "SENTINEL",
                "MONITOR",
                MASTER_NAME,
                "127.0.0.1",
                &monitor_first,
                "2",
            ])
            .unwrap();
    }
    let rebuilt = Instant::now();
    let writes = write_until(&guard, rebuilt + Duration::from_secs(5)).await;
    let first_on_new = writes.acks.iter().position(|(_, port)| *port == first);
    eprintln!(
        "rebuilt sentinels: first write on the primary they name {:?} after the rebuild; {}",
        first_on_new.map(|at| writes.acks[at].0.duration_since(rebuilt)),
        writes.summary(rebuilt)
    );
    assert!(
        first_on_new.is_some_and(|at| writes.acks[at..].iter().all(|(_, port)| *port == first)),
        "writes move to the primary the rebuilt sentinels name, and stay there: {}",
        writes.summary(rebuilt)
    );
    assert_eq!(metric("redis_guard_primary_switches_total", pool, &[]), 2.0);
}

/// Fault: the sentinel asked first frozen (SIGSTOP: its sockets accept, nothing answers), then
/// every pool connection killed, so that connects must ask the sentinels. Asserts: no request
/// fails, and none waits as long as the connect budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sentinel_fails_no_request() {
    let mut deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let guard = common::guard(sentinel_config(&deployment.url(), "f14s-frozen-sentinel")).await;
    let primary = deployment.primary_port().unwrap();
    deployment.sentinels()[0].pause();
    deployment
        .node_command(primary, &["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        let mut conn = guard.get().await.expect("no request fails");
        let _: () = conn
            .set("frozen", "sentinel")
            .await
            .expect("no request fails");
        slowest = slowest.max(started.elapsed());
        drop(conn);
        deployment
            .node_command(primary, &["CLIENT", "KILL", "TYPE", "normal"])
            .unwrap();
    }
    deployment.sentinels()[0].resume();
    assert!(
        slowest < Duration::from_millis(700),
        "slowest request {slowest:?}"
    );
}

/// Fault: `SENTINEL FAILOVER` while a worker waits in `BLPOP` (30 s) on the old primary.
/// Asserts: the `BLPOP` ends within 100 ms of the announcement (its socket is shut; the old
/// primary would hold it until Sentinel demotes it, about 10 s later), and the worker's next
/// `BLPOP` takes a job pushed to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_call_on_the_demoted_primary_ends_at_the_announcement() {
    let deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    let guard = common::guard(sentinel_config(&deployment.url(), "f14s-blpop")).await;
    let announcements = deployment.watch_announcements().await.unwrap();
    let worker = {
        let guard = guard.clone();
        tokio::spawn(async move {
            let mut conn = guard.get().await.unwrap();
            let first: redis::RedisResult<Option<(String, String)>> =
                conn.blpop("jobs", 30.0).await;
            let ended = Instant::now();
            drop(conn);
            let mut conn = guard.get().await.unwrap();
            let next: Option<(String, String)> = conn.blpop("jobs", 10.0).await.unwrap();
            (first.is_err(), ended, next)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    deployment.failover().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let announced = loop {
        if let Some(at) = announcements.first() {
            break at;
        }
        assert!(Instant::now() < deadline, "announced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = guard.get().await.unwrap();
    let _: i64 = conn.rpush("jobs", "job-1").await.unwrap();
    drop(conn);
    let (failed, ended, next) = tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .expect("bounded")
        .unwrap();
    assert!(failed, "the BLPOP on the old primary ends with an error");
    assert!(
        ended <= announced + FOLLOW_WITHIN,
        "it ended {} after the announcement",
        signed(ended, announced)
    );
    assert_eq!(next, Some(("jobs".to_owned(), "job-1".to_owned())));
}

/// Setup: a pool under Sentinel (subscribed to every sentinel, its questions answered) that
/// served a few writes, closed while a handle is still held. Asserts: 1 s after `close()`
/// no task of the pool is alive, the sentinel connections' drivers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_closed_sentinel_pool_runs() {
    let deployment = SentinelDeployment::start(SentinelOptions::default()).unwrap();
    metrics();
    let before = alive_tasks();
    let guard = common::guard(sentinel_config(&deployment.url(), "f14s-close")).await;
    for _ in 0..10 {
        incr(&guard).await.unwrap();
    }
    let held = guard.clone();
    guard.close(Duration::from_secs(1)).await;
    let quiet = eventually(Duration::from_secs(1), || alive_tasks() <= before).await;
    assert!(
        quiet,
        "{} tasks alive 1 s after close()",
        alive_tasks() - before
    );
    drop(held);
}
