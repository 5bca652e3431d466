//! A small, stateful stand-in for the parts of Stripe's REST API creditflow uses, in Stripe's
//! wire format: form-encoded requests, JSON objects with Stripe's field names, Stripe's error
//! objects and `Idempotency-Key` semantics. Customers, Checkout Sessions (payment and setup
//! mode: create, retrieve, list, expire), PaymentIntents confirmed off-session against test
//! payment methods (create, retrieve, list), and refunds. Two requests with the same key never
//! both run: the second replays the first's answer. It serves a hosted checkout page per
//! session, and delivers events to the webhook URL signed as Stripe signs them
//! (`Stripe-Signature: t=…,v1=…`), retrying on non-2xx. For development and tests only.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test double: a poisoned lock or a fixture that does not serialize should crash it"
)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Form, Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct Config {
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    /// Base of the hosted checkout pages' URLs.
    pub public_url: String,
}

/// Webhook delivery attempts per event at most, with doubling delays from 200 ms.
pub const DELIVERY_ATTEMPTS_MAX: u32 = 8;

#[derive(Default)]
struct Data {
    seq: u64,
    objects: HashMap<String, Value>,
    /// Idempotency-Key → (request hash, status, body, saved at on the key clock).
    idempotency: HashMap<String, (Vec<u8>, u16, Value, i64)>,
    /// Seconds the idempotency keys' clock is ahead of the wall clock (tests move it to see
    /// keys pruned after 24 hours, as Stripe prunes them).
    key_clock_offset: i64,
    /// Paths whose next request answers 500 `api_error` (saved under its key, as Stripe saves
    /// a 500), after running the request when the flag is set (the object exists, the answer
    /// is lost) or without running it.
    fail_next: HashMap<String, bool>,
    events: Vec<Value>,
    /// Deliveries answered 2xx, per event id.
    delivered: HashMap<String, u32>,
    /// Charges seen per payment method (for methods that decline a number of times first).
    charges: HashMap<String, u32>,
}

/// The emulator's state; cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    config: Arc<Mutex<Config>>,
    data: Arc<Mutex<Data>>,
    http: reqwest::Client,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A Stripe error answer.
fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    extra: Value,
) -> (u16, Value) {
    let mut e = json!({ "type": kind, "message": message });
    if let Some(c) = code {
        e["code"] = json!(c);
        e["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{c}"));
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            e[k] = v;
        }
    }
    (status.as_u16(), json!({ "error": e }))
}

fn reply((status, body): (u16, Value)) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(body),
    )
        .into_response()
}

/// The signature header Stripe sends: `t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`.
pub fn sign(secret: &str, timestamp: i64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Test payment methods and what charging them off-session does: `None` succeeds, otherwise
/// (code, decline_code).
fn card_outcome(pm: &str) -> Option<(&'static str, &'static str)> {
    match pm {
        "pm_card_chargeDeclinedInsufficientFunds"
        | "pm_card_visa_chargeDeclinedInsufficientFunds" => {
            Some(("card_declined", "insufficient_funds"))
        }
        "pm_card_chargeDeclinedProcessingError" => Some(("processing_error", "processing_error")),
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => {
            Some(("card_declined", "generic_decline"))
        }
        "pm_card_chargeDeclinedExpiredCard" => Some(("expired_card", "expired_card")),
        "pm_card_chargeDeclinedIncorrectCvc" => Some(("incorrect_cvc", "incorrect_cvc")),
        "pm_card_chargeDeclinedFraudulent" => Some(("card_declined", "fraudulent")),
        "pm_card_chargeDeclinedLostCard" | "pm_card_visa_chargeDeclinedLostCard" => {
            Some(("card_declined", "lost_card"))
        }
        "pm_card_chargeDeclinedStolenCard" => Some(("card_declined", "stolen_card")),
        "pm_card_chargeDeclinedVelocityLimitExceeded" => {
            Some(("card_declined", "card_velocity_exceeded"))
        }
        "pm_card_chargeDeclinedDoNotHonor" => Some(("card_declined", "do_not_honor")),
        "pm_card_visa_chargeDeclinedStolenCard" => Some(("card_declined", "stolen_card")),
        "pm_card_authenticationRequired" => {
            Some(("authentication_required", "authentication_required"))
        }
        _ => None,
    }
}

/// Test payment methods that succeed (besides the bank debits of [`settles_later`]).
const SUCCEEDING_TEST_METHODS: &[&str] = &[
    "pm_card_visa",
    "pm_card_visa_debit",
    "pm_card_mastercard",
    "pm_card_amex",
    "pm_card_us",
    "pm_card_softDeclineTwice",
];

/// Whether Stripe would know this payment method: a test method, or one this emulator made.
fn known_method(data: &Data, pm: &str) -> bool {
    SUCCEEDING_TEST_METHODS.contains(&pm)
        || card_outcome(pm).is_some()
        || settles_later(pm).is_some()
        || data
            .objects
            .get(pm)
            .is_some_and(|o| o["object"] == "payment_method")
}

/// Stripe's minimum charge per currency, in minor units (USD and EUR 50, GBP 30, JPY 50).
fn minimum_charge(currency: &str) -> Option<i64> {
    match currency {
        "usd" | "eur" | "jpy" => Some(50),
        "gbp" => Some(30),
        _ => None,
    }
}

type Params = HashMap<String, String>;

/// A PaymentIntent to record.
struct NewIntent<'a> {
    amount: i64,
    currency: &'a str,
    customer: Option<&'a String>,
    pm: &'a str,
    metadata: Value,
    status: &'a str,
}

