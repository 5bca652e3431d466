//! Booking: locking the orgs, applying a batch (`billing::Batch::apply`) and writing it, with
//! the check that Postgres agrees; operator adjustments.

use std::collections::{BTreeMap, HashMap};

use billing::{
    Account, Batch, Credits, Flow, Posting, Refs, ThresholdPurpose, Wallet,
    booking::{OrgLedger, Threshold},
};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{rows::NewRows, *};
use crate::{
    Claim, Crossed, OutboxEvent, StoreError, grants, idempotency, outbox, positions::Booker,
};

/// The organizations a transaction has locked, with their running balances. Booking goes
/// through this so every path locks orgs the same way: all at once, in `org_id` order, before
/// any system account (which are updated last, in id order). One lock order, no deadlocks.
pub struct LockedOrgs {
    ledgers: BTreeMap<Uuid, OrgLedger>,
    accounts: HashMap<Uuid, LockedAccount>,
    /// Each org's grants.
    wallets: HashMap<Uuid, Wallet>,
    /// The time this transaction books at: grants due at it expire first.
    now: DateTime<Utc>,
    /// Each org's active holds whose expiry is at or before `now`: released first.
    due_holds: HashMap<Uuid, Vec<DueHold>>,
    /// The orgs with budgets.
    budgeted: std::collections::HashSet<Uuid>,
    /// Each org's next hold expiry after `now`, when it has active holds.
    next_hold_expiry: HashMap<Uuid, DateTime<Utc>>,
    /// This booking's place among the bookings of its orgs, taken with their locks (see
    /// `crate::positions`).
    positions_ticket: u64,
}

/// An active hold past its expiry, to release before anything else is booked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DueHold {
    pub id: Uuid,
    pub amount: Credits,
    pub expires_at: DateTime<Utc>,
}

/// Due holds one booking releases per org at most; the rest wait for the next booking or the
/// sweep (meanwhile reads count them released, and a hold decision counts them held, which
/// refuses more, never less).
const DUE_HOLDS_PER_BOOKING_MAX: i64 = 1000;

struct LockedAccount {
    id: i64,
    /// The org's own overdraft limit, if it has one.
    overdraft_limit: Option<Credits>,
}

impl LockedOrgs {
    /// The org's available balance as this transaction stands: booked so far, less what is due
    /// to expire, plus what due holds give back.
    pub fn balance(&self, org_id: Uuid) -> Option<Credits> {
        let booked = self.ledgers.get(&org_id)?.balance;
        // Less what expires at this transaction's time: booking anything books that first.
        let due = self.wallets.get(&org_id).map_or(Some(Credits::ZERO), |w| {
            w.due(self.now)
                .iter()
                .try_fold(Credits::ZERO, |s, d| s.checked_add(d.1).ok())
        })?;
        let released = self
            .due_holds
            .get(&org_id)
            .map_or(Some(Credits::ZERO), |d| {
                d.iter()
                    .try_fold(Credits::ZERO, |s, h| s.checked_add(h.amount).ok())
            })?;
        booked.checked_sub(due).ok()?.checked_add(released).ok()
    }

    /// What the org's active holds set aside, less the due ones (released first).
    pub fn held(&self, org_id: Uuid) -> Option<Credits> {
        let held = self.wallets.get(&org_id)?.held;
        let due = self.due_holds.get(&org_id).map_or(Credits::ZERO, |d| {
            d.iter()
                .fold(Credits::ZERO, |s, h| s.checked_add(h.amount).unwrap_or(s))
        });
        held.checked_sub(due).ok()
    }

    /// Releases this due hold first too, if the booking does not already (it releases at most
    /// [`DUE_HOLDS_PER_BOOKING_MAX`] of an org's): one it settles late must be released by it.
    pub(crate) fn release_due(&mut self, org_id: Uuid, hold: DueHold) {
        if !self.ledgers.contains_key(&org_id) || hold.expires_at > self.now {
            return;
        }
        let due = self.due_holds.entry(org_id).or_default();
        if !due.iter().any(|d| d.id == hold.id) {
            due.push(hold);
        }
    }

    /// Whether the org has budgets.
    pub fn budgeted(&self, org_id: Uuid) -> bool {
        self.budgeted.contains(&org_id)
    }

