//! Health-checked pub/sub: [`Subscriber`], from [`RedisGuard::subscribe`](crate::RedisGuard::subscribe).
//!
//! A subscription needs a connection of its own (a subscribed connection takes no other
//! commands), so it never comes from the pool. A task owns it: it PINGs it every
//! [`HEALTH_PING_INTERVAL`] (Redis answers a PING in subscribed mode), so a frozen socket is
//! found within about half a second; on a restart, a `CLIENT KILL`, a reset or a freeze it
//! reconnects and subscribes again to every channel and pattern. Every connect passes the
//! pool's one connect gate, so a Redis that refuses sees one attempt per reconnect pause from
//! the pool and all its subscribers together; the subscriptions a pool holds are bounded by
//! `max_subscriptions`. Messages published while it was away are lost (pub/sub keeps
//! nothing): the stream says so with [`PubSubEvent::Gap`] before the first message after it.
//!
//! Messages wait in a bounded queue of [`QUEUE_CAPACITY`]. When a consumer falls behind so far
//! that the queue is full, the subscription is dropped (memory stays bounded) and made again
//! once the consumer has taken a message: that shows as a gap too. Closing or dropping the
//! pool ends the stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use redis::aio::PubSub;
use redis::{Msg, RedisError};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::AbortHandle;
use tracing::instrument::WithSubscriber;

use crate::breaker::BreakerState;
use crate::config::StartupMode;
use crate::error::{Error, UnavailableReason};
use crate::inner::PoolInner;
use crate::manager::{Attempt, GuardManager, SubscriptionLink};
use crate::pool_core::PoolCore;
use crate::redis_error::is_infrastructure_failure;
use crate::sanitize::server_text;
use crate::throttle::Throttle;

/// How often an idle subscription is PINGed.
pub const HEALTH_PING_INTERVAL: Duration = Duration::from_millis(250);
/// Messages held for a consumer that has not taken them yet.
pub const QUEUE_CAPACITY: usize = 1024;

/// Channels and patterns to subscribe to.
///
/// ```
/// let subscription = redis_guard::Subscription::new()
///     .channel("orders")
///     .pattern("events.*");
/// # drop(subscription);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    channels: Vec<String>,
    patterns: Vec<String>,
}

impl Subscription {
    /// Nothing yet: add channels and patterns.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to `channel` (`SUBSCRIBE`).
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channels.push(channel.into());
        self
    }

    /// Subscribes to channels matching `pattern` (`PSUBSCRIBE`).
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.patterns.push(pattern.into());
        self
    }
}

/// What a [`Subscriber`] receives.
#[derive(Debug)]
#[non_exhaustive]
pub enum PubSubEvent {
    /// A published message.
    Message(Msg),
    /// The subscription was lost and has been made again: messages published in between were
    /// missed. Comes before the first message after the gap.
    Gap(Gap),
}

/// A break in a subscription: see [`PubSubEvent::Gap`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Gap {
    /// Why the subscription was lost (redacted: no host, no credential).
    pub cause: String,
    /// From the old subscription's last sign of life (a message, or a PING reply) to the new
    /// subscription: messages published in this time may have been missed.
    pub lasted: Duration,
}

/// A subscription that survives restarts, kills, resets and frozen sockets; see
/// [`RedisGuard::subscribe`](crate::RedisGuard::subscribe). Dropping it unsubscribes and
/// closes its connection.
///
/// ```no_run
/// use redis_guard::{PubSubEvent, Subscription};
/// # async fn demo(guard: redis_guard::RedisGuard) -> Result<(), redis_guard::Error> {
/// let mut orders = guard.subscribe(Subscription::new().channel("orders")).await?;
/// while let Some(event) = orders.next().await {
///     match event {
///         PubSubEvent::Message(message) => {
///             let payload: String = message.get_payload()?;
///             println!("{}: {payload}", message.get_channel_name());
///         }
///         // Re-read what the messages would have told (the orders table, a stream).
///         PubSubEvent::Gap(gap) => println!("missed messages for {:?}", gap.lasted),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscriber {
    events: mpsc::Receiver<PubSubEvent>,
    task: AbortHandle,
}

impl Subscriber {
    /// The next message or gap; `None` once the pool is closed.
    pub async fn next(&mut self) -> Option<PubSubEvent> {
        self.events.recv().await
    }
}

