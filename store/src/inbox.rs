//! The inbox of payment-processor events, outbox rows that must wait, and the once-only record
//! of every e-mail.
//!
//! A verified webhook event is stored here and answered at once; the worker's dispatcher hands
//! it to the workflow it concerns, retrying later while that fails. So a Temporal outage delays
//! what an event causes, never loses it, and an event id is acted on once.

use std::time::Duration;

use serde_json::Value;

use crate::StoreError;

/// A stored event the dispatcher has not handed on yet.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub id: String,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
}

handle! {
    /// The inbox of payment-processor events.
    Inbox
}

impl Inbox<'_> {
    /// Stores a verified event once. `false` when this id was stored before (a redelivery or a
    /// replay): nothing more happens for it.
    pub async fn receive_stripe_event(
        &self,
        id: &str,
        kind: &str,
        payload: &Value,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query!(
            "INSERT INTO stripe_events (id, type, payload) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            id,
            kind,
            payload
        )
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Claims up to `limit` events due for dispatch, oldest first, for this transaction.
    pub async fn claim_stripe_events(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        limit: i64,
    ) -> Result<Vec<InboxEvent>, StoreError> {
        Ok(sqlx::query_as!(
            InboxEvent,
            r#"SELECT id, type AS kind, payload AS "payload!", attempts FROM stripe_events
                WHERE dispatched_at IS NULL AND next_attempt_at <= now() AND payload IS NOT NULL
                ORDER BY received_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"#,
            limit
        )
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn event_dispatched(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE stripe_events SET dispatched_at = now(), last_error = NULL WHERE id = $1",
            id
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Leaves an event for a later round, after `delay`, with why.
    pub async fn event_retry_later(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: &str,
        delay: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE stripe_events SET attempts = attempts + 1, last_error = $2,
                    next_attempt_at = now() + make_interval(secs => $3)
              WHERE id = $1",
            id,
            error,
            delay.as_secs_f64()
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// What the webhook inbox still has to hand on (events received, not yet dispatched).
    pub async fn inbox_backlog(&self) -> Result<crate::Backlog, StoreError> {
        let r = sqlx::query!(
            r#"SELECT count(*) AS "rows!",
                      COALESCE(EXTRACT(EPOCH FROM now() - min(received_at)), 0)::bigint
                        AS "oldest_age_secs!"
                 FROM stripe_events WHERE dispatched_at IS NULL"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(crate::Backlog {
            rows: r.rows,
            oldest_age_secs: r.oldest_age_secs,
        })
    }
}
