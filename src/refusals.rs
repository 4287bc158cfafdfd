//! The requests a pool refused, tallied for one WARN line per interval.
//!
//! A refusal is a 503: one per request during an outage, thousands a second, so each is logged
//! at TRACE at most. Yet an outage must leave a line in the log saying what the clients saw.
//! The pool counts its refusals by reason here and its gauge sampler reports them: the first
//! refusals after a quiet spell at the next sample (within a second), then one summary per
//! [`REPORT_INTERVAL`] while they go on.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one summary per pool this often.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Why a request was refused, as the summary names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The breaker was open (or half-open, its trials taken).
    BreakerOpen,
    /// No connection within the checkout budget.
    TimedOut,
    /// No connection existed and a connect attempt failed.
    CannotConnect,
}

const REFUSALS: [Refusal; 3] = [
    Refusal::BreakerOpen,
    Refusal::TimedOut,
    Refusal::CannotConnect,
];

impl Refusal {
    fn describe(self) -> &'static str {
        match self {
            Refusal::BreakerOpen => "breaker open",
            Refusal::TimedOut => "checkout timed out",
            Refusal::CannotConnect => "cannot connect",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counts: [AtomicU64; 3],
    marks: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    last_report: Option<Instant>,
    /// The last sample that found nothing refused: a spell of refusals began after it.
    last_quiet: Option<Instant>,
}

/// What one summary says: the refusals by reason over `window`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) window: Duration,
    counts: [u64; 3],
}

impl Summary {
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused {} requests in the last {:.1} s:",
            self.total(),
            self.window.as_secs_f64()
        )?;
        let mut first = true;
        for (reason, count) in REFUSALS.iter().zip(self.counts) {
            if count > 0 {
                let separator = if first { " " } else { ", " };
                write!(f, "{separator}{} ({count})", reason.describe())?;
                first = false;
            }
        }
        Ok(())
    }
}

impl Refusals {
    pub(crate) fn count(&self, refusal: Refusal) {
        self.counts[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The refusals since the last summary, if one is due at `now`: at once after a quiet
    /// spell, else [`REPORT_INTERVAL`] after the previous summary.
    pub(crate) fn summary(&self, now: Instant) -> Option<Summary> {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if self.counts.iter().all(|c| c.load(Ordering::Relaxed) == 0) {
            marks.last_quiet = Some(now);
            return None;
        }
        if marks
            .last_report
            .is_some_and(|at| now.saturating_duration_since(at) < REPORT_INTERVAL)
        {
            return None;
        }
        let from = marks.last_report.max(marks.last_quiet);
        marks.last_report = Some(now);
        Some(Summary {
            window: from.map_or(Duration::ZERO, |from| now.saturating_duration_since(from)),
            counts: std::array::from_fn(|i| self.counts[i].swap(0, Ordering::Relaxed)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusals_after_quiet_are_reported_at_once_then_once_per_interval() {
        let tally = Refusals::default();
        let start = Instant::now();
        assert_eq!(tally.summary(start), None, "nothing refused");
        tally.count(Refusal::BreakerOpen);
        tally.count(Refusal::BreakerOpen);
        tally.count(Refusal::TimedOut);
        let first = tally.summary(start + Duration::from_secs(1)).unwrap();
        assert_eq!(
            first.to_string(),
            "refused 3 requests in the last 1.0 s: breaker open (2), checkout timed out (1)"
        );
        for second in 2..11 {
            tally.count(Refusal::CannotConnect);
            let at = start + Duration::from_secs(second);
            assert_eq!(tally.summary(at), None, "held back at {second} s");
        }
        let next = tally.summary(start + Duration::from_secs(11)).unwrap();
        assert_eq!(
            next.to_string(),
            "refused 9 requests in the last 10.0 s: cannot connect (9)"
        );
        assert_eq!(tally.summary(start + Duration::from_secs(30)), None);
        tally.count(Refusal::BreakerOpen);
        let after_quiet = tally.summary(start + Duration::from_secs(31)).unwrap();
        assert_eq!(after_quiet.window, Duration::from_secs(1));
    }
}
