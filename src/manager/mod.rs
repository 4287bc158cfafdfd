//! [`GuardManager`]: how connections are opened, paced, checked and retired.
//!
//! Every connect of a pool (bb8 filling a slot, start-up, the prober, a subscription's
//! connection) passes one gate. While
//! connects succeed, a few run at once (a pool refilling after a failover needs dozens, and
//! one at a time that takes a quarter of a second under load); once one fails, one attempt is
//! in flight at a time, and after two failed attempts in a row the next one waits out a
//! jittered backoff, whoever asks for it. However many requests wait on a Redis that refuses, it sees
//! at most one connect per backoff pause from this pool, and a waiter sleeps until an outcome
//! rather than spinning.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::instrument::WithSubscriber;

use crate::clock::Backoff;
use crate::config::SetUpConnection;
use crate::connection::{GuardConnection, Peer, Server};
use crate::pool_core::PoolCore;
use crate::sanitize::server_text;
use crate::sentinel::Placement;
use crate::transport::{self, BoxedStream, LinkHealth, LinkState, PeerProbe, TrackedStream};
use failure::{ConnectFailure, tls_failure};
use gate::Gate;

mod failure;
mod gate;

/// A connection checked out of bb8: goes back to it when dropped.
pub(crate) type Bb8Connection = bb8::PooledConnection<'static, GuardManager>;

/// The `bb8::ManageConnection` behind a [`RedisGuard`](crate::RedisGuard).
///
/// Unlike bb8-redis's `RedisConnectionManager`, it opens the socket itself (keepalive,
/// `TCP_NODELAY`, `TCP_USER_TIMEOUT`, a connect timeout), proves each new connection with a
/// PING, paces reconnects, and its `has_broken` really answers: a connection whose socket
/// closed, that failed a command, or that carries session state is not put back. The pool,
/// not bb8, validates at checkout, so that a recently used connection skips the PING.
#[derive(Debug, Clone)]
pub(crate) struct GuardManager {
    core: Arc<PoolCore>,
    gate: Arc<Gate>,
    /// The subscriber current where the pool was created: bb8 runs connects in tasks of its
    /// own, whose lines would otherwise go to the global subscriber, not the service's.
    log_to: tracing::Dispatch,
}

/// How many times one attempt starts over because the primary moved under it: moves come
/// seconds apart, so more within one attempt means the sentinels disagree, and the attempt
/// ends with what it found.
const MAX_RESTARTS: u32 = 3;

/// A socket opened to Redis, before the Redis handshake.
struct Opened {
    stream: BoxedStream,
    /// The TCP (or unix) socket under any TLS, for EOF and reset checks.
    probe: PeerProbe,
    server: Server,
    placement: Option<Placement>,
}

/// When an attempt is no longer wanted by the time its turn at the gate comes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Skip {
    /// Always wanted (start-up).
    Never,
    /// Another attempt that ended after this instant answered the question already (the
    /// prober only wants to know whether Redis accepts connections).
    IfAnsweredSince(Instant),
    /// For bb8, on behalf of a waiting checkout: not if nobody waits any more (after a burst,
    /// queued attempts would otherwise go on at the reconnect pace for nobody).
    IfNobodyWaits,
}

/// What one pass through the connect gate came to: a pooled connection, or a subscription's.
#[derive(Debug)]
pub(crate) enum Attempt<C = Box<GuardConnection>> {
    Connected(C),
    Failed(RedisError),
    /// Not tried: the pool is closing, the deadline falls before the next allowed attempt,
    /// or another attempt already answered the question.
    Skipped,
}

impl GuardManager {
    pub(crate) fn new(core: Arc<PoolCore>) -> Self {
        let config = core.config();
        let backoff = Backoff::new(
            config.reconnect_backoff_min(),
            config.reconnect_backoff_max(),
        );
        Self {
            core,
            gate: Arc::new(Gate::new(backoff)),
            log_to: tracing::dispatcher::get_default(tracing::Dispatch::clone),
        }
    }

    /// The pool's shared state.
    pub(crate) fn core(&self) -> &PoolCore {
        &self.core
    }

    /// One connect attempt for the pool through the gate, finished by `deadline` if given,
    /// unless `skip` says it is no longer wanted when its turn comes.
    pub(crate) async fn attempt(&self, deadline: Option<Instant>, skip: Skip) -> Attempt {
        self.attempt_to::<ForThePool>(deadline, skip).await
    }

    /// One connect attempt for a subscription through the same gate as the pool's, finished
    /// by `deadline` if given: its pacing holds however many subscribers reconnect, and its
    /// outcome counts toward the breaker like any connect's.
    pub(crate) async fn attempt_subscription(
        &self,
        deadline: Option<Instant>,
    ) -> Attempt<SubscriptionLink> {
        self.attempt_to::<ForASubscription>(deadline, Skip::Never)
            .await
    }

