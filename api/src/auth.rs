//! Who is calling: an operator (keys from config) or an organization (its API keys).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use sha2::{Digest, Sha256};
use store::{Principal, Scope};
use uuid::Uuid;

use crate::{AppState, error::ApiError};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An operator; `name` says which (see [`OperatorKeys`]).
    Operator {
        name: String,
    },
    Org(Principal),
}

/// Operator keys, kept only as SHA-256 hashes in memory, each with the name it is recorded
/// under (`actor` = `operator:{name}`), which org keys can read in their history.
///
/// A configured key is either `name:secret` (the name: a lowercase letter, then up to 31
/// lowercase letters, digits, `_` or `-`), recorded as `operator:name`, or a bare secret,
/// recorded as `operator:key-{n}` by its position in the list. Never anything derived from the
/// secret itself: a hash of it shown to customers would be an offline oracle against it
/// (audit L2).
#[derive(Clone, Default)]
pub struct OperatorKeys(Vec<([u8; 32], String)>);

impl OperatorKeys {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        OperatorKeys(
            secrets
                .into_iter()
                .enumerate()
                .map(|(i, entry)| {
                    let (name, secret) = match entry.split_once(':') {
                        Some((name, secret)) if is_operator_name(name) && !secret.is_empty() => {
                            (name.to_string(), secret)
                        }
                        _ => (format!("key-{}", i + 1), entry),
                    };
                    (Sha256::digest(secret.as_bytes()).into(), name)
                })
                .collect(),
        )
    }

    fn find(&self, secret: &str) -> Option<String> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.0
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, name)| name.clone())
    }
}

fn is_operator_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Recently authenticated org keys, so the hot path does not ask the database on every request.
/// Bounded in size and age; revoking a key clears the cache of this process at once (other
/// processes trust a revoked key for at most the TTL).
#[derive(Clone)]
pub struct KeyCache {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<KeyHash, (Principal, Instant)>>>,
}

type KeyHash = [u8; 32];

/// Entries at most; the cache is emptied when full (a bound, not an eviction policy).
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            entries: Arc::default(),
        }
    }

    fn get(&self, secret: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(&hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, secret: &str, p: Principal) {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (p, Instant::now()));
    }

    /// Forgets every cached key (after a revocation).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

impl Caller {
    /// How this caller is written in the ledger's `actor` column.
    pub fn actor(&self) -> String {
        match self {
            Caller::Operator { name } => format!("operator:{name}"),
            Caller::Org(p) => format!("key:{}", p.key_id),
        }
    }

    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator { .. } => Ok(()),
            Caller::Org(_) => Err(ApiError::forbidden(
                "operator_only",
                "this action needs an operator key",
            )),
        }
    }

    /// Operators may act on any org; an org key only on its own, whatever its scopes.
    pub fn authorize_org(&self, org_id: Uuid) -> Result<(), ApiError> {
        match self {
            Caller::Operator { .. } => Ok(()),
            Caller::Org(p) if p.org_id == org_id => Ok(()),
            Caller::Org(_) => Err(ApiError::forbidden(
                "wrong_org",
                "this API key belongs to another organization",
            )),
        }
    }

    /// Operators may do anything; an org key what its scopes allow.
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        self.require_any(&[scope])
    }

    /// An org key needs one of `scopes`; a refusal names them.
    pub fn require_any(&self, scopes: &[Scope]) -> Result<(), ApiError> {
        match self {
            Caller::Org(p) if !scopes.iter().any(|s| p.scopes.contains(*s)) => {
                let names: Vec<String> =
                    scopes.iter().map(|s| format!("`{}`", s.as_str())).collect();
                Err(ApiError::forbidden(
                    "missing_scope",
                    format!("this API key lacks the {} scope", names.join(" or ")),
                ))
            }
            _ => Ok(()),
        }
    }

    /// An org key acting on its own org with `scope` (operators on any org).
    pub fn authorize(&self, org_id: Uuid, scope: Scope) -> Result<(), ApiError> {
        self.authorize_org(org_id)?;
        self.require_scope(scope)
    }

    /// An org key acting on its own org with one of `scopes` (operators on any org).
    pub fn authorize_any(&self, org_id: Uuid, scopes: &[Scope]) -> Result<(), ApiError> {
        self.authorize_org(org_id)?;
        self.require_any(scopes)
    }

    /// Whether this caller may see the org's objects at all (its own org, or an operator).
    pub fn may_act_on(&self, org_id: Uuid) -> bool {
        match self {
            Caller::Operator { .. } => true,
            Caller::Org(p) => p.org_id == org_id,
        }
    }

    /// Like [`Caller::authorize`] for an object found by its own id (a purchase, a topup):
    /// another org's object answers 404 like a missing one, so ids cannot be probed.
    pub fn authorize_object(
        &self,
        org_id: Uuid,
        scopes: &[Scope],
        what: &'static str,
    ) -> Result<(), ApiError> {
        if let Caller::Org(p) = self
            && p.org_id != org_id
        {
            return Err(ApiError::not_found(
                "not_found",
                format!("{what} not found"),
            ));
        }
        self.require_any(scopes)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_api_key",
                    "send your API key as `Authorization: Bearer <key>`",
                )
            })?;
        let secret = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("missing_api_key", "use `Authorization: Bearer <key>`")
            })?;
        if let Some(name) = state.operator_keys.find(secret) {
            return Ok(Caller::Operator { name });
        }
        if let Some(p) = state.keys.get(secret) {
            return Ok(Caller::Org(p));
        }
        match state.store.orgs().authenticate(secret).await? {
            Some(p) => {
                state.keys.put(secret, p.clone());
                Ok(Caller::Org(p))
            }
            None => Err(ApiError::unauthorized(
                "invalid_api_key",
                "this API key is unknown or revoked",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_named_never_by_a_hash_of_their_secret() {
        let keys = OperatorKeys::new(["ana:s3cret-one", "plain-secret", "Bad Name:x"]);
        assert_eq!(keys.find("s3cret-one").as_deref(), Some("ana"));
        assert_eq!(keys.find("plain-secret").as_deref(), Some("key-2"));
        // Not a valid name: the whole entry is the secret.
        assert_eq!(keys.find("Bad Name:x").as_deref(), Some("key-3"));
        assert_eq!(keys.find("ana:s3cret-one"), None);
        let hash = hex::encode(&Sha256::digest(b"plain-secret")[..4]);
        assert!(!keys.find("plain-secret").unwrap().contains(&hash));
    }
}
