//! The pool's state as its lower layers see it: the traits a connection and the Sentinel
//! watch report through, answered by the methods of [`PoolCore`].

use std::time::{Duration, Instant};

use super::PoolCore;
use crate::config::Config;
use crate::metrics::EvictionReason;
use crate::sentinel::{PoolSettings, PrimaryAddr, SentinelWatch};
use crate::transport::LinkHealth;

/// What every lower layer reads of its pool.
impl PoolSettings for PoolCore {
    #[inline]
    fn name(&self) -> &str {
        PoolCore::name(self)
    }
    #[inline]
    fn config(&self) -> &Config {
        PoolCore::config(self)
    }
    #[inline]
    fn sentinel(&self) -> Option<&SentinelWatch> {
        PoolCore::sentinel(self)
    }
    #[inline]
    fn validation_timeout(&self) -> Duration {
        PoolCore::validation_timeout(self)
    }
}

/// What a connection sees of its pool: every report lands in a method of `PoolCore`.
impl crate::connection::Owner for PoolCore {
    #[inline]
    fn is_suspect(&self, last_success: Instant) -> bool {
        PoolCore::is_suspect(self, last_success)
    }
    #[inline]
    fn is_role_suspect(&self, role_checked: Instant) -> bool {
        PoolCore::is_role_suspect(self, role_checked)
    }
    #[inline]
    fn round_trip(&self, took: Duration) {
        PoolCore::round_trip(self, took);
    }
    #[inline]
    fn answered(&self, at: Instant) {
        PoolCore::answered(self, at);
    }
    fn answered_busy(&self, at: Instant) {
        PoolCore::answered_busy(self, at);
    }
    #[inline]
    fn link_established(&self, link: &LinkHealth) {
        PoolCore::link_established(self, link);
    }
    #[inline]
    fn evicted(&self, reason: EvictionReason, connection_id: u64) {
        PoolCore::evicted(self, reason, connection_id);
    }
    #[inline]
    fn reply_overdue(&self, sent: Instant) {
        PoolCore::reply_overdue(self, sent);
    }
    #[inline]
    fn call_timed_out(&self, sent: Instant) {
        PoolCore::call_timed_out(self, sent);
    }
}

/// What the Sentinel watch sees of its pool.
impl crate::sentinel::WatchedPool for PoolCore {
    #[inline]
    fn is_closing(&self) -> bool {
        PoolCore::is_closing(self)
    }
    async fn closed(&self) {
        PoolCore::closed(self).await;
    }
    #[inline]
    fn primary_moved(&self, old: &PrimaryAddr, new: &PrimaryAddr) {
        PoolCore::primary_moved(self, old, new);
    }
    #[inline]
    fn hold_writes(&self) {
        PoolCore::hold_writes(self);
    }
    #[inline]
    fn release_writes(&self, why: &str) {
        PoolCore::release_writes(self, why);
    }
}
