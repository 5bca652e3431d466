//! The outbox: events written in the transaction of the change they announce, dispatched after
//! commit (workflow starts, revisions). One typed event per topic, one writer, and the
//! dispatcher's claim, mark, defer, backlog and prune.

use std::time::Duration;

use billing::{Credits, ThresholdPurpose, summary::Month};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

/// An event for the dispatcher, stored as `topic` + JSON `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "topic", content = "payload")]
pub enum OutboxEvent {
    /// A balance fell below one of the org's thresholds: start its topup or alert.
    #[serde(rename = "balance.threshold_crossed")]
    ThresholdCrossed(Crossed),
    /// Start a purchase's checkout workflow (or end the purchase if it is too late).
    #[serde(rename = "purchase.start")]
    PurchaseStart {
        purchase_id: Uuid,
        expires_after_secs: u64,
    },
    /// Start a refund's workflow.
    #[serde(rename = "refund.start")]
    RefundStart { refund_id: Uuid },
    /// Late usage landed in a stored month: store its next revision.
    #[serde(rename = "summary.revision_due")]
    SummaryRevisionDue {
        #[serde(with = "billing::summary::month_text")]
        month: Month,
    },
    /// An org failed in its month's page: generate its month alone.
    #[serde(rename = "summary.generate_org")]
    SummaryGenerateOrg {
        #[serde(with = "billing::summary::month_text")]
        month: Month,
    },
    /// A budget's scope reached one of its alert percents this period: e-mail its recipients.
    #[serde(rename = "budget.alert")]
    BudgetAlert(crate::BudgetAlert),
}

/// A threshold crossing, as the dispatcher needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crossed {
    pub threshold_id: i64,
    pub purpose: ThresholdPurpose,
    pub threshold: Credits,
    /// The balance right after the crossing.
    pub balance: Credits,
    /// The org sequence number of the crossing (negative for a crossing found without a
    /// transfer, such as auto-topup switched on below its threshold).
    pub crossing_seq: i64,
    /// The transfer that crossed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<Uuid>,
    /// Why a crossing without a transfer was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl OutboxEvent {
    /// The topics this build dispatches.
    pub const TOPICS: [&'static str; 6] = [
        "balance.threshold_crossed",
        "purchase.start",
        "refund.start",
        "summary.revision_due",
        "summary.generate_org",
        "budget.alert",
    ];

    /// The stored topic and payload.
    pub fn encode(&self) -> (String, Value) {
        let Ok(Value::Object(mut m)) = serde_json::to_value(self) else {
            unreachable!("an outbox event serializes to an object")
        };
        let topic = match m.remove("topic") {
            Some(Value::String(t)) => t,
            _ => unreachable!("an outbox event has a topic"),
        };
        (topic, m.remove("payload").unwrap_or(Value::Null))
    }

    /// The event of a stored row; `None` for a topic this build does not know.
    pub fn decode(topic: &str, payload: &Value) -> Result<Option<OutboxEvent>, StoreError> {
        if !OutboxEvent::TOPICS.contains(&topic) {
            return Ok(None);
        }
        let mut m = Map::new();
        m.insert("topic".into(), Value::String(topic.to_string()));
        m.insert("payload".into(), payload.clone());
        serde_json::from_value(Value::Object(m))
            .map(Some)
            .map_err(|e| StoreError::Decode(format!("outbox {topic}: {e}")))
    }
}

/// Writes outbox events for orgs in the caller's transaction, in one statement.
pub async fn write(
    conn: &mut PgConnection,
    events: &[(Uuid, OutboxEvent)],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let (mut orgs, mut topics, mut payloads) = (vec![], vec![], vec![]);
    for (org, event) in events {
        let (topic, payload) = event.encode();
        orgs.push(*org);
        topics.push(topic);
        payloads.push(payload);
    }
    sqlx::query!(
        "INSERT INTO outbox (org_id, topic, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[])",
        &orgs,
        &topics,
        &payloads
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub org_id: Uuid,
    pub topic: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    /// Earlier tries that could not dispatch it.
    pub attempts: i32,
}

impl OutboxRow {
    /// The row's event; `None` for a topic this build does not know.
    pub fn event(&self) -> Result<Option<OutboxEvent>, StoreError> {
        OutboxEvent::decode(&self.topic, &self.payload)
    }
}

/// What a queue (the outbox, the webhook inbox) still has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub rows: i64,
    /// Seconds since the oldest undispatched row was written (0 when there is none).
    pub oldest_age_secs: i64,
}

