//! `GET /v1/prices` (any key) and `POST /v1/prices` (operator): the versioned price book.

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use billing::{
    openapi::CreditsInput,
    pricing::{PriceBook, Resource},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Query},
};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AtParams {
    /// The version effective at this time (default: now).
    at: Option<DateTime<Utc>>,
}

/// A price version: what each model and resource costs from `effective_from` on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Prices {
    pub version: i64,
    pub effective_from: DateTime<Utc>,
    pub ai_models: Vec<ModelPrices>,
    pub infra: Vec<InfraPrice>,
}

/// Credits per million tokens of one model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelPrices {
    pub model: String,
    /// Decimal text, up to 6 decimals.
    pub input_per_mtok_credits: String,
    pub output_per_mtok_credits: String,
    pub cached_input_per_mtok_credits: String,
}

/// Credits per `per_units` units of one resource.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InfraPrice {
    pub resource: Resource,
    /// The unit quantities are metered in.
    pub unit: String,
    /// How many units `price_credits` is for (1, or 1000 for data operations).
    #[schema(value_type = String)]
    pub per_units: Decimal,
    /// Decimal text, up to 9 decimals.
    pub price_credits: String,
}

impl From<&PriceBook> for Prices {
    fn from(b: &PriceBook) -> Self {
        Prices {
            version: b.version,
            effective_from: b.effective_from,
            ai_models: b
                .models
                .iter()
                .map(|(m, p)| ModelPrices {
                    model: m.clone(),
                    input_per_mtok_credits: p.input_per_mtok.normalize().to_string(),
                    output_per_mtok_credits: p.output_per_mtok.normalize().to_string(),
                    cached_input_per_mtok_credits: p.cached_input_per_mtok.normalize().to_string(),
                })
                .collect(),
            infra: b
                .infra
                .iter()
                .map(|(r, p)| InfraPrice {
                    resource: *r,
                    unit: r.unit().to_string(),
                    per_units: r.price_basis(),
                    price_credits: p.normalize().to_string(),
                })
                .collect(),
        }
    }
}

/// The version effective now, or at `?at=`.
/// The price version effective now, or at `?at=` (any key).
#[utoipa::path(get, path = "/v1/prices", tag = "prices",
    params(AtParams),
    responses(
        (status = 200, description = "The effective version", body = Prices),
        (status = 404, description = "`no_price`: no version is effective then"),
    ))]
pub async fn current(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<AtParams>,
) -> Result<AxumJson<Prices>, ApiError> {
    let at = p.at.unwrap_or_else(Utc::now);
    let catalog = state.prices.current();
    let book = catalog.at(at).ok_or_else(|| {
        ApiError::not_found("no_price", "no price version is effective at that time")
    })?;
    Ok(AxumJson(Prices::from(&**book)))
}

/// A new price version: every resource, at least one model.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// At least the publish lead from now (default: exactly that).
    pub(crate) effective_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) note: String,
    pub(crate) ai_models: Vec<ModelBody>,
    pub(crate) infra: Vec<InfraBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    pub(crate) model: String,
    /// Credits per million input tokens, zero or more, up to 6 decimals.
    #[schema(value_type = CreditsInput)]
    pub(crate) input_per_mtok_credits: Value,
    #[schema(value_type = CreditsInput)]
    pub(crate) output_per_mtok_credits: Value,
    #[schema(value_type = CreditsInput)]
    pub(crate) cached_input_per_mtok_credits: Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InfraBody {
    /// A metered resource.
    #[schema(value_type = Resource)]
    pub(crate) resource: String,
    /// Credits per `per_units` units, zero or more, up to 9 decimals.
    #[schema(value_type = CreditsInput)]
    pub(crate) price_credits: Value,
}

/// Publishes a whole new price book version (operator). Every infra resource must be priced
/// and at least one model; `effective_from` defaults to the earliest allowed time.
/// Publishes a price version (operator). Versions never change once published; usage is rated
/// with the version effective when it occurred.
#[utoipa::path(post, path = "/v1/prices", tag = "prices",
    request_body = PublishBody,
    responses(
        (status = 201, description = "The new version", body = Prices),
        (status = 403, description = "`operator_only`"),
        (status = 409, description = "`price_version_not_after_newest`"),
        (status = 422, description = "`effective_too_soon`, `missing_field`, `duplicate_model`, `duplicate_resource`, `unknown_resource`, `invalid_price`, `negative_price`, `too_many_decimals`, `amount_out_of_range`, `invalid_field`"),
    ))]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PublishBody>,
) -> Result<(StatusCode, AxumJson<Prices>), ApiError> {
    caller.require_operator()?;
    let new = crate::usecases::new_version(body, Utc::now(), state.price_publish_lead)?;
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
    Ok((StatusCode::CREATED, AxumJson(Prices::from(&**book))))
}
