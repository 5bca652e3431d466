//! What the usage writer knows after each commit: every org's available and held credits, kept
//! in this process so `POST /v1/check` answers without a read.
//!
//! An entry is the state a writer batch committed for an org without budgets (a check of an
//! org with budgets reads them). It is used only while all three hold:
//! - no booking by another path has locked the org in this process since: every booking takes
//!   a ticket as it gets the org's lock ([`crate::Ledger::lock_orgs`]), so tickets follow the
//!   order in which bookings hold the org; another path's drops the org's entry then. The
//!   writer puts an entry after its commit only if no other path's booking locked the org after
//!   its batch did (that one commits after it), and never over a later batch's. A writer batch
//!   in flight leaves the entry standing: until it commits, the entry is what Postgres would
//!   answer too, and its commit puts the next one (a check in the microseconds between the
//!   commit and the put answers as of just before);
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

/// An org's slot: what the writer last committed (and the ticket of its batch), and when a
/// booking by another path last began.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    known: Option<(Known, u64)>,
    other_booking: u64,
}

/// Who books: the usage writer (which puts what it committed) or any other path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Booker {
    UsageWriter,
    Other,
}

#[derive(Default)]
struct Slots {
    slots: HashMap<Uuid, Slot>,
    /// The last booking's ticket.
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

    /// What the writer committed for `org`, by a batch whose booking began at `ticket`: kept
    /// unless another path's booking began since (it may commit after the writer) or a later
    /// batch put its own.
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
        if let Some(slot) = m.slots.get(&org)
            && (slot.other_booking > ticket || slot.known.is_some_and(|(_, t)| t > ticket))
        {
            return;
        }
        if m.slots.len() >= ENTRIES_MAX && !m.slots.contains_key(&org) {
            m.slots.clear();
            m.cleared_at = m.ticket;
        }
        let known = Known {
            available,
            held,
            as_of,
            valid_until,
            put_at: Instant::now(),
        };
        m.slots.entry(org).or_default().known = Some((known, ticket));
    }

    /// A booking on `orgs` has their locks: another path's drops what is known of them.
    /// Returns the booking's ticket.
    pub(crate) fn begin_booking(&self, orgs: &[Uuid], booker: Booker) -> u64 {
        let mut m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        m.ticket += 1;
        let ticket = m.ticket;
        if booker == Booker::UsageWriter {
            return ticket;
        }
        if m.slots.len() + orgs.len() > ENTRIES_MAX {
            m.slots.clear();
            m.cleared_at = ticket;
        }
        for o in orgs {
            *m.slots.entry(*o).or_default() = Slot {
                known: None,
                other_booking: ticket,
            };
        }
        ticket
    }

    /// The org's entry, if it still stands at `now`.
    pub fn get(&self, org: Uuid, now: DateTime<Utc>) -> Option<Known> {
        let m = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let (k, _) = m.slots.get(&org)?.known?;
        let fresh = k.put_at.elapsed() < self.lease && k.valid_until.is_none_or(|v| now < v);
        fresh.then_some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(p: &Positions, org: Uuid, ticket: u64, available: i64) {
        p.put(
            org,
            ticket,
            Credits::whole(available),
            Credits::ZERO,
            Utc::now(),
            None,
        );
    }

    fn available(p: &Positions, org: Uuid) -> Option<Credits> {
        p.get(org, Utc::now()).map(|k| k.available)
    }

    #[test]
    fn a_writer_keeps_what_it_committed_unless_another_path_began_booking_since() {
        let p = Positions::default();
        let (org, other) = (Uuid::now_v7(), Uuid::now_v7());
        let writer = p.begin_booking(&[org], Booker::UsageWriter);
        put(&p, org, writer, 10);
        assert_eq!(available(&p, org), Some(Credits::whole(10)));

        // The writer's next batch in flight leaves it standing (nothing committed yet).
        let writer = p.begin_booking(&[org], Booker::UsageWriter);
        assert_eq!(available(&p, org), Some(Credits::whole(10)));
        // A refund begins on the org while that batch holds its lock: the batch's state, put
        // after its commit, would predate the refund's, so it is not kept.
        let _refund = p.begin_booking(&[org, other], Booker::Other);
        assert_eq!(available(&p, org), None);
        put(&p, org, writer, 7);
        assert_eq!(available(&p, org), None);
        // The next batch, after the refund, stands again.
        let next = p.begin_booking(&[org], Booker::UsageWriter);
        put(&p, org, next, 5);
        assert_eq!(available(&p, org), Some(Credits::whole(5)));
        assert_eq!(available(&p, other), None, "a booking alone knows nothing");
    }

    #[test]
    fn an_older_batch_never_replaces_a_newer_ones_state() {
        let p = Positions::default();
        let org = Uuid::now_v7();
        let first = p.begin_booking(&[org], Booker::UsageWriter);
        let second = p.begin_booking(&[org], Booker::UsageWriter);
        put(&p, org, second, 3);
        put(&p, org, first, 9);
        assert_eq!(available(&p, org), Some(Credits::whole(3)));
    }

    #[test]
    fn a_put_older_than_the_last_clear_is_not_kept() {
        let p = Positions::default();
        let org = Uuid::now_v7();
        let writer = p.begin_booking(&[org], Booker::UsageWriter);
        // Another path books the org, then so many others that the map is cleared: the org's
        // mark goes with it, and the clear's own mark stands for it.
        p.begin_booking(&[org], Booker::Other);
        let many: Vec<Uuid> = (0..=ENTRIES_MAX).map(|_| Uuid::now_v7()).collect();
        p.begin_booking(&many, Booker::Other);
        put(&p, org, writer, 1);
        assert_eq!(available(&p, org), None);
    }
}
