//! Ledger posting rules: which accounts a movement of each kind debits and credits.
//!
//! Every movement is one double-entry transfer: `amount` (always > 0) leaves `debit` and lands
//! on `credit`. An organization's balance is its credits posted minus its debits posted; the
//! system accounts are the other side of every movement, so over all accounts total debits
//! always equal total credits.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    BillingError, Credits,
    grants::{Flow, GrantTerms},
};

/// The grants a package's purchase or topup makes: base and bonus terms.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageGrant {
    pub base: GrantTerms,
    pub bonus: GrantTerms,
}

/// The kinds of credit movement. Stored as text; the names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Credits bought through a checkout.
    Purchase,
    /// Bonus credits that came with a package.
    Bonus,
    /// Credits bought automatically by auto-topup.
    Topup,
    /// Credits consumed by usage.
    Usage,
    /// Credits taken back because a payment was refunded.
    Refund,
    /// A manual correction by an operator, in either direction.
    Adjustment,
    /// The exact reverse of an earlier transfer.
    Reversal,
    /// Promotional credits an operator granted.
    Promo,
    /// A grant's unspent credits leaving at its expiry (to breakage).
    Expiry,
    /// Credits set aside for a hold (org → held): not available, still the org's.
    Hold,
    /// A hold's credits given back (held → org): at its settle, void or expiry.
    Release,
}

impl TransferKind {
    pub const ALL: [TransferKind; 11] = [
        TransferKind::Purchase,
        TransferKind::Bonus,
        TransferKind::Topup,
        TransferKind::Usage,
        TransferKind::Refund,
        TransferKind::Adjustment,
        TransferKind::Reversal,
        TransferKind::Promo,
        TransferKind::Expiry,
        TransferKind::Hold,
        TransferKind::Release,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Purchase => "purchase",
            TransferKind::Bonus => "bonus",
            TransferKind::Topup => "topup",
            TransferKind::Usage => "usage",
            TransferKind::Refund => "refund",
            TransferKind::Adjustment => "adjustment",
            TransferKind::Reversal => "reversal",
            TransferKind::Promo => "promo",
            TransferKind::Expiry => "expiry",
            TransferKind::Hold => "hold",
            TransferKind::Release => "release",
        }
    }
}

impl FromStr for TransferKind {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransferKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| BillingError::UnknownKind(s.chars().take(32).collect()))
    }
}

impl fmt::Display for TransferKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The system accounts: the other side of every organization's movements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SystemAccount {
    /// Where purchased and topped-up credits come from.
    Sales,
    /// Where bonus credits come from.
    Promotions,
    /// Where AI usage goes.
    UsageAi,
    /// Where infrastructure usage goes.
    UsageInfra,
    /// Where refunded credits go back to.
    Refunds,
    /// The counterpart of manual adjustments.
    Adjustments,
    /// Where expired credits go.
    Breakage,
    /// Where held credits wait: every org's holds, each hold's transfers naming its org.
    Held,
}

impl SystemAccount {
    pub const ALL: [SystemAccount; 8] = [
        SystemAccount::Sales,
        SystemAccount::Promotions,
        SystemAccount::UsageAi,
        SystemAccount::UsageInfra,
        SystemAccount::Refunds,
        SystemAccount::Adjustments,
        SystemAccount::Breakage,
        SystemAccount::Held,
    ];

    /// The account's code in the `accounts` table.
    pub fn code(self) -> &'static str {
        match self {
            SystemAccount::Sales => "sales",
            SystemAccount::Promotions => "promotions",
            SystemAccount::UsageAi => "usage:ai",
            SystemAccount::UsageInfra => "usage:infra",
            SystemAccount::Refunds => "refunds",
            SystemAccount::Adjustments => "adjustments",
            SystemAccount::Breakage => "breakage",
            SystemAccount::Held => "held",
        }
    }
}

/// One side of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Account {
    Org(Uuid),
    System(SystemAccount),
}

impl Account {
    /// The account's code in the `accounts` table: `org:{uuid}` or the system code.
    pub fn code(&self) -> String {
        match self {
            Account::Org(id) => format!("org:{id}"),
            Account::System(s) => s.code().to_string(),
        }
    }
}

/// A movement ready to be booked: who pays, who receives, how much, and which kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    pub debit: Account,
    pub credit: Account,
    pub amount: Credits,
    pub kind: TransferKind,
    /// The organization whose balance this moves.
    pub org: Uuid,
}