fn int(p: &Params, k: &str) -> Option<i64> {
    p.get(k).and_then(|v| v.parse().ok())
}

/// `prefix[key]=value` pairs as an object (Stripe's metadata encoding).
fn map_of(p: &Params, prefix: &str) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in p {
        if let Some(rest) = k
            .strip_prefix(&format!("{prefix}["))
            .and_then(|r| r.strip_suffix(']'))
        {
            m.insert(rest.to_string(), json!(v));
        }
    }
    Value::Object(m)
}

impl Emulator {
    pub fn new(config: Config) -> Emulator {
        Emulator {
            config: Arc::new(Mutex::new(config)),
            data: Arc::default(),
            http: reqwest::Client::new(),
        }
    }

    /// Points event delivery somewhere else (tests start the emulator before the app).
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.config.lock().expect("config").webhook_url = url;
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/customers", post(api_post))
            .route("/v1/checkout/sessions", post(api_post).get(list_sessions))
            .route("/v1/checkout/sessions/{id}", get(get_object))
            .route("/v1/checkout/sessions/{id}/expire", post(api_post))
            .route(
                "/v1/payment_intents",
                post(api_post).get(list_payment_intents),
            )
            .route("/v1/payment_intents/{id}", get(get_object))
            .route("/v1/refunds", post(api_post).get(list_refunds))
            .route("/v1/setup_intents/{id}", get(get_object))
            .route("/checkout/{id}", get(hosted_page))
            .route("/checkout/{id}/pay", post(pay))
            .route("/_emulator/events", get(list_events))
            .route("/_emulator/fail_next", post(fail_next))
            .route("/_emulator/clock/advance", post(advance_key_clock))
            .route("/_emulator/events/{id}/deliver", post(redeliver))
            .route("/_emulator/checkout/{id}/settle", post(settle))
            .route(
                "/_emulator/payment_intents/{id}/settle",
                post(settle_intent),
            )
            .route(
                "/_emulator/payment_intents/{id}/dispute",
                post(open_dispute),
            )
            .route(
                "/_emulator/disputes/{id}/close/{outcome}",
                post(close_dispute),
            )
            .with_state(self.clone())
    }

    fn next_id(&self, data: &mut Data, prefix: &str) -> String {
        data.seq += 1;
        format!("{prefix}_test_{:06}{:08x}", data.seq, now() as u32)
    }

    /// Stores an event and delivers it in the background.
    fn emit(&self, data: &mut Data, kind: &str, object: Value) {
        let id = self.next_id(data, "evt");
        let event = json!({
            "id": id, "object": "event", "api_version": "2026-09-30.endive", "created": now(),
            "data": { "object": object }, "livemode": false, "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null }, "type": kind,
        });
        data.events.push(event.clone());
        let me = self.clone();
        tokio::spawn(async move { me.deliver(event, DELIVERY_ATTEMPTS_MAX).await });
    }

    /// Delivers one event, retrying non-2xx answers with doubling delays.
    async fn deliver(&self, event: Value, attempts: u32) {
        let (url, secret) = {
            let c = self.config.lock().expect("config");
            (c.webhook_url.clone(), c.webhook_secret.clone())
        };
        let Some(url) = url else { return };
        let body = event.to_string();
        let id = event["id"].as_str().unwrap_or_default().to_string();
        let mut delay = Duration::from_millis(200);
        for _ in 0..attempts {
            let sent = self
                .http
                .post(&url)
                .header("content-type", "application/json; charset=utf-8")
                .header("stripe-signature", sign(&secret, now(), &body))
                .body(body.clone())
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                *self
                    .data
                    .lock()
                    .expect("data")
                    .delivered
                    .entry(id)
                    .or_default() += 1;
                return;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::warn!(event = %id, "webhook delivery gave up");
    }

    /// Handles one API write with the state locked by the caller (who holds the lock across
    /// the idempotency lookup, this, and recording the answer, so a key is applied once).
    fn handle(&self, data: &mut Data, path: &str, p: &Params) -> (u16, Value) {
        if path == "/v1/customers" {
            let id = self.next_id(data, "cus");
            let c = json!({"id": id, "object": "customer", "created": now(), "livemode": false,
                           "email": p.get("email"), "name": p.get("name"), "metadata": map_of(p, "metadata")});
            data.objects.insert(id, c.clone());
            return (200, c);
        }
        if path == "/v1/checkout/sessions" {
            return self.create_session(data, p);
        }
        if let Some(id) = path
            .strip_prefix("/v1/checkout/sessions/")
            .and_then(|r| r.strip_suffix("/expire"))
        {
            let Some(s) = data.objects.get(id).cloned() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("resource_missing"),
                    "No such checkout.session",
                    json!({}),
                );
            };
            if s["status"] != "open" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    None,
                    "Only Checkout Sessions with a status in [\"open\"] can be expired.",
                    json!({}),
                );
            }
            let mut s = s;
            s["status"] = json!("expired");
            s["url"] = Value::Null;
            data.objects.insert(id.to_string(), s.clone());
            self.emit(data, "checkout.session.expired", s.clone());
            return (200, s);
        }
        if path == "/v1/payment_intents" {
            return self.charge(data, p);
        }
        if path == "/v1/refunds" {
            return self.refund(data, p);
        }
        error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            "Unrecognized request URL",
            json!({}),
        )
    }

    fn create_session(&self, data: &mut Data, p: &Params) -> (u16, Value) {
        let mode = p.get("mode").map(String::as_str).unwrap_or("");
        if mode != "payment" && mode != "setup" {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_missing"),
                "Missing required param: mode.",
                json!({"param": "mode"}),
            );
        }
        // Stripe accepts an expiry 30 minutes to 24 hours after the session's creation.
        if let Some(at) = int(p, "expires_at")
            && !(now() + 30 * 60..=now() + 24 * 3600).contains(&at)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "The `expires_at` timestamp must be between 30 minutes and 24 hours after the Checkout Session's creation.",
                json!({"param": "expires_at"}),
            );
        }
        let amount = int(p, "line_items[0][price_data][unit_amount]").unwrap_or(0)
            * int(p, "line_items[0][quantity]").unwrap_or(1);
        if mode == "payment" && amount <= 0 {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_missing"),
                "Missing required param: line_items.",
                json!({"param": "line_items"}),
            );
        }
        let currency = p
            .get("line_items[0][price_data][currency]")
            .or(p.get("currency"))
            .cloned();
        // Like Stripe, a payment below the currency's minimum charge is refused.
        if mode == "payment"
            && let Some(minimum) = currency.as_deref().and_then(minimum_charge)
            && amount < minimum
        {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("amount_too_small"),
                &format!(
                    "The Checkout Session's total amount due must add up to at least {minimum} (in the smallest unit of {})",
                    currency.as_deref().unwrap_or_default()
                ),
                json!({"param": "line_items"}),
            );
        }
        let id = self.next_id(data, "cs");
        let public = self.config.lock().expect("config").public_url.clone();
        let s = json!({
            "id": id, "object": "checkout.session", "mode": mode, "status": "open",
            "payment_status": "unpaid", "url": format!("{public}/checkout/{id}"),
            "amount_total": if mode == "payment" { json!(amount) } else { Value::Null },
            "currency": currency, "client_reference_id": p.get("client_reference_id"),
            "customer": p.get("customer"), "customer_email": p.get("customer_email"),
            "metadata": map_of(p, "metadata"), "success_url": p.get("success_url"),
            "cancel_url": p.get("cancel_url"),
            "expires_at": int(p, "expires_at").unwrap_or(now() + 24 * 3600),
            "created": now(), "livemode": false, "automatic_tax": {"enabled": false},
            "custom_fields": [], "custom_text": {}, "payment_method_types": ["card"],
            "shipping_options": [], "payment_intent": null, "setup_intent": null,
            "product_name": p.get("line_items[0][price_data][product_data][name]"),
        });
        data.objects.insert(id, s.clone());
        (200, s)
    }

    fn payment_intent(&self, data: &mut Data, n: NewIntent<'_>) -> Value {
        let NewIntent {
            amount,
            currency,
            customer,
            pm,
            metadata,
            status,
        } = n;
        let id = self.next_id(data, "pi");
        let charge = self.next_id(data, "ch");
        let pi = json!({
            "id": id, "object": "payment_intent", "amount": amount,
            "amount_capturable": 0, "amount_received": if status == "succeeded" { amount } else { 0 },
            "capture_method": "automatic", "confirmation_method": "automatic", "created": now(),
            "currency": currency, "customer": customer, "livemode": false, "metadata": metadata,
            "payment_method": pm, "payment_method_types": ["card"], "status": status,
            "latest_charge": charge,
        });
        data.objects.insert(charge.clone(), json!({
            "id": charge, "object": "charge", "amount": amount, "amount_captured": if status == "succeeded" { amount } else { 0 },
            "amount_refunded": 0, "billing_details": {}, "captured": status == "succeeded",
            "created": now(), "currency": currency, "disputed": false, "livemode": false,
            "metadata": {}, "paid": status == "succeeded", "refunded": false,
            "status": if status == "succeeded" { "succeeded" } else { "failed" }, "payment_intent": id,
        }));
        data.objects.insert(id, pi.clone());
        pi
    }

    fn charge(&self, data: &mut Data, p: &Params) -> (u16, Value) {
        let (Some(amount), Some(currency)) = (int(p, "amount"), p.get("currency")) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_missing"),
                "Missing required param: amount or currency.",
                json!({}),
            );
        };
        let pm = p.get("payment_method").cloned().unwrap_or_default();
        if !pm.is_empty() && !known_method(data, &pm) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such PaymentMethod: '{pm}'"),
                json!({"param": "payment_method"}),
            );
        }
        let metadata = map_of(p, "metadata");
        // Without `confirm=true` a PaymentIntent is only created: nothing is charged until it
        // is confirmed.
        if p.get("confirm").map(String::as_str) != Some("true") {
            let status = if pm.is_empty() {
                "requires_payment_method"
            } else {
                "requires_confirmation"
            };
            let pi = self.payment_intent(
                data,
                NewIntent {
                    amount,
                    currency,
                    customer: p.get("customer"),
                    pm: &pm,
                    metadata,
                    status,
                },
            );
            return (200, pi);
        }
        // Per card: the customer's payment method (Stripe's test cards decline per object).
        let card = format!(
            "{}/{pm}",
            p.get("customer").map(String::as_str).unwrap_or("")
        );
        let seen = data.charges.entry(card).or_default();
        *seen += 1;
        // `pm_card_softDeclineTwice`: insufficient funds twice, then it succeeds.
        let outcome = if pm == "pm_card_softDeclineTwice" {
            (*seen <= 2).then_some(("card_declined", "insufficient_funds"))
        } else {
            card_outcome(&pm)
        };
        // A bank debit confirmed off-session is `processing` until the test settles it
        // (`POST /_emulator/payment_intents/{id}/settle`), as Stripe's ACH and SEPA debits are.
        if outcome.is_none() && settles_later(&pm).is_some() {
            let pi = self.payment_intent(
                data,
                NewIntent {
                    amount,
                    currency,
                    customer: p.get("customer"),
                    pm: &pm,
                    metadata,
                    status: "processing",
                },
            );
            self.emit(data, "payment_intent.processing", pi.clone());
            return (200, pi);
        }
        match outcome {
            None => {
                let pi = self.payment_intent(
                    data,
                    NewIntent {
                        amount,
                        currency,
                        customer: p.get("customer"),
                        pm: &pm,
                        metadata,
                        status: "succeeded",
                    },
                );
                self.emit(data, "payment_intent.succeeded", pi.clone());
                (200, pi)
            }
            Some((code, decline)) => {
                let mut pi = self.payment_intent(
                    data,
                    NewIntent {
                        amount,
                        currency,
                        customer: p.get("customer"),
                        pm: &pm,
                        metadata,
                        status: "requires_payment_method",
                    },
                );
                let err = json!({"type": "card_error", "code": code, "decline_code": decline,
                                 "message": format!("Your card was declined ({decline})."),
                                 "charge": pi["latest_charge"]});
                pi["last_payment_error"] = err.clone();
                let id = pi["id"].as_str().unwrap_or_default().to_string();
                data.objects.insert(id, pi.clone());
                self.emit(data, "payment_intent.payment_failed", pi.clone());
                error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    Some(code),
                    &format!("Your card was declined ({decline})."),
                    json!({"decline_code": decline, "charge": pi["latest_charge"], "payment_intent": pi}),
                )
            }
        }
    }

    fn refund(&self, data: &mut Data, p: &Params) -> (u16, Value) {
        let Some(pi) = p
            .get("payment_intent")
            .and_then(|id| data.objects.get(id))
            .cloned()
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("resource_missing"),
                "No such payment_intent.",
                json!({"param": "payment_intent"}),
            );
        };
        let charge_id = pi["latest_charge"].as_str().unwrap_or_default().to_string();
        let mut charge = data.objects.get(&charge_id).cloned().unwrap_or_default();
        let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
        let paid = pi["amount_received"].as_i64().unwrap_or(0);
        let amount = int(p, "amount").unwrap_or(paid - refunded);
        if amount <= 0 || refunded + amount > paid {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("amount_too_large"),
                "Refund amount is greater than unrefunded amount on charge.",
                json!({"param": "amount"}),
            );
        }
        charge["amount_refunded"] = json!(refunded + amount);
        charge["refunded"] = json!(refunded + amount == paid);
        data.objects.insert(charge_id.clone(), charge.clone());
        let id = self.next_id(data, "re");
        let r = json!({"id": id, "object": "refund", "amount": amount, "created": now(),
                       "currency": pi["currency"], "status": "succeeded", "payment_intent": pi["id"],
                       "charge": charge_id, "metadata": map_of(p, "metadata")});
        data.objects.insert(id, r.clone());
        self.emit(data, "charge.refunded", charge);
        (200, r)
    }

    /// Completes a session as a paying customer would.
    fn complete(&self, id: &str, pm: &str) -> Result<Value, (u16, Value)> {
        let mut data = self.data.lock().expect("data");
        let Some(mut s) = data.objects.get(id).cloned() else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("resource_missing"),
                "No such checkout.session",
                json!({}),
            ));
        };
        if s["status"] != "open" {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "This Checkout Session is no longer open.",
                json!({}),
            ));
        }
        if s["mode"] == "payment" {
            let amount = s["amount_total"].as_i64().unwrap_or(0);
            let currency = s["currency"].as_str().unwrap_or("usd").to_string();
            let customer = s["customer"].as_str().map(String::from);
            // A bank debit completes the checkout unpaid: the money arrives (or not) later, when
            // the test settles it (POST /_emulator/checkout/{id}/settle), as Stripe's
            // delayed-notification payment methods do.
            let settles_later = settles_later(pm).is_some();
            let pi = self.payment_intent(
                &mut data,
                NewIntent {
                    amount,
                    currency: &currency,
                    customer: customer.as_ref(),
                    pm,
                    metadata: s["metadata"].clone(),
                    status: if settles_later {
                        "processing"
                    } else {
                        "succeeded"
                    },
                },
            );
            s["payment_intent"] = pi["id"].clone();
            if settles_later {
                s["payment_status"] = json!("unpaid");
                self.emit(&mut data, "payment_intent.processing", pi);
            } else {
                s["payment_status"] = json!("paid");
                self.emit(&mut data, "payment_intent.succeeded", pi);
            }
        } else {
            let seti = self.next_id(&mut data, "seti");
            data.objects.insert(
                seti.clone(),
                json!({"id": seti, "object": "setup_intent", "created": now(),
                "livemode": false, "payment_method_types": ["card"], "status": "succeeded",
                "usage": "off_session", "payment_method": pm, "customer": s["customer"]}),
            );
            s["setup_intent"] = json!(seti);
            s["payment_status"] = json!("no_payment_required");
        }
        s["status"] = json!("complete");
        s["url"] = Value::Null;
        data.objects.insert(id.to_string(), s.clone());
        self.emit(&mut data, "checkout.session.completed", s.clone());
        Ok(s)
    }
}

