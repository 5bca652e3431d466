//! Credits: the unit every balance and every transfer is counted in.
//!
//! # Scale and rounding
//!
//! A `Credits` value is a decimal with exactly [`Credits::SCALE`] = 6 fractional digits
//! (one micro-credit is the smallest unit). The database stores it as `NUMERIC(24,6)`.
//!
//! * Amounts that come **from outside** (API requests, config) are never rounded: more than six
//!   decimals is an error ([`BillingError::TooManyDecimals`]), so a caller always knows exactly
//!   what was booked.
//! * Amounts that we **compute** (for example a usage cost = quantity × unit price) are rounded
//!   once, to six decimals, half away from zero ([`Credits::round_computed`]). Rounding happens
//!   per event, never on sums, so the sum of the booked events is exactly the ledger total.
//!
//! A single amount is bounded by [`Credits::MAX_AMOUNT`] (one trillion credits) so that sums
//! of many amounts stay far inside the column's range; arithmetic is checked and an overflow is
//! an error, never a wrap.

use std::{fmt, str::FromStr};

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::BillingError;

/// An amount of credits with a fixed scale of six decimals. May be negative (a balance can be
/// below zero after usage); transfer amounts are always positive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credits(Decimal);

impl Default for Credits {
    fn default() -> Self {
        Credits::ZERO
    }
}

