//! The breaker judges Redis, not one socket and not load: start-up, saturation, zombies right
//! after traffic, one refused connect, waiters while Redis refuses connections, a slow Redis,
//! error replies, slow replies, and the traffic the pool itself sends. Each test states its
//! fault, its load and what it asserts.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{
    Outcome, call, config, drive_echo, eventually, evictions, failures, guard, metric, service,
    unique_value, unready_guard,
};
use redis_guard::config::defaults;
use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
use redis_guard::{BreakerState, Error, RedisGuard, StartupMode};
use tokio::time::timeout;

/// `redis_guard_breaker_transitions_total{to="open"}` of `pool`.
fn opened(pool: &str) -> f64 {
    metric(
        "redis_guard_breaker_transitions_total",
        pool,
        &[("to", "open")],
    )
}

/// `redis_guard_checkouts_total{result="rejected"}` of `pool`: refusals by the breaker.
fn rejected(pool: &str) -> f64 {
    metric(
        "redis_guard_checkouts_total",
        pool,
        &[("result", "rejected")],
    )
}

/// `redis_guard_connect_errors_total` of `pool`, every kind.
fn connect_errors(pool: &str) -> f64 {
    metric("redis_guard_connect_errors_total", pool, &[])
}

/// A response the breaker refused: `Error::Unavailable` as the service renders it.
fn refused_by_breaker(outcome: &Outcome) -> bool {
    outcome.status == StatusCode::SERVICE_UNAVAILABLE
        && outcome.body.contains("\"title\":\"Redis unavailable\"")
}

/// A checkout and one PING, as a handler would use a connection.
async fn get_and_ping(guard: &RedisGuard) -> Result<(), Error> {
    let mut conn = guard.get().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    Ok(())
}

/// An admin connection straight to the server (never through the pool or the proxy), kept
/// open so that each reading costs exactly one `INFO` and no handshake.
struct Admin(redis::Connection);

impl Admin {
    fn connect(server: &RedisServer) -> Admin {
        let client = redis::Client::open(server.url()).expect("server url");
        Admin(
            client
                .get_connection_with_timeout(Duration::from_secs(2))
                .expect("admin connection"),
        )
    }

    /// One `INFO <section>` field, as a number. Each call is one command on the server,
    /// counted only after it has answered.
    fn info(&mut self, section: &str, field: &str) -> u64 {
        let info: String = tokio::task::block_in_place(|| {
            redis::cmd("INFO")
                .arg(section)
                .query(&mut self.0)
                .expect("INFO answers")
        });
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map_or(0, |value| value.trim().parse().expect("numeric INFO field"))
    }

    fn commands_processed(&mut self) -> u64 {
        self.info("stats", "total_commands_processed")
    }

    /// `calls` of `cmdstat_<command>`; 0 before the first call.
    fn calls(&mut self, command: &str) -> u64 {
        let info: String = tokio::task::block_in_place(|| {
            redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut self.0)
                .expect("INFO answers")
        });
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().expect("numeric calls"))
    }
}

/// Fault: none; a Lazy pool (the default start-up) asked for a connection the instant
/// `connect` returns, before its first connect has completed. Load: one `get()` and a PING.
/// Asserts: the checkout waits for that first connect within its budget and is served; the
/// breaker never refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_get_after_a_lazy_connect_is_served() {
    let server = RedisServer::start().unwrap();
    let guard = unready_guard(
        config(&server.url(), "lazy_first")
            .max_size(defaults::MAX_SIZE)
            .min_idle(defaults::MIN_IDLE),
    )
    .await;
    let budget = guard.config().checkout_timeout();
    let started = Instant::now();
    let first = timeout(budget + Duration::from_millis(500), get_and_ping(&guard))
        .await
        .expect("get() returns within its checkout budget");
    let took = started.elapsed();
    assert!(
        first.is_ok(),
        "the first get() after connect failed after {took:?}: {}",
        first.unwrap_err()
    );
    assert_eq!(rejected("lazy_first"), 0.0, "no checkout refused");
    assert_eq!(opened("lazy_first"), 0.0, "the breaker never opened");
}

