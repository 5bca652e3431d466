//! Property tests of the parsers that take hostile input: usage JSON, CloudEvents in each mode,
//! Stripe webhooks and credit amounts. Whatever the bytes: no panic, every refusal of a whole
//! request a 4xx problem, every refusal of one event a stable code, and what is accepted holds
//! no control character.

use std::sync::Arc;

use api::{usage::validate, webhooks::parse_webhook};
use axum::http::{HeaderMap, HeaderValue};
use billing::Credits;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;
use store::{Principal, Scopes};
use uuid::Uuid;

fn reporter() -> Principal {
    Principal {
        key_id: Uuid::nil(),
        org_id: Uuid::nil(),
        scopes: Scopes::all(),
        sources: Some(Arc::from(vec!["/gw".to_string()])),
    }
}

fn headers(content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert("content-type", v);
    }
    h
}

/// JSON-ish values: mostly well-formed usage events with hostile leaves.
fn leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or_default()),
        ".{0,40}".prop_map(serde_json::Value::from),
        "[a-z_]{1,12}".prop_map(serde_json::Value::from),
        "-?[0-9]{1,30}(\\.[0-9]{0,12})?".prop_map(serde_json::Value::from),
    ]
}

fn event() -> impl Strategy<Value = serde_json::Value> {
    let field = prop_oneof![
        Just("id"),
        Just("source"),
        Just("type"),
        Just("occurred_at"),
        Just("user"),
        Just("labels"),
        Just("model"),
        Just("operation"),
        Just("input_tokens"),
        Just("output_tokens"),
        Just("cached_input_tokens"),
        Just("resource"),
        Just("quantity"),
        Just("unit"),
        Just("specversion"),
        Just("data"),
        Just("data_base64"),
        Just("time"),
        Just("subject"),
        Just("datacontenttype"),
        Just("extra"),
    ];
    let base = serde_json::json!({
        "id": "e-1", "type": "ai_tokens", "occurred_at": "2026-12-01T00:00:00Z",
        "model": "gpt-4o", "input_tokens": 10,
    });
    proptest::collection::vec(
        (
            field,
            prop_oneof![
                leaf(),
                proptest::collection::btree_map("[a-z\\x00\\n]{0,6}", leaf(), 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
            ],
        ),
        0..6,
    )
    .prop_map(move |changes| {
        let mut e = base.clone();
        for (k, v) in changes {
            e[k] = v;
        }
        e
    })
}

fn check_events(
    out: Result<Vec<Result<billing::usage::UsageEvent, billing::usage::Rejection>>, api::ApiError>,
) {
    match out {
        Err(e) => assert!(e.status.is_client_error(), "{} {}", e.status, e.code),
        Ok(events) => {
            for e in events {
                match e {
                    Ok(ev) => {
                        let texts = [&ev.id, &ev.source]
                            .into_iter()
                            .chain(ev.user.iter())
                            .chain(ev.labels.keys())
                            .chain(ev.labels.values());
                        for t in texts {
                            assert!(!t.chars().any(char::is_control), "{t:?}");
                        }
                        assert_eq!(ev.source, "/gw");
                    }
                    Err(r) => assert!(!r.code.is_empty() && !r.message.is_empty()),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn usage_json_never_panics(events in proptest::collection::vec(event(), 0..5)) {
        let now = "2026-12-01T00:01:00Z".parse().unwrap();
        let body = serde_json::json!({ "events": events }).to_string();
        check_events(validate(&headers("application/json"), body.as_bytes(), &reporter(), now));
        let batch = serde_json::Value::Array(events.clone()).to_string();
        check_events(validate(&headers("application/cloudevents-batch+json"), batch.as_bytes(), &reporter(), now));
        if let Some(first) = events.first() {
            let one = first.to_string();
            check_events(validate(&headers("application/cloudevents+json"), one.as_bytes(), &reporter(), now));
        }
    }

    #[test]
    fn raw_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), ct in "[ -~]{0,40}") {
        let now = "2026-12-01T00:01:00Z".parse().unwrap();
        check_events(validate(&headers(&ct), &body, &reporter(), now));
        check_events(validate(&headers("application/json"), &body, &reporter(), now));
    }

    #[test]
    fn binary_mode_headers_never_panic(
        attrs in proptest::collection::vec(("(specversion|id|source|type|time|subject|x)", "[ -~]{0,30}"), 0..7),
        data in event(),
    ) {
        let now = "2026-12-01T00:01:00Z".parse().unwrap();
        let mut h = headers("application/json");
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        for (k, v) in attrs {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(format!("ce-{k}").as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                h.insert(name, value);
            }
        }
        check_events(validate(&h, data.to_string().as_bytes(), &reporter(), now));
    }

    #[test]
    fn webhooks_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), sig in "[ -~]{0,80}", sign in any::<bool>()) {
        let mut h = HeaderMap::new();
        let header = if sign {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec").unwrap();
            mac.update(b"1000.");
            mac.update(&body);
            format!("t=1000,v1={}", hex::encode(mac.finalize().into_bytes()))
        } else {
            sig
        };
        if let Ok(v) = HeaderValue::from_str(&header) {
            h.insert("stripe-signature", v);
        }
        match parse_webhook("whsec", &h, &body, 1000) {
            Ok(event) => {
                prop_assert_eq!(event.raw["id"].as_str(), Some(event.id.as_str()));
                prop_assert_eq!(event.raw["type"].as_str(), Some(event.kind.as_str()));
                prop_assert!(!event.raw.to_string().contains("\\u0000"));
            }
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
    }

    #[test]
    fn credits_parse_or_refuse(s in "[-+ 0-9.eE_a-z\\x00]{0,40}") {
        match s.parse::<Credits>() {
            Ok(c) => {
                let back: Credits = c.to_string().parse().unwrap();
                prop_assert_eq!(back, c);
                prop_assert!(c.as_decimal().abs() <= Credits::MAX_AMOUNT);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
