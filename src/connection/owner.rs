//! What a connection asks of its pool and reports to it.

use std::fmt;
use std::time::{Duration, Instant};

use crate::metrics::EvictionReason;
use crate::sentinel::PoolSettings;
use crate::transport::LinkHealth;

/// The pool a connection belongs to, as the connection sees it: what it asks (settings,
/// suspicions, where the primary is) and what it reports (answers, evictions, overdue and
/// timed-out calls). The pool's state implements it and alone decides what a report means
/// for the breaker, the metrics and the prober; a connection never decides that.
pub(crate) trait Owner: PoolSettings + fmt::Debug {
    /// Whether a connection last proven alive at `last_success` may have failed with its
    /// peer since (another connection failed after that).
    fn is_suspect(&self, last_success: Instant) -> bool;
    /// Whether a connection whose role was seen at `role_checked` must show it again.
    fn is_role_suspect(&self, role_checked: Instant) -> bool;
    /// A PING's round trip.
    fn round_trip(&self, took: Duration);
    /// Redis answered (a reply, also an error reply) at `at`.
    fn answered(&self, at: Instant);
    /// Redis answered `BUSY` at `at`: a script holds it, and it refuses every command.
    fn answered_busy(&self, at: Instant);
    /// The connection's socket is set up and may work: it counts as a working link.
    fn link_established(&self, link: &LinkHealth);
    /// The connection is given up for `reason`.
    fn evicted(&self, reason: EvictionReason, connection_id: u64);
    /// A call sent at `sent` has had no reply for the validation timeout.
    fn reply_overdue(&self, sent: Instant);
    /// A call sent at `sent` timed out.
    fn call_timed_out(&self, sent: Instant);
}
