//! `POST /v1/usage`: a batch of 1 to 1,000 usage events from an org key with `usage:write`, as
//! JSON (`{"events": [...]}`) or as CloudEvents in any content mode ([`crate::cloudevents`]).
//!
//! An event is identified by (org, source, id). JSON events may name their `source`; one that
//! does not is recorded under the key's default source (the first of its sources, or
//! `default` for a key not limited to sources). A key limited to sources may report only for
//! them, so one key cannot take another's ids, while a retry through a rotated key of the same
//! source is still a duplicate.
//!
//! Each event is validated and rated here, with no database work; the valid ones go to the
//! coalescing writer ([`store::Ingestor`]) and are committed with other requests' events in
//! one transaction. Valid events are recorded even when others in the batch are refused.

mod parse;
mod schema;

use parse::*;
pub use parse::{parse_batch, validate};
pub use schema::{CloudEvent, EventResult, EventStatus, UsageBatch, UsageEvent, UsageResult};

use axum::{
    Json as AxumJson,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use billing::{Credits, pricing::PriceCatalog, usage::Rejection};
use chrono::Utc;
use serde_json::Value;
use store::{EventOutcome, Principal, RatedEvent, Recorded, Scope, UsageJob};

use crate::{AppState, Caller, cloudevents::Mapped, error::ApiError, metrics};

/// The body limit of this route: 1,000 events with labels fit well inside it.
pub const USAGE_BODY_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// The unit in which usage bytes in flight are counted.
pub const BYTES_PER_PERMIT: usize = 1024;

/// Batches parsed at once (each on a blocking thread).
const PARSE_THREADS: usize = 1;

static PARSE_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARSE_THREADS);