/// Fault: none; the service's first request arrives the instant a Lazy `connect` returns,
/// through `RequireRedisLayer`, as a freshly started pod would get it. Load: one `/echo`.
/// Asserts: 200, not a 503 from the breaker: readiness may still say 503, but a request is
/// not refused before the first connect has had its chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_after_a_lazy_connect_passes_require_redis() {
    let server = RedisServer::start().unwrap();
    let guard = unready_guard(config(&server.url(), "lazy_route")).await;
    let app = service(guard.clone());
    let value = unique_value();
    let outcome = timeout(
        guard.config().checkout_timeout() + Duration::from_millis(500),
        call(&app, &format!("/echo?value={value}")),
    )
    .await
    .expect("the request completes within its checkout budget");
    assert_eq!(
        (outcome.status, outcome.body.as_str()),
        (StatusCode::OK, value.as_str()),
        "first request after {:?}",
        outcome.elapsed
    );
    assert_eq!(rejected("lazy_route"), 0.0, "no checkout refused");
}

/// Fault: none; F12 saturation. Load: `max_size(2)`, both connections held by the test for
/// 10 s, while a third caller keeps asking for one (each `get()` waits out its 1 s budget);
/// default `probe_interval` (1 s), so the prober finds no connection either. Asserts: the
/// breaker stays Closed and `/readyz` answers 200 at every sample (every ~100 ms), no
/// transition to open is counted, and each third caller gets `Error::Timeout` naming a pool
/// with both connections in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_keeps_the_breaker_closed_and_stays_ready() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "saturated").max_size(2)).await;
    let app = service(guard.clone());
    let first = timeout(Duration::from_secs(2), guard.get())
        .await
        .expect("first checkout in time")
        .expect("first connection");
    let second = timeout(Duration::from_secs(2), guard.get())
        .await
        .expect("second checkout in time")
        .expect("second connection");

    let hold = Duration::from_secs(10);
    let started = Instant::now();
    let third = tokio::spawn({
        let guard = guard.clone();
        async move {
            let mut outcomes = Vec::new();
            while started.elapsed() + guard.config().checkout_timeout() < hold
                && outcomes.len() < 20
            {
                let at = started.elapsed();
                let outcome = timeout(Duration::from_secs(3), guard.get())
                    .await
                    .expect("a saturated checkout ends with its budget");
                outcomes.push((at, outcome.map(drop)));
            }
            outcomes
        }
    });

    let mut not_closed = Vec::new();
    let mut not_ready = Vec::new();
    let mut samples = 0;
    while started.elapsed() < hold && samples < 200 {
        samples += 1;
        let at = started.elapsed();
        let state = guard.breaker_state();
        if state != BreakerState::Closed {
            not_closed.push((at, state));
        }
        let ready = timeout(Duration::from_secs(1), call(&app, "/readyz"))
            .await
            .expect("/readyz answers at once");
        if ready.status != StatusCode::OK {
            not_ready.push((at, ready.status));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = timeout(Duration::from_secs(5), third)
        .await
        .expect("the third caller finished")
        .expect("third caller panicked");
    drop((first, second));

    assert!(
        not_closed.is_empty(),
        "breaker not closed at {} of {samples} samples, first at {:?}",
        not_closed.len(),
        not_closed.first()
    );
    assert!(
        not_ready.is_empty(),
        "/readyz not 200 at {} of {samples} samples, first at {:?}",
        not_ready.len(),
        not_ready.first()
    );
    assert_eq!(opened("saturated"), 0.0, "transitions to open");
    assert!(!third.is_empty(), "the third caller asked at least once");
    for (at, outcome) in &third {
        match outcome {
            Err(Error::Timeout { state, .. }) => assert_eq!(
                (state.in_use, state.max_size),
                (2, 2),
                "the timeout at {at:?} names the busy pool"
            ),
            other => panic!("third caller at {at:?}: expected Error::Timeout, got {other:?}"),
        }
    }
}

/// Fault: F11, every pooled connection freezes (no FIN, no RST) right after traffic, so all
/// of them are inside the 500 ms validation bypass window; new connections still pass.
/// Load: warm-up of 400 echoes at concurrency 16 on `max_size(16)`, then 200 echoes at
/// concurrency 8 through `RequireRedisLayer`. Asserts: no request is refused by the breaker (no
/// `Redis unavailable` 503, no rejected checkout, no transition to open); at most one request
/// per frozen connection fails (only those in flight on a frozen socket); the breaker is
/// Closed at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombies_right_after_traffic_are_not_an_outage() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let guard = guard(config(&proxy.url(), "zombies").max_size(16)).await;
    let app = service(guard.clone());
    let warm = drive_echo(&app, 400, 16).await;
    assert!(failures(&warm).is_empty(), "{:?}", failures(&warm).first());
    let pooled = guard.state().connections;
    assert!(pooled >= 2, "warm-up left {pooled} connections");
    let frozen = proxy.freeze_all().await;

    let outcomes = drive_echo(&app, 200, 8).await;
    let refusals = outcomes.iter().filter(|o| refused_by_breaker(o)).count();
    let failed = failures(&outcomes);
    eprintln!(
        "zombies: {frozen} frozen ({pooled} pooled), {} failed, {refusals} refused, \
         {} evicted (validation), {} evicted (io)",
        failed.len(),
        evictions("zombies", "validation_failed"),
        evictions("zombies", "io_error"),
    );
    assert_eq!(
        refusals,
        0,
        "{refusals} of 200 requests refused by the breaker; first: {:?}",
        outcomes.iter().find(|o| refused_by_breaker(o))
    );
    assert_eq!(rejected("zombies"), 0.0, "rejected checkouts");
    assert_eq!(opened("zombies"), 0.0, "transitions to open");
    assert!(
        failed.len() <= frozen,
        "{} failed with {frozen} frozen connections; first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
}

/// Fault: the proxy refuses (RST) connections when the Lazy pool starts (`min_idle(0)`),
/// so its first connect attempt fails; then Redis is back (proxy in Pass). Load: 4 concurrent
/// `get()` + PING right after. Asserts: all 4 succeed, none is refused, and the breaker never
/// opened: one refused connect is not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_connect_fails_no_request_once_redis_is_back() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Refuse);
    let guard = unready_guard(config(&proxy.url(), "refused_once").min_idle(0)).await;
    let attempted = || connect_errors("refused_once") >= 1.0;
    assert!(
        eventually(Duration::from_secs(2), attempted).await,
        "the lazy pool attempted a first connect within 2 s"
    );
    proxy.set_mode(ProxyMode::Pass);

    let calls: Vec<_> = (0..4)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move {
                timeout(Duration::from_secs(3), get_and_ping(&guard))
                    .await
                    .expect("a checkout ends within its budget")
            })
        })
        .collect();
    let mut failed = Vec::new();
    for call in calls {
        if let Err(e) = call.await.expect("caller panicked") {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 4 failed: {failed:?}",
        failed.len()
    );
    assert_eq!(rejected("refused_once"), 0.0, "rejected checkouts");
    assert_eq!(opened("refused_once"), 0.0, "transitions to open");
}