/// Test bank-debit payment methods: checkout completes unpaid and the payment settles later,
/// succeeding (`true`) or failing.
fn settles_later(pm: &str) -> Option<bool> {
    match pm {
        "pm_usBankAccount_success" | "pm_sepaDebit_success" => Some(true),
        "pm_usBankAccount_fail" | "pm_sepaDebit_fail" => Some(false),
        _ => None,
    }
}

/// Settles a bank debit's PaymentIntent (held in `data`) as its payment method says: succeeded
/// (its charge paid) or failed (`requires_payment_method`), with `payment_intent.succeeded` or
/// `payment_intent.payment_failed`. Returns the PaymentIntent and whether it succeeded.
fn settle_payment(em: &Emulator, data: &mut Data, mut pi: Value) -> (Value, bool) {
    let id = pi["id"].as_str().unwrap_or_default().to_string();
    let succeeds = settles_later(pi["payment_method"].as_str().unwrap_or_default()).unwrap_or(true);
    let charge_id = pi["latest_charge"].as_str().unwrap_or_default().to_string();
    if succeeds {
        pi["status"] = json!("succeeded");
        pi["amount_received"] = pi["amount"].clone();
        if let Some(charge) = data.objects.get_mut(&charge_id) {
            charge["status"] = json!("succeeded");
            charge["paid"] = json!(true);
            charge["captured"] = json!(true);
            charge["amount_captured"] = charge["amount"].clone();
        }
    } else {
        pi["status"] = json!("requires_payment_method");
        pi["last_payment_error"] = json!({"type": "invalid_request_error", "code": "payment_method_provider_decline", "message": "The bank account was declined."});
    }
    data.objects.insert(id, pi.clone());
    let kind = if succeeds {
        "payment_intent.succeeded"
    } else {
        "payment_intent.payment_failed"
    };
    em.emit(data, kind, pi.clone());
    (pi, succeeds)
}

