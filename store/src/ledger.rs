//! The ledger: booking transfers, balances, history, and the invariant check.
//!
//! Booking always locks the organization's account row first (then system accounts in a fixed
//! order), so all movements of one org are serialized and every transfer gets the org's exact
//! balance after it and its position (`org_seq`) in the org's history.

use std::collections::{BTreeMap, HashMap};

use billing::{
    Account, Batch, Credits, Entry, Posting, Refs, ThresholdPurpose, TransferKind,
    booking::{OrgLedger, Threshold},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Claim, Crossed, OutboxEvent, StoreError, idempotency, outbox};

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

/// An org's balance and what moved it, per kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Balance {
    pub org_id: Uuid,
    pub balance: Credits,
    /// Credits and debits posted per transfer kind, from the org's side.
    pub by_kind: BTreeMap<TransferKind, KindTotals>,
    /// The number of transfers booked on the org so far.
    pub transfer_count: i64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct KindTotals {
    pub credits: Credits,
    pub debits: Credits,
}

impl Balance {
    fn credits_of(&self, kind: TransferKind) -> Credits {
        self.by_kind
            .get(&kind)
            .map(|t| t.credits)
            .unwrap_or_default()
    }
    fn debits_of(&self, kind: TransferKind) -> Credits {
        self.by_kind
            .get(&kind)
            .map(|t| t.debits)
            .unwrap_or_default()
    }
    fn net_of(&self, kind: TransferKind) -> Result<Credits, StoreError> {
        Ok(self.credits_of(kind).checked_sub(self.debits_of(kind))?)
    }
    /// What moved the balance, one term per transfer kind, named so that
    /// [`Totals::IDENTITY`] holds.
    pub fn totals(&self) -> Result<Totals, StoreError> {
        Ok(Totals {
            purchased_credits: self.net_of(TransferKind::Purchase)?,
            topup_credits: self.net_of(TransferKind::Topup)?,
            bonus_credits: self.net_of(TransferKind::Bonus)?,
            adjusted_credits: self.net_of(TransferKind::Adjustment)?,
            used_credits: self.net_of(TransferKind::Usage)?.checked_neg(),
            refunded_credits: self.net_of(TransferKind::Refund)?.checked_neg(),
            reversed_credits: self.net_of(TransferKind::Reversal)?.checked_neg(),
        })
    }
}

/// An org's totals by what moved its balance. Every transfer kind is one term, so
/// `balance = purchased + topup + bonus + adjusted − used − refunded − reversed` holds
/// exactly ([`Totals::IDENTITY`]; checked by `creditflow verify-ledger`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Credits bought through checkouts.
    pub purchased_credits: Credits,
    /// Credits bought by auto-topup.
    pub topup_credits: Credits,
    /// Bonus credits that came with packages.
    pub bonus_credits: Credits,
    /// Net manual adjustments (negative when operators took credits away).
    pub adjusted_credits: Credits,
    /// Credits consumed by usage.
    pub used_credits: Credits,
    /// Purchased or topup credits taken back by refunds and dispute clawbacks (net of
    /// restorations).
    pub refunded_credits: Credits,
    /// Bonus credits taken back by refunds (net of restorations).
    pub reversed_credits: Credits,
}

impl Totals {
    pub const IDENTITY: &'static str =
        "balance = purchased + topup + bonus + adjusted - used - refunded - reversed";

    /// The right-hand side of [`Totals::IDENTITY`].
    pub fn balance(&self) -> Result<Credits, StoreError> {
        Ok(self
            .purchased_credits
            .checked_add(self.topup_credits)?
            .checked_add(self.bonus_credits)?
            .checked_add(self.adjusted_credits)?
            .checked_sub(self.used_credits)?
            .checked_sub(self.refunded_credits)?
            .checked_sub(self.reversed_credits)?)
    }
}