    /// One attempt through the gate to open what `O` opens. A turn not had by `deadline`
    /// skips the attempt.
    ///
    /// A primary move (Sentinel) supersedes the attempt: a backoff earned by the old primary
    /// ends, a connect in flight to it is dropped, and a failure that ends after the move is
    /// neither counted nor paced. The attempt starts over at once, toward the new primary.
    async fn attempt_to<O: Opens>(
        &self,
        deadline: Option<Instant>,
        skip: Skip,
    ) -> Attempt<O::Opened> {
        let core = &self.core;
        if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
            return Attempt::Skipped;
        }
        let no_turn_after = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        let _turn = tokio::select! {
            turn = self.gate.turn() => turn,
            () = core.closed() => return Attempt::Skipped,
            () = no_turn_after => return Attempt::Skipped,
        };
        // Subscribed before the backoff is read: a move from here on ends the wait.
        let mut topology = core.topology();
        if let Some(at) = core.next_connect_at()
            && at > Instant::now()
        {
            if deadline.is_some_and(|deadline| at >= deadline) {
                return Attempt::Skipped;
            }
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                Ok(()) = topology.changed() => {}
                () = core.closed() => return Attempt::Skipped,
            }
        }
        let unwanted = match skip {
            Skip::Never => false,
            Skip::IfAnsweredSince(since) => self
                .gate
                .pace()
                .last_outcome_at
                .is_some_and(|last| last > since),
            Skip::IfNobodyWaits => core.waiting() == 0,
        };
        if unwanted || core.is_closing() {
            return Attempt::Skipped;
        }
        let mut restarts = 0;
        let (failure, started) = loop {
            let generation = *topology.borrow_and_update();
            let started = Instant::now();
            let id = core.next_connection_id();
            let mut budget = core.config().connect_timeout();
            if let Some(deadline) = deadline {
                budget = budget.min(deadline.saturating_duration_since(Instant::now()));
            }
            let connecting = tokio::time::timeout(budget, O::open(self, id, started + budget));
            // A pool that closes stops waiting for a connect it no longer wants.
            let connected = tokio::select! {
                connected = connecting => connected,
                Ok(()) = topology.changed(), if restarts < MAX_RESTARTS => {
                    restarts += 1;
                    tracing::debug!(pool = %core.name(), "the primary moved during a connect: connecting to the new one");
                    continue;
                }
                () = core.closed() => return Attempt::Skipped,
            };
            let failure = match connected {
                Ok(Ok(conn)) => {
                    self.gate.pace().succeeded();
                    core.connected(id, O::JOINS_THE_POOL);
                    return Attempt::Connected(conn);
                }
                Ok(Err(failure)) => failure.unwrap_tls(),
                Err(_) => ConnectFailure::Redis(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {budget:?}"),
                ))),
            };
            let superseded =
                matches!(failure, ConnectFailure::Moved(_)) || *topology.borrow() != generation;
            if !superseded || restarts >= MAX_RESTARTS || core.is_closing() {
                break (failure, started);
            }
            restarts += 1;
            tracing::debug!(pool = %core.name(), error = %server_text(&failure), "a connect to the old primary failed after it moved: connecting to the new one");
        };
        let pause = self.gate.pace().failed();
        // Errors from our own sockets and handshakes never contain the URL or password.
        let (kind, decisive) = (failure.kind(), failure.is_decisive());
        let counts = failure.counts_against_redis();
        core.connect_failed(kind, failure.to_string(), pause, decisive, counts, started);
        Attempt::Failed(failure.into())
    }

    /// Opens a connection and proves it, all of it (socket, TLS, handshake, first PING, the
    /// set-up hook) within the connect budget ending at `deadline`: a server slow to greet
    /// has the whole connect timeout, not the response timeout of one command.
    async fn open_and_ping(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<GuardConnection, ConnectFailure> {
        let mut conn = self.open(id, deadline).await?;
        let config = self.core.config();
        if let Err(e) = conn.introduce(config.name()).await {
            return Err(match conn.is_on_replica() {
                true => ConnectFailure::Replica(server_text(&e)),
                false => {
                    let line = conn.turned_away().map(server_text);
                    line.map_or(e.into(), ConnectFailure::TurnedAway)
                }
            });
        }
        if let Some(hook) = &config.on_connect {
            // A panic in the user's hook must not unwind through bb8, which would lose the
            // pool slot; it is a failed connect like any other.
            let id = conn.connection_id();
            AssertUnwindSafe(hook(&mut SetUpConnection::new(&mut conn, id)))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(RedisError::from((
                        ErrorKind::Client,
                        "the on_connect hook panicked",
                    )))
                })?;
        }
        if conn.on_demoted_primary() {
            return Err(ConnectFailure::Moved(
                "the primary moved while the connection was opened".to_owned(),
            ));
        }
        conn.established()?;
        if self.core.read_only().start_learning() {
            tokio::spawn(self.clone().learn_commands());
        }
        Ok(conn)
    }

    /// Learns which commands only read, on a connection of its own that never joins the pool:
    /// the `COMMAND` reply is large, and must hold up no caller.
    pub(crate) async fn learn_commands(self) {
        let core = &self.core;
        let budget = core.config().connect_timeout();
        match tokio::time::timeout(budget, self.open(0, Instant::now() + budget)).await {
            Ok(Ok(conn)) => {
                let timeout = core.config().response_timeout();
                core.read_only()
                    .learn(conn.background_handle(), timeout)
                    .await;
            }
            _ => core.read_only().learning_failed(),
        }
    }

    async fn open(&self, id: u64, deadline: Instant) -> Result<GuardConnection, ConnectFailure> {
        let Opened {
            stream,
            probe,
            server,
            placement,
        } = self.open_stream(Some(deadline)).await?;
        let link = Arc::new(self.core.link_opened());
        let max_reply_size = self.core.config().max_reply_size();
        let stream = TrackedStream::new(stream, link.clone(), max_reply_size);
        let probe = Arc::new(probe);
        let peer = Peer { server, placement };
        let handshake = self.handshake(stream, link.clone(), probe.clone(), id, peer, deadline);
        handshake.await.map_err(|e| {
            if let Some(line) = link.turned_away(&probe.take_unread()) {
                return ConnectFailure::TurnedAway(line);
            }
            #[cfg(feature = "tls")]
            if let Some(cause) = link.tls_failure() {
                return ConnectFailure::Tls(cause.to_owned());
            }
            // A TLS port resets a plain client at its first bytes without a word: say what
            // that usually means, at once. Not once plain Redis has answered there: then a
            // cut handshake is a kill or a restart.
            if !self.core.config().uses_tls()
                && !self.core.has_connected()
                && e.is_connection_dropped()
                && link.heard_nothing()
            {
                return ConnectFailure::Redis(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    format!(
                        "{}; the server closed the connection at the first command without a \
                         reply: if this port serves TLS, use rediss://",
                        server_text(&e)
                    ),
                )));
            }
            e.into()
        })
    }

    /// Opens a socket (and its TLS session) to where Redis is now: the configured address, or
    /// the primary the sentinels name. Shared by pooled connections and subscriptions.
    /// `deadline`: the end of the connect budget, by which a silent TLS handshake is named.
    async fn open_stream(&self, deadline: Option<Instant>) -> Result<Opened, ConnectFailure> {
        let config = self.core.config();
        let (host, port, placement) = match (self.core.sentinel(), config.connection.addr()) {
            (Some(watch), _) => {
                let placement = watch
                    .primary(&*self.core)
                    .await
                    .map_err(|failure| ConnectFailure::Sentinel(failure.kind, failure.message))?;
                let (host, port) = (placement.addr.host.clone(), placement.addr.port);
                (host, port, Some(placement))
            }
            (None, ConnectionAddr::Tcp(host, port)) => (host.clone(), *port, None),
            #[cfg(unix)]
            (None, ConnectionAddr::Unix(path)) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(RedisError::from)?;
                let probe = PeerProbe::new(&stream).map_err(RedisError::from)?;
                return Ok(Opened {
                    stream: Box::new(stream),
                    probe,
                    server: Server {
                        address: path.display().to_string(),
                        port: None,
                    },
                    placement: None,
                });
            }
            _ => {
                return Err(ConnectFailure::Redis(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "unsupported address type",
                ))));
            }
        };
        let (stream, probe) = transport::connect_secured(&host, port, config, deadline)
            .await
            .map_err(|e| match tls_failure(&e) {
                Some(cause) => ConnectFailure::Tls(cause),
                // A refusal, a timeout, or a reset during the TLS handshake.
                None => ConnectFailure::Redis(e.into()),
            })?;
        Ok(Opened {
            stream,
            probe,
            server: Server {
                address: host,
                port: Some(port),
            },
            placement,
        })
    }

    /// A connection for a subscription (see `pubsub.rs`): a socket opened like a pooled
    /// connection's, the Redis handshake, and a first PING, so that a connect counts as a
    /// success only once Redis answered (a frozen Redis still accepts TCP connections).
    async fn open_subscription(&self) -> Result<SubscriptionLink, ConnectFailure> {
        let opened = self.open_stream(None).await?;
        // Its replies are bounded as a pooled connection's are; its health is its own, not
        // one of the pool's working links.
        let max_reply_size = self.core.config().max_reply_size();
        let (stream, link) = TrackedStream::standalone(opened.stream, max_reply_size);
        let settings = self.core.config().connection.redis_settings();
        let mut pubsub = PubSub::new(settings, stream).await?;
        pubsub.ping::<redis::Value>().await?;
        link.establish();
        Ok(SubscriptionLink { pubsub, link })
    }

    /// Runs the Redis handshake (AUTH, SELECT, ...) and spawns the connection's driver, whose
    /// end marks the link closed. Until the connection is established, its commands wait for
    /// replies until `deadline`, the end of the connect budget.
    async fn handshake<S>(
        &self,
        stream: S,
        link: Arc<LinkHealth>,
        probe: Arc<PeerProbe>,
        id: u64,
        peer: Peer,
        deadline: Instant,
    ) -> Result<GuardConnection, RedisError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = self.core.config();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let settings = AsyncConnectionConfig::new().set_response_timeout(Some(remaining));
        let (handle, driver) = MultiplexedConnection::new_with_config(
            config.connection.redis_settings(),
            stream,
            settings,
        )
        .await?;
        let driver_link = link.clone();
        let driver = tokio::spawn(async move {
            driver.await;
            driver_link.close(LinkState::DriverEnded);
        })
        .abort_handle();
        let mut conn =
            GuardConnection::new(handle, link, probe, self.core.clone(), driver, id, peer);
        conn.set_response_timeout(remaining);
        Ok(conn)
    }
}

