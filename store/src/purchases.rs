//! Credit packages, purchases and what the payment processor told us.

use billing::{Credits, Entry, Posting, PurchaseState, Refs, packages::Package};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BookOutcome, Claim, OutboxEvent, StoreError, Transfer, idempotency, outbox};

/// A purchase as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Purchase {
    pub id: Uuid,
    pub org_id: Uuid,
    /// The package as it was when bought.
    pub package: Package,
    pub buyer: String,
    /// Where the receipt goes, if anywhere.
    pub receipt_email: Option<String>,
    pub state: PurchaseState,
    pub checkout_session_id: Option<String>,
    pub checkout_url: Option<String>,
    pub payment_intent_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub credited_at: Option<DateTime<Utc>>,
}

/// What a purchase's grant booked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub transfers: Vec<Transfer>,
    pub balance: Credits,
    /// False when the grant had been booked before (a retried activity).
    pub newly_booked: bool,
}

struct PurchaseRow {
    id: Uuid,
    org_id: Uuid,
    package: serde_json::Value,
    buyer: String,
    receipt_email: Option<String>,
    state: String,
    checkout_session_id: Option<String>,
    checkout_url: Option<String>,
    payment_intent_id: Option<String>,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    credited_at: Option<DateTime<Utc>>,
}

impl PurchaseRow {
    fn into_purchase(self) -> Result<Purchase, StoreError> {
        Ok(Purchase {
            id: self.id,
            org_id: self.org_id,
            package: serde_json::from_value(self.package)
                .map_err(|e| StoreError::Decode(e.to_string()))?,
            buyer: self.buyer,
            receipt_email: self.receipt_email,
            state: self.state.parse()?,
            checkout_session_id: self.checkout_session_id,
            checkout_url: self.checkout_url,
            payment_intent_id: self.payment_intent_id,
            expires_at: self.expires_at,
            created_at: self.created_at,
            paid_at: self.paid_at,
            credited_at: self.credited_at,
        })
    }
}

handle! {
    /// Checkout purchases and their grants.
    Purchases
}