/// A page of an org's history, newest first.
#[derive(Debug, Clone)]
pub struct TransferQuery {
    pub org_id: Uuid,
    pub kinds: Option<Vec<TransferKind>>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only transfers older than this position (the cursor of the previous page).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct TransferPage {
    pub transfers: Vec<Transfer>,
    /// Pass as `before_seq` for the next page; `None` when this was the last one.
    pub next_before_seq: Option<i64>,
}

/// The organizations a transaction has locked, with their running balances. Booking goes
/// through this so every path locks orgs the same way: all at once, in `org_id` order, before
/// any system account (which are updated last, in id order). One lock order, no deadlocks.
pub struct LockedOrgs {
    ledgers: BTreeMap<Uuid, OrgLedger>,
    accounts: HashMap<Uuid, LockedAccount>,
}

struct LockedAccount {
    id: i64,
    /// The org's own overdraft limit, if it has one.
    overdraft_limit: Option<Credits>,
}

impl LockedOrgs {
    /// The org's balance as booked so far in this transaction.
    pub fn balance(&self, org_id: Uuid) -> Option<Credits> {
        self.ledgers.get(&org_id).map(|o| o.balance)
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

handle! {
    /// The ledger: booking, balances, history and the invariant check.
    Ledger
}

impl Ledger<'_> {
    /// Locks the accounts of these organizations (and reads their thresholds) for booking.
    pub async fn lock_orgs(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_ids: &[Uuid],
    ) -> Result<LockedOrgs, StoreError> {
        let mut ids = org_ids.to_vec();
        ids.sort();
        ids.dedup();
        let rows = sqlx::query!(
            r#"SELECT a.id, a.org_id AS "org_id!", a.credits_posted - a.debits_posted AS "balance!",
                      a.transfer_seq, o.overdraft_limit
                 FROM accounts a JOIN orgs o ON o.id = a.org_id
                WHERE a.org_id = ANY($1) ORDER BY a.org_id FOR UPDATE OF a"#,
            &ids
        )
        .fetch_all(&mut **tx)
        .await?;
        if rows.len() != ids.len() {
            return Err(StoreError::OrgNotFound);
        }
        let mut locked = LockedOrgs {
            ledgers: BTreeMap::new(),
            accounts: HashMap::new(),
        };
        for r in rows {
            locked.ledgers.insert(
                r.org_id,
                OrgLedger {
                    balance: Credits::from_stored(r.balance),
                    seq: r.transfer_seq,
                    thresholds: Vec::new(),
                },
            );
            locked.accounts.insert(
                r.org_id,
                LockedAccount {
                    id: r.id,
                    overdraft_limit: r.overdraft_limit.map(Credits::from_stored),
                },
            );
        }
        for t in sqlx::query!(
            "SELECT id, org_id, purpose, threshold FROM org_thresholds WHERE org_id = ANY($1)",
            &ids
        )
        .fetch_all(&mut **tx)
        .await?
        {
            let purpose: ThresholdPurpose = t.purpose.parse()?;
            if let Some(ledger) = locked.ledgers.get_mut(&t.org_id) {
                ledger.thresholds.push(Threshold {
                    id: t.id,
                    purpose,
                    level: Credits::from_stored(t.threshold),
                });
            }
        }
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
        if fresh.is_empty() {
            return Ok(transfers
                .iter()
                .map(|t| BookOutcome::AlreadyBooked(existing[&t.idempotency_key].clone()))
                .collect());
        }
        let batch = Batch::apply(&mut locked.ledgers, fresh.iter().map(|t| &t.posting))?;

        let mut rows = NewRows::default();
        let mut booked = Vec::with_capacity(fresh.len());
        for (t, a) in fresh.iter().zip(&batch.applied) {
            let p = &t.posting;
            let org_account = self.org_account(locked, a.org)?;
            let debit_id = self.account_id(&p.debit, a.org, org_account)?;
            let credit_id = self.account_id(&p.credit, a.org, org_account)?;
            rows.push(
                t.id, a.org, a.seq, debit_id, credit_id, p.amount, p.kind, a.after, t,
            );
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
                created_at: Utc::now(),
            });
        }
        let created_at = rows.insert(tx).await?;
        let mut booked = booked.into_iter();
        let outcomes = transfers
            .iter()
            .map(|t| match existing.get(&t.idempotency_key) {
                Some(found) => BookOutcome::AlreadyBooked(found.clone()),
                None => {
                    let mut b = booked.next().expect("one booked transfer per fresh entry");
                    b.created_at = created_at;
                    BookOutcome::Booked(b)
                }
            })
            .collect();

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
                    transfer_id: Some(fresh[c.posting].id),
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
            .map(|(s, sides)| {
                Ok((
                    self.account_id(&Account::System(*s), Uuid::nil(), 0)?,
                    *sides,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
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
            Account::Org(_) => Err(StoreError::Schema("a transfer between two orgs".into())),
            Account::System(s) => Ok(self.system_account_id(*s)),
        }
    }

    pub(crate) async fn transfers_by_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        keys: &[String],
    ) -> Result<BTreeMap<String, Transfer>, StoreError> {
        let rows = sqlx::query_as!(
            TransferRow,
            r#"SELECT t.id, t.org_id, t.org_seq, t.kind, t.amount,
                      CASE WHEN t.credit_account_id = o.id THEN t.amount ELSE -t.amount END
                        AS "org_amount!",
                      c.code AS counterparty, t.balance_after, t.idempotency_key, t.actor,
                      t.reason, t.refs, t.created_at
                 FROM transfers t
                 JOIN accounts o ON o.org_id = t.org_id
                 JOIN accounts c ON c.id = CASE WHEN t.credit_account_id = o.id
                                                THEN t.debit_account_id ELSE t.credit_account_id END
                WHERE t.idempotency_key = ANY($1)"#,
            keys
        )
        .fetch_all(&mut **tx)
        .await?;
        rows.into_iter()
            .map(|r| r.into_transfer().map(|t| (t.idempotency_key.clone(), t)))
            .collect()
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
        };
        let outcome = self
            .book(&mut tx, org_id, std::slice::from_ref(&new))
            .await?;
        let transfer = outcome[0].transfer().clone();
        idempotency::finish(&mut tx, &scope, idempotency_key, &transfer).await?;
        tx.commit().await?;
        Ok(transfer)
    }

