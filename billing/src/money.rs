//! Money: what a payment costs, in integer minor units of an ISO 4217 currency.
//!
//! Converted to a payment processor's format only in the payments module.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::BillingError;

/// An ISO 4217 currency the product sells in, with its number of minor-unit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
