//! Liveness, readiness and the OpenAPI document.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};
use temporalio_client::WorkflowCountOptions;
use utoipa::ToSchema;

use crate::{AppState, error::ApiError};

/// The process is alive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Alive {
    /// `ok`.
    pub status: String,
}

/// Every dependency answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: String,
    /// `ok`.
    pub postgres: String,
    /// `ok`.
    pub temporal: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(Alive {
        status: "ok".into(),
    })
}

/// Ready only when Postgres and Temporal both answer within the probe timeout, and the usage
/// writers (their own connections, in turn with the batches) can commit: after a database
/// restart the API is ready when ingestion is, not when some other connection is.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`not_ready`: Postgres or Temporal is not answering"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let postgres = tokio::time::timeout(state.probe_timeout, async {
        state.store.ping().await?;
        state.ingestor.probe().await
    })
    .await;
    let temporal = tokio::time::timeout(
        state.probe_timeout,
        state
            .temporal
            .count_workflows("", WorkflowCountOptions::default()),
    )
    .await;
    let pg_ok = matches!(postgres, Ok(Ok(())));
    let temporal_ok = matches!(temporal, Ok(Ok(_)));
    if pg_ok && temporal_ok {
        return Ok(Json(Ready {
            status: "ready".into(),
            postgres: "ok".into(),
            temporal: "ok".into(),
        }));
    }
    let state_of = |ok: bool| if ok { "ok" } else { "unavailable" };
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!(
            "postgres: {}, temporal: {}",
            state_of(pg_ok),
            state_of(temporal_ok)
        ),
    ))
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document",
        content_type = "application/json", body = serde_json::Value)))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
}
