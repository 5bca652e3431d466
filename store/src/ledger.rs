//! The ledger: booking transfers, balances, history, and the invariant check.
//!
//! Booking always locks the organization's account row first (then system accounts in a fixed
//! order), so all movements of one org are serialized and every transfer gets the org's exact
//! balance after it and its position (`org_seq`) in the org's history.

use std::collections::BTreeMap;

use billing::{Account, Credits, Posting, TransferKind};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Claim, Store, StoreError, idempotency};

/// A movement to book, with its audit trail.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub posting: Posting,
    /// Unique forever: booking the same key twice books once.
    pub idempotency_key: String,
    /// Who did it: `key:{id}`, `operator:{name}`, `workflow:{id}`, `user:{id}` …
    pub actor: String,
    pub reason: String,
    /// References: purchase id, payment ids, usage event id, price version …
    pub refs: serde_json::Value,
}

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
    pub refs: serde_json::Value,
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
    /// Credits bought, by checkout or auto-topup.
    pub fn purchased(&self) -> Result<Credits, StoreError> {
        Ok(self
            .net_of(TransferKind::Purchase)?
            .checked_add(self.net_of(TransferKind::Topup)?)?)
    }
    pub fn bonus(&self) -> Result<Credits, StoreError> {
        self.net_of(TransferKind::Bonus)
    }
    /// Credits consumed by usage.
    pub fn used(&self) -> Result<Credits, StoreError> {
        Ok(self.net_of(TransferKind::Usage)?.checked_neg())
    }
    /// Credits taken back by refunds.
    pub fn refunded(&self) -> Result<Credits, StoreError> {
        Ok(self.net_of(TransferKind::Refund)?.checked_neg())
    }
    /// Net manual adjustments (positive when operators added credits).
    pub fn adjusted(&self) -> Result<Credits, StoreError> {
        self.net_of(TransferKind::Adjustment)
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

struct OrgAccount {
    id: i64,
    balance: Credits,
    seq: i64,
}

impl Store {
    /// Books transfers for one organization in an open transaction, in order, and returns one
    /// outcome per transfer. Transfers whose idempotency key was booked before are not booked
    /// again. A transfer that may not overdraw and would take the balance below zero fails the
    /// whole call with [`StoreError::InsufficientBalance`].
    pub async fn book(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_id: Uuid,
        transfers: &[NewTransfer],
    ) -> Result<Vec<BookOutcome>, StoreError> {
        let account = lock_org_account(tx, org_id).await?;

        // Keys booked before (under the same lock, so no one else can be booking them now).
        let keys: Vec<String> = transfers
            .iter()
            .map(|t| t.idempotency_key.clone())
            .collect();
        let existing = self.transfers_by_key(tx, org_id, account.id, &keys).await?;

        let mut balance = account.balance;
        let mut seq = account.seq;
        let mut outcomes = Vec::with_capacity(transfers.len());
        let mut rows = NewRows::default();
        let mut system_deltas: BTreeMap<i64, (Decimal, Decimal)> = BTreeMap::new();
        let mut kind_deltas: BTreeMap<TransferKind, (Decimal, Decimal)> = BTreeMap::new();
        for t in transfers {
            if let Some(found) = existing.get(&t.idempotency_key) {
                outcomes.push(BookOutcome::AlreadyBooked(found.clone()));
                continue;
            }
            let p = &t.posting;
            if p.org != org_id {
                return Err(StoreError::Schema(
                    "posting for another org in this batch".into(),
                ));
            }
            let amount = p.amount.positive()?;
            let delta = p.org_delta();
            let after = balance.checked_add(delta)?;
            if delta.is_negative() && after.is_negative() && !p.may_overdraw() {
                return Err(StoreError::InsufficientBalance {
                    balance,
                    would_be: after,
                });
            }
            balance = after;
            seq += 1;
            let (debit_id, credit_id) = (
                self.account_id(&p.debit, org_id, account.id)?,
                self.account_id(&p.credit, org_id, account.id)?,
            );
            let counterparty = if delta.is_positive() {
                p.debit
            } else {
                p.credit
            };
            let (system_id, is_debit_side) = if delta.is_positive() {
                (debit_id, true)
            } else {
                (credit_id, false)
            };
            let entry = system_deltas.entry(system_id).or_default();
            let kind_entry = kind_deltas.entry(p.kind).or_default();
            // The system account is on the opposite side of the org: when it is debited the
            // org is credited, and the other way round.
            if is_debit_side {
                entry.0 += amount.as_decimal();
                kind_entry.0 += amount.as_decimal();
            } else {
                entry.1 += amount.as_decimal();
                kind_entry.1 += amount.as_decimal();
            }
            let id = Uuid::now_v7();
            rows.push(id, seq, debit_id, credit_id, amount, p.kind, balance, t);
            outcomes.push(BookOutcome::Booked(Transfer {
                id,
                org_id,
                seq,
                kind: p.kind,
                amount,
                org_amount: delta,
                counterparty: counterparty.code(),
                balance_after: balance,
                idempotency_key: t.idempotency_key.clone(),
                actor: t.actor.clone(),
                reason: t.reason.clone(),
                refs: t.refs.clone(),
                created_at: Utc::now(),
            }));
        }
        if rows.ids.is_empty() {
            return Ok(outcomes);
        }

        let created_at = rows.insert(tx, org_id).await?;
        for o in &mut outcomes {
            if let BookOutcome::Booked(t) = o {
                t.created_at = created_at;
            }
        }
        let (org_credits, org_debits) = kind_deltas
            .values()
            .fold((Decimal::ZERO, Decimal::ZERO), |(c, d), (kc, kd)| {
                (c + kc, d + kd)
            });
        sqlx::query!(
            "UPDATE accounts SET credits_posted = credits_posted + $2,
                                 debits_posted = debits_posted + $3, transfer_seq = $4
              WHERE id = $1",
            account.id,
            org_credits,
            org_debits,
            seq
        )
        .execute(&mut **tx)
        .await?;
        // One update per system account, in id order: a fixed lock order prevents deadlocks.
        for (id, (debits, credits)) in system_deltas {
            sqlx::query!(
                "UPDATE accounts SET debits_posted = debits_posted + $2,
                                     credits_posted = credits_posted + $3
                  WHERE id = $1",
                id,
                debits,
                credits
            )
            .execute(&mut **tx)
            .await?;
        }
        for (kind, (credits, debits)) in kind_deltas {
            sqlx::query!(
                "INSERT INTO org_kind_totals (org_id, kind, credits_posted, debits_posted)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (org_id, kind) DO UPDATE
                   SET credits_posted = org_kind_totals.credits_posted + EXCLUDED.credits_posted,
                       debits_posted = org_kind_totals.debits_posted + EXCLUDED.debits_posted",
                org_id,
                kind.as_str(),
                credits,
                debits
            )
            .execute(&mut **tx)
            .await?;
        }
        Ok(outcomes)
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

    async fn transfers_by_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_id: Uuid,
        org_account_id: i64,
        keys: &[String],
    ) -> Result<BTreeMap<String, Transfer>, StoreError> {
        let rows = sqlx::query_as!(
            TransferRow,
            r#"SELECT t.id, t.org_id, t.org_seq, t.kind, t.amount,
                      CASE WHEN t.credit_account_id = $2 THEN t.amount ELSE -t.amount END
                        AS "org_amount!",
                      c.code AS counterparty, t.balance_after, t.idempotency_key, t.actor,
                      t.reason, t.refs, t.created_at
                 FROM transfers t
                 JOIN accounts c ON c.id = CASE WHEN t.credit_account_id = $2
                                                THEN t.debit_account_id ELSE t.credit_account_id END
                WHERE t.idempotency_key = ANY($3) AND t.org_id = $1"#,
            org_id,
            org_account_id,
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
            posting,
            idempotency_key: format!("{scope}:{idempotency_key}"),
            actor: actor.to_string(),
            reason: reason.to_string(),
            refs: serde_json::json!({ "idempotency_key": idempotency_key }),
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
        Ok(violations)
    }
}

async fn lock_org_account(
    tx: &mut Transaction<'_, Postgres>,
    org_id: Uuid,
) -> Result<OrgAccount, StoreError> {
    let row = sqlx::query!(
        r#"SELECT id, credits_posted - debits_posted AS "balance!", transfer_seq
             FROM accounts WHERE org_id = $1 FOR UPDATE"#,
        org_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::OrgNotFound)?;
    Ok(OrgAccount {
        id: row.id,
        balance: Credits::from_stored(row.balance),
        seq: row.transfer_seq,
    })
}

/// Column-wise rows for one bulk insert.
#[derive(Default)]
struct NewRows {
    ids: Vec<Uuid>,
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
        seq: i64,
        debit: i64,
        credit: i64,
        amount: Credits,
        kind: TransferKind,
        balance_after: Credits,
        t: &NewTransfer,
    ) {
        self.ids.push(id);
        self.seqs.push(seq);
        self.debits.push(debit);
        self.credits.push(credit);
        self.amounts.push(amount.as_decimal());
        self.kinds.push(kind.as_str().to_string());
        self.balances.push(balance_after.as_decimal());
        self.keys.push(t.idempotency_key.clone());
        self.actors.push(t.actor.clone());
        self.reasons.push(t.reason.clone());
        self.refs.push(t.refs.clone());
    }

    /// Inserts all rows in one statement and returns their common `created_at`.
    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        org_id: Uuid,
    ) -> Result<DateTime<Utc>, StoreError> {
        let created_at: DateTime<Utc> = sqlx::query_scalar!(
            r#"INSERT INTO transfers (id, org_id, org_seq, debit_account_id, credit_account_id,
                                      amount, kind, balance_after, idempotency_key, actor,
                                      reason, refs)
               SELECT u.id, $1, u.seq, u.debit, u.credit, u.amount, u.kind, u.balance_after,
                      u.key, u.actor, u.reason, u.refs
                 FROM UNNEST($2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[],
                             $6::numeric[], $7::text[], $8::numeric[], $9::text[], $10::text[],
                             $11::text[], $12::jsonb[])
                   AS u(id, seq, debit, credit, amount, kind, balance_after, key, actor,
                        reason, refs)
               RETURNING created_at"#,
            org_id,
            &self.ids,
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
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Schema("insert returned no rows".into()))?;
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
            refs: self.refs,
            created_at: self.created_at,
        })
    }
}
