//! Organizations and their API keys.

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{ApiKey, KeyGrant, NewApiKey, Org, Scope, Scopes};
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
    /// Scope names; absent: the creating key's own scopes (every scope for an operator).
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// The only sources the key may report usage for, the first its default; absent: the
    /// creating key's own limit (none for an operator).
    #[serde(default)]
    sources: Option<Vec<String>>,
}

/// Sources a key may be limited to, at most.
const KEY_SOURCES_MAX: usize = 32;

/// What a new key may do: what was asked, never more than the creating key holds.
fn key_grant(caller: &Caller, body: &CreateKey) -> Result<KeyGrant, ApiError> {
    let (held_scopes, held_sources) = match caller {
        Caller::Operator { .. } => (Scopes::all(), None),
        Caller::Org(p) => (p.scopes, p.sources.as_deref().map(<[String]>::to_vec)),
    };
    let scopes = match &body.scopes {
        None => held_scopes,
        Some(names) => {
            if names.is_empty() {
                return Err(ApiError::invalid(
                    "scopes",
                    "invalid_scopes",
                    "a key needs at least one scope",
                ));
            }
            let mut scopes = Vec::with_capacity(names.len());
            for n in names {
                let s = Scope::parse(n).ok_or_else(|| {
                    let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                    let shown: String = n.chars().filter(|c| !c.is_control()).take(64).collect();
                    ApiError::invalid(
                        "scopes",
                        "unknown_scope",
                        format!("`{shown}` is not a scope; scopes are {}", known.join(", ")),
                    )
                })?;
                scopes.push(s);
            }
            scopes.into_iter().collect()
        }
    };
    if !scopes.is_subset_of(held_scopes) {
        return Err(ApiError::forbidden(
            "missing_scope",
            "a key can only grant scopes it holds itself",
        ));
    }
    let sources = match &body.sources {
        None => held_sources.clone(),
        Some(list) => {
            if list.is_empty() || list.len() > KEY_SOURCES_MAX {
                return Err(ApiError::invalid(
                    "sources",
                    "invalid_sources",
                    format!("sources: 1 to {KEY_SOURCES_MAX} sources, or leave it out for any"),
                ));
            }
            if let Some(r) = list
                .iter()
                .find_map(|s| billing::usage::check_source(s).err())
            {
                return Err(ApiError::invalid("sources", "invalid_sources", r.message));
            }
            Some(list.clone())
        }
    };
    if let (Some(held), Some(asked)) = (&held_sources, &sources)
        && !asked.iter().all(|s| held.contains(s))
    {
        return Err(ApiError::forbidden(
            "source_not_allowed",
            "a key can only grant sources it may report for itself",
        ));
    }
    if held_sources.is_some() && sources.is_none() {
        return Err(ApiError::forbidden(
            "source_not_allowed",
            "a key limited to sources can only make keys limited to them",
        ));
    }
    Ok(KeyGrant { scopes, sources })
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
        "scopes": k.scopes,
        "sources": k.sources,
    })
}

fn new_key_json(k: &NewApiKey) -> Value {
    let mut v = key_json(&k.key);
    v["secret"] = json!(k.secret);
    v
}

fn org_json(o: &Org, state: &AppState) -> Value {
    json!({
        "id": o.id,
        "name": o.name,
        "created_at": o.created_at,
        "overdraft_limit_credits": o.overdraft_limit.unwrap_or(state.usage.overdraft_limit),
        "overdraft_limit_is_default": o.overdraft_limit.is_none(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverdraftLimitBody {
    /// Credits, or `null` for the configured default.
    overdraft_limit_credits: Option<Value>,
}

/// `PUT /v1/orgs/{org}/overdraft-limit` (operator): how far usage may take the org below zero.
pub async fn put_overdraft_limit(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<OverdraftLimitBody>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.require_operator()?;
    let limit = match &body.overdraft_limit_credits {
        None => None,
        Some(v) => {
            let c = crate::ledger::credits_field(Some(v), "overdraft_limit_credits")?;
            if c.is_negative() {
                return Err(ApiError::invalid(
                    "overdraft_limit_credits",
                    "negative_limit",
                    "`overdraft_limit_credits` is how far below zero usage may go: zero or more",
                ));
            }
            Some(c)
        }
    };
    let org = state
        .store
        .orgs()
        .set_overdraft_limit(org_id, limit)
        .await?;
    tracing::info!(org_id = %org_id, limit = ?limit, actor = %caller.actor(), "overdraft limit set");
    Ok(AxumJson(org_json(&org, &state)))
}

/// `POST /v1/orgs` (operator): the org and its first API key, whose secret is shown only here.
pub async fn create_org(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateOrg>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
    caller.require_operator()?;
    let name = text_field(body.name, "name", 200, true)?;
    let (org, key) = state
        .store
        .orgs()
        .create_org(&name, &caller.actor())
        .await?;
    tracing::info!(org_id = %org.id, "organization created");
    Ok((
        StatusCode::CREATED,
        AxumJson(json!({ "org": org_json(&org, &state), "api_key": new_key_json(&key) })),
    ))
}

pub async fn get_org(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize_org(org_id)?;
    Ok(AxumJson(org_json(
        &state.store.orgs().get_org(org_id).await?,
        &state,
    )))
}

pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize(org_id, Scope::KeysManage)?;
    state.store.orgs().get_org(org_id).await?;
    let keys = state.store.orgs().list_api_keys(org_id).await?;
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
    caller.authorize(org_id, Scope::KeysManage)?;
    let grant = key_grant(&caller, &body)?;
    let label = text_field(body.label, "label", 200, false)?;
    let key = state
        .store
        .orgs()
        .create_api_key(org_id, &label, &grant, &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, AxumJson(new_key_json(&key))))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, key_id)): Path<(Uuid, Uuid)>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize(org_id, Scope::KeysManage)?;
    let key = state.store.orgs().revoke_api_key(org_id, key_id).await?;
    state.keys.clear();
    tracing::info!(org_id = %org_id, key_id = %key_id, "API key revoked");
    Ok(AxumJson(key_json(&key)))
}
