//! Saving a payment method for auto-topup: a setup checkout, its workflow started here.

use std::time::{Duration, Instant};

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use store::Scope;
use temporalio_client::WorkflowStartOptions;
use temporalio_common::search_attributes::SearchAttributes;
use utoipa::ToSchema;
use uuid::Uuid;
use workflows::payment_method::{
    PaymentMethodSetupWorkflow, SetupInput, workflow_id as setup_workflow_id,
};

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
};

/// A card setup started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Setup {
    pub setup_id: String,
    /// Where the person saves the card; `null` if not ready within a few seconds.
    pub checkout_url: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupBody {
    /// Who consents to off-session charges on the saved card.
    #[schema(required)]
    user: Option<String>,
}

/// `POST /v1/orgs/{org}/payment-method/setup`: a setup-mode Checkout Session where a person
/// saves a card for auto-topup; completing it records the card with their consent.
#[utoipa::path(post, path = "/v1/orgs/{org}/payment-method/setup", tag = "billing",
    params(("org" = Uuid, Path, description = "The organization")),
    request_body = SetupBody,
    responses(
        (status = 201, description = "The setup with its checkout URL", body = Setup),
        (status = 202, description = "The setup; its checkout URL is not ready yet", body = Setup),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`missing_field`, `invalid_field`"),
        (status = 429, description = "`rate_limited`"),
        (status = 503, description = "`workflow_unavailable`"),
    ))]
pub async fn start_payment_method_setup(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<SetupBody>,
) -> Result<(StatusCode, AxumJson<Setup>), ApiError> {
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
        ApiError::unavailable(
            "workflow_unavailable",
            "the card setup could not be started now; try again",
            2,
        )
        .caused_by(e)
    })?;
    let start = Instant::now();
    let mut url = None;
    while url.is_none() && start.elapsed() < crate::purchases::CHECKOUT_URL_WAIT {
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
        AxumJson(Setup {
            setup_id,
            checkout_url: url,
        }),
    ))
}