/// Fault: Redis refuses connections (nothing listens) to a Lazy pool with no connection yet.
/// Load: 20 concurrent `get()`s, after the pool's first connect attempts have failed. Asserts:
/// they wait for the next attempt rather than failing on the earlier one, all fail fast with
/// its cause when it fails too, and that attempt counts once toward the breaker, however many
/// callers waited on it: one failed attempt more, and the breaker still closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_counts_once_however_many_callers_wait_on_it() {
    let mut server = RedisServer::start().unwrap();
    // Connections refused outright: a failure that leaves no doubt (a reset during the
    // handshake would make the callers wait for a second attempt).
    server.stop();
    let guard = unready_guard(config(&server.url(), "counted_once").min_idle(0)).await;
    // The first failure is retried at once; after the second the pool waits 200 ms: the
    // callers below all arrive within that pause.
    let attempted = || connect_errors("counted_once") >= 2.0;
    assert!(eventually(Duration::from_secs(2), attempted).await);
    let started = Instant::now();
    let before = connect_errors("counted_once");
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move {
                timeout(Duration::from_secs(3), guard.get())
                    .await
                    .expect("a checkout ends within its budget")
                    .map(drop)
            })
        })
        .collect();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
    let waited = started.elapsed();
    assert_eq!(
        connect_errors("counted_once") - before,
        1.0,
        "one attempt, however many callers waited on it"
    );
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    assert!(
        waited < guard.config().checkout_timeout(),
        "failed fast: {waited:?}"
    );
}

/// The worker and blocking threads of the runtime [`waiters_for_a_connect_neither_spin_nor_storm_redis`]
/// builds for itself (at most 15 characters: the kernel truncates thread names).
const NO_SPIN_THREADS: &str = "rg-no-spin-rt";

/// CPU time (user + system) consumed so far by the threads named `name` and by the calling
/// thread. Threads that exited are lost, so callers take differences with `saturating_sub`.
fn cpu_time_of(name: &str) -> Duration {
    let mut total = thread_cpu_time(Path::new("/proc/thread-self"));
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc is mounted")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            total += thread_cpu_time(&task.path());
        }
    }
    total
}

