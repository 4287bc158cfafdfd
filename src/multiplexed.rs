//! Shared mode ([`PoolMode::Shared`](crate::PoolMode::Shared)): plain commands from every
//! checkout pipelined over a few multiplexed connections, each watched as closely as an
//! exclusive one.
//!
//! A shared connection is an ordinary pool connection (opened through the same gate, proven by
//! the same first PING) that the pool keeps checked out for everyone, with its permit, so the
//! pool stays within `max_size`. What keeps the guarantees of exclusive connections:
//!
//! - a socket known closed is never used: the driver records EOF and resets as it reads, and
//!   when no call is in flight (the driver may not have run since the peer closed) a peek asks
//!   the kernel, as a checkout does;
//! - one that has answered nothing within `validation_bypass`, or that a peer's failure made
//!   suspect, is PINGed first, by one caller while the others wait for that answer;
//! - a call that fails with its connection (I/O error, response timeout) retires it: no new
//!   call goes to it, the calls in flight on it end by their own timeouts, and it closes when
//!   the last one has; the eviction counts as any other, so its peers become suspect and one
//!   verifying connect decides what the breaker makes of it. The checkout then sends reads
//!   (and calls it was told are idempotent) once more on another connection (`pool/checkout.rs`);
//! - a call to a primary demoted by Sentinel is refused before it is sent;
//! - a command that needs a connection of its own never comes here: `pool/checkout.rs` moves the
//!   checkout onto an exclusive connection first.
//!
//! A cancelled call leaves nothing behind: the multiplexed driver reads its reply and drops it.
//!
//! Redis answers each connection's commands in order, so one write that waits (`CLIENT PAUSE
//! WRITE`, a managed failover's pause, `WAIT`) holds every read queued behind it. When
//! `max_size` leaves room (`2 × shared_connections < max_size`), reads get a lane of their
//! own: a checkout starts on a read-only connection, and moves to the lane that carries
//! writes at its first call that may write (one whose commands Redis does not flag
//! read-only), where it stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::RedisResult;
use redis::aio::ConnectionLike;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::clock::AtomicInstant;
use crate::connection::{
    Call, Known, Outcome, Reply, SharedParts, Verdict, call_span, unless_never_written, watched,
};
use crate::manager::Bb8Connection;
use crate::metrics::EvictionReason;
use crate::not_sent::NotSent;
use crate::pool_core::PoolCore;
use crate::reply_limit::ReplyTooLarge;
use crate::transport::PeerState;
use crate::validate::Validated;

/// Which of a shared-mode pool's lanes a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Every call that may write (and reads, where there is no read lane).
    Writes,
    /// Read-only calls.
    Reads,
}

/// Shared mode's connections: a lane for every call, and a lane for reads when `max_size`
/// leaves room for both.
pub(crate) struct Lanes {
    writes: SharedConnections,
    reads: Option<SharedConnections>,
}

impl Lanes {
    pub(crate) fn new(count: u32, max_size: u32) -> Self {
        Lanes {
            writes: SharedConnections::new(count),
            reads: (count.saturating_mul(2) < max_size).then(|| SharedConnections::new(count)),
        }
    }

    /// The lane a checkout starts on.
    pub(crate) fn first(&self) -> Lane {
        match self.reads {
            Some(_) => Lane::Reads,
            None => Lane::Writes,
        }
    }

    pub(crate) fn lane(&self, lane: Lane) -> &SharedConnections {
        match (lane, &self.reads) {
            (Lane::Reads, Some(reads)) => reads,
            _ => &self.writes,
        }
    }

    /// Empties the slot that holds `connection`, in whichever lane.
    pub(crate) fn forget(&self, connection: &Arc<SharedConnection>) {
        self.lane(connection.lane).forget(connection);
    }

    /// Shared connections that may still work, in both lanes.
    pub(crate) fn live(&self) -> u32 {
        self.writes.live() + self.reads.as_ref().map_or(0, SharedConnections::live)
    }

    /// Empties every slot of both lanes (the pool is closing).
    pub(crate) fn clear(&self) {
        self.writes.clear();
        if let Some(reads) = &self.reads {
            reads.clear();
        }
    }
}

/// The slots of a shared-mode lane, each holding at most one shared connection.
///
/// Every checkout reads a slot, from every core at once: an `ArcSwapOption` reads without
/// writing to memory the other cores read (a lock would, twice per checkout), and each pick
/// starts at a random slot rather than at a shared counter, for the same reason.
pub(crate) struct SharedConnections {
    slots: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    connection: ArcSwapOption<SharedConnection>,
    /// Held while a connection is being opened for the slot: one at a time.
    refilling: Arc<tokio::sync::Mutex<()>>,
}

