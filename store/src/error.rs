use billing::{BillingError, Credits};
use thiserror::Error;

/// What can go wrong in the store, in domain terms where the caller can act on it.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("organization not found")]
    OrgNotFound,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("insufficient balance: the balance is {balance}, this would take it to {would_be}")]
    InsufficientBalance { balance: Credits, would_be: Credits },
    #[error("{0}")]
    Conflict(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    #[error(transparent)]
    Billing(#[from] BillingError),
    #[error("database schema problem: {0}")]
    Schema(String),
    #[error("stored data could not be decoded: {0}")]
    Decode(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}