impl Posting {
    fn into_org(org: Uuid, from: SystemAccount, amount: Credits, kind: TransferKind) -> Posting {
        Posting {
            debit: Account::System(from),
            credit: Account::Org(org),
            amount,
            kind,
            org,
        }
    }

    fn out_of_org(org: Uuid, to: SystemAccount, amount: Credits, kind: TransferKind) -> Posting {
        Posting {
            debit: Account::Org(org),
            credit: Account::System(to),
            amount,
            kind,
            org,
        }
    }

    /// A package's credits bought through a checkout: sales → org.
    pub fn purchase(org: Uuid, amount: Credits) -> Posting {
        Posting::into_org(org, SystemAccount::Sales, amount, TransferKind::Purchase)
    }

    /// A package's credits bought by auto-topup: sales → org.
    pub fn topup(org: Uuid, amount: Credits) -> Posting {
        Posting::into_org(org, SystemAccount::Sales, amount, TransferKind::Topup)
    }

    /// The bonus that came with a package: promotions → org.
    pub fn bonus(org: Uuid, amount: Credits) -> Posting {
        Posting::into_org(org, SystemAccount::Promotions, amount, TransferKind::Bonus)
    }

    /// Credits consumed by usage: org → the usage account (`usage:ai` or `usage:infra`).
    pub fn usage(org: Uuid, to: SystemAccount, amount: Credits) -> Posting {
        assert!(
            matches!(to, SystemAccount::UsageAi | SystemAccount::UsageInfra),
            "usage goes to a usage account"
        );
        Posting::out_of_org(org, to, amount, TransferKind::Usage)
    }

    /// The purchased share of a refund (or a dispute's clawback): org → refunds.
    pub fn refund(org: Uuid, amount: Credits) -> Posting {
        Posting::out_of_org(org, SystemAccount::Refunds, amount, TransferKind::Refund)
    }

    /// The bonus share of a refund, taken back: org → promotions.
    pub fn reversal(org: Uuid, amount: Credits) -> Posting {
        Posting::out_of_org(
            org,
            SystemAccount::Promotions,
            amount,
            TransferKind::Reversal,
        )
    }

    /// Promotional credits an operator grants: promotions → org.
    pub fn promo(org: Uuid, amount: Credits) -> Posting {
        Posting::into_org(org, SystemAccount::Promotions, amount, TransferKind::Promo)
    }

    /// A grant's unspent credits at its expiry: org → breakage.
    pub fn expiry(org: Uuid, amount: Credits) -> Posting {
        Posting::out_of_org(org, SystemAccount::Breakage, amount, TransferKind::Expiry)
    }

    /// Credits set aside for a hold: org → held. The org's balance is its available credits
    /// (its account) plus what it holds; a hold moves credits between the two.
    pub fn hold(org: Uuid, amount: Credits) -> Posting {
        Posting::out_of_org(org, SystemAccount::Held, amount, TransferKind::Hold)
    }

    /// A hold's credits given back: held → org.
    pub fn release(org: Uuid, amount: Credits) -> Posting {
        Posting::into_org(org, SystemAccount::Held, amount, TransferKind::Release)
    }

    /// The exact opposite movement, of the same kind: a refund the processor refused, a
    /// dispute won.
    pub fn reversed(self) -> Posting {
        Posting {
            debit: self.credit,
            credit: self.debit,
            ..self
        }
    }

    /// An operator's adjustment: a positive amount adds credits to the org, a negative one
    /// removes them. Zero is refused; it would be a movement of nothing.
    pub fn adjustment(org: Uuid, signed_amount: Credits) -> Result<Posting, BillingError> {
        if signed_amount.is_zero() {
            return Err(BillingError::Zero);
        }
        let amount = signed_amount.abs();
        let (debit, credit) = if signed_amount.is_positive() {
            (
                Account::System(SystemAccount::Adjustments),
                Account::Org(org),
            )
        } else {
            (
                Account::Org(org),
                Account::System(SystemAccount::Adjustments),
            )
        };
        Ok(Posting {
            debit,
            credit,
            amount,
            kind: TransferKind::Adjustment,
            org,
        })
    }

    /// How this posting changes the org's balance (credits − debits).
    pub fn org_delta(&self) -> Credits {
        if self.credit == Account::Org(self.org) {
            self.amount
        } else {
            -self.amount
        }
    }