/// The events as a [`Stream`](futures_core::Stream), ending when the pool closes: for
/// server-sent events, say, without a task or a channel of your own. With axum:
///
/// ```no_run
/// use std::convert::Infallible;
///
/// use axum::extract::State;
/// use axum::response::sse::{Event, Sse};
/// use futures_util::{Stream, StreamExt};
/// use redis_guard::{PubSubEvent, RedisGuard, Subscription};
///
/// async fn orders(
///     State(guard): State<RedisGuard>,
/// ) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, redis_guard::Error> {
///     // A 503 when Redis is unavailable or every subscription is taken.
///     let subscriber = guard.subscribe(Subscription::new().channel("orders")).await?;
///     let events = subscriber.filter_map(|event| async move {
///         match event {
///             PubSubEvent::Message(message) => {
///                 let payload: String = message.get_payload().ok()?;
///                 Some(Ok(Event::default().data(payload)))
///             }
///             // Tell the page to reload what it may have missed.
///             PubSubEvent::Gap(_) => Some(Ok(Event::default().event("gap").data(""))),
///             _ => None,
///         }
///     });
///     Ok(Sse::new(events))
/// }
/// # let _: axum::Router<RedisGuard> = axum::Router::new().route("/orders", axum::routing::get(orders));
/// ```
///
/// Each subscriber holds a Redis connection, and a pool holds at most
/// [`max_subscriptions`](crate::ConfigBuilder::max_subscriptions): for many clients, subscribe
/// once and fan the events out (a `tokio::sync::broadcast`).
impl futures_core::Stream for Subscriber {
    type Item = PubSubEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PubSubEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // The task owns the connection: aborting it drops the socket.
        self.task.abort();
    }
}

/// Takes one of the pool's subscription slots, then subscribes as the pool's start-up mode
/// says (see [`RedisGuard::subscribe`](crate::RedisGuard::subscribe)) and hands the
/// connection, or the work of making it, to a task that keeps it.
pub(crate) async fn subscribe(
    inner: &Arc<PoolInner>,
    subscription: Subscription,
) -> Result<Subscriber, Error> {
    let core = inner.core.clone();
    if core.is_closing() {
        return Err(inner.unavailable(UnavailableReason::Closed));
    }
    let Ok(slot) = inner.subscription_slots.clone().try_acquire_owned() else {
        let max_subscriptions = core.config().max_subscriptions();
        // A handler that subscribes per request meets this at the request rate.
        static REFUSED: Throttle = Throttle::new(Duration::from_secs(10));
        if let Some(held_back) = REFUSED.admit() {
            tracing::warn!(pool = %core.name(), max_subscriptions, similar_lines_held_back = held_back, "subscription refused: every subscription slot is taken");
        }
        return Err(inner.unavailable(UnavailableReason::SubscriptionLimit { max_subscriptions }));
    };
    let manager = &inner.manager;
    let connect_timeout = core.config().connect_timeout();
    let first = match core.config().startup() {
        // Subscribed before returning while Redis answers, so a message published after
        // `subscribe` returned is received; in the background once Redis is known to be
        // unreachable, without holding up the caller.
        StartupMode::Lazy => {
            let answering =
                !core.connects_failing() && core.breaker_state() == BreakerState::Closed;
            if answering {
                match open(
                    manager,
                    &subscription,
                    Some(Instant::now() + connect_timeout),
                )
                .await
                {
                    Ok(pubsub) => Some(pubsub),
                    Err(NotSubscribed::Refused(e)) => return Err(e.into()),
                    Err(NotSubscribed::NoConnection(cause) | NotSubscribed::Lost(cause)) => {
                        tracing::debug!(pool = %core.name(), %cause, "cannot subscribe yet; subscribing in the background");
                        None
                    }
                }
            } else {
                None
            }
        }
        StartupMode::FailFast => {
            if core.admit().is_none() {
                return Err(inner.rejected());
            }
            let deadline = Instant::now() + connect_timeout;
            Some(subscribed_by(inner, &subscription, Some(deadline), false).await?)
        }
        // A limit too large for the clock means "until it works".
        StartupMode::WaitFor(limit) => {
            let deadline = Instant::now().checked_add(limit);
            Some(subscribed_by(inner, &subscription, deadline, true).await?)
        }
    };
    let (sender, events) = mpsc::channel(QUEUE_CAPACITY);
    let keeping = keep(manager.clone(), core, subscription, first, sender, slot);
    let task = tokio::spawn(keeping.with_current_subscriber());
    Ok(Subscriber {
        events,
        task: task.abort_handle(),
    })
}

