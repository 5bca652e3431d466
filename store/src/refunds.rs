//! Refunds: checked before any money moves, then refunded by the processor and reversed in the
//! ledger, each step idempotent.

use billing::{Account, Credits, Posting, SystemAccount, TransferKind};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{NewTransfer, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: Uuid,
    pub purchase_id: Uuid,
    pub org_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub credits: Credits,
    pub bonus_credits: Credits,
    pub reason: String,
    pub requested_by: String,
    pub state: String,
    pub stripe_refund_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    /// False when the idempotency key had been used before (this is that refund).
    pub created: bool,
}

struct RefundRow {
    id: Uuid,
    purchase_id: Uuid,
    org_id: Uuid,
    amount_minor: i64,
    currency: String,
    credits: Decimal,
    bonus_credits: Decimal,
    reason: String,
    requested_by: String,
    state: String,
    stripe_refund_id: Option<String>,
    payment_intent_id: Option<String>,
    detail: String,
    created_at: DateTime<Utc>,
}

impl RefundRow {
    fn into_refund(self, created: bool) -> Refund {
        Refund {
            id: self.id,
            purchase_id: self.purchase_id,
            org_id: self.org_id,
            amount_minor: self.amount_minor,
            currency: self.currency,
            credits: Credits::from_stored(self.credits),
            bonus_credits: Credits::from_stored(self.bonus_credits),
            reason: self.reason,
            requested_by: self.requested_by,
            state: self.state,
            stripe_refund_id: self.stripe_refund_id,
            payment_intent_id: self.payment_intent_id,
            detail: self.detail,
            created_at: self.created_at,
            created,
        }
    }
}

/// The credits a refund takes back, as ledger transfers: the purchased share as `refund` (to
/// the refunds account), the bonus share as `reversal` (back to promotions). `restore` books the
/// exact opposite (same kinds, the org credited), for a refund the processor refused. Keys are
/// the refund's own, so each direction is booked at most once.
fn refund_transfers(r: &Refund, restore: bool) -> Vec<NewTransfer> {
    let org = r.org_id;
    let refs = serde_json::json!({"refund_id": r.id, "purchase_id": r.purchase_id});
    let mut transfers = Vec::new();
    for (amount, kind, system, part) in [
        (
            r.credits,
            TransferKind::Refund,
            SystemAccount::Refunds,
            "base",
        ),
        (
            r.bonus_credits,
            TransferKind::Reversal,
            SystemAccount::Promotions,
            "bonus",
        ),
    ] {
        if !amount.is_positive() {
            continue;
        }
        let (debit, credit, key) = if restore {
            (
                Account::System(system),
                Account::Org(org),
                format!("refund:{}:restore:{part}", r.id),
            )
        } else {
            (
                Account::Org(org),
                Account::System(system),
                format!("refund:{}:{part}", r.id),
            )
        };
        transfers.push(NewTransfer {
            id: Uuid::now_v7(),
            posting: Posting {
                debit,
                credit,
                amount,
                kind,
                org,
            },
            idempotency_key: key,
            actor: r.requested_by.clone(),
            reason: if restore {
                format!("refund refused by the processor: {}", r.reason)
            } else {
                r.reason.clone()
            },
            refs: refs.clone(),
        });
    }
    transfers
}

