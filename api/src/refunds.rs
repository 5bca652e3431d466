//! Refunds of purchases and topup charges: requested here or by the CLI (one use case for both,
//! [`crate::usecases::start_refund`]), credits taken back at once, the processor asked by the refund's workflow.

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use billing::{Credits, RefundState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use store::Scope;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// How much of the payment to refund, in its currency's minor units; at most what is left.
    #[schema(required, minimum = 1)]
    pub amount_minor: Option<i64>,
    /// Why, 1 to 1000 characters.
    #[schema(required)]
    pub reason: Option<String>,
}

/// A refund of a purchase or an auto-topup charge, and the credits it takes back.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Refund {
    pub id: Uuid,
    /// The purchase refunded, or `null` for a topup charge.
    pub purchase_id: Option<Uuid>,
    pub topup_id: Option<Uuid>,
    pub org_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    /// Paid credits taken back, in proportion to the money returned.
    pub credits_reversed: Credits,
    /// Bonus credits taken back with them.
    pub bonus_credits_reversed: Credits,
    pub reason: String,
    pub requested_by: String,
    pub state: RefundState,
    pub stripe_refund_id: Option<String>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
}

impl From<&store::Refund> for Refund {
    fn from(r: &store::Refund) -> Self {
        Refund {
            id: r.id,
            purchase_id: r.purchase_id,
            topup_id: r.topup_id,
            org_id: r.org_id,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            credits_reversed: r.credits,
            bonus_credits_reversed: r.bonus_credits,
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            state: r.state,
            stripe_refund_id: r.stripe_refund_id.clone(),
            detail: r.detail.clone(),
            created_at: r.created_at,
        }
    }
}

/// A payment's refunds, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefundList {
    pub data: Vec<Refund>,
}

/// `POST /v1/purchases/{id}/refunds` (operator): checks the refund before any money moves
/// (never more than what is left of the payment, never a balance below zero), then starts
/// `refund-{id}`: the processor's refund, then the proportional reversal of credits and bonus.
#[utoipa::path(post, path = "/v1/purchases/{id}/refunds", tag = "refunds",
    params(
        ("id" = Uuid, Path, description = "The purchase"),
        ("Idempotency-Key" = String, Header, description = "1 to 255 printable ASCII characters"),
    ),
    request_body = RefundBody,
    responses(
        (status = 202, description = "The refund, started (or the first one, on a retry with the same key)", body = Refund),
        (status = 400, description = "`missing_idempotency_key`, `invalid_idempotency_key`"),
        (status = 403, description = "`operator_only`"),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body; `refund_exceeds_unspent`: more than the unspent paid credits are worth (with `refundable_minor`, `refundable_credits`)"),
        (status = 422, description = "`missing_field`, `amount_not_positive`, `refund_not_allowed`: more than is left, or the payment is not refundable"),
        (status = 404, description = "`not_found`: no such purchase"),
    ))]
pub async fn create_refund(
    State(state): State<AppState>,
    caller: Caller,
    Path(purchase_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<RefundBody>,
) -> Result<(StatusCode, AxumJson<Refund>), ApiError> {
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
#[utoipa::path(post, path = "/v1/topups/{id}/refunds", tag = "refunds",
    params(
        ("id" = Uuid, Path, description = "The auto-topup"),
        ("Idempotency-Key" = String, Header, description = "1 to 255 printable ASCII characters"),
    ),
    request_body = RefundBody,
    responses(
        (status = 202, description = "The refund, started (or the first one, on a retry with the same key)", body = Refund),
        (status = 400, description = "`missing_idempotency_key`, `invalid_idempotency_key`"),
        (status = 403, description = "`operator_only`"),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body; `refund_exceeds_unspent`: more than the unspent paid credits are worth (with `refundable_minor`, `refundable_credits`)"),
        (status = 422, description = "`missing_field`, `amount_not_positive`, `refund_not_allowed`: more than is left, or the payment is not refundable"),
        (status = 404, description = "`not_found`: no such topup"),
    ))]
pub async fn create_topup_refund(
    State(state): State<AppState>,
    caller: Caller,
    Path(topup_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<RefundBody>,
) -> Result<(StatusCode, AxumJson<Refund>), ApiError> {
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
) -> Result<(StatusCode, AxumJson<Refund>), ApiError> {
    caller.require_operator()?;
    let key = crate::ledger::idempotency_key(&headers)?;
    let refund = crate::usecases::start_refund(
        &state.store,
        &state.temporal,
        &state.task_queue,
        payment,
        body,
        &caller.actor(),
        &key,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, AxumJson(Refund::from(&refund))))
}

/// A purchase's refunds (`history:read`).
#[utoipa::path(get, path = "/v1/purchases/{id}/refunds", tag = "refunds",
    params(("id" = Uuid, Path, description = "The purchase")),
    responses(
        (status = 200, description = "The refunds", body = RefundList),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`not_found`: no such purchase (or another org's)"),
    ))]
pub async fn list_refunds(
    State(state): State<AppState>,
    caller: Caller,
    Path(purchase_id): Path<Uuid>,
) -> Result<AxumJson<RefundList>, ApiError> {
    let p = state.store.purchases().purchase(purchase_id).await?;
    caller.authorize_object(p.org_id, &[Scope::HistoryRead], "purchase")?;
    let refunds = state
        .store
        .refunds()
        .refunds_of(store::RefundOf::Purchase(purchase_id))
        .await?;
    Ok(AxumJson(RefundList {
        data: refunds.iter().map(Refund::from).collect(),
    }))
}

/// `GET /v1/topups/{id}/refunds`: the refunds of an auto-topup charge.
#[utoipa::path(get, path = "/v1/topups/{id}/refunds", tag = "refunds",
    params(("id" = Uuid, Path, description = "The auto-topup")),
    responses(
        (status = 200, description = "The refunds", body = RefundList),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`not_found`: no such topup (or another org's)"),
    ))]
pub async fn list_topup_refunds(
    State(state): State<AppState>,
    caller: Caller,
    Path(topup_id): Path<Uuid>,
) -> Result<AxumJson<RefundList>, ApiError> {
    let org = state.store.topups().topup_org(topup_id).await?;
    caller.authorize_object(org, &[Scope::HistoryRead], "topup")?;
    let refunds = state
        .store
        .refunds()
        .refunds_of(store::RefundOf::Topup(topup_id))
        .await?;
    Ok(AxumJson(RefundList {
        data: refunds.iter().map(Refund::from).collect(),
    }))
}