/// What a pick found.
pub(crate) enum Pick {
    /// A connection that may be used at once.
    Ready(Arc<SharedConnection>),
    /// A connection to PING before use (idle too long, or suspect).
    Check(Arc<SharedConnection>),
    /// No usable connection: slot `n` is empty.
    Empty(usize),
}

impl SharedConnections {
    pub(crate) fn new(count: u32) -> Self {
        SharedConnections {
            slots: (0..count).map(|_| Slot::default()).collect(),
        }
    }

    /// A usable connection at `now`, looking from a random slot on. Connections found dead
    /// are retired and their slots emptied; `empty` collects the slots that need a connection.
    /// `proven_since`: a connection Redis has not answered on since then is to be checked.
    pub(crate) fn pick(
        &self,
        core: &PoolCore,
        now: Instant,
        proven_since: Option<Instant>,
        empty: &mut Vec<usize>,
    ) -> Pick {
        let count = self.slots.len();
        let start = if count == 1 {
            0
        } else {
            fastrand::usize(..count)
        };
        let mut check = None;
        for i in 0..count {
            let index = (start + i) % count;
            let Some(connection) = self.current(index) else {
                empty.push(index);
                continue;
            };
            match connection.verdict(core, now, proven_since) {
                Verdict::Recent => return Pick::Ready(connection),
                Verdict::Validate | Verdict::Suspect => {
                    check.get_or_insert(connection);
                }
                Verdict::Evict(reason) => {
                    connection.retire(reason);
                    self.remove(index, &connection);
                    empty.push(index);
                }
            }
        }
        match (check, empty.first()) {
            (Some(connection), _) => Pick::Check(connection),
            (None, Some(&index)) => Pick::Empty(index),
            // Every slot was taken between the two looks; the caller looks again.
            (None, None) => Pick::Empty(start),
        }
    }

    fn current(&self, index: usize) -> Option<Arc<SharedConnection>> {
        self.slots[index].connection.load_full()
    }

    /// Empties slot `index` if it still holds `connection`.
    pub(crate) fn remove(&self, index: usize, connection: &Arc<SharedConnection>) {
        self.slots[index].connection.rcu(|current| match current {
            Some(c) if Arc::ptr_eq(c, connection) => None,
            other => other.clone(),
        });
    }

    /// Empties the slot that holds `connection`, wherever it is.
    pub(crate) fn forget(&self, connection: &Arc<SharedConnection>) {
        for index in 0..self.slots.len() {
            self.remove(index, connection);
        }
    }

    /// The refill lock of slot `index`: whoever holds it opens the slot's next connection.
    pub(crate) async fn refilling(&self, index: usize) -> tokio::sync::OwnedMutexGuard<()> {
        self.slots[index].refilling.clone().lock_owned().await
    }

    /// The refill lock of slot `index`, if no one holds it.
    pub(crate) fn try_refilling(&self, index: usize) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.slots[index].refilling.clone().try_lock_owned().ok()
    }

    /// Whether slot `index` holds a connection that is not known dead.
    pub(crate) fn is_filled(&self, index: usize) -> bool {
        self.current(index).is_some_and(|c| c.parts.link.is_open())
    }

    /// Puts a new connection in slot `index`.
    pub(crate) fn fill(&self, index: usize, connection: Arc<SharedConnection>) {
        self.slots[index].connection.store(Some(connection));
    }

    /// The slots without a connection that may still work.
    pub(crate) fn empty_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&index| !self.is_filled(index))
    }

    /// Shared connections that may still work.
    pub(crate) fn live(&self) -> u32 {
        (0..self.slots.len())
            .filter(|&i| self.current(i).is_some_and(|c| c.parts.link.is_open()))
            .count() as u32
    }

    /// Empties every slot (the pool is closing): each connection closes once the calls on it
    /// have ended.
    pub(crate) fn clear(&self) {
        for slot in self.slots.iter() {
            slot.connection.store(None);
        }
    }
}

