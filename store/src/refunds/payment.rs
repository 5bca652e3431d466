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
                r#"SELECT t.org_id, t.state, t.package,
                          (SELECT a.payment_intent_id FROM topup_attempts a
                            WHERE a.topup_id = t.id AND a.outcome = 'succeeded'
                            LIMIT 1) AS payment_intent_id
                     FROM topups t WHERE t.id = $1 FOR UPDATE OF t"#,
                id
            )
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("topup"))?;
            let paid = t.state == "succeeded" && t.package.is_some();
            (
                t.org_id,
                t.state,
                t.package.unwrap_or_default(),
                t.payment_intent_id,
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

/// What a refund of `amount_minor` takes back of a payment's credits and bonus.
pub(super) struct Shares {
    pub(super) credits: Credits,
    pub(super) bonus: Credits,
}

/// The refund's shares of the credits and the bonus, cumulative: everything refunded so far
/// (refunds that have not failed, pending ones included) and this one are rounded once, less
/// what earlier refunds took, so parts never add up to more than the grant and the part that
/// completes the payment takes exactly the remainder. Refused ([`StoreError::Conflict`]) when
/// it would exceed what is left of the payment.
pub(super) async fn refund_shares(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    payment: RefundOf,
    package: &billing::packages::Package,
    amount_minor: i64,
    clamp: bool,
) -> Result<Shares, StoreError> {
    let so_far = sqlx::query!(
        r#"SELECT COALESCE(sum(amount_minor), 0)::bigint AS "amount_minor!",
                  COALESCE(sum(credits), 0) AS "credits!",
                  COALESCE(sum(bonus_credits), 0) AS "bonus_credits!"
             FROM refunds WHERE (purchase_id = $1 OR topup_id = $1) AND state <> 'failed'"#,
        payment.id()
    )
    .fetch_one(&mut **tx)
    .await?;
    let paid = package.price.amount_minor;
    let refunded = so_far.amount_minor;
    // A refund the processor already made is a fact: it takes what is left at most.
    let amount_minor = if clamp {
        amount_minor.min(paid - refunded).max(0)
    } else {
        amount_minor
    };
    if clamp && amount_minor == 0 {
        return Ok(Shares {
            credits: Credits::ZERO,
            bonus: Credits::ZERO,
        });
    }
    if amount_minor <= 0 || refunded + amount_minor > paid {
        return Err(StoreError::RefundExceedsPayment {
            asked_minor: amount_minor,
            left_minor: paid - refunded,
            paid_minor: paid,
        });
    }
    let share_after = Decimal::from(refunded + amount_minor) / Decimal::from(paid);
    let part = |granted: Credits, taken: Decimal| -> Result<Credits, StoreError> {
        let cumulative = Credits::round_computed(granted.as_decimal() * share_after);
        Ok(cumulative.checked_sub(Credits::from_stored(taken))?)
    };
    Ok(Shares {
        credits: part(package.base_credits, so_far.credits)?,
        bonus: part(package.bonus_credits, so_far.bonus_credits)?,
    })
}