impl Emulator {
    /// Settles a `processing` PaymentIntent (an off-session bank debit): see [`settle_payment`].
    fn settle_intent(&self, id: &str) -> Result<Value, (u16, Value)> {
        let mut data = self.data.lock().expect("data");
        let Some(pi) = data
            .objects
            .get(id)
            .cloned()
            .filter(|pi| pi["status"] == "processing")
        else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "No processing PaymentIntent to settle.",
                json!({}),
            ));
        };
        Ok(settle_payment(self, &mut data, pi).0)
    }

    /// Settles a completed, unpaid session's bank debit as its payment method says: the
    /// PaymentIntent succeeds (session `paid`, `checkout.session.async_payment_succeeded`) or
    /// fails (`requires_payment_method`, `checkout.session.async_payment_failed`).
    fn settle(&self, id: &str) -> Result<Value, (u16, Value)> {
        let mut data = self.data.lock().expect("data");
        let session = data.objects.get(id).cloned();
        let Some(mut s) =
            session.filter(|s| s["status"] == "complete" && s["payment_status"] == "unpaid")
        else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "No completed, unpaid Checkout Session to settle.",
                json!({}),
            ));
        };
        let pi_id = s["payment_intent"].as_str().unwrap_or_default().to_string();
        let Some(pi) = data.objects.get(&pi_id).cloned() else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("resource_missing"),
                "No such payment_intent",
                json!({}),
            ));
        };
        let (_, succeeds) = settle_payment(self, &mut data, pi);
        let kind = if succeeds {
            s["payment_status"] = json!("paid");
            "checkout.session.async_payment_succeeded"
        } else {
            "checkout.session.async_payment_failed"
        };
        data.objects.insert(id.to_string(), s.clone());
        self.emit(&mut data, kind, s.clone());
        Ok(s)
    }
}