/// One thread's CPU time: `schedstat` (nanoseconds) where the kernel has it, else `stat`'s
/// utime + stime (in USER_HZ, 100 per second).
fn thread_cpu_time(dir: &Path) -> Duration {
    if let Some(nanos) = std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return Duration::from_nanos(nanos);
    }
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    // Fields after the parenthesised name start with field 3 (state); utime and stime are 14, 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Fault: Redis refuses new connections (proxy in Refuse) while the test holds one of the
/// two connections of a `max_size(2)` pool and the other slot is empty. Load: 100 concurrent
/// `get()` callers with a 4 s checkout budget. Asserts, over 2 s of that waiting: the
/// waiting costs under 5 % of one core, and there are at most 12 connect attempts (about 5 a
/// second). Then Redis accepts connections again (Pass) while the test still holds its
/// connection: a waiter still within its budget is served within 1 s, through a new connect
/// into the free slot. Finally, once the held connection is released, no waiter has waited
/// beyond its budget.
///
/// CPU is measured per thread, not per process: the other tests of this binary run in
/// parallel threads of the same process, so `/proc/self/stat` would count their load too, and
/// a baseline taken just before would not remove it (their load changes from one second to the
/// next). So this test builds its own runtime (2 workers, as `#[tokio::test]` would) whose
/// threads carry a name of their own, and sums the CPU time of those threads and of the test
/// thread, which runs `block_on`. Everything this test starts (the pool, its prober, the proxy
/// and the 100 waiters) runs there.
#[test]
fn waiters_for_a_connect_neither_spin_nor_storm_redis() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(NO_SPIN_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server = RedisServer::start().unwrap();
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        let budget = Duration::from_secs(4);
        let guard = guard(
            config(&proxy.url(), "no_spin")
                .max_size(2)
                .checkout_timeout(budget),
        )
        .await;

        // One connection held by the test, the other slot emptied (killed by the server).
        let held = timeout(Duration::from_secs(4), guard.get())
            .await
            .expect("checkout in time")
            .expect("first connection");
        let mut other = timeout(Duration::from_secs(4), guard.get())
            .await
            .expect("checkout in time")
            .expect("second connection");
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut other)
            .await
            .unwrap();
        proxy.set_mode(ProxyMode::Refuse);
        let accepted_at_refuse = proxy.connections_accepted();
        tokio::task::block_in_place(|| {
            server
                .command(&["CLIENT", "KILL", "ID", &id.to_string()])
                .unwrap()
        });
        assert!(
            eventually(Duration::from_secs(2), || !other.is_open()).await,
            "the killed connection noticed its EOF"
        );
        drop(other);
        assert!(
            eventually(Duration::from_secs(2), || guard.state().connections == 1).await,
            "only the held connection is left: {}",
            guard.state()
        );

        let idle_started = Instant::now();
        let idle_cpu_before = cpu_time_of(NO_SPIN_THREADS);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_cpu = cpu_time_of(NO_SPIN_THREADS).saturating_sub(idle_cpu_before);
        let idle_for = idle_started.elapsed();

        let served = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let (guard, served) = (guard.clone(), served.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let got = timeout(budget * 2, guard.get())
                        .await
                        .expect("a checkout ends with its budget");
                    let waited = started.elapsed();
                    let result = match got {
                        Ok(mut conn) => redis::cmd("PING")
                            .query_async::<String>(&mut conn)
                            .await
                            .map(drop)
                            .map_err(Error::from),
                        Err(e) => Err(e),
                    };
                    if result.is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    (waited, result)
                })
            })
            .collect();
        // Let them all queue up, then watch them wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let attempts_before = proxy.connections_accepted();
        let errors_before = connect_errors("no_spin");
        let cpu_before = cpu_time_of(NO_SPIN_THREADS);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu = cpu_time_of(NO_SPIN_THREADS).saturating_sub(cpu_before);
        let window = started.elapsed();
        let attempts = proxy.connections_accepted() - attempts_before;
        let errors = connect_errors("no_spin") - errors_before;
        let still_waiting = guard.state().waiting;

        // Redis is back, about 1.8 s into the waiters' 4 s budget. The held connection stays
        // held for now: the free slot must be filled by a new connect.
        proxy.set_mode(ProxyMode::Pass);
        let returned = Instant::now();
        let served_while_held = eventually(Duration::from_secs(1), || {
            served.load(Ordering::Relaxed) >= 1
        })
        .await;
        let first_served_after = returned.elapsed();
        let waiting_at_return = guard.state().waiting;
        let refused_in_all = attempts_before - accepted_at_refuse + attempts;
        drop(held);
        let mut errors_seen = Vec::new();
        let mut worst = Duration::ZERO;
        for waiter in waiters {
            let (waited, result) = timeout(budget * 3, waiter)
                .await
                .expect("every waiter ends")
                .expect("waiter panicked");
            worst = worst.max(waited);
            if let Err(e) = result {
                errors_seen.push(e.to_string());
            }
        }
        let served = served.load(Ordering::Relaxed);
        eprintln!(
            "no_spin: {cpu:?} CPU in {window:?} of waiting (idle: {idle_cpu:?} in {idle_for:?}); \
             {attempts} connects accepted ({refused_in_all} since Refuse), {errors} connect \
             errors; {still_waiting} waiting; \
             first served {first_served_after:?} after Redis returned: {served_while_held}; \
             {served} of 100 served, worst wait {worst:?}"
        );

        let share = cpu.as_secs_f64() / window.as_secs_f64();
        assert!(
            share < 0.05,
            "waiting used {:.1} % of a core ({cpu:?} in {window:?}; {:?} while idle)",
            share * 100.0,
            idle_cpu
        );
        assert!(
            attempts <= 12,
            "{attempts} connect attempts in {window:?} ({errors} counted as connect errors)"
        );
        assert!(
            served_while_held,
            "no waiter served within {first_served_after:?} of Redis accepting connections \
             again, with a slot free and {waiting_at_return} still waiting; {} errors in the \
             end, first: {:?}",
            errors_seen.len(),
            errors_seen.first()
        );
        assert!(
            worst <= budget + Duration::from_millis(250),
            "a waiter waited {worst:?} on a {budget:?} budget"
        );
    });
}

