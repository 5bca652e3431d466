//! Refunds of our payments (a purchase or an auto-topup charge): the credits are taken back
//! when the refund is accepted, before any money moves, then the processor refunds, each step
//! idempotent. A refund made at the processor itself (its dashboard) is recorded once by the
//! processor's refund id and takes back what the same rule allows, capped by the balance.

use billing::{Credits, Entry, Flow, Posting, Refs, RefundState};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{NewTransfer, OutboxEvent, StoreError, outbox};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: Uuid,
    /// The purchase refunded, or `None` for a topup charge (`topup_id`).
    pub purchase_id: Option<Uuid>,
    pub topup_id: Option<Uuid>,
    pub org_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub credits: Credits,
    pub bonus_credits: Credits,
    pub reason: String,
    pub requested_by: String,
    pub state: RefundState,
    pub stripe_refund_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    /// False when the idempotency key had been used before (this is that refund).
    pub created: bool,
}

struct RefundRow {
    id: Uuid,
    purchase_id: Option<Uuid>,
    topup_id: Option<Uuid>,
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
    fn into_refund(self, created: bool) -> Result<Refund, StoreError> {
        Ok(Refund {
            id: self.id,
            purchase_id: self.purchase_id,
            topup_id: self.topup_id,
            org_id: self.org_id,
            amount_minor: self.amount_minor,
            currency: self.currency,
            credits: Credits::from_stored(self.credits),
            bonus_credits: Credits::from_stored(self.bonus_credits),
            reason: self.reason,
            requested_by: self.requested_by,
            state: self.state.parse()?,
            stripe_refund_id: self.stripe_refund_id,
            payment_intent_id: self.payment_intent_id,
            detail: self.detail,
            created_at: self.created_at,
            created,
        })
    }
}

/// The credits a refund takes back, as ledger transfers: the purchased share as `refund` (to
/// the refunds account), the bonus share as `reversal` (back to promotions). `restore` books the
/// exact opposite (same kinds, the org credited), for a refund the processor refused. Keys are
/// the refund's own, so each direction is booked at most once.
///
/// `flows` say which grants each part takes (base, bonus) or, restoring, gives back.
fn refund_transfers(r: &Refund, restore: bool, flows: [Flow; 2]) -> Vec<NewTransfer> {
    let org = r.org_id;
    let refs = Refs {
        refund_id: Some(r.id),
        topup_id: r.topup_id,
        purchase_id: r.purchase_id,
        ..Refs::default()
    };
    let reason = if restore {
        format!("refund refused by the processor: {}", r.reason)
    } else {
        r.reason.clone()
    };
    let [base_flow, bonus_flow] = flows;
    [
        (Posting::refund(org, r.credits), "base", base_flow),
        (Posting::reversal(org, r.bonus_credits), "bonus", bonus_flow),
    ]
    .into_iter()
    .filter(|(p, _, _)| p.amount.is_positive())
    .map(|(posting, part, flow)| {
        let (posting, key) = if restore {
            (
                posting.reversed(),
                format!("refund:{}:restore:{part}", r.id),
            )
        } else {
            (posting, format!("refund:{}:{part}", r.id))
        };
        Entry::new(posting, key, &r.requested_by, reason.clone(), refs.clone()).with_flow(flow)
    })
    .collect()
}

mod payment;
mod processor;

pub use payment::RefundOf;
use payment::{lock_payment, refund_shares};
pub use processor::ProcessorRefundReport;

handle! {
    /// Refunds of our payments.
    Refunds
}