/// One connection shared by every checkout of the pool.
pub(crate) struct SharedConnection {
    /// The pool connection behind it. Locked only to validate it (one PING at a time) or to
    /// mark it evicted (every retirement does), never on a call's path; dropped (back to the
    /// pool, which closes it if it was retired) when the last call on it has ended.
    conn: tokio::sync::Mutex<Bb8Connection>,
    _permit: OwnedSemaphorePermit,
    /// Its socket, driver handle and where it leads, shared with `conn`.
    parts: SharedParts,
    /// When Redis last answered on it (never earlier than its opening).
    last_success: AtomicInstant,
    opened: Instant,
    in_flight: AtomicUsize,
    /// Calls ever started on it: whether another began during a call.
    calls_started: AtomicU64,
    /// Redis answered a call on it: a later failure may be the socket's, not Redis's.
    served: AtomicBool,
    retired: AtomicBool,
    lane: Lane,
}

impl SharedConnection {
    pub(crate) fn new(conn: Bb8Connection, permit: OwnedSemaphorePermit, lane: Lane) -> Arc<Self> {
        Arc::new(SharedConnection {
            lane,
            parts: conn.parts(),
            // A connection that served before it was shared may have failed on its own.
            served: AtomicBool::new(conn.has_served()),
            conn: tokio::sync::Mutex::new(conn),
            _permit: permit,
            last_success: AtomicInstant::new(),
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            calls_started: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.parts.id
    }

    /// The lane it serves.
    pub(crate) fn lane(&self) -> Lane {
        self.lane
    }

    pub(crate) fn db(&self) -> i64 {
        self.parts.handle.get_db()
    }

    /// Whether new calls may go to it, as far as is known without a round trip.
    pub(crate) fn is_open(&self) -> bool {
        self.parts.link.is_open() && !self.retired.load(Ordering::Acquire)
    }

    /// Whether Redis has answered a call on it.
    pub(crate) fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    fn last_success(&self) -> Instant {
        self.last_success.get().unwrap_or(self.opened)
    }

    /// Whether Redis answered anything on it after `at`.
    pub(crate) fn answered_since(&self, at: Instant) -> bool {
        self.last_success() > at
    }

    fn on_demoted_primary(&self, core: &PoolCore) -> bool {
        crate::connection::on_demoted_primary(self.parts.placement.as_ref(), core)
    }

    /// The checkout's judgement (`connection/judgement.rs`), for a connection others may be
    /// using: no peek (each call makes its own, see [`call`](Self::call)), and a connection
    /// not answered on since `proven_since` is checked.
    fn verdict(&self, core: &PoolCore, now: Instant, proven_since: Option<Instant>) -> Verdict {
        if self.retired.load(Ordering::Acquire) {
            // Counted when it was retired; retiring it again does nothing.
            return Verdict::Evict(EvictionReason::Broken);
        }
        let last_success = self.last_success();
        let known = Known {
            link: &self.parts.link,
            placement: self.parts.placement.as_ref(),
            peer: None,
            expires_at: self.parts.expires_at,
            last_success,
            role_checked: last_success,
        };
        match known.verdict(core, now) {
            Verdict::Recent if proven_since.is_some_and(|since| last_success < since) => {
                Verdict::Validate
            }
            verdict => verdict,
        }
    }

    /// PINGs it before `deadline` (the checkout's budget), unless another caller proved it
    /// meanwhile (after `proven_since`, if given). One that fails is retired.
    pub(crate) async fn check(
        &self,
        core: &PoolCore,
        deadline: Instant,
        proven_since: Option<Instant>,
    ) -> Validated {
        let mut conn = self.conn.lock().await;
        match self.verdict(core, Instant::now(), proven_since) {
            Verdict::Recent => return Validated::Alive,
            Verdict::Evict(reason) => {
                self.retire_locked(&mut conn, reason);
                return Validated::Dead;
            }
            Verdict::Validate | Verdict::Suspect => {}
        }
        // As a checkout's verdict does: a close already in the kernel needs no PING to be
        // known. Peeked only when no call is in flight, since replies on their way are bytes.
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.parts.probe.peer_state() == PeerState::Closed
        {
            self.retire_locked(&mut conn, EvictionReason::Broken);
            return Validated::Dead;
        }
        let validated = crate::validate::validate(&mut conn, core, Some(deadline)).await;
        match validated {
            // Exact: the validation is what lifts the suspicion.
            Validated::Alive => self.last_success.set(Instant::now()),
            // Evicted and counted by the validation.
            Validated::Dead => self.retired.store(true, Ordering::Release),
            Validated::Unknown => {}
        }
        validated
    }

    /// No new call goes to it; counted as an eviction for `reason` (its peers become
    /// suspect). It closes when the calls in flight on it have ended.
    pub(crate) fn retire(self: &Arc<Self>, reason: EvictionReason) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.conn.try_lock() {
            Ok(mut conn) => conn.evict(reason),
            // A validation holds it for at most the validation timeout.
            Err(_) => {
                let connection = self.clone();
                tokio::spawn(async move { connection.conn.lock().await.evict(reason) });
            }
        }
    }

    fn retire_locked(&self, conn: &mut Bb8Connection, reason: EvictionReason) {
        if !self.retired.swap(true, Ordering::AcqRel) {
            conn.evict(reason);
        }
    }

    /// Sends `call` over the shared socket, waiting up to `response_timeout` for the reply,
    /// and notes what the outcome says about the connection.
    pub(crate) async fn call(
        self: &Arc<Self>,
        core: &PoolCore,
        call: Call<'_>,
        response_timeout: Duration,
    ) -> RedisResult<Reply> {
        let (operation, batch) = call.operation();
        let span = call_span(
            core,
            &self.parts.server,
            self.id(),
            self.db(),
            &operation,
            batch,
        );
        async move {
            if self.on_demoted_primary(core) {
                self.retire(EvictionReason::RoleChange);
                return Err(NotSent::PrimaryMoved.error("Sentinel failover"));
            }
            // A close the driver has not read yet: redis-rs would write the call to the closed
            // socket, where it could not be known unapplied. Peeked only when no call is in
            // flight, since replies on their way are bytes too, and a call in flight sees a
            // close itself.
            if self.in_flight.load(Ordering::Acquire) == 0
                && self.parts.probe.peer_state() == PeerState::Closed
            {
                self.retire(EvictionReason::Broken);
                return Err(NotSent::ConnectionFailed.error("the peer closed the connection"));
            }
            let mut handle = self.parts.handle.clone();
            handle.set_response_timeout(response_timeout);
            let written = self.parts.link.written();
            let (result, alone) = {
                let in_flight = InFlight::enter(&self.in_flight, &self.calls_started);
                let sent = Instant::now();
                let call = std::pin::pin!(call.send_multiplexed(&mut handle));
                let result = watched(core, sent, false, call).await;
                (result, in_flight.was_alone())
            };
            let consequence = Outcome::judge(&result, &self.parts.link, Reply::refused_by_role)
                .consequence(|| self.on_demoted_primary(core));
            if consequence.answered {
                let now = Instant::now();
                self.last_success.advance(now);
                match consequence.busy {
                    true => core.answered_busy(now),
                    false => core.answered(now),
                }
            }
            if consequence.served && !self.served.load(Ordering::Relaxed) {
                self.served.store(true, Ordering::Release);
            }
            if let Some(reason) = consequence.evict {
                self.retire(reason);
            }
            unless_never_written(
                &self.parts.link,
                written,
                bystander_of_a_large_reply(result, alone),
            )
        }
        .instrument(span)
        .await
    }
}

/// redis-rs fails every call waiting on a connection with the error that closed it: a reply
/// over `max_reply_size` fails them all as too large, though only one reply was. A call that
/// was not alone on the connection cannot tell whether the reply was its own, so it fails
/// as a connection failure (a read may be sent again; a large reply is then refused alone).
fn bystander_of_a_large_reply(result: RedisResult<Reply>, alone: bool) -> RedisResult<Reply> {
    match result {
        Err(e) if !alone && ReplyTooLarge::is_cause_of(&e) => {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "the connection closed: a reply on it, this call's or another's, failed: {e}"
                ),
            )))
        }
        other => other,
    }
}

/// Counts a call in flight for as long as it lives, cancelled or not, and tells whether any
/// other call was in flight on the connection at any time during it.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    started: &'a AtomicU64,
    /// `started` once this call had started.
    started_with: u64,
    others_at_entry: bool,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize, started: &'a AtomicU64) -> Self {
        let others_at_entry = count.fetch_add(1, Ordering::AcqRel) > 0;
        let started_with = started.fetch_add(1, Ordering::AcqRel) + 1;
        InFlight {
            count,
            started,
            started_with,
            others_at_entry,
        }
    }

    /// No other call was in flight when this one entered, none started since, none is now.
    fn was_alone(&self) -> bool {
        !self.others_at_entry
            && self.started.load(Ordering::Acquire) == self.started_with
            && self.count.load(Ordering::Acquire) == 1
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}
