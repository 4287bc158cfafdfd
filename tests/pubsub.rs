//! Pub/sub through the faults of F1-F5: a subscriber through the fault proxy, a publisher
//! numbering its messages straight to Redis. Each fault must cost a reported gap and nothing
//! else: the subscription is made again within a second, every missing number falls inside a
//! gap the stream reported, nothing arrives twice or out of order, and nothing is left on
//! Redis once the subscriber is dropped.
#![cfg(all(feature = "testkit", feature = "prometheus"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use redis_guard::testkit::{FaultProxy, ProxyMode, RedisServer};
use redis_guard::{BreakerState, PubSubEvent, StartupMode, Subscriber, Subscription};

const CHANNEL: &str = "numbers";
/// How long after a fault the subscription must be back.
const BACK_WITHIN: Duration = Duration::from_secs(1);

/// What the subscriber saw: numbers in order, with gaps marked.
#[derive(Debug, PartialEq)]
enum Seen {
    Number(u64),
    Gap,
}

/// Publishes 1, 2, 3, ... every 2 ms until stopped; a number is used only once Redis accepted
/// it (a failed PUBLISH is sent again with the same number).
fn publish_numbers(server: &RedisServer, stop: Arc<AtomicBool>) -> Arc<AtomicU64> {
    let published = Arc::new(AtomicU64::new(0));
    let count = published.clone();
    let client = redis::Client::open(server.url()).unwrap();
    tokio::spawn(async move {
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if conn.is_none() {
                conn = client.get_multiplexed_async_connection().await.ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            let next = count.load(Ordering::Relaxed) + 1;
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(next)
                .query_async(c)
                .await;
            match sent {
                Ok(_) => count.store(next, Ordering::Relaxed),
                Err(_) => conn = None,
            }
        }
    });
    published
}

/// Reads events until `until` returns true on what was seen, or `limit` passes.
async fn read_until(
    subscriber: &mut Subscriber,
    seen: &mut Vec<(Instant, Seen)>,
    limit: Duration,
    until: impl Fn(&[(Instant, Seen)]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !until(seen) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, subscriber.next()).await {
            Ok(Some(PubSubEvent::Message(message))) => {
                let n: u64 = message.get_payload().unwrap();
                seen.push((Instant::now(), Seen::Number(n)));
            }
            Ok(Some(PubSubEvent::Gap(gap))) => {
                assert!(!gap.cause.is_empty());
                seen.push((Instant::now(), Seen::Gap));
            }
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
}

/// Setup: F1 restart, F2 `CLIENT KILL TYPE pubsub`, F4 RST of every proxied connection, F5
/// every proxied connection frozen (no FIN, no RST). Asserts, per fault: a gap is reported and
/// messages flow again within 1 s of the fault (of Redis being back, for the restart); over
/// the whole run, numbers only grow, and every missing number lies inside a reported gap; the
/// metric counts each resubscription; once the subscriber is dropped, no subscribed client is
/// left on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_f1_to_f5_reporting_every_gap() {
    let mut server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let pool = "pubsub-faults";
    let guard = guard(config(&proxy.url(), pool)).await;
    let mut subscriber = guard
        .subscribe(Subscription::new().channel(CHANNEL))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let published = publish_numbers(&server, stop.clone());
    let mut seen = Vec::new();
    let flowing = |seen: &[(Instant, Seen)]| {
        seen.iter()
            .filter(|(_, s)| matches!(s, Seen::Number(_)))
            .count()
            >= 20
    };
    read_until(&mut subscriber, &mut seen, Duration::from_secs(5), flowing).await;
    assert!(flowing(&seen), "messages flow: {seen:?}");

    for fault in ["F1 restart", "F2 CLIENT KILL", "F4 RST", "F5 freeze"] {
        let gaps_before = seen.iter().filter(|(_, s)| *s == Seen::Gap).count();
        match fault {
            "F1 restart" => server.restart().unwrap(),
            "F2 CLIENT KILL" => drop(server.command(&["CLIENT", "KILL", "TYPE", "pubsub"])),
            "F4 RST" => drop(proxy.reset_all().await),
            _ => drop(proxy.freeze_all().await),
        }
        let fault_over = Instant::now();
        let back = |seen: &[(Instant, Seen)]| {
            let gaps = seen.iter().filter(|(_, s)| *s == Seen::Gap).count();
            gaps > gaps_before && matches!(seen.last(), Some((_, Seen::Number(_))))
        };
        read_until(&mut subscriber, &mut seen, Duration::from_secs(5), back).await;
        assert!(
            back(&seen),
            "{fault}: a gap, then messages again: {:?}",
            &seen[seen.len().saturating_sub(5)..]
        );
        let resumed = seen.last().unwrap().0 - fault_over;
        assert!(
            resumed <= BACK_WITHIN,
            "{fault}: messages again after {resumed:?}"
        );
        read_until(
            &mut subscriber,
            &mut seen,
            Duration::from_millis(200),
            |_| false,
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut last = 0;
    let mut gap_since_last = false;
    for (_, event) in &seen {
        match event {
            Seen::Gap => gap_since_last = true,
            Seen::Number(n) => {
                assert!(*n > last, "{n} after {last}: out of order or twice");
                assert!(
                    *n == last + 1 || gap_since_last || last == 0,
                    "{} missing between {last} and {n} with no gap reported",
                    n - last - 1
                );
                last = *n;
                gap_since_last = false;
            }
        }
    }
    assert!(
        last + 1000 > published.load(Ordering::Relaxed),
        "kept up with the publisher"
    );
    assert_eq!(
        metric("redis_guard_pubsub_resubscriptions_total", pool, &[]),
        4.0
    );

    // Dropping the subscriber closes its connection: the proxy sees it go (the connections
    // frozen by F5 stay open there, as a black hole would keep them, and so does the pool's).
    let open_before = proxy.open_connections();
    drop(subscriber);
    let closed = eventually(Duration::from_secs(2), || {
        proxy.open_connections() + 1 == open_before
    })
    .await;
    assert!(
        closed,
        "the subscription's connection is closed once the subscriber is dropped"
    );
}

/// Setup: a pool started with `StartupMode::FailFast`, Redis down when subscribing. Asserts:
/// `subscribe` fails with the cause within the connect budget instead of hanging, as an
/// outage (503), not a bug (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_fail_fast_while_redis_is_down_fails_with_the_cause() {
    let mut server = RedisServer::start().unwrap();
    let builder = config(&server.url(), "pubsub-down").startup(StartupMode::FailFast);
    let guard = unready_guard(builder).await;
    server.stop();
    let started = Instant::now();
    let error = guard
        .subscribe(Subscription::new().channel(CHANNEL).pattern("events.*"))
        .await
        .expect_err("Redis is down");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        error.to_string().to_lowercase().contains("refused"),
        "{error}"
    );
    assert_eq!(error.status(), 503);
}