/// Records a batch of 1 to 1,000 usage events (an org key with `usage:write`): each valid
/// event is rated with the price version effective when it occurred and booked once per
/// (org, source, id); invalid ones are rejected one by one, with a code.
#[utoipa::path(post, path = "/v1/usage", tag = "usage",
    request_body(content(
        (UsageBatch = "application/json"),
        (Vec<CloudEvent> = "application/cloudevents-batch+json"),
        (CloudEvent = "application/cloudevents+json"),
    )),
    responses(
        (status = 200, description = "Each event's result, in the order sent", body = UsageResult),
        (status = 400, description = "`malformed_json`, `malformed_body`, `invalid_batch`, `invalid_cloudevent`"),
        (status = 403, description = "`org_key_required`, `missing_scope`"),
        (status = 415, description = "`unsupported_media_type`"),
        (status = 429, description = "`usage_overloaded`: too much usage in flight; retry after `Retry-After`"),
    ))]
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, AxumJson<UsageResult>), ApiError> {
    let principal = match &caller {
        Caller::Org(p) => {
            caller.require_scope(Scope::UsageWrite)?;
            p.clone()
        }
        Caller::Operator { .. } => {
            return Err(ApiError::forbidden(
                "org_key_required",
                "usage is reported with the organization's own API key",
            ));
        }
    };
    let _timer = metrics::USAGE_BATCH_SECONDS.start_timer();
    // The body is held (read, parsed, waiting on the writer) under the bytes-in-flight bound,
    // counted by its declared length (or the route's limit when it declares none) before it is
    // read, so a flood of bodies waits outside memory, answered 429 at once.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(USAGE_BODY_LIMIT_BYTES);
    if declared > USAGE_BODY_LIMIT_BYTES {
        return Err(too_large());
    }
    let permits = declared.div_ceil(BYTES_PER_PERMIT).max(1) as u32;
    let _in_flight = state
        .usage_bytes
        .clone()
        .try_acquire_many_owned(permits)
        .map_err(|_| {
            metrics::USAGE_OVERLOADED.inc();
            ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "usage_overloaded",
                    "too much usage is being recorded at once; retry this request shortly",
                )
            }
        })?;
    let body = axum::body::to_bytes(body, USAGE_BODY_LIMIT_BYTES)
        .await
        .map_err(|e| {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_big {
                too_large()
            } else {
                ApiError::bad_request("malformed_body", format!("the body could not be read: {e}"))
            }
        })?;
    let org_id = principal.org_id;
    // Parsing and rating are pure CPU work: they run off the async workers, so a flood of
    // large batches does not delay light requests such as balance reads.
    // At most `PARSE_THREADS` batches are parsed at once, so ingestion cannot crowd the two
    // cores with runnable threads.
    // The clock is read with the catalog, not after waiting for a permit. A version this
    // catalog does not know was published after `checked_at`, so it starts at or after
    // `checked_at + lead`; events stamped before `checked_at + lead - refresh` (the margin
    // covers a publication in flight during the check) are out of its reach, however late the
    // last refresh was. Never below now: usage that already happened is always recorded.
    let (catalog, rules) = rating_now(&state);
    let permit = PARSE_PERMITS
        .acquire()
        .await
        .map_err(|_| ApiError::internal())?;
    let Prepared {
        mut results,
        slots,
        valid,
    } = tokio::task::spawn_blocking(move || prepare(&headers, &body, &principal, &catalog, &rules))
        .await
        .map_err(|_| ApiError::internal())??;
    drop(permit);

    let balance = if valid.is_empty() {
        state.store.ledger().balance(org_id).await?.available
    } else {
        let ids: Vec<String> = valid.iter().map(|e| e.event.id.clone()).collect();
        let job = UsageJob {
            org_id,
            actor: caller.actor(),
            events: valid,
            hold: None,
        };
        let done = state.ingestor.submit(job).await?;
        for ((slot, id), outcome) in slots.into_iter().zip(ids).zip(done.outcomes) {
            results[slot] = match outcome {
                EventOutcome::Accepted(r) => recorded(&id, EventStatus::Accepted, &r),
                EventOutcome::Duplicate(r) => recorded(&id, EventStatus::Duplicate, &r),
                EventOutcome::Conflict => conflict_rejection(&id),
                EventOutcome::OverdraftLimit => overdraft_rejection(&id),
                // Only a settle's events are dropped with their settle.
                EventOutcome::Dropped => return Err(ApiError::internal()),
            };
        }
        done.balance
    };
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    for r in &results {
        match r.status {
            EventStatus::Accepted => accepted += 1,
            EventStatus::Duplicate => duplicates += 1,
            EventStatus::Rejected => {
                rejected += 1;
                let code = r.code.as_deref().unwrap_or("unknown");
                metrics::USAGE_EVENTS
                    .with_label_values(&["rejected", code])
                    .inc();
            }
        }
    }
    metrics::USAGE_EVENTS
        .with_label_values(&["accepted", ""])
        .inc_by(accepted);
    metrics::USAGE_EVENTS
        .with_label_values(&["duplicate", ""])
        .inc_by(duplicates);
    let summary = UsageResult {
        accepted,
        duplicates,
        rejected,
        balance_credits: balance,
        negative: balance.is_negative(),
        results,
    };
    Ok((StatusCode::OK, AxumJson(summary)))
}

/// A batch parsed and rated: a result slot per event (rejections filled in), and the valid
/// events with the slot each one's outcome goes to.
struct Prepared {
    results: Vec<EventResult>,
    slots: Vec<usize>,
    valid: Vec<RatedEvent>,
}

fn prepare(
    headers: &HeaderMap,
    body: &[u8],
    reporter: &Principal,
    catalog: &PriceCatalog,
    rules: &Rules,
) -> Result<Prepared, ApiError> {
    let events = parse_batch(headers, body)?;
    let mut p = Prepared {
        results: Vec::with_capacity(events.len()),
        slots: Vec::new(),
        valid: Vec::new(),
    };
    for raw in &events {
        let raw = match raw {
            Mapped::Event(v) => v,
            Mapped::Refused(id, r) => {
                p.results.push(rejected(id.as_ref(), r));
                continue;
            }
        };
        match rate(raw, reporter, rules, catalog) {
            Ok(rated) => {
                p.slots.push(p.results.len());
                // A slot the writer's outcome fills (no allocation: this is per valid event).
                p.results.push(EventResult {
                    id: Value::Null,
                    status: EventStatus::Accepted,
                    cost_credits: None,
                    price_version: None,
                    transfer_id: None,
                    usage_event_id: None,
                    code: None,
                    message: None,
                    field: None,
                });
                p.valid.push(rated);
            }
            Err(r) => p.results.push(rejected(raw.get("id"), &r)),
        }
    }
    Ok(p)
}

