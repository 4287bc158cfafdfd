//! What the pool's state keeps for hedged reads (see `hedge.rs`): the delay before a copy,
//! the budget of copies, and their outcomes.

use std::time::{Duration, Instant};

use super::PoolCore;
use crate::reply_times::HedgeSlot;

impl PoolCore {
    /// How long a read waits before it is hedged, if reads may be and enough were measured.
    pub(crate) fn hedge_delay(&self) -> Option<Duration> {
        if !self.config.hedge_reads() {
            return None;
        }
        self.reply_times.hedge_delay(self.validation_timeout())
    }

    /// A read was answered after `took`.
    pub(crate) fn read_replied(&self, took: Duration) {
        self.reply_times.sample(took);
    }

    /// A late read, sent at `sent`, is about to be hedged, if the budget allows and fewer
    /// than half the pool's connections are hedging already. With `suspect`, the connections
    /// not proven alive since it was sent are suspected, so the copy goes to one that
    /// answers. (A late shared connection is not: every new checkout would PING it behind the
    /// late reads; the hedge's win retires it instead.)
    pub(crate) fn start_hedge(&self, sent: Instant, suspect: bool) -> Option<HedgeSlot<'_>> {
        let limit = (self.config.max_size() as usize / 2).max(1);
        let slot = self.reply_times.start_hedge(limit)?;
        if suspect {
            self.evidence.suspect_until(sent);
        }
        Some(slot)
    }

    /// A hedge ended: `won` if the copy answered first.
    pub(crate) fn hedged(&self, won: bool) {
        self.metrics().hedge(won);
        if won {
            self.reply_times.refund();
        }
    }
}
