//! Budgets below the org: a limit on what one scope (a user, an API key, a model, a label)
//! may spend per period.
//!
//! The rules (what spend counts, periods and their boundaries, hard and soft, alerts) are stated
//! once, in `docs/architecture.md` §3.2; [`Period::bounds`] and [`Budget::alerts_due`] are their
//! arithmetic.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
pub use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{Credits, holds::Dimensions};

/// Budgets one org may have.
pub const BUDGETS_PER_ORG_MAX: usize = 100;
/// Alert percents one budget may have, each 1..=1000.
pub const ALERTS_MAX: usize = 10;
pub const ALERT_PERCENT_MAX: i32 = 1000;
pub const RECIPIENTS_MAX: usize = 10;
pub const BUDGET_ID_MAX_CHARS: usize = 64;

/// What a budget counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BudgetScope {
    User(String),
    ApiKey(String),
    Model(String),
    Label { key: String, value: String },
}

impl BudgetScope {
    /// Whether usage or a hold about `d` counts toward this scope.
    pub fn matches(&self, d: &Dimensions) -> bool {
        match self {
            BudgetScope::User(u) => d.user.as_deref() == Some(u),
            BudgetScope::ApiKey(k) => d.api_key.as_deref() == Some(k),
            BudgetScope::Model(m) => d.model.as_deref() == Some(m),
            BudgetScope::Label { key, value } => d.labels.get(key) == Some(value),
        }
    }

    /// Stored as kind, key (a label's, else empty) and value.
    pub fn parts(&self) -> (&'static str, &str, &str) {
        match self {
            BudgetScope::User(u) => ("user", "", u),
            BudgetScope::ApiKey(k) => ("api_key", "", k),
            BudgetScope::Model(m) => ("model", "", m),
            BudgetScope::Label { key, value } => ("label", key, value),
        }
    }

    pub fn from_parts(kind: &str, key: &str, value: &str) -> Option<BudgetScope> {
        Some(match kind {
            "user" => BudgetScope::User(value.to_string()),
            "api_key" => BudgetScope::ApiKey(value.to_string()),
            "model" => BudgetScope::Model(value.to_string()),
            "label" => BudgetScope::Label {
                key: key.to_string(),
                value: value.to_string(),
            },
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
    Total,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The period holding `at` in time zone `tz`: its start and, unless `total`, the instant
    /// the next one starts (the reset). A local midnight that does not exist (a DST gap)
    /// starts at the first instant after it.
    pub fn bounds(self, tz: Tz, at: DateTime<Utc>) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        let local = at.with_timezone(&tz).date_naive();
        let (start, next) = match self {
            Period::Total => return (DateTime::<Utc>::UNIX_EPOCH, None),
            Period::Day => (local, local + Days::new(1)),
            Period::Week => {
                let monday = local - Days::new(u64::from(local.weekday().num_days_from_monday()));
                (monday, monday + Days::new(7))
            }
            Period::Month => {
                let first = local.with_day(1).unwrap_or(local);
                (first, first + Months::new(1))
            }
        };
        (midnight(tz, start), Some(midnight(tz, next)))
    }
}

/// The first instant of `day` in `tz`.
fn midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut t = day.and_time(chrono::NaiveTime::MIN);
    // A gap is at most a few hours; step through it by quarter hours (bounded: a day).
    for _ in 0..96 {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return at.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(15);
    }
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    Hard,
    Soft,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Hard => "hard",
            Enforcement::Soft => "soft",
        }
    }

    pub fn parse(s: &str) -> Option<Enforcement> {
        match s {
            "hard" => Some(Enforcement::Hard),
            "soft" => Some(Enforcement::Soft),
            _ => None,
        }
    }
}

/// A budget's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub id: String,
    pub scope: BudgetScope,
    pub limit: Credits,
    pub period: Period,
    pub timezone: Tz,
    pub enforcement: Enforcement,
    /// Ascending, distinct.
    pub alert_at_percent: Vec<i32>,
    pub recipients: Vec<String>,
}

