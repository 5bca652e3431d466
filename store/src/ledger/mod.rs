//! The ledger: booking transfers, balances, history, and the invariant check.
//!
//! Booking always locks the organization's account row first (then system accounts in a fixed
//! order), so all movements of one org are serialized and every transfer gets the org's exact
//! balance after it and its position (`org_seq`) in the org's history.

use billing::{Credits, Entry, Refs, TransferKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A movement to book (the ledger's words live in `billing`).
pub type NewTransfer = Entry;

/// A booked transfer, seen from its organization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transfer {
    pub id: Uuid,
    pub org_id: Uuid,
    pub seq: i64,
    pub kind: TransferKind,
    /// Always positive: the amount that moved.
    pub amount: Credits,
    /// Signed from the org's point of view: positive when credits came in.
    pub org_amount: Credits,
    /// The system account on the other side.
    pub counterparty: String,
    pub balance_after: Credits,
    pub idempotency_key: String,
    pub actor: String,
    pub reason: String,
    pub refs: Refs,
    /// The grants it moved, each signed from the grant's side (`grant_id: None` is the org's
    /// overdraft); they add up to `org_amount`.
    #[serde(default)]
    pub grants: Vec<billing::GrantMove>,
    pub created_at: DateTime<Utc>,
}

/// The result of booking one transfer.
#[derive(Debug, Clone, PartialEq)]
pub enum BookOutcome {
    Booked(Transfer),
    /// The idempotency key was booked before; this is that transfer.
    AlreadyBooked(Transfer),
}

impl BookOutcome {
    pub fn transfer(&self) -> &Transfer {
        match self {
            BookOutcome::Booked(t) | BookOutcome::AlreadyBooked(t) => t,
        }
    }
}

handle! {
    /// The ledger: booking, balances, history and the invariant check.
    Ledger
}

mod audit;
mod book;
mod read;
mod rows;

pub(crate) use book::DueHold;
pub use book::LockedOrgs;
pub use read::{Balance, KindTotals, Totals, TransferPage, TransferQuery};
