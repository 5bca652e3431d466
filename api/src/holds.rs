//! Holds: credits set aside before an AI call runs, settled with its actual usage, voided,
//! extended, or expired at their instant. The rules are `billing::holds`'s (stated once there).
//!
//! A hold is named by the org's own `hold_id` (the same id and body again is the same hold);
//! `/v1/holds/{id}` takes that id (with an org key) or ours (`id`, for operators too). An org
//! key needs `usage:write` to hold, settle, void and extend, and `usage:write` or
//! `balance:read` to read.

use std::collections::BTreeMap;

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use billing::{
    Credits,
    budgets::{BudgetScope, Standing},
    holds::{self, Dimensions, HoldState, Overage, Refusal},
    openapi::CreditsInput,
    usage::{self as usage_rules, AiTokens, Usage, UsageEvent},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{
    EventOutcome, Hold, HoldOp, HoldOutcome, HoldQuery, HoldRequest, RatedEvent, Scope,
    SettleRequest, UsageJob,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path, Query},
    ledger::{credits_field, page_cursor, page_limit},
    metrics,
    usage::{EventResult, EventStatus},
};

/// Holds this process made and has not seen end, by (org, the org's id for them). What a settle
/// needs of its hold before the writer (its id, org and dimensions) never changes, so a hit
/// saves the settle a read; the writer reads the hold again under the org's lock, so a stale
/// entry (a hold another process ended) decides nothing. Bounded: cleared when full.
#[derive(Clone, Default)]
pub struct HoldCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(Uuid, String), Hold>>>,
);

/// Holds the cache keeps at most.
const HOLD_CACHE_MAX: usize = 100_000;

impl HoldCache {
    fn put(&self, h: &Hold) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= HOLD_CACHE_MAX {
            m.clear();
        }
        m.insert((h.org_id, h.hold_id.clone()), h.clone());
    }

    fn get(&self, org: Uuid, hold_id: &str) -> Option<Hold> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(&(org, hold_id.to_string())).cloned()
    }

    fn forget(&self, h: &Hold) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.remove(&(h.org_id, h.hold_id.clone()));
    }
}

/// A hold as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldView {
    /// Ours.
    pub id: Uuid,
    /// The org's own id for it.
    pub hold_id: String,
    pub org_id: Uuid,
    /// As of now: an active hold at or past `expires_at` is `expired`, booked or not.
    pub state: HoldState,
    /// What is set aside.
    pub amount_credits: Credits,
    /// What was asked (more than `amount_credits` when `cap_to_available` capped it).
    pub requested_credits: Credits,
    pub overage: Overage,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub user: Option<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The price version an estimate was rated with.
    pub price_version: Option<i64>,
    /// Once ended: what the settle's usage took of the hold, and what went back
    /// (`settled + released = amount`).
    pub settled_credits: Option<Credits>,
    pub released_credits: Option<Credits>,
    pub settle_id: Option<String>,
    /// All the usage the settle recorded (beyond the hold too).
    pub usage_credits: Option<Credits>,
    /// The settle came after the hold expired: its usage is recorded all the same.
    pub late: bool,
}

impl HoldView {
    pub fn of(h: &Hold, now: DateTime<Utc>) -> HoldView {
        let (settled, released) = h.split_at(now);
        HoldView {
            id: h.id,
            hold_id: h.hold_id.clone(),
            org_id: h.org_id,
            state: h.state_at(now),
            amount_credits: h.amount,
            requested_credits: h.requested,
            overage: h.overage,
            created_at: h.created_at,
            expires_at: h.expires_at,
            ended_at: h
                .ended_at
                .or_else(|| (h.state_at(now) == HoldState::Expired).then_some(h.expires_at)),
            user: h.dims.user.clone(),
            api_key: h.dims.api_key.clone(),
            model: h.dims.model.clone(),
            labels: h.dims.labels.clone(),
            price_version: h.price_version,
            settled_credits: settled,
            released_credits: released,
            settle_id: h.settle_id.clone(),
            usage_credits: h.usage_credits,
            late: h.late,
        }
    }
}

/// A hold just made (or the same request again), with the org's available credits after it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldCreated {
    #[serde(flatten)]
    pub hold: HoldView,
    pub available_credits: Credits,
}

