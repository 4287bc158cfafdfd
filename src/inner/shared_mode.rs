//! Shared mode's side of the pool ([`PoolMode::Shared`](crate::PoolMode::Shared)): a
//! checkout picks a shared connection of a lane under the same admission, budget and metrics
//! as an exclusive one, and empty slots are refilled through the same connect gate.

use std::sync::Arc;
use std::time::Instant;

use super::{Budget, CheckedOut, PoolInner, WhenClosing};
use crate::error::{Error, UnavailableReason};
use crate::multiplexed::{Lane, Pick, SharedConnection};
use crate::validate::Validated;

impl PoolInner {
    /// A shared-mode checkout: a shared connection proven as a checkout proves an exclusive
    /// one, under the same admission, budget and metrics; and when it was handed out.
    pub(crate) async fn checkout_shared(
        self: &Arc<Self>,
        lane: Lane,
    ) -> Result<(Arc<SharedConnection>, Instant), Error> {
        self.admitted(WhenClosing::Fail, |started| {
            self.shared_connection_within(lane, started, None)
        })
        .await
    }

    /// Another shared connection in `lane`, for a call whose connection failed under it or
    /// that needs the other lane, within a budget of its own. With `proven_since`, one Redis
    /// has answered on since then: a fault that killed one connection may have killed its
    /// peers too, before their drivers could tell.
    pub(crate) async fn another_shared_connection(
        self: &Arc<Self>,
        lane: Lane,
        proven_since: Option<Instant>,
    ) -> Result<Arc<SharedConnection>, Error> {
        let _waiting = self.core.wait();
        self.shared_connection_within(lane, Instant::now(), proven_since)
            .await
    }

    /// A shared connection of `lane` usable now, with no PING and no connect to wait for.
    /// Empty slots found on the way are refilled in the background.
    fn ready_shared_connection(
        self: &Arc<Self>,
        lane: Lane,
        proven_since: Option<Instant>,
    ) -> Option<Arc<SharedConnection>> {
        let multiplexed = self.multiplexed.as_ref()?.lane(lane);
        let mut empty = Vec::new();
        let pick = multiplexed.pick(&self.core, Instant::now(), proven_since, &mut empty);
        for index in empty {
            self.refill_in_background(lane, index);
        }
        match pick {
            Pick::Ready(connection) => Some(connection),
            Pick::Check(_) | Pick::Empty(_) => None,
        }
    }

    /// Takes a retired shared connection out of its slot at once, so it closes as soon as
    /// the calls in flight on it have ended.
    pub(crate) fn let_go_if_retired(&self, connection: &Arc<SharedConnection>) {
        if let Some(multiplexed) = &self.multiplexed
            && !connection.is_open()
        {
            multiplexed.forget(connection);
        }
    }

