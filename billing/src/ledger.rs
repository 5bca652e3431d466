//! Ledger posting rules: which accounts a movement of each kind debits and credits.
//!
//! Every movement is one double-entry transfer: `amount` (always > 0) leaves `debit` and lands
//! on `credit`. An organization's balance is its credits posted minus its debits posted; the
//! system accounts are the other side of every movement, so over all accounts total debits
//! always equal total credits.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BillingError, Credits};

/// The kinds of credit movement. Stored as text; the names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
}

impl TransferKind {
    pub const ALL: [TransferKind; 7] = [
        TransferKind::Purchase,
        TransferKind::Bonus,
        TransferKind::Topup,
        TransferKind::Usage,
        TransferKind::Refund,
        TransferKind::Adjustment,
        TransferKind::Reversal,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

impl SystemAccount {
    pub const ALL: [SystemAccount; 6] = [
        SystemAccount::Sales,
        SystemAccount::Promotions,
        SystemAccount::UsageAi,
        SystemAccount::UsageInfra,
        SystemAccount::Refunds,
        SystemAccount::Adjustments,
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
            self.amount.checked_neg()
        }
    }

    /// Whether this kind of movement may take the org's balance below zero. Only usage may:
    /// it already happened, so it is always recorded (ARCHITECTURE.md §3).
    pub fn may_overdraw(&self) -> bool {
        self.kind == TransferKind::Usage
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