/// What a pass through the gate opens.
trait Opens {
    type Opened: Send;
    /// Whether the connection joins the pool (it may then make good an evicted one).
    const JOINS_THE_POOL: bool;
    fn open(
        manager: &GuardManager,
        id: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Opened, ConnectFailure>> + Send;
}

/// A connection for the pool, proven and set up (`on_connect`).
struct ForThePool;

impl Opens for ForThePool {
    type Opened = Box<GuardConnection>;
    const JOINS_THE_POOL: bool = true;
    async fn open(
        manager: &GuardManager,
        id: u64,
        deadline: Instant,
    ) -> Result<Box<GuardConnection>, ConnectFailure> {
        manager.open_and_ping(id, deadline).await.map(Box::new)
    }
}

/// A subscription's connection, and the health of its socket, which tells why it closed.
pub(crate) struct SubscriptionLink {
    pub(crate) pubsub: PubSub,
    pub(crate) link: Arc<LinkHealth>,
}

/// A connection for a subscription, proven, not yet subscribed.
struct ForASubscription;

impl Opens for ForASubscription {
    type Opened = SubscriptionLink;
    const JOINS_THE_POOL: bool = false;
    async fn open(
        manager: &GuardManager,
        _id: u64,
        _deadline: Instant,
    ) -> Result<SubscriptionLink, ConnectFailure> {
        manager.open_subscription().await
    }
}

impl bb8::ManageConnection for GuardManager {
    /// Boxed: a checkout moves the connection from bb8's queue to the caller through several
    /// layers, and a pointer is cheaper to move than the connection.
    type Connection = Box<GuardConnection>;
    type Error = RedisError;

