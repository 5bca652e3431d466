//! Budgets below the org: a limit per scope (a user, an API key, a model, a label) and period,
//! hard (refuses holds and checks) or soft (alerts). The rules are `billing::budgets`'s.
//! Operators and org keys with `billing:manage` set them; `balance:read` reads them.

use axum::{
    Json as AxumJson,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use billing::{
    Credits,
    budgets::{
        self, ALERT_PERCENT_MAX, ALERTS_MAX, BUDGET_ID_MAX_CHARS, Budget, BudgetScope, Enforcement,
        Period, RECIPIENTS_MAX, Standing, Tz,
    },
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
    extract::{Json, Path},
    ledger::credits_field,
};

/// A budget's terms and standing in its current period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    pub id: String,
    pub scope: BudgetScope,
    pub limit_credits: Credits,
    pub period: Period,
    pub timezone: String,
    pub enforcement: Enforcement,
    pub alert_at_percent: Vec<i32>,
    pub recipients: Vec<String>,
    /// Usage booked in the scope this period.
    pub spent_credits: Credits,
    /// The scope's active holds.
    pub held_credits: Credits,
    /// `limit − spent − held`, never below zero.
    pub remaining_credits: Credits,
    pub period_start: DateTime<Utc>,
    /// When the next period starts (`null` for `total`).
    pub resets_at: Option<DateTime<Utc>>,
}

impl BudgetView {
    pub fn of(s: &Standing) -> BudgetView {
        let b = &s.budget;
        BudgetView {
            id: b.id.clone(),
            scope: b.scope.clone(),
            limit_credits: b.limit,
            period: b.period,
            timezone: b.timezone.name().to_string(),
            enforcement: b.enforcement,
            alert_at_percent: b.alert_at_percent.clone(),
            recipients: b.recipients.clone(),
            spent_credits: s.spent,
            held_credits: s.held,
            remaining_credits: s.remaining(),
            period_start: s.period_start,
            resets_at: s.resets_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// Exactly one of `{"user": …}`, `{"api_key": …}`, `{"model": …}`,
    /// `{"label": {"key": …, "value": …}}`.
    #[schema(required)]
    scope: Option<BudgetScope>,
    /// Zero or more.
    #[schema(value_type = CreditsInput, required)]
    limit_credits: Option<Value>,
    /// `day`, `week` (from Monday), `month` or `total`.
    #[schema(value_type = Period, required)]
    period: Option<String>,
    /// An IANA time zone (default `UTC`): periods start at its local midnight.
    timezone: Option<String>,
    /// `hard` (refuses holds and checks past the limit) or `soft` (alerts only).
    #[schema(value_type = Enforcement, required)]
    enforcement: Option<String>,
    /// Up to 10 percents, 1 to 1000: each alerts once per period when usage reaches it.
    #[serde(default)]
    alert_at_percent: Vec<i32>,
    /// Up to 10 e-mail addresses the alerts go to (the org's billing contacts when empty).
    #[serde(default)]
    recipients: Vec<String>,
}

/// Creates or replaces a budget (operator, or `billing:manage`). Its spend this period is
/// counted from the usage already booked in it; percents already reached do not alert.
#[utoipa::path(put, path = "/v1/orgs/{org}/budgets/{id}", tag = "budgets",
    params(
        ("org" = Uuid, Path, description = "The organization"),
        ("id" = String, Path, description = "The budget's id: 1 to 64 of `A-Z a-z 0-9 _ - .`"),
    ),
    request_body = BudgetBody,
    responses(
        (status = 200, description = "The budget, replaced", body = BudgetView),
        (status = 201, description = "The budget, created", body = BudgetView),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`too_many_budgets`"),
        (status = 422, description = "`missing_field`, `invalid_budget_id`, `invalid_scope`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`, `invalid_period`, `invalid_timezone`, `invalid_enforcement`, `invalid_alerts`, `invalid_email`"),
    ))]
