//! Credit grants: every credit an org holds belongs to exactly one grant, and every debit says
//! which grants it consumed.
//!
//! A grant is a block of credits with terms: where it came from, a priority, an optional expiry
//! and an optional restriction to some usage. A [`Wallet`] is an org's grants as the booking
//! sees them under the org's lock; [`Wallet::apply`] moves them for one transfer and says how
//! ([`GrantMove`]s, signed from the grant's side, summing to the transfer's change of the
//! balance). Usage past every grant it may use is the org's *overdraft*: its own negative
//! remainder, repaid first by the next grant.
//!
//! **The burn-down order** (one order for every debit that does not name its grants):
//! 1. grants the usage may use only (a grant restricted to models or resources before one
//!    restricted to usage types, before an unrestricted one);
//! 2. `priority` ascending (0 first; default 50);
//! 3. `expires_at` ascending, grants that never expire last;
//! 4. promotional before paid;
//! 5. `effective_at` ascending (older first);
//! 6. `id`.
//!
//! So `balance = Σ remaining − overdraft` always, and for every grant
//! `remaining = amount − consumed − expired − refunded ≥ 0`.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BillingError, Credits, TransferKind, text_enum, usage::Usage};

text_enum! {
    /// Where a grant's credits came from.
    pub enum GrantSource {
        /// A package bought through a checkout.
        Purchase => "purchase",
        /// The bonus of a package (its parent is the purchase's or topup's grant).
        Bonus => "bonus",
        /// A package bought by auto-topup.
        Topup => "topup",
        /// Promotional credits an operator granted.
        Promo => "promo",
        /// An operator's positive adjustment.
        Adjustment => "adjustment",
    }
}

text_enum! {
    /// Whether money was paid for a grant's credits.
    pub enum GrantCategory {
        Paid => "paid",
        Promotional => "promotional",
    }
}

/// Priorities run from 0 (consumed first) to this.
pub const PRIORITY_MAX: u8 = 100;
/// The priority of a grant that does not say.
pub const PRIORITY_DEFAULT: u8 = 50;
/// Names one restriction may list.
pub const APPLIES_TO_NAMES_MAX: usize = 32;

/// What a grant may pay for: usage of one of these types, models or resources. Empty lists
/// are no restriction of that kind; a restriction with every list empty is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    /// `ai_tokens` or `infra`.
    #[serde(default)]
    pub usage_types: Vec<String>,
    /// AI models, as usage events name them.
    #[serde(default)]
    pub models: Vec<String>,
    /// Infrastructure resources (`cpu_seconds` …).
    #[serde(default)]
    pub resources: Vec<String>,
}

impl AppliesTo {
    /// Whether usage of `scope` may be paid from a grant with this restriction.
    pub fn admits(&self, scope: &UsageScope) -> bool {
        self.usage_types.iter().any(|t| t == scope.usage_type)
            || match scope.usage_type {
                "ai_tokens" => self.models.contains(&scope.name),
                _ => self.resources.contains(&scope.name),
            }
    }

    /// 0 for a restriction to models or resources only, 1 for one that names usage types.
    fn breadth(&self) -> u8 {
        u8::from(!self.usage_types.is_empty())
    }

    /// Checks an operator's restriction: some names, known usage types, bounded lists.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.usage_types.is_empty() && self.models.is_empty() && self.resources.is_empty() {
            return Err("applies_to must name at least one usage type, model or resource");
        }
        if self.usage_types.len() + self.models.len() + self.resources.len() > APPLIES_TO_NAMES_MAX
        {
            return Err("applies_to may name at most 32 usage types, models and resources");
        }
        if self
            .usage_types
            .iter()
            .any(|t| t != "ai_tokens" && t != "infra")
        {
            return Err("applies_to.usage_types may hold `ai_tokens` and `infra` only");
        }
        let bad = |s: &String| s.is_empty() || s.len() > 255 || s.chars().any(char::is_control);
        if self.models.iter().chain(&self.resources).any(bad) {
            return Err("applies_to names must be 1 to 255 characters, no control characters");
        }
        Ok(())
    }
}

/// What a usage debit is for, as grants' restrictions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageScope {
    /// `ai_tokens` or `infra`.
    pub usage_type: &'static str,
    /// The model or the resource.
    pub name: String,
}

impl UsageScope {
    pub fn of(usage: &Usage) -> UsageScope {
        UsageScope {
            usage_type: usage.type_name(),
            name: match usage {
                Usage::AiTokens(a) => a.model.clone(),
                Usage::Infra(i) => i.resource.as_str().to_string(),
            },
        }
    }
}

