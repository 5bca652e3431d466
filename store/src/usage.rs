//! Recording usage: many events of many orgs in one transaction, each event once.

use std::collections::HashMap;

use billing::{
    Account, Credits, Posting, SystemAccount, TransferKind,
    usage::{Usage, UsageEvent},
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{NewTransfer, Store, StoreError};

/// A validated, rated event ready to record.
#[derive(Debug, Clone)]
pub struct RatedEvent {
    pub event: UsageEvent,
    pub cost: Credits,
    pub price_version: i64,
    /// Hash of the event's canonical text: the same id with another payload is a conflict.
    pub payload_hash: Vec<u8>,
}

/// One request's events for one org.
#[derive(Debug, Clone)]
pub struct UsageJob {
    pub org_id: Uuid,
    /// Who reported it (`key:{id}`), written on the transfers.
    pub actor: String,
    pub events: Vec<RatedEvent>,
}

/// What was recorded for an event (now or the first time it was sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub usage_id: Uuid,
    pub cost: Credits,
    pub price_version: i64,
    /// `None` when the cost rounded to zero: nothing moved.
    pub transfer_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    Accepted(Recorded),
    /// The id was recorded before with the same payload; this is that first result.
    Duplicate(Recorded),
    /// The id was recorded before with a different payload: refused.
    Conflict,
}

#[derive(Debug, Clone)]
pub struct JobResult {
    /// One per event of the job, in order.
    pub outcomes: Vec<EventOutcome>,
    /// The org's balance after this transaction.
    pub balance: Credits,
}

