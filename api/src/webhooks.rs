//! The payment processor's webhook: signature checked, the event stored in the inbox and
//! answered at once; the dispatcher hands it on (`workers::inbox`).

use axum::{Json as AxumJson, body::Bytes, extract::State, http::HeaderMap};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::{AppState, error::ApiError};

/// How old a webhook's signature timestamp may be (Stripe's own tolerance).
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

/// Checks `Stripe-Signature: t=…,v1=…` against the raw body: HMAC-SHA256 of `t.body` with the
/// endpoint secret, any `v1` may match, and `t` within the tolerance of now.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t = timestamp.ok_or("no timestamp in Stripe-Signature")?;
    if (now - t).abs() > WEBHOOK_TOLERANCE_SECS {
        return Err("the signature's timestamp is outside the tolerance");
    }
    let valid = signatures.iter().any(|sig| {
        #[allow(clippy::expect_used, reason = "HMAC takes a key of any length")]
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(sig).is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err("no valid v1 signature")
    }
}

/// A webhook delivery checked and parsed: a valid signature at `now`, a JSON object with a
/// string `id` and `type`, and no NUL anywhere (the inbox stores it as jsonb, which cannot hold
/// one). Every refusal is a 400 problem.
/// A Stripe event as the inbox takes it: its id and type, and the whole event as sent (what
/// its `data` means is read by the dispatcher, per type).
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    pub id: String,
    pub kind: String,
    pub raw: Value,
}

/// The head every Stripe event has.
#[derive(Deserialize)]
struct EventHead {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A delivery taken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Received {
    /// Always true.
    pub received: bool,
    /// True when this event id was received before (nothing new was stored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

pub fn parse_webhook(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<StripeEvent, ApiError> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_signature", "missing Stripe-Signature"))?;
    verify_signature(secret, signature, body, now)
        .map_err(|m| ApiError::bad_request("invalid_signature", m))?;
    let event: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", e.to_string()))?;
    let head = EventHead::deserialize(&event).map_err(|_| {
        ApiError::bad_request(
            "invalid_event",
            "an event is an object with an id and a type",
        )
    })?;
    if has_nul(&event) {
        return Err(ApiError::bad_request(
            "invalid_event",
            "the event holds a NUL character",
        ));
    }
    Ok(StripeEvent {
        id: head.id,
        kind: head.kind,
        raw: event,
    })
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `POST /v1/webhooks/stripe`: verifies the signature on the raw body and stores the event in
/// the inbox (each id once), answered 200 without waiting for Temporal. What an event means is
/// decided by the dispatcher (`workers::inbox`); unknown types are stored and ignored.
#[utoipa::path(post, path = "/v1/webhooks/stripe", tag = "purchases",
    params(("Stripe-Signature" = String, Header, description = "`t=…,v1=…`: HMAC-SHA256 of `t.body` with the endpoint secret")),
    request_body(content = serde_json::Value, description = "A Stripe event", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or a duplicate of one stored)", body = Received),
        (status = 400, description = "`invalid_signature`, `malformed_json`, `invalid_event`"),
    ))]
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<AxumJson<Received>, ApiError> {
    let event = parse_webhook(
        &state.stripe_webhook_secret,
        &headers,
        &body,
        chrono::Utc::now().timestamp(),
    )?;
    // Stored, then answered: the worker's dispatcher hands it to the workflow it concerns, so
    // a Temporal outage delays what it causes and never loses it. A second delivery (or a
    // replay of a captured event) finds its id stored and changes nothing.
    let fresh = state
        .store
        .inbox()
        .receive_stripe_event(&event.id, &event.kind, &event.raw)
        .await?;
    Ok(AxumJson(Received {
        received: true,
        duplicate: !fresh,
    }))
}
