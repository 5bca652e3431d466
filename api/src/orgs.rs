//! Organizations and their API keys.

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{ApiKey, NewApiKey, Org};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    label: Option<String>,
}

fn text_field(
    value: Option<String>,
    field: &'static str,
    max_chars: usize,
    required: bool,
) -> Result<String, ApiError> {
    let v = value.map(|s| s.trim().to_string()).unwrap_or_default();
    if required && v.is_empty() {
        return Err(ApiError::invalid(
            field,
            "missing_field",
            format!("`{field}` is required"),
        ));
    }
    if v.chars().count() > max_chars {
        return Err(ApiError::invalid(
            field,
            "field_too_long",
            format!("`{field}` is longer than {max_chars} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "invalid_characters",
            format!("`{field}` contains control characters"),
        ));
    }
    Ok(v)
}

fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "org_id": k.org_id,
        "prefix": k.prefix,
        "label": k.label,
        "created_by": k.created_by,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    })
}

fn new_key_json(k: &NewApiKey) -> Value {
    let mut v = key_json(&k.key);
    v["secret"] = json!(k.secret);
    v
}

fn org_json(o: &Org) -> Value {
    json!({ "id": o.id, "name": o.name, "created_at": o.created_at })
}

/// `POST /v1/orgs` (operator): the org and its first API key, whose secret is shown only here.
pub async fn create_org(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateOrg>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.require_operator()?;
    let name = text_field(body.name, "name", 200, true)?;
    let (org, key) = state.store.create_org(&name, &caller.actor()).await?;
    tracing::info!(org_id = %org.id, "organization created");
    Ok((
        StatusCode::CREATED,
        AxumJson(json!({ "org": org_json(&org), "api_key": new_key_json(&key) })),
    ))
}

pub async fn get_org(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize_org(org_id)?;
    Ok(AxumJson(org_json(&state.store.get_org(org_id).await?)))
}

pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize_org(org_id)?;
    state.store.get_org(org_id).await?;
    let keys = state.store.list_api_keys(org_id).await?;
    Ok(AxumJson(
        json!({ "data": keys.iter().map(key_json).collect::<Vec<_>>() }),
    ))
}

pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.authorize_org(org_id)?;
    let label = text_field(body.label, "label", 200, false)?;
    let key = state
        .store
        .create_api_key(org_id, &label, &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, AxumJson(new_key_json(&key))))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, key_id)): Path<(Uuid, Uuid)>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize_org(org_id)?;
    let key = state.store.revoke_api_key(org_id, key_id).await?;
    state.keys.clear();
    tracing::info!(org_id = %org_id, key_id = %key_id, "API key revoked");
    Ok(AxumJson(key_json(&key)))
}
