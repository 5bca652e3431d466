//! `POST /v1/check`: may this work run, and how much may it spend? The answer a hold would
//! get (`overage: reject`), without writing anything: the org's available credits, then every
//! hard budget whose scope matches, all at once.
//!
//! Freshness: the answer comes from what the usage writer last committed for the org
//! (`store::positions`: dropped by any booking in this process, ended by the org's next expiry,
//! at most 250 ms old against other processes' bookings), else from Postgres's committed state;
//! `as_of` is the instant it is true at and `lag_ms` its age. A hold in flight when the check
//! answers is not in it: only a hold decides.

use std::collections::BTreeMap;

use axum::{Json as AxumJson, extract::State};
use billing::{
    Credits,
    budgets::{BudgetScope, Enforcement},
    holds::{self, Overage, Refusal},
    openapi::CreditsInput,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::Scope;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::Json,
    holds::{BlockingBudget, Estimate, dimensions},
    ledger::credits_field,
    metrics,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// The organization; an org key's own when absent.
    org: Option<Uuid>,
    /// What the work would cost; or give `estimate`.
    #[schema(value_type = Option<CreditsInput>)]
    amount_credits: Option<Value>,
    /// Rated with the price version in force; or give `amount_credits`.
    estimate: Option<Estimate>,
    #[schema(max_length = 255)]
    user: Option<String>,
    #[schema(max_length = 255)]
    api_key: Option<String>,
    /// The model (an estimate's, when absent).
    #[schema(max_length = 255)]
    model: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckReason {
    Ok,
    InsufficientCredits,
    BudgetExhausted,
}

/// What is left of one budget whose scope matches.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetRemaining {
    pub id: String,
    pub scope: BudgetScope,
    pub enforcement: Enforcement,
    pub remaining_credits: Credits,
    pub resets_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    pub allowed: bool,
    pub reason: CheckReason,
    pub amount_credits: Credits,
    pub available_credits: Credits,
    pub held_credits: Credits,
    /// Every budget whose scope matches, by id.
    pub remaining_by_budget: Vec<BudgetRemaining>,
    /// The hard budget that refuses it, when one does.
    pub blocking_budget: Option<BlockingBudget>,
    /// The instant the answer is true at.
    pub as_of: DateTime<Utc>,
    /// How old `as_of` was when the answer left.
    pub lag_ms: i64,
}

/// Whether work of this cost may run now (`balance:read` or `usage:write`), as a hold with
/// `overage: reject` would be decided; writes nothing.
#[utoipa::path(post, path = "/v1/check", tag = "holds",
    request_body = CheckBody,
    responses(
        (status = 200, description = "The answer (`allowed: false` is an answer, not an error)", body = CheckResult),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`missing_field`, `amount_or_estimate`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`, `unknown_model`, `invalid_field`, `invalid_labels`, `field_too_long`, `invalid_characters`"),
    ))]
pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CheckBody>,
) -> Result<AxumJson<CheckResult>, ApiError> {
    let _timer = metrics::CHECK_SECONDS.start_timer();
    let org_id = match (body.org, &caller) {
        (Some(o), _) => o,
        (None, Caller::Org(p)) => p.org_id,
        (None, Caller::Operator { .. }) => {
            return Err(ApiError::invalid(
                "org",
                "missing_field",
                "`org` is required with an operator key",
            ));
        }
    };
    caller.authorize_any(org_id, &[Scope::BalanceRead, Scope::UsageWrite])?;
    let mut dims = dimensions(body.user, body.api_key, body.model, body.labels)?;
    let amount = match (&body.amount_credits, &body.estimate) {
        (Some(a), None) => credits_field(Some(a), "amount_credits")?,
        (None, Some(e)) => {
            let (catalog, rules) = crate::usage::rating_now(&state);
            // As a hold does: the estimate's model is the one its budgets see.
            dims.model = Some(e.model.clone());
            crate::holds::rate_estimate(&catalog, rules.now, e)?.0
        }
        _ => {
            return Err(ApiError::invalid(
                "amount_credits",
                "amount_or_estimate",
                "give exactly one of `amount_credits` and `estimate`",
            ));
        }
    };
    if amount.is_negative() {
        return Err(ApiError::invalid(
            "amount_credits",
            "amount_out_of_range",
            "`amount_credits` must not be negative",
        ));
    }
    let p = state.store.holds().position(org_id).await?;
    let matching: Vec<_> = p
        .budgets
        .iter()
        .filter(|s| s.budget.scope.matches(&dims))
        .collect();
    let room = billing::budgets::hard_room(&p.budgets, &dims);
    let decision = holds::decide(amount, Overage::Reject, p.available, Credits::ZERO, room);
    let (allowed, reason, blocking) = match &decision {
        Ok(_) => (true, CheckReason::Ok, None),
        Err(Refusal::InsufficientCredits { .. }) => {
            metrics::HOLD_REFUSALS
                .with_label_values(&["insufficient_credits", ""])
                .inc();
            (false, CheckReason::InsufficientCredits, None)
        }
        Err(Refusal::BudgetExhausted { budget_id }) => {
            let b = matching.iter().find(|s| &s.budget.id == budget_id);
            let scope = b.map_or("", |b| b.budget.scope.parts().0);
            metrics::HOLD_REFUSALS
                .with_label_values(&["budget_exhausted", scope])
                .inc();
            (
                false,
                CheckReason::BudgetExhausted,
                b.map(|s| BlockingBudget::of(s)),
            )
        }
    };
    let now = state.store.now();
    Ok(AxumJson(CheckResult {
        allowed,
        reason,
        amount_credits: amount,
        available_credits: p.available,
        held_credits: p.held,
        remaining_by_budget: matching
            .iter()
            .map(|s| BudgetRemaining {
                id: s.budget.id.clone(),
                scope: s.budget.scope.clone(),
                enforcement: s.budget.enforcement,
                remaining_credits: s.remaining(),
                resets_at: s.resets_at,
            })
            .collect(),
        blocking_budget: blocking,
        as_of: p.as_of,
        lag_ms: (now - p.as_of).num_milliseconds().max(0),
    }))
}