/// The outbox, for the dispatcher, metrics and tests.
pub struct Outbox<'a>(pub(crate) &'a Store);

impl Outbox<'_> {
    /// Claims up to `limit` undispatched rows for this transaction (others skip them).
    pub async fn claim(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(sqlx::query_as!(
            OutboxRow,
            "SELECT id, org_id, topic, payload, created_at, attempts FROM outbox
              WHERE dispatched_at IS NULL AND available_at <= now()
              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit
        )
        .fetch_all(&mut **tx)
        .await?)
    }

    pub async fn mark_dispatched(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query!("UPDATE outbox SET dispatched_at = now() WHERE id = $1", id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Leaves a row for later (after `delay`), with why; the rows behind it go on.
    pub async fn defer(
        &self,
        tx: &mut Transaction<'_, Postgres>,
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

    /// Undispatched rows and the age of the oldest, for metrics and tests.
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        let r = sqlx::query!(
            r#"SELECT count(*) AS "rows!",
                      COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::bigint
                        AS "oldest_age_secs!"
                 FROM outbox WHERE dispatched_at IS NULL"#
        )
        .fetch_one(&self.0.pool)
        .await?;
        Ok(Backlog {
            rows: r.rows,
            oldest_age_secs: r.oldest_age_secs,
        })
    }

    /// Rows not yet dispatched, oldest first, at most `limit`.
    pub async fn pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(sqlx::query_as!(
            OutboxRow,
            "SELECT id, org_id, topic, payload, created_at, attempts FROM outbox
              WHERE dispatched_at IS NULL ORDER BY id LIMIT $1",
            limit
        )
        .fetch_all(&self.0.pool)
        .await?)
    }

    /// Deletes up to `limit` rows dispatched longer than `retention` ago; returns how many.
    /// Pending rows are never touched.
    pub async fn prune(&self, retention: Duration, limit: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                  WHERE dispatched_at < now() - make_interval(secs => $1)
                  ORDER BY id LIMIT $2)",
            retention.as_secs_f64(),
            limit
        )
        .execute(&self.0.pool)
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_encodes_to_a_topic_this_build_dispatches() {
        let month = Month::new(2026, 10).unwrap();
        let crossed = Crossed {
            threshold_id: 1,
            purpose: ThresholdPurpose::Alert,
            threshold: Credits::whole(10),
            balance: Credits::whole(9),
            crossing_seq: 3,
            transfer_id: None,
            cause: None,
        };
        let events = [
            OutboxEvent::ThresholdCrossed(crossed),
            OutboxEvent::PurchaseStart {
                purchase_id: Uuid::nil(),
                expires_after_secs: 60,
            },
            OutboxEvent::RefundStart {
                refund_id: Uuid::nil(),
            },
            OutboxEvent::SummaryRevisionDue { month },
            OutboxEvent::SummaryGenerateOrg { month },
        ];
        for e in events {
            let (topic, payload) = e.encode();
            assert!(OutboxEvent::TOPICS.contains(&topic.as_str()), "{topic}");
            assert_eq!(OutboxEvent::decode(&topic, &payload).unwrap(), Some(e));
        }
    }

    #[test]
    fn events_keep_the_stored_topics_and_payloads() {
        let e = OutboxEvent::SummaryRevisionDue {
            month: Month::new(2026, 10).unwrap(),
        };
        let (topic, payload) = e.encode();
        assert_eq!(topic, "summary.revision_due");
        assert_eq!(payload, serde_json::json!({"month": "2026-10"}));
        assert_eq!(OutboxEvent::decode(&topic, &payload).unwrap(), Some(e));
        // Rows written before the typed outbox carry an `org_id` too; it is ignored.
        let old = serde_json::json!({"org_id": Uuid::nil(), "month": "2026-10"});
        assert!(
            OutboxEvent::decode("summary.generate_org", &old)
                .unwrap()
                .is_some()
        );
        assert_eq!(OutboxEvent::decode("no.such", &old).unwrap(), None);
        assert!(OutboxEvent::decode("refund.start", &old).is_err());
    }
}
