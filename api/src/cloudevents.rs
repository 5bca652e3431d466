//! CloudEvents 1.0 over HTTP, in all three content modes, mapped onto our usage event shape.
//!
//! - batch: `application/cloudevents-batch+json`, a JSON array of events;
//! - structured: `application/cloudevents+json`, one event;
//! - binary: the attributes as `ce-*` headers, the body the event's `data`
//!   (`Content-Type` is its `datacontenttype`, which must be JSON).
//!
//! Only the exact types [`AI_TOKENS_TYPE`] and [`INFRA_TYPE`] are usage. `source` and `id` are
//! required and, with the org, identify the event (the spec makes `source` + `id` unique).
//! `time` is `occurred_at`, `subject` the user (unless `data` names one), and `data` (or
//! `data_base64`, base64 of the JSON) holds the usage fields. Extension attributes are ignored.

use axum::http::HeaderMap;
use base64::Engine;
use billing::usage::Rejection;
use serde_json::{Map, Value};

pub const BATCH: &str = "application/cloudevents-batch+json";
pub const STRUCTURED: &str = "application/cloudevents+json";
pub const AI_TOKENS_TYPE: &str = "dev.creditflow.usage.ai_tokens";
pub const INFRA_TYPE: &str = "dev.creditflow.usage.infra";

/// An event to validate, or a refusal already decided (with the id it named, if any).
pub enum Mapped {
    Event(Value),
    Refused(Option<Value>, Rejection),
}

/// Whether a request is a binary-mode CloudEvent (it carries `ce-specversion`).
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
}

/// A binary-mode event: attributes from the `ce-*` headers, `data` from the parsed body.
pub fn from_binary(headers: &HeaderMap, data: Value) -> Mapped {
    let mut ce = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        match value.to_str() {
            Ok(v) => {
                // Header values are percent-encoded where they are not printable ASCII.
                let decoded = percent_decode(v);
                ce.insert(attr.to_string(), Value::String(decoded));
            }
            Err(_) => {
                return Mapped::Refused(
                    None,
                    Rejection::new(
                        "invalid_cloudevent",
                        format!("header ce-{attr} is not visible ASCII"),
                    )
                    .at(attr.to_string()),
                );
            }
        }
    }
    ce.insert("data".into(), data);
    map(Value::Object(ce))
}

/// Maps one structured (or batched) CloudEvent onto our event shape.
pub fn map(ce: Value) -> Mapped {
    let Value::Object(mut ce) = ce else {
        return Mapped::Refused(
            None,
            Rejection::new("invalid_event", "a CloudEvent is a JSON object"),
        );
    };
    let id = ce.get("id").cloned();
    let refuse = |field: &str, detail: String| {
        Mapped::Refused(
            id.clone(),
            Rejection::new("invalid_cloudevent", detail).at(field.to_string()),
        )
    };
    if ce.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return refuse("specversion", "specversion must be \"1.0\"".into());
    }
    for attr in ["id", "source", "type"] {
        match ce.get(attr) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return refuse(attr, format!("{attr} is required and must be a string")),
        }
    }
    let kind = match ce.get("type").and_then(Value::as_str).unwrap_or_default() {
        AI_TOKENS_TYPE => "ai_tokens",
        INFRA_TYPE => "infra",
        other => {
            let shown: String = other
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect();
            return Mapped::Refused(
                id,
                Rejection::new(
                    "unknown_type",
                    format!("type `{shown}` is neither {AI_TOKENS_TYPE} nor {INFRA_TYPE}"),
                )
                .at("type"),
            );
        }
    };
    match ce.get("datacontenttype") {
        None => {}
        Some(Value::String(t)) if is_json_media(t) => {}
        Some(_) => return refuse("datacontenttype", "datacontenttype must be JSON".into()),
    }
    let data = match (ce.remove("data"), ce.remove("data_base64")) {
        (Some(_), Some(_)) => {
            return refuse("data", "an event has data or data_base64, not both".into());
        }
        (Some(Value::Object(d)), None) => d,
        (None, Some(Value::String(b64))) => {
            let parsed = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
            match parsed {
                Some(Value::Object(d)) => d,
                _ => {
                    return refuse(
                        "data_base64",
                        "data_base64 must be base64 of a JSON object".into(),
                    );
                }
            }
        }
        (None, None) => return refuse("data", "data is required".into()),
        _ => return refuse("data", "data must be a JSON object of usage fields".into()),
    };
    let mut e = data;
    // Attributes win over fields of the same name in data: they identify the event.
    e.insert("type".into(), Value::String(kind.into()));
    for (attr, ours) in [("id", "id"), ("source", "source"), ("time", "occurred_at")] {
        if let Some(v) = ce.remove(attr) {
            e.insert(ours.into(), v);
        }
    }
    if let Some(subject) = ce.remove("subject") {
        e.entry("user").or_insert(subject);
    }
    Mapped::Event(e.into())
}

/// `application/json`, or any `…+json` type, with parameters.
pub fn is_json_media(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
