//! The connect gate: one attempt at a time while connects succeed, all turns once one failed,
//! and the backoff that paces attempts after a failure.

use std::time::{Duration, Instant};

use crate::clock::Backoff;

/// Connects in flight at once while the last one succeeded.
const CONNECTS_AT_ONCE: u32 = 4;

#[derive(Debug)]
pub(super) struct Gate {
    /// An attempt holds one turn while connects succeed, all of them once one failed (FIFO:
    /// tokio's semaphore serves a large request before later small ones).
    turns: tokio::sync::Semaphore,
    pace: std::sync::Mutex<Pace>,
}

/// The backoff that paces attempts after a failure, and when the last attempt ended.
#[derive(Debug)]
pub(super) struct Pace {
    backoff: Backoff,
    pub(super) last_outcome_at: Option<Instant>,
    /// Failed attempts in a row.
    pub(super) failures: u32,
}

impl Gate {
    pub(super) fn new(backoff: Backoff) -> Self {
        Gate {
            turns: tokio::sync::Semaphore::new(CONNECTS_AT_ONCE as usize),
            pace: std::sync::Mutex::new(Pace {
                backoff,
                last_outcome_at: None,
                failures: 0,
            }),
        }
    }

    /// Waits for this attempt's turn: one of the turns while connects succeed, all of them
    /// once one failed, also for an attempt that queued before that failure.
    pub(super) async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        let failing = || self.pace().failures > 0;
        let wanted = if failing() { CONNECTS_AT_ONCE } else { 1 };
        let turn = self.turns.acquire_many(wanted).await;
        let turn = turn.expect("the gate is never closed");
        if turn.num_permits() == CONNECTS_AT_ONCE as usize || !failing() {
            return turn;
        }
        // Let go before asking for all: two holders of one turn each waiting for the rest
        // would wait on each other.
        drop(turn);
        let turn = self.turns.acquire_many(CONNECTS_AT_ONCE).await;
        turn.expect("the gate is never closed")
    }

    pub(super) fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        // Plain fields: a panic elsewhere cannot leave them half-written.
        self.pace
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Pace {
    pub(super) fn succeeded(&mut self) {
        self.last_outcome_at = Some(Instant::now());
        self.backoff.reset();
        self.failures = 0;
    }

    /// How long the next attempt waits.
    pub(super) fn failed(&mut self) -> Duration {
        self.last_outcome_at = Some(Instant::now());
        // The first failure after a success is tried again at once: a restart or a
        // connection killed while it was set up is often over by then, and waiting would
        // hold up the requests of a Redis that is back. The pace starts with the second.
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            Duration::ZERO
        } else {
            self.backoff.pause()
        }
    }
}
