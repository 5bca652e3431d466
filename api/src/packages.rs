//! Credit packages: the catalog customers buy from (operators create and change them).

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use billing::{
    Credits, Currency, Money,
    packages::{self, Package},
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
    ledger::credits_field,
};

fn package_json(p: &Package, reference: Option<&Package>) -> Result<Value, ApiError> {
    let major = rust_decimal::Decimal::new(p.price.amount_minor, p.price.currency.minor_digits());
    Ok(json!({
        "id": p.id,
        "name": p.name,
        "price_minor": p.price.amount_minor,
        "price": major.to_string(),
        "currency": p.price.currency,
        "base_credits": p.base_credits,
        "bonus_credits": p.bonus_credits,
        "effective_credits": p.effective_credits()?,
        "cost_per_credit": p.cost_per_credit()?.to_string(),
        "saving_percent": match reference {
            Some(r) if r.price.currency == p.price.currency => Some(p.saving_percent(r)?.to_string()),
            _ => None,
        },
        "active": p.active,
    }))
}

/// `GET /v1/packages`: active packages, cheapest first, each with its effective credits, cost
/// per credit and saving against the smallest package (fewest effective credits) of its
/// currency.
pub async fn list_packages(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<AxumJson<Value>, ApiError> {
    let all = state.store.packages().packages(true).await?;
    let mut out = Vec::with_capacity(all.len());
    for p in &all {
        let smallest = all
            .iter()
            .filter(|o| o.price.currency == p.price.currency)
            .min_by_key(|o| o.effective_credits().unwrap_or_default());
        out.push(package_json(p, smallest)?);
    }
    Ok(AxumJson(json!({ "data": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageBody {
    name: String,
    price_minor: i64,
    currency: String,
    base_credits: Value,
    #[serde(default)]
    bonus_credits: Option<Value>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

fn package_from(id: Uuid, b: PackageBody) -> Result<Package, ApiError> {
    let currency: Currency = b
        .currency
        .parse()
        .map_err(|e| ApiError::billing("currency", e))?;
    let base: Credits = credits_field(Some(&b.base_credits), "base_credits")?;
    let bonus: Credits = match &b.bonus_credits {
        Some(v) => credits_field(Some(v), "bonus_credits")?,
        None => Credits::ZERO,
    };
    packages::check_package(&b.name, b.price_minor, base, bonus)
        .map_err(|(field, msg)| ApiError::invalid(field, "invalid_package", msg))?;
    Ok(Package {
        id,
        name: b.name.trim().to_string(),
        price: Money::new(b.price_minor, currency),
        base_credits: base,
        bonus_credits: bonus,
        active: b.active,
    })
}

/// `POST /v1/packages` (operator).
pub async fn create_package(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PackageBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.require_operator()?;
    let p = state
        .store
        .packages()
        .put_package(&package_from(Uuid::now_v7(), body)?)
        .await?;
    Ok((StatusCode::CREATED, AxumJson(package_json(&p, None)?)))
}

/// `PUT /v1/packages/{id}` (operator): change or deactivate; purchases keep their snapshot.
pub async fn put_package(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<PackageBody>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.require_operator()?;
    state.store.packages().package(id).await?;
    let p = state
        .store
        .packages()
        .put_package(&package_from(id, body)?)
        .await?;
    Ok(AxumJson(package_json(&p, None)?))
}
