//! What the pool has seen of Redis across its connections: when Redis last answered, which
//! connections are suspected of having failed like a peer did, how far away Redis is, and
//! whether it has stopped answering altogether.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::AtomicInstant;

#[derive(Debug, Default)]
pub(super) struct Evidence {
    /// When Redis last answered anything: the prober stays quiet while traffic proves it alive.
    last_answer: AtomicInstant,
    /// When an existing connection last failed. Idle connections not proven alive since are
    /// suspected of failing the same way, and validated off the caller's path.
    suspect_before: AtomicInstant,
    /// When a connection was last refused for its role (`READONLY`, ...): connections whose
    /// role was seen before must show `ROLE master` again before reuse.
    role_suspect_before: AtomicInstant,
    /// When the last connect attempt that timed out with nothing answering since it began
    /// began.
    silent_connect: AtomicInstant,
    /// When the last call on an existing connection that timed out with nothing answering
    /// since was sent.
    silent_call: AtomicInstant,
    /// A moving average of PING round trips, in nanoseconds: validation waits a few of them
    /// at least, so a distant Redis is not taken for a dead one.
    round_trip_nanos: AtomicU64,
}

impl Evidence {
    /// Redis answered at `at`.
    #[inline]
    pub(super) fn answered(&self, at: Instant) {
        self.last_answer.advance(at);
    }

    /// A new connection answered just now.
    pub(super) fn answered_now(&self) {
        self.last_answer.set(Instant::now());
    }

    pub(super) fn last_answer(&self) -> Option<Instant> {
        self.last_answer.get()
    }

    /// Whether Redis answered anything after `since`.
    #[inline]
    pub(super) fn answered_since(&self, since: Instant) -> bool {
        self.last_answer.get().is_some_and(|answer| answer > since)
    }

    /// Connections not proven alive since `at` are suspect.
    pub(super) fn suspect_until(&self, at: Instant) {
        self.suspect_before.advance(at);
    }

    /// A connection failed just now: its idle peers are suspect.
    pub(super) fn suspect_now(&self) {
        self.suspect_before.set(Instant::now());
    }

    /// A connection was refused for its role just now: its peers must show theirs again.
    pub(super) fn suspect_roles_now(&self) {
        self.role_suspect_before.set(Instant::now());
    }

    #[inline]
    pub(super) fn is_suspect(&self, last_success: Instant) -> bool {
        self.suspect_before
            .get()
            .is_some_and(|before| last_success < before)
    }

    #[inline]
    pub(super) fn is_role_suspect(&self, role_checked: Instant) -> bool {
        self.role_suspect_before
            .get()
            .is_some_and(|before| role_checked < before)
    }

    /// A connect attempt begun at `started` timed out; returns whether Redis is now proven
    /// unresponsive (see [`Evidence::unresponsive`]).
    pub(super) fn connect_timed_out(&self, started: Instant) -> bool {
        if self.answered_since(started) {
            return false;
        }
        self.silent_connect.advance(started);
        self.unresponsive()
    }

    /// A call sent at `sent` timed out; returns whether Redis is now proven unresponsive.
    pub(super) fn call_timed_out(&self, sent: Instant) -> bool {
        if self.answered_since(sent) {
            return false;
        }
        self.silent_call.advance(sent);
        self.unresponsive()
    }

    /// A connect timed out and a call on an existing connection timed out too, with nothing
    /// answering since either began. Either alone is not enough: zombie sockets time out while
    /// new connects succeed, and a busy or distant Redis is slow to accept while it answers
    /// on the connections it has.
    fn unresponsive(&self) -> bool {
        let (Some(connect), Some(call)) = (self.silent_connect.get(), self.silent_call.get())
        else {
            return false;
        };
        !self.answered_since(connect.min(call))
    }

    /// A PING took `took`: folded into the round-trip average (one eighth per sample).
    pub(super) fn round_trip(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ =
            self.round_trip_nanos
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |average| {
                    Some(if average == 0 {
                        sample
                    } else {
                        average - average / 8 + sample / 8
                    })
                });
    }

    /// The average PING round trip, zero before the first.
    #[inline]
    pub(super) fn average_round_trip(&self) -> Duration {
        Duration::from_nanos(self.round_trip_nanos.load(Ordering::Acquire))
    }
}