/// An event whose id was recorded with another payload.
pub(crate) fn conflict_rejection(id: &str) -> EventResult {
    rejected(
        Some(&Value::String(id.to_string())),
        &Rejection::new(
            "id_conflict",
            "this id was already recorded with a different payload",
        ),
    )
}

/// An event refused at the org's overdraft floor.
pub(crate) fn overdraft_rejection(id: &str) -> EventResult {
    rejected(
        Some(&Value::String(id.to_string())),
        &Rejection::new(
            "overdraft_limit",
            "this event would take the balance below the organization's overdraft \
             limit; nothing was recorded, send it again once credits are added",
        ),
    )
}

/// The rules and price catalog events are rated by now, as `POST /v1/usage` rates them.
pub(crate) fn rating_now(state: &AppState) -> (std::sync::Arc<PriceCatalog>, Rules) {
    let (catalog, checked_at) = state.prices.current_checked();
    let now = Utc::now();
    let max_ahead = (checked_at + state.usage_future_skew - now).max(chrono::Duration::zero());
    let rules = Rules {
        now,
        max_ahead,
        max_late: state.usage.late_usage_max,
        max_cost: state.usage.max_event_cost,
    };
    (catalog, rules)
}

/// Rates events given as JSON objects (a settle's): each one's rated form, or the first
/// refusal with the event's index.
pub(crate) fn rate_values(
    values: &[Value],
    reporter: &Principal,
    catalog: &PriceCatalog,
    rules: &Rules,
) -> Result<Vec<RatedEvent>, (usize, Rejection)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| rate(v, reporter, rules, catalog).map_err(|r| (i, r)))
        .collect()
}

pub(crate) fn recorded(id: &str, status: EventStatus, r: &Recorded) -> EventResult {
    EventResult {
        id: Value::String(id.to_string()),
        status,
        cost_credits: Some(r.cost),
        price_version: Some(r.price_version),
        transfer_id: r.transfer_id,
        usage_event_id: Some(r.usage_id),
        code: None,
        message: None,
        field: None,
    }
}

fn rejected(id: Option<&Value>, r: &Rejection) -> EventResult {
    EventResult {
        id: id.cloned().unwrap_or(Value::Null),
        status: EventStatus::Rejected,
        cost_credits: None,
        price_version: None,
        transfer_id: None,
        usage_event_id: None,
        code: Some(r.code.to_string()),
        message: Some(r.message.clone()),
        field: r.field.clone(),
    }
}

/// Validates and rates one event with the version effective when it occurred.
fn rate(
    v: &Value,
    reporter: &Principal,
    rules: &Rules,
    catalog: &PriceCatalog,
) -> Result<RatedEvent, Rejection> {
    let event = parse_event(v, reporter, rules)?;
    let max_cost = rules.max_cost;
    let (cost, price_version): (Credits, i64) = catalog
        .rate(event.occurred_at, &event.usage)
        .map_err(|e| Rejection::new(e.code(), e.message()))?;
    if cost > max_cost {
        return Err(Rejection::new(
            "event_cost_too_high",
            format!("this event costs {cost} credits; one event may cost at most {max_cost}"),
        ));
    }
    let payload_hash = store::request_hash(&[event.canonical_text().as_bytes()]);
    Ok(RatedEvent {
        event,
        cost,
        price_version,
        payload_hash,
    })
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("a usage request body is at most {USAGE_BODY_LIMIT_BYTES} bytes"),
    )
}