impl Emulator {
    /// The card holder disputes a succeeded payment's charge: a `dispute` object
    /// (`needs_response`, reason `fraudulent`) and `charge.dispute.created`.
    fn open_dispute(&self, pi_id: &str) -> Result<Value, (u16, Value)> {
        let mut data = self.data.lock().expect("data");
        let Some(pi) = data
            .objects
            .get(pi_id)
            .cloned()
            .filter(|pi| pi["status"] == "succeeded")
        else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "Only a succeeded PaymentIntent's charge can be disputed.",
                json!({}),
            ));
        };
        let id = self.next_id(&mut data, "dp");
        let charge = pi["latest_charge"].clone();
        let dispute = json!({
            "id": id, "object": "dispute", "amount": pi["amount"], "currency": pi["currency"],
            "charge": charge, "payment_intent": pi_id, "created": now(), "livemode": false,
            "is_charge_refundable": false, "metadata": {}, "reason": "fraudulent",
            "status": "needs_response",
        });
        if let Some(c) = charge.as_str().and_then(|c| data.objects.get_mut(c)) {
            c["disputed"] = json!(true);
        }
        data.objects.insert(id, dispute.clone());
        self.emit(&mut data, "charge.dispute.created", dispute.clone());
        Ok(dispute)
    }

    /// Closes a dispute `won` or `lost`, with `charge.dispute.closed`.
    fn close_dispute(&self, id: &str, outcome: &str) -> Result<Value, (u16, Value)> {
        let mut data = self.data.lock().expect("data");
        let Some(mut dispute) = data
            .objects
            .get(id)
            .cloned()
            .filter(|d| d["object"] == "dispute" && (outcome == "won" || outcome == "lost"))
        else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such dispute: '{id}' (or outcome not won/lost)"),
                json!({}),
            ));
        };
        dispute["status"] = json!(outcome);
        data.objects.insert(id.to_string(), dispute.clone());
        self.emit(&mut data, "charge.dispute.closed", dispute.clone());
        Ok(dispute)
    }
}

