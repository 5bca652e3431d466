//! Purchases: a checkout through the payment processor, its workflow started here (or by the
//! dispatcher from the outbox), and the purchase as the customer sees it.

use std::time::{Duration, Instant};

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use billing::PurchaseState;
use billing::{Credits, Currency};
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

/// How long `POST /v1/purchases` waits for the workflow to create the checkout session.
pub(crate) const CHECKOUT_URL_WAIT: Duration = Duration::from_secs(5);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    #[schema(required)]
    package_id: Option<Uuid>,
    /// The buying user (recorded on the transfers).
    #[schema(required)]
    user: Option<String>,
    /// Where the receipt goes; defaults to `user` when that is an e-mail address.
    email: Option<String>,
    /// What to pay, in minor units: required for a pay-what-you-want package (within its
    /// least and most), refused for a fixed-price one.
    amount_minor: Option<i64>,
}

/// A checkout purchase of a package.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purchase {
    pub id: Uuid,
    pub org_id: Uuid,
    pub state: PurchaseState,
    /// The package as it was when bought.
    pub package: PurchasedPackage,
    /// The buying user.
    pub user: String,
    /// Where the buyer pays; `null` until the checkout session exists.
    pub checkout_url: Option<String>,
    pub checkout_session_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub credited_at: Option<DateTime<Utc>>,
}

/// The package of a purchase, as it was when bought.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchasedPackage {
    pub id: Uuid,
    /// The package's version it bought.
    pub version: u32,
    pub name: String,
    pub price_minor: i64,
    pub currency: Currency,
    pub base_credits: Credits,
    pub bonus_credits: Credits,
}

impl From<&store::Purchase> for Purchase {
    fn from(p: &store::Purchase) -> Self {
        Purchase {
            id: p.id,
            org_id: p.org_id,
            state: p.state,
            package: PurchasedPackage {
                id: p.package.id,
                version: p.package.version,
                name: p.package.name.clone(),
                price_minor: p.package.price.amount_minor,
                currency: p.package.price.currency,
                base_credits: p.package.base_credits,
                bonus_credits: p.package.bonus_credits,
            },
            user: p.buyer.clone(),
            checkout_url: p.checkout_url.clone(),
            checkout_session_id: p.checkout_session_id.clone(),
            payment_intent_id: p.payment_intent_id.clone(),
            expires_at: p.expires_at,
            created_at: p.created_at,
            paid_at: p.paid_at,
            credited_at: p.credited_at,
        }
    }
}

/// `POST /v1/purchases` (org key): records the purchase, starts its workflow, and answers with
/// the checkout URL as soon as the workflow has created the session.
#[utoipa::path(post, path = "/v1/purchases", tag = "purchases",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "The same key again answers with the same purchase")),
    request_body = PurchaseBody,
    responses(
        (status = 201, description = "The purchase with its checkout URL", body = Purchase),
        (status = 202, description = "The purchase; the checkout URL is not ready yet (poll `GET /v1/purchases/{id}`)", body = Purchase),
        (status = 400, description = "`invalid_idempotency_key`"),
        (status = 403, description = "`org_key_required`, `missing_scope`"),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body"),
        (status = 422, description = "`missing_field`, `invalid_field`, `invalid_email`, `unknown_package`, `package_inactive`, `amount_not_allowed` (an amount for a fixed-price package), `amount_out_of_range` (outside a pay-what-you-want package's bounds)"),
        (status = 429, description = "`rate_limited`"),
        (status = 503, description = "`workflow_unavailable`: Temporal did not take the purchase; retry with the same key"),
    ))]
pub async fn create_purchase(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<PurchaseBody>,
) -> Result<(StatusCode, AxumJson<Purchase>), ApiError> {
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
    // A pay-what-you-want purchase buys the package priced at its amount (its snapshot).
    let package = package
        .priced_at(body.amount_minor)
        .map_err(|(field, code, msg)| ApiError::invalid(field, code, msg))?;
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
        )
        .caused_by(format!("purchase {}: {e}", purchase.id)));
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
    Ok((status, AxumJson(Purchase::from(&current))))
}

/// A purchase (`history:read` or `billing:manage`).
#[utoipa::path(get, path = "/v1/purchases/{id}", tag = "purchases",
    params(("id" = Uuid, Path, description = "The purchase")),
    responses(
        (status = 200, description = "The purchase", body = Purchase),
        (status = 403, description = "`missing_scope`"),
        (status = 404, description = "`not_found`: no such purchase (or another org's)"),
    ))]
pub async fn get_purchase(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<AxumJson<Purchase>, ApiError> {
    let p = state.store.purchases().purchase(id).await?;
    caller.authorize_object(
        p.org_id,
        &[Scope::HistoryRead, Scope::BillingManage],
        "purchase",
    )?;
    Ok(AxumJson(Purchase::from(&p)))
}
