//! Reading the ledger: an org's balance and totals, its history, its recent usage.

use std::collections::BTreeMap;

use billing::{Credits, TransferKind};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::*;
use crate::StoreError;

/// An org's balance and what moved it, per kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Balance {
    pub org_id: Uuid,
    /// `available + held`: every credit the org has.
    pub balance: Credits,
    /// What may be spent or held now: the org's account, as of now.
    pub available: Credits,
    /// What its active holds set aside (a hold at or past its expiry is not counted).
    pub held: Credits,
    /// Credits and debits posted per transfer kind, from the org's side.
    pub by_kind: BTreeMap<TransferKind, KindTotals>,
    /// The number of transfers booked on the org so far.
    pub transfer_count: i64,
    /// Credits of its grants that expire in the next 30 days, by day.
    pub expiring: Vec<crate::Expiring>,
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
            used_credits: -self.net_of(TransferKind::Usage)?,
            refunded_credits: -self.net_of(TransferKind::Refund)?,
            reversed_credits: -self.net_of(TransferKind::Reversal)?,
            promo_credits: self.net_of(TransferKind::Promo)?,
            expired_credits: -self.net_of(TransferKind::Expiry)?,
        })
    }
}

/// An org's totals by what moved its balance. Every transfer kind is one term, so
/// `balance = purchased + topup + bonus + adjusted + promo − used − refunded − reversed −
/// expired` holds exactly ([`Totals::IDENTITY`]; checked by `creditflow verify-ledger`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Promotional credits operators granted.
    pub promo_credits: Credits,
    /// Unspent credits that left at their grant's expiry.
    pub expired_credits: Credits,
}

impl Totals {
    pub const IDENTITY: &'static str = "balance = purchased + topup + bonus + adjusted + promo \
         - used - refunded - reversed - expired";

    /// The right-hand side of [`Totals::IDENTITY`].
    pub fn balance(&self) -> Result<Credits, StoreError> {
        Ok(self
            .purchased_credits
            .checked_add(self.topup_credits)?
            .checked_add(self.bonus_credits)?
            .checked_add(self.adjusted_credits)?
            .checked_sub(self.used_credits)?
            .checked_sub(self.refunded_credits)?
            .checked_sub(self.reversed_credits)?
            .checked_add(self.promo_credits)?
            .checked_sub(self.expired_credits)?)
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

impl Ledger<'_> {
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
                      t.reason, t.refs, t.grants, t.created_at
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

    /// The org's balance and per-kind totals, as of the clock's now: credits of grants past
    /// their expiry are not in it even before their expiry is booked (they count as expired).
    pub async fn balance(&self, org_id: Uuid) -> Result<Balance, StoreError> {
        let mut balance = self.balance_now(org_id).await?;
        // What expires next is informational; the balance above is one snapshot.
        balance.expiring = self.grants().expiring(org_id).await?;
        Ok(balance)
    }

    /// The balance and totals as of the clock's now, in one snapshot, without what expires
    /// next: what is due to expire counts as expired, due holds as released.
    pub(crate) async fn balance_now(&self, org_id: Uuid) -> Result<Balance, StoreError> {
        let (mut balance, due, due_holds) = self.booked_balance(org_id).await?;
        if due.is_positive() {
            balance.available = balance.available.checked_sub(due)?;
            let expired = balance.by_kind.entry(TransferKind::Expiry).or_default();
            expired.debits = expired.debits.checked_add(due)?;
        }
        // Holds past their expiry are released at it, booked or not.
        if due_holds.is_positive() {
            balance.available = balance.available.checked_add(due_holds)?;
            let released = balance.by_kind.entry(TransferKind::Release).or_default();
            released.credits = released.credits.checked_add(due_holds)?;
        }
        balance.held = balance
            .debits_of(TransferKind::Hold)
            .checked_sub(balance.credits_of(TransferKind::Release))?;
        balance.balance = balance.available.checked_add(balance.held)?;
        Ok(balance)
    }

    /// The org's balance as booked, per-kind totals, the credits due to expire but not
    /// booked yet (still in that balance) and what due holds set aside (not released yet), in
    /// one statement, so one snapshot: a sweep that commits meanwhile is seen in all of them or
    /// in none.
    async fn booked_balance(
        &self,
        org_id: Uuid,
    ) -> Result<(Balance, Credits, Credits), StoreError> {
        let rows = sqlx::query!(
            r#"SELECT a.credits_posted - a.debits_posted AS "balance!", a.transfer_seq,
                      k.kind AS "kind?", k.credits_posted AS "kind_credits?",
                      k.debits_posted AS "kind_debits?",
                      (SELECT COALESCE(sum(g.remaining), 0) FROM grants g
                        WHERE g.org_id = a.org_id AND g.remaining > 0
                          AND g.expires_at <= COALESCE($2, now())) AS "due!",
                      (SELECT COALESCE(sum(h.amount), 0) FROM holds h
                        WHERE h.org_id = a.org_id AND h.state = 'active'
                          AND h.expires_at <= COALESCE($2, now())) AS "due_holds!"
                 FROM accounts a
                 LEFT JOIN org_kind_totals k ON k.org_id = a.org_id
                WHERE a.org_id = $1"#,
            org_id,
            self.clock.booking_time()
        )
        .fetch_all(&self.pool)
        .await?;
        let first = rows.first().ok_or(StoreError::OrgNotFound)?;
        let due = Credits::from_stored(first.due);
        let due_holds = Credits::from_stored(first.due_holds);
        let mut balance = Balance {
            org_id,
            balance: Credits::from_stored(first.balance),
            available: Credits::from_stored(first.balance),
            held: Credits::ZERO,
            by_kind: BTreeMap::new(),
            transfer_count: first.transfer_seq,
            expiring: Vec::new(),
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
        Ok((balance, due, due_holds))
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
                      t.reason, t.refs, t.grants, t.created_at
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
    grants: serde_json::Value,
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
            grants: serde_json::from_value(self.grants)
                .map_err(|e| StoreError::Decode(format!("transfer grants: {e}")))?,
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
            by_kind.insert(kind, KindTotals { credits, debits });
            // Holds and releases move credits within the balance (available ↔ held).
            if matches!(kind, TransferKind::Hold | TransferKind::Release) {
                continue;
            }
            net = net
                .checked_add(credits.checked_sub(debits).unwrap())
                .unwrap();
        }
        let b = Balance {
            org_id: Uuid::nil(),
            balance: net,
            available: net,
            held: Credits::ZERO,
            by_kind,
            transfer_count: 0,
            expiring: Vec::new(),
        };
        assert_eq!(b.totals().unwrap().balance().unwrap(), b.balance);
    }
}