/// The caller's first subscription by `deadline` (none: until it works): one attempt, or
/// attempts at the gate's pace if `retry`.
async fn subscribed_by(
    inner: &PoolInner,
    subscription: &Subscription,
    deadline: Option<Instant>,
    retry: bool,
) -> Result<SubscriptionLink, Error> {
    let before_deadline = || deadline.is_none_or(|deadline| Instant::now() < deadline);
    loop {
        let cause = match open(&inner.manager, subscription, deadline).await {
            Ok(pubsub) => return Ok(pubsub),
            Err(NotSubscribed::Refused(e)) => return Err(e.into()),
            Err(NotSubscribed::NoConnection(_)) if retry && before_deadline() => continue,
            Err(NotSubscribed::Lost(_)) if retry && before_deadline() => {
                let pause = inner.core.config().reconnect_backoff_min();
                let until = deadline.map_or(pause, |d| pause.min(d - Instant::now()));
                tokio::time::sleep(until).await;
                continue;
            }
            Err(NotSubscribed::NoConnection(cause) | NotSubscribed::Lost(cause)) => cause,
        };
        return Err(inner.unavailable(UnavailableReason::CannotConnect { cause }));
    }
}

/// Why a subscription was not made.
enum NotSubscribed {
    /// No connection: the connect attempt failed, or could not start by the deadline (the
    /// gate paces the next one). Redacted: no host, no credential.
    NoConnection(String),
    /// Connected, and the connection failed while subscribing.
    Lost(String),
    /// Redis answered the `SUBSCRIBE` with an error (an ACL that does not grant the channel):
    /// waiting does not help.
    Refused(RedisError),
}

/// A connection through the pool's connect gate, by `deadline` if given, subscribed to
/// everything in `subscription`.
async fn open(
    manager: &GuardManager,
    subscription: &Subscription,
    deadline: Option<Instant>,
) -> Result<SubscriptionLink, NotSubscribed> {
    let SubscriptionLink { mut pubsub, link } = match manager.attempt_subscription(deadline).await {
        Attempt::Connected(opened) => opened,
        // From the pool's own sockets and handshakes: no URL, no password.
        Attempt::Failed(e) => return Err(NotSubscribed::NoConnection(e.to_string())),
        Attempt::Skipped => {
            let cause = manager
                .core()
                .last_connect_error()
                .unwrap_or_else(|| "no connect attempt could start before the deadline".to_owned());
            return Err(NotSubscribed::NoConnection(cause));
        }
    };
    let timeout = manager.core().config().response_timeout();
    let subscribing = async {
        if !subscription.channels.is_empty() {
            pubsub.subscribe(&subscription.channels).await?;
        }
        if !subscription.patterns.is_empty() {
            pubsub.psubscribe(&subscription.patterns).await?;
        }
        Ok::<_, RedisError>(())
    };
    match tokio::time::timeout(timeout, subscribing).await {
        Ok(Ok(())) => Ok(SubscriptionLink { pubsub, link }),
        Ok(Err(e)) if is_infrastructure_failure(&e) => Err(NotSubscribed::Lost(e.to_string())),
        Ok(Err(e)) => Err(NotSubscribed::Refused(e)),
        Err(_) => Err(NotSubscribed::Lost(format!(
            "no reply to SUBSCRIBE within {timeout:?}"
        ))),
    }
}

/// How long a subscription refused by Redis (an error reply to `SUBSCRIBE`) waits before it
/// asks again: an operator fixes that, not time, and asking every reconnect pause would
/// open a connection per subscriber five times a second.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

/// Forwards messages, PINGs while quiet, and subscribes again whenever the connection is lost,
/// until the subscriber is dropped or the pool closes (which ends the stream). Subscribes
/// first if `first` is `None` (Redis was unreachable when the caller subscribed). Holds the
/// subscription's `_slot` to the end.
async fn keep(
    manager: GuardManager,
    core: Arc<PoolCore>,
    subscription: Subscription,
    first: Option<SubscriptionLink>,
    events: mpsc::Sender<PubSubEvent>,
    _slot: OwnedSemaphorePermit,
) {
    let mut pubsub = match first {
        Some(pubsub) => pubsub,
        None => match subscribe_again(&manager, &core, &subscription, &events).await {
            Some(pubsub) => {
                tracing::info!(pool = %core.name(), "subscribed");
                pubsub
            }
            None => return,
        },
    };
    loop {
        let (cause, alive_at) = match forward(&core, &mut pubsub, &events).await {
            Lost::Consumer => return,
            Lost::Connection { cause, alive_at } => (cause, alive_at),
        };
        drop(pubsub);
        // A restart loses every subscription at once: one line per interval, however many
        // subscribers the application holds.
        static LOST: Throttle = Throttle::new(Duration::from_secs(10));
        match LOST.admit() {
            Some(held_back) => {
                tracing::info!(pool = %core.name(), cause = %server_text(&cause), similar_lines_held_back = held_back, "subscription lost; subscribing again")
            }
            None => {
                tracing::debug!(pool = %core.name(), cause = %server_text(&cause), "subscription lost; subscribing again")
            }
        }
        // Room in the queue first: a consumer that fell behind catches up before new messages
        // come, and the gap is reported in that room.
        let room = tokio::select! {
            room = events.reserve() => match room {
                Ok(room) => room,
                Err(_) => return,
            },
            () = core.closed() => return,
        };
        pubsub = match subscribe_again(&manager, &core, &subscription, &events).await {
            Some(pubsub) => pubsub,
            None => return,
        };
        let lasted = alive_at.elapsed();
        core.resubscribed();
        static RESUBSCRIBED: Throttle = Throttle::new(Duration::from_secs(10));
        match RESUBSCRIBED.admit() {
            Some(held_back) => {
                tracing::info!(pool = %core.name(), ?lasted, similar_lines_held_back = held_back, "subscribed again")
            }
            None => tracing::debug!(pool = %core.name(), ?lasted, "subscribed again"),
        }
        room.send(PubSubEvent::Gap(Gap { cause, lasted }));
    }
}