/// Setup: a lazily started pool, Redis down when subscribing; then Redis starts, and a
/// message is published. Asserts: `subscribe` returns a `Subscriber` at once (within
/// 500 ms), which subscribes in the background and receives the message once Redis is up
/// (within 5 s), as the pool itself starts lazily.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_subscription_made_while_redis_is_down_receives_once_redis_is_up() {
    let mut server = RedisServer::start().unwrap();
    server.stop();
    let guard = unready_guard(config(&server.url(), "pubsub-lazy")).await;
    let started = Instant::now();
    let mut subscriber = guard
        .subscribe(Subscription::new().channel(CHANNEL))
        .await
        .expect("a lazy pool subscribes in the background");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(guard.state().subscriptions, 1);
    server.start_again().unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = None;
    while received.is_none() && Instant::now() < deadline {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(7)
            .query_async(&mut publisher)
            .await
            .unwrap();
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(100), subscriber.next()).await
        {
            received = Some(event);
        }
    }
    match received {
        Some(PubSubEvent::Message(message)) => {
            assert_eq!(message.get_payload::<u64>().unwrap(), 7)
        }
        other => panic!("the message arrives once Redis is up: {other:?}"),
    }
}

/// Setup: a subscriber read as a `futures` `Stream` (`StreamExt::next`), three messages, then
/// `close()` on the pool. Asserts: the stream yields the three messages in order, then ends
/// (`None`) within a second of the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_a_stream_that_ends_when_the_pool_closes() {
    use futures_util::StreamExt;
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "pubsub-stream")).await;
    let mut stream = guard
        .subscribe(Subscription::new().channel(CHANNEL))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    for n in 1..=3u64 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(n)
            .query_async(&mut publisher)
            .await
            .unwrap();
    }
    for n in 1..=3u64 {
        match tokio::time::timeout(Duration::from_secs(2), StreamExt::next(&mut stream)).await {
            Ok(Some(PubSubEvent::Message(m))) => assert_eq!(m.get_payload::<u64>().unwrap(), n),
            other => panic!("message {n}: {other:?}"),
        }
    }
    guard.close(Duration::from_secs(1)).await;
    let ended = tokio::time::timeout(Duration::from_secs(1), StreamExt::next(&mut stream)).await;
    assert!(matches!(ended, Ok(None)), "the stream ends: {ended:?}");
}

