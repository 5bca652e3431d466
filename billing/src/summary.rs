//! Monthly summaries: calendar months (UTC) and the reconciliation rule.
//!
//! Attribution: usage belongs to the month of its `occurred_at` (when it happened); every other
//! movement (purchase, bonus, topup, refund, adjustment, reversal, promo) to the month it was booked,
//! and an expiry to the month of its grant's `expires_at` (the instant it is booked at).
//! Opening balance = every movement attributed before the month; closing = opening + credits in
//! − credits out within it. So the closing of one month is the opening of the next, exactly.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::{BillingError, Credits, TransferKind};

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn new(year: i32, month: u32) -> Option<Month> {
        (1..=12)
            .contains(&month)
            .then_some(Month { year, month })?
            .valid()
    }

    fn valid(self) -> Option<Month> {
        (2000..=9998).contains(&self.year).then_some(self)
    }

    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    /// The month a date falls in.
    pub fn of_date(d: NaiveDate) -> Month {
        Month {
            year: d.year(),
            month: d.month(),
        }
    }

    #[allow(
        clippy::expect_used,
        reason = "a Month is valid by construction (Month::new)"
    )]
    pub fn first_day(&self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("a valid month")
    }

    /// The first instant of the month.
    #[allow(clippy::expect_used, reason = "midnight exists on every day")]
    pub fn start(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.first_day().and_hms_opt(0, 0, 0).expect("midnight"))
    }

    /// The first instant of the next month (exclusive end).
    pub fn end(&self) -> DateTime<Utc> {
        self.next().start()
    }

    /// Whether the month is over at `now` (its exclusive end has passed), so its summary may be
    /// generated and stored as final. The current month and later ones are still open: their
    /// figures are live (provisional) and would change after being stored.
    pub fn is_closed_at(&self, now: DateTime<Utc>) -> bool {
        now >= self.end()
    }

    pub fn next(&self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn previous(&self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
}

impl FromStr for Month {
    type Err = BillingError;
    /// `YYYY-MM`.
    fn from_str(s: &str) -> Result<Month, BillingError> {
        let bad = || BillingError::NotANumber(s.chars().take(16).collect());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        Month::new(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?).ok_or_else(bad)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The balance movement of a month, by kind (all from the org's side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Movements {
    pub opening: Credits,
    pub purchased: Credits,
    pub bonus: Credits,
    pub topup: Credits,
    /// Credits taken back by refunds (positive).
    pub refunded: Credits,
    /// Net manual adjustments (signed).
    pub adjusted: Credits,
    /// Net reversals (signed).
    pub reversed: Credits,
    /// Credits consumed by usage (positive).
    pub used: Credits,
    /// Promotional credits operators granted.
    #[serde(default)]
    pub promo: Credits,
    /// Unspent credits that left at their grant's expiry (positive).
    #[serde(default)]
    pub expired: Credits,
}

impl Movements {
    /// Records a month's net movement of one kind, signed from the org's side (a refund's
    /// credits left the org, so they are stored positive in `refunded`). Usage is not booked
    /// here: it belongs to the month it occurred in, from the rollups.
    pub fn record(&mut self, kind: TransferKind, org_net: Credits) {
        match kind {
            TransferKind::Purchase => self.purchased = org_net,
            TransferKind::Bonus => self.bonus = org_net,
            TransferKind::Topup => self.topup = org_net,
            TransferKind::Refund => self.refunded = -org_net,
            TransferKind::Adjustment => self.adjusted = org_net,
            TransferKind::Reversal => self.reversed = org_net,
            TransferKind::Usage => self.used = -org_net,
            TransferKind::Promo => self.promo = org_net,
            TransferKind::Expiry => self.expired = -org_net,
            // A hold moves credits within the org's balance (available ↔ held): no movement.
            TransferKind::Hold | TransferKind::Release => {}
        }
    }

    /// Closing = opening + credits in − credits out.
    pub fn closing(&self) -> Result<Credits, BillingError> {
        self.opening
            .checked_add(self.purchased)?
            .checked_add(self.bonus)?
            .checked_add(self.topup)?
            .checked_sub(self.refunded)?
            .checked_add(self.adjusted)?
            .checked_add(self.reversed)?
            .checked_add(self.promo)?
            .checked_sub(self.expired)?
            .checked_sub(self.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_and_bound() {
        let m: Month = "2024-02".parse().unwrap();
        assert_eq!(m.start().to_rfc3339(), "2024-02-01T00:00:00+00:00");
        assert_eq!(m.end().to_rfc3339(), "2024-03-01T00:00:00+00:00");
        assert_eq!(
            "2024-12".parse::<Month>().unwrap().next().to_string(),
            "2025-01"
        );
        assert_eq!(
            "2025-01".parse::<Month>().unwrap().previous().to_string(),
            "2024-12"
        );
        for bad in ["2024-13", "2024-00", "24-01", "2024-1", "abcd-ef", ""] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_last_millisecond_and_the_first_instant_land_in_their_months() {
        let last: DateTime<Utc> = "2024-02-29T23:59:59.999Z".parse().unwrap();
        let first: DateTime<Utc> = "2024-03-01T00:00:00Z".parse().unwrap();
        assert_eq!(Month::of(last).to_string(), "2024-02");
        assert_eq!(Month::of(first).to_string(), "2024-03");
        assert!(last < Month::of(last).end() && first >= Month::of(first).start());
    }

    #[test]
    fn a_month_is_closed_from_the_first_instant_of_the_next() {
        let feb: Month = "2024-02".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();

        assert!(
            !feb.is_closed_at(at("2024-02-01T00:00:00Z")),
            "its first instant"
        );
        assert!(
            !feb.is_closed_at(at("2024-02-29T23:59:59.999Z")),
            "its last millisecond"
        );
        assert!(
            !feb.is_closed_at(at("2024-01-15T12:00:00Z")),
            "a month in the future"
        );
        assert!(
            feb.is_closed_at(at("2024-03-01T00:00:00Z")),
            "the next month's first instant"
        );
        assert!(feb.is_closed_at(at("2026-11-29T00:00:00Z")), "long past");
        let december: Month = "2024-12".parse().unwrap();
        assert!(!december.is_closed_at(at("2024-12-31T23:59:59.999Z")));
        assert!(december.is_closed_at(at("2025-01-01T00:00:00Z")));
    }

    #[test]
    fn closing_is_opening_plus_in_minus_out() {
        let m = Movements {
            opening: Credits::whole(10),
            purchased: Credits::whole(100),
            bonus: Credits::whole(5),
            topup: Credits::whole(50),
            refunded: Credits::whole(20),
            adjusted: Credits::whole(-3),
            reversed: Credits::ZERO,
            used: Credits::whole(40),
            promo: Credits::whole(7),
            expired: Credits::whole(4),
        };
        assert_eq!(m.closing().unwrap(), Credits::whole(105));
    }
}

/// `Month` as `YYYY-MM` text, for payloads that carry it so (`#[serde(with = "month_text")]`).
pub mod month_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Month;

    pub fn serialize<S: Serializer>(m: &Month, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(m)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Month, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}