    /// A usable shared connection before `started + checkout_timeout`: a ready one, one
    /// proven by a PING, or a new one for an empty slot. Empty slots found on the way are
    /// refilled in the background.
    async fn shared_connection_within(
        self: &Arc<Self>,
        lane: Lane,
        started: Instant,
        proven_since: Option<Instant>,
    ) -> Result<Arc<SharedConnection>, Error> {
        let core = &self.core;
        let multiplexed = self
            .multiplexed
            .as_ref()
            .expect("shared connections in shared mode")
            .lane(lane);
        let deadline = started + core.config().checkout_timeout();
        let mut empty = Vec::new();
        let mut now = started;
        // Each turn retires a dead connection, proves one, or fills a slot: bounded by the
        // deadline, and by the slots when nothing waits.
        loop {
            if core.is_closing() {
                return Err(self.unavailable(UnavailableReason::Closed));
            }
            empty.clear();
            let pick = multiplexed.pick(core, now, proven_since, &mut empty);
            // The slot this caller fills itself is not filled in the background too: it would
            // wait on that attempt instead of failing fast with its own.
            for &index in &empty {
                if !matches!(pick, Pick::Empty(own) if own == index) {
                    self.refill_in_background(lane, index);
                }
            }
            if lane == Lane::Reads {
                // The lane for writes is opened beside it, off the caller's path: a handler's
                // first write should not wait for a connect.
                self.warm(Lane::Writes);
            }
            match pick {
                Pick::Ready(connection) => return Ok(connection),
                Pick::Check(connection) => {
                    match Box::pin(connection.check(core, deadline, proven_since)).await {
                        Validated::Alive => return Ok(connection),
                        Validated::Unknown => return Err(self.timed_out(started)),
                        Validated::Dead => multiplexed.forget(&connection),
                    }
                }
                Pick::Empty(index) => {
                    // Reads have a lane of their own only so that a held write cannot hold
                    // them; with none open there, a read goes over the writes' lane rather
                    // than wait for a connect.
                    if lane == Lane::Reads
                        && let Some(connection) =
                            self.ready_shared_connection(Lane::Writes, proven_since)
                    {
                        self.refill_in_background(lane, index);
                        return Ok(connection);
                    }
                    if let Some(connection) =
                        Box::pin(self.refill(lane, index, started, deadline)).await?
                    {
                        return Ok(connection);
                    }
                }
            }
            now = Instant::now();
            if now >= deadline {
                return Err(self.timed_out(started));
            }
        }
    }

    /// Opens a connection for slot `index`, unless another caller filled it meanwhile (then
    /// `None`: look again).
    async fn refill(
        &self,
        lane: Lane,
        index: usize,
        started: Instant,
        deadline: Instant,
    ) -> Result<Option<Arc<SharedConnection>>, Error> {
        let multiplexed = self.multiplexed.as_ref().expect("shared mode").lane(lane);
        let refilling = tokio::time::timeout_at(deadline.into(), multiplexed.refilling(index))
            .await
            .map_err(|_| self.timed_out(started))?;
        self.refill_holding(lane, index, started, refilling).await
    }

    /// [`refill`](Self::refill) for the holder of the slot's refill lock.
    async fn refill_holding(
        &self,
        lane: Lane,
        index: usize,
        started: Instant,
        _refilling: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Option<Arc<SharedConnection>>, Error> {
        let multiplexed = self.multiplexed.as_ref().expect("shared mode").lane(lane);
        if multiplexed.is_filled(index) {
            return Ok(None);
        }
        let budget = Budget::new(&self.core, started, WhenClosing::Fail);
        let CheckedOut { conn, permit } = self.checkout_within_budget(budget).await?;
        let connection = SharedConnection::new(conn, permit, lane);
        tracing::debug!(pool = %self.name(), connection_id = connection.id(), ?lane, "shared connection in use");
        multiplexed.fill(index, connection.clone());
        Ok(Some(connection))
    }

    /// Whether the lane that carries writes has a connection that may still work.
    pub(crate) fn writes_lane_open(&self) -> bool {
        self.multiplexed
            .as_ref()
            .is_some_and(|lanes| lanes.lane(Lane::Writes).empty_slots().next().is_none())
    }

    /// Fills the empty slots of `lane` off the caller's path.
    pub(crate) fn warm(self: &Arc<Self>, lane: Lane) {
        let Some(lanes) = &self.multiplexed else {
            return;
        };
        for index in lanes.lane(lane).empty_slots() {
            self.refill_in_background(lane, index);
        }
    }

    /// Fills slot `index` off the caller's path, unless someone is filling it already.
    fn refill_in_background(self: &Arc<Self>, lane: Lane, index: usize) {
        let Some(multiplexed) = &self.multiplexed else {
            return;
        };
        let multiplexed = multiplexed.lane(lane);
        if self.core.is_closing() {
            return;
        }
        let Some(refilling) = multiplexed.try_refilling(index) else {
            return;
        };
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(pool) = pool.upgrade() else { return };
            let _ = pool
                .refill_holding(lane, index, Instant::now(), refilling)
                .await;
        });
    }
}
