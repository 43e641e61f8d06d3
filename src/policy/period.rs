//! Budget periods on UTC boundaries: a day starts at 00:00 UTC, a week on
//! Monday, a month on the 1st; `total` never resets.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use crate::config::schema::BudgetPeriod;

/// One concrete period: where it started and when it resets (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub start_ms: i64,
    /// `None` for `total`.
    pub end_ms: Option<i64>,
}

impl Window {
    pub fn of(period: BudgetPeriod, now_ms: i64) -> Window {
        let now = Utc.timestamp_millis_opt(now_ms).single().unwrap_or_else(Utc::now);
        let day = now.date_naive();
        let (start, end) = match period {
            BudgetPeriod::Total => {
                return Window {
                    start_ms: 0,
                    end_ms: None,
                }
            }
            BudgetPeriod::Daily => (day, day + Duration::days(1)),
            BudgetPeriod::Weekly => {
                let monday = day - Duration::days(day.weekday().num_days_from_monday() as i64);
                (monday, monday + Duration::days(7))
            }
            BudgetPeriod::Monthly => {
                let first = NaiveDate::from_ymd_opt(day.year(), day.month(), 1).unwrap_or(day);
                let next = if day.month() == 12 {
                    NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(day.year(), day.month() + 1, 1)
                };
                (first, next.unwrap_or(first + Duration::days(31)))
            }
        };
        let ms = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_millis());
        Window {
            start_ms: ms(start),
            end_ms: Some(ms(end)),
        }
    }

    /// Whole seconds until the reset, at least 1; `None` for `total`.
    pub fn seconds_left(&self, now_ms: i64) -> Option<u64> {
        self.end_ms
            .map(|end| ((end - now_ms).max(0) as u64).div_ceil(1000).max(1))
    }
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn period_name(p: BudgetPeriod) -> &'static str {
    match p {
        BudgetPeriod::Daily => "daily",
        BudgetPeriod::Weekly => "weekly",
        BudgetPeriod::Monthly => "monthly",
        BudgetPeriod::Total => "total",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn utc_boundaries() {
        let now = at("2026-12-31T23:59:59Z"); // a Thursday
        let m = Window::of(BudgetPeriod::Monthly, now);
        assert_eq!(
            (rfc3339(m.start_ms), rfc3339(m.end_ms.unwrap())),
            ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        let w = Window::of(BudgetPeriod::Weekly, now);
        assert_eq!(rfc3339(w.start_ms), "2026-12-28T00:00:00Z");
        assert_eq!(rfc3339(w.end_ms.unwrap()), "2027-01-04T00:00:00Z");
        let d = Window::of(BudgetPeriod::Daily, now);
        assert_eq!(d.seconds_left(now), Some(1));
        assert_eq!(
            Window::of(BudgetPeriod::Total, now),
            Window {
                start_ms: 0,
                end_ms: None
            }
        );
        let feb = Window::of(BudgetPeriod::Monthly, at("2028-02-29T12:00:00Z"));
        assert_eq!(rfc3339(feb.end_ms.unwrap()), "2028-03-01T00:00:00Z");
    }
}
