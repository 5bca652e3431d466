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

impl Store {
    /// Records a refund of `amount_minor` of a credited purchase, refusing it before any money
    /// moves when the total refunded would exceed what was paid, or when reversing the credits
    /// (in proportion, base and bonus) would take the org's balance below zero. The same
    /// idempotency key returns the first refund.
    pub async fn request_refund(
        &self,
        purchase_id: Uuid,
        amount_minor: i64,
        reason: &str,
        requested_by: &str,
        idempotency_key: &str,
    ) -> Result<Refund, StoreError> {
        if let Some(existing) = self.refund_by_key(purchase_id, idempotency_key).await? {
            return Ok(existing);
        }
        let mut tx = self.pool.begin().await?;
        let p = sqlx::query!(
            "SELECT org_id, state, package FROM purchases WHERE id = $1 FOR UPDATE",
            purchase_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("purchase"))?;
        if p.state != "credited" {
            return Err(StoreError::Conflict(format!(
                "only a credited purchase can be refunded (this one is {})",
                p.state
            )));
        }
        let package: billing::packages::Package =
            serde_json::from_value(p.package).map_err(|e| StoreError::Decode(e.to_string()))?;
        let refunded: i64 = sqlx::query_scalar!(
            r#"SELECT COALESCE(sum(amount_minor), 0)::bigint AS "n!" FROM refunds
                WHERE purchase_id = $1 AND state <> 'failed'"#,
            purchase_id
        )
        .fetch_one(&mut *tx)
        .await?;
        let paid = package.price.amount_minor;
        if amount_minor <= 0 || refunded + amount_minor > paid {
            return Err(StoreError::Conflict(format!(
                "a refund of {amount_minor} would exceed what is left of the payment ({} of {paid})",
                paid - refunded
            )));
        }
        let share = Decimal::from(amount_minor) / Decimal::from(paid);
        let credits = Credits::round_computed(package.base_credits.as_decimal() * share);
        let bonus = Credits::round_computed(package.bonus_credits.as_decimal() * share);
        let locked = self.lock_orgs(&mut tx, &[p.org_id]).await?;
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
        tx.commit().await?;
        self.refund(row.id)
            .await
            .map(|r| Refund { created: true, ..r })
    }

    async fn refund_by_key(
        &self,
        purchase_id: Uuid,
        key: &str,
    ) -> Result<Option<Refund>, StoreError> {
        let id = sqlx::query_scalar!(
            "SELECT id FROM refunds WHERE purchase_id = $1 AND idempotency_key = $2",
            purchase_id,
            key
        )
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => Ok(Some(self.refund(id).await?)),
            None => Ok(None),
        }
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

    pub async fn refund_failed(&self, id: Uuid, detail: &str) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE refunds SET state = 'failed', detail = $2, finished_at = now()
              WHERE id = $1 AND state = 'pending'",
            id,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Reverses a refunded refund's credits in the ledger: the purchased share as `refund`, the
    /// bonus share as `reversal`, idempotent on the refund, in one transaction with its state.
    pub async fn reverse_refund(&self, id: Uuid) -> Result<Credits, StoreError> {
        let r = self.refund(id).await?;
        let org = r.org_id;
        let refs = serde_json::json!({"refund_id": id, "purchase_id": r.purchase_id,
                                      "stripe_refund_id": r.stripe_refund_id});
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
            if amount.is_positive() {
                transfers.push(NewTransfer {
                    id: Uuid::now_v7(),
                    posting: Posting {
                        debit: Account::Org(org),
                        credit: Account::System(system),
                        amount,
                        kind,
                        org,
                    },
                    idempotency_key: format!("refund:{id}:{part}"),
                    actor: r.requested_by.clone(),
                    reason: r.reason.clone(),
                    refs: refs.clone(),
                });
            }
        }
        let mut tx = self.pool.begin().await?;
        let mut locked = self.lock_orgs(&mut tx, &[org]).await?;
        self.book_locked(&mut tx, &mut locked, &transfers, true)
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
