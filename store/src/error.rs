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
    /// Only a paid payment (a credited purchase, a succeeded topup charge) can be refunded.
    #[error("only a paid {what} can be refunded (this one is {state})")]
    PaymentNotRefundable { what: &'static str, state: String },
    /// The refund asks for more money than is left of the payment.
    #[error(
        "a refund of {asked_minor} would exceed what is left of the payment ({left_minor} of {paid_minor})"
    )]
    RefundExceedsPayment {
        asked_minor: i64,
        left_minor: i64,
        paid_minor: i64,
    },
    /// The refund asks for more money than the payment's unspent credits are worth.
    #[error(
        "a refund of {asked_minor} exceeds what the payment's unspent credits are worth: \
         {refundable_minor} ({refundable_credits} credits)"
    )]
    RefundExceedsUnspent {
        asked_minor: i64,
        refundable_minor: i64,
        refundable_credits: Credits,
    },
    /// A grant's expiry is not after the time it would be booked at.
    #[error("`expires_at` must be in the future")]
    ExpiryNotInFuture,
    /// A new price version must take effect after the newest one.
    #[error("effective_from must be after the newest version's effective_from")]
    PriceVersionNotAfterNewest,
    /// The usage writer stopped or dropped the request (the process is shutting down); nothing
    /// of the request was committed.
    #[error("the usage writer is unavailable: {0}")]
    WriterUnavailable(&'static str),
    /// An org may have only so many of these.
    #[error("too many {0}")]
    TooMany(&'static str),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    #[error(transparent)]
    Billing(#[from] BillingError),
    #[error("database schema problem: {0}")]
    Schema(String),
    #[error("stored data could not be decoded: {0}")]
    Decode(String),
    /// A ledger invariant failed (a bug or a write that bypassed the locks); nothing of the
    /// transaction was committed.
    #[error("ledger invariant broken: {0}")]
    Invariant(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<billing::BookError> for StoreError {
    fn from(e: billing::BookError) -> StoreError {
        match e {
            billing::BookError::InsufficientBalance { balance, would_be } => {
                StoreError::InsufficientBalance { balance, would_be }
            }
            billing::BookError::NotLocked(org) => {
                StoreError::Invariant(format!("booking for org {org}, which is not locked"))
            }
            billing::BookError::Billing(e) => StoreError::Billing(e),
        }
    }
}

impl StoreError {
    /// A grant movement the booking could not make: the entry's caller checked what the
    /// grants hold before (a refund its refundable credits), so this is a broken invariant.
    pub(crate) fn from_grants(e: billing::grants::GrantError, kind: billing::TransferKind) -> Self {
        match e {
            billing::grants::GrantError::Billing(b) => StoreError::Billing(b),
            other => StoreError::Invariant(format!("{kind}: {other}")),
        }
    }

    /// Whether the database could not be reached or is not accepting work (no connection in
    /// time, a dropped connection, a server shutting down or starting up): the request may
    /// succeed later, and nothing of it was committed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => db_unavailable(e),
            StoreError::WriterUnavailable(_) => true,
            _ => false,
        }
    }
}

fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // Class 08: connection exception; 57P01–57P03: admin shutdown, crash shutdown,
            // cannot connect now (starting up or in recovery).
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}
