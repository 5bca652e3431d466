//! `GET /v1/prices` (any key) and `POST /v1/prices` (operator): the versioned price book.

use std::collections::BTreeMap;

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use billing::pricing::{ModelPrice, PriceBook, Resource};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use store::NewPriceVersion;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Query},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtParams {
    at: Option<DateTime<Utc>>,
}

pub fn book_json(b: &PriceBook) -> Value {
    json!({
        "version": b.version,
        "effective_from": b.effective_from,
        "ai_models": b.models.iter().map(|(m, p)| json!({
            "model": m,
            "input_per_mtok_credits": p.input_per_mtok.normalize().to_string(),
            "output_per_mtok_credits": p.output_per_mtok.normalize().to_string(),
            "cached_input_per_mtok_credits": p.cached_input_per_mtok.normalize().to_string(),
        })).collect::<Vec<_>>(),
        "infra": b.infra.iter().map(|(r, p)| json!({
            "resource": r,
            "unit": r.unit(),
            "per_units": r.price_basis(),
            "price_credits": p.normalize().to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// The version effective now, or at `?at=`.
pub async fn current(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<AtParams>,
) -> Result<AxumJson<Value>, ApiError> {
    let at = p.at.unwrap_or_else(Utc::now);
    let catalog = state.prices.current();
    let book = catalog.at(at).ok_or_else(|| {
        ApiError::not_found("no_price", "no price version is effective at that time")
    })?;
    Ok(AxumJson(book_json(book)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    effective_from: Option<DateTime<Utc>>,
    #[serde(default)]
    note: String,
    ai_models: Vec<ModelBody>,
    infra: Vec<InfraBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    model: String,
    input_per_mtok_credits: Value,
    output_per_mtok_credits: Value,
    cached_input_per_mtok_credits: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfraBody {
    resource: String,
    price_credits: Value,
}

/// A price: a non-negative decimal with at most `scale` decimals, below 10^12.
fn price(v: &Value, field: &'static str, scale: u32) -> Result<Decimal, ApiError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => crate::extract::decimal_text(n),
        _ => {
            return Err(ApiError::invalid(
                field,
                "invalid_price",
                format!("{field} must be a decimal"),
            ));
        }
    };
    let d = Decimal::from_str_exact(&text).map_err(|_| {
        ApiError::invalid(field, "invalid_price", format!("{field} must be a decimal"))
    })?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(ApiError::invalid(
            field,
            "negative_price",
            format!("{field} must not be negative"),
        ));
    }
    if d.normalize().scale() > scale {
        return Err(ApiError::invalid(
            field,
            "too_many_decimals",
            format!("{field} has more than {scale} decimals"),
        ));
    }
    if d >= Decimal::from(1_000_000_000_000i64) {
        return Err(ApiError::invalid(
            field,
            "amount_out_of_range",
            format!("{field} is too large"),
        ));
    }
    Ok(d.abs())
}

/// Publishes a whole new price book version (operator). Every infra resource must be priced
/// and at least one model; `effective_from` defaults to the earliest allowed time.
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PublishBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.require_operator()?;
    let new = new_version(body, Utc::now(), state.price_publish_lead)?;
    let effective_from = new.effective_from;
    let version = state
        .store
        .prices()
        .publish_prices(&new, &caller.actor())
        .await?;
    state.prices.refresh(&state.store).await?;
    let catalog = state.prices.current();
    let book = catalog
        .at(effective_from)
        .filter(|b| b.version == version)
        .ok_or_else(ApiError::internal)?;
    tracing::info!(version, %effective_from, "price version published");
    Ok((StatusCode::CREATED, AxumJson(book_json(book))))
}

/// Checks a whole new price book version (the body of `POST /v1/prices`, or the operator CLI's
/// file), starting at least `lead` after `now`: every infra resource priced, at least one model,
/// each price a non-negative decimal within its scale.
pub fn new_version(
    body: PublishBody,
    now: DateTime<Utc>,
    lead: chrono::Duration,
) -> Result<NewPriceVersion, ApiError> {
    let earliest = now + lead;
    let effective_from = body.effective_from.unwrap_or(earliest);
    if effective_from < earliest {
        return Err(ApiError::invalid(
            "effective_from",
            "effective_too_soon",
            format!(
                "effective_from must be at least {} s from now, so every server knows the version before it applies",
                lead.num_seconds()
            ),
        ));
    }
    let mut models = BTreeMap::new();
    for m in &body.ai_models {
        billing::usage::check_name("model", &m.model, true)
            .map_err(|r| ApiError::invalid("ai_models", r.code, r.message))?;
        let p = ModelPrice {
            input_per_mtok: price(&m.input_per_mtok_credits, "input_per_mtok_credits", 6)?,
            output_per_mtok: price(&m.output_per_mtok_credits, "output_per_mtok_credits", 6)?,
            cached_input_per_mtok: price(
                &m.cached_input_per_mtok_credits,
                "cached_input_per_mtok_credits",
                6,
            )?,
        };
        if models.insert(m.model.clone(), p).is_some() {
            return Err(ApiError::invalid(
                "ai_models",
                "duplicate_model",
                format!("model `{}` is listed twice", m.model),
            ));
        }
    }
    if models.is_empty() {
        return Err(ApiError::invalid(
            "ai_models",
            "missing_field",
            "price at least one model",
        ));
    }
    let mut infra = BTreeMap::new();
    for i in &body.infra {
        let r: Resource = i.resource.parse().map_err(|_| {
            ApiError::invalid(
                "infra",
                "unknown_resource",
                format!("resource `{}` is not one we meter", i.resource),
            )
        })?;
        if infra
            .insert(r, price(&i.price_credits, "price_credits", 9)?)
            .is_some()
        {
            return Err(ApiError::invalid(
                "infra",
                "duplicate_resource",
                format!("resource `{r}` is listed twice"),
            ));
        }
    }
    if let Some(missing) = Resource::ALL.iter().find(|r| !infra.contains_key(r)) {
        return Err(ApiError::invalid(
            "infra",
            "missing_field",
            format!("resource `{missing}` has no price"),
        ));
    }
    Ok(NewPriceVersion {
        effective_from,
        note: body.note.chars().take(1000).collect(),
        models,
        infra,
    })
}
