//! Following the primary under Redis Sentinel.
//!
//! What the pool knows of the primary is one address and the configuration epoch it came
//! with. Another address replaces it only with a newer epoch ([`SentinelWatch::learn`]) or
//! through a `+switch-master` announcement:
//!
//! - every connect asks the sentinels (`SENTINEL MASTER <name>`: the address and its epoch):
//!   all subscriptions' connections at once, under a short budget; when none answers, the
//!   last known primary is used (a pool keeps working while the sentinels restart or hang);
//!   with none known yet, every sentinel on a connection of its own;
//! - a task keeps a connection to every sentinel subscribed to `+switch-master` (the leader
//!   of a failover announces it first, the others up to seconds later), and polls on each
//!   every `probe_interval` in case an announcement is lost; a subscription that fails or
//!   stops answering is made again;
//! - an answer with the known epoch or an older one for another address comes from a
//!   sentinel that has not heard of the failover yet, and is ignored;
//! - the epoch of a sentinel leading a failover is not taken: it already belongs to the
//!   configuration it is about to announce, while the address is still the old one;
//! - once a connection finds the known primary serving as a replica, the epoch protects it
//!   no more: the sentinels' next answer wins, so a misread or reset epoch cannot keep the
//!   pool on a demoted node.
//!
//! When the primary moves, the generation number goes up: each connection remembers the
//! address it was opened to, and one whose address is no longer the primary's is retired
//! before it sends anything more (`connection/judgement.rs`); the sockets of those in use are shut at
//! once. The old primary may still accept writes for seconds after the announcement
//! (Sentinel reconfigures it as a replica only later), and every write it acknowledges then
//! is lost when it resyncs.
//!
//! The sentinels are trusted like the primary unless `allow_primaries` is set: an address
//! they name must be a valid host and port (`PrimaryAddr::announced`), and, with the
//! allowlist, inside it (`SentinelWatch::admits`); one outside is never connected to, and
//! the pool keeps the primary it knows.
//!
//! Writes are lost before the announcement too: the old primary acknowledges them from the
//! replica's promotion on. The leader's first step of a failover (`events.rs`) holds the
//! pool's writes (not its reads) until the switch, an abort, or [`WRITE_HOLD_CAP`].

mod events;
mod follow;

pub(crate) use follow::{WatchedPool, follow};

/// What the layers below the pool read of it: its name, settings, Sentinel watch and
/// validation budget. The pool's state implements it; [`WatchedPool`] and
/// `connection::Owner` build on it.
pub(crate) trait PoolSettings: Send + Sync {
    /// The pool's name, for logs and spans.
    fn name(&self) -> &str;
    fn config(&self) -> &Config;
    /// What the pool knows of the primary, under Sentinel (the watch, which the pool owns).
    fn sentinel(&self) -> Option<&SentinelWatch>;
    /// How long a validation PING, or a sentinel's answer, may take: the setting, or a few
    /// round trips if longer.
    fn validation_timeout(&self) -> Duration;
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, RedisError};
use tokio::sync::Notify;

use crate::config::{Config, Sentinel};
use crate::metrics::ConnectErrorKind;
use crate::sanitize::server_text;
use crate::transport::{self, BoxedStream, PeerProbe};
use events::master_in;

/// The channel on which sentinels announce a new primary.
/// How long writes are held at most once a failover began: a forced failover announces the
/// switch about a second after its first step; one that stalls longer lets writes go to
/// the primary they would have reached.
pub(crate) const WRITE_HOLD_CAP: Duration = Duration::from_secs(3);
/// The epoch of an answer that proves nothing: it wins over no known primary, and raises
/// no known epoch.
const NO_EPOCH: u64 = 0;
/// The least time one sentinel is given to answer a connect's question.
const MIN_SENTINEL_BUDGET: Duration = Duration::from_millis(100);

