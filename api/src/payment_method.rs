//! Saving a payment method for auto-topup: a setup checkout, its workflow started here.

use std::time::{Duration, Instant};

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use store::Scope;
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
};

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
        AxumJson(json!({ "setup_id": setup_id, "checkout_url": url })),
    ))
}