/// A grant's terms: fixed when it is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantTerms {
    pub source: GrantSource,
    pub category: GrantCategory,
    /// What was paid per credit, in the currency's minor units (0 for bonus and promo).
    pub cost_basis_minor_per_credit: Decimal,
    pub priority: u8,
    pub expires_at: Option<DateTime<Utc>>,
    pub applies_to: Option<AppliesTo>,
    pub purchase_id: Option<Uuid>,
    pub topup_id: Option<Uuid>,
    /// A bonus points at its purchase's (or topup's) grant.
    pub parent_grant_id: Option<Uuid>,
}

impl GrantTerms {
    /// Terms of a credit that says nothing more: paid for purchases and topups, promotional
    /// otherwise, default priority, no expiry, no restriction.
    pub fn plain(source: GrantSource) -> GrantTerms {
        GrantTerms {
            source,
            category: match source {
                GrantSource::Purchase | GrantSource::Topup => GrantCategory::Paid,
                _ => GrantCategory::Promotional,
            },
            cost_basis_minor_per_credit: Decimal::ZERO,
            priority: PRIORITY_DEFAULT,
            expires_at: None,
            applies_to: None,
            purchase_id: None,
            topup_id: None,
            parent_grant_id: None,
        }
    }

    /// The source a credit of `kind` makes when its entry does not say.
    pub fn source_of(kind: TransferKind) -> GrantSource {
        match kind {
            TransferKind::Purchase | TransferKind::Refund => GrantSource::Purchase,
            TransferKind::Topup => GrantSource::Topup,
            TransferKind::Bonus | TransferKind::Reversal => GrantSource::Bonus,
            TransferKind::Promo => GrantSource::Promo,
            _ => GrantSource::Adjustment,
        }
    }
}

/// A grant as booking holds it: terms and what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub id: Uuid,
    pub terms: GrantTerms,
    pub effective_at: DateTime<Utc>,
    pub remaining: Credits,
}

impl Held {
    /// The burn-down order (see the module's documentation), applicability aside.
    pub fn burn_order(&self, other: &Held) -> Ordering {
        let key = |h: &Held| {
            (
                h.terms.applies_to.as_ref().map_or(2, AppliesTo::breadth),
                h.terms.priority,
                h.terms.expires_at.is_none(),
                h.terms.expires_at,
                h.terms.category == GrantCategory::Paid,
                h.effective_at,
                h.id,
            )
        };
        key(self).cmp(&key(other))
    }

    /// Whether `scope` may be paid from this grant at `at`.
    pub fn usable(&self, scope: Option<&UsageScope>, at: DateTime<Utc>) -> bool {
        self.remaining.is_positive()
            && self.terms.expires_at.is_none_or(|e| e > at)
            && match (&self.terms.applies_to, scope) {
                (None, _) | (Some(_), None) => true,
                (Some(a), Some(s)) => a.admits(s),
            }
    }
}

/// How a transfer's debits take grants.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Flow {
    /// The burn-down order over every grant (a credit: a grant of the kind's plain terms).
    #[default]
    Order,
    /// The burn-down order over the grants this usage may use; the rest is overdraft.
    Usage(UsageScope),
    /// Exactly these grants, in this order: a refund, a clawback, an expiry.
    Grants(Vec<Uuid>),
    /// A credit: one new grant with these terms.
    New(GrantTerms),
    /// A credit giving back what a draw took: new grants with the terms of these, these
    /// amounts (a refund the processor refused, a dispute won).
    Restore(Vec<(Uuid, Credits)>),
    /// A hold or its release: no grant moves; the credits go between available and held (the
    /// wallet's `held`), and stay the grants' until usage draws them.
    Hold,
}

impl Flow {
    /// The credit that gives back what a draw took (its moves): the same grants' terms, the
    /// same amounts. A draw booked before grants (no moves) gives back a plain grant.
    pub fn restoring(moves: &[GrantMove]) -> Flow {
        let slices: Vec<(Uuid, Credits)> = moves
            .iter()
            .filter_map(|m| Some((m.grant_id?, -m.amount)))
            .filter(|(_, a)| a.is_positive())
            .collect();
        if slices.is_empty() {
            Flow::Order
        } else {
            Flow::Restore(slices)
        }
    }
}

/// One grant's share of a transfer, signed from the grant's side: positive when credits came
/// in. `grant_id: None` is the org's overdraft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantMove {
    pub grant_id: Option<Uuid>,
    pub amount: Credits,
}

/// What a debit does to a grant's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Consumed,
    Expired,
    Refunded,
}

impl Effect {
    /// The counter a draw by a transfer of `kind` adds to.
    pub fn of(kind: TransferKind) -> Effect {
        match kind {
            TransferKind::Expiry => Effect::Expired,
            TransferKind::Refund | TransferKind::Reversal => Effect::Refunded,
            _ => Effect::Consumed,
        }
    }
}

