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

use std::collections::BTreeMap;

use axum::{
    Json as AxumJson,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use billing::{
    Credits,
    pricing::{PriceCatalog, Resource},
    usage::{self, AiTokens, InfraUsage, Rejection, Usage, UsageEvent, limits},
};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use store::{EventOutcome, Principal, RatedEvent, Recorded, Scope, UsageJob};

use crate::{
    AppState, Caller,
    cloudevents::{self, Mapped},
    error::ApiError,
    metrics,
};

/// The body limit of this route: 1,000 events with labels fit well inside it.
pub const USAGE_BODY_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// The unit in which usage bytes in flight are counted.
pub const BYTES_PER_PERMIT: usize = 1024;

/// Batches parsed at once (each on a blocking thread).
const PARSE_THREADS: usize = 1;
static PARSE_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARSE_THREADS);

pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
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
    let (catalog, checked_at) = state.prices.current_checked();
    // The clock is read with the catalog, not after waiting for a permit. A version this
    // catalog does not know was published after `checked_at`, so it starts at or after
    // `checked_at + lead`; events stamped before `checked_at + lead - refresh` (the margin
    // covers a publication in flight during the check) are out of its reach, however late the
    // last refresh was. Never below now: usage that already happened is always recorded.
    let now = Utc::now();
    let max_ahead = (checked_at + state.usage_future_skew - now).max(chrono::Duration::zero());
    let rules = Rules {
        now,
        max_ahead,
        max_late: state.usage.late_usage_max,
        max_cost: state.usage.max_event_cost,
    };
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
        state.store.ledger().balance(org_id).await?.balance
    } else {
        let ids: Vec<String> = valid.iter().map(|e| e.event.id.clone()).collect();
        let job = UsageJob {
            org_id,
            actor: caller.actor(),
            events: valid,
        };
        let done = state.ingestor.submit(job).await?;
        for ((slot, id), outcome) in slots.into_iter().zip(ids).zip(done.outcomes) {
            results[slot] = match outcome {
                EventOutcome::Accepted(r) => recorded(&id, "accepted", &r),
                EventOutcome::Duplicate(r) => recorded(&id, "duplicate", &r),
                EventOutcome::Conflict => rejected(
                    Some(&Value::String(id)),
                    &Rejection::new(
                        "id_conflict",
                        "this id was already recorded with a different payload",
                    ),
                ),
                EventOutcome::OverdraftLimit => rejected(
                    Some(&Value::String(id)),
                    &Rejection::new(
                        "overdraft_limit",
                        "this event would take the balance below the organization's overdraft \
                         limit; nothing was recorded, send it again once credits are added",
                    ),
                ),
            };
        }
        done.balance
    };
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    for r in &results {
        match r["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => duplicates += 1,
            _ => {
                rejected += 1;
                let code = r["code"].as_str().unwrap_or("unknown");
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
    let summary = json!({
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
        "balance_credits": balance,
        "negative": balance.is_negative(),
        "results": results,
    });
    Ok((StatusCode::OK, AxumJson(summary)))
}

/// A batch parsed and rated: a result slot per event (rejections filled in), and the valid
/// events with the slot each one's outcome goes to.
struct Prepared {
    results: Vec<Value>,
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
                p.results.push(Value::Null);
                p.valid.push(rated);
            }
            Err(r) => p.results.push(rejected(raw.get("id"), &r)),
        }
    }
    Ok(p)
}

fn recorded(id: &str, status: &str, r: &Recorded) -> Value {
    json!({
        "id": id,
        "status": status,
        "cost_credits": r.cost,
        "price_version": r.price_version,
        "transfer_id": r.transfer_id,
        "usage_event_id": r.usage_id,
    })
}

fn rejected(id: Option<&Value>, r: &Rejection) -> Value {
    let mut v = json!({ "id": id, "status": "rejected", "code": r.code, "message": r.message });
    if let Some(field) = &r.field {
        v["field"] = json!(field);
    }
    v
}

