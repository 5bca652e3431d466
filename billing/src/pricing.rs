//! The price book and rating: what a usage event costs.
//!
//! A [`PriceBook`] is one immutable version of every price, effective from a point in time.
//! [`PriceCatalog`] holds all versions and finds the one effective at an event's `occurred_at`.
//! Rating multiplies exactly and rounds once per event ([`Credits::round_computed`]).

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Credits, usage::Usage};

/// Infrastructure resources and the unit each is metered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// vCPU-seconds.
    Compute,
    /// GB-seconds of memory.
    Memory,
    /// GB-hours of storage.
    Storage,
    /// GB of egress.
    Bandwidth,
    /// Data operations, priced per 1,000.
    DataOperations,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::Compute,
        Resource::Memory,
        Resource::Storage,
        Resource::Bandwidth,
        Resource::DataOperations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Compute => "compute",
            Resource::Memory => "memory",
            Resource::Storage => "storage",
            Resource::Bandwidth => "bandwidth",
            Resource::DataOperations => "data_operations",
        }
    }

    /// The unit a quantity of this resource is reported in.
    pub fn unit(self) -> &'static str {
        match self {
            Resource::Compute => "vcpu_seconds",
            Resource::Memory => "gb_seconds",
            Resource::Storage => "gb_hours",
            Resource::Bandwidth => "gb",
            Resource::DataOperations => "operations",
        }
    }

    /// How many units one price applies to (data operations are priced per 1,000).
    pub fn price_basis(self) -> Decimal {
        match self {
            Resource::DataOperations => Decimal::from(1000),
            _ => Decimal::ONE,
        }
    }
}

impl FromStr for Resource {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An AI model's prices, in credits per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input_per_mtok: Decimal,
    pub output_per_mtok: Decimal,
    pub cached_input_per_mtok: Decimal,
}

/// One version of the whole price book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceBook {
    pub version: i64,
    pub effective_from: DateTime<Utc>,
    pub models: BTreeMap<String, ModelPrice>,
    /// Credits per unit (per 1,000 for data operations).
    pub infra: BTreeMap<Resource, Decimal>,
}

/// Why an event could not be rated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RatingError {
    /// No version is effective at that time.
    NoPrice,
    UnknownModel(String),
    UnknownResource(Resource),
    Overflow,
}

impl RatingError {
    pub fn code(&self) -> &'static str {
        match self {
            RatingError::NoPrice => "no_price",
            RatingError::UnknownModel(_) => "unknown_model",
            RatingError::UnknownResource(_) => "unknown_resource",
            RatingError::Overflow => "amount_out_of_range",
        }
    }

    pub fn message(&self) -> String {
        match self {
            RatingError::NoPrice => "no price version is effective at occurred_at".into(),
            RatingError::UnknownModel(m) => format!("model `{m}` has no price"),
            RatingError::UnknownResource(r) => format!("resource `{r}` has no price"),
            RatingError::Overflow => "the cost is out of range".into(),
        }
    }
}

const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

impl PriceBook {
    /// The exact cost of one event, rounded once to the credit scale.
    pub fn rate(&self, usage: &Usage) -> Result<Credits, RatingError> {
        let exact = match usage {
            Usage::AiTokens(ai) => {
                let p = self
                    .models
                    .get(&ai.model)
                    .ok_or_else(|| RatingError::UnknownModel(ai.model.clone()))?;
                let tokens = |n: u64, price: Decimal| Decimal::from(n).checked_mul(price);
                let sum = tokens(ai.input_tokens, p.input_per_mtok)
                    .zip(tokens(ai.output_tokens, p.output_per_mtok))
                    .and_then(|(a, b)| a.checked_add(b))
                    .zip(tokens(ai.cached_input_tokens, p.cached_input_per_mtok))
                    .and_then(|(a, b)| a.checked_add(b))
                    .ok_or(RatingError::Overflow)?;
                sum.checked_div(MILLION).ok_or(RatingError::Overflow)?
            }
            Usage::Infra(infra) => {
                let price = self
                    .infra
                    .get(&infra.resource)
                    .ok_or(RatingError::UnknownResource(infra.resource))?;
                infra
                    .quantity
                    .checked_mul(*price)
                    .and_then(|v| v.checked_div(infra.resource.price_basis()))
                    .ok_or(RatingError::Overflow)?
            }
        };
        let cost = Credits::round_computed(exact);
        if cost.as_decimal() > Credits::MAX_AMOUNT {
            return Err(RatingError::Overflow);
        }
        Ok(cost)
    }
}

