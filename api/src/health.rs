use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};
use temporalio_client::WorkflowCountOptions;

use crate::{AppState, error::ApiError};

/// The process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready only when Postgres and Temporal both answer within the probe timeout, and the usage
/// writers (their own connections, in turn with the batches) can commit: after a database
/// restart the API is ready when ingestion is, not when some other connection is.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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
        return Ok(Json(
            json!({ "status": "ready", "postgres": "ok", "temporal": "ok" }),
        ));
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
