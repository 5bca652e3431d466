//! What the usage writer knows after each commit: every org's available and held credits, kept
//! in this process so `POST /v1/check` answers without a read.
//!
//! An entry is the state a writer batch committed for an org without budgets (a check of an
//! org with budgets reads them). It is used only while all three hold:
//! - no booking on the org has begun in this process since: [`crate::Ledger::lock_orgs`] drops
//!   the org's entry before any path books, and only the writer puts one back, after its
//!   commit;
//! - the clock is before the org's next expiry (of a hold or a grant), so an expiry is exact
//!   at its instant, as on every read;
//! - it is younger than [`LEASE`]: bookings by other processes, which this one does not see,
//!   are at most that old when a check answers.
//!
//! Otherwise the check reads Postgres, as before. A writer's put that lands after a later
//! booking's drop (a race of a few microseconds) is also bounded by the lease.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use billing::Credits;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How long an entry stands for its org unless configured otherwise: the most a check lags
/// behind another process's booking.
pub const LEASE: Duration = Duration::from_millis(250);

/// Entries kept at most; when full, the map is cleared (each entry is a read saved, no more).
const ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Known {
    pub available: Credits,
    pub held: Credits,
    /// The booking instant it was committed at.
    pub as_of: DateTime<Utc>,
    /// The org's next hold or grant expiry after `as_of`, if any: the entry ends there.
    pub valid_until: Option<DateTime<Utc>>,
    put_at: Instant,
}

/// Shared by every clone of a [`crate::Store`] (the API's and its writers').
#[derive(Clone)]
pub struct Positions {
    known: Arc<Mutex<HashMap<Uuid, Known>>>,
    lease: Duration,
}

impl Default for Positions {
    fn default() -> Self {
        Positions {
            known: Arc::default(),
            lease: LEASE,
        }
    }
}

impl Positions {
    /// The same entries, each standing for `lease` (tests lengthen it to see entries used).
    pub fn with_lease(&self, lease: Duration) -> Positions {
        Positions {
            known: self.known.clone(),
            lease,
        }
    }

    pub(crate) fn put(
        &self,
        org: Uuid,
        available: Credits,
        held: Credits,
        as_of: DateTime<Utc>,
        valid_until: Option<DateTime<Utc>>,
    ) {
        let mut m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if m.len() >= ENTRIES_MAX {
            m.clear();
        }
        m.insert(
            org,
            Known {
                available,
                held,
                as_of,
                valid_until,
                put_at: Instant::now(),
            },
        );
    }

    pub(crate) fn drop_orgs(&self, orgs: &[Uuid]) {
        let mut m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if m.is_empty() {
            return;
        }
        for o in orgs {
            m.remove(o);
        }
    }

    /// The org's entry, if it still stands at `now`.
    pub fn get(&self, org: Uuid, now: DateTime<Utc>) -> Option<Known> {
        let m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let k = *m.get(&org)?;
        let fresh = k.put_at.elapsed() < self.lease && k.valid_until.is_none_or(|v| now < v);
        fresh.then_some(k)
    }
}
