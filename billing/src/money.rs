//! Money: what a payment costs, in integer minor units of an ISO 4217 currency.
//!
//! Converted to a payment processor's format only in the payments module.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::BillingError;

/// An ISO 4217 currency the product sells in, with its number of minor-unit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Currency {
    Usd,
    Eur,
    Gbp,
    Jpy,
}

impl Currency {
    /// Digits after the decimal point of the major unit (JPY has none).
    pub fn minor_digits(self) -> u32 {
        match self {
            Currency::Jpy => 0,
            _ => 2,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Currency::Usd => "usd",
            Currency::Eur => "eur",
            Currency::Gbp => "gbp",
            Currency::Jpy => "jpy",
        }
    }
}

impl FromStr for Currency {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "usd" => Ok(Currency::Usd),
            "eur" => Ok(Currency::Eur),
            "gbp" => Ok(Currency::Gbp),
            "jpy" => Ok(Currency::Jpy),
            _ => Err(BillingError::UnknownCurrency(s.chars().take(8).collect())),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money in minor units (cents for USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Money {
            amount_minor,
            currency,
        }
    }
}

/// Amounts as people read them, for e-mails and pages (never for computation).
pub mod display {
    use rust_decimal::Decimal;

    use super::{Currency, Money};

    /// `1234567.5` → `1,234,567.5`: thousands grouped, trailing zeros dropped.
    pub fn grouped(d: Decimal) -> String {
        let text = d.normalize().to_string();
        let (sign, digits) = match text.strip_prefix('-') {
            Some(rest) => ("-", rest.to_string()),
            None => ("", text),
        };
        let (int, frac) = match digits.split_once('.') {
            Some((i, f)) => (i.to_string(), Some(f.to_string())),
            None => (digits, None),
        };
        let mut out = String::new();
        for (i, c) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        match frac {
            Some(f) => format!("{sign}{out}.{f}"),
            None => format!("{sign}{out}"),
        }
    }

    /// `5,000 credits`.
    pub fn credits(c: crate::Credits) -> String {
        format!("{} credits", grouped(c.as_decimal()))
    }

    /// `$50.00`, `€9.97`, `£3.00`, `¥500`.
    pub fn money(m: Money) -> String {
        let digits = m.currency.minor_digits();
        let major = Decimal::new(m.amount_minor, digits);
        let symbol = match m.currency {
            Currency::Usd => "$",
            Currency::Eur => "€",
            Currency::Gbp => "£",
            Currency::Jpy => "¥",
        };
        let mut text = grouped(major);
        if digits > 0 {
            let frac = text.split_once('.').map(|(_, f)| f.len()).unwrap_or(0) as u32;
            if frac == 0 {
                text.push('.');
            }
            text.push_str(&"0".repeat((digits - frac.min(digits)) as usize));
        }
        format!("{symbol}{text}")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn for_people() {
            assert_eq!(grouped(Decimal::new(5_000_000_000, 6)), "5,000");
            assert_eq!(grouped(Decimal::new(12_345_675, 1)), "1,234,567.5");
            assert_eq!(grouped(Decimal::new(-1_060_000_000, 6)), "-1,060");
            assert_eq!(grouped(Decimal::new(999, 0)), "999");
            assert_eq!(money(Money::new(5000, Currency::Usd)), "$50.00");
            assert_eq!(money(Money::new(997, Currency::Eur)), "€9.97");
            assert_eq!(money(Money::new(150, Currency::Gbp)), "£1.50");
            assert_eq!(money(Money::new(500, Currency::Jpy)), "¥500");
            assert_eq!(money(Money::new(123456789, Currency::Usd)), "$1,234,567.89");
        }
    }
}