/// What to rate a hold from: an AI call's prompt and the most it may answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    /// A model of the price version in force.
    pub model: String,
    #[schema(minimum = 0)]
    pub input_tokens: u64,
    #[schema(minimum = 0)]
    pub max_output_tokens: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// The org's id for this hold: 1 to 255 printable ASCII characters, unique per org.
    #[schema(required)]
    hold_id: Option<String>,
    /// What to set aside; or give `estimate`.
    #[schema(value_type = Option<CreditsInput>)]
    amount_credits: Option<Value>,
    /// Rated with the price version in force; or give `amount_credits`.
    estimate: Option<Estimate>,
    /// 1,000 to 86,400,000 (default 120,000).
    #[schema(minimum = 1000, maximum = 86400000)]
    ttl_ms: Option<i64>,
    #[schema(max_length = 255)]
    user: Option<String>,
    /// The platform's own API key the call is made through (for budgets).
    #[schema(max_length = 255)]
    api_key: Option<String>,
    /// The model, when there is no estimate (for budgets).
    #[schema(max_length = 255)]
    model: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    /// `reject` (default), `cap_to_available` or `allow`.
    #[schema(value_type = Option<Overage>)]
    overage: Option<String>,
}

/// Sets credits aside for work about to run (`usage:write`): 201 with the hold and what is
/// available after it; 402 `insufficient_credits` (with `available_credits`) or
/// `budget_exhausted` (with the blocking `budget`) when it may not run.
#[utoipa::path(post, path = "/v1/orgs/{org}/holds", tag = "holds",
    params(("org" = Uuid, Path, description = "The organization")),
    request_body = HoldBody,
    responses(
        (status = 201, description = "The hold (the same one for the same `hold_id` and body)", body = HoldCreated),
        (status = 402, description = "`insufficient_credits`, `budget_exhausted`"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`hold_id_conflict`: the `hold_id` was used with another body"),
        (status = 422, description = "`missing_field`, `invalid_hold_id`, `amount_or_estimate`, `amount_not_positive`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`, `unknown_model`, `invalid_ttl`, `invalid_overage`, `invalid_field`, `invalid_labels`, `field_too_long`, `invalid_characters`"),
    ))]
pub async fn create_hold(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<HoldBody>,
) -> Result<Response, ApiError> {
    caller.authorize(org_id, Scope::UsageWrite)?;
    let hold_id = body
        .hold_id
        .ok_or_else(|| ApiError::invalid("hold_id", "missing_field", "`hold_id` is required"))?;
    usage_rules::check_event_id(&hold_id).map_err(|_| {
        ApiError::invalid(
            "hold_id",
            "invalid_hold_id",
            "`hold_id` must be 1 to 255 printable ASCII characters",
        )
    })?;
    let (catalog, rules) = crate::usage::rating_now(&state);
    let mut dims = dimensions(body.user, body.api_key, body.model, body.labels)?;
    let (requested, price_version, what) = match (&body.amount_credits, &body.estimate) {
        (Some(a), None) => {
            let amount = credits_field(Some(a), "amount_credits")?;
            (amount, None, format!("amount={amount}"))
        }
        (None, Some(e)) => {
            let (cost, version) = rate_estimate(&catalog, rules.now, e)?;
            dims.model = Some(e.model.clone());
            (
                cost,
                Some(version),
                format!(
                    "estimate={}/{}/{}",
                    e.model, e.input_tokens, e.max_output_tokens
                ),
            )
        }
        _ => {
            return Err(ApiError::invalid(
                "amount_credits",
                "amount_or_estimate",
                "give exactly one of `amount_credits` and `estimate`",
            ));
        }
    };
    if !requested.is_positive() {
        return Err(ApiError::invalid(
            "amount_credits",
            "amount_not_positive",
            "a hold must set aside more than zero credits",
        ));
    }
    let ttl = holds::ttl(body.ttl_ms).ok_or_else(|| {
        ApiError::invalid(
            "ttl_ms",
            "invalid_ttl",
            format!(
                "`ttl_ms` must be between {} and {}",
                holds::TTL_MIN_MS,
                holds::TTL_MAX_MS
            ),
        )
    })?;
    let overage = match body.overage.as_deref() {
        None => Overage::Reject,
        Some(o) => o.parse::<Overage>().map_err(|_| {
            ApiError::invalid(
                "overage",
                "invalid_overage",
                "`overage` is `reject`, `cap_to_available` or `allow`",
            )
        })?,
    };
    let request_hash = store::request_hash(&[
        what.as_bytes(),
        body.ttl_ms
            .unwrap_or(holds::TTL_DEFAULT_MS)
            .to_string()
            .as_bytes(),
        overage.as_str().as_bytes(),
        serde_json::to_string(&dims).unwrap_or_default().as_bytes(),
    ]);
    let job = UsageJob {
        org_id,
        actor: caller.actor(),
        events: Vec::new(),
        hold: Some(Box::new(HoldOp::Create(HoldRequest {
            hold_id,
            request_hash,
            requested,
            overage,
            ttl,
            dims,
            price_version,
        }))),
    };
    let done = state.ingestor.submit(job).await?;
    let now = state.store.now();
    match done.hold.map(|b| *b) {
        Some(HoldOutcome::Created(h)) => {
            metrics::HOLDS.with_label_values(&["created"]).inc();
            state.holds.put(&h);
            Ok(created(&h, done.balance, now, false))
        }
        Some(HoldOutcome::Replay(h)) => Ok(created(&h, done.balance, now, true)),
        Some(HoldOutcome::Conflict(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "hold_id_conflict",
            "this `hold_id` was already used for a hold with a different request",
        )),
        Some(HoldOutcome::Refused {
            refusal,
            available,
            budget,
        }) => Err(refused(&refusal, available, budget.as_deref())),
        _ => Err(ApiError::internal()),
    }
}