impl Store {
    /// Records the jobs' events in one transaction: locks every org involved, skips events
    /// recorded before, books one usage transfer per event with a cost, and inserts the events.
    pub async fn record_usage(&self, jobs: &[UsageJob]) -> Result<Vec<JobResult>, StoreError> {
        let org_ids: Vec<Uuid> = jobs.iter().map(|j| j.org_id).collect();
        let mut tx = self.pool.begin().await?;
        // Lock first: a concurrent transaction recording the same ids has then committed, and
        // the lookup below sees its rows.
        let mut locked = self.lock_orgs(&mut tx, &org_ids).await?;

        let (mut q_orgs, mut q_ids) = (vec![], vec![]);
        for j in jobs {
            for e in &j.events {
                q_orgs.push(j.org_id);
                q_ids.push(e.event.id.clone());
            }
        }
        let mut seen: HashMap<(Uuid, String), (Vec<u8>, Recorded)> = HashMap::new();
        for r in sqlx::query!(
            r#"SELECT u.org_id, u.event_id, u.payload_hash, u.id, u.cost, u.price_version,
                      u.transfer_id
                 FROM usage_events u
                 JOIN UNNEST($1::uuid[], $2::text[]) AS q(org_id, event_id)
                   ON u.org_id = q.org_id AND u.event_id = q.event_id"#,
            &q_orgs,
            &q_ids
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let rec = Recorded {
                usage_id: r.id,
                cost: Credits::from_stored(r.cost),
                price_version: r.price_version,
                transfer_id: r.transfer_id,
            };
            seen.insert((r.org_id, r.event_id), (r.payload_hash, rec));
        }

        // Decide each event's fate in order; new ones get their ids and transfers.
        let mut plans: Vec<Vec<Plan>> = Vec::with_capacity(jobs.len());
        let mut transfers = Vec::new();
        let mut rows = EventRows::default();
        for j in jobs {
            let mut plan = Vec::with_capacity(j.events.len());
            for e in &j.events {
                let key = (j.org_id, e.event.id.clone());
                if let Some((hash, rec)) = seen.get(&key) {
                    plan.push(if *hash == e.payload_hash {
                        Plan::Done(EventOutcome::Duplicate(rec.clone()))
                    } else {
                        Plan::Done(EventOutcome::Conflict)
                    });
                    continue;
                }
                let usage_id = Uuid::now_v7();
                let transfer = e.cost.is_positive().then_some(transfers.len());
                if transfer.is_some() {
                    transfers.push(usage_transfer(j, e, usage_id));
                }
                let rec = Recorded {
                    usage_id,
                    cost: e.cost,
                    price_version: e.price_version,
                    transfer_id: None,
                };
                seen.insert(key, (e.payload_hash.clone(), rec.clone()));
                plan.push(Plan::New {
                    rec,
                    transfer,
                    row: rows.len(),
                });
                rows.push(j.org_id, usage_id, e);
            }
            plans.push(plan);
        }

        let booked = self
            .book_locked(&mut tx, &mut locked, &transfers, false)
            .await?;
        let transfer_ids: Vec<Uuid> = booked.iter().map(|b| b.transfer().id).collect();
        let mut results = Vec::with_capacity(jobs.len());
        for (j, plan) in jobs.iter().zip(plans) {
            let outcomes = plan
                .into_iter()
                .map(|p| match p {
                    Plan::Done(o) => o,
                    Plan::New {
                        mut rec,
                        transfer,
                        row,
                    } => {
                        rec.transfer_id = transfer.map(|t| transfer_ids[t]);
                        rows.transfer_ids[row] = rec.transfer_id;
                        EventOutcome::Accepted(rec)
                    }
                })
                .collect();
            let balance = locked.balance(j.org_id).ok_or(StoreError::OrgNotFound)?;
            results.push(JobResult { outcomes, balance });
        }
        // Duplicates of an id first seen in this same batch point at that first result.
        for r in &mut results {
            for o in &mut r.outcomes {
                if let EventOutcome::Duplicate(rec) = o
                    && rec.transfer_id.is_none()
                    && let Some(i) = rows.ids.iter().position(|id| *id == rec.usage_id)
                {
                    rec.transfer_id = rows.transfer_ids[i];
                }
            }
        }
        rows.insert(&mut tx).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Replaces an org's thresholds of one purpose (`auto_topup` or `alert`).
    pub async fn set_thresholds(
        &self,
        org_id: Uuid,
        purpose: &str,
        thresholds: &[Credits],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "DELETE FROM org_thresholds WHERE org_id = $1 AND purpose = $2",
            org_id,
            purpose
        )
        .execute(&mut *tx)
        .await?;
        let values: Vec<Decimal> = thresholds.iter().map(|t| t.as_decimal()).collect();
        sqlx::query!(
            "INSERT INTO org_thresholds (org_id, purpose, threshold)
             SELECT $1, $2, t FROM UNNEST($3::numeric[]) AS t",
            org_id,
            purpose,
            &values
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Outbox rows not yet dispatched, oldest first, at most `limit`.
    pub async fn pending_outbox(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(sqlx::query_as!(
            OutboxRow,
            "SELECT id, org_id, topic, payload, created_at FROM outbox
              WHERE dispatched_at IS NULL ORDER BY id LIMIT $1",
            limit
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub org_id: Uuid,
    pub topic: String,
    pub payload: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

enum Plan {
    Done(EventOutcome),
    New {
        rec: Recorded,
        transfer: Option<usize>,
        row: usize,
    },
}

fn usage_transfer(job: &UsageJob, e: &RatedEvent, usage_id: Uuid) -> NewTransfer {
    let (system, what) = match &e.event.usage {
        Usage::AiTokens(a) => (SystemAccount::UsageAi, a.model.as_str()),
        Usage::Infra(i) => (SystemAccount::UsageInfra, i.resource.as_str()),
    };
    NewTransfer {
        posting: Posting {
            debit: Account::Org(job.org_id),
            credit: Account::System(system),
            amount: e.cost,
            kind: TransferKind::Usage,
            org: job.org_id,
        },
        idempotency_key: format!("usage:{usage_id}"),
        actor: job.actor.clone(),
        reason: format!("{} {}", e.event.usage.type_name(), what),
        refs: serde_json::json!({
            "usage_event_id": usage_id,
            "event_id": e.event.id,
            "price_version": e.price_version,
        }),
    }
}

/// Column-wise usage_events rows for one bulk insert.
#[derive(Default)]
struct EventRows {
    ids: Vec<Uuid>,
    orgs: Vec<Uuid>,
    event_ids: Vec<String>,
    hashes: Vec<Vec<u8>>,
    types: Vec<String>,
    occurred: Vec<chrono::DateTime<chrono::Utc>>,
    users: Vec<Option<String>>,
    models: Vec<Option<String>>,
    operations: Vec<Option<String>>,
    inputs: Vec<Option<i64>>,
    outputs: Vec<Option<i64>>,
    cached: Vec<Option<i64>>,
    resources: Vec<Option<String>>,
    quantities: Vec<Option<Decimal>>,
    units: Vec<Option<String>>,
    labels: Vec<serde_json::Value>,
    costs: Vec<Decimal>,
    versions: Vec<i64>,
    transfer_ids: Vec<Option<Uuid>>,
}

impl EventRows {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn push(&mut self, org: Uuid, id: Uuid, e: &RatedEvent) {
        let ev = &e.event;
        self.ids.push(id);
        self.orgs.push(org);
        self.event_ids.push(ev.id.clone());
        self.hashes.push(e.payload_hash.clone());
        self.types.push(ev.usage.type_name().to_string());
        self.occurred.push(ev.occurred_at);
        self.users.push(ev.user.clone());
        match &ev.usage {
            Usage::AiTokens(a) => {
                self.models.push(Some(a.model.clone()));
                self.operations.push(Some(a.operation.clone()));
                // Token counts are bounded by billing::usage::limits::TOKENS_MAX (< i64::MAX).
                self.inputs.push(Some(a.input_tokens as i64));
                self.outputs.push(Some(a.output_tokens as i64));
                self.cached.push(Some(a.cached_input_tokens as i64));
                self.resources.push(None);
                self.quantities.push(None);
                self.units.push(None);
            }
            Usage::Infra(i) => {
                self.models.push(None);
                self.operations.push(None);
                self.inputs.push(None);
                self.outputs.push(None);
                self.cached.push(None);
                self.resources.push(Some(i.resource.as_str().to_string()));
                self.quantities.push(Some(i.quantity));
                self.units.push(Some(i.resource.unit().to_string()));
            }
        }
        self.labels
            .push(serde_json::to_value(&ev.labels).unwrap_or_default());
        self.costs.push(e.cost.as_decimal());
        self.versions.push(e.price_version);
        self.transfer_ids.push(None);
    }

    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            "INSERT INTO usage_events (id, org_id, event_id, payload_hash, type, occurred_at,
                                       user_id, model, operation, input_tokens, output_tokens,
                                       cached_input_tokens, resource, quantity, unit, labels,
                                       cost, price_version, transfer_id)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::text[],
                                  $6::timestamptz[], $7::text[], $8::text[], $9::text[],
                                  $10::bigint[], $11::bigint[], $12::bigint[], $13::text[],
                                  $14::numeric[], $15::text[], $16::jsonb[], $17::numeric[],
                                  $18::bigint[], $19::uuid[])",
            &self.ids,
            &self.orgs,
            &self.event_ids,
            &self.hashes,
            &self.types,
            &self.occurred,
            &self.users as &[Option<String>],
            &self.models as &[Option<String>],
            &self.operations as &[Option<String>],
            &self.inputs as &[Option<i64>],
            &self.outputs as &[Option<i64>],
            &self.cached as &[Option<i64>],
            &self.resources as &[Option<String>],
            &self.quantities as &[Option<Decimal>],
            &self.units as &[Option<String>],
            &self.labels,
            &self.costs,
            &self.versions,
            &self.transfer_ids as &[Option<Uuid>]
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