async fn open_dispute(State(em): State<Emulator>, Path(id): Path<String>) -> Response {
    match em.open_dispute(&id) {
        Ok(d) => reply((200, d)),
        Err(e) => reply(e),
    }
}

async fn close_dispute(
    State(em): State<Emulator>,
    Path((id, outcome)): Path<(String, String)>,
) -> Response {
    match em.close_dispute(&id, &outcome) {
        Ok(d) => reply((200, d)),
        Err(e) => reply(e),
    }
}

/// `POST /_emulator/payment_intents/{id}/settle` (tests): see [`Emulator::settle_intent`].
async fn settle_intent(State(em): State<Emulator>, Path(id): Path<String>) -> Response {
    match em.settle_intent(&id) {
        Ok(pi) => reply((200, pi)),
        Err(e) => reply(e),
    }
}

/// `POST /_emulator/checkout/{id}/settle` (tests): see [`Emulator::settle`].
async fn settle(State(em): State<Emulator>, Path(id): Path<String>) -> Response {
    match em.settle(&id) {
        Ok(s) => reply((200, s)),
        Err(e) => reply(e),
    }
}

/// Whether the request carries a test secret key, as every API call must.
fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer sk_test_"))
}

fn unauthorized() -> Response {
    reply(error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        None,
        "Invalid API Key provided.",
        json!({}),
    ))
}

