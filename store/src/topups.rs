//! Auto-topups: one per crossing, from its decision (charge, skip, cap) through its attempts
//! to its grant or failure, and the crossing written when auto-topup is switched on below its
//! threshold. Over 400 lines because it is one aggregate's whole life, each step idempotent on
//! the topup's id; the settings it reads are in `settings`, its alerts' twin in `alerts`.

use billing::{
    Credits, Entry, Posting, Refs, ThresholdPurpose, packages::Package, topup::TopupState,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Crossed, OutboxEvent, StoreError, outbox};

/// What the auto-topup workflow should do for one crossing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TopupStart {
    /// Charge this.
    Charge {
        topup_id: Uuid,
        package: Package,
        customer: Option<String>,
        payment_method: String,
    },
    /// Nothing to do (disabled, paused, no payment method); recorded as skipped.
    Skipped { topup_id: Uuid, reason: String },
    /// The monthly cap would be exceeded: no charge, the recipients are told.
    Capped {
        topup_id: Uuid,
        recipients: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopupRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub crossing_seq: i64,
    pub state: TopupState,
    pub detail: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: serde_json::Value,
}

handle! {
    /// Auto-topups and their attempts.
    Topups
}

impl Topups<'_> {
    /// When auto-topup is ready (on, not paused, a payment method and a package) and the
    /// org's balance is already below its threshold, writes an auto-topup outbox row in `tx`:
    /// no debit will cross the threshold while the balance stays below it, so without the row
    /// nothing would ever top up (a card saved after a decline paused it, auto-topup turned on
    /// or its threshold raised above the balance). The org's account row is locked, as
    /// bookings and [`Topups::begin_topup`] lock it, so the balance read holds until the commit.
    ///
    /// The row names no ledger crossing, so its `crossing_seq` is negative: one below the
    /// org's lowest so far, never the seq of a crossing whose topup already ran (which would be
    /// skipped as handled). Rows written again before one is dispatched carry the same seq and
    /// make one topup; `begin_topup` also starts none once the balance is back above.
    pub(crate) async fn enqueue_topup_if_below(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        org_id: Uuid,
        cause: &str,
    ) -> Result<(), StoreError> {
        let locked = self.ledger().lock_orgs(tx, &[org_id]).await?;
        let (Some(balance), Some((threshold_id, threshold))) = (
            locked.balance(org_id),
            locked.threshold(org_id, ThresholdPurpose::AutoTopup),
        ) else {
            return Ok(());
        };
        let ready = sqlx::query_scalar!(
            r#"SELECT (topup_enabled AND topup_paused_reason IS NULL
                       AND payment_method_id IS NOT NULL AND topup_package_id IS NOT NULL)
                      AS "ready!"
                 FROM org_billing_settings WHERE org_id = $1"#,
            org_id
        )
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or(false);
        if !ready || balance >= threshold {
            return Ok(());
        }
        let crossing_seq = sqlx::query_scalar!(
            r#"SELECT COALESCE(min(crossing_seq), 0) - 1 AS "seq!" FROM topups
                WHERE org_id = $1 AND crossing_seq < 0"#,
            org_id
        )
        .fetch_one(&mut **tx)
        .await?;
        let crossed = Crossed {
            threshold_id,
            purpose: ThresholdPurpose::AutoTopup,
            threshold,
            balance,
            crossing_seq,
            transfer_id: None,
            cause: Some(cause.to_string()),
        };
        outbox::write(tx, &[(org_id, OutboxEvent::ThresholdCrossed(crossed))]).await
    }

    /// Starts (or finds) the topup for one crossing and decides what to do with it.
    pub async fn begin_topup(
        &self,
        org_id: Uuid,
        crossing_seq: i64,
        daily_max: Option<u32>,
    ) -> Result<TopupStart, StoreError> {
        let s = self.settings().billing_settings(org_id).await?;
        let package = match s.topup_package_id {
            Some(id) => Some(self.packages().package(id).await?),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        // Serialize topup decisions per org (the cap check must see the other topups), and
        // read the balance under that lock: a topup starts only while the balance is below the
        // threshold, so a crossing dispatched after the balance recovered (or two rows
        // announcing one dip) charges nothing more.
        let locked = self.ledger().lock_orgs(&mut tx, &[org_id]).await?;
        let below_threshold = match (
            locked.balance(org_id),
            locked.threshold(org_id, ThresholdPurpose::AutoTopup),
        ) {
            (Some(balance), Some((_, threshold))) => balance < threshold,
            _ => false,
        };
        let existing = sqlx::query!(
            "SELECT id, state, detail FROM topups WHERE org_id = $1 AND crossing_seq = $2",
            org_id,
            crossing_seq
        )
        .fetch_optional(&mut *tx)
        .await?;
        let topup_id = existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7);
        // Topups that charged (or tried to) in the last 24 hours: a topup that leaves the
        // balance below the threshold starts another, so a runaway spend is bounded by this
        // as well as by the monthly cap.
        let charged_today = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM topups
                WHERE org_id = $1 AND id <> $2 AND state IN ('succeeded', 'running', 'failed')
                  AND created_at > now() - interval '24 hours'"#,
            org_id,
            topup_id
        )
        .fetch_one(&mut *tx)
        .await?;
        let over_daily = daily_max.is_some_and(|max| charged_today >= i64::from(max));
        let skip = if existing.as_ref().is_some_and(|e| e.state != "running") {
            Some("this crossing was already handled")
        } else if !s.topup_enabled {
            Some("auto-topup is disabled")
        } else if s.topup_paused_reason.is_some() {
            Some("auto-topup is paused until the payment method is updated")
        } else if s.payment_method_id.is_none() {
            Some("no saved payment method")
        } else if package.is_none() {
            Some("no package chosen")
        } else if existing.is_none() && !below_threshold {
            // A retried decision for a running topup (`existing`) charges as it first decided.
            Some("the balance is not below the auto-topup threshold")
        } else if existing.is_none() && over_daily {
            Some("the daily auto-topup limit is reached")
        } else {
            None
        };
        let decision = match (skip, &package) {
            (Some(reason), _) => TopupStart::Skipped {
                topup_id,
                reason: reason.to_string(),
            },
            (None, None) => TopupStart::Skipped {
                topup_id,
                reason: "no package chosen".to_string(),
            },
            (None, Some(p)) => {
                let charged: i64 = sqlx::query_scalar!(
                    r#"SELECT COALESCE(sum(amount_minor), 0)::bigint AS "n!" FROM topups
                        WHERE org_id = $1 AND state IN ('succeeded', 'running') AND id <> $2
                          AND date_trunc('month', created_at AT TIME ZONE 'UTC')
                            = date_trunc('month', now() AT TIME ZONE 'UTC')"#,
                    org_id,
                    topup_id
                )
                .fetch_one(&mut *tx)
                .await?;
                let cap = s.topup_monthly_cap_minor.unwrap_or(i64::MAX);
                if billing::topup::within_cap(charged, p.price.amount_minor, cap) {
                    TopupStart::Charge {
                        topup_id,
                        package: p.clone(),
                        customer: s.stripe_customer_id.clone(),
                        payment_method: s.payment_method_id.clone().unwrap_or_default(),
                    }
                } else {
                    TopupStart::Capped {
                        topup_id,
                        recipients: s.recipients.clone(),
                    }
                }
            }
        };
        let (state, detail) = match &decision {
            TopupStart::Charge { .. } => (TopupState::Running, String::new()),
            TopupStart::Skipped { reason, .. } => (TopupState::Skipped, reason.clone()),
            TopupStart::Capped { .. } => (
                TopupState::Capped,
                "the monthly cap would be exceeded".to_string(),
            ),
        };
        if existing.is_none() {
            sqlx::query!(
                "INSERT INTO topups (id, org_id, crossing_seq, package, amount_minor, currency, state,
                                     detail, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $7 = 'running' THEN NULL ELSE now() END)",
                topup_id,
                org_id,
                crossing_seq,
                package.as_ref().and_then(|p| serde_json::to_value(p).ok()),
                package.as_ref().map(|p| p.price.amount_minor),
                package.as_ref().map(|p| p.price.currency.code()),
                state.as_str(),
                detail
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(decision)
    }

    /// Records one charge attempt (idempotent per attempt number).
    pub async fn record_topup_attempt(
        &self,
        topup_id: Uuid,
        attempt: i32,
        outcome: &str,
        code: Option<&str>,
        decline_code: Option<&str>,
        payment_intent_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO topup_attempts (topup_id, attempt, outcome, code, decline_code, payment_intent_id)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            topup_id,
            attempt,
            outcome,
            code,
            decline_code,
            payment_intent_id
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A processing attempt settled: its outcome (and codes) as the processor reports them.
    pub async fn settle_topup_attempt(
        &self,
        topup_id: Uuid,
        attempt: i32,
        outcome: &str,
        code: Option<&str>,
        decline_code: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE topup_attempts SET outcome = $3, code = $4, decline_code = $5
              WHERE topup_id = $1 AND attempt = $2 AND outcome = 'processing'",
            topup_id,
            attempt,
            outcome,
            code,
            decline_code
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Grants a paid topup's credits (package base as `topup`, bonus as `bonus`), idempotent on
    /// the topup, and marks it succeeded in the same transaction. Returns the balance after.
    pub async fn grant_topup(
        &self,
        topup_id: Uuid,
        payment_intent_id: &str,
    ) -> Result<Credits, StoreError> {
        let t = sqlx::query!("SELECT org_id, package FROM topups WHERE id = $1", topup_id)
            .fetch_one(&self.pool)
            .await?;
        let package: Package = serde_json::from_value(t.package.unwrap_or_default())
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        let org = t.org_id;
        let refs = Refs {
            topup_id: Some(topup_id),
            payment_intent_id: Some(payment_intent_id.to_string()),
            package_id: Some(package.id),
            ..Refs::default()
        };
        let transfers = Entry::package_grant(
            Posting::topup(org, package.base_credits),
            package.bonus_credits,
            &format!("topup:{topup_id}"),
            "workflow:auto-topup",
            (
                format!("auto-topup: {}", package.name),
                format!("auto-topup bonus: {}", package.name),
            ),
            refs,
            package.grant_terms(
                topup_id,
                true,
                self.clock.booking_time().unwrap_or_else(chrono::Utc::now),
            ),
        );
        let mut tx = self.pool.begin().await?;
        // The topup first, then the org: the order a refund of it locks them in.
        sqlx::query!("SELECT id FROM topups WHERE id = $1 FOR UPDATE", topup_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut locked = self.ledger().lock_orgs(&mut tx, &[org]).await?;
        self.ledger()
            .book_locked(&mut tx, &mut locked, &transfers, true)
            .await?;
        sqlx::query!(
            "UPDATE topups SET state = 'succeeded', finished_at = COALESCE(finished_at, now())
              WHERE id = $1",
            topup_id
        )
        .execute(&mut *tx)
        .await?;
        let balance = locked.balance(org).ok_or(StoreError::OrgNotFound)?;
        // Still below the threshold (spend went on while the charge ran, or the package is
        // smaller than the dip): another topup, dispatched once this one's workflow has ended,
        // and bounded by the monthly cap and the daily limit.
        self.enqueue_topup_if_below(&mut tx, org, "a topup left the balance below the threshold")
            .await?;
        tx.commit().await?;
        Ok(balance)
    }

    /// Ends a topup as failed and pauses auto-topup until the payment method is replaced.
    /// Returns who to tell.
    pub async fn fail_topup(
        &self,
        topup_id: Uuid,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let org = sqlx::query_scalar!(
            "UPDATE topups SET state = 'failed', detail = $2, finished_at = COALESCE(finished_at, now())
              WHERE id = $1 RETURNING org_id",
            topup_id,
            reason
        )
        .fetch_one(&mut *tx)
        .await?;
        let recipients = sqlx::query_scalar!(
            "UPDATE org_billing_settings SET topup_paused_reason = $2, updated_at = now()
              WHERE org_id = $1 RETURNING recipients",
            org,
            reason
        )
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_default();
        tx.commit().await?;
        Ok(recipients)
    }

    pub async fn topups(&self, org_id: Uuid) -> Result<Vec<TopupRecord>, StoreError> {
        sqlx::query!(
            r#"SELECT t.id, t.org_id, t.crossing_seq, t.state, t.detail, t.amount_minor, t.currency,
                      t.created_at, t.finished_at,
                      COALESCE((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt,
                                  'outcome', a.outcome, 'code', a.code, 'decline_code', a.decline_code,
                                  'payment_intent_id', a.payment_intent_id, 'at', a.created_at)
                                  ORDER BY a.attempt)
                                 FROM topup_attempts a WHERE a.topup_id = t.id), '[]'::jsonb)
                        AS "attempts!"
                 FROM topups t WHERE t.org_id = $1 ORDER BY t.created_at DESC LIMIT 100"#,
            org_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(TopupRecord {
                id: r.id,
                org_id: r.org_id,
                crossing_seq: r.crossing_seq,
                state: r.state.parse()?,
                detail: r.detail,
                amount_minor: r.amount_minor,
                currency: r.currency,
                created_at: r.created_at,
                finished_at: r.finished_at,
                attempts: r.attempts,
            })
        })
        .collect()
    }

    /// `running`, `succeeded`, `failed`, `capped` or `skipped`.
    pub async fn topup_state(&self, topup_id: Uuid) -> Result<TopupState, StoreError> {
        Ok(
            sqlx::query_scalar!("SELECT state FROM topups WHERE id = $1", topup_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound("topup"))?
                .parse()?,
        )
    }

    pub async fn topup_org(&self, topup_id: Uuid) -> Result<Uuid, StoreError> {
        sqlx::query_scalar!("SELECT org_id FROM topups WHERE id = $1", topup_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("topup"))
    }
}
