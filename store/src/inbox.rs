//! The inbox of payment-processor events, outbox rows that must wait, and the once-only record
//! of every e-mail.
//!
//! A verified webhook event is stored here and answered at once; the worker's dispatcher hands
//! it to the workflow it concerns, retrying later while that fails. So a Temporal outage delays
//! what an event causes, never loses it, and an event id is acted on once.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError};

/// A stored event the dispatcher has not handed on yet.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub id: String,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
}

/// What a call to [`Store::claim_email`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailClaim {
    /// Hand the message to SMTP now (the row says `sending`).
    Send,
    /// Nothing to send: it was sent, failed for good, or its fate is unknown.
    Done {
        state: String,
        detail: Option<String>,
    },
}

/// Topics of outbox rows written by request handlers, besides threshold crossings.
pub const PURCHASE_START: &str = "purchase.start";
pub const REFUND_START: &str = "refund.start";

impl Store {
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

    /// Writes an outbox row in `tx` (the transaction of the change it announces).
    pub async fn enqueue(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        org_id: Uuid,
        topic: &str,
        payload: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO outbox (org_id, topic, payload) VALUES ($1, $2, $3)",
            org_id,
            topic,
            payload
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Leaves an outbox row for later (after `delay`), with why; the rows behind it go on.
    pub async fn defer_outbox(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: i64,
        delay: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                    available_at = now() + make_interval(secs => $3)
              WHERE id = $1",
            id,
            error,
            delay.as_secs_f64()
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records the intent to send the e-mail `key` and claims its one send.
    ///
    /// A row still `sending` was claimed by an earlier try that never recorded the outcome: a
    /// crash between handing the message to SMTP and the answer. The message may have gone,
    /// so it is marked `unknown` and not sent again.
    pub async fn claim_email(
        &self,
        key: &str,
        recipients: &str,
        subject: &str,
    ) -> Result<EmailClaim, StoreError> {
        sqlx::query!(
            "INSERT INTO email_sends (key, recipients, subject) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            key,
            recipients,
            subject
        )
        .execute(&self.pool)
        .await?;
        let row = sqlx::query!(
            "UPDATE email_sends
                SET state = CASE state WHEN 'pending' THEN 'sending'
                                       WHEN 'sending' THEN 'unknown' ELSE state END,
                    attempted_at = CASE WHEN state = 'pending' THEN now() ELSE attempted_at END,
                    detail = CASE WHEN state = 'sending'
                                  THEN 'the sender stopped after handing the message to SMTP; it may or may not have been delivered'
                                  ELSE detail END
              WHERE key = $1
          RETURNING state, detail, (attempted_at = now()) AS claimed",
            key
        )
        .fetch_one(&self.pool)
        .await?;
        if row.state == "sending" && row.claimed == Some(true) {
            return Ok(EmailClaim::Send);
        }
        Ok(EmailClaim::Done {
            state: row.state,
            detail: row.detail,
        })
    }

    /// The message was accepted by the SMTP server.
    pub async fn email_sent(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE email_sends SET state = 'sent', sent_at = COALESCE(sent_at, now())
              WHERE key = $1",
            key
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The SMTP server was not reached or refused for now: the message was not handed over,
    /// and a later try may send it.
    pub async fn email_not_sent(&self, key: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE email_sends SET state = 'pending', detail = $2
              WHERE key = $1 AND state = 'sending'",
            key,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The message cannot be sent (`failed`) or may have been (`unknown`), for good.
    pub async fn email_ended(
        &self,
        key: &str,
        state: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE email_sends SET state = $2, detail = $3
              WHERE key = $1 AND state IN ('pending', 'sending')",
            key,
            state,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