fn created(h: &Hold, available: Credits, now: DateTime<Utc>, replayed: bool) -> Response {
    let body = HoldCreated {
        hold: HoldView::of(h, now),
        available_credits: available,
    };
    let mut res = (StatusCode::CREATED, AxumJson(body)).into_response();
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// A budget as a refusal names it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BlockingBudget {
    pub id: String,
    pub scope: BudgetScope,
    pub limit_credits: Credits,
    pub spent_credits: Credits,
    pub held_credits: Credits,
    pub remaining_credits: Credits,
    pub resets_at: Option<DateTime<Utc>>,
}

impl BlockingBudget {
    pub fn of(s: &Standing) -> BlockingBudget {
        BlockingBudget {
            id: s.budget.id.clone(),
            scope: s.budget.scope.clone(),
            limit_credits: s.budget.limit,
            spent_credits: s.spent,
            held_credits: s.held,
            remaining_credits: s.remaining(),
            resets_at: s.resets_at,
        }
    }
}

/// The 402 of a refused hold or check.
pub fn refused(refusal: &Refusal, available: Credits, budget: Option<&Standing>) -> ApiError {
    match refusal {
        Refusal::InsufficientCredits { .. } => {
            metrics::HOLD_REFUSALS
                .with_label_values(&["insufficient_credits", ""])
                .inc();
            ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_credits",
                format!("{available} credits are available, less than this needs"),
            )
            .with("available_credits", available)
        }
        Refusal::BudgetExhausted { budget_id } => {
            let scope = budget.map_or("", |b| b.budget.scope.parts().0);
            metrics::HOLD_REFUSALS
                .with_label_values(&["budget_exhausted", scope])
                .inc();
            let mut e = ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "budget_exhausted",
                format!("budget `{budget_id}` has less left than this needs"),
            )
            .with("available_credits", available);
            if let Some(b) = budget {
                e = e.with("budget", BlockingBudget::of(b));
            }
            e
        }
    }
}

pub(crate) fn rate_estimate(
    catalog: &billing::pricing::PriceCatalog,
    now: DateTime<Utc>,
    e: &Estimate,
) -> Result<(Credits, i64), ApiError> {
    usage_rules::check_name("model", &e.model, true)
        .map_err(|r| ApiError::invalid("estimate.model", r.code, r.message))?;
    for (field, n) in [
        ("estimate.input_tokens", e.input_tokens),
        ("estimate.max_output_tokens", e.max_output_tokens),
    ] {
        usage_rules::check_tokens(field, i128::from(n))
            .map_err(|r| ApiError::invalid(field, r.code, r.message))?;
    }
    let usage = Usage::AiTokens(AiTokens {
        model: e.model.clone(),
        operation: String::new(),
        input_tokens: e.input_tokens,
        output_tokens: e.max_output_tokens,
        cached_input_tokens: 0,
    });
    catalog
        .rate(now, &usage)
        .map_err(|r| ApiError::invalid("estimate.model", r.code(), r.message()))
}

