//! Credit packages, purchases (checkout through Stripe), and Stripe's webhook.

use std::time::{Duration, Instant};

use axum::{
    Json as AxumJson,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use billing::{
    Credits, Currency, Money, PurchaseState,
    packages::{self, Package},
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use store::{Purchase, Scope};
use temporalio_client::WorkflowStartOptions;
use temporalio_common::search_attributes::SearchAttributes;
use uuid::Uuid;
use workflows::payment_method::{
    PaymentMethodSetupWorkflow, SetupInput, workflow_id as setup_workflow_id,
};

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
    ledger::credits_field,
};

/// How long `POST /v1/purchases` waits for the workflow to create the checkout session.
const CHECKOUT_URL_WAIT: Duration = Duration::from_secs(5);
/// How old a webhook's signature timestamp may be (Stripe's own tolerance).
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

fn package_json(p: &Package, reference: Option<&Package>) -> Result<Value, ApiError> {
    let major = rust_decimal::Decimal::new(p.price.amount_minor, p.price.currency.minor_digits());
    Ok(json!({
        "id": p.id,
        "name": p.name,
        "price_minor": p.price.amount_minor,
        "price": major.to_string(),
        "currency": p.price.currency,
        "base_credits": p.base_credits,
        "bonus_credits": p.bonus_credits,
        "effective_credits": p.effective_credits()?,
        "cost_per_credit": p.cost_per_credit()?.to_string(),
        "saving_percent": match reference {
            Some(r) if r.price.currency == p.price.currency => Some(p.saving_percent(r)?.to_string()),
            _ => None,
        },
        "active": p.active,
    }))
}

impl From<billing::BillingError> for ApiError {
    fn from(e: billing::BillingError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
    }
}

/// `GET /v1/packages`: active packages, cheapest first, each with its effective credits, cost
/// per credit and saving against the smallest package (fewest effective credits) of its
/// currency.
pub async fn list_packages(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<AxumJson<Value>, ApiError> {
    let all = state.store.packages().packages(true).await?;
    let mut out = Vec::with_capacity(all.len());
    for p in &all {
        let smallest = all
            .iter()
            .filter(|o| o.price.currency == p.price.currency)
            .min_by_key(|o| o.effective_credits().unwrap_or_default());
        out.push(package_json(p, smallest)?);
    }
    Ok(AxumJson(json!({ "data": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageBody {
    name: String,
    price_minor: i64,
    currency: String,
    base_credits: Value,
    #[serde(default)]
    bonus_credits: Option<Value>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

fn package_from(id: Uuid, b: PackageBody) -> Result<Package, ApiError> {
    let currency: Currency = b
        .currency
        .parse()
        .map_err(|e| ApiError::billing("currency", e))?;
    let base: Credits = credits_field(Some(&b.base_credits), "base_credits")?;
    let bonus: Credits = match &b.bonus_credits {
        Some(v) => credits_field(Some(v), "bonus_credits")?,
        None => Credits::ZERO,
    };
    packages::check_package(&b.name, b.price_minor, base, bonus)
        .map_err(|(field, msg)| ApiError::invalid(field, "invalid_package", msg))?;
    Ok(Package {
        id,
        name: b.name.trim().to_string(),
        price: Money::new(b.price_minor, currency),
        base_credits: base,
        bonus_credits: bonus,
        active: b.active,
    })
}

/// `POST /v1/packages` (operator).
pub async fn create_package(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PackageBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.require_operator()?;
    let p = state
        .store
        .packages()
        .put_package(&package_from(Uuid::now_v7(), body)?)
        .await?;
    Ok((StatusCode::CREATED, AxumJson(package_json(&p, None)?)))
}

/// `PUT /v1/packages/{id}` (operator): change or deactivate; purchases keep their snapshot.
pub async fn put_package(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<PackageBody>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.require_operator()?;
    state.store.packages().package(id).await?;
    let p = state
        .store
        .packages()
        .put_package(&package_from(id, body)?)
        .await?;
    Ok(AxumJson(package_json(&p, None)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    package_id: Option<Uuid>,
    /// The buying user (recorded on the transfers).
    user: Option<String>,
    /// Where the receipt goes; defaults to `user` when that is an e-mail address.
    email: Option<String>,
}

fn purchase_json(p: &Purchase) -> Value {
    json!({
        "id": p.id,
        "org_id": p.org_id,
        "state": p.state,
        "package": {
            "id": p.package.id, "name": p.package.name,
            "price_minor": p.package.price.amount_minor, "currency": p.package.price.currency,
            "base_credits": p.package.base_credits, "bonus_credits": p.package.bonus_credits,
        },
        "user": p.buyer,
        "checkout_url": p.checkout_url,
        "checkout_session_id": p.checkout_session_id,
        "payment_intent_id": p.payment_intent_id,
        "expires_at": p.expires_at,
        "created_at": p.created_at,
        "paid_at": p.paid_at,
        "credited_at": p.credited_at,
    })
}

/// `POST /v1/purchases` (org key): records the purchase, starts its workflow, and answers with
/// the checkout URL as soon as the workflow has created the session.
pub async fn create_purchase(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<PurchaseBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    // Optional here (nothing is charged until the buyer pays), but a retried request with the
    // same key gets the same purchase instead of a second checkout.
    let idempotency_key = match headers.get("idempotency-key") {
        Some(_) => Some(crate::ledger::idempotency_key(&headers)?),
        None => None,
    };
    let Caller::Org(principal) = &caller else {
        return Err(ApiError::forbidden(
            "org_key_required",
            "purchases are made with the organization's own API key",
        ));
    };
    caller.require_scope(Scope::BillingManage)?;
    state
        .take_rate(
            principal.org_id,
            "purchase",
            state.limits.purchases_per_minute,
        )
        .await?;
    let package_id = body.package_id.ok_or_else(|| {
        ApiError::invalid("package_id", "missing_field", "`package_id` is required")
    })?;
    let user = body.user.map(|u| u.trim().to_string()).unwrap_or_default();
    billing::usage::check_name("user", &user, true)
        .map_err(|r| ApiError::invalid("user", r.code, r.message))?;
    let email = body
        .email
        .or_else(|| user.contains('@').then(|| user.clone()));
    if let Some(e) = &email
        && !billing::email::is_valid(e)
    {
        return Err(ApiError::invalid(
            "email",
            "invalid_email",
            "`email` is not an e-mail address",
        ));
    }
    let package = match state.store.packages().package(package_id).await {
        Ok(p) if p.active => p,
        Ok(_) => {
            return Err(ApiError::invalid(
                "package_id",
                "package_inactive",
                "this package is no longer sold",
            ));
        }
        Err(store::StoreError::NotFound(_)) => {
            return Err(ApiError::invalid(
                "package_id",
                "unknown_package",
                "no such package",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(state.checkout_expiry)
            .unwrap_or(chrono::Duration::minutes(30));
    let (purchase, _) = state
        .store
        .purchases()
        .create_purchase(
            principal.org_id,
            &package,
            &user,
            email.as_deref(),
            expires_at,
            idempotency_key.as_deref(),
            Some(state.checkout_expiry.as_secs()),
        )
        .await?;
    // The workflow is started here for a fast answer; the outbox row written with the purchase
    // starts it otherwise. A request that cannot reach Temporal within a second is answered
    // 503 at once. With an Idempotency-Key its retry finds this purchase (the dispatcher starts
    // its workflow when Temporal is back); without one nobody could find it again, so it ends
    // `failed` now instead of opening a checkout no one will see.
    if let Err(e) = crate::starts::start_purchase(
        &state.temporal,
        &state.task_queue,
        purchase.id,
        principal.org_id,
        state.checkout_expiry.as_secs(),
        crate::starts::REQUEST_LIMIT,
    )
    .await
    {
        tracing::error!(error = %e, purchase = %purchase.id, "could not start the purchase workflow");
        if idempotency_key.is_none() {
            state
                .store
                .purchases()
                .end_purchase(purchase.id, PurchaseState::Failed)
                .await?;
        }
        return Err(ApiError::unavailable(
            "workflow_unavailable",
            "the purchase could not be started now; try again (with the same Idempotency-Key to get this purchase)",
            2,
        ));
    }
    // The session is created by the workflow's first activity: wait for its URL, bounded. A
    // purchase that ended without one (`failed`: the processor refused the session) is final,
    // so it is answered at once, with that state.
    let start = Instant::now();
    let mut current = purchase;
    while current.checkout_url.is_none()
        && current.state == PurchaseState::AwaitingPayment
        && start.elapsed() < CHECKOUT_URL_WAIT
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        current = state.store.purchases().purchase(current.id).await?;
    }
    let status =
        if current.checkout_url.is_some() || current.state != PurchaseState::AwaitingPayment {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        };
    Ok((status, AxumJson(purchase_json(&current))))
}

pub async fn get_purchase(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    let p = state.store.purchases().purchase(id).await?;
    caller.authorize_object(
        p.org_id,
        &[Scope::HistoryRead, Scope::BillingManage],
        "purchase",
    )?;
    Ok(AxumJson(purchase_json(&p)))
}

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
pub fn parse_webhook(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Value, ApiError> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_signature", "missing Stripe-Signature"))?;
    verify_signature(secret, signature, body, now)
        .map_err(|m| ApiError::bad_request("invalid_signature", m))?;
    let event: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", e.to_string()))?;
    if !(event["id"].is_string() && event["type"].is_string()) {
        return Err(ApiError::bad_request(
            "invalid_event",
            "an event is an object with an id and a type",
        ));
    }
    if has_nul(&event) {
        return Err(ApiError::bad_request(
            "invalid_event",
            "the event holds a NUL character",
        ));
    }
    Ok(event)
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
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<AxumJson<Value>, ApiError> {
    let event = parse_webhook(
        &state.stripe_webhook_secret,
        &headers,
        &body,
        chrono::Utc::now().timestamp(),
    )?;
    let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return Err(ApiError::bad_request(
            "invalid_event",
            "an event has an id and a type",
        ));
    };
    // Stored, then answered: the worker's dispatcher hands it to the workflow it concerns, so
    // a Temporal outage delays what it causes and never loses it. A second delivery (or a
    // replay of a captured event) finds its id stored and changes nothing.
    let fresh = state
        .store
        .inbox()
        .receive_stripe_event(id, kind, &event)
        .await?;
    if !fresh {
        return Ok(AxumJson(json!({ "received": true, "duplicate": true })));
    }
    Ok(AxumJson(json!({ "received": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupBody {
    /// Who consents to off-session charges on the saved card.
    user: Option<String>,
}

/// `POST /v1/orgs/{org}/payment-method/setup`: a setup-mode Checkout Session where a person
/// saves a card for auto-topup; completing it records the card with their consent.
pub async fn start_payment_method_setup(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<SetupBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.authorize(org_id, Scope::BillingManage)?;
    let user = body.user.map(|u| u.trim().to_string()).unwrap_or_default();
    billing::usage::check_name("user", &user, true)
        .map_err(|r| ApiError::invalid("user", r.code, r.message))?;
    state.store.orgs().get_org(org_id).await?;
    state
        .take_rate(org_id, "card setup", state.limits.setups_per_minute)
        .await?;
    let setup_id = Uuid::now_v7().to_string();
    let input = SetupInput {
        setup_id: setup_id.clone(),
        org_id,
        user,
        expires_after_secs: state.checkout_expiry.as_secs().max(1),
    };
    let options = WorkflowStartOptions::new(state.task_queue.clone(), setup_workflow_id(&setup_id))
        .search_attributes(SearchAttributes::new([
            workflows::ORG_ID.value_set(org_id.to_string())
        ]))
        .build();
    let handle = crate::starts::bounded(crate::starts::REQUEST_LIMIT, async {
        let handle = state
            .temporal
            .start_workflow(PaymentMethodSetupWorkflow::run, input, options)
            .await;
        crate::metrics::record_workflow_start("payment_method_setup", &handle);
        handle
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "could not start the payment method setup");
        ApiError::unavailable(
            "workflow_unavailable",
            "the card setup could not be started now; try again",
            2,
        )
    })?;
    let start = Instant::now();
    let mut url = None;
    while url.is_none() && start.elapsed() < CHECKOUT_URL_WAIT {
        url = crate::starts::bounded(
            crate::starts::REQUEST_LIMIT,
            handle.query(
                PaymentMethodSetupWorkflow::checkout_url,
                (),
                Default::default(),
            ),
        )
        .await
        .ok()
        .flatten();
        if url.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let status = if url.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        AxumJson(json!({ "setup_id": setup_id, "checkout_url": url })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// How much of the payment to refund, in its currency's minor units.
    pub amount_minor: Option<i64>,
    pub reason: Option<String>,
}

pub fn refund_json(r: &store::Refund) -> Value {
    json!({
        "id": r.id,
        "purchase_id": r.purchase_id,
        "topup_id": r.topup_id,
        "org_id": r.org_id,
        "amount_minor": r.amount_minor,
        "currency": r.currency,
        "credits_reversed": r.credits,
        "bonus_credits_reversed": r.bonus_credits,
        "reason": r.reason,
        "requested_by": r.requested_by,
        "state": r.state,
        "stripe_refund_id": r.stripe_refund_id,
        "detail": r.detail,
        "created_at": r.created_at,
    })
}

/// `POST /v1/purchases/{id}/refunds` (operator): checks the refund before any money moves
/// (never more than what is left of the payment, never a balance below zero), then starts
/// `refund-{id}`: the processor's refund, then the proportional reversal of credits and bonus.
pub async fn create_refund(
    State(state): State<AppState>,
    caller: Caller,
    Path(purchase_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<RefundBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    refund_request(
        state,
        caller,
        store::RefundOf::Purchase(purchase_id),
        headers,
        body,
    )
    .await
}

/// `POST /v1/topups/{id}/refunds` (operator): as for a purchase, of an auto-topup charge.
pub async fn create_topup_refund(
    State(state): State<AppState>,
    caller: Caller,
    Path(topup_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<RefundBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    refund_request(
        state,
        caller,
        store::RefundOf::Topup(topup_id),
        headers,
        body,
    )
    .await
}

async fn refund_request(
    state: AppState,
    caller: Caller,
    payment: store::RefundOf,
    headers: HeaderMap,
    body: RefundBody,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.require_operator()?;
    let key = crate::ledger::idempotency_key(&headers)?;
    let refund = start_refund(
        &state.store,
        &state.temporal,
        &state.task_queue,
        payment,
        body,
        &caller.actor(),
        &key,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, AxumJson(refund_json(&refund))))
}

/// Records an operator's refund request, checked before any money moves (it may not take the
/// balance below zero nor exceed what is left of the payment), and starts `refund-{id}`. The
/// same `idempotency_key` again returns the same refund and starts nothing new. Shared by the
/// API and the operator CLI.
pub async fn start_refund(
    store: &store::Store,
    temporal: &temporalio_client::Client,
    task_queue: &str,
    payment: store::RefundOf,
    body: RefundBody,
    actor: &str,
    key: &str,
) -> Result<store::Refund, ApiError> {
    let amount = body.amount_minor.ok_or_else(|| {
        ApiError::invalid(
            "amount_minor",
            "missing_field",
            "`amount_minor` is required",
        )
    })?;
    if amount <= 0 {
        return Err(ApiError::invalid(
            "amount_minor",
            "amount_not_positive",
            "`amount_minor` must be greater than zero",
        ));
    }
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    if reason.is_empty() || reason.chars().count() > 1000 {
        return Err(ApiError::invalid(
            "reason",
            "missing_field",
            "`reason` is required (at most 1,000 characters)",
        ));
    }
    let refund = store
        .refunds()
        .request_refund(payment, amount, &reason, actor, key)
        .await
        .map_err(|e| match e {
            e @ (store::StoreError::PaymentNotRefundable { .. }
            | store::StoreError::RefundExceedsPayment { .. }) => {
                ApiError::invalid("amount_minor", "refund_not_allowed", e.to_string())
            }
            other => other.into(),
        })?;
    // The refund is accepted and its credits reserved; its workflow is started here, or by
    // the dispatcher from the outbox row written with it when Temporal cannot be reached in
    // time. Either way the answer is the accepted refund.
    if let Err(e) = crate::starts::start_refund(
        temporal,
        task_queue,
        refund.id,
        refund.org_id,
        crate::starts::REQUEST_LIMIT,
    )
    .await
    {
        tracing::warn!(error = %e, refund = %refund.id, "refund workflow not started yet; the dispatcher will");
    }
    Ok(refund)
}

pub async fn list_refunds(
    State(state): State<AppState>,
    caller: Caller,
    Path(purchase_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    let p = state.store.purchases().purchase(purchase_id).await?;
    caller.authorize_object(p.org_id, &[Scope::HistoryRead], "purchase")?;
    let refunds = state
        .store
        .refunds()
        .refunds_of(store::RefundOf::Purchase(purchase_id))
        .await?;
    Ok(AxumJson(
        json!({ "data": refunds.iter().map(refund_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /v1/topups/{id}/refunds`: the refunds of an auto-topup charge.
pub async fn list_topup_refunds(
    State(state): State<AppState>,
    caller: Caller,
    Path(topup_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    let org = state.store.topups().topup_org(topup_id).await?;
    caller.authorize_object(org, &[Scope::HistoryRead], "topup")?;
    let refunds = state
        .store
        .refunds()
        .refunds_of(store::RefundOf::Topup(topup_id))
        .await?;
    Ok(AxumJson(
        json!({ "data": refunds.iter().map(refund_json).collect::<Vec<_>>() }),
    ))
}