    /// The org's next expiry after this transaction's time, of a hold active when it was
    /// locked or of a grant: what the org's balance stays true until, unless booked.
    pub(crate) fn next_expiry(&self, org_id: Uuid) -> Option<DateTime<Utc>> {
        let grants = self.wallets.get(&org_id).and_then(|w| {
            w.grants()
                .iter()
                .filter(|g| g.remaining.is_positive())
                .filter_map(|g| g.terms.expires_at)
                .filter(|e| *e > self.now)
                .min()
        });
        let hold = self.next_hold_expiry.get(&org_id).copied();
        match (grants, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The org's grants as booked so far in this transaction.
    pub fn wallet(&self, org_id: Uuid) -> Option<&Wallet> {
        self.wallets.get(&org_id)
    }

    /// The time this transaction books at.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// This booking's ticket: the writer's state after it stands only if no other path's
    /// booking locked its org since.
    pub(crate) fn positions_ticket(&self) -> u64 {
        self.positions_ticket
    }

    /// How far below zero usage may take the org, if it has a limit of its own.
    pub fn overdraft_limit(&self, org_id: Uuid) -> Option<Credits> {
        self.accounts.get(&org_id).and_then(|o| o.overdraft_limit)
    }

    /// The org's highest threshold for `purpose`: its id and level.
    pub fn threshold(&self, org_id: Uuid, purpose: ThresholdPurpose) -> Option<(i64, Credits)> {
        let t = self.ledgers.get(&org_id)?.threshold(purpose)?;
        Some((t.id, t.level))
    }
}

impl Ledger<'_> {
    /// Locks the accounts of these organizations (and reads their thresholds) for booking.
    pub async fn lock_orgs(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_ids: &[Uuid],
    ) -> Result<LockedOrgs, StoreError> {
        self.lock_orgs_as(tx, org_ids, Booker::Other).await
    }

    /// [`Ledger::lock_orgs`], for `booker`: the usage writer keeps what it commits for checks
    /// (`crate::positions`), and any other booking makes that old.
    pub(crate) async fn lock_orgs_as(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_ids: &[Uuid],
        booker: Booker,
    ) -> Result<LockedOrgs, StoreError> {
        let mut ids = org_ids.to_vec();
        ids.sort();
        ids.dedup();
        // The lock first, in a statement of its own: at READ COMMITTED a statement sees the
        // data as of its start, and only the locked row itself is read again after a wait, so
        // what is read with the lock (held, due holds, budgets) could predate a booking that
        // committed while this one waited. The next statement starts after the lock.
        sqlx::query!(
            "SELECT a.id FROM accounts a WHERE a.org_id = ANY($1) ORDER BY a.org_id FOR UPDATE",
            &ids
        )
        .fetch_all(&mut **tx)
        .await?;
        // Under the lock, so bookings on an org take tickets in the order they book it.
        let ticket = self.positions.begin_booking(&ids, booker);
        // Then, under the lock, the org's thresholds, what its holds set aside (the ledger's
        // own sum, by kind), its due holds and whether it has budgets, in one round trip.
        let rows = sqlx::query!(
            r#"SELECT a.id, a.org_id AS "org_id!", a.credits_posted - a.debits_posted AS "balance!",
                      a.transfer_seq, o.overdraft_limit, COALESCE($2, now()) AS "now!",
                      (SELECT COALESCE(sum(k.debits_posted - k.credits_posted), 0)
                         FROM org_kind_totals k
                        WHERE k.org_id = a.org_id AND k.kind IN ('hold', 'release')) AS "held!",
                      dh.ids AS "due_hold_ids!", dh.amounts AS "due_hold_amounts!",
                      dh.ats AS "due_hold_at!",
                      EXISTS (SELECT 1 FROM budgets b WHERE b.org_id = a.org_id) AS "budgeted!",
                      (SELECT min(h.expires_at) FROM holds h
                        WHERE h.org_id = a.org_id AND h.state = 'active'
                          AND h.expires_at > COALESCE($2, now())) AS next_hold_expiry,
                      ARRAY(SELECT t.id FROM org_thresholds t WHERE t.org_id = a.org_id
                             ORDER BY t.id) AS "threshold_ids!",
                      ARRAY(SELECT t.purpose FROM org_thresholds t WHERE t.org_id = a.org_id
                             ORDER BY t.id) AS "threshold_purposes!",
                      ARRAY(SELECT t.threshold FROM org_thresholds t WHERE t.org_id = a.org_id
                             ORDER BY t.id) AS "threshold_levels!",
                      EXISTS (SELECT 1 FROM grant_backfill b WHERE b.org_id = a.org_id)
                        AS "backfill_pending!"
                 FROM accounts a JOIN orgs o ON o.id = a.org_id
                 -- The org's due holds, soonest first, in one index scan.
                 CROSS JOIN LATERAL (
                   SELECT COALESCE(array_agg(d.id ORDER BY d.expires_at, d.id), '{}') AS ids,
                          COALESCE(array_agg(d.amount ORDER BY d.expires_at, d.id), '{}')
                            AS amounts,
                          COALESCE(array_agg(d.expires_at ORDER BY d.expires_at, d.id), '{}')
                            AS ats
                     FROM (SELECT h.id, h.amount, h.expires_at FROM holds h
                            WHERE h.org_id = a.org_id AND h.state = 'active'
                              AND h.expires_at <= COALESCE($2, now())
                            ORDER BY h.expires_at, h.id LIMIT $3) d) dh
                WHERE a.org_id = ANY($1) ORDER BY a.org_id"#,
            &ids,
            self.clock.booking_time(),
            DUE_HOLDS_PER_BOOKING_MAX
        )
        .fetch_all(&mut **tx)
        .await?;
        if rows.len() != ids.len() {
            return Err(StoreError::OrgNotFound);
        }
        let now = self
            .clock
            .booking_time()
            .or_else(|| rows.first().map(|r| r.now))
            .unwrap_or_else(Utc::now);
        let mut locked = LockedOrgs {
            ledgers: BTreeMap::new(),
            accounts: HashMap::new(),
            wallets: HashMap::new(),
            now,
            due_holds: HashMap::new(),
            budgeted: Default::default(),
            next_hold_expiry: HashMap::new(),
            positions_ticket: ticket,
        };
        let mut held: BTreeMap<Uuid, Credits> = BTreeMap::new();
        for r in rows {
            // A binary that books grants must not book an org whose history they have not
            // been replayed from yet (the backfill would replay its own bookings again).
            if r.backfill_pending {
                return Err(StoreError::WriterUnavailable(
                    "the org's grants are not backfilled yet: `creditflow migrate` must finish",
                ));
            }
            if r.threshold_ids.len() != r.threshold_purposes.len()
                || r.threshold_ids.len() != r.threshold_levels.len()
            {
                return Err(StoreError::Invariant(
                    "an org's threshold columns differ in length".into(),
                ));
            }
            let mut thresholds = Vec::with_capacity(r.threshold_ids.len());
            for ((id, purpose), level) in r
                .threshold_ids
                .iter()
                .zip(&r.threshold_purposes)
                .zip(&r.threshold_levels)
            {
                let purpose: ThresholdPurpose = purpose.parse()?;
                thresholds.push(Threshold {
                    id: *id,
                    purpose,
                    level: Credits::from_stored(*level),
                });
            }
            locked.ledgers.insert(
                r.org_id,
                OrgLedger {
                    balance: Credits::from_stored(r.balance),
                    seq: r.transfer_seq,
                    thresholds,
                },
            );
            locked.accounts.insert(
                r.org_id,
                LockedAccount {
                    id: r.id,
                    overdraft_limit: r.overdraft_limit.map(Credits::from_stored),
                },
            );
            held.insert(r.org_id, Credits::from_stored(r.held));
            if r.budgeted {
                locked.budgeted.insert(r.org_id);
            }
            if let Some(at) = r.next_hold_expiry {
                locked.next_hold_expiry.insert(r.org_id, at);
            }
            if r.due_hold_ids.len() != r.due_hold_amounts.len()
                || r.due_hold_ids.len() != r.due_hold_at.len()
            {
                return Err(StoreError::Invariant(
                    "an org's due hold columns differ in length".into(),
                ));
            }
            if !r.due_hold_ids.is_empty() {
                let due = r
                    .due_hold_ids
                    .iter()
                    .zip(&r.due_hold_amounts)
                    .zip(&r.due_hold_at)
                    .map(|((id, amount), at)| DueHold {
                        id: *id,
                        amount: Credits::from_stored(*amount),
                        expires_at: *at,
                    })
                    .collect();
                locked.due_holds.insert(r.org_id, due);
            }
        }
        let balances: BTreeMap<Uuid, (Credits, Credits)> = locked
            .ledgers
            .iter()
            .map(|(o, l)| (*o, (l.balance, held.get(o).copied().unwrap_or_default())))
            .collect();
        locked.wallets = grants::load_wallets(tx, &balances).await?;
        Ok(locked)
    }

    /// Books transfers for one organization in an open transaction; see [`Ledger::book_locked`].
    pub async fn book(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_id: Uuid,
        transfers: &[NewTransfer],
    ) -> Result<Vec<BookOutcome>, StoreError> {
        let mut locked = self.lock_orgs(tx, &[org_id]).await?;
        self.book_locked(tx, &mut locked, transfers, true).await
    }

    /// Books transfers, in order, for organizations locked by [`Ledger::lock_orgs`] in this
    /// transaction, with one statement per table whatever the number of transfers or orgs.
    ///
    /// Grants first: every grant of a locked org due at the transaction's time expires before
    /// anything else is booked (an expiry transfer to breakage, booked at its `expires_at`), so
    /// nothing booked after an expiry instant can use its credits. Then each transfer moves
    /// grants as its entry's flow says (`billing::Wallet::apply`), and the org's grants must
    /// still add up to its balance.
    ///
    /// With `check_keys`, a transfer whose idempotency key was booked before is not booked
    /// again (its outcome is [`BookOutcome::AlreadyBooked`]); callers whose keys are fresh by
    /// construction skip that lookup. The rules (balances, the overdraft rule, crossings, each
    /// account's sums) are [`Batch::apply`]'s; this writes what it computed and checks that
    /// Postgres agrees: every org account's balance and sequence after the update must be the
    /// batch's, or the transaction fails (someone wrote an account without its lock).
    pub async fn book_locked(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        locked: &mut LockedOrgs,
        transfers: &[NewTransfer],
        check_keys: bool,
    ) -> Result<Vec<BookOutcome>, StoreError> {
        let existing = if check_keys {
            let keys: Vec<String> = transfers
                .iter()
                .map(|t| t.idempotency_key.clone())
                .collect();
            self.transfers_by_key(tx, &keys).await?
        } else {
            BTreeMap::new()
        };
        let fresh: Vec<&NewTransfer> = transfers
            .iter()
            .filter(|t| !existing.contains_key(&t.idempotency_key))
            .collect();
        let now = locked.now;
        let mut expiries = Vec::new();
        let mut expiry_at: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        // Holds past their expiry go back first, at their instants (once: the hold's row says
        // so, and the release's key is the hold's).
        let mut released: Vec<(Uuid, Uuid, Credits, DateTime<Utc>)> = Vec::new();
        for (org, due) in std::mem::take(&mut locked.due_holds) {
            for h in due {
                let e = crate::holds::release_entry(
                    org,
                    h.id,
                    h.amount,
                    "system:hold-expiry",
                    "expired",
                );
                expiry_at.insert(e.id, h.expires_at);
                released.push((h.id, e.id, h.amount, h.expires_at));
                expiries.push(e);
            }
        }
        for (org, wallet) in &locked.wallets {
            for (grant, amount, at) in wallet.due(now) {
                let e = grants::expiry_entry(*org, grant, amount);
                expiry_at.insert(e.id, at);
                expiries.push(e);
            }
        }
        if fresh.is_empty() && expiries.is_empty() {
            return Ok(transfers
                .iter()
                .map(|t| BookOutcome::AlreadyBooked(existing[&t.idempotency_key].clone()))
                .collect());
        }
        self.load_named_grants(tx, locked, &fresh).await?;
        let all: Vec<&NewTransfer> = expiries.iter().chain(fresh.iter().copied()).collect();
        let batch = Batch::apply(&mut locked.ledgers, all.iter().map(|t| &t.posting))?;

        let mut rows = NewRows::default();
        let mut writes = grants::GrantWrites::default();
        let mut booked = Vec::with_capacity(fresh.len());
        for (t, a) in all.iter().zip(&batch.applied) {
            let p = &t.posting;
            let at = expiry_at.get(&t.id).copied();
            let wallet = locked
                .wallets
                .get_mut(&a.org)
                .ok_or(StoreError::OrgNotFound)?;
            let moves = wallet
                .apply(t.id, p.kind, a.delta, &t.flow, at.unwrap_or(now))
                .map_err(|e| StoreError::from_grants(e, p.kind))?;
            let grant_moves = moves.moves.clone();
            writes.record(a.org, p.kind, moves, at.unwrap_or(now), &t.reason);
            let org_account = self.org_account(locked, a.org)?;
            let debit_id = self.account_id(&p.debit, a.org, org_account)?;
            let credit_id = self.account_id(&p.credit, a.org, org_account)?;
            rows.push(
                t.id,
                a.org,
                a.seq,
                debit_id,
                credit_id,
                p.amount,
                p.kind,
                a.after,
                t,
                &grant_moves,
                at,
            );
            if at.is_some() {
                continue;
            }
            booked.push(Transfer {
                id: t.id,
                org_id: a.org,
                seq: a.seq,
                kind: p.kind,
                amount: p.amount,
                org_amount: a.delta,
                counterparty: a.counterparty.code().to_string(),
                balance_after: a.after,
                idempotency_key: t.idempotency_key.clone(),
                actor: t.actor.clone(),
                reason: t.reason.clone(),
                refs: t.refs.clone(),
                grants: grant_moves,
                created_at: Utc::now(),
            });
        }
        // The grants' pair assertion: each org's grants hold its balance (plus its overdraft).
        for (org, ledger) in &locked.ledgers {
            if let Some(w) = locked.wallets.get_mut(org) {
                if batch.orgs.contains_key(org) && w.balance()? != ledger.balance {
                    return Err(StoreError::Invariant(format!(
                        "org {org}: grants hold {} less overdraft, the balance is {}",
                        w.balance()?,
                        ledger.balance
                    )));
                }
                w.compact();
            }
        }
        writes.write(tx).await?;
        let created_at = rows.insert(tx, self.clock.booking_time()).await?;
        crate::holds::mark_expired(tx, &released).await?;
        let mut booked = booked.into_iter();
        let mut outcomes = Vec::with_capacity(transfers.len());
        for t in transfers {
            outcomes.push(match existing.get(&t.idempotency_key) {
                Some(found) => BookOutcome::AlreadyBooked(found.clone()),
                None => {
                    let mut b = booked.next().ok_or_else(|| {
                        StoreError::Invariant("fewer transfers booked than entries".into())
                    })?;
                    b.created_at = created_at;
                    BookOutcome::Booked(b)
                }
            });
        }

        let (mut ids, mut credits, mut debits, mut seqs) = (vec![], vec![], vec![], vec![]);
        for (org, sides) in &batch.orgs {
            ids.push(self.org_account(locked, *org)?);
            credits.push(sides.credits);
            debits.push(sides.debits);
            seqs.push(locked.ledgers[org].seq);
        }
        let stored = sqlx::query!(
            r#"UPDATE accounts a SET credits_posted = a.credits_posted + u.credits,
                                   debits_posted = a.debits_posted + u.debits,
                                   transfer_seq = u.seq
                 FROM UNNEST($1::bigint[], $2::numeric[], $3::numeric[], $4::bigint[])
                   AS u(id, credits, debits, seq)
                WHERE a.id = u.id
            RETURNING a.org_id AS "org_id!", a.credits_posted - a.debits_posted AS "balance!",
                      a.transfer_seq"#,
            &ids,
            &credits,
            &debits,
            &seqs
        )
        .fetch_all(&mut **tx)
        .await?;
        // The pair assertion: Postgres's balance after the update is the one the batch computed.
        // Not a panic: this runs in the shared writer; failing the transaction keeps the ledger
        // as it was and says loudly why.
        for r in &stored {
            let want = &locked.ledgers[&r.org_id];
            if Credits::from_stored(r.balance) != want.balance || r.transfer_seq != want.seq {
                tracing::error!(org_id = %r.org_id, stored = %r.balance, computed = %want.balance,
                                "booking: stored balance differs from the computed one");
                return Err(StoreError::Invariant(format!(
                    "org {}: stored balance {} (seq {}), computed {} (seq {})",
                    r.org_id, r.balance, r.transfer_seq, want.balance, want.seq
                )));
            }
        }
        if stored.len() != batch.orgs.len() {
            return Err(StoreError::Invariant(
                "an org account vanished under its lock".into(),
            ));
        }
        let (mut k_orgs, mut k_kinds, mut k_credits, mut k_debits) =
            (vec![], vec![], vec![], vec![]);
        for ((org, kind), sides) in &batch.kinds {
            k_orgs.push(*org);
            k_kinds.push(kind.as_str().to_string());
            k_credits.push(sides.credits);
            k_debits.push(sides.debits);
        }
        sqlx::query!(
            "INSERT INTO org_kind_totals (org_id, kind, credits_posted, debits_posted)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::numeric[], $4::numeric[])
             ON CONFLICT (org_id, kind) DO UPDATE
               SET credits_posted = org_kind_totals.credits_posted + EXCLUDED.credits_posted,
                   debits_posted = org_kind_totals.debits_posted + EXCLUDED.debits_posted",
            &k_orgs,
            &k_kinds,
            &k_credits,
            &k_debits
        )
        .execute(&mut **tx)
        .await?;
        let crossings: Vec<(Uuid, OutboxEvent)> = batch
            .crossings
            .iter()
            .map(|c| {
                let crossed = Crossed {
                    threshold_id: c.threshold_id,
                    purpose: c.purpose,
                    threshold: c.threshold,
                    balance: c.balance,
                    crossing_seq: c.crossing_seq,
                    transfer_id: Some(all[c.posting].id),
                    cause: None,
                };
                (c.org, OutboxEvent::ThresholdCrossed(crossed))
            })
            .collect();
        outbox::write(tx, &crossings).await?;
        // System accounts last and in id order: they are shared by every org, so their row
        // locks are held for the shortest time, always taken in the same order.
        let systems: BTreeMap<i64, _> = batch
            .systems
            .iter()
            .map(|(s, sides)| (self.system_account_id(*s), *sides))
            .collect();
        for (id, sides) in systems {
            sqlx::query!(
                "UPDATE accounts SET debits_posted = debits_posted + $2,
                                     credits_posted = credits_posted + $3
                  WHERE id = $1",
                id,
                sides.debits,
                sides.credits
            )
            .execute(&mut **tx)
            .await?;
        }
        Ok(outcomes)
    }

    /// Adds to the wallets the grants the entries' flows name that are not loaded (a restore
    /// names grants that may have nothing left).
    async fn load_named_grants(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        locked: &mut LockedOrgs,
        entries: &[&NewTransfer],
    ) -> Result<(), StoreError> {
        let mut missing: Vec<Uuid> = Vec::new();
        for t in entries {
            let named: Vec<Uuid> = match &t.flow {
                Flow::Grants(ids) => ids.clone(),
                Flow::Restore(slices) => slices.iter().map(|s| s.0).collect(),
                _ => continue,
            };
            let wallet = locked.wallets.get(&t.posting.org);
            missing.extend(
                named
                    .into_iter()
                    .filter(|id| wallet.is_none_or(|w| w.grant(*id).is_none())),
            );
        }
        if missing.is_empty() {
            return Ok(());
        }
        for (org, held) in grants::load_grants(tx, &missing).await? {
            if let Some(w) = locked.wallets.get_mut(&org) {
                w.add(held);
            }
        }
        Ok(())
    }

    fn org_account(&self, locked: &LockedOrgs, org: Uuid) -> Result<i64, StoreError> {
        locked
            .accounts
            .get(&org)
            .map(|a| a.id)
            .ok_or_else(|| StoreError::Invariant(format!("org {org} is not locked")))
    }

    fn account_id(
        &self,
        account: &Account,
        org_id: Uuid,
        org_account_id: i64,
    ) -> Result<i64, StoreError> {
        match account {
            Account::Org(id) if *id == org_id => Ok(org_account_id),
            Account::Org(_) => Err(StoreError::Invariant("a transfer between two orgs".into())),
            Account::System(s) => Ok(self.system_account_id(*s)),
        }
    }

    /// Books one operator adjustment, idempotent on the caller's key: the same key and body
    /// return the first result; the same key with another body is a conflict.
    pub async fn post_adjustment(
        &self,
        org_id: Uuid,
        signed_amount: Credits,
        reason: &str,
        actor: &str,
        idempotency_key: &str,
    ) -> Result<Transfer, StoreError> {
        let posting = Posting::adjustment(org_id, signed_amount)?;
        let scope = format!("adjustment:{org_id}");
        let hash =
            idempotency::request_hash(&[signed_amount.to_string().as_bytes(), reason.as_bytes()]);
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(t) =
            idempotency::claim(&mut tx, &scope, idempotency_key, &hash).await?
        {
            return Ok(t);
        }
        let new = NewTransfer {
            id: Uuid::now_v7(),
            posting,
            idempotency_key: format!("{scope}:{idempotency_key}"),
            actor: actor.to_string(),
            reason: reason.to_string(),
            refs: Refs {
                idempotency_key: Some(idempotency_key.to_string()),
                ..Refs::default()
            },
            flow: Flow::Order,
        };
        let outcome = self
            .book(&mut tx, org_id, std::slice::from_ref(&new))
            .await?;
        let transfer = outcome[0].transfer().clone();
        idempotency::finish(&mut tx, &scope, idempotency_key, &transfer).await?;
        tx.commit().await?;
        Ok(transfer)
    }
}
