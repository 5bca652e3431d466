//! Holds: credits set aside for work in flight (an AI call), decided before it runs.
//!
//! A hold moves its amount from the org's available credits to the `held` account (a `hold`
//! transfer) and back (a `release`) when it ends, so the org's balance is `available + held`
//! at every instant and every held credit is in the ledger. A hold reserves part of the
//! balance, not particular grants: usage settled against it draws grants in the burn-down
//! order like any usage.
//!
//! The rules (creating by overage policy, settling, expiry, late settles) are stated once, in
//! `docs/architecture.md` §3.2; [`decide`] and [`settle_split`] are their arithmetic.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::Duration;
use serde::{Deserialize, Serialize};

use crate::{BillingError, Credits};

/// A hold's time to live when the request names none.
pub const TTL_DEFAULT_MS: i64 = 120_000;
/// The shortest and longest time to live (and the most one extension adds).
pub const TTL_MIN_MS: i64 = 1_000;
pub const TTL_MAX_MS: i64 = 86_400_000;

/// What to do when a hold asks for more than may be held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Overage {
    /// Refuse the hold (402).
    #[default]
    Reject,
    /// Hold what fits (at least something must).
    CapToAvailable,
    /// Hold it all, taking available below zero down to the org's floor.
    Allow,
}

impl Overage {
    pub const ALL: [Overage; 3] = [Overage::Reject, Overage::CapToAvailable, Overage::Allow];

    pub fn as_str(self) -> &'static str {
        match self {
            Overage::Reject => "reject",
            Overage::CapToAvailable => "cap_to_available",
            Overage::Allow => "allow",
        }
    }
}

impl FromStr for Overage {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Overage::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| BillingError::UnknownName {
                what: "overage policy",
                name: s.chars().take(32).collect(),
            })
    }
}

/// Where a hold is in its life. Terminal states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Active,
    Settled,
    Voided,
    Expired,
}

impl HoldState {
    pub const ALL: [HoldState; 4] = [
        HoldState::Active,
        HoldState::Settled,
        HoldState::Voided,
        HoldState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Active => "active",
            HoldState::Settled => "settled",
            HoldState::Voided => "voided",
            HoldState::Expired => "expired",
        }
    }

    /// Only an active hold moves, and only to a terminal state.
    pub fn can_become(self, next: HoldState) -> bool {
        self == HoldState::Active && next != HoldState::Active
    }
}

impl fmt::Display for HoldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HoldState {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HoldState::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| BillingError::UnknownKind(s.chars().take(32).collect()))
    }
}

/// What a hold, a check or a usage event is about, for budgets' scopes: the platform's user,
/// its API key, the model, its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dimensions {
    pub user: Option<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Why a hold may not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The org's available credits (down to its floor with `allow`) do not cover it.
    InsufficientCredits { available: Credits },
    /// A hard budget does not: the first one, in id order.
    BudgetExhausted { budget_id: String },
}

/// How much a hold of `requested` may take, by its overage policy, given the org's
/// `available` credits and its `floor` (zero less its overdraft limit), and `budget_room`:
/// the least that any matching hard budget has left (`None`: no hard budget applies) and that
/// budget's id. Budgets are hard whatever the overage: `allow` concerns the org's balance only.
pub fn decide(
    requested: Credits,
    overage: Overage,
    available: Credits,
    floor: Credits,
    budget_room: Option<(Credits, &str)>,
) -> Result<Credits, Refusal> {
    let org_room = match overage {
        Overage::Reject | Overage::CapToAvailable => available,
        Overage::Allow => available
            .checked_sub(floor)
            .unwrap_or(Credits::ZERO)
            .max(Credits::ZERO),
    };
    let insufficient = Refusal::InsufficientCredits { available };
    let exhausted = |id: &str| Refusal::BudgetExhausted {
        budget_id: id.to_string(),
    };
    match overage {
        Overage::Reject | Overage::Allow => {
            if requested > org_room {
                return Err(insufficient);
            }
            if let Some((room, id)) = budget_room
                && requested > room
            {
                return Err(exhausted(id));
            }
            Ok(requested)
        }
        Overage::CapToAvailable => {
            if !org_room.is_positive() {
                return Err(insufficient);
            }
            let mut amount = requested.min(org_room);
            if let Some((room, id)) = budget_room {
                if !room.is_positive() {
                    return Err(exhausted(id));
                }
                amount = amount.min(room);
            }
            Ok(amount)
        }
    }
}

/// A time to live in milliseconds, if within bounds.
pub fn ttl(ms: Option<i64>) -> Option<Duration> {
    let ms = ms.unwrap_or(TTL_DEFAULT_MS);
    (TTL_MIN_MS..=TTL_MAX_MS)
        .contains(&ms)
        .then(|| Duration::milliseconds(ms))
}

/// Of a hold of `amount` settled with `usage`: what the usage took and what went back.
pub fn settle_split(amount: Credits, usage: Credits) -> (Credits, Credits) {
    let settled = usage.min(amount).max(Credits::ZERO);
    let released = amount.checked_sub(settled).unwrap_or(Credits::ZERO);
    (settled, released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: i64) -> Credits {
        Credits::whole(n)
    }

    #[test]
    fn reject_holds_what_fits_or_nothing() {
        assert_eq!(
            decide(c(10), Overage::Reject, c(10), c(-5), None),
            Ok(c(10))
        );
        assert_eq!(
            decide(c(11), Overage::Reject, c(10), c(-5), None),
            Err(Refusal::InsufficientCredits { available: c(10) })
        );
    }

    #[test]
    fn cap_holds_what_is_available_and_refuses_nothing_left() {
        assert_eq!(
            decide(c(11), Overage::CapToAvailable, c(10), c(0), None),
            Ok(c(10))
        );
        assert_eq!(
            decide(
                c(11),
                Overage::CapToAvailable,
                c(10),
                c(0),
                Some((c(3), "b"))
            ),
            Ok(c(3))
        );
        assert!(decide(c(1), Overage::CapToAvailable, c(0), c(-50), None).is_err());
    }

    #[test]
    fn allow_overdraws_down_to_the_floor_only() {
        assert_eq!(decide(c(15), Overage::Allow, c(10), c(-5), None), Ok(c(15)));
        assert!(decide(c(16), Overage::Allow, c(10), c(-5), None).is_err());
        assert_eq!(
            decide(c(15), Overage::Allow, c(10), c(-5), Some((c(14), "b"))),
            Err(Refusal::BudgetExhausted {
                budget_id: "b".into()
            })
        );
    }

    #[test]
    fn settle_splits_into_settled_and_released() {
        assert_eq!(settle_split(c(10), c(4)), (c(4), c(6)));
        assert_eq!(settle_split(c(10), c(10)), (c(10), c(0)));
        assert_eq!(settle_split(c(10), c(14)), (c(10), c(0)));
    }

    #[test]
    fn terminal_states_are_final() {
        for s in HoldState::ALL {
            for n in HoldState::ALL {
                assert_eq!(
                    s.can_become(n),
                    s == HoldState::Active && n != HoldState::Active
                );
            }
        }
    }
}