impl Credits {
    /// Fractional digits kept for every amount.
    pub const SCALE: u32 = 6;
    /// The largest magnitude a single amount from outside may have: 10^12 credits.
    pub const MAX_AMOUNT: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);
    pub const ZERO: Credits = Credits(Decimal::from_parts(0, 0, 0, false, 6));

    /// Builds a value from a decimal that must already fit the scale and the range.
    pub fn new(value: Decimal) -> Result<Self, BillingError> {
        if value.normalize().scale() > Self::SCALE {
            return Err(BillingError::TooManyDecimals { max: Self::SCALE });
        }
        if value.abs() > Self::MAX_AMOUNT {
            return Err(BillingError::OutOfRange {
                max: Self::MAX_AMOUNT.to_string(),
            });
        }
        Ok(Credits::from_stored(value))
    }

    /// Wraps a value read back from storage (already at scale, sums may exceed MAX_AMOUNT).
    pub fn from_stored(value: Decimal) -> Self {
        debug_assert!(
            value.round_dp(Self::SCALE) == value,
            "a stored amount is exact at {} decimals: {value}",
            Self::SCALE
        );
        let mut v = value;
        v.rescale(Self::SCALE);
        if v.is_zero() {
            v.set_sign_positive(true);
        }
        Credits(v)
    }

    /// Rounds a computed value to the scale, half away from zero (the one rounding rule).
    pub fn round_computed(value: Decimal) -> Self {
        Credits::from_stored(
            value.round_dp_with_strategy(Self::SCALE, RoundingStrategy::MidpointAwayFromZero),
        )
    }

    /// Whole credits, for tests and seeds.
    pub fn whole(n: i64) -> Self {
        Credits::from_stored(Decimal::from(n))
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    pub fn is_positive(&self) -> bool {
        self.0 > Decimal::ZERO
    }

    pub fn is_negative(&self) -> bool {
        self.0 < Decimal::ZERO
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn abs(&self) -> Self {
        Credits(self.0.abs())
    }

    /// A positive amount, as every transfer needs.
    pub fn positive(self) -> Result<Self, BillingError> {
        if self.is_positive() {
            Ok(self)
        } else {
            Err(BillingError::NotPositive)
        }
    }

    pub fn checked_add(self, other: Credits) -> Result<Credits, BillingError> {
        self.0
            .checked_add(other.0)
            .map(Credits)
            .ok_or(BillingError::Overflow)
    }

    pub fn checked_sub(self, other: Credits) -> Result<Credits, BillingError> {
        self.0
            .checked_sub(other.0)
            .map(Credits)
            .ok_or(BillingError::Overflow)
    }
}

impl FromStr for Credits {
    type Err = BillingError;

    /// Parses a plain decimal (`"12"`, `"-0.5"`, `"1000.000001"`); no exponents, no spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_chars = !s.is_empty()
            && s.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+')));
        if !ok_chars {
            return Err(BillingError::NotANumber(truncate(s)));
        }
        let unsigned = s.trim_start_matches(['-', '+']);
        let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if int_part.trim_start_matches('0').len() > 13 {
            // Longer than MAX_AMOUNT's 13 digits: out of range, whatever the digits are.
            return Err(BillingError::OutOfRange {
                max: Self::MAX_AMOUNT.to_string(),
            });
        }
        if s.len() > 64 {
            return Err(BillingError::NotANumber(truncate(s)));
        }
        if let Some(frac) = Some(frac_part).filter(|f| !f.is_empty()) {
            let significant = frac.trim_end_matches('0');
            if significant.len() > Self::SCALE as usize {
                return Err(BillingError::TooManyDecimals { max: Self::SCALE });
            }
        }
        let value = Decimal::from_str_exact(s).map_err(|e| match e {
            rust_decimal::Error::ExceedsMaximumPossibleValue
            | rust_decimal::Error::LessThanMinimumPossibleValue => BillingError::OutOfRange {
                max: Self::MAX_AMOUNT.to_string(),
            },
            _ => BillingError::NotANumber(truncate(s)),
        })?;
        Credits::new(value)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Negation is exact (the range is symmetric); a zero stays a plain zero.
impl std::ops::Neg for Credits {
    type Output = Credits;
    fn neg(self) -> Credits {
        if self.is_zero() {
            Credits::ZERO
        } else {
            Credits(-self.0)
        }
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A negative zero (possible from decimal arithmetic) prints as plain zero.
        let v = if self.0.is_zero() {
            Credits::ZERO.0
        } else {
            self.0
        };
        write!(f, "{v}")
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credits({})", self.0)
    }
}

/// Credits travel in JSON as decimal strings (`"12.500000"`), so no client parses them as
/// floating point.
impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Accepts a decimal string (preferred) or a JSON number, read as its shortest decimal text;
/// either way more than six decimals is refused rather than rounded.
impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Credits;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string such as \"12.5\" (at most 6 decimals)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Credits, E> {
                v.parse().map_err(|e: BillingError| E::custom(e))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Credits, E> {
                Credits::new(Decimal::from(v)).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Credits, E> {
                Credits::new(Decimal::from(v)).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Credits, E> {
                json_float_text(v)
                    .parse()
                    .map_err(|e: BillingError| E::custom(e))
            }
        }
        d.deserialize_any(V)
    }
}

/// The decimal text of a non-integer JSON number, for a money field to check.
///
/// A JSON parser hands such numbers over as binary floating point. Up to 15 significant digits
/// that is exact: the shortest text that reads back as the same float is the text that was
/// sent (`12.5` stays "12.5"), and the field's own scale check then refuses too many decimals.
/// When that text has more than 15 digits the float may not be the number that was sent, so
/// its exact binary value is returned instead: its many decimals are refused by the scale
/// check, never rounded to a neighbouring amount. One case stays out of reach: a number sent
/// with more than 15 digits whose float prints shorter (`0.10000000000000001` reads as `0.1`),
/// off by less than 10^-15 of itself, far below the credit scale. Amounts that need every digit
/// kept exactly go as strings, as the API documents.
pub fn json_float_text(v: f64) -> String {
    let shortest = v.to_string();
    let significant = shortest
        .trim_start_matches('-')
        .trim_start_matches(['0', '.'])
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    if significant <= 15 {
        return shortest;
    }
    Decimal::from_f64_retain(v)
        .map(|d| d.to_string())
        .unwrap_or(shortest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_floats_keep_their_text_up_to_15_digits_and_are_refused_past_it() {
        assert_eq!(json_float_text(12.5), "12.5");
        assert_eq!(json_float_text(0.000001), "0.000001");
        assert_eq!(json_float_text(123456789.123456), "123456789.123456");
        // 17 significant digits: the float is not the number sent, so it cannot pass the scale.
        let exact = json_float_text(12345678901.123456);
        assert!(exact.parse::<Credits>().is_err(), "{exact}");
        let c: Credits = serde_json::from_str("12.5").unwrap();
        assert_eq!(c.to_string(), "12.500000");
        assert!(serde_json::from_str::<Credits>("12345678901.123456").is_err());
    }

    #[test]
    fn parses_plain_decimals_at_fixed_scale() {
        let c: Credits = "12.5".parse().unwrap();
        assert_eq!(c.to_string(), "12.500000");
        assert_eq!(
            "-0.000001".parse::<Credits>().unwrap().to_string(),
            "-0.000001"
        );
        assert_eq!(
            "1.1000000".parse::<Credits>().unwrap().to_string(),
            "1.100000"
        );
    }

    #[test]
    fn refuses_more_decimals_than_the_scale() {
        assert_eq!(
            "0.0000001".parse::<Credits>(),
            Err(BillingError::TooManyDecimals { max: 6 })
        );
    }

    #[test]
    fn refuses_out_of_range_and_garbage() {
        assert!(matches!(
            "1000000000001".parse::<Credits>(),
            Err(BillingError::OutOfRange { .. })
        ));
        assert!(matches!(
            "99999999999999999999999999999999999".parse::<Credits>(),
            Err(BillingError::OutOfRange { .. })
        ));
        for bad in ["", "abc", "1e3", " 1", "1.2.3", "--1", "NaN", "0x10"] {
            assert!(
                matches!(bad.parse::<Credits>(), Err(BillingError::NotANumber(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Credits::MAX_AMOUNT.to_string(),
            "1000000000000",
            "MAX_AMOUNT is 10^12"
        );
    }

    #[test]
    fn computed_values_round_half_away_from_zero() {
        let d = Decimal::from_str_exact("0.0000005").unwrap();
        assert_eq!(Credits::round_computed(d).to_string(), "0.000001");
        assert_eq!(Credits::round_computed(-d).to_string(), "-0.000001");
        let d = Decimal::from_str_exact("0.00000049").unwrap();
        assert_eq!(Credits::round_computed(d).to_string(), "0.000000");
    }

    #[test]
    fn json_accepts_strings_and_numbers_without_rounding() {
        let c: Credits = serde_json::from_str("\"3.25\"").unwrap();
        assert_eq!(c, "3.25".parse().unwrap());
        let c: Credits = serde_json::from_str("7").unwrap();
        assert_eq!(c, Credits::whole(7));
        assert_eq!(
            serde_json::from_str::<Credits>("3.25").unwrap(),
            "3.25".parse().unwrap()
        );
        assert!(serde_json::from_str::<Credits>("3.0000001").is_err());
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"7.000000\"");
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Credits::from_stored(Decimal::MAX);
        assert_eq!(
            max.checked_add(Credits::whole(1)),
            Err(BillingError::Overflow)
        );
    }
}
