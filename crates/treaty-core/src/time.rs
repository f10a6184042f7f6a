//! Time for the ledger: instants in microseconds and transaction time windows.
//!
//! `treaty-core` never reads a clock; callers pass instants in. A [`Timestamp`] counts
//! microseconds since the Unix epoch on the smeared-UTC timeline (every day has 86,400 s, white
//! paper "Time handling"). A [`TimeWindow`] says when a transaction happened: after a time,
//! before a time, or between two (start inclusive, end exclusive).

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

const MICROS_PER_SEC: i64 = 1_000_000;

impl Timestamp {
    /// From whole seconds since the epoch.
    pub fn from_secs(s: i64) -> Timestamp {
        Timestamp(s.saturating_mul(MICROS_PER_SEC))
    }
    /// Microseconds since the epoch.
    pub fn micros(self) -> i64 {
        self.0
    }
    /// This instant plus `micros` (saturating).
    pub fn plus_micros(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }
}

// Days since the epoch → (year, month, day); Howard Hinnant's civil-from-days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, with microseconds when they are not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(f, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)?;
        if micros != 0 {
            write!(f, ".{micros:06}")?;
        }
        f.write_str("Z")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not an RFC 3339 UTC timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 UTC time (like 2026-11-22T09:30:00Z): {0:?}")]
pub struct ParseTimeError(pub String);

impl FromStr for Timestamp {
    type Err = ParseTimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTimeError(s.chars().take(60).collect());
        let body = s.strip_suffix('Z').ok_or_else(err)?;
        let (date, time) = body.split_once('T').ok_or_else(err)?;
        let num = |t: &str| -> Result<i64, ParseTimeError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            t.parse::<i64>().map_err(|_| err())
        };
        let dp: Vec<&str> = date.split('-').collect();
        let [y, mo, d] = dp.as_slice() else { return Err(err()) };
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let tp: Vec<&str> = hms.split(':').collect();
        let [h, mi, se] = tp.as_slice() else { return Err(err()) };
        let (y, mo, d, h, mi, se) = (num(y)?, num(mo)?, num(d)?, num(h)?, num(mi)?, num(se)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 || y > 9999 {
            return Err(err());
        }
        let micros = if frac.is_empty() {
            0
        } else {
            if frac.len() > 6 {
                return Err(err());
            }
            num(frac)? * 10i64.pow(6 - frac.len() as u32)
        };
        let days = days_from_civil(y, mo as u32, d as u32);
        if civil_from_days(days) != (y, mo as u32, d as u32) {
            return Err(err());
        }
        Ok(Timestamp((days * 86_400 + h * 3600 + mi * 60 + se) * MICROS_PER_SEC + micros))
    }
}

/// When a transaction is asserted to have happened. `from` is inclusive, `until` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "TimeWindowRepr")]
pub enum TimeWindow {
    /// At or after this time.
    From(Timestamp),
    /// Before this time.
    Until(Timestamp),
    /// At or after `from` and before `until`; `from < until`.
    Between {
        /// Start, inclusive.
        from: Timestamp,
        /// End, exclusive.
        until: Timestamp,
    },
}

#[derive(Deserialize)]
enum TimeWindowRepr {
    From(Timestamp),
    Until(Timestamp),
    Between { from: Timestamp, until: Timestamp },
}

/// A time window whose end is not after its start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time window start {from} is not before its end {until}")]
pub struct TimeWindowError {
    /// Start.
    pub from: Timestamp,
    /// End.
    pub until: Timestamp,
}

impl TryFrom<TimeWindowRepr> for TimeWindow {
    type Error = TimeWindowError;
    fn try_from(r: TimeWindowRepr) -> Result<Self, TimeWindowError> {
        match r {
            TimeWindowRepr::From(t) => Ok(TimeWindow::From(t)),
            TimeWindowRepr::Until(t) => Ok(TimeWindow::Until(t)),
            TimeWindowRepr::Between { from, until } => TimeWindow::between(from, until),
        }
    }
}

impl TimeWindow {
    /// A window between two instants; `from` must be before `until`.
    pub fn between(from: Timestamp, until: Timestamp) -> Result<TimeWindow, TimeWindowError> {
        if from < until { Ok(TimeWindow::Between { from, until }) } else { Err(TimeWindowError { from, until }) }
    }

    /// A window of `tolerance_micros` either side of `t`.
    pub fn around(t: Timestamp, tolerance_micros: i64) -> Result<TimeWindow, TimeWindowError> {
        Self::between(t.plus_micros(-tolerance_micros.abs()), t.plus_micros(tolerance_micros.abs()))
    }

    /// The start, if bounded below.
    pub fn from_time(&self) -> Option<Timestamp> {
        match *self {
            TimeWindow::From(t) | TimeWindow::Between { from: t, .. } => Some(t),
            TimeWindow::Until(_) => None,
        }
    }

    /// The end, if bounded above.
    pub fn until_time(&self) -> Option<Timestamp> {
        match *self {
            TimeWindow::Until(t) | TimeWindow::Between { until: t, .. } => Some(t),
            TimeWindow::From(_) => None,
        }
    }

    /// The midpoint of a bounded window, the conventional "time of the transaction".
    pub fn midpoint(&self) -> Option<Timestamp> {
        match *self {
            TimeWindow::Between { from, until } => Some(Timestamp(from.0 + (until.0 - from.0) / 2)),
            _ => None,
        }
    }

    /// Whether `t` lies in the window.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.from_time().is_none_or(|f| t >= f) && self.until_time().is_none_or(|u| t < u)
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeWindow::From(t) => write!(f, "[{t}, ∞)"),
            TimeWindow::Until(t) => write!(f, "(-∞, {t})"),
            TimeWindow::Between { from, until } => write!(f, "[{from}, {until})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for s in ["1970-01-01T00:00:00Z", "2026-11-22T04:38:52Z", "2000-02-29T23:59:59.000001Z", "1969-12-31T23:59:59.5Z"] {
            let t: Timestamp = s.parse().unwrap();
            let back: Timestamp = t.to_string().parse().unwrap();
            assert_eq!(t, back, "{s}");
        }
        assert_eq!("1970-01-01T00:00:01Z".parse::<Timestamp>().unwrap(), Timestamp(1_000_000));
        assert_eq!(Timestamp(1_764_000_000_000_000).to_string(), "2025-11-24T16:00:00Z");
        for bad in ["2026-02-30T00:00:00Z", "2026-11-22 04:38:52Z", "2026-11-22T04:38:52", "2026-13-01T00:00:00Z", "x"] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_contain_and_midpoint() {
        let (a, b) = (Timestamp(100), Timestamp(200));
        let w = TimeWindow::between(a, b).unwrap();
        assert!(w.contains(a) && w.contains(Timestamp(199)) && !w.contains(b) && !w.contains(Timestamp(99)));
        assert_eq!(w.midpoint(), Some(Timestamp(150)));
        assert!(TimeWindow::From(a).contains(Timestamp(i64::MAX)) && !TimeWindow::From(a).contains(Timestamp(99)));
        assert!(TimeWindow::Until(b).contains(Timestamp(i64::MIN)) && !TimeWindow::Until(b).contains(b));
        assert_eq!(TimeWindow::From(a).midpoint(), None);
        assert_eq!(TimeWindow::between(b, a), Err(TimeWindowError { from: b, until: a }));
        assert!(TimeWindow::between(a, a).is_err());
        // An inverted window cannot be smuggled in through decoding.
        let bytes = crate::encoding::encode(&(2u8, b, a));
        assert!(crate::encoding::decode::<TimeWindow>(&bytes).is_err());
    }
}
