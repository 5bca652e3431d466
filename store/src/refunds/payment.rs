//! The payment a refund is of (a purchase or a topup charge), locked, and the share of its
//! credits and bonus that a refund of part of its money takes back.

use billing::Credits;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::StoreError;

/// The payment a refund is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOf {
    Purchase(Uuid),
    Topup(Uuid),
}

impl RefundOf {
    pub(super) fn id(self) -> Uuid {
        match self {
            RefundOf::Purchase(id) | RefundOf::Topup(id) => id,
        }
    }

    pub(super) fn noun(self) -> &'static str {
        match self {
            RefundOf::Purchase(_) => "purchase",
            RefundOf::Topup(_) => "topup",
        }
    }

    /// `(purchase_id, topup_id)` as the refunds table holds them.
    pub(super) fn columns(self) -> (Option<Uuid>, Option<Uuid>) {
        match self {
            RefundOf::Purchase(id) => (Some(id), None),
            RefundOf::Topup(id) => (None, Some(id)),
        }
    }
}

/// A payment of ours, locked for a refund.
pub(super) struct LockedPayment {
    pub(super) org_id: Uuid,
    pub(super) state: String,
    /// What was bought, when money was received (a credited purchase, a succeeded topup).
    pub(super) package: Option<billing::packages::Package>,
    pub(super) payment_intent_id: Option<String>,
}

/// Locks the purchase or topup (`FOR UPDATE`) and reads what a refund needs of it.
pub(super) async fn lock_payment(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    payment: RefundOf,
) -> Result<LockedPayment, StoreError> {
    let (org_id, state, package, payment_intent_id, paid) = match payment {
        RefundOf::Purchase(id) => {
            let p = sqlx::query!(
                "SELECT org_id, state, package, payment_intent_id FROM purchases
                  WHERE id = $1 FOR UPDATE",
                id
            )
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("purchase"))?;
            let paid = p.state == "credited";
            (p.org_id, p.state, p.package, p.payment_intent_id, paid)
        }
        RefundOf::Topup(id) => {
            let t = sqlx::query!(
                "SELECT org_id, state, package FROM topups WHERE id = $1 FOR UPDATE",
                id
            )
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("topup"))?;
            // In a statement of its own, after the lock: the locking statement reads other
            // tables as of its start, before a success that committed while it waited.
            let payment_intent_id = sqlx::query_scalar!(
                "SELECT payment_intent_id FROM topup_attempts
                  WHERE topup_id = $1 AND outcome = 'succeeded' LIMIT 1",
                id
            )
            .fetch_optional(&mut **tx)
            .await?
            .flatten();
            let paid = t.state == "succeeded" && t.package.is_some();
            (
                t.org_id,
                t.state,
                t.package.unwrap_or_default(),
                payment_intent_id,
                paid,
            )
        }
    };
    let package = if paid {
        Some(serde_json::from_value(package).map_err(|e| StoreError::Decode(e.to_string()))?)
    } else {
        None
    };
    Ok(LockedPayment {
        org_id,
        state,
        package,
        payment_intent_id: payment_intent_id.filter(|pi| !pi.is_empty()),
    })
}

/// What a refund of `amount_minor` takes back of a payment's grants.
#[derive(Debug)]
pub(super) struct Shares {
    pub(super) credits: Credits,
    pub(super) bonus: Credits,
    /// The payment's paid and bonus grants with credits left, in burn-down order.
    pub(super) paid_grants: Vec<Uuid>,
    pub(super) bonus_grants: Vec<Uuid>,
    /// The money the rule allowed (the asked amount unless `clamp` cut it).
    pub(super) amount_minor: i64,
}

