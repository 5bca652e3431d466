//! Low-balance alerts: one per crossing, claimed before its e-mail so a retried workflow sends
//! it once, suppressed while an earlier alert for the same level is recent.
use billing::Credits;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::StoreError;

/// One crossing's alert, as claimed before its e-mail.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    pub org_id: Uuid,
    pub threshold_id: i64,
    pub crossing_seq: i64,
    pub threshold: Credits,
    pub balance: Credits,
    pub recipients: &'a [String],
    pub repeat_after_secs: u64,
}

/// What [`Alerts::claim_alert`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertClaim {
    /// Mail it (first try, or a retry of a claimed send).
    Send,
    /// Decided before, or suppressed now: this state, no mail.
    Done(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRecord {
    pub threshold: Credits,
    pub balance: Credits,
    pub crossing_seq: i64,
    pub recipients: Vec<String>,
    /// When it was recorded (the e-mail's send, for `sent`).
    pub sent_at: DateTime<Utc>,
    /// `sent`, `failed` or `unknown`.
    pub state: String,
    pub detail: Option<String>,
}

handle! {
    /// Low-balance alerts.
    Alerts
}

impl Alerts<'_> {
    /// Claims the alert of one crossing before its e-mail goes out, under a per-org lock so
    /// two crossings decide one after the other. The same crossing again (a retry) gets its
    /// first decision back. Within `repeat_after_secs` of an alert (not suppressed itself) at
    /// a threshold at or below this one, it is recorded `suppressed` and not mailed: the people
    /// were told of this level or a worse one a moment ago. Otherwise it is claimed `sending`.
    pub async fn claim_alert(&self, a: &NewAlert<'_>) -> Result<AlertClaim, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(hashtextextended('alerts:' || $1::text, 0))",
            a.org_id.to_string()
        )
        .execute(&mut *tx)
        .await?;
        if let Some(state) = sqlx::query_scalar!(
            "SELECT state FROM alerts WHERE org_id = $1 AND threshold_id = $2 AND crossing_seq = $3",
            a.org_id,
            a.threshold_id,
            a.crossing_seq
        )
        .fetch_optional(&mut *tx)
        .await?
        {
            return Ok(match state.as_str() {
                "sending" => AlertClaim::Send,
                _ => AlertClaim::Done(state),
            });
        }
        let earlier = if a.repeat_after_secs > 0 {
            sqlx::query!(
                "SELECT threshold, sent_at FROM alerts
                  WHERE org_id = $1 AND state <> 'suppressed' AND threshold <= $2
                    AND sent_at > now() - $3::bigint * interval '1 second'
                  ORDER BY sent_at DESC LIMIT 1",
                a.org_id,
                a.threshold.as_decimal(),
                i64::try_from(a.repeat_after_secs).unwrap_or(i64::MAX)
            )
            .fetch_optional(&mut *tx)
            .await?
        } else {
            None
        };
        let (state, detail) = match &earlier {
            Some(e) => (
                "suppressed",
                Some(format!(
                    "an alert at {} was sent at {}; alerts at the same or a higher level repeat at most every {} s",
                    billing::money::display::credits(Credits::from_stored(e.threshold)),
                    e.sent_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    a.repeat_after_secs
                )),
            ),
            None => ("sending", None),
        };
        sqlx::query!(
            "INSERT INTO alerts (org_id, threshold_id, crossing_seq, threshold, balance, recipients,
                                 state, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            a.org_id,
            a.threshold_id,
            a.crossing_seq,
            a.threshold.as_decimal(),
            a.balance.as_decimal(),
            a.recipients,
            state,
            detail
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match earlier {
            Some(_) => AlertClaim::Done("suppressed".into()),
            None => AlertClaim::Send,
        })
    }

    /// Records what became of a claimed alert's e-mail: `sent`, `failed` (with why) or
    /// `unknown`.
    pub async fn record_alert(
        &self,
        org_id: Uuid,
        threshold_id: i64,
        crossing_seq: i64,
        state: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE alerts SET state = $4, detail = $5
              WHERE org_id = $1 AND threshold_id = $2 AND crossing_seq = $3 AND state = 'sending'",
            org_id,
            threshold_id,
            crossing_seq,
            state,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn alerts(&self, org_id: Uuid) -> Result<Vec<AlertRecord>, StoreError> {
        Ok(sqlx::query!(
            "SELECT threshold, balance, crossing_seq, recipients, sent_at, state, detail FROM alerts
              WHERE org_id = $1 ORDER BY sent_at DESC LIMIT 100",
            org_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| AlertRecord {
            threshold: Credits::from_stored(r.threshold),
            balance: Credits::from_stored(r.balance),
            crossing_seq: r.crossing_seq,
            recipients: r.recipients,
            sent_at: r.sent_at,
            state: r.state,
            detail: r.detail,
        })
        .collect())
    }
}
