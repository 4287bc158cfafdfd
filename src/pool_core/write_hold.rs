//! Writes held during a Sentinel failover, and the count of the primary's moves: what the
//! pool does when the Sentinel watch reports a failover.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::watch;

use super::PoolCore;
use crate::sentinel::PrimaryAddr;

#[derive(Debug)]
pub(super) struct WriteHold {
    /// Set while a failover of the primary is under way. Read on every call, so an atomic
    /// beside the watch.
    held: AtomicBool,
    /// When the hold ends at the latest, while writes are held.
    until: watch::Sender<Option<Instant>>,
    /// Bumped each time the primary moves. Work begun under an older value (a connect in
    /// flight, its failure, a backoff) says nothing about the new primary: it is dropped or
    /// ignored, never counted. A watch rather than a `Notify`, so a move between reading the
    /// backoff and waiting on it is not missed.
    topology: watch::Sender<u64>,
}

impl Default for WriteHold {
    fn default() -> Self {
        Self {
            held: AtomicBool::new(false),
            until: watch::Sender::new(None),
            topology: watch::Sender::new(0),
        }
    }
}

impl WriteHold {
    pub(super) fn hold(&self, until: Instant) {
        self.until.send_replace(Some(until));
        self.held.store(true, Ordering::Release);
    }

    /// Returns whether writes were held.
    pub(super) fn release(&self) -> bool {
        let held = self.held.swap(false, Ordering::AcqRel);
        if held {
            self.until.send_replace(None);
        }
        held
    }

    #[inline]
    pub(super) fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// The end of the hold, as it changes.
    pub(super) fn until(&self) -> watch::Receiver<Option<Instant>> {
        self.until.subscribe()
    }

    pub(super) fn primary_moved(&self) {
        self.topology.send_modify(|generation| *generation += 1);
    }

    pub(super) fn topology(&self) -> watch::Receiver<u64> {
        self.topology.subscribe()
    }
}

impl PoolCore {
    /// Sentinel moved the primary from `old` to `new`: connections to `old` are retired as
    /// they are next touched (see `connection/judgement.rs`); the next connect may start at once, and
    /// the prober makes one now, so an open breaker gets its proof from the new primary.
    pub(crate) fn primary_moved(&self, old: &PrimaryAddr, new: &PrimaryAddr) {
        tracing::warn!(pool = %self.name(), from = %old, to = %new, "the primary moved (Sentinel failover)");
        self.metrics().primary_moved();
        self.connects.allow_now();
        self.breaker.forget_failures();
        self.write_hold.primary_moved();
        self.release_writes("the primary moved");
        self.verify_requested.notify_one();
    }

    /// A Sentinel failover of the primary began: from the replica's promotion on, the old
    /// primary acknowledges writes that are lost when it is turned into a replica. Writes
    /// wait, unsent, until the switch (then they go to the new primary), an abort, or
    /// [`WRITE_HOLD_CAP`](crate::sentinel::WRITE_HOLD_CAP), whichever comes first. Reads go on.
    pub(crate) fn hold_writes(&self) {
        self.write_hold
            .hold(Instant::now() + crate::sentinel::WRITE_HOLD_CAP);
        tracing::info!(pool = %self.name(), "a failover of the primary began: holding writes until the switch");
    }

    /// Lets held writes go.
    pub(crate) fn release_writes(&self, why: &str) {
        if self.write_hold.release() {
            tracing::info!(pool = %self.name(), why, "writes released");
        }
    }

    /// Whether writes are held now (the hot path reads only this).
    #[inline]
    pub(crate) fn holds_writes(&self) -> bool {
        self.write_hold.is_held()
    }

    /// Resolves when held writes may go: released, past the cap, or the pool closing.
    pub(crate) async fn writes_released(&self) {
        let mut hold = self.write_hold.until();
        loop {
            let Some(until) = *hold.borrow_and_update() else {
                return;
            };
            if Instant::now() >= until {
                self.release_writes("the hold reached its cap");
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                Ok(()) = hold.changed() => {}
                () = self.closed() => return,
            }
        }
    }

    /// Follows the primary's moves: subscribe before reading any state a move resets, so
    /// the move that comes after is seen.
    pub(crate) fn topology(&self) -> tokio::sync::watch::Receiver<u64> {
        self.write_hold.topology()
    }
}
