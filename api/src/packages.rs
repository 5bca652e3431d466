//! Credit packages: the catalog customers buy from (operators create and change them).

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use billing::{
    Credits, Currency, Money,
    openapi::CreditsInput,
    packages::{self, Package},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
    ledger::credits_field,
};

/// A credit package for sale.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Package)]
pub struct PackageView {
    pub id: Uuid,
    pub name: String,
    /// The price in minor units (cents; yen for JPY).
    pub price_minor: i64,
    /// The price in major units, as decimal text.
    pub price: String,
    pub currency: Currency,
    pub base_credits: Credits,
    pub bonus_credits: Credits,
    /// Base plus bonus.
    pub effective_credits: Credits,
    /// Price per effective credit, in major units.
    pub cost_per_credit: String,
    /// Saving against the smallest package of the currency, in percent (listings only).
    pub saving_percent: Option<String>,
    pub active: bool,
    /// The current version: changing the price, credits, bonus or expiries makes a new one;
    /// purchases keep the version they bought.
    pub version: u32,
    /// Days after a purchase its base credits expire; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_days: Option<u32>,
    /// Days after a purchase its bonus credits expire; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonus_expires_after_days: Option<u32>,
    /// The buyer chooses the amount (`amount_minor` of the purchase); the price and credits
    /// above are those of the least amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_what_you_want: Option<packages::PayWhatYouWant>,
}

impl PackageView {
    fn of(p: &Package, reference: Option<&Package>) -> Result<PackageView, ApiError> {
        let major =
            rust_decimal::Decimal::new(p.price.amount_minor, p.price.currency.minor_digits());
        Ok(PackageView {
            id: p.id,
            name: p.name.clone(),
            price_minor: p.price.amount_minor,
            price: major.to_string(),
            currency: p.price.currency,
            base_credits: p.base_credits,
            bonus_credits: p.bonus_credits,
            effective_credits: p.effective_credits()?,
            cost_per_credit: p.cost_per_credit()?.to_string(),
            saving_percent: match reference {
                Some(r) if r.price.currency == p.price.currency => {
                    Some(p.saving_percent(r)?.to_string())
                }
                _ => None,
            },
            active: p.active,
            version: p.version,
            expires_after_days: p.expires_after_days,
            bonus_expires_after_days: p.bonus_expires_after_days,
            pay_what_you_want: p.pay_what_you_want,
        })
    }
}

/// One version of a package: what it sold from `created_at` on, until the next.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PackageVersionView {
    pub version: u32,
    pub name: String,
    pub price_minor: i64,
    pub currency: Currency,
    pub base_credits: Credits,
    pub bonus_credits: Credits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonus_expires_after_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_what_you_want: Option<packages::PayWhatYouWant>,
    /// Whether this is the version on sale.
    pub current: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A package's versions, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PackageVersionList {
    pub data: Vec<PackageVersionView>,
}

/// `GET /v1/packages/{id}/versions`: every version the package has had, oldest first.
#[utoipa::path(get, path = "/v1/packages/{id}/versions", tag = "packages",
    params(("id" = Uuid, Path, description = "The package")),
    responses(
        (status = 200, description = "Its versions", body = PackageVersionList),
        (status = 404, description = "`not_found`: no such package"),
    ))]
pub async fn package_versions(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<AxumJson<PackageVersionList>, ApiError> {
    let current = state.store.packages().package(id).await?;
    let versions = state.store.packages().versions(id).await?;
    Ok(AxumJson(PackageVersionList {
        data: versions
            .into_iter()
            .map(|v| PackageVersionView {
                version: v.package.version,
                name: v.package.name,
                price_minor: v.package.price.amount_minor,
                currency: v.package.price.currency,
                base_credits: v.package.base_credits,
                bonus_credits: v.package.bonus_credits,
                expires_after_days: v.package.expires_after_days,
                bonus_expires_after_days: v.package.bonus_expires_after_days,
                pay_what_you_want: v.package.pay_what_you_want,
                current: v.package.version == current.version,
                created_at: v.created_at,
            })
            .collect(),
    }))
}

/// Packages on sale.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PackageList {
    pub data: Vec<PackageView>,
}

/// `GET /v1/packages`: active packages, cheapest first, each with its effective credits, cost
/// per credit and saving against the smallest package (fewest effective credits) of its
/// currency.
#[utoipa::path(get, path = "/v1/packages", tag = "packages",
    responses((status = 200, description = "Active packages", body = PackageList)))]
