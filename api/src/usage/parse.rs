//! Reading a usage request: JSON batches and CloudEvents (batch, structured, binary) into
//! events, each judged on its own (a rejection names its field and code).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode, header};
use billing::{
    Credits,
    pricing::Resource,
    usage::{self, AiTokens, InfraUsage, Rejection, Usage, UsageEvent, limits},
};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use store::Principal;

use crate::{
    cloudevents::{self, Mapped},
    error::ApiError,
};

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
    "api_key",
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
    "api_key",
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
pub(crate) struct Rules {
    pub(crate) now: DateTime<Utc>,
    /// How far after `now` an event may be stamped.
    pub(crate) max_ahead: Duration,
    /// How far before `now` an event may be stamped (`ingest.late_usage_max_days`).
    pub(crate) max_late: Duration,
    pub(crate) max_cost: Credits,
}

/// Validates one event from its JSON, reported by `reporter`, by `rules`.
pub(super) fn parse_event(
    v: &Value,
    reporter: &Principal,
    rules: &Rules,
) -> Result<UsageEvent, Rejection> {
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
    let api_key = string(o, "api_key", false)?;
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
        api_key,
        labels,
        usage,
    })
}
