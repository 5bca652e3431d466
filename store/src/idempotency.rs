//! Idempotency of API writes, stored in the same transaction as the write it protects.
//!
//! The first request with a key inserts `(scope, key, hash of the request)`; a concurrent
//! request with the same key blocks on that row until the first commits (or rolls back, in
//! which case it proceeds as the first). A later request with the same body gets the stored
//! result back; with a different body it is a conflict.

use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};

use crate::StoreError;

/// What a claim on an idempotency key found.
#[derive(Debug)]
pub enum Claim<T> {
    /// The key is new: do the work, then call [`finish`] in the same transaction.
    Fresh,
    /// The key was used before with the same request: here is its result.
    Replay(T),
}

/// A stable hash of a request's identifying content.
pub fn request_hash(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().to_vec()
}

pub async fn claim<T: DeserializeOwned>(
    tx: &mut Transaction<'_, Postgres>,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> Result<Claim<T>, StoreError> {
    let inserted = sqlx::query!(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (scope, key) DO NOTHING",
        scope,
        key,
        hash
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let row = sqlx::query!(
        "SELECT request_hash, result FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key
    )
    .fetch_one(&mut **tx)
    .await?;
    if row.request_hash != hash {
        return Err(StoreError::IdempotencyConflict);
    }
    let result = row
        .result
        .ok_or_else(|| StoreError::Decode("idempotency record without a result".into()))?;
    serde_json::from_value(result)
        .map(Claim::Replay)
        .map_err(|e| StoreError::Decode(e.to_string()))
}

pub async fn finish<T: Serialize>(
    tx: &mut Transaction<'_, Postgres>,
    scope: &str,
    key: &str,
    result: &T,
) -> Result<(), StoreError> {
    let value = serde_json::to_value(result).map_err(|e| StoreError::Decode(e.to_string()))?;
    sqlx::query!(
        "UPDATE idempotency_keys SET result = $3 WHERE scope = $1 AND key = $2",
        scope,
        key,
        value
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