/// Where the primary is: a host (as the sentinels give it, usually an IP) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrimaryAddr {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl PrimaryAddr {
    /// The address a sentinel sent, held to the rules of a configured host: a valid IP
    /// address or DNS name (no control character, space or over-long name), a port from 1 to
    /// 65535. A sentinel that sends anything else is not believed, and what it sent is logged
    /// only once made safe.
    pub(crate) fn announced(host: &str, raw_port: &str) -> Option<PrimaryAddr> {
        let port = raw_port.parse::<u16>().ok().filter(|port| *port > 0);
        match (crate::config::is_host(host), port) {
            (true, Some(port)) => Some(PrimaryAddr {
                host: host.to_owned(),
                port,
            }),
            _ => {
                tracing::warn!(
                    host = %server_text(host),
                    port = %server_text(raw_port),
                    "a sentinel named a primary that is no valid host and port; ignored"
                );
                None
            }
        }
    }
}

impl std::fmt::Display for PrimaryAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The primary a connection was opened to, and the generation it was the primary in.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub(crate) addr: PrimaryAddr,
    generation: u64,
}

impl Placement {
    /// Whether the connection still leads to the primary: yes while no failover happened
    /// since it was opened (one atomic load), else if its address is the new primary's.
    #[inline]
    pub(crate) fn is_current(&self, watch: &SentinelWatch) -> bool {
        self.generation == watch.generation() || watch.is_primary(&self.addr)
    }
}

#[derive(Debug)]
struct Known {
    addr: PrimaryAddr,
    /// Sentinel's configuration epoch for this address; each failover raises it.
    epoch: u64,
    /// A connection found this address serving as a replica: the epoch no longer protects
    /// it, and the next sentinel to name another address wins.
    refuted: bool,
}

/// Why no sentinel said where the primary is.
#[derive(Debug)]
pub(crate) struct SentinelFailure {
    pub(crate) kind: ConnectErrorKind,
    pub(crate) message: String,
}

/// What a pool under Sentinel knows of the primary, and its line to the sentinels.
#[derive(Debug)]
pub(crate) struct SentinelWatch {
    sentinel: Arc<Sentinel>,
    known: Mutex<Option<Known>>,
    /// Raised each time the primary moves.
    generation: AtomicU64,
    /// Each sentinel's subscribed connection, also used for questions while it works.
    links: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// Asks the subscriptions to poll now: a connect found one of them not answering.
    recheck: Notify,
    /// The sockets of the pool's connections, by the primary they lead to: shut when it is
    /// demoted, so that calls in flight there (a `BLPOP` waiting for seconds, a write the old
    /// primary would acknowledge and then lose) fail at once rather than complete there.
    sockets: Mutex<Vec<(PrimaryAddr, Weak<PeerProbe>)>>,
    /// The last primary refused by the allowlist, so that a refusal repeated at every poll
    /// is logged once.
    refused: Mutex<Option<PrimaryAddr>>,
}

impl SentinelWatch {
    pub(crate) fn new(sentinel: Arc<Sentinel>) -> Self {
        Self {
            known: Mutex::new(None),
            generation: AtomicU64::new(0),
            links: Mutex::new(vec![None; sentinel.sentinels.len()]),
            recheck: Notify::new(),
            sockets: Mutex::default(),
            refused: Mutex::default(),
            sentinel,
        }
    }

