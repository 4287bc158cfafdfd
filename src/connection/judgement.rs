//! The one judgement of a connection before a checkout uses it, in both modes: what is known
//! of it without a round trip says whether to evict it, prove it with a PING, or use it as is.

use std::time::Instant;

use super::{Owner, closed_link_eviction};
use crate::metrics::EvictionReason;
use crate::sentinel::Placement;
use crate::transport::{LinkHealth, PeerState};

/// What a checkout must do with a connection before handing it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Evict it and try another.
    Evict(EvictionReason),
    /// It completed a command within the bypass window: hand it out as is.
    Recent,
    /// Prove it alive with a PING first.
    Validate,
    /// A peer failed since this one last answered: it may have failed the same way (a
    /// middlebox forgets every flow at once). Validate it off the caller's path.
    Suspect,
}

/// What is known of a connection without a round trip.
pub(crate) struct Known<'a> {
    pub(crate) link: &'a LinkHealth,
    /// Under Sentinel: the primary it was opened to.
    pub(crate) placement: Option<&'a Placement>,
    /// What a peek at its socket found. `None` where calls may be in flight on it (shared
    /// mode): their replies would look like unread bytes, so each call peeks instead.
    pub(crate) peer: Option<PeerState>,
    pub(crate) expires_at: Option<Instant>,
    /// When Redis last answered on it (or it was opened).
    pub(crate) last_success: Instant,
    /// When its server was last seen to be the primary.
    pub(crate) role_checked: Instant,
}

impl Known<'_> {
    /// Generic, so that shared mode, which holds the pool's state itself, calls it directly;
    /// a connection calls it through its `dyn Owner`.
    pub(crate) fn verdict<P: Owner + ?Sized>(&self, pool: &P, now: Instant) -> Verdict {
        // First: its socket was shut because of it.
        if on_demoted_primary(self.placement, pool) {
            return Verdict::Evict(EvictionReason::RoleChange);
        }
        if !self.link.is_open() {
            return Verdict::Evict(closed_link_eviction(self.link));
        }
        // An idle connection has nothing to receive. Bytes waiting anyway may be a TLS
        // `close_notify` ahead of the close (a CLIENT KILL over TLS): prove it with a PING
        // rather than hand it out inside the bypass window.
        let unread = match self.peer {
            Some(PeerState::Closed) => return Verdict::Evict(EvictionReason::Broken),
            Some(PeerState::Unread) => true,
            Some(PeerState::Quiet) | None => false,
        };
        if self.expires_at.is_some_and(|at| now >= at) {
            return Verdict::Evict(EvictionReason::MaxLifetime);
        }
        // Before the bypass: a socket frozen right after its last reply looks fresh, and a
        // connection to a node demoted in a failover answers PING like any other.
        let config = pool.config();
        let role_suspect = config.expect_primary() && pool.is_role_suspect(self.role_checked);
        if role_suspect || pool.is_suspect(self.last_success) {
            return Verdict::Suspect;
        }
        if !unread && now.saturating_duration_since(self.last_success) < config.validation_bypass()
        {
            Verdict::Recent
        } else {
            Verdict::Validate
        }
    }
}

/// Under Sentinel: whether the primary moved away from the server a connection opened to
/// `placement` leads to. The old primary may accept writes for seconds after the
/// announcement, and loses them all when it resyncs: nothing more may be sent to it.
#[inline]
pub(crate) fn on_demoted_primary<P: Owner + ?Sized>(
    placement: Option<&Placement>,
    pool: &P,
) -> bool {
    match (placement, pool.sentinel()) {
        (Some(placement), Some(watch)) => !placement.is_current(watch),
        _ => false,
    }
}