impl Store {
    /// Accepts a refund of `amount_minor` of a credited purchase and takes its credits back in
    /// the same transaction, before any money moves: the refund's share of the purchased
    /// credits and of the bonus leave the org's balance now (a refund the processor refuses
    /// gives them back, see [`Store::refund_failed`]). Refused up front, with nothing written,
    /// when the refunds that have not failed (pending ones included) and this one would exceed
    /// what was paid, or when taking the credits would take the balance below zero.
    ///
    /// Shares are cumulative: the credits of everything refunded so far including this one are
    /// rounded once, less what earlier refunds took, so parts never add up to more than the
    /// grant and the part that completes the payment takes exactly the remainder.
    ///
    /// Idempotent on `idempotency_key` (per purchase), looked up under the purchase's lock so
    /// concurrent requests with one key serialize: the same key and body answer the first
    /// refund; the same key with another amount or reason is [`StoreError::IdempotencyConflict`].
    pub async fn request_refund(
        &self,
        purchase_id: Uuid,
        amount_minor: i64,
        reason: &str,
        requested_by: &str,
        idempotency_key: &str,
    ) -> Result<Refund, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The purchase first, then the org: the order grant_purchase locks them in too.
        let p = sqlx::query!(
            "SELECT org_id, state, package FROM purchases WHERE id = $1 FOR UPDATE",
            purchase_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("purchase"))?;
        if let Some(first) = sqlx::query!(
            "SELECT id, amount_minor, reason FROM refunds
              WHERE purchase_id = $1 AND idempotency_key = $2",
            purchase_id,
            idempotency_key
        )
        .fetch_optional(&mut *tx)
        .await?
        {
            tx.rollback().await?;
            if first.amount_minor != amount_minor || first.reason != reason {
                return Err(StoreError::IdempotencyConflict);
            }
            return self.refund(first.id).await;
        }
        if p.state != "credited" {
            return Err(StoreError::Conflict(format!(
                "only a credited purchase can be refunded (this one is {})",
                p.state
            )));
        }
        let package: billing::packages::Package =
            serde_json::from_value(p.package).map_err(|e| StoreError::Decode(e.to_string()))?;
        let so_far = sqlx::query!(
            r#"SELECT COALESCE(sum(amount_minor), 0)::bigint AS "amount_minor!",
                      COALESCE(sum(credits), 0) AS "credits!",
                      COALESCE(sum(bonus_credits), 0) AS "bonus_credits!"
                 FROM refunds WHERE purchase_id = $1 AND state <> 'failed'"#,
            purchase_id
        )
        .fetch_one(&mut *tx)
        .await?;
        let paid = package.price.amount_minor;
        let refunded = so_far.amount_minor;
        if amount_minor <= 0 || refunded + amount_minor > paid {
            return Err(StoreError::Conflict(format!(
                "a refund of {amount_minor} would exceed what is left of the payment ({} of {paid})",
                paid - refunded
            )));
        }
        let share_after = Decimal::from(refunded + amount_minor) / Decimal::from(paid);
        let part = |granted: Credits, taken: Decimal| -> Result<Credits, StoreError> {
            let cumulative = Credits::round_computed(granted.as_decimal() * share_after);
            Ok(cumulative.checked_sub(Credits::from_stored(taken))?)
        };
        let credits = part(package.base_credits, so_far.credits)?;
        let bonus = part(package.bonus_credits, so_far.bonus_credits)?;
        let mut locked = self.lock_orgs(&mut tx, &[p.org_id]).await?;
        let balance = locked.balance(p.org_id).ok_or(StoreError::OrgNotFound)?;
        let would_be = balance.checked_sub(credits)?.checked_sub(bonus)?;
        if would_be.is_negative() {
            return Err(StoreError::InsufficientBalance { balance, would_be });
        }
        let row = sqlx::query_as!(
            RefundRow,
            r#"INSERT INTO refunds (id, purchase_id, org_id, amount_minor, currency, credits,
                                   bonus_credits, reason, requested_by, idempotency_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               RETURNING id, purchase_id, org_id, amount_minor, currency, credits, bonus_credits,
                         reason, requested_by, state, stripe_refund_id,
                         NULL::text AS payment_intent_id, detail, created_at"#,
            Uuid::now_v7(),
            purchase_id,
            p.org_id,
            amount_minor,
            package.price.currency.code(),
            credits.as_decimal(),
            bonus.as_decimal(),
            reason,
            requested_by,
            idempotency_key
        )
        .fetch_one(&mut *tx)
        .await?;
        let refund = row.into_refund(true);
        self.book_locked(
            &mut tx,
            &mut locked,
            &refund_transfers(&refund, false),
            false,
        )
        .await?;
        // The refund's workflow is started from the outbox too: a request handler that cannot
        // reach Temporal leaves it to the dispatcher, and the reserved credits are never
        // stranded without a workflow to refund or restore them.
        self.enqueue(
            &mut tx,
            p.org_id,
            crate::REFUND_START,
            &serde_json::json!({ "refund_id": refund.id }),
        )
        .await?;
        tx.commit().await?;
        self.refund(refund.id)
            .await
            .map(|r| Refund { created: true, ..r })
    }

    pub async fn refund(&self, id: Uuid) -> Result<Refund, StoreError> {
        Ok(sqlx::query_as!(
            RefundRow,
            "SELECT r.id, r.purchase_id, r.org_id, r.amount_minor, r.currency, r.credits,
                    r.bonus_credits, r.reason, r.requested_by, r.state, r.stripe_refund_id,
                    p.payment_intent_id, r.detail, r.created_at
               FROM refunds r JOIN purchases p ON p.id = r.purchase_id WHERE r.id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("refund"))?
        .into_refund(false))
    }

    pub async fn refunds_of(&self, purchase_id: Uuid) -> Result<Vec<Refund>, StoreError> {
        Ok(sqlx::query_as!(
            RefundRow,
            "SELECT r.id, r.purchase_id, r.org_id, r.amount_minor, r.currency, r.credits,
                    r.bonus_credits, r.reason, r.requested_by, r.state, r.stripe_refund_id,
                    p.payment_intent_id, r.detail, r.created_at
               FROM refunds r JOIN purchases p ON p.id = r.purchase_id
              WHERE r.purchase_id = $1 ORDER BY r.created_at",
            purchase_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.into_refund(false))
        .collect())
    }

    /// The processor refunded it (idempotent).
    pub async fn refund_refunded(
        &self,
        id: Uuid,
        stripe_refund_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE refunds SET state = 'refunded', stripe_refund_id = $2 WHERE id = $1 AND state = 'pending'",
            id,
            stripe_refund_id
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The processor refused the refund: it ends `failed` and the credits it took when it was
    /// accepted come back to the org, in one transaction (idempotent).
    pub async fn refund_failed(&self, id: Uuid, detail: &str) -> Result<(), StoreError> {
        let r = self.refund(id).await?;
        let mut tx = self.pool.begin().await?;
        let pending = sqlx::query_scalar!(
            "SELECT state = 'pending' AS \"pending!\" FROM refunds WHERE id = $1 FOR UPDATE",
            id
        )
        .fetch_one(&mut *tx)
        .await?;
        if !pending {
            return Ok(());
        }
        // Refunds accepted before credits were taken at request time have nothing to give back.
        let reserve = refund_transfers(&r, false);
        let keys: Vec<String> = reserve.iter().map(|t| t.idempotency_key.clone()).collect();
        let reserved = self.transfers_by_key(&mut tx, &keys).await?;
        let restore: Vec<NewTransfer> = refund_transfers(&r, true)
            .into_iter()
            .zip(&keys)
            .filter(|(_, key)| reserved.contains_key(*key))
            .map(|(t, _)| t)
            .collect();
        let mut locked = self.lock_orgs(&mut tx, &[r.org_id]).await?;
        self.book_locked(&mut tx, &mut locked, &restore, true)
            .await?;
        sqlx::query!(
            "UPDATE refunds SET state = 'failed', detail = $2, finished_at = now()
              WHERE id = $1 AND state = 'pending'",
            id,
            detail
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends a refunded refund as `reversed`. Its credits left the balance when it was accepted;
    /// a refund accepted before that rule (round 1) has its transfers booked here, idempotent on
    /// the refund's keys either way.
    pub async fn reverse_refund(&self, id: Uuid) -> Result<Credits, StoreError> {
        let r = self.refund(id).await?;
        let org = r.org_id;
        let mut tx = self.pool.begin().await?;
        let mut locked = self.lock_orgs(&mut tx, &[org]).await?;
        self.book_locked(&mut tx, &mut locked, &refund_transfers(&r, false), true)
            .await?;
        sqlx::query!(
            "UPDATE refunds SET state = 'reversed', finished_at = COALESCE(finished_at, now()) WHERE id = $1",
            id
        )
        .execute(&mut *tx)
        .await?;
        let balance = locked.balance(org).ok_or(StoreError::OrgNotFound)?;
        tx.commit().await?;
        Ok(balance)
    }
}