    /// Whether this kind of movement may take the org's balance below zero. Usage may: it
    /// already happened, so it is always recorded (ARCHITECTURE.md §3). So may an expiry: it
    /// removes credits a grant holds, and the balance below zero is the org's overdraft, which
    /// credits restricted to other usage never paid.
    /// A hold may too: its own rules ([`crate::holds::decide`]) say how far, down to the org's
    /// floor with `overage: allow`.
    pub fn may_overdraw(&self) -> bool {
        matches!(
            self.kind,
            TransferKind::Usage | TransferKind::Expiry | TransferKind::Hold
        )
    }
}

/// What a transfer points at: the purchase, topup, refund, dispute or usage event it books,
/// and the payment behind it. Stored as the transfer's `refs` (JSON); absent fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topup_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_intent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_event_id: Option<Uuid>,
    /// The usage event's own id and source, as the org sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<i64>,
    /// The hold a hold or release transfer (or a settle's usage) belongs to: ours and the
    /// client's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hold_id: Option<String>,
    /// An operator adjustment's idempotency key, as the operator sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A movement to book, with its audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The transfer's id (UUIDv7), chosen before booking so other rows can point at it.
    pub id: Uuid,
    pub posting: Posting,
    /// Unique forever: booking the same key twice books once.
    pub idempotency_key: String,
    /// Who did it: `key:{id}`, `operator:{name}`, `workflow:{id}`, `user:{id}` …
    pub actor: String,
    pub reason: String,
    pub refs: Refs,
    /// Which grants it takes or makes (the burn-down order unless it says).
    pub flow: Flow,
}

impl Entry {
    pub fn new(
        posting: Posting,
        idempotency_key: String,
        actor: &str,
        reason: String,
        refs: Refs,
    ) -> Entry {
        Entry {
            id: Uuid::now_v7(),
            posting,
            idempotency_key,
            actor: actor.to_string(),
            reason,
            refs,
            flow: Flow::Order,
        }
    }

    /// The same entry, taking or making grants as `flow` says.
    pub fn with_flow(mut self, flow: Flow) -> Entry {
        self.flow = flow;
        self
    }

    /// A package's grant: its base credits as `base` (of `kind`: purchase or topup) and its
    /// bonus, if any, keyed `{key}:base` and `{key}:bonus` so each is booked once.
    /// Each makes a grant on the package's terms ([`PackageGrant`]): the bonus's parent is the
    /// base's grant.
    pub fn package_grant(
        base: Posting,
        bonus_credits: Credits,
        key: &str,
        actor: &str,
        reasons: (String, String),
        refs: Refs,
        terms: PackageGrant,
    ) -> Vec<Entry> {
        let org = base.org;
        let base = Entry::new(base, format!("{key}:base"), actor, reasons.0, refs.clone())
            .with_flow(Flow::New(terms.base));
        let parent = base.id;
        let mut entries = vec![base];
        if bonus_credits.is_positive() {
            let bonus = GrantTerms {
                parent_grant_id: Some(parent),
                ..terms.bonus
            };
            entries.push(
                Entry::new(
                    Posting::bonus(org, bonus_credits),
                    format!("{key}:bonus"),
                    actor,
                    reasons.1,
                    refs,
                )
                .with_flow(Flow::New(bonus)),
            );
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_adjustment_credits_the_org() {
        let org = Uuid::nil();
        let p = Posting::adjustment(org, Credits::whole(5)).unwrap();
        assert_eq!(p.credit, Account::Org(org));
        assert_eq!(p.org_delta(), Credits::whole(5));
    }

    #[test]
    fn negative_adjustment_debits_the_org_with_a_positive_amount() {
        let org = Uuid::nil();
        let p = Posting::adjustment(org, Credits::whole(-5)).unwrap();
        assert_eq!(p.debit, Account::Org(org));
        assert_eq!(p.amount, Credits::whole(5));
        assert_eq!(p.org_delta(), Credits::whole(-5));
    }

    #[test]
    fn zero_adjustment_is_refused() {
        assert_eq!(
            Posting::adjustment(Uuid::nil(), Credits::ZERO),
            Err(BillingError::Zero)
        );
    }

    #[test]
    fn kinds_round_trip_through_text() {
        for k in TransferKind::ALL {
            assert_eq!(k.as_str().parse::<TransferKind>().unwrap(), k);
        }
    }
}
