//! The pool's state as its lower layers see it: the traits a connection and the Sentinel
//! watch report through, answered by the methods of [`Shared`].

use std::time::{Duration, Instant};

use super::Shared;
use crate::config::Config;
use crate::metrics::EvictionReason;
use crate::sentinel::{PoolSettings, PrimaryAddr, SentinelWatch};
use crate::transport::LinkHealth;

/// What every lower layer reads of its pool.
impl PoolSettings for Shared {
    #[inline]
    fn name(&self) -> &str {
        Shared::name(self)
    }
    #[inline]
    fn config(&self) -> &Config {
        Shared::config(self)
    }
    #[inline]
    fn sentinel(&self) -> Option<&SentinelWatch> {
        Shared::sentinel(self)
    }
    #[inline]
    fn validation_timeout(&self) -> Duration {
        Shared::validation_timeout(self)
    }
}

/// What a connection sees of its pool: every report lands in a method of `Shared`.
impl crate::connection::Owner for Shared {
    #[inline]
    fn is_suspect(&self, last_success: Instant) -> bool {
        Shared::is_suspect(self, last_success)
    }
    #[inline]
    fn is_role_suspect(&self, role_checked: Instant) -> bool {
        Shared::is_role_suspect(self, role_checked)
    }
    #[inline]
    fn round_trip(&self, took: Duration) {
        Shared::round_trip(self, took);
    }
    #[inline]
    fn answered(&self, at: Instant) {
        Shared::answered(self, at);
    }
    #[inline]
    fn link_established(&self, link: &LinkHealth) {
        Shared::link_established(self, link);
    }
    #[inline]
    fn evicted(&self, reason: EvictionReason, connection_id: u64) {
        Shared::evicted(self, reason, connection_id);
    }
    #[inline]
    fn reply_overdue(&self, sent: Instant) {
        Shared::reply_overdue(self, sent);
    }
    #[inline]
    fn call_timed_out(&self, sent: Instant) {
        Shared::call_timed_out(self, sent);
    }
}

/// What the Sentinel watch sees of its pool.
impl crate::sentinel::WatchedPool for Shared {
    #[inline]
    fn is_closing(&self) -> bool {
        Shared::is_closing(self)
    }
    async fn closed(&self) {
        Shared::closed(self).await;
    }
    #[inline]
    fn primary_moved(&self, old: &PrimaryAddr, new: &PrimaryAddr) {
        Shared::primary_moved(self, old, new);
    }
    #[inline]
    fn hold_writes(&self) {
        Shared::hold_writes(self);
    }
    #[inline]
    fn release_writes(&self, why: &str) {
        Shared::release_writes(self, why);
    }
}
