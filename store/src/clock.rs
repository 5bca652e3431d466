//! The time the ledger books at. In production that is the database's transaction time
//! (`now()`): one clock for every API and worker process, so an org's transfers are in time
//! order whichever process booked them. Tests move a manual clock instead, to book purchases,
//! refunds and adjustments in past months without touching an immutable row.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// Where a booking's `created_at` comes from.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The database's transaction time.
    #[default]
    Database,
    /// A time the caller sets (tests).
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    /// A manual clock showing `at`.
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(Mutex::new(at)))
    }

    /// The time to book at, or `None` for the database's own.
    pub fn booking_time(&self) -> Option<DateTime<Utc>> {
        match self {
            Clock::Database => None,
            Clock::Manual(at) => Some(*at.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// Sets a manual clock (a database clock is left alone).
    pub fn set(&self, to: DateTime<Utc>) {
        if let Clock::Manual(at) = self {
            *at.lock().unwrap_or_else(PoisonError::into_inner) = to;
        }
    }
}