    /// The org's balance and per-kind totals, in one round trip.
    pub async fn balance(&self, org_id: Uuid) -> Result<Balance, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT a.credits_posted - a.debits_posted AS "balance!", a.transfer_seq,
                      k.kind AS "kind?", k.credits_posted AS "kind_credits?",
                      k.debits_posted AS "kind_debits?"
                 FROM accounts a
                 LEFT JOIN org_kind_totals k ON k.org_id = a.org_id
                WHERE a.org_id = $1"#,
            org_id
        )
        .fetch_all(&self.pool)
        .await?;
        let first = rows.first().ok_or(StoreError::OrgNotFound)?;
        let mut balance = Balance {
            org_id,
            balance: Credits::from_stored(first.balance),
            by_kind: BTreeMap::new(),
            transfer_count: first.transfer_seq,
        };
        for r in &rows {
            if let (Some(kind), Some(c), Some(d)) = (&r.kind, r.kind_credits, r.kind_debits) {
                balance.by_kind.insert(
                    kind.parse()?,
                    KindTotals {
                        credits: Credits::from_stored(c),
                        debits: Credits::from_stored(d),
                    },
                );
            }
        }
        Ok(balance)
    }

    /// One page of an org's transfers, newest first, with optional filters.
    pub async fn transfers(&self, q: &TransferQuery) -> Result<TransferPage, StoreError> {
        let kinds: Option<Vec<String>> = q
            .kinds
            .as_ref()
            .map(|ks| ks.iter().map(|k| k.as_str().to_string()).collect());
        let rows = sqlx::query_as!(
            TransferRow,
            r#"WITH org AS (SELECT id FROM accounts WHERE org_id = $1)
               SELECT t.id, t.org_id, t.org_seq, t.kind, t.amount,
                      CASE WHEN t.credit_account_id = org.id THEN t.amount ELSE -t.amount END
                        AS "org_amount!",
                      c.code AS counterparty, t.balance_after, t.idempotency_key, t.actor,
                      t.reason, t.refs, t.created_at
                 FROM transfers t
                 CROSS JOIN org
                 JOIN accounts c ON c.id = CASE WHEN t.credit_account_id = org.id
                                                THEN t.debit_account_id ELSE t.credit_account_id END
                WHERE t.org_id = $1
                  AND ($2::text[] IS NULL OR t.kind = ANY($2))
                  AND ($3::timestamptz IS NULL OR t.created_at >= $3)
                  AND ($4::timestamptz IS NULL OR t.created_at < $4)
                  AND ($5::bigint IS NULL OR t.org_seq < $5)
                ORDER BY t.org_seq DESC
                LIMIT $6"#,
            q.org_id,
            kinds.as_deref(),
            q.from,
            q.to,
            q.before_seq,
            q.limit + 1
        )
        .fetch_all(&self.pool)
        .await?;
        let mut transfers = rows
            .into_iter()
            .map(TransferRow::into_transfer)
            .collect::<Result<Vec<_>, _>>()?;
        let next_before_seq = if transfers.len() as i64 > q.limit {
            transfers.truncate(q.limit as usize);
            transfers.last().map(|t| t.seq)
        } else {
            None
        };
        Ok(TransferPage {
            transfers,
            next_before_seq,
        })
    }

    /// Checks the ledger's invariants over the whole database and returns every violation:
    /// each account's stored totals equal the sums over its transfers; total debits equal total
    /// credits; per-org kind totals and positions match the transfers; each org's last
    /// `balance_after` equals its balance.
    pub async fn check_invariants(&self) -> Result<Vec<String>, StoreError> {
        let mut violations = Vec::new();
        let accounts = sqlx::query!(
            r#"SELECT a.code, a.debits_posted, a.credits_posted,
                      COALESCE((SELECT sum(amount) FROM transfers WHERE debit_account_id = a.id), 0)
                        AS "debit_sum!",
                      COALESCE((SELECT sum(amount) FROM transfers WHERE credit_account_id = a.id), 0)
                        AS "credit_sum!"
                 FROM accounts a"#
        )
        .fetch_all(&self.pool)
        .await?;
        let (mut all_debits, mut all_credits) = (Decimal::ZERO, Decimal::ZERO);
        for a in &accounts {
            all_debits += a.debits_posted;
            all_credits += a.credits_posted;
            if a.debits_posted != a.debit_sum || a.credits_posted != a.credit_sum {
                violations.push(format!(
                    "account {}: stored debits/credits {}/{} but transfers sum to {}/{}",
                    a.code, a.debits_posted, a.credits_posted, a.debit_sum, a.credit_sum
                ));
            }
        }
        if all_debits != all_credits {
            violations.push(format!(
                "total debits {all_debits} differ from total credits {all_credits}"
            ));
        }
        let kinds = sqlx::query!(
            r#"WITH sums AS (
                 SELECT t.org_id, t.kind,
                        COALESCE(sum(t.amount) FILTER (WHERE t.credit_account_id = a.id), 0) AS credits,
                        COALESCE(sum(t.amount) FILTER (WHERE t.debit_account_id = a.id), 0) AS debits
                   FROM transfers t JOIN accounts a ON a.org_id = t.org_id
                  GROUP BY t.org_id, t.kind)
               SELECT COALESCE(s.org_id, k.org_id) AS "org_id!", COALESCE(s.kind, k.kind) AS "kind!",
                      s.credits, s.debits, k.credits_posted AS "stored_credits?",
                      k.debits_posted AS "stored_debits?"
                 FROM sums s FULL JOIN org_kind_totals k ON k.org_id = s.org_id AND k.kind = s.kind
                WHERE s.credits IS DISTINCT FROM k.credits_posted
                   OR s.debits IS DISTINCT FROM k.debits_posted"#
        )
        .fetch_all(&self.pool)
        .await?;
        for k in kinds {
            violations.push(format!(
                "org {} kind {}: stored {:?}/{:?}, transfers {:?}/{:?}",
                k.org_id, k.kind, k.stored_credits, k.stored_debits, k.credits, k.debits
            ));
        }
        let orphans = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM transfers t
                WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.debit_account_id)
                   OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.credit_account_id)
                   OR NOT EXISTS (SELECT 1 FROM accounts a
                                   WHERE a.org_id = t.org_id
                                     AND a.id IN (t.debit_account_id, t.credit_account_id))"#
        )
        .fetch_one(&self.pool)
        .await?;
        if orphans > 0 {
            violations.push(format!(
                "{orphans} transfers name an unknown account or do not move their org's account"
            ));
        }
        let orgs = sqlx::query!(
            r#"SELECT a.code, a.transfer_seq, a.credits_posted - a.debits_posted AS "balance!",
                      (SELECT count(*) FROM transfers t WHERE t.org_id = a.org_id) AS "count!",
                      (SELECT t.balance_after FROM transfers t WHERE t.org_id = a.org_id
                        ORDER BY t.org_seq DESC LIMIT 1) AS last_balance_after
                 FROM accounts a WHERE a.org_id IS NOT NULL"#
        )
        .fetch_all(&self.pool)
        .await?;
        for o in orgs {
            if o.count != o.transfer_seq {
                violations.push(format!(
                    "{}: {} transfers but transfer_seq {}",
                    o.code, o.count, o.transfer_seq
                ));
            }
            if o.last_balance_after.unwrap_or_default() != o.balance {
                violations.push(format!(
                    "{}: balance {} but last balance_after {:?}",
                    o.code, o.balance, o.last_balance_after
                ));
            }
        }
        // The totals' identity: every kind is one term of it, so the balance is the sum of the
        // org's per-kind nets (see `Totals::balance`).
        let unreconciled = sqlx::query!(
            r#"SELECT a.code, a.credits_posted - a.debits_posted AS "balance!",
                      COALESCE((SELECT sum(k.credits_posted - k.debits_posted) FROM org_kind_totals k
                                 WHERE k.org_id = a.org_id), 0) AS "totals!"
                 FROM accounts a WHERE a.org_id IS NOT NULL"#
        )
        .fetch_all(&self.pool)
        .await?;
        for o in unreconciled.into_iter().filter(|o| o.balance != o.totals) {
            violations.push(format!(
                "{}: balance {} but {} gives {}",
                o.code,
                o.balance,
                Totals::IDENTITY,
                o.totals
            ));
        }
        // Stored months chain: each org's latest revision of a month opens with the latest
        // revision of the month before closed, where both are stored.
        let unchained = sqlx::query!(
            r#"WITH latest AS (
                   SELECT DISTINCT ON (org_id, month) org_id, month, opening, closing
                     FROM monthly_summaries ORDER BY org_id, month, revision DESC),
               paired AS (
                   SELECT org_id, month, opening,
                          lag(month) OVER (PARTITION BY org_id ORDER BY month) AS prev_month,
                          lag(closing) OVER (PARTITION BY org_id ORDER BY month) AS prev_closing
                     FROM latest)
               SELECT org_id, month, opening, prev_closing AS "prev_closing!"
                 FROM paired
                WHERE prev_month = (month - interval '1 month')::date
                  AND opening <> prev_closing"#
        )
        .fetch_all(&self.pool)
        .await?;
        for u in unchained {
            violations.push(format!(
                "org {} month {}: opening {} but the month before closed {}",
                u.org_id, u.month, u.opening, u.prev_closing
            ));
        }
        // The monthly usage rollups summaries read add up exactly the recorded events.
        let mut conn = self.pool.acquire().await?;
        violations.extend(crate::rollups::mismatches(&mut conn).await?);
        Ok(violations)
    }

    /// Credits used by the org in the last 24 hours (its burn rate).
    pub async fn usage_last_24h(&self, org_id: Uuid) -> Result<Credits, StoreError> {
        let used = sqlx::query_scalar!(
            r#"SELECT COALESCE(sum(amount), 0) AS "n!" FROM transfers
                WHERE org_id = $1 AND kind = 'usage' AND created_at > now() - interval '24 hours'"#,
            org_id
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Credits::from_stored(used))
    }
}