impl Refunds<'_> {
    /// Accepts a refund of `amount_minor` of a credited purchase and takes its credits back in
    /// the same transaction, before any money moves: unspent paid credits of the payment's
    /// grants and the same fraction of its unspent bonus leave the org's balance now (a refund
    /// the processor refuses gives them back, see [`Refunds::refund_failed`]). The rule, and
    /// what is refused up front with nothing written, is `payment::refund_shares`'s.
    ///
    /// Idempotent on `idempotency_key` (per purchase), looked up under the purchase's lock so
    /// concurrent requests with one key serialize: the same key and body answer the first
    /// refund; the same key with another amount or reason is [`StoreError::IdempotencyConflict`].
    pub async fn request_refund(
        &self,
        payment: RefundOf,
        amount_minor: i64,
        reason: &str,
        requested_by: &str,
        idempotency_key: &str,
    ) -> Result<Refund, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The payment first, then the org: the order grants lock them in too.
        let p = lock_payment(&mut tx, payment).await?;
        if let Some(first) = sqlx::query!(
            "SELECT id, amount_minor, reason FROM refunds
              WHERE (purchase_id = $1 OR topup_id = $1) AND idempotency_key = $2",
            payment.id(),
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
        let Some(package) = &p.package else {
            return Err(StoreError::PaymentNotRefundable {
                what: payment.noun(),
                state: p.state.clone(),
            });
        };
        let mut locked = self.ledger().lock_orgs(&mut tx, &[p.org_id]).await?;
        let shares = refund_shares(
            &mut tx,
            payment,
            package,
            locked.wallet(p.org_id),
            locked.now(),
            amount_minor,
            false,
        )
        .await?;
        let (credits, bonus) = (shares.credits, shares.bonus);
        let balance = locked.balance(p.org_id).ok_or(StoreError::OrgNotFound)?;
        let would_be = balance.checked_sub(credits)?.checked_sub(bonus)?;
        if would_be.is_negative() {
            return Err(StoreError::InsufficientBalance { balance, would_be });
        }
        let (purchase_id, topup_id) = payment.columns();
        let row = sqlx::query_as!(
            RefundRow,
            r#"INSERT INTO refunds (id, purchase_id, topup_id, org_id, amount_minor, currency,
                                   credits, bonus_credits, reason, requested_by, idempotency_key,
                                   payment_intent_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               RETURNING id, purchase_id, topup_id, org_id, amount_minor, currency, credits,
                         bonus_credits, reason, requested_by, state, stripe_refund_id,
                         payment_intent_id, detail, created_at"#,
            Uuid::now_v7(),
            purchase_id,
            topup_id,
            p.org_id,
            amount_minor,
            package.price.currency.code(),
            credits.as_decimal(),
            bonus.as_decimal(),
            reason,
            requested_by,
            idempotency_key,
            p.payment_intent_id
        )
        .fetch_one(&mut *tx)
        .await?;
        let refund = row.into_refund(true)?;
        self.ledger()
            .book_locked(
                &mut tx,
                &mut locked,
                &refund_transfers(
                    &refund,
                    false,
                    [
                        Flow::Grants(shares.paid_grants),
                        Flow::Grants(shares.bonus_grants),
                    ],
                ),
                false,
            )
            .await?;
        // The refund's workflow is started from the outbox too: a request handler that cannot
        // reach Temporal leaves it to the dispatcher, and the reserved credits are never
        // stranded without a workflow to refund or restore them.
        let start = OutboxEvent::RefundStart {
            refund_id: refund.id,
        };
        outbox::write(&mut tx, &[(p.org_id, start)]).await?;
        tx.commit().await?;
        self.refund(refund.id)
            .await
            .map(|r| Refund { created: true, ..r })
    }

    pub async fn refund(&self, id: Uuid) -> Result<Refund, StoreError> {
        sqlx::query_as!(
            RefundRow,
            "SELECT id, purchase_id, topup_id, org_id, amount_minor, currency, credits,
                    bonus_credits, reason, requested_by, state, stripe_refund_id,
                    payment_intent_id, detail, created_at
               FROM refunds WHERE id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("refund"))?
        .into_refund(false)
    }

    /// The refunds of a purchase or a topup, oldest first.
    pub async fn refunds_of(&self, payment: RefundOf) -> Result<Vec<Refund>, StoreError> {
        sqlx::query_as!(
            RefundRow,
            "SELECT id, purchase_id, topup_id, org_id, amount_minor, currency, credits,
                    bonus_credits, reason, requested_by, state, stripe_refund_id,
                    payment_intent_id, detail, created_at
               FROM refunds WHERE purchase_id = $1 OR topup_id = $1 ORDER BY created_at",
            payment.id()
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.into_refund(false))
        .collect()
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
        let reserve = refund_transfers(&r, false, [Flow::Order, Flow::Order]);
        let keys: Vec<String> = reserve.iter().map(|t| t.idempotency_key.clone()).collect();
        let reserved = self.ledger().transfers_by_key(&mut tx, &keys).await?;
        // Each part gives back the grants it took (their terms, their amounts).
        let flow = |key: &String| {
            reserved
                .get(key)
                .map(|t| Flow::restoring(&t.grants))
                .unwrap_or_default()
        };
        let flows = ["base", "bonus"].map(|part| flow(&format!("refund:{}:{part}", r.id)));
        let restore: Vec<NewTransfer> = refund_transfers(&r, true, flows)
            .into_iter()
            .zip(&keys)
            .filter(|(_, key)| reserved.contains_key(*key))
            .map(|(t, _)| t)
            .collect();
        let mut locked = self.ledger().lock_orgs(&mut tx, &[r.org_id]).await?;
        self.ledger()
            .book_locked(&mut tx, &mut locked, &restore, true)
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
        let mut locked = self.ledger().lock_orgs(&mut tx, &[org]).await?;
        self.ledger()
            .book_locked(
                &mut tx,
                &mut locked,
                &refund_transfers(&r, false, [Flow::Order, Flow::Order]),
                true,
            )
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
