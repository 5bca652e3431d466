//! Organizations and their API keys.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// How far usage may take it below zero; `None`: the configured default.
    pub overdraft_limit: Option<billing::Credits>,
}

struct OrgRow {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    overdraft_limit: Option<rust_decimal::Decimal>,
}

impl From<OrgRow> for Org {
    fn from(r: OrgRow) -> Org {
        Org {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            overdraft_limit: r.overdraft_limit.map(billing::Credits::from_stored),
        }
    }
}

/// An API key as listed: never the secret, only its prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub prefix: String,
    pub label: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Scope names ([`Scope::as_str`]).
    pub scopes: Vec<String>,
    /// `None`: any source; else the sources it may report usage for, the first its default.
    pub sources: Option<Vec<String>>,
}

/// A freshly created key: the only time its secret is available.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// Who an API key authenticates, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub org_id: Uuid,
    pub scopes: Scopes,
    /// `None`: any source; else the only sources it may report usage for.
    pub sources: Option<Arc<[String]>>,
}

/// The source of usage events that name none: a limited key's first source, else this.
pub const DEFAULT_SOURCE: &str = "default";

impl Principal {
    /// The source a usage event that names none is recorded under.
    pub fn default_source(&self) -> &str {
        self.sources
            .as_ref()
            .and_then(|s| s.first())
            .map_or(DEFAULT_SOURCE, String::as_str)
    }

    pub fn may_report_for(&self, source: &str) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == source))
    }
}

/// What an org key may do. Operators may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Report usage (`POST /v1/usage`).
    UsageWrite,
    /// Read the balance.
    BalanceRead,
    /// Read transactions, summaries, purchases, refunds, topups and alerts.
    HistoryRead,
    /// Billing settings, the payment method, purchases.
    BillingManage,
    /// List, create and revoke API keys.
    KeysManage,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::UsageWrite,
        Scope::BalanceRead,
        Scope::HistoryRead,
        Scope::BillingManage,
        Scope::KeysManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsageWrite => "usage:write",
            Scope::BalanceRead => "balance:read",
            Scope::HistoryRead => "history:read",
            Scope::BillingManage => "billing:manage",
            Scope::KeysManage => "keys:manage",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn names(self) -> Vec<String> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(|s| s.as_str().to_string())
            .collect()
    }

    /// From stored names; a name this build does not know grants nothing.
    pub fn from_names(names: &[String]) -> Scopes {
        names.iter().filter_map(|n| Scope::parse(n)).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

/// What a new key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub scopes: Scopes,
    pub sources: Option<Vec<String>>,
}

impl KeyGrant {
    pub fn full() -> KeyGrant {
        KeyGrant {
            scopes: Scopes::all(),
            sources: None,
        }
    }
}

const KEY_PREFIX: &str = "cf_";
const KEY_RANDOM_CHARS: usize = 40;
const PREFIX_SHOWN_CHARS: usize = 10;

/// Hash under which a key is stored and looked up.
pub fn hash_key(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn generate_secret() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

handle! {
    /// Organizations and their API keys.
    Orgs
}

impl Orgs<'_> {
    /// Creates an organization, its credit account and its first API key, atomically.
    pub async fn create_org(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<(Org, NewApiKey), StoreError> {
        let mut tx = self.pool.begin().await?;
        let org: Org = sqlx::query_as!(
            OrgRow,
            "INSERT INTO orgs (id, name) VALUES ($1, $2)
             RETURNING id, name, created_at, overdraft_limit",
            Uuid::now_v7(),
            name
        )
        .fetch_one(&mut *tx)
        .await?
        .into();
        sqlx::query!(
            "INSERT INTO accounts (code, org_id) VALUES ($1, $2)",
            billing::Account::Org(org.id).code(),
            org.id
        )
        .execute(&mut *tx)
        .await?;
        let key = insert_key(&mut tx, org.id, "initial", &KeyGrant::full(), actor).await?;
        tx.commit().await?;
        Ok((org, key))
    }

    pub async fn get_org(&self, org_id: Uuid) -> Result<Org, StoreError> {
        sqlx::query_as!(
            OrgRow,
            "SELECT id, name, created_at, overdraft_limit FROM orgs WHERE id = $1",
            org_id
        )
        .fetch_optional(&self.pool)
        .await?
        .map(Org::from)
        .ok_or(StoreError::OrgNotFound)
    }

    pub async fn create_api_key(
        &self,
        org_id: Uuid,
        label: &str,
        grant: &KeyGrant,
        actor: &str,
    ) -> Result<NewApiKey, StoreError> {
        self.get_org(org_id).await?;
        let mut tx = self.pool.begin().await?;
        let key = insert_key(&mut tx, org_id, label, grant, actor).await?;
        tx.commit().await?;
        Ok(key)
    }

    pub async fn list_api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
        Ok(sqlx::query_as!(
            ApiKey,
            "SELECT id, org_id, prefix, label, created_by, created_at, revoked_at, scopes, sources
               FROM api_keys WHERE org_id = $1 ORDER BY created_at, id",
            org_id
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets (or with `None` clears, back to the configured default) how far usage may take the
    /// org below zero. Usage already booked stays; later usage is held to the new floor.
    pub async fn set_overdraft_limit(
        &self,
        org_id: Uuid,
        limit: Option<billing::Credits>,
    ) -> Result<Org, StoreError> {
        sqlx::query_as!(
            OrgRow,
            "UPDATE orgs SET overdraft_limit = $2 WHERE id = $1
             RETURNING id, name, created_at, overdraft_limit",
            org_id,
            limit.map(|l| l.as_decimal())
        )
        .fetch_optional(&self.pool)
        .await?
        .map(Org::from)
        .ok_or(StoreError::OrgNotFound)
    }

    /// Revokes a key of this org. Revoking an already revoked key changes nothing.
    pub async fn revoke_api_key(&self, org_id: Uuid, key_id: Uuid) -> Result<ApiKey, StoreError> {
        sqlx::query_as!(
            ApiKey,
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
              WHERE id = $1 AND org_id = $2
              RETURNING id, org_id, prefix, label, created_by, created_at, revoked_at, scopes,
                        sources",
            key_id,
            org_id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("API key"))
    }

    /// The org a live (not revoked) key belongs to, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        if !secret.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let row = sqlx::query!(
            "SELECT id, org_id, scopes, sources FROM api_keys
              WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_key(secret)
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Principal {
            key_id: r.id,
            org_id: r.org_id,
            scopes: Scopes::from_names(&r.scopes),
            sources: r.sources.map(Arc::from),
        }))
    }
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: Uuid,
    label: &str,
    grant: &KeyGrant,
    actor: &str,
) -> Result<NewApiKey, StoreError> {
    let secret = generate_secret();
    let key = sqlx::query_as!(
        ApiKey,
        "INSERT INTO api_keys (id, org_id, prefix, key_hash, label, created_by, scopes, sources)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, org_id, prefix, label, created_by, created_at, revoked_at, scopes, sources",
        Uuid::now_v7(),
        org_id,
        &secret[..PREFIX_SHOWN_CHARS],
        hash_key(&secret),
        label,
        actor,
        &grant.scopes.names(),
        grant.sources.as_deref() as Option<&[String]>
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(NewApiKey { key, secret })
}