/// A hold's, check's or usage's dimensions, validated.
pub fn dimensions(
    user: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    labels: Option<BTreeMap<String, String>>,
) -> Result<Dimensions, ApiError> {
    for (field, v) in [("user", &user), ("api_key", &api_key), ("model", &model)] {
        if let Some(v) = v {
            usage_rules::check_name(field, v, true)
                .map_err(|r| ApiError::invalid(field, r.code, r.message))?;
        }
    }
    let labels = labels.unwrap_or_default();
    usage_rules::check_labels(&labels)
        .map_err(|r| ApiError::invalid("labels", r.code, r.message))?;
    Ok(Dimensions {
        user,
        api_key,
        model,
        labels,
    })
}

/// The hold `/v1/holds/{id}` names, for this caller: the org's own id for it (an org key),
/// else ours.
/// With `cached`, a hold this process made may come from [`HoldCache`] (a settle needs only
/// what never changes); reads and the other changes read it.
async fn find(state: &AppState, caller: &Caller, id: &str, cached: bool) -> Result<Hold, ApiError> {
    let not_found = || ApiError::not_found("hold_not_found", "no such hold");
    if let Caller::Org(p) = caller {
        if cached && let Some(h) = state.holds.get(p.org_id, id) {
            return Ok(h);
        }
        match state.store.holds().by_client_id(p.org_id, id).await {
            Ok(h) => return Ok(h),
            Err(store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let ours: Uuid = id.parse().map_err(|_| not_found())?;
    match state.store.holds().hold(ours).await {
        Ok(h) if caller.may_act_on(h.org_id) => Ok(h),
        Ok(_) | Err(store::StoreError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    /// The settle's id (1 to 255 printable ASCII): the same settle again answers the same.
    #[schema(required)]
    settle_id: Option<String>,
    /// The actual usage: 1 to 1,000 events as `POST /v1/usage` takes them (an event that
    /// names no `user`, `api_key` or `labels` takes the hold's); or give `amount_credits`.
    #[schema(value_type = Option<Vec<crate::usage::UsageEvent>>)]
    events: Option<Vec<Value>>,
    /// The actual usage as an amount (AI usage of the hold's model).
    #[schema(value_type = Option<CreditsInput>)]
    amount_credits: Option<Value>,
}

/// A settled hold, each event's result, and the org's available credits after it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettleResult {
    pub hold: HoldView,
    pub results: Vec<EventResult>,
    pub available_credits: Credits,
}

/// Settles a hold with the actual usage (`usage:write`): the usage is rated, deduplicated and
/// booked like `POST /v1/usage` (all of it, also beyond the hold, down to the org's floor),
/// and the hold ends: `settled = min(usage, amount)`, the rest released. After its expiry the
/// usage is still recorded, and the hold flagged `late`. The same `settle_id` and body again
/// answers the same; another settle of an ended hold is 409.
#[utoipa::path(post, path = "/v1/holds/{id}/settle", tag = "holds",
    params(("id" = String, Path, description = "The org's `hold_id` (org keys), or our `id`")),
    request_body = SettleBody,
    responses(
        (status = 200, description = "The settled hold and its usage", body = SettleResult),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`hold_not_found`"),
        (status = 409, description = "`hold_not_active`: voided, or settled by another settle"),
        (status = 422, description = "`missing_field`, `invalid_settle_id`, `events_or_amount`, `invalid_batch`, `settle_event_rejected` (with `index` and the event's `event_code`), `amount_not_positive`, `invalid_amount`"),
    ))]
pub async fn settle_hold(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<SettleBody>,
) -> Result<AxumJson<SettleResult>, ApiError> {
    let hold = find(&state, &caller, &id, true).await?;
    caller.authorize(hold.org_id, Scope::UsageWrite)?;
    let settle_id = body.settle_id.ok_or_else(|| {
        ApiError::invalid("settle_id", "missing_field", "`settle_id` is required")
    })?;
    usage_rules::check_event_id(&settle_id).map_err(|_| {
        ApiError::invalid(
            "settle_id",
            "invalid_settle_id",
            "`settle_id` must be 1 to 255 printable ASCII characters",
        )
    })?;
    let principal = match &caller {
        Caller::Org(p) => p.clone(),
        Caller::Operator { .. } => store::Principal {
            key_id: Uuid::nil(),
            org_id: hold.org_id,
            scopes: store::Scopes::all(),
            sources: None,
        },
    };
    let (catalog, rules) = crate::usage::rating_now(&state);
    let (events, what) = match (body.events, &body.amount_credits) {
        (Some(values), None) => {
            if values.is_empty() || values.len() > usage_rules::limits::BATCH_MAX {
                return Err(ApiError::invalid(
                    "events",
                    "invalid_batch",
                    "`events` holds 1 to 1,000 usage events",
                ));
            }
            let values: Vec<Value> = values.into_iter().map(|v| inherit(v, &hold)).collect();
            let rated = crate::usage::rate_values(&values, &principal, &catalog, &rules).map_err(
                |(i, r)| {
                    ApiError::invalid(
                        format!("events[{i}]"),
                        "settle_event_rejected",
                        format!("event {i} was refused ({}): {}", r.code, r.message),
                    )
                    .with("index", i)
                    .with("event_code", r.code)
                },
            )?;
            let hash = {
                let hashes: Vec<&[u8]> = rated.iter().map(|e| e.payload_hash.as_slice()).collect();
                store::request_hash(&hashes)
            };
            (rated, hash)
        }
        (None, Some(a)) => {
            let amount = credits_field(Some(a), "amount_credits")?;
            if !amount.is_positive() {
                return Err(ApiError::invalid(
                    "amount_credits",
                    "amount_not_positive",
                    "a settle by amount records more than zero credits",
                ));
            }
            let version = catalog.at(rules.now).map(|b| b.version).unwrap_or(0);
            let e = amount_event(&hold, amount, rules.now, version);
            let hash = e.payload_hash.clone();
            (vec![e], hash)
        }
        _ => {
            return Err(ApiError::invalid(
                "events",
                "events_or_amount",
                "give exactly one of `events` and `amount_credits`",
            ));
        }
    };
    let request_hash = store::request_hash(&[settle_id.as_bytes(), &what]);
    let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
    let job = UsageJob {
        org_id: hold.org_id,
        actor: caller.actor(),
        events,
        hold: Some(Box::new(HoldOp::Settle(SettleRequest {
            hold: hold.id,
            settle_id,
            request_hash,
        }))),
    };
    let done = state.ingestor.submit(job).await?;
    state.holds.forget(&hold);
    let now = state.store.now();
    let settled = match done.hold.map(|b| *b) {
        Some(HoldOutcome::Settled(h)) => {
            let label = if h.late { "late_settled" } else { "settled" };
            metrics::HOLDS.with_label_values(&[label]).inc();
            h
        }
        Some(HoldOutcome::SettleReplay(h)) => h,
        Some(HoldOutcome::NotActive(h)) => return Err(not_active(&h, now)),
        Some(HoldOutcome::NotFound) => {
            return Err(ApiError::not_found("hold_not_found", "no such hold"));
        }
        _ => return Err(ApiError::internal()),
    };
    let results = ids
        .iter()
        .zip(done.outcomes)
        .map(|(id, o)| match o {
            EventOutcome::Accepted(r) => crate::usage::recorded(id, EventStatus::Accepted, &r),
            EventOutcome::Duplicate(r) => crate::usage::recorded(id, EventStatus::Duplicate, &r),
            EventOutcome::Conflict => crate::usage::conflict_rejection(id),
            EventOutcome::OverdraftLimit | EventOutcome::Dropped => {
                crate::usage::overdraft_rejection(id)
            }
        })
        .collect();
    Ok(AxumJson(SettleResult {
        hold: HoldView::of(&settled, now),
        results,
        available_credits: done.balance,
    }))
}

/// A settle's event takes the hold's user, API key and labels when it names none.
fn inherit(mut v: Value, hold: &Hold) -> Value {
    if let Value::Object(o) = &mut v {
        let data = if o.contains_key("type") || !o.contains_key("data") {
            o
        } else {
            match o.get_mut("data") {
                Some(Value::Object(d)) => d,
                _ => return v,
            }
        };
        if let Some(u) = &hold.dims.user {
            data.entry("user")
                .or_insert_with(|| Value::String(u.clone()));
        }
        if let Some(k) = &hold.dims.api_key {
            data.entry("api_key")
                .or_insert_with(|| Value::String(k.clone()));
        }
        if !hold.dims.labels.is_empty() {
            data.entry("labels")
                .or_insert_with(|| serde_json::to_value(&hold.dims.labels).unwrap_or_default());
        }
    }
    v
}

/// A settle by amount as one usage event: AI usage of the hold's model, costing the amount,
/// under our own source and the hold's id (so it is recorded once, like any event).
fn amount_event(hold: &Hold, amount: Credits, now: DateTime<Utc>, version: i64) -> RatedEvent {
    let event = UsageEvent {
        source: SETTLE_SOURCE.to_string(),
        id: hold.id.to_string(),
        occurred_at: now,
        user: hold.dims.user.clone(),
        api_key: hold.dims.api_key.clone(),
        labels: hold.dims.labels.clone(),
        usage: Usage::AiTokens(AiTokens {
            model: hold
                .dims
                .model
                .clone()
                .unwrap_or_else(|| "unspecified".into()),
            operation: "hold_settle".into(),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
        }),
    };
    // The hold and the amount make the event, not the instant it was sent: the same settle
    // sent again is the same event (its answer is the first's).
    let payload_hash = store::request_hash(&[
        SETTLE_SOURCE.as_bytes(),
        hold.id.as_bytes(),
        amount.to_string().as_bytes(),
    ]);
    RatedEvent {
        event,
        cost: amount,
        price_version: version,
        payload_hash,
    }
}

/// The source of the usage a settle by amount records.
pub const SETTLE_SOURCE: &str = "creditflow:hold-settle";

fn not_active(h: &Hold, now: DateTime<Utc>) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "hold_not_active",
        format!("the hold is {}", h.state_at(now)),
    )
    .with("state", h.state_at(now))
}