/// The refund rule. A refund takes back unspent paid credits only, never consumed ones. What
/// the payment's paid grants still hold (not past expiry) is refundable, worth the least of:
/// those credits at the cost basis (price ÷ base credits, to the nearest minor unit); what is
/// left of the payment less what its used paid credits (consumed or expired) are worth, that
/// worth rounded up to a minor unit, so the money kept always covers the credit used; and what
/// is left of the payment. An unused payment thus refunds to the last cent, and nothing is
/// refundable once no paid credit is left. A refund of `amount_minor` takes
/// `amount_minor ÷ cost basis` credits (to the credit scale, half away from zero; a refund
/// whose credits round to nothing is refused), or all of them when it asks for everything
/// refundable; the bonus grants lose the same fraction of their unspent credits
/// ([`billing::grants::bonus_share`]). Refused up front
/// ([`StoreError::RefundExceedsUnspent`], with what is refundable) when it asks for more, or
/// ([`StoreError::RefundExceedsPayment`]) for more money than is left of the payment; `clamp`
/// (a refund the processor already made) takes what the rule allows instead.
pub(super) async fn refund_shares(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    payment: RefundOf,
    package: &billing::packages::Package,
    wallet: Option<&billing::Wallet>,
    now: chrono::DateTime<chrono::Utc>,
    amount_minor: i64,
    clamp: bool,
) -> Result<Shares, StoreError> {
    use billing::GrantSource;
    let refunded = sqlx::query_scalar!(
        r#"SELECT COALESCE(sum(amount_minor), 0)::bigint AS "amount_minor!"
             FROM refunds WHERE (purchase_id = $1 OR topup_id = $1) AND state <> 'failed'"#,
        payment.id()
    )
    .fetch_one(&mut **tx)
    .await?;
    let paid = package.price.amount_minor;
    let money_left = paid - refunded;
    let id = payment.id();
    let (mut paid_grants, mut bonus_grants) = (Vec::new(), Vec::new());
    let (mut paid_remaining, mut bonus_remaining) = (Credits::ZERO, Credits::ZERO);
    // The payment's paid credits used so far: consumed by usage or expired.
    let used = sqlx::query_scalar!(
        r#"SELECT COALESCE(sum(consumed + expired), 0) AS "used!"
             FROM grants
            WHERE (purchase_id = $1 OR topup_id = $1) AND source <> 'bonus'"#,
        payment.id()
    )
    .fetch_one(&mut **tx)
    .await?;
    for g in wallet.map(|w| w.grants()).unwrap_or_default() {
        let of_payment = g.terms.purchase_id == Some(id) || g.terms.topup_id == Some(id);
        if !of_payment || !g.usable(None, now) {
            continue;
        }
        if g.terms.source == GrantSource::Bonus {
            bonus_remaining = bonus_remaining.checked_add(g.remaining)?;
            bonus_grants.push(g.id);
        } else {
            paid_remaining = paid_remaining.checked_add(g.remaining)?;
            paid_grants.push(g.id);
        }
    }
    let base = package.base_credits.as_decimal();
    let worth = |credits: Decimal, up: bool| -> i64 {
        if base.is_zero() {
            return 0;
        }
        let exact = credits * Decimal::from(paid) / base;
        let minor = if up {
            exact.ceil()
        } else {
            exact.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        };
        minor.try_into().unwrap_or(i64::MAX)
    };
    let refundable_minor = if paid_remaining.is_positive() {
        money_left
            .saturating_sub(worth(used, true))
            .min(worth(paid_remaining.as_decimal(), false))
            .max(0)
    } else {
        0
    };
    let amount_minor = if clamp {
        amount_minor.min(refundable_minor).max(0)
    } else {
        amount_minor
    };
    let none = || Shares {
        credits: Credits::ZERO,
        bonus: Credits::ZERO,
        paid_grants: Vec::new(),
        bonus_grants: Vec::new(),
        amount_minor: 0,
    };
    if clamp && amount_minor == 0 {
        return Ok(none());
    }
    if amount_minor <= 0 || amount_minor > money_left {
        return Err(StoreError::RefundExceedsPayment {
            asked_minor: amount_minor,
            left_minor: money_left,
            paid_minor: paid,
        });
    }
    if amount_minor > refundable_minor {
        return Err(StoreError::RefundExceedsUnspent {
            asked_minor: amount_minor,
            refundable_minor,
            refundable_credits: paid_remaining,
        });
    }
    let credits = if amount_minor == refundable_minor {
        paid_remaining
    } else {
        Credits::round_computed(Decimal::from(amount_minor) * base / Decimal::from(paid))
            .min(paid_remaining)
    };
    if !credits.is_positive() {
        // Money for no credit at all (a cost basis above two million minor units a credit).
        return Err(StoreError::RefundExceedsUnspent {
            asked_minor: amount_minor,
            refundable_minor,
            refundable_credits: paid_remaining,
        });
    }
    let bonus = billing::grants::bonus_share(paid_remaining, credits, bonus_remaining)?;
    Ok(Shares {
        credits,
        bonus,
        paid_grants,
        bonus_grants,
        amount_minor,
    })
}