/// Column-wise rows for one bulk insert.
#[derive(Default)]
struct NewRows {
    ids: Vec<Uuid>,
    orgs: Vec<Uuid>,
    seqs: Vec<i64>,
    debits: Vec<i64>,
    credits: Vec<i64>,
    amounts: Vec<Decimal>,
    kinds: Vec<String>,
    balances: Vec<Decimal>,
    keys: Vec<String>,
    actors: Vec<String>,
    reasons: Vec<String>,
    refs: Vec<serde_json::Value>,
}

impl NewRows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: Uuid,
        org: Uuid,
        seq: i64,
        debit: i64,
        credit: i64,
        amount: Credits,
        kind: TransferKind,
        balance_after: Credits,
        t: &NewTransfer,
    ) {
        self.ids.push(id);
        self.orgs.push(org);
        self.seqs.push(seq);
        self.debits.push(debit);
        self.credits.push(credit);
        self.amounts.push(amount.as_decimal());
        self.kinds.push(kind.as_str().to_string());
        self.balances.push(balance_after.as_decimal());
        self.keys.push(t.idempotency_key.clone());
        self.actors.push(t.actor.clone());
        self.reasons.push(t.reason.clone());
        self.refs
            .push(serde_json::to_value(&t.refs).expect("refs serialize to JSON"));
    }

    /// Inserts all rows in one statement and returns their common `created_at` (the
    /// transaction's start, which is what the column's default records).
    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let created_at = sqlx::query_scalar!(
            r#"WITH inserted AS (
                 INSERT INTO transfers (id, org_id, org_seq, debit_account_id, credit_account_id,
                                        amount, kind, balance_after, idempotency_key, actor,
                                        reason, refs)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[],
                                      $5::bigint[], $6::numeric[], $7::text[], $8::numeric[],
                                      $9::text[], $10::text[], $11::text[], $12::jsonb[])
                 RETURNING 1)
               SELECT now() AS "created_at!""#,
            &self.ids,
            &self.orgs,
            &self.seqs,
            &self.debits,
            &self.credits,
            &self.amounts,
            &self.kinds,
            &self.balances,
            &self.keys,
            &self.actors,
            &self.reasons,
            &self.refs
        )
        .fetch_one(&mut **tx)
        .await?;
        Ok(created_at)
    }
}

