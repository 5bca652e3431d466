//! Organizations and their API keys.

use chrono::{DateTime, Utc};
use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
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
}

/// A freshly created key: the only time its secret is available.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// Who an API key authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub org_id: Uuid,
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

impl Store {
    /// Creates an organization, its credit account and its first API key, atomically.
    pub async fn create_org(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<(Org, NewApiKey), StoreError> {
        let mut tx = self.pool.begin().await?;
        let org = sqlx::query_as!(
            Org,
            "INSERT INTO orgs (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
            Uuid::now_v7(),
            name
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO accounts (code, org_id) VALUES ($1, $2)",
            billing::Account::Org(org.id).code(),
            org.id
        )
        .execute(&mut *tx)
        .await?;
        let key = insert_key(&mut tx, org.id, "initial", actor).await?;
        tx.commit().await?;
        Ok((org, key))
    }

    pub async fn get_org(&self, org_id: Uuid) -> Result<Org, StoreError> {
        sqlx::query_as!(
            Org,
            "SELECT id, name, created_at FROM orgs WHERE id = $1",
            org_id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::OrgNotFound)
    }

    pub async fn create_api_key(
        &self,
        org_id: Uuid,
        label: &str,
        actor: &str,
    ) -> Result<NewApiKey, StoreError> {
        self.get_org(org_id).await?;
        let mut tx = self.pool.begin().await?;
        let key = insert_key(&mut tx, org_id, label, actor).await?;
        tx.commit().await?;
        Ok(key)
    }

    pub async fn list_api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
        Ok(sqlx::query_as!(
            ApiKey,
            "SELECT id, org_id, prefix, label, created_by, created_at, revoked_at
               FROM api_keys WHERE org_id = $1 ORDER BY created_at, id",
            org_id
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a key of this org. Revoking an already revoked key changes nothing.
    pub async fn revoke_api_key(&self, org_id: Uuid, key_id: Uuid) -> Result<ApiKey, StoreError> {
        sqlx::query_as!(
            ApiKey,
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
              WHERE id = $1 AND org_id = $2
              RETURNING id, org_id, prefix, label, created_by, created_at, revoked_at",
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
            "SELECT id, org_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_key(secret)
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Principal {
            key_id: r.id,
            org_id: r.org_id,
        }))
    }
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: Uuid,
    label: &str,
    actor: &str,
) -> Result<NewApiKey, StoreError> {
    let secret = generate_secret();
    let key = sqlx::query_as!(
        ApiKey,
        "INSERT INTO api_keys (id, org_id, prefix, key_hash, label, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, org_id, prefix, label, created_by, created_at, revoked_at",
        Uuid::now_v7(),
        org_id,
        &secret[..PREFIX_SHOWN_CHARS],
        hash_key(&secret),
        label,
        actor
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(NewApiKey { key, secret })
}