/// Fault: F10, a slow but working Redis: every reply held back 300 ms by the proxy from
/// before the Lazy pool starts (longer than the 250 ms validation timeout, well within the
/// 1 s connect and response timeouts). Load: none, then one `get()` + `GET`. Asserts: the pool
/// becomes ready within 2 s, and the command succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_working_redis_becomes_ready() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(300)));
    let guard = unready_guard(config(&proxy.url(), "slow_ready")).await;
    let started = Instant::now();
    let ready = eventually(Duration::from_secs(2), || guard.is_ready()).await;
    assert!(
        ready,
        "not ready after {:?}: breaker {:?}, {} connect errors, {} evictions (validation)",
        started.elapsed(),
        guard.breaker_state(),
        connect_errors("slow_ready"),
        evictions("slow_ready", "validation_failed"),
    );
    let key = unique_value();
    let reply = timeout(Duration::from_secs(3), async {
        let mut conn = guard.get().await?;
        let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok::<_, Error>(value)
    })
    .await
    .expect("get() + GET end within the checkout and response timeouts");
    assert!(matches!(reply, Ok(None)), "GET on a slow Redis: {reply:?}");
}

/// Fault: F6, nothing listens on the port (a server started, then stopped): connects are
/// refused at once. Load: `connect` with `StartupMode::WaitFor(1 s)`. Asserts: it returns an
/// error within 1 s + 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_start_up_gives_up_within_its_limit() {
    let mut server = RedisServer::start().unwrap();
    server.stop();
    assert_wait_for_gives_up(&server.url(), "wait_for_down", Duration::from_secs(1)).await;
}

/// Starts a pool on `url` with `WaitFor(limit)` and asserts that it fails within the limit
/// plus 100 ms.
async fn assert_wait_for_gives_up(url: &str, pool: &str, limit: Duration) {
    let config = config(url, pool)
        .startup(StartupMode::WaitFor(limit))
        .build()
        .unwrap();
    let started = Instant::now();
    let result = timeout(limit * 5, RedisGuard::connect(config))
        .await
        .expect("connect returns");
    let took = started.elapsed();
    assert!(result.is_err(), "{pool}: connected where nothing answers");
    assert!(
        took <= limit + Duration::from_millis(100),
        "WaitFor({limit:?}) returned after {took:?}"
    );
}

/// Fault: connects hang (the proxy accepts and never forwards: a black-holing firewall),
/// so each attempt lasts its whole 1 s connect timeout. Load: `connect` with
/// `StartupMode::WaitFor(1.5 s)`. Asserts: it returns an error within 1.5 s + 100 ms: an
/// attempt in flight at the limit is cut short, not waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_start_up_gives_up_within_its_limit_when_connects_hang() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Freeze);
    assert_wait_for_gives_up(&proxy.url(), "wait_for_hang", Duration::from_millis(1500)).await;
}