struct TransferRow {
    id: Uuid,
    org_id: Uuid,
    org_seq: i64,
    kind: String,
    amount: Decimal,
    org_amount: Decimal,
    counterparty: String,
    balance_after: Decimal,
    idempotency_key: String,
    actor: String,
    reason: String,
    refs: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl TransferRow {
    fn into_transfer(self) -> Result<Transfer, StoreError> {
        Ok(Transfer {
            id: self.id,
            org_id: self.org_id,
            seq: self.org_seq,
            kind: self.kind.parse()?,
            amount: Credits::from_stored(self.amount),
            org_amount: Credits::from_stored(self.org_amount),
            counterparty: self.counterparty,
            balance_after: Credits::from_stored(self.balance_after),
            idempotency_key: self.idempotency_key,
            actor: self.actor,
            reason: self.reason,
            refs: serde_json::from_value(self.refs)
                .map_err(|e| StoreError::Decode(format!("transfer refs: {e}")))?,
            created_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod totals_tests {
    use super::*;

    /// Every transfer kind is a term of the identity: with any per-kind totals, the totals'
    /// right-hand side is the sum of the kinds' nets (which is the balance).
    #[test]
    fn the_identity_covers_every_kind() {
        let mut by_kind = BTreeMap::new();
        let mut net = Credits::ZERO;
        for (i, kind) in TransferKind::ALL.into_iter().enumerate() {
            let credits = Credits::from_stored(Decimal::new(1000 + i as i64 * 37, 3));
            let debits = Credits::from_stored(Decimal::new(400 + i as i64 * 91, 3));
            net = net
                .checked_add(credits.checked_sub(debits).unwrap())
                .unwrap();
            by_kind.insert(kind, KindTotals { credits, debits });
        }
        let b = Balance {
            org_id: Uuid::nil(),
            balance: net,
            by_kind,
            transfer_count: 0,
        };
        assert_eq!(b.totals().unwrap().balance().unwrap(), b.balance);
    }
}