/// Why grants cannot move as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The grants a debit may take hold less than it.
    #[error("the grants hold {available}, less than {asked}")]
    Insufficient { available: Credits, asked: Credits },
    /// A grant the flow names is not the org's (or not loaded).
    #[error("grant {0} is not one of the org's")]
    Unknown(Uuid),
    /// A flow that does not fit the direction of its transfer.
    #[error("a {0} flow on a transfer of the other direction")]
    Direction(&'static str),
    #[error(transparent)]
    Billing(#[from] BillingError),
}

/// A grant a transfer made.
#[derive(Debug, Clone, PartialEq)]
pub struct Made {
    pub id: Uuid,
    pub terms: GrantTerms,
    pub amount: Credits,
}

/// What one transfer did to the grants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moves {
    pub moves: Vec<GrantMove>,
    pub made: Vec<Made>,
}

/// An org's grants under its lock: the active ones in burn-down order (and any others a flow
/// names), and its overdraft.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wallet {
    grants: Vec<Held>,
    pub overdraft: Credits,
    /// What the org's active holds set aside: in the grants, not available.
    pub held: Credits,
}

impl Wallet {
    pub fn new(mut grants: Vec<Held>, overdraft: Credits) -> Wallet {
        grants.sort_by(Held::burn_order);
        Wallet {
            grants,
            overdraft,
            held: Credits::ZERO,
        }
    }

    /// The same wallet with `held` credits set aside by holds.
    pub fn with_held(mut self, held: Credits) -> Wallet {
        self.held = held;
        self
    }

    pub fn grants(&self) -> &[Held] {
        &self.grants
    }

    pub fn grant(&self, id: Uuid) -> Option<&Held> {
        self.grants.iter().find(|g| g.id == id)
    }

    /// Σ remaining − overdraft − held: what the org's available balance (its account) must be.
    pub fn balance(&self) -> Result<Credits, BillingError> {
        self.grants
            .iter()
            .try_fold(Credits::ZERO, |s, g| s.checked_add(g.remaining))?
            .checked_sub(self.overdraft)?
            .checked_sub(self.held)
    }

    /// Grants with credits left whose expiry is at or before `at`, soonest first.
    pub fn due(&self, at: DateTime<Utc>) -> Vec<(Uuid, Credits, DateTime<Utc>)> {
        let mut due: Vec<_> = self
            .grants
            .iter()
            .filter_map(|g| match g.terms.expires_at {
                Some(e) if e <= at && g.remaining.is_positive() => Some((g.id, g.remaining, e)),
                _ => None,
            })
            .collect();
        due.sort_by_key(|d| (d.2, d.0));
        due
    }