/// Voids an active hold (`usage:write`): its credits go back now. Voiding it again answers
/// the voided hold; a settled or expired hold is 409.
#[utoipa::path(post, path = "/v1/holds/{id}/void", tag = "holds",
    params(("id" = String, Path, description = "The org's `hold_id` (org keys), or our `id`")),
    responses(
        (status = 200, description = "The voided hold", body = HoldView),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`hold_not_found`"),
        (status = 409, description = "`hold_not_active`"),
    ))]
pub async fn void_hold(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<AxumJson<HoldView>, ApiError> {
    let hold = find(&state, &caller, &id, false).await?;
    caller.authorize(hold.org_id, Scope::UsageWrite)?;
    let outcome = state.store.holds().void(hold.id, &caller.actor()).await?;
    state.holds.forget(&hold);
    let now = state.store.now();
    match outcome {
        HoldOutcome::Done(h) => {
            metrics::HOLDS.with_label_values(&["voided"]).inc();
            Ok(AxumJson(HoldView::of(&h, now)))
        }
        HoldOutcome::Replay(h) => Ok(AxumJson(HoldView::of(&h, now))),
        HoldOutcome::NotActive(h) => Err(not_active(&h, now)),
        _ => Err(ApiError::not_found("hold_not_found", "no such hold")),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// 1 to 86,400,000; the hold's expiry is at most that far from now.
    #[schema(required, minimum = 1, maximum = 86400000)]
    by_ms: Option<i64>,
}

/// Pushes an active hold's expiry later (`usage:write`), at most 24 h from now.
#[utoipa::path(post, path = "/v1/holds/{id}/extend", tag = "holds",
    params(("id" = String, Path, description = "The org's `hold_id` (org keys), or our `id`")),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "The hold with its new expiry", body = HoldView),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`hold_not_found`"),
        (status = 409, description = "`hold_not_active`"),
        (status = 422, description = "`missing_field`, `invalid_extension`"),
    ))]