/// Fault: none; the application drops its guard (shutdown, or a pool replaced at run
/// time). Load: one checkout before. Asserts: within 500 ms of the drop the pool's
/// `redis_guard_ready` reads 0 and `redis_guard_pool_connections` reads 0, so dashboards and
/// alerts do not show a dead pool as ready and connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_reports_neither_ready_nor_connections() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "dropped")).await;
    timeout(Duration::from_secs(2), get_and_ping(&guard))
        .await
        .expect("checkout in time")
        .expect("a working pool");
    let connections = || metric("redis_guard_pool_connections", "dropped", &[]);
    let ready = || metric("redis_guard_ready", "dropped", &[]);
    let reported = || connections() >= 1.0 && ready() == 1.0;
    assert!(
        eventually(Duration::from_secs(3), reported).await,
        "gauges before the drop: ready {}, connections {}",
        ready(),
        connections()
    );

    drop(guard);
    let cleared = eventually(Duration::from_millis(500), || {
        connections() == 0.0 && ready() == 0.0
    })
    .await;
    assert!(
        cleared,
        "500 ms after the drop: redis_guard_ready {}, redis_guard_pool_connections {}",
        ready(),
        connections()
    );
}

/// Fault: none; every command fails with a `WRONGTYPE` error reply. Load: 200 such
/// commands at concurrency 8. Asserts: each gets its WRONGTYPE error, the breaker stays Closed
/// with no transition to open, and no connection is evicted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_never_count_against_redis() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "wrongtype")).await;
    let key = unique_value();
    tokio::task::block_in_place(|| server.command(&["SET", &key, "a string"]).unwrap());

    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (guard, key) = (guard.clone(), key.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for _ in 0..25 {
                    let reply = timeout(Duration::from_secs(3), async {
                        let mut conn = guard.get().await?;
                        redis::cmd("LPUSH")
                            .arg(&key)
                            .arg("x")
                            .query_async::<()>(&mut conn)
                            .await
                            .map_err(Error::from)
                    })
                    .await
                    .expect("a command ends within its timeouts");
                    codes.push(match reply {
                        Err(Error::Redis(e)) => e.code().unwrap_or("none").to_owned(),
                        other => format!("{other:?}"),
                    });
                }
                codes
            })
        })
        .collect();
    let mut codes = Vec::new();
    for worker in workers {
        codes.extend(worker.await.expect("worker panicked"));
    }
    let other: Vec<_> = codes.iter().filter(|c| *c != "WRONGTYPE").collect();
    assert!(other.is_empty(), "{} not WRONGTYPE: {other:?}", other.len());
    assert_eq!(codes.len(), 200);
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    assert_eq!(opened("wrongtype"), 0.0, "transitions to open");
    assert_eq!(
        evictions("wrongtype", "io_error"),
        0.0,
        "io_error evictions"
    );
}

/// Fault: F10, Redis takes 400 ms to answer (`DEBUG SLEEP 0.4`): slower than the 250 ms
/// validation timeout, within the 1 s response timeout (both defaults). Load: 10 such commands
/// in a row, each on a fresh checkout. Asserts: each succeeds, the breaker stays Closed, and
/// no connection is evicted for any reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_within_response_timeout_never_count_however_slow() {
    let server = RedisServer::start_with_args(&["--enable-debug-command", "yes"]).unwrap();
    let guard = guard(config(&server.url(), "debug_sleep")).await;
    let evicted = || metric("redis_guard_stale_evictions_total", "debug_sleep", &[]);
    for i in 0..10 {
        let reply = timeout(Duration::from_secs(3), async {
            let mut conn = guard.get().await?;
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("0.4")
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::from)
        })
        .await
        .expect("the command ends within the response timeout");
        assert!(reply.is_ok(), "DEBUG SLEEP #{i}: {}", reply.unwrap_err());
    }
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    assert_eq!(opened("debug_sleep"), 0.0, "transitions to open");
    assert_eq!(
        evicted(),
        0.0,
        "evictions: validation_failed {}, io_error {}",
        evictions("debug_sleep", "validation_failed"),
        evictions("debug_sleep", "io_error")
    );
}

