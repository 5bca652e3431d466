//! The shapes `POST /v1/usage` reads and answers, for the OpenAPI document. Events are read
//! field by field ([`super::parse`]) so each refusal names its field; these types describe the
//! same fields for clients and are what the answer is built from.

use billing::{Credits, pricing::Resource};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A JSON batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageBatch {
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<UsageEvent>,
}

/// One usage event: AI tokens of a model, or a quantity of an infrastructure resource.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageEvent {
    /// Printable ASCII, unique per org and source.
    #[schema(min_length = 1, max_length = 255)]
    pub id: String,
    /// `ai_tokens` or `infra`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(ai_tokens|infra)$")]
    pub kind: String,
    /// At most the publish lead less the price refresh interval ahead of the server's clock
    /// (299 s by default), at most 35 days before it by default.
    pub occurred_at: DateTime<Utc>,
    /// Who produced the event; (org, source, id) identifies it. Left out: the key's first
    /// source, or `default` for a key not limited to sources.
    #[schema(min_length = 1, max_length = 255)]
    pub source: Option<String>,
    /// The user the usage is for; no control characters.
    #[schema(max_length = 255)]
    pub user: Option<String>,
    /// The platform's own API key the usage was made through (for budgets scoped to one);
    /// no control characters.
    #[schema(max_length = 255)]
    pub api_key: Option<String>,
    /// At most 32; keys 1 to 64, values up to 256 characters, no control characters.
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// `ai_tokens`: the model priced.
    #[schema(max_length = 255)]
    pub model: Option<String>,
    #[schema(max_length = 255)]
    pub operation: Option<String>,
    /// Input tokens not served from cache.
    #[schema(minimum = 0)]
    pub input_tokens: Option<u64>,
    #[schema(minimum = 0)]
    pub output_tokens: Option<u64>,
    #[schema(minimum = 0)]
    pub cached_input_tokens: Option<u64>,
    /// `infra`: the resource metered.
    pub resource: Option<Resource>,
    /// Decimal, at most 6 decimals, zero or more.
    pub quantity: Option<String>,
    /// The resource's unit (`vcpu_seconds`, `gb_seconds`, `gb_hours`, `gb`, `operations`).
    pub unit: Option<String>,
}

/// A usage event as a CloudEvent (structured mode; binary mode carries the same attributes as
/// `ce-` headers).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CloudEvent {
    /// `1.0`.
    #[schema(pattern = r"^1\.0$")]
    pub specversion: String,
    pub id: String,
    pub source: String,
    /// `dev.creditflow.usage.ai_tokens` or `dev.creditflow.usage.infra`.
    #[serde(rename = "type")]
    #[schema(pattern = r"^dev\.creditflow\.usage\.(ai_tokens|infra)$")]
    pub kind: String,
    /// `occurred_at`.
    pub time: Option<DateTime<Utc>>,
    /// The user, unless `data` names one.
    pub subject: Option<String>,
    /// JSON, if given.
    pub datacontenttype: Option<String>,
    /// The usage fields of a `UsageEvent`.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Base64 of the JSON of `data` (instead of `data`).
    pub data_base64: Option<String>,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Accepted,
    /// Recorded before (same org, source, id and payload): counted once.
    Duplicate,
    Rejected,
}

/// One event's result, in the order sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventResult {
    /// The event's id as sent, whatever its JSON type (`null` when it had none); results are
    /// in the order the events were sent.
    pub id: Value,
    pub status: EventStatus,
    /// The event's cost: tokens or units × the price version's rates, computed exactly, rounded
    /// once to six decimals, half away from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_credits: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<i64>,
    /// `null` for a rejection, and for an event that cost nothing (no transfer is booked).
    #[serde(default)]
    pub transfer_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_event_id: Option<Uuid>,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::codes::ErrorCode>)]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a rejection about one field: which (`id`, `source`, `user`, `labels.team`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What a batch did: every valid event is recorded, even when others are refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageResult {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// The balance after the batch.
    pub balance_credits: Credits,
    pub negative: bool,
    pub results: Vec<EventResult>,
}