impl Purchases<'_> {
    /// Records a purchase and, with `workflow_expiry_secs`, the start of its workflow. With an idempotency key, the same request again returns the first
    /// purchase (and `false`), and the same key with another request is a conflict.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_purchase(
        &self,
        org_id: Uuid,
        package: &Package,
        buyer: &str,
        receipt_email: Option<&str>,
        expires_at: DateTime<Utc>,
        idempotency_key: Option<&str>,
        workflow_expiry_secs: Option<u64>,
    ) -> Result<(Purchase, bool), StoreError> {
        let snapshot =
            serde_json::to_value(package).map_err(|e| StoreError::Decode(e.to_string()))?;
        let scope = format!("purchase:{org_id}");
        // A pay-what-you-want purchase's amount is part of the request (only then: the hash
        // of every other purchase stays what it was).
        let amount = package
            .pay_what_you_want
            .map(|_| package.price.amount_minor.to_be_bytes());
        let mut parts: Vec<&[u8]> = vec![
            package.id.as_bytes(),
            buyer.as_bytes(),
            receipt_email.unwrap_or_default().as_bytes(),
        ];
        if let Some(a) = &amount {
            parts.push(a);
        }
        let hash = idempotency::request_hash(&parts);
        let mut tx = self.pool.begin().await?;
        if let Some(key) = idempotency_key
            && let Claim::Replay(id) =
                idempotency::claim::<Uuid>(&mut tx, &scope, key, &hash).await?
        {
            drop(tx);
            return Ok((self.purchase(id).await?, false));
        }
        let purchase = sqlx::query_as!(
            PurchaseRow,
            "INSERT INTO purchases (id, org_id, package_id, package, buyer, receipt_email,
                                    expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING id, org_id, package, buyer, receipt_email, state, checkout_session_id, checkout_url,
                       payment_intent_id, expires_at, created_at, paid_at, credited_at",
            Uuid::now_v7(),
            org_id,
            package.id,
            snapshot,
            buyer,
            receipt_email,
            expires_at
        )
        .fetch_one(&mut *tx)
        .await?
        .into_purchase()?;
        if let Some(key) = idempotency_key {
            idempotency::finish(&mut tx, &scope, key, &purchase.id).await?;
        }
        // The workflow start, in the same transaction: if the request handler cannot start it
        // (Temporal unreachable, a crash), the dispatcher does, or ends the purchase `failed`
        // once its checkout would have expired. No purchase is left without a workflow.
        // (`None`: the caller runs no checkout workflow, as store-level fixtures do.)
        if let Some(secs) = workflow_expiry_secs {
            let start = OutboxEvent::PurchaseStart {
                purchase_id: purchase.id,
                expires_after_secs: secs,
            };
            outbox::write(&mut tx, &[(org_id, start)]).await?;
        }
        tx.commit().await?;
        Ok((purchase, true))
    }

    pub async fn purchase(&self, id: Uuid) -> Result<Purchase, StoreError> {
        sqlx::query_as!(
            PurchaseRow,
            "SELECT id, org_id, package, buyer, receipt_email, state, checkout_session_id, checkout_url,
                    payment_intent_id, expires_at, created_at, paid_at, credited_at
               FROM purchases WHERE id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("purchase"))?
        .into_purchase()
    }

    /// The purchase a Checkout Session was made for (the return pages find it by the session
    /// id the processor puts in their URL).
    pub async fn purchase_by_session(&self, session_id: &str) -> Result<Purchase, StoreError> {
        let id = sqlx::query_scalar!(
            "SELECT id FROM purchases WHERE checkout_session_id = $1",
            session_id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("purchase"))?;
        self.purchase(id).await
    }

    /// Records the checkout session made for a purchase (idempotent: the same session again
    /// changes nothing).
    pub async fn set_checkout_session(
        &self,
        id: Uuid,
        session_id: &str,
        url: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE purchases SET checkout_session_id = $2, checkout_url = $3, updated_at = now()
              WHERE id = $1 AND (checkout_session_id IS NULL OR checkout_session_id = $2)",
            id,
            session_id,
            url
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a purchase to `paid` (from awaiting_payment or awaiting_funds; later states are
    /// left alone).
    pub async fn mark_purchase_paid(
        &self,
        id: Uuid,
        payment_intent_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE purchases SET state = 'paid', payment_intent_id = $2, paid_at = now(),
                                  updated_at = now()
              WHERE id = $1 AND state IN ('awaiting_payment', 'awaiting_funds')",
            id,
            payment_intent_id
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends an unpaid purchase as `expired` or `failed`.
    pub async fn end_purchase(&self, id: Uuid, state: PurchaseState) -> Result<(), StoreError> {
        assert!(
            PurchaseState::AwaitingPayment.can_become(state) && state.is_final(),
            "an unpaid purchase ends expired or failed, not {state}"
        );
        sqlx::query!(
            "UPDATE purchases SET state = $2, updated_at = now()
              WHERE id = $1 AND state IN ('awaiting_payment', 'awaiting_funds')",
            id,
            state.as_str()
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A checkout completed with a payment that settles later: `awaiting_funds` until the
    /// processor reports the money received or the payment failed.
    pub async fn mark_purchase_awaiting_funds(
        &self,
        id: Uuid,
        payment_intent_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE purchases SET state = 'awaiting_funds', payment_intent_id = $2,
                                  updated_at = now()
              WHERE id = $1 AND state = 'awaiting_payment'",
            id,
            payment_intent_id
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Grants a paid purchase's credits: one transfer for the base credits and one for the
    /// bonus, attributed to the buyer, in one transaction with the purchase's move to
    /// `credited`. Idempotent on the purchase: a second call books nothing.
    pub async fn grant_purchase(&self, id: Uuid) -> Result<Grant, StoreError> {
        let purchase = self.purchase(id).await?;
        let org = purchase.org_id;
        let refs = Refs {
            purchase_id: Some(id),
            package_id: Some(purchase.package.id),
            checkout_session_id: purchase.checkout_session_id.clone(),
            payment_intent_id: purchase.payment_intent_id.clone(),
            ..Refs::default()
        };
        let transfers = Entry::package_grant(
            Posting::purchase(org, purchase.package.base_credits),
            purchase.package.bonus_credits,
            &format!("purchase:{id}"),
            &format!("user:{}", purchase.buyer),
            (
                format!("purchase of {}", purchase.package.name),
                format!("bonus with {}", purchase.package.name),
            ),
            refs,
            purchase.package.grant_terms(
                id,
                false,
                self.clock.booking_time().unwrap_or_else(chrono::Utc::now),
            ),
        );
        let mut tx = self.pool.begin().await?;
        // The purchase first, then the org: the order request_refund locks them in, so a grant
        // retried while a refund of the same purchase is accepted cannot deadlock with it.
        sqlx::query!("SELECT id FROM purchases WHERE id = $1 FOR UPDATE", id)
            .fetch_one(&mut *tx)
            .await?;
        let mut locked = self.ledger().lock_orgs(&mut tx, &[org]).await?;
        let outcomes = self
            .ledger()
            .book_locked(&mut tx, &mut locked, &transfers, true)
            .await?;
        sqlx::query!(
            "UPDATE purchases SET state = 'credited', credited_at = COALESCE(credited_at, now()),
                                  updated_at = now()
              WHERE id = $1",
            id
        )
        .execute(&mut *tx)
        .await?;
        let balance = locked.balance(org).ok_or(StoreError::OrgNotFound)?;
        tx.commit().await?;
        Ok(Grant {
            newly_booked: outcomes.iter().any(|o| matches!(o, BookOutcome::Booked(_))),
            transfers: outcomes.iter().map(|o| o.transfer().clone()).collect(),
            balance,
        })
    }
}
