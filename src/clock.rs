//! Time in the forms the pool shares between tasks without a lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest duration any timeout or interval may be: longer ones are surely a mistake (or a
/// "forever" that should be `None`), and keeping every duration this small keeps deadline
/// arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// An optional [`Instant`] in an atomic: nanoseconds since a process-wide epoch, 0 for none.
#[derive(Debug, Default)]
pub(crate) struct AtomicInstant(AtomicU64);

impl AtomicInstant {
    /// None yet.
    pub(crate) const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Sets `at` unless another thread changed the value since it was read here; returns
    /// whether this call set it. For "only one of the racing callers acts".
    pub(crate) fn replace_if_unchanged(&self, at: Instant) -> bool {
        let seen = self.0.load(Ordering::Acquire);
        self.0
            .compare_exchange(
                seen,
                nanos_since_epoch(at).max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Raises the value to `at`, unless it is already within [`ANSWER_GRANULARITY`] of it: for
    /// "when did Redis last answer", written by every reply. Under load, writing on each one
    /// would make every core fight over this cache line; a value late by less than the
    /// granularity changes no decision made from it (see the constant).
    pub(crate) fn advance(&self, at: Instant) {
        let nanos = nanos_since_epoch(at).max(1);
        let seen = self.0.load(Ordering::Relaxed);
        if seen == 0 || nanos > seen.saturating_add(ANSWER_GRANULARITY_NANOS) {
            self.0.fetch_max(nanos, Ordering::AcqRel);
        }
    }

    pub(crate) fn set(&self, at: Instant) {
        // 0 means "none"; an instant at the epoch itself is stored one nanosecond later.
        self.0
            .store(nanos_since_epoch(at).max(1), Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(epoch() + Duration::from_nanos(nanos)),
        }
    }
}

/// How stale a record of Redis's last answer may be. What is decided from it works at a far
/// coarser scale: the validation bypass and the probe interval are seconds, connect attempts
/// are paced by tens of milliseconds at least, and a connection whose answer after a peer's
/// failure went unrecorded is only PINGed once more.
pub(crate) const ANSWER_GRANULARITY: Duration = Duration::from_micros(100);
const ANSWER_GRANULARITY_NANOS: u64 = ANSWER_GRANULARITY.as_nanos() as u64;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Jittered exponential backoff: each pause is a delay that doubles from `min` to `max`,
/// lengthened by a random share of up to 15 %, so pools do not retry in step. The jitter only
/// lengthens: a pause is never shorter than its delay, so `min` bounds the attempt rate.
/// The largest share by which [`Backoff`] lengthens a pause.
const JITTER: f64 = 0.15;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The pause before the next attempt; the one after it will be about twice as long.
    pub(crate) fn pause(&mut self) -> Duration {
        let pause = self.next.mul_f64(1.0 + JITTER * fastrand::f64());
        self.next = (self.next * 2).min(self.max);
        pause
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_instant_round_trips_and_clears() {
        let slot = AtomicInstant::default();
        assert_eq!(slot.get(), None);
        let now = Instant::now();
        slot.set(now);
        let read = slot.get().unwrap();
        assert!(read.max(now) - read.min(now) <= Duration::from_nanos(1));
        slot.clear();
        assert_eq!(slot.get(), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_up_to_its_cap_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = Backoff::new(min, max);
        for step in [100, 200, 400, 800, 1000, 1000] {
            let ceiling = Duration::from_millis(step);
            let pause = backoff.pause();
            assert!(
                pause >= ceiling && pause <= ceiling.mul_f64(1.0 + JITTER),
                "{pause:?} for {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.pause() <= min.mul_f64(1.0 + JITTER));
    }
}