pub async fn list_packages(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<AxumJson<PackageList>, ApiError> {
    let all = state.store.packages().packages(true).await?;
    let mut out = Vec::with_capacity(all.len());
    for p in &all {
        let smallest = all
            .iter()
            .filter(|o| o.price.currency == p.price.currency)
            .min_by_key(|o| o.effective_credits().unwrap_or_default());
        out.push(PackageView::of(p, smallest)?);
    }
    Ok(AxumJson(PackageList { data: out }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageBody {
    name: String,
    /// The price in minor units, more than zero (not with `pay_what_you_want`).
    #[serde(default)]
    price_minor: Option<i64>,
    #[schema(value_type = Currency)]
    currency: String,
    /// More than zero (not with `pay_what_you_want`).
    #[serde(default)]
    #[schema(value_type = Option<CreditsInput>)]
    base_credits: Option<Value>,
    /// Zero or more (default 0).
    #[serde(default)]
    #[schema(value_type = Option<CreditsInput>)]
    bonus_credits: Option<Value>,
    /// Default true.
    #[serde(default = "yes")]
    active: bool,
    /// Days after a purchase its base credits expire (1 to 3650); never when absent.
    #[serde(default)]
    expires_after_days: Option<u32>,
    /// Days after a purchase its bonus credits expire (1 to 3650); never when absent.
    #[serde(default)]
    bonus_expires_after_days: Option<u32>,
    /// The buyer chooses the amount: credits per major currency unit, and the least and most
    /// a purchase may pay. Instead of `price_minor`, `base_credits` and `bonus_credits`.
    #[serde(default)]
    pay_what_you_want: Option<PwywBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PwywBody {
    /// Credits per major currency unit (a dollar), more than zero.
    #[schema(value_type = CreditsInput)]
    credits_per_unit: Value,
    /// The least a purchase may pay, in minor units, more than zero.
    min_minor: i64,
    /// The most a purchase may pay, in minor units, at least `min_minor`.
    max_minor: i64,
}

fn yes() -> bool {
    true
}

fn package_from(id: Uuid, b: PackageBody) -> Result<Package, ApiError> {
    let currency: Currency = b
        .currency
        .parse()
        .map_err(|e| ApiError::billing("currency", e))?;
    let (price_minor, base, bonus, pwyw) = match &b.pay_what_you_want {
        Some(w) => {
            if b.price_minor.is_some() || b.base_credits.is_some() || b.bonus_credits.is_some() {
                return Err(ApiError::invalid(
                    "pay_what_you_want",
                    "invalid_package",
                    "a pay-what-you-want package sets no `price_minor`, `base_credits` or \
                     `bonus_credits`",
                ));
            }
            let per_unit: Credits = credits_field(
                Some(&w.credits_per_unit),
                "pay_what_you_want.credits_per_unit",
            )?;
            if !per_unit.is_positive() || w.min_minor <= 0 || w.max_minor < w.min_minor {
                return Err(ApiError::invalid(
                    "pay_what_you_want",
                    "invalid_package",
                    "`credits_per_unit` and `min_minor` must be positive and `max_minor` at \
                     least `min_minor`",
                ));
            }
            let terms = packages::PayWhatYouWant {
                credits_per_unit: per_unit,
                min_minor: w.min_minor,
                max_minor: w.max_minor,
            };
            // Its list price and credits are those of the least amount.
            let at_min = terms.credits_for(w.min_minor, currency);
            (w.min_minor, at_min, Credits::ZERO, Some(terms))
        }
        None => {
            let price_minor = b.price_minor.ok_or_else(|| {
                ApiError::invalid("price_minor", "missing_field", "`price_minor` is required")
            })?;
            let base: Credits = credits_field(b.base_credits.as_ref(), "base_credits")?;
            let bonus: Credits = match &b.bonus_credits {
                Some(v) => credits_field(Some(v), "bonus_credits")?,
                None => Credits::ZERO,
            };
            (price_minor, base, bonus, None)
        }
    };
    packages::check_package(&b.name, price_minor, base, bonus)
        .map_err(|(field, msg)| ApiError::invalid(field, "invalid_package", msg))?;
    for (field, days) in [
        ("expires_after_days", b.expires_after_days),
        ("bonus_expires_after_days", b.bonus_expires_after_days),
    ] {
        if days.is_some_and(|d| d == 0 || d > packages::EXPIRES_AFTER_DAYS_MAX) {
            return Err(ApiError::invalid(
                field,
                "invalid_package",
                format!("{field} must be between 1 and 3650"),
            ));
        }
    }
    Ok(Package {
        id,
        name: b.name.trim().to_string(),
        price: Money::new(price_minor, currency),
        base_credits: base,
        bonus_credits: bonus,
        active: b.active,
        // The store decides the version.
        version: 1,
        expires_after_days: b.expires_after_days,
        bonus_expires_after_days: b.bonus_expires_after_days,
        pay_what_you_want: pwyw,
    })
}

/// `POST /v1/packages` (operator).
#[utoipa::path(post, path = "/v1/packages", tag = "packages",
    request_body = PackageBody,
    responses(
        (status = 201, description = "The package", body = PackageView),
        (status = 403, description = "`operator_only`"),
        (status = 422, description = "`invalid_package`, `missing_field`, `unknown_currency`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`"),
    ))]
pub async fn create_package(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PackageBody>,
) -> Result<(StatusCode, AxumJson<PackageView>), ApiError> {
    caller.require_operator()?;
    let p = state
        .store
        .packages()
        .put_package(&package_from(Uuid::now_v7(), body)?)
        .await?;
    Ok((StatusCode::CREATED, AxumJson(PackageView::of(&p, None)?)))
}

/// `PUT /v1/packages/{id}` (operator): change or deactivate. A change of the price, credits,
/// bonus or expiries makes the next version; purchases keep the version they bought.
#[utoipa::path(put, path = "/v1/packages/{id}", tag = "packages",
    params(("id" = Uuid, Path, description = "The package")),
    request_body = PackageBody,
    responses(
        (status = 200, description = "The package", body = PackageView),
        (status = 403, description = "`operator_only`"),
        (status = 404, description = "`not_found`: no such package"),
        (status = 422, description = "`invalid_package`, `missing_field`, `unknown_currency`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`"),
    ))]
pub async fn put_package(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<PackageBody>,
) -> Result<AxumJson<PackageView>, ApiError> {
    caller.require_operator()?;
    state.store.packages().package(id).await?;
    let p = state
        .store
        .packages()
        .put_package(&package_from(id, body)?)
        .await?;
    Ok(AxumJson(PackageView::of(&p, None)?))
}