pub async fn extend_hold(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ExtendBody>,
) -> Result<AxumJson<HoldView>, ApiError> {
    let hold = find(&state, &caller, &id, false).await?;
    caller.authorize(hold.org_id, Scope::UsageWrite)?;
    let by = body
        .by_ms
        .ok_or_else(|| ApiError::invalid("by_ms", "missing_field", "`by_ms` is required"))?;
    if !(1..=holds::TTL_MAX_MS).contains(&by) {
        return Err(ApiError::invalid(
            "by_ms",
            "invalid_extension",
            format!("`by_ms` must be between 1 and {}", holds::TTL_MAX_MS),
        ));
    }
    let outcome = state
        .store
        .holds()
        .extend(hold.id, chrono::Duration::milliseconds(by))
        .await?;
    let now = state.store.now();
    match outcome {
        HoldOutcome::Done(h) => Ok(AxumJson(HoldView::of(&h, now))),
        HoldOutcome::NotActive(h) => Err(not_active(&h, now)),
        _ => Err(ApiError::not_found("hold_not_found", "no such hold")),
    }
}

/// One hold (`usage:write` or `balance:read`).
#[utoipa::path(get, path = "/v1/holds/{id}", tag = "holds",
    params(("id" = String, Path, description = "The org's `hold_id` (org keys), or our `id`")),
    responses(
        (status = 200, description = "The hold as of now", body = HoldView),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`hold_not_found`"),
    ))]
