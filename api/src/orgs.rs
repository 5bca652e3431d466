//! Organizations and their API keys.

use axum::{Json as AxumJson, extract::State, http::StatusCode};
use billing::{Credits, openapi::CreditsInput};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{KeyGrant, Scope, Scopes};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path},
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1 to 200 characters.
    #[schema(required)]
    name: Option<String>,
}

/// An organization.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// How far usage may take the balance below zero.
    pub overdraft_limit_credits: Credits,
    /// Whether the limit is the configured default (none set for this org).
    pub overdraft_limit_is_default: bool,
}

/// An API key, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub label: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Scope names.
    pub scopes: Vec<String>,
    /// The only sources it may report usage for, the first its default; `null`: any source.
    pub sources: Option<Vec<String>>,
}

/// A new key: the only answer that holds its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The key itself (`cf_…`); shown once.
    pub secret: String,
}

/// A new organization and its first key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedOrg {
    pub org: Org,
    pub api_key: NewApiKey,
}

/// An org's keys, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKey>,
}

#[derive(Deserialize, Default, ToSchema)]
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

impl From<store::ApiKey> for ApiKey {
    fn from(k: store::ApiKey) -> Self {
        ApiKey {
            id: k.id,
            org_id: k.org_id,
            prefix: k.prefix,
            label: k.label,
            created_by: k.created_by,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            scopes: k.scopes,
            sources: k.sources,
        }
    }
}

impl From<store::NewApiKey> for NewApiKey {
    fn from(k: store::NewApiKey) -> Self {
        NewApiKey {
            key: k.key.into(),
            secret: k.secret,
        }
    }
}

impl Org {
    fn of(o: store::Org, state: &AppState) -> Org {
        Org {
            id: o.id,
            name: o.name,
            created_at: o.created_at,
            overdraft_limit_credits: o.overdraft_limit.unwrap_or(state.usage.overdraft_limit),
            overdraft_limit_is_default: o.overdraft_limit.is_none(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverdraftLimitBody {
    /// Credits (zero or more), or `null` for the configured default.
    /// Required, so a body that forgot it does not reset the limit: `null` is said, not implied.
    #[schema(value_type = Option<CreditsInput>, required)]
    #[serde(default, deserialize_with = "present")]
    overdraft_limit_credits: Option<Value>,
}

/// A field that is present, `null` included (`Some(Value::Null)`); absent is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// How far usage may take the org below zero (operator).
#[utoipa::path(put, path = "/v1/orgs/{org}/overdraft-limit", tag = "orgs",
    params(("org" = Uuid, Path, description = "The organization")),
    request_body = OverdraftLimitBody,
    responses(
        (status = 200, description = "The organization with its new limit", body = Org),
        (status = 403, description = "`operator_only`"),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`missing_field`, `negative_limit`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`"),
    ))]
pub async fn put_overdraft_limit(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<OverdraftLimitBody>,
) -> Result<AxumJson<Org>, ApiError> {
    caller.require_operator()?;
    let limit = match &body.overdraft_limit_credits {
        None => {
            return Err(ApiError::invalid(
                "overdraft_limit_credits",
                "missing_field",
                "`overdraft_limit_credits` is required (`null` for the configured default)",
            ));
        }
        Some(Value::Null) => None,
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
    Ok(AxumJson(Org::of(org, &state)))
}

/// Creates an organization and its first API key, whose secret is shown only here (operator).
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs",
    request_body = CreateOrg,
    responses(
        (status = 201, description = "The organization and its first key", body = CreatedOrg),
        (status = 403, description = "`operator_only`"),
        (status = 422, description = "`missing_field`, `field_too_long`, `invalid_characters`"),
    ))]
pub async fn create_org(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateOrg>,
) -> Result<(StatusCode, AxumJson<CreatedOrg>), ApiError> {
    caller.require_operator()?;
    let name = crate::extract::text_field(body.name, "name", 200, true)?;
    let (org, key) = state
        .store
        .orgs()
        .create_org(&name, &caller.actor())
        .await?;
    tracing::info!(org_id = %org.id, "organization created");
    Ok((
        StatusCode::CREATED,
        AxumJson(CreatedOrg {
            org: Org::of(org, &state),
            api_key: key.into(),
        }),
    ))
}

/// An organization (its own key, or an operator).
#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The organization", body = Org),
        (status = 403, description = "`wrong_org`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn get_org(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Org>, ApiError> {
    caller.authorize_org(org_id)?;
    Ok(AxumJson(Org::of(
        state.store.orgs().get_org(org_id).await?,
        &state,
    )))
}

/// The org's API keys, revoked ones included (`keys:manage`).
#[utoipa::path(get, path = "/v1/orgs/{org}/api-keys", tag = "orgs",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<ApiKeyList>, ApiError> {
    caller.authorize(org_id, Scope::KeysManage)?;
    state.store.orgs().get_org(org_id).await?;
    let keys = state.store.orgs().list_api_keys(org_id).await?;
    Ok(AxumJson(ApiKeyList {
        data: keys.into_iter().map(ApiKey::from).collect(),
    }))
}

/// A new API key, at most the creating key's scopes and sources (`keys:manage`).
#[utoipa::path(post, path = "/v1/orgs/{org}/api-keys", tag = "orgs",
    params(("org" = Uuid, Path, description = "The organization")),
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key with its secret, shown only here", body = NewApiKey),
        (status = 403, description = "`wrong_org`, `missing_scope`, `source_not_allowed`"),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_scopes`, `unknown_scope`, `invalid_sources`, `field_too_long`"),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, AxumJson<NewApiKey>), ApiError> {
    caller.authorize(org_id, Scope::KeysManage)?;
    let grant = key_grant(&caller, &body)?;
    let label = crate::extract::text_field(body.label, "label", 200, false)?;
    let key = state
        .store
        .orgs()
        .create_api_key(org_id, &label, &grant, &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, AxumJson(key.into())))
}

/// Revokes a key at once (`keys:manage`).
#[utoipa::path(delete, path = "/v1/orgs/{org}/api-keys/{key_id}", tag = "orgs",
    params(
        ("org" = Uuid, Path, description = "The organization"),
        ("key_id" = Uuid, Path, description = "The key"),
    ),
    responses(
        (status = 200, description = "The revoked key", body = ApiKey),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`not_found`: no such key in this org"),
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, key_id)): Path<(Uuid, Uuid)>,
) -> Result<AxumJson<ApiKey>, ApiError> {
    caller.authorize(org_id, Scope::KeysManage)?;
    let key = state.store.orgs().revoke_api_key(org_id, key_id).await?;
    state.keys.clear();
    tracing::info!(org_id = %org_id, key_id = %key_id, "API key revoked");
    Ok(AxumJson(key.into()))
}
