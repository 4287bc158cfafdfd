//! How long a pool's reads take, and how many may be hedged: the measure and the budget
//! behind hedged reads (`hedge.rs`), kept per pool in `PoolCore`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The least a read waits before it is hedged: below this, a scheduler stall on a loaded
/// machine passes for a late reply (with both cores of a 2-core machine busy, a 5 ms floor
/// hedged 2-4 % of reads, 20 ms none).
pub(crate) const HEDGE_FLOOR: Duration = Duration::from_millis(20);
/// Reads measured before any is hedged: the estimate needs a history.
const MIN_SAMPLES: u64 = 16;
/// The hedge budget: each read earns one credit, a hedge costs [`HEDGE_COST`] (at most one
/// read in 200 is hedged in the long run), and at most [`HEDGE_BURST`] hedges' worth is
/// saved up. A hedge whose copy answered first is refunded: it found a connection that does
/// not answer. On a loaded machine a scheduler stall makes reads late that are not; their
/// hedges lose, and the budget keeps them from doubling the traffic, while a freeze is
/// hedged as long as hedging wins.
const HEDGE_COST: u64 = 200;
const HEDGE_BURST: u64 = 16;

/// The pool's read round trips, smoothed (RFC 6298's estimator, in nanoseconds).
#[derive(Debug, Default)]
pub(crate) struct ReplyTimes {
    smoothed: AtomicU64,
    deviation: AtomicU64,
    samples: AtomicU64,
    /// Hedges in flight: bounded, so a slow Redis is not sent every read twice.
    hedging: AtomicUsize,
    /// Credits toward the next hedges (see [`HEDGE_COST`]).
    credits: AtomicU64,
}

impl ReplyTimes {
    /// A read answered after `took`.
    pub(crate) fn sample(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .credits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |credits| {
                (credits < HEDGE_COST * HEDGE_BURST).then_some(credits + 1)
            });
        let samples = self.samples.fetch_add(1, Ordering::Relaxed);
        if samples == 0 {
            self.smoothed.store(sample, Ordering::Relaxed);
            self.deviation.store(sample / 2, Ordering::Relaxed);
            return;
        }
        // Concurrent samples may lose an update to each other: an estimate, not a count.
        let smoothed = self.smoothed.load(Ordering::Relaxed);
        let deviation = self.deviation.load(Ordering::Relaxed);
        let error = sample.abs_diff(smoothed);
        self.deviation
            .store(deviation - deviation / 4 + error / 4, Ordering::Relaxed);
        self.smoothed
            .store(smoothed - smoothed / 8 + sample / 8, Ordering::Relaxed);
    }

    /// How long a read waits for its reply before it is hedged, or `None` while too few
    /// reads were measured.
    pub(crate) fn hedge_delay(&self, cap: Duration) -> Option<Duration> {
        if self.samples.load(Ordering::Relaxed) < MIN_SAMPLES {
            return None;
        }
        let smoothed = self.smoothed.load(Ordering::Relaxed);
        let deviation = self.deviation.load(Ordering::Relaxed);
        let delay = Duration::from_nanos(smoothed.saturating_add(deviation.saturating_mul(4)));
        Some(delay.clamp(HEDGE_FLOOR, cap.max(HEDGE_FLOOR)))
    }

    /// A hedge's copy answered first: it costs nothing.
    pub(crate) fn refund(&self) {
        let _ = self
            .credits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |credits| {
                Some((credits + HEDGE_COST).min(HEDGE_COST * HEDGE_BURST))
            });
    }

    /// A slot for one more hedge, if the budget allows one and fewer than `limit` are in
    /// flight.
    pub(crate) fn start_hedge(&self, limit: usize) -> Option<HedgeSlot<'_>> {
        self.hedging
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        let slot = HedgeSlot(&self.hedging);
        self.credits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |credits| {
                credits.checked_sub(HEDGE_COST)
            })
            .ok()?;
        Some(slot)
    }
}

/// A hedge in flight; the slot frees when it drops.
#[derive(Debug)]
pub(crate) struct HedgeSlot<'a>(&'a AtomicUsize);

impl Drop for HedgeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_the_reads_with_a_floor_and_a_cap() {
        let times = ReplyTimes::default();
        let cap = Duration::from_millis(250);
        for _ in 0..MIN_SAMPLES - 1 {
            times.sample(Duration::from_micros(300));
        }
        assert_eq!(times.hedge_delay(cap), None, "too few reads measured");
        times.sample(Duration::from_micros(300));
        assert_eq!(
            times.hedge_delay(cap),
            Some(HEDGE_FLOOR),
            "fast reads: the floor"
        );
        for _ in 0..200 {
            times.sample(Duration::from_millis(20));
        }
        let delay = times.hedge_delay(cap).unwrap();
        assert!(
            delay >= Duration::from_millis(20) && delay < Duration::from_millis(30),
            "{delay:?}"
        );
        for _ in 0..200 {
            times.sample(Duration::from_secs(2));
        }
        assert_eq!(times.hedge_delay(cap), Some(cap));
    }

    #[test]
    fn hedges_in_flight_are_bounded() {
        let times = ReplyTimes::default();
        for _ in 0..HEDGE_COST * 4 {
            times.sample(Duration::from_millis(1));
        }
        let first = times.start_hedge(2).unwrap();
        let _second = times.start_hedge(2).unwrap();
        assert!(times.start_hedge(2).is_none());
        drop(first);
        assert!(times.start_hedge(2).is_some());
    }

    #[test]
    fn hedges_stay_within_their_budget() {
        let times = ReplyTimes::default();
        for _ in 0..HEDGE_COST * HEDGE_BURST * 10 {
            times.sample(Duration::from_millis(1));
        }
        let burst = (0..HEDGE_BURST * 2)
            .filter(|_| times.start_hedge(usize::MAX).is_some())
            .count();
        assert_eq!(burst as u64, HEDGE_BURST, "a saved-up burst, no more");
        for _ in 0..HEDGE_COST {
            times.sample(Duration::from_millis(1));
        }
        assert!(
            times.start_hedge(usize::MAX).is_some(),
            "one more per HEDGE_COST reads"
        );
        assert!(times.start_hedge(usize::MAX).is_none());
        times.refund();
        assert!(
            times.start_hedge(usize::MAX).is_some(),
            "a hedge that won is free"
        );
    }
}
