//! What the usage writer knows after each commit: every org's available and held credits, kept
//! in this process so `POST /v1/check` answers without a read.
//!
//! An entry is the state a writer batch committed for an org without budgets (a check of an
//! org with budgets reads them). It is used only while all three hold:
//! - no booking on the org has begun in this process since: [`crate::Ledger::lock_orgs`] drops
//!   the org's entry before any path books (before it waits for the lock) and marks when; only
//!   the writer puts one back, after its commit, and only if no other booking dropped the org
//!   after the writer's own drop (one that waited for the writer's lock commits after it);
//! - the clock is before the org's next expiry (of a hold or a grant), so an expiry is exact
//!   at its instant, as on every read;
//! - it is younger than [`LEASE`]: bookings by other processes, which this one does not see,
//!   are at most that old when a check answers.
//!
//! Otherwise the check reads Postgres, as before.

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

/// An org's slot: what the writer committed, or when a booking last dropped it.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Known(Known),
    Dropped(u64),
}

#[derive(Default)]
struct Slots {
    slots: HashMap<Uuid, Slot>,
    /// The last drop's ticket.
    ticket: u64,
    /// The ticket at which the map was last cleared (its drop marks went with it).
    cleared_at: u64,
}

/// Shared by every clone of a [`crate::Store`] (the API's and its writers').
#[derive(Clone)]
pub struct Positions {
    known: Arc<Mutex<Slots>>,
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

    /// What the writer committed for `org`, by a booking whose drop was `ticket`: kept unless
    /// another booking dropped the org since (it may have committed after the writer).
    pub(crate) fn put(
        &self,
        org: Uuid,
        ticket: u64,
        available: Credits,
        held: Credits,
        as_of: DateTime<Utc>,
        valid_until: Option<DateTime<Utc>>,
    ) {
        let mut m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if ticket < m.cleared_at {
            return;
        }
        if let Some(Slot::Dropped(t)) = m.slots.get(&org)
            && *t > ticket
        {
            return;
        }
        m.slots.insert(
            org,
            Slot::Known(Known {
                available,
                held,
                as_of,
                valid_until,
                put_at: Instant::now(),
            }),
        );
    }

    /// Drops what is known of `orgs`, before a booking on them; returns the drop's ticket.
    pub(crate) fn drop_orgs(&self, orgs: &[Uuid]) -> u64 {
        let mut m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        m.ticket += 1;
        let ticket = m.ticket;
        if m.slots.len() + orgs.len() > ENTRIES_MAX {
            m.slots.clear();
            m.cleared_at = ticket;
        }
        for o in orgs {
            m.slots.insert(*o, Slot::Dropped(ticket));
        }
        ticket
    }

    /// The org's entry, if it still stands at `now`.
    pub fn get(&self, org: Uuid, now: DateTime<Utc>) -> Option<Known> {
        let m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let Slot::Known(k) = *m.slots.get(&org)? else {
            return None;
        };
        let fresh = k.put_at.elapsed() < self.lease && k.valid_until.is_none_or(|v| now < v);
        fresh.then_some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(p: &Positions, org: Uuid, ticket: u64, available: i64) {
        let at = Utc::now();
        p.put(
            org,
            ticket,
            Credits::whole(available),
            Credits::ZERO,
            at,
            None,
        );
    }

    #[test]
    fn a_writer_keeps_what_it_committed_unless_another_booking_dropped_the_org_since() {
        let p = Positions::default();
        let (org, other) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        let writer = p.drop_orgs(&[org]);
        put(&p, org, writer, 10);
        assert_eq!(
            p.get(org, now).map(|k| k.available),
            Some(Credits::whole(10))
        );

        // A refund begins on the org while the writer's next batch holds its lock: the
        // writer's state, put after its commit, would predate the refund's.
        let writer = p.drop_orgs(&[org]);
        let _refund = p.drop_orgs(&[org, other]);
        put(&p, org, writer, 7);
        assert_eq!(p.get(org, now), None);
        // The next batch, after the refund, stands again.
        let next = p.drop_orgs(&[org]);
        put(&p, org, next, 5);
        assert_eq!(
            p.get(org, now).map(|k| k.available),
            Some(Credits::whole(5))
        );
        assert_eq!(p.get(other, now), None, "a drop alone knows nothing");
    }

    #[test]
    fn a_put_older_than_the_last_clear_is_not_kept() {
        let p = Positions::default();
        let org = Uuid::now_v7();
        let writer = p.drop_orgs(&[org]);
        let many: Vec<Uuid> = (0..ENTRIES_MAX).map(|_| Uuid::now_v7()).collect();
        p.drop_orgs(&many);
        put(&p, org, writer, 1);
        assert_eq!(p.get(org, Utc::now()), None);
    }
}