/// Every price version, oldest first.
#[derive(Debug, Clone, Default)]
pub struct PriceCatalog {
    versions: Vec<Arc<PriceBook>>,
}

impl PriceCatalog {
    pub fn new(mut versions: Vec<PriceBook>) -> Self {
        versions.sort_by_key(|v| v.effective_from);
        PriceCatalog {
            versions: versions.into_iter().map(Arc::new).collect(),
        }
    }

    /// The version effective at `at`: the latest one whose `effective_from` is not after it.
    pub fn at(&self, at: DateTime<Utc>) -> Option<&Arc<PriceBook>> {
        let idx = self.versions.partition_point(|v| v.effective_from <= at);
        idx.checked_sub(1).map(|i| &self.versions[i])
    }

    pub fn latest(&self) -> Option<&Arc<PriceBook>> {
        self.versions.last()
    }

    /// Rates an event with the version effective when it occurred; returns the version used.
    pub fn rate(&self, at: DateTime<Utc>, usage: &Usage) -> Result<(Credits, i64), RatingError> {
        let book = self.at(at).ok_or(RatingError::NoPrice)?;
        Ok((book.rate(usage)?, book.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{AiTokens, InfraUsage};

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn book(version: i64, at: &str, input: &str) -> PriceBook {
        PriceBook {
            version,
            effective_from: at.parse().unwrap(),
            models: [(
                "m".to_string(),
                ModelPrice {
                    input_per_mtok: d(input),
                    output_per_mtok: d("1000"),
                    cached_input_per_mtok: d("125"),
                },
            )]
            .into(),
            infra: Resource::ALL.iter().map(|r| (*r, d("0.04"))).collect(),
        }
    }

    fn ai(input: u64, output: u64, cached: u64) -> Usage {
        Usage::AiTokens(AiTokens {
            model: "m".into(),
            operation: "chat".into(),
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
        })
    }

    #[test]
    fn ai_tokens_cost_per_million_per_class_rounded_once() {
        let b = book(1, "2020-01-01T00:00:00Z", "250");
        // 1234 × 250 + 567 × 1000 + 89 × 125 = 308500 + 567000 + 11125 = 886625 → 0.886625
        assert_eq!(b.rate(&ai(1234, 567, 89)).unwrap().to_string(), "0.886625");
        // One input token: 0.00025 credits.
        assert_eq!(b.rate(&ai(1, 0, 0)).unwrap().to_string(), "0.000250");
        // One cached token at 125/M = 0.000125; at 0.5/M it rounds half away from zero.
        let cheap = book(1, "2020-01-01T00:00:00Z", "0.5");
        assert_eq!(cheap.rate(&ai(1, 0, 0)).unwrap().to_string(), "0.000001");
    }

    #[test]
    fn data_operations_are_priced_per_thousand() {
        let b = book(1, "2020-01-01T00:00:00Z", "1");
        let ops = Usage::Infra(InfraUsage {
            resource: Resource::DataOperations,
            quantity: d("2500"),
        });
        assert_eq!(b.rate(&ops).unwrap().to_string(), "0.100000");
    }

    #[test]
    fn the_version_effective_at_the_event_is_used() {
        let catalog = PriceCatalog::new(vec![
            book(2, "2026-06-01T00:00:00Z", "500"),
            book(1, "2020-01-01T00:00:00Z", "250"),
        ]);
        let before = "2026-05-31T23:59:59.999Z".parse().unwrap();
        let after = "2026-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            catalog.rate(before, &ai(1_000_000, 0, 0)).unwrap(),
            (Credits::whole(250), 1)
        );
        assert_eq!(
            catalog.rate(after, &ai(1_000_000, 0, 0)).unwrap(),
            (Credits::whole(500), 2)
        );
        let ancient = "2019-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            catalog.rate(ancient, &ai(1, 0, 0)),
            Err(RatingError::NoPrice)
        );
    }

    #[test]
    fn unknown_model_is_an_error() {
        let b = book(1, "2020-01-01T00:00:00Z", "1");
        let u = Usage::AiTokens(AiTokens {
            model: "nope".into(),
            operation: String::new(),
            input_tokens: 1,
            output_tokens: 0,
            cached_input_tokens: 0,
        });
        assert_eq!(b.rate(&u), Err(RatingError::UnknownModel("nope".into())));
    }
}