pub async fn put_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, id)): Path<(Uuid, String)>,
    Json(body): Json<BudgetBody>,
) -> Result<Response, ApiError> {
    caller.authorize(org_id, Scope::BillingManage)?;
    check_id(&id)?;
    let scope = body
        .scope
        .ok_or_else(|| ApiError::invalid("scope", "missing_field", "`scope` is required"))?;
    let (_, key, value) = scope.parts();
    for (field, v, required) in [("scope.key", key, false), ("scope", value, true)] {
        if (required || !v.is_empty()) && billing::usage::check_name(field, v, true).is_err() {
            return Err(ApiError::invalid(
                field,
                "invalid_scope",
                "a scope's names are 1 to 255 characters without control characters",
            ));
        }
    }
    if matches!(&scope, BudgetScope::Label { key, .. } if key.is_empty()) {
        return Err(ApiError::invalid(
            "scope.key",
            "invalid_scope",
            "a label scope names its key",
        ));
    }
    let limit = credits_field(body.limit_credits.as_ref(), "limit_credits")?;
    if limit.is_negative() {
        return Err(ApiError::invalid(
            "limit_credits",
            "amount_out_of_range",
            "`limit_credits` must not be negative",
        ));
    }
    let period = body
        .period
        .as_deref()
        .ok_or_else(|| ApiError::invalid("period", "missing_field", "`period` is required"))
        .and_then(|p| {
            Period::parse(p).ok_or_else(|| {
                ApiError::invalid(
                    "period",
                    "invalid_period",
                    "`period` is `day`, `week`, `month` or `total`",
                )
            })
        })?;
    let timezone: Tz = body
        .timezone
        .as_deref()
        .unwrap_or("UTC")
        .parse()
        .map_err(|_| {
            ApiError::invalid(
                "timezone",
                "invalid_timezone",
                "`timezone` is an IANA time zone such as `Europe/Berlin`",
            )
        })?;
    let enforcement = body
        .enforcement
        .as_deref()
        .ok_or_else(|| {
            ApiError::invalid("enforcement", "missing_field", "`enforcement` is required")
        })
        .and_then(|e| {
            Enforcement::parse(e).ok_or_else(|| {
                ApiError::invalid(
                    "enforcement",
                    "invalid_enforcement",
                    "`enforcement` is `hard` or `soft`",
                )
            })
        })?;
    let mut alerts = body.alert_at_percent;
    alerts.sort_unstable();
    alerts.dedup();
    if alerts.len() > ALERTS_MAX || alerts.iter().any(|p| !(1..=ALERT_PERCENT_MAX).contains(p)) {
        return Err(ApiError::invalid(
            "alert_at_percent",
            "invalid_alerts",
            format!(
                "`alert_at_percent` holds up to {ALERTS_MAX} percents, 1 to {ALERT_PERCENT_MAX}"
            ),
        ));
    }
    if body.recipients.len() > RECIPIENTS_MAX {
        return Err(ApiError::invalid(
            "recipients",
            "invalid_email",
            format!("at most {RECIPIENTS_MAX} recipients"),
        ));
    }
    for r in &body.recipients {
        if billing::email::parse_address(r).is_err() {
            return Err(ApiError::invalid(
                "recipients",
                "invalid_email",
                format!(
                    "`{}` is not an e-mail address",
                    r.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    state.store.orgs().get_org(org_id).await?;
    let budget = Budget {
        id,
        scope,
        limit,
        period,
        timezone,
        enforcement,
        alert_at_percent: alerts,
        recipients: body.recipients,
    };
    let (standing, created) =
        state
            .store
            .budgets()
            .put(org_id, &budget)
            .await
            .map_err(|e| match e {
                store::StoreError::TooMany(_) => ApiError::new(
                    StatusCode::CONFLICT,
                    "too_many_budgets",
                    format!(
                        "an org has at most {} budgets",
                        budgets::BUDGETS_PER_ORG_MAX
                    ),
                ),
                e => e.into(),
            })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, AxumJson(BudgetView::of(&standing))).into_response())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= BUDGET_ID_MAX_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "id",
            "invalid_budget_id",
            "a budget's id is 1 to 64 of `A-Z a-z 0-9 _ - .`",
        ))
    }
}

/// The org's budgets (`balance:read`), each with its spend, holds and reset this period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetList {
    pub data: Vec<BudgetView>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/budgets", tag = "budgets",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The org's budgets, by id", body = BudgetList),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn list_budgets(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<BudgetList>, ApiError> {
    caller.authorize_any(org_id, &[Scope::BalanceRead, Scope::BillingManage])?;
    state.store.orgs().get_org(org_id).await?;
    let standings = state.store.budgets().standings(org_id).await?;
    Ok(AxumJson(BudgetList {
        data: standings.iter().map(BudgetView::of).collect(),
    }))
}

/// Removes a budget (operator, or `billing:manage`).
#[utoipa::path(delete, path = "/v1/orgs/{org}/budgets/{id}", tag = "budgets",
    params(
        ("org" = Uuid, Path, description = "The organization"),
        ("id" = String, Path, description = "The budget's id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`, `budget_not_found`"),
    ))]
pub async fn delete_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, id)): Path<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    caller.authorize(org_id, Scope::BillingManage)?;
    state.store.orgs().get_org(org_id).await?;
    if state.store.budgets().delete(org_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("budget_not_found", "no such budget"))
    }
}
