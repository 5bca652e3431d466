//! Refunds of purchases and topup charges: requested here or by the CLI (`start_refund`, one
//! use case for both), credits taken back at once, the processor asked by the refund's workflow.

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::Deserialize;
use serde_json::{Value, json};
use store::Scope;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
};

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
