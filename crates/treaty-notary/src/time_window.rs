//! Checking a transaction's time window against the notary's clock, with a tolerance.
//!
//! The notary's signature says "this transaction happened inside its time window". The notary
//! reads its clock once per request (the caller does: providers never read a clock, so the
//! same request and instant give the same answer everywhere, which a replicated provider
//! needs) and accepts the window if that instant lies inside it, widened on both sides by a
//! tolerance that absorbs the notary's own clock error.

use serde::{Deserialize, Serialize};
use treaty_core::{TimeWindow, Timestamp};

/// The default tolerance: one second, in microseconds.
///
/// A notary's clock is kept by NTP, which holds it within tens of milliseconds of UTC; one
/// second covers that with a wide margin and a leap-second smear step. So a transaction the
/// notary signs happened inside its window give or take one second, and a party whose window
/// closes exactly as the notary receives the request is not refused for a few milliseconds.
pub const DEFAULT_TIME_TOLERANCE_MICROS: i64 = 1_000_000;

/// Decides whether the notary's "now" lies in a time window, allowing a tolerance either side.
/// Encoded as its tolerance (decoding takes the magnitude, like [`TimeWindowCheck::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub struct TimeWindowCheck {
    /// Microseconds by which the window is widened at each bounded end (never negative).
    tolerance_micros: i64,
}

impl Default for TimeWindowCheck {
    fn default() -> Self {
        TimeWindowCheck { tolerance_micros: DEFAULT_TIME_TOLERANCE_MICROS }
    }
}

impl From<i64> for TimeWindowCheck {
    fn from(tolerance_micros: i64) -> TimeWindowCheck {
        TimeWindowCheck::new(tolerance_micros)
    }
}

impl From<TimeWindowCheck> for i64 {
    fn from(check: TimeWindowCheck) -> i64 {
        check.tolerance_micros
    }
}

impl TimeWindowCheck {
    /// A check with `tolerance_micros` either side (a negative value counts as its magnitude).
    pub fn new(tolerance_micros: i64) -> TimeWindowCheck {
        TimeWindowCheck { tolerance_micros: tolerance_micros.saturating_abs() }
    }

    /// The tolerance in microseconds.
    pub fn tolerance_micros(&self) -> i64 {
        self.tolerance_micros
    }

    /// Whether `now` lies in `window` widened by the tolerance: at or after `from - tolerance`
    /// and before `until + tolerance`.
    pub fn accepts(&self, window: &TimeWindow, now: Timestamp) -> bool {
        let t = self.tolerance_micros;
        window.from_time().is_none_or(|from| now >= from.plus_micros(-t))
            && window.until_time().is_none_or(|until| now < until.plus_micros(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_widens_both_ends() {
        let w = TimeWindow::between(Timestamp(1_000), Timestamp(2_000)).unwrap();
        let exact = TimeWindowCheck::new(0);
        assert!(exact.accepts(&w, Timestamp(1_000)) && exact.accepts(&w, Timestamp(1_999)));
        assert!(!exact.accepts(&w, Timestamp(999)) && !exact.accepts(&w, Timestamp(2_000)));
        let loose = TimeWindowCheck::new(-100);
        assert_eq!(loose.tolerance_micros(), 100);
        assert!(loose.accepts(&w, Timestamp(900)) && loose.accepts(&w, Timestamp(2_099)));
        assert!(!loose.accepts(&w, Timestamp(899)) && !loose.accepts(&w, Timestamp(2_100)));
        assert!(loose.accepts(&TimeWindow::From(Timestamp(1_000)), Timestamp(i64::MAX)));
        assert!(loose.accepts(&TimeWindow::Until(Timestamp(1_000)), Timestamp(i64::MIN)));
        assert_eq!(TimeWindowCheck::default().tolerance_micros(), DEFAULT_TIME_TOLERANCE_MICROS);
    }
}