/// Fault: none; an idle pool. Load: no requests for 5 s. Asserts: the pool sends Redis at
/// most 1.5 commands a second (one PING per 1 s `probe_interval`, not a checkout PING and a
/// probe PING), counted by the server's `total_commands_processed` less our own `INFO`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_sends_at_most_one_command_per_probe_interval() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "idle_traffic")).await;
    let mut admin = Admin::connect(&server);
    // Start-up's connects and handshakes are done.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = admin.commands_processed();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Less the INFO that took the first reading.
    let sent = admin.commands_processed() - before - 1;
    let elapsed = started.elapsed();
    let per_second = sent as f64 / elapsed.as_secs_f64();
    assert!(
        per_second <= 1.5,
        "an idle pool sent {sent} commands in {elapsed:?} ({per_second:.2}/s; {:?} probe interval)",
        guard.config().probe_interval()
    );
}

/// Fault: none. Load: a `get()` + `GET` every 100 ms for 3 s: traffic that proves Redis
/// alive all the time. Asserts: the pool adds at most 1 PING over those 3 s (neither checkout
/// validation nor the prober PINGs while commands keep completing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_needs_no_probe_pings() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "steady_traffic")).await;
    let mut admin = Admin::connect(&server);
    let key = unique_value();
    let pings_before = admin.calls("ping");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..30 {
        tick.tick().await;
        let reply = timeout(Duration::from_secs(2), async {
            let mut conn = guard.get().await?;
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut conn)
                .await
                .map_err(Error::from)
        })
        .await
        .expect("get() + GET in time");
        assert!(reply.is_ok(), "request #{i}: {}", reply.unwrap_err());
    }
    let elapsed = started.elapsed();
    let pings = admin.calls("ping") - pings_before;
    assert!(
        pings <= 1,
        "{pings} PINGs during {elapsed:?} of a request every 100 ms"
    );
}

/// Fault: Redis reaches `maxclients` (other clients take the free slots): new connections are
/// refused while the pool's own connections still answer. Load: steady requests for 2 s, then
/// none for 3 s, then a few. Asserts: the breaker never opens and `/readyz` stays 200, every
/// request is served, and once traffic stops the pool stops trying to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_at_maxclients_is_not_an_outage() {
    let server = RedisServer::start_with_args(&["--maxclients", "6"]).unwrap();
    let guard = guard(config(&server.url(), "maxclients").min_idle(3)).await;
    assert!(
        eventually(Duration::from_secs(3), || guard.state().idle >= 3).await,
        "three idle connections: {}",
        guard.state()
    );
    // Outside clients take every remaining slot (this test's own admin connection included).
    let mut outside = Vec::new();
    for _ in 0..6 {
        let client = redis::Client::open(server.url()).unwrap();
        match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
                Ok(_) => outside.push(conn),
                Err(_) => break,
            },
            Err(_) => break,
        }
    }
    let app = service(guard.clone());
    let busy = drive_echo(&app, 400, 8).await;
    assert!(failures(&busy).is_empty(), "{:?}", failures(&busy).first());
    let quiet_from = connect_errors("maxclients");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        assert_eq!(call(&app, "/readyz").await.status, StatusCode::OK);
    }
    let while_idle = connect_errors("maxclients") - quiet_from;
    assert!(
        while_idle <= 1.0,
        "{while_idle} connect attempts while idle with enough connections"
    );
    let after = drive_echo(&app, 50, 4).await;
    assert!(
        failures(&after).is_empty(),
        "{:?}",
        failures(&after).first()
    );
    assert_eq!(opened("maxclients"), 0.0);
    drop(outside);
}

/// Fault: Redis at `maxclients` before the pool has a connection: it turns every new
/// connection away with `-ERR max number of clients reached` and closes it. Asserts: the
/// checkout fails with that cause named (not "broken pipe" or "connection reset"), the
/// connects are counted as `kind="maxclients"`, none as `refused`, and `/readyz?verbose`
/// names it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxclients_is_named_as_the_cause() {
    let server = RedisServer::start_with_args(&["--maxclients", "2"]).unwrap();
    // Outside clients take every slot (the test kit's own connection may hold one).
    let mut holders = Vec::new();
    for _ in 0..3 {
        let client = redis::Client::open(server.url()).unwrap();
        match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
                Ok(_) => holders.push(conn),
                Err(_) => break,
            },
            Err(_) => break,
        }
    }
    let pool = "maxclients_named";
    let guard = unready_guard(config(&server.url(), pool)).await;
    let error = guard.get().await.expect_err("no slot left on the server");
    let text = format!("{error} {error:?}");
    assert!(text.contains("max number of clients"), "{text}");
    assert!(
        metric(
            "redis_guard_connect_errors_total",
            pool,
            &[("kind", "maxclients")]
        ) >= 1.0,
        "counted as maxclients"
    );
    assert_eq!(
        metric(
            "redis_guard_connect_errors_total",
            pool,
            &[("kind", "refused")]
        ),
        0.0
    );
    let readyz = call(&service(guard.clone()), "/readyz?verbose").await;
    assert!(readyz.body.contains("maxclients"), "{}", readyz.body);
    drop(holders);
}