/// Subscribes on a new connection until it works; `None` once the subscriber is dropped or
/// the pool closes. The pool's connect gate paces the attempts while Redis refuses, however
/// many subscribers wait.
async fn subscribe_again(
    manager: &GuardManager,
    core: &PoolCore,
    subscription: &Subscription,
    events: &mpsc::Sender<PubSubEvent>,
) -> Option<SubscriptionLink> {
    let mut refusal = None;
    loop {
        let attempt = tokio::select! {
            attempt = open(manager, subscription, None) => attempt,
            () = events.closed() => return None,
            () = core.closed() => return None,
        };
        let pause = match attempt {
            Ok(pubsub) => return Some(pubsub),
            Err(NotSubscribed::NoConnection(cause)) => {
                tracing::debug!(pool = %core.name(), %cause, "subscribing again failed");
                continue;
            }
            Err(NotSubscribed::Lost(cause)) => {
                tracing::debug!(pool = %core.name(), %cause, "subscribing again failed");
                core.config().reconnect_backoff_min()
            }
            Err(NotSubscribed::Refused(e)) => {
                let error = e.to_string();
                if refusal.as_ref() != Some(&error) {
                    tracing::warn!(pool = %core.name(), %error, "redis refused the subscription; asking again every {REFUSED_RETRY:?}");
                }
                refusal = Some(error);
                REFUSED_RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = events.closed() => return None,
            () = core.closed() => return None,
        }
    }
}

enum Lost {
    /// The subscriber was dropped, or the pool closed.
    Consumer,
    /// The connection closed, failed or stopped answering PINGs, or the consumer fell behind.
    /// `alive_at`: its last sign of life (a message or a PING reply), where the gap may begin.
    Connection { cause: String, alive_at: Instant },
}

/// Forwards messages until the connection is lost, the consumer falls behind (the queue is
/// full: the connection is dropped rather than let redis-rs buffer without bound), nobody
/// listens or the pool closes.
async fn forward(
    core: &PoolCore,
    subscribed: &mut SubscriptionLink,
    events: &mpsc::Sender<PubSubEvent>,
) -> Lost {
    let SubscriptionLink { pubsub, link } = subscribed;
    let mut alive_at = Instant::now();
    let lost = |cause: String, alive_at: Instant| Lost::Connection { cause, alive_at };
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(HEALTH_PING_INTERVAL, next_message(pubsub)) => next,
            () = core.closed() => return Lost::Consumer,
        };
        match next {
            Ok(Some(message)) => {
                alive_at = Instant::now();
                match events.try_send(PubSubEvent::Message(message)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let cause = format!(
                            "the subscriber fell behind ({QUEUE_CAPACITY} messages waiting)"
                        );
                        return lost(cause, alive_at);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Lost::Consumer,
                }
            }
            Ok(None) => {
                let cause = match link.too_large() {
                    Some(too_large) => format!("a message was dropped: {too_large}"),
                    None => "the connection closed".into(),
                };
                return lost(cause, alive_at);
            }
            Err(_) if events.is_closed() => return Lost::Consumer,
            Err(_) => {
                if alive_at.elapsed() < HEALTH_PING_INTERVAL {
                    continue;
                }
                let timeout = core.validation_timeout();
                match tokio::time::timeout(timeout, pubsub.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => alive_at = Instant::now(),
                    Ok(Err(e)) => return lost(e.to_string(), alive_at),
                    Err(_) => return lost(format!("no PING reply within {timeout:?}"), alive_at),
                }
            }
        }
    }
}

/// The next message on the subscription; `None` when the connection closed.
async fn next_message(pubsub: &mut PubSub) -> Option<Msg> {
    use futures_core::Stream;
    let messages = pubsub.on_message();
    let mut messages = std::pin::pin!(messages);
    std::future::poll_fn(|cx| messages.as_mut().poll_next(cx)).await
}