    /// bb8 asks for a connection for a waiting checkout: one attempt through the gate. bb8
    /// does not wake its waiters when a connect fails; the pool does (a waiter with no working
    /// connection left fails fast), and while connects fail the prober keeps trying, adding
    /// what it gets to the pool, so a waiter is served if Redis returns within its budget.
    async fn connect(&self) -> Result<Box<GuardConnection>, RedisError> {
        let attempt = self
            .attempt(None, Skip::IfNobodyWaits)
            .with_subscriber(self.log_to.clone());
        match attempt.await {
            Attempt::Connected(conn) => Ok(conn),
            Attempt::Failed(e) => Err(e),
            Attempt::Skipped => Err(RedisError::from((ErrorKind::Io, "the pool is closing"))),
        }
    }

    /// Never called on a checkout (the pool validates connections itself and turns bb8's
    /// test off), but bb8's checkout future reserves room for it: boxed, it does not make
    /// every checkout copy a validation's worth of bytes.
    async fn is_valid(&self, conn: &mut Box<GuardConnection>) -> Result<(), RedisError> {
        Box::pin(conn.validate(self.core.config().validation_timeout()))
            .await
            .map_err(|reason| {
                RedisError::from((ErrorKind::Io, "validation failed", reason.to_string()))
            })
    }

    fn has_broken(&self, conn: &mut Box<GuardConnection>) -> bool {
        // A closed pool keeps nothing.
        !conn.on_return() || self.core.is_closing()
    }
}

/// How long a caller would wait for the next connect attempt to start.
pub(crate) fn until_next_attempt(core: &PoolCore) -> Duration {
    core.next_connect_at().map_or(Duration::ZERO, |at| {
        at.saturating_duration_since(Instant::now())
    })
}