/// Fault: Redis stops while the pool's only connection is checked out (a worker holding it).
/// Load: 10 callers waiting for a connection. Asserts: the dead socket is noticed although
/// nobody returns it: the pool verifies with fresh connects, the breaker opens, and the
/// waiters fail fast with the connect error instead of each waiting out its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_noticed_while_every_connection_is_checked_out() {
    let mut server = RedisServer::start().unwrap();
    let guard = guard(
        config(&server.url(), "all_held")
            .max_size(1)
            .checkout_timeout(Duration::from_secs(3)),
    )
    .await;
    let held = guard.get().await.unwrap();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = guard.get().await.map(drop);
                (started.elapsed(), result)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| server.stop());
    let opened_in_time = eventually(Duration::from_secs(3), || {
        guard.breaker_state() == BreakerState::Open
    })
    .await;
    assert!(
        opened_in_time,
        "the breaker opened with the connection still held"
    );
    for waiter in waiters {
        let (waited, result) = waiter.await.unwrap();
        let err = result.expect_err("Redis is down");
        assert!(
            waited < Duration::from_secs(2),
            "a waiter took {waited:?}: {err}"
        );
    }
    drop(held);
}

/// Fault: every reply is held back 300 ms (a distant Redis). Load: requests 800 ms apart, so
/// every checkout finds an idle connection past the validation bypass, then 4 workers for 2 s.
/// Asserts: every request succeeds: the validation PING waits for a few round trips rather
/// than the 250 ms default, so live connections are not evicted as dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distant_redis_serves_sparse_and_steady_traffic() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(300)));
    let guard =
        unready_guard(config(&proxy.url(), "distant").checkout_timeout(Duration::from_secs(2)))
            .await;
    assert!(eventually(Duration::from_secs(3), || guard.is_ready()).await);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        timeout(Duration::from_secs(3), get_and_ping(&guard))
            .await
            .expect("bounded")
            .expect("a sparse request is served");
    }
    let app = service(guard.clone());
    let steady = drive_echo(&app, 24, 4).await;
    assert!(
        failures(&steady).is_empty(),
        "{:?}",
        failures(&steady).first()
    );
    assert_eq!(evictions("distant", "validation_failed"), 0.0);
}

/// Fault: Redis restarts and connections are killed under load, with `min_idle` and held
/// connections. Load: 16 workers through a pool of 4, holding each connection 5 ms. Asserts:
/// the server never sees more of the pool's connections than `max_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_holds_more_than_max_size_connections() {
    let mut server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "capped").max_size(4).min_idle(2)).await;
    let pool_clients = |server: &RedisServer| -> usize {
        let redis::Value::BulkString(list) = server.command(&["CLIENT", "LIST"]).unwrap() else {
            panic!("CLIENT LIST answers a bulk string")
        };
        String::from_utf8_lossy(&list)
            .lines()
            .filter(|l| l.contains(" name=capped "))
            .count()
    };
    let app = service(guard.clone());
    let mut most = 0;
    for round in 0..3 {
        let load = {
            let app = app.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let _ = call(&app, "/hold?ms=5").await;
                }
            })
        };
        let workers: Vec<_> = (0..15)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move {
                    for _ in 0..40 {
                        let _ = call(&app, "/hold?ms=5").await;
                    }
                })
            })
            .collect();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            most = most.max(pool_clients(&server));
            most = most.max(guard.state().connections as usize);
        }
        if round == 1 {
            let _ = server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        } else {
            tokio::task::block_in_place(|| server.restart()).unwrap();
        }
        for worker in workers {
            worker.await.unwrap();
        }
        load.await.unwrap();
        assert!(eventually(Duration::from_secs(3), || guard.is_ready()).await);
    }
    assert!(
        most <= 4,
        "the pool held {most} connections with max_size 4"
    );
}
