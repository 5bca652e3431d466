//! The HTTP API: axum routes under `/v1`, API-key auth, problem+json errors, OpenAPI.

pub mod auth;
pub mod error;
pub mod extract;
mod health;
mod ledger;
mod orgs;

use std::time::Duration;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use store::Store;
use tower_http::trace::TraceLayer;

pub use auth::{Caller, OperatorKeys};
pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub operator_keys: OperatorKeys,
    pub temporal: temporalio_client::Client,
    /// How long a readiness check waits for each dependency.
    pub probe_timeout: Duration,
}

/// The OpenAPI document, kept in the repo beside this crate.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Every route, for the test that checks the OpenAPI document documents them all.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/orgs"),
    ("get", "/v1/orgs/{org}"),
    ("get", "/v1/orgs/{org}/api-keys"),
    ("post", "/v1/orgs/{org}/api-keys"),
    ("delete", "/v1/orgs/{org}/api-keys/{key_id}"),
    ("get", "/v1/orgs/{org}/balance"),
    ("get", "/v1/orgs/{org}/transactions"),
    ("post", "/v1/orgs/{org}/adjustments"),
];

pub fn router(state: AppState, body_limit_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/orgs", post(orgs::create_org))
        .route("/v1/orgs/{org}", get(orgs::get_org))
        .route(
            "/v1/orgs/{org}/api-keys",
            get(orgs::list_keys).post(orgs::create_key),
        )
        .route(
            "/v1/orgs/{org}/api-keys/{key_id}",
            axum::routing::delete(orgs::revoke_key),
        )
        .route("/v1/orgs/{org}/balance", get(ledger::balance))
        .route("/v1/orgs/{org}/transactions", get(ledger::transactions))
        .route("/v1/orgs/{org}/adjustments", post(ledger::adjust))
        .fallback(|| async { ApiError::not_found("no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
