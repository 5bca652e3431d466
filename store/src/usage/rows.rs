//! The events of one writer batch as column arrays: one `INSERT … SELECT FROM UNNEST`
//! whatever their number.

use billing::usage::Usage;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::StoreError;

use super::*;

/// Column-wise usage_events rows for one bulk insert.
#[derive(Default)]
pub(super) struct EventRows {
    pub(super) ids: Vec<Uuid>,
    pub(super) orgs: Vec<Uuid>,
    pub(super) sources: Vec<String>,
    pub(super) event_ids: Vec<String>,
    pub(super) hashes: Vec<Vec<u8>>,
    pub(super) types: Vec<String>,
    pub(super) occurred: Vec<chrono::DateTime<chrono::Utc>>,
    pub(super) users: Vec<Option<String>>,
    pub(super) api_keys: Vec<Option<String>>,
    pub(super) models: Vec<Option<String>>,
    pub(super) operations: Vec<Option<String>>,
    pub(super) inputs: Vec<Option<i64>>,
    pub(super) outputs: Vec<Option<i64>>,
    pub(super) cached: Vec<Option<i64>>,
    pub(super) resources: Vec<Option<String>>,
    pub(super) quantities: Vec<Option<Decimal>>,
    pub(super) units: Vec<Option<String>>,
    pub(super) labels: Vec<serde_json::Value>,
    pub(super) costs: Vec<Decimal>,
    pub(super) versions: Vec<i64>,
    pub(super) transfer_ids: Vec<Option<Uuid>>,
}

impl EventRows {
    pub(super) fn push(&mut self, org: Uuid, id: Uuid, transfer_id: Option<Uuid>, e: &RatedEvent) {
        let ev = &e.event;
        self.ids.push(id);
        self.orgs.push(org);
        self.sources.push(ev.source.clone());
        self.event_ids.push(ev.id.clone());
        self.hashes.push(e.payload_hash.clone());
        self.types.push(ev.usage.type_name().to_string());
        self.occurred.push(ev.occurred_at);
        self.users.push(ev.user.clone());
        self.api_keys.push(ev.api_key.clone());
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
        self.transfer_ids.push(transfer_id);
    }

    /// Inserts the rows whose `(org_id, source, event_id)` is new, and (when such rows may
    /// exist) whose id no event from before sources holds; returns the ids of those inserted.
    pub(super) async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        events_before_sources: bool,
    ) -> Result<Vec<Uuid>, StoreError> {
        if self.ids.is_empty() {
            return Ok(vec![]);
        }
        Ok(sqlx::query_scalar!(
            "INSERT INTO usage_events (id, org_id, source, event_id, payload_hash, type,
                                       occurred_at, user_id, model, operation, input_tokens,
                                       output_tokens, cached_input_tokens, resource, quantity,
                                       unit, labels, cost, price_version, transfer_id, api_key)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bytea[],
                                  $6::text[], $7::timestamptz[], $8::text[], $9::text[],
                                  $10::text[], $11::bigint[], $12::bigint[], $13::bigint[],
                                  $14::text[], $15::numeric[], $16::text[], $17::jsonb[],
                                  $18::numeric[], $19::bigint[], $20::uuid[], $22::text[])
                      AS n(id, org_id, source, event_id)
              WHERE NOT $21::bool
                 OR NOT EXISTS (SELECT 1 FROM usage_events l
                                 WHERE l.org_id = n.org_id AND l.event_id = n.event_id
                                   AND l.source = '')
             ON CONFLICT (org_id, source, event_id) DO NOTHING
             RETURNING id",
            &self.ids,
            &self.orgs,
            &self.sources,
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
            &self.transfer_ids as &[Option<Uuid>],
            // Only then is the probe for an older row evaluated (OR stops at the first true).
            events_before_sources,
            &self.api_keys as &[Option<String>]
        )
        .fetch_all(&mut **tx)
        .await?)
    }
}
