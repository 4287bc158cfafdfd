//! Health-checked pub/sub: [`Subscriber`], from [`RedisGuard::subscribe`](crate::RedisGuard::subscribe).
//!
//! A subscription needs a connection of its own (a subscribed connection takes no other
//! commands), so it never comes from the pool. A task owns it: it PINGs it every
//! [`HEALTH_PING_INTERVAL`] (Redis answers a PING in subscribed mode), so a frozen socket is
//! found within about half a second; on a restart, a `CLIENT KILL`, a reset or a freeze it
//! reconnects (at the pool's reconnect pace while Redis refuses) and subscribes again to every
//! channel and pattern. Messages published while it was away are lost (pub/sub keeps
//! nothing): the stream says so with [`PubSubEvent::Gap`] before the first message after it.
//!
//! Messages wait in a bounded queue of [`QUEUE_CAPACITY`]. When a consumer falls behind so far
//! that the queue is full, the subscription is dropped (memory stays bounded) and made again
//! once the consumer has taken a message: that shows as a gap too. Closing or dropping the
//! pool ends the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::PubSub;
use redis::{Msg, RedisError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::clock::Backoff;
use crate::error::{Error, UnavailableReason};
use crate::inner::PoolInner;
use crate::shared::Shared;
use crate::transport::LinkHealth;

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

impl Drop for Subscriber {
    fn drop(&mut self) {
        // The task owns the connection: aborting it drops the socket.
        self.task.abort();
    }
}

/// Subscribes once (the caller's first subscription must work, or the caller hears why), then
/// hands the connection to a task that keeps it. Refused like a checkout while the pool is
/// closed or its breaker open.
pub(crate) async fn subscribe(
    inner: &Arc<PoolInner>,
    subscription: Subscription,
) -> Result<Subscriber, Error> {
    let shared = inner.shared.clone();
    if shared.is_closing() {
        return Err(inner.unavailable(UnavailableReason::Closed));
    }
    if shared.admit().is_none() {
        return Err(inner.rejected());
    }
    let budget = shared.config().connect_timeout();
    let cannot_connect =
        |cause: String| inner.unavailable(UnavailableReason::CannotConnect { cause });
    let subscribed = match tokio::time::timeout(budget, open(inner, &subscription)).await {
        Ok(Ok(subscribed)) => subscribed,
        // From the pool's own sockets and handshakes: no URL, no password.
        Ok(Err(e)) => return Err(cannot_connect(e.to_string())),
        Err(_) => {
            return Err(cannot_connect(format!(
                "subscribing timed out after {budget:?}"
            )));
        }
    };
    let (sender, events) = mpsc::channel(QUEUE_CAPACITY);
    let task = tokio::spawn(keep(
        Arc::downgrade(inner),
        shared,
        subscription,
        subscribed,
        sender,
    ));
    Ok(Subscriber {
        events,
        task: task.abort_handle(),
    })
}

/// A subscribed connection, and the health of its socket (which tells why it closed).
struct Subscribed {
    pubsub: PubSub,
    link: Arc<LinkHealth>,
}

/// A connection, subscribed to everything in `subscription`.
async fn open(inner: &PoolInner, subscription: &Subscription) -> Result<Subscribed, RedisError> {
    let shared = &inner.shared;
    let (stream, link) = inner.manager.open_subscription_stream().await?;
    let mut pubsub = PubSub::new(shared.config().connection.redis_settings(), stream).await?;
    if !subscription.channels.is_empty() {
        pubsub.subscribe(&subscription.channels).await?;
    }
    if !subscription.patterns.is_empty() {
        pubsub.psubscribe(&subscription.patterns).await?;
    }
    link.establish();
    Ok(Subscribed { pubsub, link })
}

/// Forwards messages, PINGs while quiet, and subscribes again whenever the connection is lost,
/// until the subscriber is dropped or the pool closes (which ends the stream).
async fn keep(
    pool: std::sync::Weak<PoolInner>,
    shared: Arc<Shared>,
    subscription: Subscription,
    mut subscribed: Subscribed,
    events: mpsc::Sender<PubSubEvent>,
) {
    let config = shared.config();
    let mut backoff = Backoff::new(
        config.reconnect_backoff_min(),
        config.reconnect_backoff_max(),
    );
    loop {
        let (cause, alive_at) = match forward(&shared, &mut subscribed, &events).await {
            Lost::Consumer => return,
            Lost::Connection { cause, alive_at } => (cause, alive_at),
        };
        drop(subscribed);
        tracing::info!(pool = %shared.name(), %cause, "subscription lost; subscribing again");
        // Room in the queue first: a consumer that fell behind catches up before new messages
        // come, and the gap is reported in that room.
        let room = tokio::select! {
            room = events.reserve() => match room {
                Ok(room) => room,
                Err(_) => return,
            },
            () = shared.closed() => return,
        };
        // Again at once, then at the pool's reconnect pace while Redis refuses.
        let mut pause = Duration::ZERO;
        subscribed = loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = events.closed() => return,
                () = shared.closed() => return,
            }
            let Some(inner) = pool.upgrade() else { return };
            let budget = config.connect_timeout();
            let attempt = tokio::time::timeout(budget, open(&inner, &subscription)).await;
            drop(inner);
            match attempt {
                Ok(Ok(subscribed)) => break subscribed,
                Ok(Err(e)) => {
                    tracing::debug!(pool = %shared.name(), error = %e, "subscribing again failed")
                }
                Err(_) => tracing::debug!(pool = %shared.name(), "subscribing again timed out"),
            }
            pause = backoff.pause();
        };
        backoff.reset();
        let lasted = alive_at.elapsed();
        shared.resubscribed();
        tracing::info!(pool = %shared.name(), ?lasted, "subscribed again");
        room.send(PubSubEvent::Gap(Gap { cause, lasted }));
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
    shared: &Shared,
    subscribed: &mut Subscribed,
    events: &mpsc::Sender<PubSubEvent>,
) -> Lost {
    let Subscribed { pubsub, link } = subscribed;
    let mut alive_at = Instant::now();
    let lost = |cause: String, alive_at: Instant| Lost::Connection { cause, alive_at };
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(HEALTH_PING_INTERVAL, next_message(pubsub)) => next,
            () = shared.closed() => return Lost::Consumer,
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
                let timeout = shared.validation_timeout();
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