    /// Moves the grants for one transfer of `delta` (signed, the org's side) booked at `at`.
    /// A credit makes grants (its id is the first one's), repaying the overdraft first; a
    /// debit draws as its flow says. On error the wallet is unchanged.
    pub fn apply(
        &mut self,
        transfer_id: Uuid,
        kind: TransferKind,
        delta: Credits,
        flow: &Flow,
        at: DateTime<Utc>,
    ) -> Result<Moves, GrantError> {
        let mut moves = Moves::default();
        if let Flow::Hold = flow {
            let held = self.held.checked_sub(delta)?;
            if held.is_negative() {
                return Err(GrantError::Insufficient {
                    available: self.held,
                    asked: delta,
                });
            }
            self.held = held;
            return Ok(moves);
        }
        if delta.is_positive() {
            let parts: Vec<(Uuid, GrantTerms, Credits)> = match flow {
                Flow::New(terms) => vec![(transfer_id, terms.clone(), delta)],
                Flow::Order => vec![(
                    transfer_id,
                    GrantTerms::plain(GrantTerms::source_of(kind)),
                    delta,
                )],
                Flow::Restore(slices) => {
                    let mut parts = Vec::with_capacity(slices.len());
                    for (i, (from, amount)) in slices.iter().enumerate() {
                        let from = self.grant(*from).ok_or(GrantError::Unknown(*from))?;
                        let id = if i == 0 { transfer_id } else { Uuid::now_v7() };
                        // Credits given back after their grant's expiry expire now, in this
                        // month, never at an instant already past (a closed month).
                        let mut terms = from.terms.clone();
                        terms.expires_at = terms.expires_at.map(|e| e.max(at));
                        parts.push((id, terms, *amount));
                    }
                    let sum = parts
                        .iter()
                        .try_fold(Credits::ZERO, |s, p| s.checked_add(p.2))?;
                    if sum != delta {
                        return Err(GrantError::Insufficient {
                            available: sum,
                            asked: delta,
                        });
                    }
                    parts
                }
                Flow::Usage(_) | Flow::Grants(_) | Flow::Hold => {
                    return Err(GrantError::Direction("debit"));
                }
            };
            for (id, terms, amount) in parts {
                // Only a grant that may pay for anything repays the overdraft: a restricted
                // one keeps its credits for what it was given for.
                let repaid = if terms.applies_to.is_none() {
                    amount.min(self.overdraft)
                } else {
                    Credits::ZERO
                };
                moves.moves.push(GrantMove {
                    grant_id: Some(id),
                    amount,
                });
                if repaid.is_positive() {
                    self.overdraft = self.overdraft.checked_sub(repaid)?;
                    moves.moves.push(GrantMove {
                        grant_id: Some(id),
                        amount: -repaid,
                    });
                    moves.moves.push(GrantMove {
                        grant_id: None,
                        amount: repaid,
                    });
                }
                let held = Held {
                    id,
                    terms: terms.clone(),
                    effective_at: at,
                    remaining: amount.checked_sub(repaid)?,
                };
                let at_index = self
                    .grants
                    .partition_point(|g| g.burn_order(&held) == Ordering::Less);
                self.grants.insert(at_index, held);
                moves.made.push(Made { id, terms, amount });
            }
            return Ok(moves);
        }
        let mut left = -delta;
        let mut takes: Vec<(usize, Credits)> = Vec::new();
        match flow {
            Flow::Order | Flow::Usage(_) => {
                let scope = match flow {
                    Flow::Usage(s) => Some(s),
                    _ => None,
                };
                for (i, g) in self.grants.iter().enumerate() {
                    if left.is_zero() {
                        break;
                    }
                    if g.usable(scope, at) {
                        let take = left.min(g.remaining);
                        takes.push((i, take));
                        left = left.checked_sub(take)?;
                    }
                }
                // Usage already happened: what no grant may pay is overdraft. Any other debit
                // in the order (an operator's negative adjustment) must be covered.
                if left.is_positive() && scope.is_none() && kind != TransferKind::Usage {
                    let available = (-delta).checked_sub(left)?;
                    return Err(GrantError::Insufficient {
                        available,
                        asked: -delta,
                    });
                }
            }
            Flow::Grants(ids) => {
                for id in ids {
                    let i = self
                        .grants
                        .iter()
                        .position(|g| g.id == *id)
                        .ok_or(GrantError::Unknown(*id))?;
                    let take = left.min(self.grants[i].remaining);
                    if take.is_positive() {
                        takes.push((i, take));
                        left = left.checked_sub(take)?;
                    }
                }
                if left.is_positive() {
                    return Err(GrantError::Insufficient {
                        available: (-delta).checked_sub(left)?,
                        asked: -delta,
                    });
                }
            }
            Flow::New(_) | Flow::Restore(_) | Flow::Hold => {
                return Err(GrantError::Direction("credit"));
            }
        }
        for (i, take) in takes {
            let g = &mut self.grants[i];
            g.remaining = g.remaining.checked_sub(take)?;
            moves.moves.push(GrantMove {
                grant_id: Some(g.id),
                amount: -take,
            });
        }
        if left.is_positive() {
            self.overdraft = self.overdraft.checked_add(left)?;
            moves.moves.push(GrantMove {
                grant_id: None,
                amount: -left,
            });
        }
        Ok(moves)
    }

    /// Adds a grant loaded later (one a flow names); no-op when it is there.
    pub fn add(&mut self, held: Held) {
        if self.grant(held.id).is_none() {
            let at = self
                .grants
                .partition_point(|g| g.burn_order(&held) == Ordering::Less);
            self.grants.insert(at, held);
        }
    }

    /// Forgets grants with nothing left (after a batch; they stay stored).
    pub fn compact(&mut self) {
        self.grants.retain(|g| g.remaining.is_positive());
    }
}

/// A refund's share of a payment's grants: `credits` of the paid grants' unspent remainder
/// (the most a refund can take back), and the same fraction of the bonus grants' unspent
/// remainder, rounded to the credit scale (half away from zero), all of it when the refund
/// takes all the paid credits left.
pub fn bonus_share(
    paid_remaining: Credits,
    credits: Credits,
    bonus_remaining: Credits,
) -> Result<Credits, BillingError> {
    if !paid_remaining.is_positive() || credits >= paid_remaining {
        return Ok(bonus_remaining);
    }
    let fraction = credits.as_decimal() / paid_remaining.as_decimal();
    Ok(Credits::round_computed(bonus_remaining.as_decimal() * fraction).min(bonus_remaining))
}

#[cfg(test)]
mod tests;
