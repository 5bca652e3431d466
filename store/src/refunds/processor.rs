//! Refunds made at the processor itself (its dashboard): recorded once by the processor's
//! refund id, taking back what the same rule allows, capped by the balance.

use billing::Credits;
use uuid::Uuid;

use crate::StoreError;

use super::*;

/// A refund as the processor reports it.
#[derive(Debug, Clone)]
pub struct ProcessorRefundReport {
    pub id: String,
    pub payment_intent_id: String,
    pub amount_minor: i64,
}

impl Refunds<'_> {
    /// Records a refund made at the processor itself (its dashboard), reported by
    /// `charge.refunded`, once per processor refund id, and takes its credits back like one of
    /// ours: the same cumulative shares of credits and bonus. The money has already gone back,
    /// so nothing is refused: the shares are capped by what is left of the payment and by the
    /// balance (never below zero; credits already spent stay spent, as for disputes), and the
    /// refund is recorded `reversed` with what it took. `None` when the payment is not ours or
    /// the refund was recorded before.
    pub async fn record_processor_refund(
        &self,
        report: &ProcessorRefundReport,
    ) -> Result<Option<Refund>, StoreError> {
        let Some(payment) = self.payment_of(&report.payment_intent_id).await? else {
            return Ok(None);
        };
        let mut tx = self.pool.begin().await?;
        let p = lock_payment(&mut tx, payment).await?;
        let Some(package) = &p.package else {
            return Ok(None);
        };
        let known = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM refunds WHERE stripe_refund_id = $1"#,
            report.id
        )
        .fetch_one(&mut *tx)
        .await?;
        if known > 0 {
            return Ok(None);
        }
        let mut locked = self.ledger().lock_orgs(&mut tx, &[p.org_id]).await?;
        let shares = refund_shares(
            &mut tx,
            payment,
            package,
            locked.wallet(p.org_id),
            locked.now(),
            report.amount_minor,
            true,
        )
        .await?;
        let balance = locked.balance(p.org_id).ok_or(StoreError::OrgNotFound)?;
        let available = balance.max(Credits::ZERO);
        let credits = shares.credits.min(available);
        let bonus = shares.bonus.min(available.checked_sub(credits)?);
        let wanted = shares.credits.checked_add(shares.bonus)?;
        let took = credits.checked_add(bonus)?;
        let detail = if took < wanted || shares.amount_minor < report.amount_minor {
            format!(
                "took back {} credits, worth {} of the {} refunded: the rest was already spent",
                billing::money::display::credits(took),
                shares.amount_minor,
                report.amount_minor
            )
        } else {
            String::new()
        };
        let (purchase_id, topup_id) = payment.columns();
        let row = sqlx::query_as!(
            RefundRow,
            r#"INSERT INTO refunds (id, purchase_id, topup_id, org_id, amount_minor, currency,
                                   credits, bonus_credits, reason, requested_by, idempotency_key,
                                   payment_intent_id, state, stripe_refund_id, detail, finished_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'refunded at the processor', 'processor',
                       $9, $10, 'reversed', $11, $12, now())
               RETURNING id, purchase_id, topup_id, org_id, amount_minor, currency, credits,
                         bonus_credits, reason, requested_by, state, stripe_refund_id,
                         payment_intent_id, detail, created_at"#,
            Uuid::now_v7(),
            purchase_id,
            topup_id,
            p.org_id,
            report.amount_minor,
            package.price.currency.code(),
            credits.as_decimal(),
            bonus.as_decimal(),
            format!("processor:{}", report.id),
            report.payment_intent_id,
            report.id,
            detail
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
                        Flow::Grants(shares.paid_grants.clone()),
                        Flow::Grants(shares.bonus_grants.clone()),
                    ],
                ),
                false,
            )
            .await?;
        tx.commit().await?;
        Ok(Some(refund))
    }

    /// Which of our payments (a credited purchase, a succeeded topup) this processor payment
    /// is, if any.
    pub async fn payment_of(
        &self,
        payment_intent_id: &str,
    ) -> Result<Option<RefundOf>, StoreError> {
        if payment_intent_id.is_empty() {
            return Ok(None);
        }
        if let Some(id) = sqlx::query_scalar!(
            "SELECT id FROM purchases WHERE payment_intent_id = $1",
            payment_intent_id
        )
        .fetch_optional(&self.pool)
        .await?
        {
            return Ok(Some(RefundOf::Purchase(id)));
        }
        Ok(sqlx::query_scalar!(
            "SELECT topup_id FROM topup_attempts WHERE payment_intent_id = $1 LIMIT 1",
            payment_intent_id
        )
        .fetch_optional(&self.pool)
        .await?
        .map(RefundOf::Topup))
    }
}
