//! Disputes (chargebacks). When a payment is disputed the money may be gone, so what is still
//! unspent of the credits it bought is clawed back at once, auto-topup is paused and the billing
//! contacts are told; the outcome is recorded when the dispute closes.
//!
//! The clawback rule: `min(max(balance, 0), granted − already taken back)`, where `granted` is
//! the base and bonus credits the disputed purchase or topup added and `already taken back` what
//! its refunds reversed. Credits already spent stay spent (the balance never goes below zero by a
//! clawback); a dispute won gives the clawed-back credits back.

use billing::{Credits, Entry, Flow, Posting, Refs};
use uuid::Uuid;

use crate::{NewTransfer, StoreError};

/// A dispute as the processor reports it.
#[derive(Debug, Clone)]
pub struct DisputeReport {
    pub id: String,
    pub payment_intent_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub status: String,
}

/// What opening a dispute did (only the first report of a dispute opens it).
#[derive(Debug, Clone)]
pub struct OpenedDispute {
    pub org_id: Uuid,
    pub clawed_back: Credits,
    pub recipients: Vec<String>,
    pub org_name: String,
}

fn clawback(
    dispute: &str,
    org: Uuid,
    amount: Credits,
    restore: bool,
    why: &str,
    flow: Flow,
) -> NewTransfer {
    let (posting, key) = if restore {
        (
            Posting::refund(org, amount).reversed(),
            format!("dispute:{dispute}:restore"),
        )
    } else {
        (
            Posting::refund(org, amount),
            format!("dispute:{dispute}:clawback"),
        )
    };
    let refs = Refs {
        dispute_id: Some(dispute.to_string()),
        ..Refs::default()
    };
    Entry::new(posting, key, "processor:dispute", why.to_string(), refs).with_flow(flow)
}

handle! {
    /// Disputes of our payments.
    Disputes
}

