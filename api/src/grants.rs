//! Credit grants: what an org's balance is made of (every purchase, bonus, topup, promotion and
//! adjustment is one grant, consumed in the burn-down order), and operators' promotional
//! grants with priority, expiry and a restriction to some usage.

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use billing::{
    Credits, GrantCategory, GrantSource,
    grants::{AppliesTo, PRIORITY_DEFAULT, PRIORITY_MAX},
    openapi::CreditsInput,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{GrantQuery, GrantState, NewPromo, Scope};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path, Query},
    ledger::{credits_field, idempotency_key, page_cursor, page_limit},
};

/// A block of credits: where it came from, what is left, and how it is consumed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub org_id: Uuid,
    pub source: GrantSource,
    pub category: GrantCategory,
    pub purchase_id: Option<Uuid>,
    pub topup_id: Option<Uuid>,
    /// A bonus points at its purchase's (or topup's) grant.
    pub parent_grant_id: Option<Uuid>,
    pub amount_credits: Credits,
    /// `amount − consumed − expired − refunded`; 0 once expired.
    pub remaining_credits: Credits,
    pub consumed_credits: Credits,
    pub expired_credits: Credits,
    pub refunded_credits: Credits,
    /// What was paid per credit, in the currency's minor units, as decimal text (0 for bonus
    /// and promotional credits).
    pub cost_basis_minor_per_credit: String,
    /// 0 (consumed first) to 100.
    pub priority: u8,
    pub effective_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub applies_to: Option<AppliesTo>,
    /// `active`, `expired` or `depleted`.
    pub state: String,
    pub reason: String,
}

impl Grant {
    fn of(g: &store::CreditGrant, now: DateTime<Utc>) -> Grant {
        // A grant past its expiry shows as expired even before the sweep booked it.
        let due = g.is_due_at(now) && g.remaining.is_positive();
        let (remaining, expired) = if due {
            (
                Credits::ZERO,
                g.expired.checked_add(g.remaining).unwrap_or(g.expired),
            )
        } else {
            (g.remaining, g.expired)
        };
        let state = if g.is_expired_at(now) {
            "expired"
        } else if remaining.is_positive() {
            "active"
        } else {
            "depleted"
        };
        Grant {
            id: g.id,
            org_id: g.org_id,
            source: g.source,
            category: g.category,
            purchase_id: g.purchase_id,
            topup_id: g.topup_id,
            parent_grant_id: g.parent_grant_id,
            amount_credits: g.amount,
            remaining_credits: remaining,
            consumed_credits: g.consumed,
            expired_credits: expired,
            refunded_credits: g.refunded,
            cost_basis_minor_per_credit: g.cost_basis_minor_per_credit.normalize().to_string(),
            priority: g.priority,
            effective_at: g.effective_at,
            expires_at: g.expires_at,
            applies_to: g.applies_to.clone(),
            state: state.to_string(),
            reason: g.reason.clone(),
        }
    }
}

