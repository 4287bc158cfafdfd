//! Writes held during a Sentinel failover, and the count of the primary's moves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::watch;

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