/// Connect attempts the proxy accepts over `window` while it refuses every connection.
async fn attempts_while_refusing(proxy: &FaultProxy, window: Duration) -> (u64, usize) {
    proxy.set_mode(ProxyMode::Refuse);
    proxy.reset_all().await;
    let before = proxy.connections_accepted();
    let until = Instant::now() + window;
    let mut most_open = 0;
    while Instant::now() < until {
        most_open = most_open.max(proxy.open_connections());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (proxy.connections_accepted() - before, most_open)
}

/// Setup: a pool (`max_size` 8, `max_subscriptions` 100) behind the fault proxy; 200 callers
/// subscribe at once; then the proxy refuses every connection (and resets the open ones) for
/// 3 s, then lets them through again. The pool alone goes through the same 3 s first.
/// Asserts: 100 subscribe and 100 are refused at once with `SubscriptionLimit` (a 503); the
/// pool state and the gauge show 100; sockets through the proxy never exceed
/// `max_subscriptions + max_size`; while Redis refuses, the pool and its 100 subscribers
/// together make connect attempts at the pool's pace (at most twice the pool alone, plus
/// 10); once Redis accepts again, every subscriber reports a gap and receives messages
/// within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_pass_the_pools_connect_gate_and_are_bounded() {
    use redis_guard::{Error, UnavailableReason};
    const MAX_SUBSCRIPTIONS: u32 = 100;
    const MAX_SIZE: usize = 8;
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let pool = "pubsub-bounded";
    let builder = config(&proxy.url(), pool).max_subscriptions(MAX_SUBSCRIPTIONS);
    let guard = guard(builder).await;
    let window = Duration::from_secs(3);

    let (alone, _) = attempts_while_refusing(&proxy, window).await;
    proxy.set_mode(ProxyMode::Pass);
    assert!(eventually(Duration::from_secs(5), || guard.is_ready()).await);

    let calls: Vec<_> = (0..200)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move { guard.subscribe(Subscription::new().channel(CHANNEL)).await })
        })
        .collect();
    let mut subscribers = Vec::new();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(subscriber) => subscribers.push(subscriber),
            Err(
                error @ Error::Unavailable {
                    reason:
                        UnavailableReason::SubscriptionLimit {
                            max_subscriptions: 100,
                        },
                    ..
                },
            ) => {
                assert_eq!(error.status(), 503);
                assert!(error.to_string().contains("max_subscriptions"), "{error}");
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((subscribers.len(), refused), (100, 100));
    let state = guard.state();
    assert_eq!((state.subscriptions, state.max_subscriptions), (100, 100));
    assert!(
        state
            .to_string()
            .contains("100 subscriptions of at most 100"),
        "{state}"
    );
    let gauge = || metric("redis_guard_pubsub_subscriptions", pool, &[]) == 100.0;
    assert!(
        eventually(Duration::from_secs(3), gauge).await,
        "the gauge shows 100"
    );
    let bound = MAX_SUBSCRIPTIONS as usize + MAX_SIZE;
    assert!(
        proxy.open_connections() <= bound,
        "{} sockets",
        proxy.open_connections()
    );

    let (with_subscribers, most_open) = attempts_while_refusing(&proxy, window).await;
    println!(
        "connect attempts in {window:?} while refusing: pool alone {alone}, with 100 subscribers {with_subscribers}"
    );
    assert!(
        with_subscribers <= 2 * alone + 10,
        "{with_subscribers} connect attempts with subscribers, {alone} for the pool alone"
    );
    assert!(most_open <= bound, "{most_open} sockets while refusing");

    proxy.set_mode(ProxyMode::Pass);
    let stop = Arc::new(AtomicBool::new(false));
    publish_numbers(&server, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let mut gap = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, subscriber.next()).await {
                Ok(Some(PubSubEvent::Gap(_))) => gap = true,
                Ok(Some(PubSubEvent::Message(_))) if gap => break,
                Ok(Some(PubSubEvent::Message(_))) => {}
                other => panic!("subscriber {i}: a gap, then messages: {other:?}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        proxy.open_connections() <= bound,
        "{} sockets",
        proxy.open_connections()
    );
}

/// Setup: a subscriber, then `close()` on the pool. Asserts: the stream ends (`next()` is
/// `None`) at once, the connection leaves Redis, and a new subscription is refused as closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_ends_every_subscription() {
    use redis_guard::{Error, UnavailableReason};
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "pubsub-close")).await;
    let mut subscriber = guard
        .subscribe(Subscription::new().channel(CHANNEL))
        .await
        .unwrap();
    assert_eq!(guard.close(Duration::from_secs(1)).await, 0);
    let ended = tokio::time::timeout(Duration::from_secs(1), subscriber.next()).await;
    assert!(matches!(ended, Ok(None)), "the stream ends: {ended:?}");
    let gone = eventually(Duration::from_secs(2), || {
        match server.command(&["PUBSUB", "NUMSUB", CHANNEL]) {
            Ok(redis::Value::Array(reply)) => reply.get(1) == Some(&redis::Value::Int(0)),
            _ => false,
        }
    })
    .await;
    assert!(gone, "no subscriber left on Redis");
    let refused = guard.subscribe(Subscription::new().channel(CHANNEL)).await;
    assert!(matches!(
        refused,
        Err(Error::Unavailable {
            reason: UnavailableReason::Closed,
            ..
        })
    ));
}