/// A page of grants, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantPage {
    pub data: Vec<Grant>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GrantParams {
    /// `active`, `expired` or `depleted`; all when absent.
    #[param(pattern = "^(active|expired|depleted)$")]
    state: Option<String>,
    /// `purchase`, `bonus`, `topup`, `promo` or `adjustment`.
    #[param(pattern = "^(purchase|bonus|topup|promo|adjustment)$")]
    source: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The org's grants with what is left of each and how it was used (`balance:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/grants", tag = "grants",
    params(("org" = Uuid, Path, description = "The organization"), GrantParams),
    responses(
        (status = 200, description = "A page of grants", body = GrantPage),
        (status = 400, description = "`invalid_limit`, `invalid_cursor`, `invalid_state`, `invalid_source`"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn list_grants(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Query(p): Query<GrantParams>,
) -> Result<AxumJson<GrantPage>, ApiError> {
    caller.authorize(org_id, Scope::BalanceRead)?;
    state.store.orgs().get_org(org_id).await?;
    let limit = page_limit(p.limit, 100)?;
    let after = page_cursor::<Uuid>(p.cursor.as_deref(), |_| true)?;
    let grant_state = match p.state.as_deref() {
        None => None,
        Some("active") => Some(GrantState::Active),
        Some("expired") => Some(GrantState::Expired),
        Some("depleted") => Some(GrantState::Depleted),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_state",
                "state is `active`, `expired` or `depleted`",
            ));
        }
    };
    let source = match &p.source {
        None => None,
        Some(s) => Some(
            s.parse::<GrantSource>()
                .map_err(|e| ApiError::bad_request("invalid_source", e.to_string()))?,
        ),
    };
    let page = state
        .store
        .grants()
        .list(&GrantQuery {
            org_id,
            state: grant_state,
            source,
            after,
            limit,
        })
        .await?;
    let now = state.store.now();
    Ok(AxumJson(GrantPage {
        data: page.grants.iter().map(|g| Grant::of(g, now)).collect(),
        next_cursor: page.next_after.map(|id| id.to_string()),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoBody {
    /// More than zero.
    #[schema(value_type = CreditsInput, required)]
    amount_credits: Option<Value>,
    /// 0 (consumed first) to 100; default 50.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    priority: Option<i64>,
    /// When its unspent credits expire (in the future); never when absent.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    /// The usage it may pay for; any when absent.
    #[serde(default)]
    applies_to: Option<AppliesTo>,
    /// Why, 1 to 1000 characters.
    #[schema(required)]
    reason: Option<String>,
}

/// Grants promotional credits (operator), with a priority, an optional expiry and an optional
/// restriction to some usage types, models or resources. The same `Idempotency-Key` grants
/// once; the same key with another body is 409.
#[utoipa::path(post, path = "/v1/orgs/{org}/grants", tag = "grants",
    params(
        ("org" = Uuid, Path, description = "The organization"),
        ("Idempotency-Key" = String, Header, description = "1 to 255 printable ASCII characters"),
    ),
    request_body = PromoBody,
    responses(
        (status = 201, description = "The grant (the first one, on a retry)", body = Grant),
        (status = 400, description = "`missing_idempotency_key`, `invalid_idempotency_key`"),
        (status = 403, description = "`operator_only`"),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body"),
        (status = 422, description = "`missing_field`, `amount_not_positive`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`, `invalid_priority`, `invalid_expiry`, `invalid_applies_to`, `field_too_long`"),
    ))]
pub async fn grant_promo(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<PromoBody>,
) -> Result<(StatusCode, AxumJson<Grant>), ApiError> {
    caller.require_operator()?;
    let key = idempotency_key(&headers)?;
    let amount = credits_field(body.amount_credits.as_ref(), "amount_credits")?;
    if !amount.is_positive() {
        return Err(ApiError::invalid(
            "amount_credits",
            "amount_not_positive",
            "`amount_credits` must be greater than zero",
        ));
    }
    let priority = match body.priority {
        None => PRIORITY_DEFAULT,
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|p| *p <= PRIORITY_MAX)
            .ok_or_else(|| {
                ApiError::invalid(
                    "priority",
                    "invalid_priority",
                    "`priority` must be between 0 and 100",
                )
            })?,
    };
    // `expires_at` in the future is checked by the store after the key: a retry of a grant
    // whose expiry has passed since answers the grant, not a 422.
    if let Some(a) = &body.applies_to {
        a.check()
            .map_err(|m| ApiError::invalid("applies_to", "invalid_applies_to", m))?;
    }
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "missing_field",
            "`reason` is required",
        ));
    }
    if reason.chars().count() > 1000 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "reason",
            "field_too_long",
            "`reason` must be at most 1000 characters, without control characters",
        ));
    }
    state.store.orgs().get_org(org_id).await?;
    let grant = state
        .store
        .grants()
        .grant_promo(
            &NewPromo {
                org_id,
                amount,
                priority,
                expires_at: body.expires_at,
                applies_to: body.applies_to,
                reason,
            },
            &caller.actor(),
            &key,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        AxumJson(Grant::of(&grant, state.store.now())),
    ))
}