async fn api_post(
    State(em): State<Emulator>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let params: Params = form_urlencoded::parse(&body).into_owned().collect();
    let path = uri.path().to_string();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut sorted: Vec<_> = params.iter().collect();
    sorted.sort();
    let hash = Sha256::digest(format!("{path}?{sorted:?}").as_bytes()).to_vec();
    // One lock from the key's lookup to recording its answer: concurrent requests with the same
    // key are serialized, so the first one runs and the others replay its answer (never a second
    // object). Handling is synchronous and quick, so no request is ever seen in flight, which
    // is where Stripe would answer 409.
    let mut data = em.data.lock().expect("data");
    // Keys are pruned once they are 24 hours old: the same key then runs anew, as at Stripe.
    let key_now = now() + data.key_clock_offset;
    data.idempotency
        .retain(|_, (_, _, _, at)| key_now - *at < KEY_LIFETIME_SECS);
    if let Some(k) = &key
        && let Some((h, status, body, _)) = data.idempotency.get(k)
    {
        if *h != hash {
            return reply(error(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                None,
                &format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."
                ),
                json!({}),
            ));
        }
        let mut r = reply((*status, body.clone()));
        r.headers_mut()
            .insert("idempotent-replayed", "true".parse().expect("header"));
        return r;
    }
    let (status, body) = match data.fail_next.remove(&path) {
        Some(run) => {
            if run {
                em.handle(&mut data, &path, &params);
            }
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                None,
                "An unknown error occurred (injected by the emulator).",
                json!({}),
            )
        }
        None => em.handle(&mut data, &path, &params),
    };
    // Like Stripe, a request refused as invalid is not saved: the key may be used again. Every
    // other answer is, a 500 too: a retry with the key gets that 500 for 24 hours.
    if let Some(k) = key
        && status != 400
    {
        data.idempotency
            .insert(k, (hash, status, body.clone(), key_now));
    }
    drop(data);
    reply((status, body))
}

/// A page of Stripe's list object over one kind of object, newest first: `limit` (1 to 100,
/// default 10) and equality filters on the named top-level fields (`status`, `customer` …).
fn list(
    em: &Emulator,
    object: &str,
    url: &str,
    q: &HashMap<String, String>,
    filters: &[&str],
) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let data = em.data.lock().expect("data");
    let mut found: Vec<&Value> = data
        .objects
        .values()
        .filter(|o| o["object"] == object)
        .filter(|o| {
            filters.iter().all(|f| {
                q.get(*f)
                    .is_none_or(|want| o[*f].as_str() == Some(want.as_str()))
            })
        })
        .collect();
    // Ids carry a zero-padded sequence number, so within a second they sort by age too.
    found.sort_by(|a, b| {
        (b["created"].as_i64(), b["id"].as_str()).cmp(&(a["created"].as_i64(), a["id"].as_str()))
    });
    // Cursors, as Stripe's: `starting_after` pages towards older objects, `ending_before`
    // towards newer ones; an unknown cursor object is refused.
    let position = |key: &'static str| -> Result<Option<usize>, (&'static str, String)> {
        match q.get(key) {
            None => Ok(None),
            Some(id) => found
                .iter()
                .position(|o| o["id"].as_str() == Some(id.as_str()))
                .map(Some)
                .ok_or_else(|| (key, id.clone())),
        }
    };
    let (after, before) = match (position("starting_after"), position("ending_before")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err((key, id)), _) | (_, Err((key, id))) => {
            return reply(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such {object}: '{id}'"),
                json!({"param": key}),
            ));
        }
    };
    let (has_more, page): (bool, Vec<Value>) = match (after, before) {
        (Some(i), _) => {
            let rest = &found[i + 1..];
            (
                rest.len() > limit,
                rest.iter().take(limit).map(|o| (*o).clone()).collect(),
            )
        }
        (None, Some(i)) => {
            let newer = &found[..i];
            let start = newer.len().saturating_sub(limit);
            (
                start > 0,
                newer[start..].iter().map(|o| (*o).clone()).collect(),
            )
        }
        (None, None) => (
            found.len() > limit,
            found.iter().take(limit).map(|o| (*o).clone()).collect(),
        ),
    };
    reply((
        200,
        json!({ "object": "list", "url": url, "has_more": has_more, "data": page }),
    ))
}

/// `GET /v1/checkout/sessions`.
async fn list_sessions(
    State(em): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    list(
        &em,
        "checkout.session",
        "/v1/checkout/sessions",
        &q,
        &["status", "customer", "payment_intent"],
    )
}

/// Stripe prunes idempotency keys once they are at least this old.
const KEY_LIFETIME_SECS: i64 = 24 * 3600;

/// `POST /_emulator/fail_next` (tests), form `path` (`/v1/refunds` …) and `executed`
/// (`true`: run the request, then answer 500 anyway): the next API request to that path
/// answers 500 `api_error`, saved under its Idempotency-Key like any answer.
async fn fail_next(State(em): State<Emulator>, body: Bytes) -> Response {
    let p: Params = form_urlencoded::parse(&body).into_owned().collect();
    let Some(path) = p.get("path").cloned() else {
        return reply(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: path.",
            json!({"param": "path"}),
        ));
    };
    let executed = p.get("executed").is_some_and(|v| v == "true");
    em.data
        .lock()
        .expect("data")
        .fail_next
        .insert(path.clone(), executed);
    reply((200, json!({"path": path, "executed": executed})))
}