    /// The current generation: it changes whenever the primary moves.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers the socket of a connection opened to `placement`'s primary.
    pub(crate) fn register(&self, placement: &Placement, probe: &Arc<PeerProbe>) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.retain(|(_, socket)| socket.strong_count() > 0);
        sockets.push((placement.addr.clone(), Arc::downgrade(probe)));
    }

    /// Shuts the sockets of every connection to `old`.
    fn cut_connections_to(&self, old: &PrimaryAddr) -> usize {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        let mut cut = 0;
        sockets.retain(|(addr, socket)| {
            if addr != old {
                return socket.strong_count() > 0;
            }
            if let Some(socket) = socket.upgrade() {
                socket.shutdown();
                cut += 1;
            }
            false
        });
        cut
    }

    /// Whether `addr` is the primary as far as the pool knows.
    fn is_primary(&self, addr: &PrimaryAddr) -> bool {
        self.lock_known().as_ref().is_none_or(|k| k.addr == *addr)
    }

    /// The primary for a new connection: asked of the sentinels (see the module docs).
    pub(crate) async fn primary(
        &self,
        pool: &impl WatchedPool,
    ) -> Result<Placement, SentinelFailure> {
        let (addr, generation) = self.ask_for_primary(pool).await?;
        Ok(Placement { addr, generation })
    }

    async fn ask_for_primary(
        &self,
        pool: &impl WatchedPool,
    ) -> Result<(PrimaryAddr, u64), SentinelFailure> {
        let config = pool.config();
        let count = self.sentinel.sentinels.len();
        // The subscriptions' connections first, all at once: open and proven by their polls,
        // so an answer takes a round trip. A frozen sentinel must not hold up the connect,
        // hence the short budget, and its link is dropped so that no connect waits on it
        // again before its subscription is made anew.
        let links: Vec<(usize, MultiplexedConnection)> = self
            .lock_links()
            .iter()
            .enumerate()
            .filter_map(|(i, link)| Some((i, link.clone()?)))
            .collect();
        if !links.is_empty() {
            let budget = pool.validation_timeout();
            let questions = links
                .into_iter()
                .map(|(i, mut link)| {
                    Box::pin(async move {
                        match tokio::time::timeout(budget, self.ask(&mut link)).await {
                            Ok(Ok(Some(answer))) => Ok(answer),
                            Ok(Ok(None)) => Err((i, Some(self.unknown_master()))),
                            Ok(Err(e)) => Err((i, Some(self.failure(i, &e)))),
                            Err(_) => Err((i, None)),
                        }
                    }) as Question<'_>
                })
                .collect();
            match first_answer(questions).await {
                Ok((addr, epoch)) => return self.learn_allowed(addr, epoch, pool),
                Err(failures) => {
                    let mut links = self.lock_links();
                    for (i, _) in &failures {
                        links[*i] = None;
                    }
                    drop(links);
                    self.recheck.notify_waiters();
                }
            }
        }
        // The primary may well be up while the sentinels restart or stop answering.
        if let Some(known) = self.lock_known().as_ref() {
            tracing::debug!(pool = %pool.name(), primary = %known.addr, "no sentinel answered; using the last known primary");
            return Ok((known.addr.clone(), self.generation()));
        }
        // Nothing known yet (start-up): every sentinel on a connection of its own, at once,
        // within half the connect budget.
        let budget = (config.connect_timeout() / 2).max(MIN_SENTINEL_BUDGET);
        let questions = (0..count)
            .map(|i| {
                Box::pin(async move {
                    let asked = async {
                        let mut conn = self.open(i, config, None).await?;
                        self.ask(&mut conn).await
                    };
                    match tokio::time::timeout(budget, asked).await {
                        Ok(Ok(Some(answer))) => Ok(answer),
                        Ok(Ok(None)) => Err((i, Some(self.unknown_master()))),
                        Ok(Err(e)) => Err((i, Some(self.failure(i, &e)))),
                        Err(_) => Err((
                            i,
                            Some(SentinelFailure {
                                kind: ConnectErrorKind::Timeout,
                                message: format!(
                                    "sentinel {} did not answer within {budget:?}",
                                    self.name_of(i)
                                ),
                            }),
                        )),
                    }
                }) as Question<'_>
            })
            .collect();
        match first_answer(questions).await {
            Ok((addr, epoch)) => self.learn_allowed(addr, epoch, pool),
            // The first sentinel's failure: the one an operator would look at first.
            Err(failures) => Err(failures
                .into_iter()
                .min_by_key(|(i, _)| *i)
                .and_then(|(_, failure)| failure)
                .unwrap_or_else(|| SentinelFailure {
                    kind: ConnectErrorKind::Other,
                    message: "no sentinel configured".to_owned(),
                })),
        }
    }

    /// A sentinel's error in words: a refusal (credentials, ACL) or a failure to reach it.
    fn failure(&self, i: usize, e: &RedisError) -> SentinelFailure {
        #[cfg(feature = "tls")]
        if let Some(cause) = crate::tls::tls_failure(e) {
            return SentinelFailure {
                kind: ConnectErrorKind::Tls,
                message: format!("sentinel {}: {cause}", self.name_of(i)),
            };
        }
        let what = match e.code() {
            Some(_) => "refused",
            None => "cannot be reached",
        };
        SentinelFailure {
            kind: crate::redis_error::connect_error_kind(e),
            message: format!("sentinel {} {what}: {}", self.name_of(i), server_text(e)),
        }
    }

    /// [`SentinelWatch::learn`] for an address the allowlist admits; for another, the known
    /// primary stays, and with none known there is none to connect to.
    fn learn_allowed(
        &self,
        addr: PrimaryAddr,
        epoch: u64,
        pool: &impl WatchedPool,
    ) -> Result<(PrimaryAddr, u64), SentinelFailure> {
        if self.admits(&addr, pool) {
            return Ok(self.learn(addr, epoch, pool));
        }
        match self.lock_known().as_ref() {
            Some(known) => Ok((known.addr.clone(), self.generation())),
            None => Err(SentinelFailure {
                kind: ConnectErrorKind::Other,
                message: "the sentinels name a primary outside allow_primaries; not connecting \
                          to it"
                    .to_owned(),
            }),
        }
    }

    /// Whether the pool may connect to `addr` (see [`Sentinel::allow_primaries`]). A refusal
    /// is logged at WARN once per address in a row: the sentinels repeat it at every poll.
    fn admits(&self, addr: &PrimaryAddr, pool: &impl WatchedPool) -> bool {
        if self.sentinel.allows(&addr.host, addr.port) {
            return true;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.as_ref() != Some(addr) {
            tracing::warn!(pool = %pool.name(), named = %addr, "a sentinel names a primary outside allow_primaries; not connecting to it");
            *refused = Some(addr.clone());
        } else {
            tracing::debug!(pool = %pool.name(), named = %addr, "a sentinel names a primary outside allow_primaries again");
        }
        false
    }

    /// Takes in what a sentinel said (`SENTINEL MASTER`: an address and its configuration
    /// epoch), and returns the primary the pool now believes in. Another address than the
    /// known one wins only with a newer epoch: an equal or older one comes from a sentinel
    /// that has not heard of the last failover. A move raises the generation and tells
    /// `pool`, which retires the connections to the old primary.
    fn learn(&self, addr: PrimaryAddr, epoch: u64, pool: &impl WatchedPool) -> (PrimaryAddr, u64) {
        let mut known = self.lock_known();
        match known.as_mut() {
            Some(k) if k.addr == addr => {
                k.epoch = k.epoch.max(epoch);
                (addr, self.generation())
            }
            Some(k) if epoch <= k.epoch && !k.refuted => {
                tracing::debug!(pool = %pool.name(), named = %addr, epoch, primary = %k.addr, known_epoch = k.epoch, "a sentinel names another primary under an epoch not newer than the known one; kept");
                (k.addr.clone(), self.generation())
            }
            _ => {
                drop(known);
                self.move_to(addr, epoch, pool)
            }
        }
    }

    /// A `+switch-master` for this master: the announcing sentinel moved to `addr` under a
    /// newer epoch than the one the pool knew for the old address. The pool moves at once and
    /// keeps the old epoch until a `SENTINEL MASTER` gives the new one (asked right after):
    /// an answer for the old address then carries the old epoch, which no longer wins, and a
    /// later failover's carries a newer one, which does.
    fn announced(&self, addr: PrimaryAddr, pool: &impl WatchedPool) {
        let epoch = {
            let known = self.lock_known();
            match known.as_ref() {
                Some(k) if k.addr == addr => return,
                Some(k) => k.epoch,
                None => 0,
            }
        };
        self.move_to(addr, epoch, pool);
    }

    /// A connection opened to `addr` found a replica there. If the pool still takes `addr`
    /// for the primary, the sentinels' next answer wins whatever its epoch, and they are asked
    /// now: a pool must not stay on a demoted node because of an epoch it misread or that the
    /// sentinels lost (a restart without their config files resets it).
    pub(crate) fn refuted(&self, addr: &PrimaryAddr, pool: &str) {
        let mut known = self.lock_known();
        if let Some(k) = known.as_mut().filter(|k| k.addr == *addr && !k.refuted) {
            k.refuted = true;
            drop(known);
            tracing::info!(pool, primary = %addr, "the known primary serves as a replica; the sentinels' next answer wins");
            self.recheck.notify_waiters();
        }
    }

    fn move_to(
        &self,
        addr: PrimaryAddr,
        epoch: u64,
        pool: &impl WatchedPool,
    ) -> (PrimaryAddr, u64) {
        let mut known = self.lock_known();
        let old = known.replace(Known {
            addr: addr.clone(),
            epoch,
            refuted: false,
        });
        let generation = match old {
            Some(_) => self.generation.fetch_add(1, Ordering::AcqRel) + 1,
            None => self.generation(),
        };
        drop(known);
        match old {
            Some(old) => {
                pool.primary_moved(&old.addr, &addr);
                let cut = self.cut_connections_to(&old.addr);
                tracing::debug!(pool = %pool.name(), cut, "connections to the demoted primary shut");
            }
            None => {
                tracing::info!(pool = %pool.name(), primary = %addr, epoch, "primary found through Sentinel");
            }
        }
        (addr, generation)
    }

    /// `SENTINEL MASTER <name>`: the primary's address and epoch, or `None` if this sentinel
    /// does not monitor a master of that name.
    async fn ask(&self, conn: &mut MultiplexedConnection) -> Result<Option<Answer>, RedisError> {
        let reply = conn
            .send_packed_command(
                redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&self.sentinel.master_name),
            )
            .await?;
        master_in(reply)
    }

    /// Opens a connection to sentinel `i` (TLS if the pool uses it), with the sentinels'
    /// credentials, in RESP3 so that one connection carries the subscription and questions.
    async fn open(
        &self,
        i: usize,
        config: &Config,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<MultiplexedConnection, RedisError> {
        let (host, port) = &self.sentinel.sentinels[i];
        let (stream, _probe) = transport::connect_secured(host, *port, config, None).await?;
        // A sentinel's replies are bounded like Redis's: a failed read ends the connection,
        // and the watch opens another as after any failure.
        let (stream, link) = transport::TrackedStream::standalone(stream, config.max_reply_size());
        link.establish();
        self.handshake(Box::new(stream), config, pushes).await
    }

    async fn handshake(
        &self,
        stream: BoxedStream,
        config: &Config,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<MultiplexedConnection, RedisError> {
        let info = self
            .sentinel
            .sentinel_connection_info()
            .set_protocol(ProtocolVersion::RESP3);
        let mut settings =
            AsyncConnectionConfig::new().set_response_timeout(Some(config.response_timeout()));
        if let Some(pushes) = pushes {
            settings = settings.set_push_sender(pushes);
        }
        let (conn, driver) =
            MultiplexedConnection::new_with_config(&info, stream, settings).await?;
        tokio::spawn(driver);
        Ok(conn)
    }

    fn unknown_master(&self) -> SentinelFailure {
        SentinelFailure {
            kind: ConnectErrorKind::Other,
            message: format!(
                "the sentinels do not monitor a master named {:?}; check the master name",
                self.sentinel.master_name
            ),
        }
    }

    fn name_of(&self, i: usize) -> String {
        let (host, port) = &self.sentinel.sentinels[i];
        PrimaryAddr {
            host: host.clone(),
            port: *port,
        }
        .to_string()
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, Option<Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool closed: its connections to the sentinels go (their drivers end with them).
    pub(crate) fn close(&self) {
        self.lock_links().fill(None);
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, Vec<Option<MultiplexedConnection>>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A sentinel's answer: the primary and its epoch.
type Answer = (PrimaryAddr, u64);
/// Why a sentinel gave none: its index, and the failure (`None`: no answer in time).
type NoAnswer = (usize, Option<SentinelFailure>);
/// A question to one sentinel.
type Question<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, NoAnswer>> + Send + 'a>>;

/// Asks every question at once; the first answer wins (the others are dropped), else every
/// failure.
async fn first_answer(questions: Vec<Question<'_>>) -> Result<Answer, Vec<NoAnswer>> {
    let mut pending: FuturesUnordered<_> = questions.into_iter().collect();
    let mut failures = Vec::new();
    while let Some(outcome) = pending.next().await {
        match outcome {
            Ok(answer) => return Ok(answer),
            Err(failure) => failures.push(failure),
        }
    }
    Err(failures)
}

#[cfg(test)]
mod tests;