/// The request's events as JSON objects in our own shape (CloudEvents mapped onto it), or
/// their refusals; a request that is no batch at all is refused whole.
pub fn parse_batch(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Mapped>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = |body: &[u8]| {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}"))
        })
    };
    let events = if cloudevents::is_binary(headers) {
        if !cloudevents::is_json_media(content_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a binary-mode CloudEvent's data must be JSON (`Content-Type: application/json`)",
            ));
        }
        vec![cloudevents::from_binary(headers, json(body)?)]
    } else {
        match media.as_str() {
            "application/json" => match json(body)? {
                Value::Object(mut o) => match o.remove("events") {
                    Some(Value::Array(a)) if o.is_empty() => {
                        a.into_iter().map(Mapped::Event).collect()
                    }
                    _ => {
                        return Err(invalid_batch(
                            "the body must be {\"events\": [...]} and nothing else \
                             (or a CloudEvent in binary mode, with ce-* headers)",
                        ));
                    }
                },
                _ => return Err(invalid_batch("the body must be {\"events\": [...]}")),
            },
            cloudevents::BATCH => match json(body)? {
                Value::Array(a) => a.into_iter().map(cloudevents::map).collect(),
                _ => {
                    return Err(invalid_batch(
                        "a CloudEvents batch is a JSON array of events",
                    ));
                }
            },
            cloudevents::STRUCTURED => match json(body)? {
                ce @ Value::Object(_) => vec![cloudevents::map(ce)],
                _ => {
                    return Err(invalid_batch("a structured CloudEvent is one JSON object"));
                }
            },
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "send application/json, {}, {} or a binary-mode CloudEvent",
                        cloudevents::STRUCTURED,
                        cloudevents::BATCH
                    ),
                ));
            }
        }
    };
    if events.is_empty() || events.len() > limits::BATCH_MAX {
        return Err(invalid_batch(&format!(
            "a batch holds 1 to {} events, this one {}",
            limits::BATCH_MAX,
            events.len()
        )));
    }
    Ok(events)
}

fn invalid_batch(detail: &str) -> ApiError {
    ApiError::invalid("events", "invalid_batch", detail)
}

fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn string(o: &Map<String, Value>, name: &str, required: bool) -> Result<Option<String>, Rejection> {
    match field(o, name) {
        None if required => {
            Err(Rejection::new("missing_field", format!("{name} is required")).at(name))
        }
        None => Ok(None),
        Some(Value::String(s)) => {
            usage::check_name(name, s, required)?;
            Ok(Some(s.clone()))
        }
        Some(_) => {
            Err(Rejection::new("invalid_field", format!("{name} must be a string")).at(name))
        }
    }
}

fn tokens(o: &Map<String, Value>, name: &str) -> Result<u64, Rejection> {
    match field(o, name) {
        None => Ok(0),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => usage::check_tokens(name, i as i128),
            (_, Some(u)) => usage::check_tokens(name, u as i128),
            _ if n.as_f64().is_some_and(|f| f < 0.0) => Err(Rejection::new(
                "negative_quantity",
                format!("{name} must not be negative"),
            )),
            _ => Err(Rejection::new(
                "invalid_quantity",
                format!("{name} must be a whole number"),
            )),
        },
        Some(_) => Err(Rejection::new(
            "invalid_quantity",
            format!("{name} must be a whole number"),
        )),
    }
}

fn quantity(o: &Map<String, Value>) -> Result<Decimal, Rejection> {
    let text = match field(o, "quantity") {
        None => return Err(Rejection::new("missing_field", "quantity is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => crate::extract::decimal_text(n),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_quantity",
                "quantity must be a decimal",
            ));
        }
    };
    let ok_chars = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && c == '-'));
    if !ok_chars {
        return Err(Rejection::new(
            "invalid_quantity",
            "quantity must be a plain decimal",
        ));
    }
    let q = Decimal::from_str_exact(&text).map_err(|_| {
        if text.starts_with('-') {
            Rejection::new("negative_quantity", "quantity must not be negative")
        } else {
            Rejection::new("quantity_out_of_range", "quantity is out of range")
        }
    })?;
    usage::check_quantity(q)
}

const AI_FIELDS: &[&str] = &[
    "id",
    "source",
    "type",
    "occurred_at",
    "user",
    "labels",
    "model",
    "operation",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
];
const INFRA_FIELDS: &[&str] = &[
    "id",
    "source",
    "type",
    "occurred_at",
    "user",
    "labels",
    "resource",
    "quantity",
    "unit",
];