impl Disputes<'_> {
    /// Records a dispute of one of our payments, claws back what the rule allows and pauses
    /// auto-topup, in one transaction. `None` when the payment is not ours or the dispute was
    /// recorded before (a redelivered event changes nothing).
    pub async fn open_dispute(
        &self,
        d: &DisputeReport,
    ) -> Result<Option<OpenedDispute>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The payment: a purchase (locked first, as refunds and grants lock it) or a topup.
        let purchase = sqlx::query!(
            "SELECT id, org_id FROM purchases WHERE payment_intent_id = $1
                AND state = 'credited' FOR UPDATE",
            d.payment_intent_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let topup = match &purchase {
            Some(_) => None,
            None => sqlx::query!(
                "SELECT t.id, t.org_id FROM topups t
                   JOIN topup_attempts a ON a.topup_id = t.id
                  WHERE a.payment_intent_id = $1 AND t.state = 'succeeded'",
                d.payment_intent_id
            )
            .fetch_optional(&mut *tx)
            .await?
            .map(|t| (t.id, t.org_id)),
        };
        let (org, purchase_id, topup_id) = match (&purchase, topup) {
            (Some(p), _) => (p.org_id, Some(p.id), None),
            (None, Some((id, org))) => (org, None, Some(id)),
            (None, None) => return Ok(None),
        };
        let payment = purchase_id.or(topup_id);
        let mut locked = self.ledger().lock_orgs(&mut tx, &[org]).await?;
        let balance = locked.balance(org).ok_or(StoreError::OrgNotFound)?;
        // What the payment's grants (paid and bonus) still hold, never more than the balance.
        let now = locked.now();
        let mut grants = Vec::new();
        let mut unspent = Credits::ZERO;
        for g in locked.wallet(org).map(|w| w.grants()).unwrap_or_default() {
            let ours = payment.is_some()
                && (g.terms.purchase_id == payment || g.terms.topup_id == payment);
            if ours && g.usable(None, now) {
                unspent = unspent.checked_add(g.remaining)?;
                grants.push(g.id);
            }
        }
        let amount = unspent.min(balance).max(Credits::ZERO);
        let inserted = sqlx::query!(
            "INSERT INTO disputes (id, org_id, purchase_id, topup_id, payment_intent_id,
                                   amount_minor, currency, reason, status, clawed_back)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            d.id,
            org,
            purchase_id,
            topup_id,
            d.payment_intent_id,
            d.amount_minor,
            d.currency,
            d.reason,
            d.status,
            amount.as_decimal()
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(None);
        }
        if amount.is_positive() {
            let why = format!(
                "payment {} disputed ({}): unspent credits clawed back",
                d.payment_intent_id, d.reason
            );
            self.ledger()
                .book_locked(
                    &mut tx,
                    &mut locked,
                    &[clawback(
                        &d.id,
                        org,
                        amount,
                        false,
                        &why,
                        Flow::Grants(grants),
                    )],
                    true,
                )
                .await?;
        }
        let recipients = sqlx::query_scalar!(
            "UPDATE org_billing_settings SET topup_paused_reason = $2, updated_at = now()
              WHERE org_id = $1 RETURNING recipients",
            org,
            format!(
                "a payment is disputed ({}); auto-topup waits for an operator",
                d.id
            )
        )
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_default();
        let org_name = sqlx::query_scalar!("SELECT name FROM orgs WHERE id = $1", org)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(OpenedDispute {
            org_id: org,
            clawed_back: amount,
            recipients,
            org_name,
        }))
    }

    /// Who to tell of a recorded dispute: org, credits clawed back, recipients, org name.
    pub async fn dispute_notice(
        &self,
        id: &str,
    ) -> Result<Option<(Uuid, Credits, Vec<String>, String)>, StoreError> {
        Ok(sqlx::query!(
            r#"SELECT d.org_id, d.clawed_back, o.name,
                      COALESCE(s.recipients, '{}') AS "recipients!"
                 FROM disputes d JOIN orgs o ON o.id = d.org_id
                 LEFT JOIN org_billing_settings s ON s.org_id = d.org_id
                WHERE d.id = $1"#,
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|r| {
            (
                r.org_id,
                Credits::from_stored(r.clawed_back),
                r.recipients,
                r.name,
            )
        }))
    }

    /// Whether a payment is one of ours (a credited purchase or a succeeded topup).
    pub async fn dispute_of_ours(&self, payment_intent_id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM purchases WHERE payment_intent_id = $1)
                   OR EXISTS (SELECT 1 FROM topup_attempts WHERE payment_intent_id = $1)
                   AS "ours!""#,
            payment_intent_id
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records how a dispute ended; a dispute won gives the clawed-back credits back. `false`
    /// when the dispute is unknown (not opened yet, or not ours).
    pub async fn close_dispute(&self, id: &str, outcome: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(d) = sqlx::query!(
            "SELECT org_id, clawed_back, outcome FROM disputes WHERE id = $1 FOR UPDATE",
            id
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        if d.outcome.is_some() {
            return Ok(true);
        }
        sqlx::query!(
            "UPDATE disputes SET outcome = $2, status = $2, closed_at = now() WHERE id = $1",
            id,
            outcome
        )
        .execute(&mut *tx)
        .await?;
        let clawed = Credits::from_stored(d.clawed_back);
        if outcome == "won" && clawed.is_positive() {
            let mut locked = self.ledger().lock_orgs(&mut tx, &[d.org_id]).await?;
            // The grants it took come back on their terms.
            let key = format!("dispute:{id}:clawback");
            let took = self
                .ledger()
                .transfers_by_key(&mut tx, std::slice::from_ref(&key))
                .await?;
            let flow = took
                .get(&key)
                .map(|t| Flow::restoring(&t.grants))
                .unwrap_or_default();
            self.ledger()
                .book_locked(
                    &mut tx,
                    &mut locked,
                    &[clawback(
                        id,
                        d.org_id,
                        clawed,
                        true,
                        "dispute won: credits given back",
                        flow,
                    )],
                    true,
                )
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
