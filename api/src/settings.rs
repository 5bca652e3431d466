//! Per-org auto-topup and alert settings, the saved payment method, and what they did.

use axum::{Json as AxumJson, extract::State};
use billing::Credits;
use billing::openapi::CreditsInput;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{AlertRecord, BillingSettings, Scope, TopupRecord};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
    ledger::credits_field,
};

/// Alert thresholds and recipients per org, at most.
const THRESHOLDS_MAX: usize = 10;
const RECIPIENTS_MAX: usize = 20;

/// An org's auto-topup and low-balance alerts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = BillingSettings)]
pub struct Settings {
    pub auto_topup: AutoTopup,
    pub alerts: Alerts,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AutoTopup {
    pub enabled: bool,
    /// Buy `package_id` when the balance falls below this.
    pub threshold_credits: Option<Credits>,
    pub package_id: Option<Uuid>,
    /// The most auto-topup may charge in a calendar month, in the package's minor units.
    pub monthly_cap_minor: Option<i64>,
    /// Why auto-topup is paused (a declined card, a dispute), if it is.
    pub paused_reason: Option<String>,
    /// The saved card charged off-session.
    pub payment_method: Option<PaymentMethod>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentMethod {
    /// `pm_…`.
    pub id: String,
    /// `cus_…`.
    pub customer: Option<String>,
    pub consented_at: Option<DateTime<Utc>>,
    pub consented_by: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Alerts {
    /// An e-mail goes out when the balance falls below each.
    pub thresholds_credits: Vec<Credits>,
    pub recipients: Vec<String>,
}

impl From<BillingSettings> for Settings {
    fn from(s: BillingSettings) -> Self {
        Settings {
            auto_topup: AutoTopup {
                enabled: s.topup_enabled,
                threshold_credits: s.topup_threshold,
                package_id: s.topup_package_id,
                monthly_cap_minor: s.topup_monthly_cap_minor,
                paused_reason: s.topup_paused_reason,
                payment_method: s.payment_method_id.map(|id| PaymentMethod {
                    id,
                    customer: s.stripe_customer_id,
                    consented_at: s.payment_method_consent_at,
                    consented_by: s.payment_method_consent_by,
                }),
            },
            alerts: Alerts {
                thresholds_credits: s.alert_thresholds,
                recipients: s.recipients,
            },
        }
    }
}

/// An org's latest auto-topups (at most 100), newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopupList {
    pub data: Vec<TopupRecord>,
}

/// An org's latest low-balance alerts (at most 100), newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub data: Vec<AlertRecord>,
}

/// The org's auto-topup and alert settings (`billing:manage`).
#[utoipa::path(get, path = "/v1/orgs/{org}/billing-settings", tag = "billing",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The settings", body = Settings),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Settings>, ApiError> {
    caller.authorize(org_id, Scope::BillingManage)?;
    Ok(AxumJson(
        state
            .store
            .settings()
            .billing_settings(org_id)
            .await?
            .into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    auto_topup: Option<TopupBody>,
    alerts: Option<AlertsBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopupBody {
    /// Enabling needs `threshold_credits`, `package_id`, `monthly_cap_minor` and a saved
    /// payment method.
    enabled: bool,
    /// Zero or more.
    #[schema(value_type = Option<CreditsInput>)]
    threshold_credits: Option<Value>,
    package_id: Option<Uuid>,
    monthly_cap_minor: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsBody {
    /// At most 10, each zero or more.
    #[serde(default)]
    #[schema(value_type = Vec<CreditsInput>)]
    thresholds_credits: Vec<Value>,
    /// At most 20 e-mail addresses.
    #[serde(default)]
    recipients: Vec<String>,
}

fn non_negative(v: &Value, field: &'static str) -> Result<Credits, ApiError> {
    let c = credits_field(Some(v), field)?;
    if c.is_negative() {
        return Err(ApiError::invalid(
            field,
            "negative_threshold",
            format!("`{field}` must be zero or more"),
        ));
    }
    Ok(c)
}

fn valid_email(e: &str) -> bool {
    billing::email::is_valid(e)
}

/// `PUT /v1/orgs/{org}/billing-settings`: the whole of auto-topup and alerts, validated.
#[utoipa::path(put, path = "/v1/orgs/{org}/billing-settings", tag = "billing",
    params(("org" = Uuid, Path, description = "The organization")),
    request_body = SettingsBody,
    responses(
        (status = 200, description = "The settings as saved", body = Settings),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`missing_field`, `payment_method_required`, `unknown_package`, `invalid_cap`, `negative_threshold`, `too_many`, `invalid_email`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`"),
    ))]
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<SettingsBody>,
) -> Result<AxumJson<Settings>, ApiError> {
    caller.authorize(org_id, Scope::BillingManage)?;
    let mut s = state.store.settings().billing_settings(org_id).await?;
    if let Some(t) = body.auto_topup {
        let threshold = t
            .threshold_credits
            .as_ref()
            .map(|v| non_negative(v, "threshold_credits"))
            .transpose()?;
        if let Some(cap) = t.monthly_cap_minor
            && cap <= 0
        {
            return Err(ApiError::invalid(
                "monthly_cap_minor",
                "invalid_cap",
                "`monthly_cap_minor` must be positive",
            ));
        }
        if let Some(id) = t.package_id {
            match state.store.packages().package(id).await {
                Ok(p) if p.active && p.pay_what_you_want.is_none() => {}
                Ok(p) if p.active => {
                    return Err(ApiError::invalid(
                        "package_id",
                        "invalid_package",
                        "auto-topup buys a fixed-price package, not a pay-what-you-want one",
                    ));
                }
                _ => {
                    return Err(ApiError::invalid(
                        "package_id",
                        "unknown_package",
                        "no such active package",
                    ));
                }
            }
        }
        if t.enabled {
            if threshold.is_none() || t.package_id.is_none() || t.monthly_cap_minor.is_none() {
                return Err(ApiError::invalid(
                    "auto_topup",
                    "missing_field",
                    "enabling auto-topup needs threshold_credits, package_id and monthly_cap_minor",
                ));
            }
            if s.payment_method_id.is_none() {
                return Err(ApiError::invalid(
                    "auto_topup",
                    "payment_method_required",
                    "save a payment method first (POST /v1/orgs/{org}/payment-method)",
                ));
            }
        }
        s.topup_enabled = t.enabled;
        s.topup_threshold = threshold;
        s.topup_package_id = t.package_id;
        s.topup_monthly_cap_minor = t.monthly_cap_minor;
    }
    if let Some(a) = body.alerts {
        if a.thresholds_credits.len() > THRESHOLDS_MAX || a.recipients.len() > RECIPIENTS_MAX {
            return Err(ApiError::invalid(
                "alerts",
                "too_many",
                format!("at most {THRESHOLDS_MAX} thresholds and {RECIPIENTS_MAX} recipients"),
            ));
        }
        let mut thresholds = a
            .thresholds_credits
            .iter()
            .map(|v| non_negative(v, "thresholds_credits"))
            .collect::<Result<Vec<_>, _>>()?;
        thresholds.sort();
        thresholds.dedup();
        if let Some(bad) = a.recipients.iter().find(|r| !valid_email(r)) {
            return Err(ApiError::invalid(
                "recipients",
                "invalid_email",
                format!("`{bad}` is not an e-mail address"),
            ));
        }
        s.alert_thresholds = thresholds;
        s.recipients = a.recipients;
    }
    state
        .store
        .settings()
        .put_billing_settings(org_id, &s)
        .await?;
    Ok(AxumJson(
        state
            .store
            .settings()
            .billing_settings(org_id)
            .await?
            .into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodBody {
    /// The payment method saved by a setup-mode Checkout Session (`pm_…`).
    payment_method_id: String,
    /// The processor's customer it is attached to, when there is one.
    customer_id: Option<String>,
    /// Who consents to off-session charges.
    user: String,
}

/// `POST /v1/orgs/{org}/payment-method` (operator): records a payment method and who consented
/// to off-session charges, when; resumes a paused auto-topup. Customers save a card through
/// the setup-mode checkout (`…/payment-method/setup`), where the processor itself vouches for
/// the payment method; this route is for support staff recording one the customer saved with
/// the processor by other means, so an org key may not point charges at an arbitrary id.
#[utoipa::path(post, path = "/v1/orgs/{org}/payment-method", tag = "billing",
    params(("org" = Uuid, Path, description = "The organization")),
    request_body = PaymentMethodBody,
    responses(
        (status = 200, description = "The settings with the payment method", body = Settings),
        (status = 403, description = "`operator_only`"),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_payment_method`, `invalid_customer`, `missing_field`, `invalid_field`"),
    ))]
pub async fn save_payment_method(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<PaymentMethodBody>,
) -> Result<AxumJson<Settings>, ApiError> {
    caller.require_operator()?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic());
    if !ok(&body.payment_method_id) || !body.payment_method_id.starts_with("pm_") {
        return Err(ApiError::invalid(
            "payment_method_id",
            "invalid_payment_method",
            "expected a pm_… id",
        ));
    }
    if body.customer_id.as_deref().is_some_and(|c| !ok(c)) {
        return Err(ApiError::invalid(
            "customer_id",
            "invalid_customer",
            "expected a cus_… id",
        ));
    }
    billing::usage::check_name("user", &body.user, true)
        .map_err(|r| ApiError::invalid("user", r.code, r.message))?;
    state.store.orgs().get_org(org_id).await?;
    state
        .store
        .settings()
        .save_payment_method(
            org_id,
            body.customer_id.as_deref(),
            &body.payment_method_id,
            &body.user,
        )
        .await?;
    Ok(AxumJson(
        state
            .store
            .settings()
            .billing_settings(org_id)
            .await?
            .into(),
    ))
}

/// The org's latest auto-topups with their attempts (`history:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/topups", tag = "billing",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The topups", body = TopupList),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn topups(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<TopupList>, ApiError> {
    caller.authorize(org_id, Scope::HistoryRead)?;
    state.store.orgs().get_org(org_id).await?;
    Ok(AxumJson(TopupList {
        data: state.store.topups().topups(org_id).await?,
    }))
}

/// The org's latest low-balance alerts (`history:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/alerts", tag = "billing",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The alerts", body = AlertList),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<AlertList>, ApiError> {
    caller.authorize(org_id, Scope::HistoryRead)?;
    state.store.orgs().get_org(org_id).await?;
    Ok(AxumJson(AlertList {
        data: state.store.alerts().alerts(org_id).await?,
    }))
}