/// Judges a request's events as `POST /v1/usage` does, without rating them (for property
/// tests of the parsers): the request refused whole, or each event's validated form or refusal.
pub fn validate(
    headers: &HeaderMap,
    body: &[u8],
    reporter: &Principal,
    now: DateTime<Utc>,
) -> Result<Vec<Result<UsageEvent, Rejection>>, ApiError> {
    let rules = Rules {
        now,
        max_ahead: Duration::minutes(5),
        max_late: Duration::days(crate::DEFAULT_LATE_USAGE_MAX_DAYS),
        max_cost: Credits::whole(crate::DEFAULT_MAX_EVENT_COST_CREDITS),
    };
    Ok(parse_batch(headers, body)?
        .iter()
        .map(|m| match m {
            Mapped::Event(v) => parse_event(v, reporter, &rules),
            Mapped::Refused(_, r) => Err(r.clone()),
        })
        .collect())
}

/// What one request's events are judged by.
struct Rules {
    now: DateTime<Utc>,
    /// How far after `now` an event may be stamped.
    max_ahead: Duration,
    /// How far before `now` an event may be stamped (`ingest.late_usage_max_days`).
    max_late: Duration,
    max_cost: Credits,
}

/// Validates one event from its JSON, reported by `reporter`, by `rules`.
fn parse_event(v: &Value, reporter: &Principal, rules: &Rules) -> Result<UsageEvent, Rejection> {
    let Value::Object(o) = v else {
        return Err(Rejection::new("invalid_event", "an event is a JSON object"));
    };
    let id = match field(o, "id") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Rejection::new("invalid_id", "id must be a string").at("id")),
        None => return Err(Rejection::new("missing_field", "id is required").at("id")),
    };
    usage::check_event_id(&id).map_err(|r| r.at("id"))?;
    let source = match field(o, "source") {
        None => reporter.default_source().to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Rejection::new("invalid_field", "source must be a string").at("source"));
        }
    };
    usage::check_source(&source)?;
    if !reporter.may_report_for(&source) {
        return Err(Rejection::new(
            "source_not_allowed",
            format!("this API key may not report usage for source `{source}`"),
        )
        .at("source"));
    }
    let kind = string(o, "type", true)?.unwrap_or_default();
    let allowed = match kind.as_str() {
        "ai_tokens" => AI_FIELDS,
        "infra" => INFRA_FIELDS,
        other => {
            return Err(Rejection::new(
                "unknown_type",
                format!("type `{other}` is neither ai_tokens nor infra"),
            ));
        }
    };
    if let Some(extra) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Rejection::new(
            "unknown_field",
            format!("`{extra}` is not a field of a {kind} event"),
        ));
    }
    let occurred_at: DateTime<Utc> = match field(o, "occurred_at") {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map_err(|_| Rejection::new("invalid_time", "occurred_at must be an RFC 3339 time"))?
            .with_timezone(&Utc),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_time",
                "occurred_at must be an RFC 3339 time",
            ));
        }
        None => return Err(Rejection::new("missing_field", "occurred_at is required")),
    };
    usage::check_occurred_at(occurred_at, rules.now, rules.max_ahead, rules.max_late)?;
    let user = string(o, "user", false)?;
    let labels: BTreeMap<String, String> = match field(o, "labels") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(Rejection::new(
                    "invalid_labels",
                    "label values must be strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Rejection::new("invalid_labels", "labels must be an object")),
    };
    usage::check_labels(&labels)?;
    let usage = if kind == "ai_tokens" {
        Usage::AiTokens(AiTokens {
            model: string(o, "model", true)?.unwrap_or_default(),
            operation: string(o, "operation", false)?.unwrap_or_default(),
            input_tokens: tokens(o, "input_tokens")?,
            output_tokens: tokens(o, "output_tokens")?,
            cached_input_tokens: tokens(o, "cached_input_tokens")?,
        })
    } else {
        let name = string(o, "resource", true)?.unwrap_or_default();
        let resource: Resource = name.parse().map_err(|_| {
            Rejection::new(
                "unknown_resource",
                format!("resource `{name}` is not one we meter"),
            )
        })?;
        let quantity = quantity(o)?;
        let unit = string(o, "unit", true)?.unwrap_or_default();
        if unit != resource.unit() {
            return Err(Rejection::new(
                "unit_mismatch",
                format!("{resource} is metered in {}, not {unit}", resource.unit()),
            ));
        }
        Usage::Infra(InfraUsage { resource, quantity })
    };
    Ok(UsageEvent {
        source,
        id,
        occurred_at,
        user,
        labels,
        usage,
    })
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