impl Budget {
    /// The current period at `at`.
    pub fn bounds(&self, at: DateTime<Utc>) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        self.period.bounds(self.timezone, at)
    }

    /// What is left of the limit once `spent` and `held` are counted (never below zero).
    pub fn remaining(&self, spent: Credits, held: Credits) -> Credits {
        self.limit
            .checked_sub(spent)
            .and_then(|r| r.checked_sub(held))
            .unwrap_or(Credits::ZERO)
            .max(Credits::ZERO)
    }

    /// The alert percents reached by usage going from `before` to `after`, above those
    /// already sent (`alerted`, the highest sent this period), ascending.
    pub fn alerts_due(&self, before: Credits, after: Credits, alerted: i32) -> Vec<i32> {
        if after <= before || !self.limit.is_positive() {
            return Vec::new();
        }
        let pct = |c: Credits| {
            (c.as_decimal() * rust_decimal::Decimal::from(100)) / self.limit.as_decimal()
        };
        let now = pct(after);
        self.alert_at_percent
            .iter()
            .copied()
            .filter(|p| *p > alerted && rust_decimal::Decimal::from(*p) <= now)
            .collect()
    }
}

/// A budget as a check sees it: its terms and what its scope spent and holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub budget: Budget,
    pub period_start: DateTime<Utc>,
    pub resets_at: Option<DateTime<Utc>>,
    pub spent: Credits,
    pub held: Credits,
}

impl Standing {
    pub fn remaining(&self) -> Credits {
        self.budget.remaining(self.spent, self.held)
    }
}

/// The least room left among the hard budgets in `standings` that match `d`, with its id
/// (the first in id order among equals), or `None` when no hard budget applies.
pub fn hard_room<'a>(standings: &'a [Standing], d: &Dimensions) -> Option<(Credits, &'a str)> {
    standings
        .iter()
        .filter(|s| s.budget.enforcement == Enforcement::Hard && s.budget.scope.matches(d))
        .map(|s| (s.remaining(), s.budget.id.as_str()))
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_day_starts_at_local_midnight() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let (start, next) = Period::Day.bounds(tz, at("2026-12-04T03:00:00Z"));
        assert_eq!(start, at("2026-12-03T05:00:00Z"));
        assert_eq!(next, Some(at("2026-12-04T05:00:00Z")));
        let (start, _) = Period::Day.bounds(tz, at("2026-12-04T05:00:00Z"));
        assert_eq!(start, at("2026-12-04T05:00:00Z"));
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let utc: Tz = "UTC".parse().unwrap();
        // 2026-12-04 is a Friday.
        let (start, next) = Period::Week.bounds(utc, at("2026-12-04T12:00:00Z"));
        assert_eq!(start, at("2026-11-30T00:00:00Z"));
        assert_eq!(next, Some(at("2026-12-07T00:00:00Z")));
        let (start, next) = Period::Month.bounds(utc, at("2026-12-31T23:59:59Z"));
        assert_eq!(start, at("2026-12-01T00:00:00Z"));
        assert_eq!(next, Some(at("2027-01-01T00:00:00Z")));
    }

    #[test]
    fn a_missing_midnight_starts_at_the_first_instant_after() {
        // Santiago skipped from 00:00 to 01:00 on 2026-09-06.
        let tz: Tz = "America/Santiago".parse().unwrap();
        let (start, _) = Period::Day.bounds(tz, at("2026-09-06T12:00:00Z"));
        assert_eq!(start.with_timezone(&tz).date_naive().day(), 6);
        assert!(start < at("2026-09-06T12:00:00Z"));
    }

    #[test]
    fn alerts_fire_once_per_percent() {
        let b = Budget {
            id: "b".into(),
            scope: BudgetScope::User("u".into()),
            limit: Credits::whole(100),
            period: Period::Day,
            timezone: "UTC".parse().unwrap(),
            enforcement: Enforcement::Soft,
            alert_at_percent: vec![50, 80, 100],
            recipients: vec![],
        };
        assert_eq!(
            b.alerts_due(Credits::whole(10), Credits::whole(85), 0),
            vec![50, 80]
        );
        assert_eq!(
            b.alerts_due(Credits::whole(85), Credits::whole(90), 80),
            Vec::<i32>::new()
        );
        assert_eq!(
            b.alerts_due(Credits::whole(90), Credits::whole(100), 80),
            vec![100]
        );
    }
}