pub async fn get_hold(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<AxumJson<HoldView>, ApiError> {
    let hold = find(&state, &caller, &id, false).await?;
    caller.authorize_any(hold.org_id, &[Scope::UsageWrite, Scope::BalanceRead])?;
    Ok(AxumJson(HoldView::of(&hold, state.store.now())))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HoldParams {
    /// `active`, `settled`, `voided` or `expired` (as of now); all when absent.
    #[param(pattern = "^(active|settled|voided|expired)$")]
    state: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of holds, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldPage {
    pub data: Vec<HoldView>,
    pub next_cursor: Option<String>,
}

/// The org's holds, newest first (`usage:write` or `balance:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/holds", tag = "holds",
    params(("org" = Uuid, Path, description = "The organization"), HoldParams),
    responses(
        (status = 200, description = "A page of holds", body = HoldPage),
        (status = 400, description = "`invalid_limit`, `invalid_cursor`, `invalid_state`"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn list_holds(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Query(p): Query<HoldParams>,
) -> Result<AxumJson<HoldPage>, ApiError> {
    caller.authorize_any(org_id, &[Scope::UsageWrite, Scope::BalanceRead])?;
    state.store.orgs().get_org(org_id).await?;
    let limit = page_limit(p.limit, 100)?;
    let before = page_cursor::<Uuid>(p.cursor.as_deref(), |_| true)?;
    let hold_state = match p.state.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<HoldState>().map_err(|_| {
            ApiError::bad_request(
                "invalid_state",
                "state is `active`, `settled`, `voided` or `expired`",
            )
        })?),
    };
    let holds = state
        .store
        .holds()
        .list(&HoldQuery {
            org_id,
            state: hold_state,
            before,
            limit,
        })
        .await?;
    let now = state.store.now();
    let next_cursor = (holds.len() as i64 == limit)
        .then(|| holds.last().map(|h| h.id.to_string()))
        .flatten();
    Ok(AxumJson(HoldPage {
        data: holds.iter().map(|h| HoldView::of(h, now)).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settle_event_takes_the_holds_user_unless_it_names_one() {
        let mut hold = test_hold();
        hold.dims.user = Some("u1".into());
        let v = inherit(serde_json::json!({"type": "ai_tokens"}), &hold);
        assert_eq!(v["user"], "u1");
        let v = inherit(
            serde_json::json!({"type": "ai_tokens", "user": "u2"}),
            &hold,
        );
        assert_eq!(v["user"], "u2");
    }

    fn test_hold() -> Hold {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "org_id": Uuid::nil(), "hold_id": "h", "state": "active",
            "requested": "1", "amount": "1", "overage": "reject",
            "dims": {"user": null, "api_key": null, "model": null, "labels": {}},
            "price_version": null, "actor": "a", "created_at": "2026-12-01T00:00:00Z",
            "expires_at": "2026-12-01T00:02:00Z", "ended_at": null, "settled": null,
            "released": null, "settle_id": null, "usage_credits": null, "late": false
        }))
        .unwrap()
    }
}