/// Setup: a subscriber that reads nothing while 3,000 messages are published, then reads.
/// Asserts: it gets at most the queue's worth of old messages, then a gap, then new messages:
/// a consumer that falls behind costs a bounded queue and a reported gap, not memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_falls_behind_gets_a_gap_not_unbounded_memory() {
    let server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "pubsub-slow")).await;
    let mut subscriber = guard
        .subscribe(Subscription::new().channel(CHANNEL))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    for n in 1..=3000u64 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(n)
            .query_async(&mut publisher)
            .await
            .unwrap();
    }
    // Let the subscription notice the full queue and drop its connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut before_gap = 0;
    let mut gap = None;
    while gap.is_none() {
        match tokio::time::timeout(Duration::from_secs(2), subscriber.next()).await {
            Ok(Some(PubSubEvent::Message(_))) => before_gap += 1,
            Ok(Some(PubSubEvent::Gap(g))) => gap = Some(g),
            other => panic!("expected messages then a gap, got {other:?}"),
        }
    }
    assert!(
        before_gap <= redis_guard::pubsub::QUEUE_CAPACITY,
        "{before_gap} queued"
    );
    assert!(gap.unwrap().cause.contains("fell behind"));
    let _: i64 = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(4000)
        .query_async(&mut publisher)
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(2), subscriber.next()).await {
        Ok(Some(PubSubEvent::Message(m))) => assert_eq!(m.get_payload::<u64>().unwrap(), 4000),
        other => panic!("messages flow again: {other:?}"),
    }
}

/// Fault: Redis killed (SIGKILL) under a pool whose only user is a subscriber, then started
/// again 1 s later. No request meanwhile. Asserts: the pool is ready again (breaker closed)
/// within 2 s of Redis accepting connections, as it is without a subscriber: the
/// subscriber's reconnect, which moves the breaker to half-open, must not keep the prober
/// from closing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reconnecting_first_does_not_keep_the_pool_unready() {
    let mut server = RedisServer::start().unwrap();
    let guard = guard(config(&server.url(), "pubsub-ready")).await;
    let mut subscriber = guard
        .subscribe(Subscription::new().channel(CHANNEL))
        .await
        .unwrap();
    server.kill();
    let opened = eventually(Duration::from_secs(5), || {
        guard.breaker_state() == BreakerState::Open
    })
    .await;
    assert!(
        opened,
        "the outage opens the breaker: {:?}",
        guard.breaker_state()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start_again().unwrap();
    let back = Instant::now();
    // The subscriber subscribes again on its own, and reports the gap.
    let resubscribed = tokio::time::timeout(Duration::from_secs(5), subscriber.next()).await;
    assert!(
        matches!(resubscribed, Ok(Some(PubSubEvent::Gap(_)))),
        "the subscriber is back: {resubscribed:?}"
    );
    let ready = eventually(Duration::from_secs(2), || {
        guard.breaker_state() == BreakerState::Closed
    })
    .await;
    assert!(
        ready,
        "breaker {:?} {:?} after Redis came back; pool {}",
        guard.breaker_state(),
        back.elapsed(),
        guard.state()
    );
}