/// `POST /_emulator/clock/advance` (tests), form `seconds`: moves the idempotency keys'
/// clock ahead, so keys older than 24 hours are pruned as Stripe prunes them.
async fn advance_key_clock(State(em): State<Emulator>, body: Bytes) -> Response {
    let p: Params = form_urlencoded::parse(&body).into_owned().collect();
    let seconds = p
        .get("seconds")
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    let mut data = em.data.lock().expect("data");
    data.key_clock_offset += seconds;
    reply((200, json!({"key_clock_offset": data.key_clock_offset})))
}

/// `GET /v1/refunds` (filter: `payment_intent`, `charge`).
async fn list_refunds(
    State(em): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    list(
        &em,
        "refund",
        "/v1/refunds",
        &q,
        &["payment_intent", "charge"],
    )
}

/// `GET /v1/payment_intents`.
async fn list_payment_intents(
    State(em): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    list(
        &em,
        "payment_intent",
        "/v1/payment_intents",
        &q,
        &["customer"],
    )
}

async fn get_object(
    State(em): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    match em.data.lock().expect("data").objects.get(&id) {
        Some(o) => reply((200, o.clone())),
        None => reply(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such object: '{id}'"),
            json!({}),
        )),
    }
}

async fn hosted_page(State(em): State<Emulator>, Path(id): Path<String>) -> Response {
    let Some(s) = em.data.lock().expect("data").objects.get(&id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Html("<h1>No such checkout session</h1>".to_string()),
        )
            .into_response();
    };
    let what = if s["mode"] == "payment" {
        let amount = s["amount_total"].as_i64().unwrap_or(0);
        format!(
            "{} — {}.{:02} {}",
            s["product_name"].as_str().unwrap_or("Purchase"),
            amount / 100,
            amount % 100,
            s["currency"].as_str().unwrap_or("").to_uppercase()
        )
    } else {
        "Save a card for future payments".to_string()
    };
    let button = if s["mode"] == "setup" {
        "Save card"
    } else {
        "Pay"
    };
    let body = if s["status"] == "open" {
        format!(
            r#"<form method="post" action="/checkout/{id}/pay">
  <label>Test card <select name="payment_method">
    <option value="pm_card_visa">4242 4242 4242 4242 (succeeds)</option>
    <option value="pm_card_chargeDeclinedInsufficientFunds">…9995 (insufficient funds later)</option>
    <option value="pm_card_chargeDeclinedExpiredCard">…0069 (expired card later)</option>
    <option value="pm_usBankAccount_success">US bank account (settles later)</option>
    <option value="pm_usBankAccount_fail">US bank account (fails later)</option>
  </select></label>
  <button type="submit" id="pay">{button}</button></form>"#
        )
    } else {
        format!(
            "<p>This session is {}.</p>",
            s["status"].as_str().unwrap_or("")
        )
    };
    Html(format!(
        "<!doctype html><html><head><title>Checkout (emulator)</title></head><body>\
        <h1>Checkout</h1><p>{what}</p>{body}</body></html>"
    ))
    .into_response()
}

async fn pay(
    State(em): State<Emulator>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let pm = form
        .get("payment_method")
        .cloned()
        .unwrap_or_else(|| "pm_card_visa".into());
    match em.complete(&id, &pm) {
        Ok(s) => match s["success_url"].as_str() {
            Some(url) if !url.is_empty() => {
                Redirect::to(&url.replace("{CHECKOUT_SESSION_ID}", &id)).into_response()
            }
            _ => reply((200, s)),
        },
        Err(e) => reply(e),
    }
}

async fn list_events(State(em): State<Emulator>) -> Json<Value> {
    let data = em.data.lock().expect("data");
    let events: Vec<Value> = data
        .events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e["delivered"] = json!(
                data.delivered
                    .get(e["id"].as_str().unwrap_or_default())
                    .copied()
                    .unwrap_or(0)
            );
            e
        })
        .collect();
    Json(json!({ "data": events }))
}

/// Delivers an event again, `times` times at once (duplicate deliveries for tests).
async fn redeliver(
    State(em): State<Emulator>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let times: u32 = q
        .get("times")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
        .min(20);
    let Some(event) = em
        .data
        .lock()
        .expect("data")
        .events
        .iter()
        .find(|e| e["id"] == id.as_str())
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut tasks = Vec::new();
    for _ in 0..times {
        let (em, event) = (em.clone(), event.clone());
        tasks.push(tokio::spawn(async move { em.deliver(event, 1).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
    StatusCode::NO_CONTENT.into_response()
}
