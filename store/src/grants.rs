//! Credit grants as stored: the `grants` table, loaded into `billing::Wallet`s under the orgs'
//! locks, written back by the booking that moved them; operators' promotional grants; the
//! expiry sweep; the backfill of balances that predate grants.
//!
//! The rules (burn-down order, overdraft, expiry) are `billing::grants`'; this reads and
//! writes what they decide.

use std::collections::{BTreeMap, HashMap, HashSet};

use billing::{
    Credits, Entry, Flow, GrantCategory, GrantSource, GrantTerms, Posting, Refs, TransferKind,
    Wallet,
    grants::{AppliesTo, Effect, Held, Made},
};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{StoreError, idempotency};

/// A grant as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditGrant {
    pub id: Uuid,
    pub org_id: Uuid,
    pub source: GrantSource,
    pub category: GrantCategory,
    pub purchase_id: Option<Uuid>,
    pub topup_id: Option<Uuid>,
    pub parent_grant_id: Option<Uuid>,
    pub amount: Credits,
    pub remaining: Credits,
    pub consumed: Credits,
    pub expired: Credits,
    pub refunded: Credits,
    pub cost_basis_minor_per_credit: Decimal,
    pub priority: u8,
    pub effective_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub applies_to: Option<AppliesTo>,
    pub reason: String,
}

impl CreditGrant {
    /// Whether it is past its expiry at `at` (its credits may be due: not booked by the sweep
    /// yet, which no balance counts).
    pub fn is_due_at(&self, at: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= at)
    }

    /// Whether its credits have left at its expiry: booked, or due at `at`.
    pub fn is_expired_at(&self, at: DateTime<Utc>) -> bool {
        self.expired.is_positive() || self.is_due_at(at)
    }
}

/// Which grants a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    /// Credits left and not past expiry.
    Active,
    /// Past its expiry.
    Expired,
    /// Fully used or refunded, never expired.
    Depleted,
}

#[derive(Debug, Clone)]
pub struct GrantQuery {
    pub org_id: Uuid,
    pub state: Option<GrantState>,
    pub source: Option<GrantSource>,
    /// Grants after this id (the cursor of the previous page; ids are time-ordered).
    pub after: Option<Uuid>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct GrantPage {
    pub grants: Vec<CreditGrant>,
    /// Pass as `after` for the next page; `None` when this was the last one.
    pub next_after: Option<Uuid>,
}

/// A promotional grant an operator asks for.
#[derive(Debug, Clone)]
pub struct NewPromo {
    pub org_id: Uuid,
    pub amount: Credits,
    pub priority: u8,
    pub expires_at: Option<DateTime<Utc>>,
    pub applies_to: Option<AppliesTo>,
    pub reason: String,
}

handle! {
    /// Credit grants.
    Grants
}

struct GrantRow {
    id: Uuid,
    org_id: Uuid,
    source: String,
    category: String,
    purchase_id: Option<Uuid>,
    topup_id: Option<Uuid>,
    parent_grant_id: Option<Uuid>,
    amount: Decimal,
    remaining: Decimal,
    consumed: Decimal,
    expired: Decimal,
    refunded: Decimal,
    cost_basis_minor_per_credit: Decimal,
    priority: i16,
    effective_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    applies_to: Option<serde_json::Value>,
    reason: String,
}

impl GrantRow {
    fn into_grant(self) -> Result<CreditGrant, StoreError> {
        Ok(CreditGrant {
            id: self.id,
            org_id: self.org_id,
            source: self.source.parse()?,
            category: self.category.parse()?,
            purchase_id: self.purchase_id,
            topup_id: self.topup_id,
            parent_grant_id: self.parent_grant_id,
            amount: Credits::from_stored(self.amount),
            remaining: Credits::from_stored(self.remaining),
            consumed: Credits::from_stored(self.consumed),
            expired: Credits::from_stored(self.expired),
            refunded: Credits::from_stored(self.refunded),
            cost_basis_minor_per_credit: self.cost_basis_minor_per_credit,
            priority: u8::try_from(self.priority)
                .map_err(|_| StoreError::Decode("grant priority".into()))?,
            effective_at: self.effective_at,
            expires_at: self.expires_at,
            applies_to: self
                .applies_to
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StoreError::Decode(format!("grant applies_to: {e}")))?,
            reason: self.reason,
        })
    }

    fn into_held(self) -> Result<(Uuid, Held), StoreError> {
        let g = self.into_grant()?;
        Ok((
            g.org_id,
            Held {
                id: g.id,
                effective_at: g.effective_at,
                remaining: g.remaining,
                terms: GrantTerms {
                    source: g.source,
                    category: g.category,
                    cost_basis_minor_per_credit: g.cost_basis_minor_per_credit,
                    priority: g.priority,
                    expires_at: g.expires_at,
                    applies_to: g.applies_to,
                    purchase_id: g.purchase_id,
                    topup_id: g.topup_id,
                    parent_grant_id: g.parent_grant_id,
                },
            },
        ))
    }
}

/// Loads the wallets of locked orgs: their grants with credits left (the partial index
/// `grants_org_active`; grants a flow names that have none left are loaded by name, see
/// `Ledger::load_named_grants`), each org's overdraft being what its grants hold beyond its
/// balance.
pub(crate) async fn load_wallets(
    tx: &mut Transaction<'_, Postgres>,
    balances: &BTreeMap<Uuid, (Credits, Credits)>,
) -> Result<HashMap<Uuid, Wallet>, StoreError> {
    let orgs: Vec<Uuid> = balances.keys().copied().collect();
    let rows = sqlx::query_as!(
        GrantRow,
        "SELECT id, org_id, source, category, purchase_id, topup_id, parent_grant_id, amount,
                remaining, consumed, expired, refunded, cost_basis_minor_per_credit, priority,
                effective_at, expires_at, applies_to, reason
           FROM grants WHERE org_id = ANY($1) AND remaining > 0",
        &orgs
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut held: HashMap<Uuid, Vec<Held>> = HashMap::new();
    for r in rows {
        let (org, h) = r.into_held()?;
        held.entry(org).or_default().push(h);
    }
    let mut wallets = HashMap::with_capacity(balances.len());
    for (org, (balance, on_hold)) in balances {
        let grants = held.remove(org).unwrap_or_default();
        let sum = grants
            .iter()
            .try_fold(Credits::ZERO, |s, g| s.checked_add(g.remaining))?;
        // The grants hold the available balance and what holds set aside, less any overdraft.
        let overdraft = sum.checked_sub(*balance)?.checked_sub(*on_hold)?;
        if overdraft.is_negative() {
            return Err(StoreError::Invariant(format!(
                "org {org}: its grants hold {sum}, less than its balance {balance} \
                 (has `creditflow migrate` backfilled its grants?)"
            )));
        }
        wallets.insert(*org, Wallet::new(grants, overdraft).with_held(*on_hold));
    }
    Ok(wallets)
}

/// Grants by id, with their orgs (a restore's, whatever they hold).
pub(crate) async fn load_grants(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Held)>, StoreError> {
    sqlx::query_as!(
        GrantRow,
        "SELECT id, org_id, source, category, purchase_id, topup_id, parent_grant_id, amount,
                remaining, consumed, expired, refunded, cost_basis_minor_per_credit, priority,
                effective_at, expires_at, applies_to, reason
           FROM grants WHERE id = ANY($1)",
        ids
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(GrantRow::into_held)
    .collect()
}

/// What a booking did to grants, written in two statements: the grants it made (with their
/// state after the booking) and the changes to the ones that were there.
#[derive(Default)]
pub(crate) struct GrantWrites {
    made: Vec<(Uuid, Made, DateTime<Utc>, String)>,
    made_ids: HashSet<Uuid>,
    /// Per grant: consumed, expired, refunded added.
    drawn: BTreeMap<Uuid, [Decimal; 3]>,
}

impl GrantWrites {
    /// Records one transfer's moves.
    pub(crate) fn record(
        &mut self,
        org: Uuid,
        kind: TransferKind,
        moves: billing::grants::Moves,
        at: DateTime<Utc>,
        reason: &str,
    ) {
        for m in moves.made {
            self.made_ids.insert(m.id);
            self.made.push((org, m, at, reason.to_string()));
        }
        // A credit's negative move on the grant it made is the overdraft it repaid: consumed.
        let effect = if moves.moves.iter().any(|m| m.amount.is_positive()) {
            Effect::Consumed
        } else {
            Effect::of(kind)
        };
        for m in moves.moves {
            if let (Some(id), true) = (m.grant_id, m.amount.is_negative()) {
                let slot = match effect {
                    Effect::Consumed => 0,
                    Effect::Expired => 1,
                    Effect::Refunded => 2,
                };
                self.drawn.entry(id).or_default()[slot] -= m.amount.as_decimal();
            }
        }
    }

    pub(crate) async fn write(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if !self.made.is_empty() {
            let mut c = MadeColumns::default();
            for (org, m, at, reason) in &self.made {
                let d = self.drawn.get(&m.id).copied().unwrap_or_default();
                let remaining = m.amount.as_decimal() - d[0] - d[1] - d[2];
                c.ids.push(m.id);
                c.orgs.push(*org);
                c.sources.push(m.terms.source.as_str().to_string());
                c.categories.push(m.terms.category.as_str().to_string());
                c.purchases.push(m.terms.purchase_id);
                c.topups.push(m.terms.topup_id);
                c.parents.push(m.terms.parent_grant_id);
                c.amounts.push(m.amount.as_decimal());
                c.remaining.push(remaining);
                c.consumed.push(d[0]);
                c.expired.push(d[1]);
                c.refunded.push(d[2]);
                c.bases.push(m.terms.cost_basis_minor_per_credit);
                c.priorities.push(i16::from(m.terms.priority));
                c.effective.push(*at);
                c.expires.push(m.terms.expires_at);
                c.applies.push(
                    m.terms
                        .applies_to
                        .as_ref()
                        .and_then(|a| serde_json::to_value(a).ok()),
                );
                c.reasons.push(reason.clone());
            }
            sqlx::query!(
                "INSERT INTO grants (id, org_id, source, category, purchase_id, topup_id,
                                     parent_grant_id, amount, remaining, consumed, expired,
                                     refunded, cost_basis_minor_per_credit, priority,
                                     effective_at, expires_at, applies_to, reason)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                      $5::uuid[], $6::uuid[], $7::uuid[], $8::numeric[],
                                      $9::numeric[], $10::numeric[], $11::numeric[],
                                      $12::numeric[], $13::numeric[], $14::smallint[],
                                      $15::timestamptz[], $16::timestamptz[], $17::jsonb[],
                                      $18::text[])",
                &c.ids,
                &c.orgs,
                &c.sources,
                &c.categories,
                &c.purchases as &[Option<Uuid>],
                &c.topups as &[Option<Uuid>],
                &c.parents as &[Option<Uuid>],
                &c.amounts,
                &c.remaining,
                &c.consumed,
                &c.expired,
                &c.refunded,
                &c.bases,
                &c.priorities,
                &c.effective,
                &c.expires as &[Option<DateTime<Utc>>],
                &c.applies as &[Option<serde_json::Value>],
                &c.reasons
            )
            .execute(&mut **tx)
            .await?;
        }
        let (mut ids, mut consumed, mut expired, mut refunded) = (vec![], vec![], vec![], vec![]);
        for (id, d) in &self.drawn {
            if !self.made_ids.contains(id) {
                ids.push(*id);
                consumed.push(d[0]);
                expired.push(d[1]);
                refunded.push(d[2]);
            }
        }
        if !ids.is_empty() {
            let updated = sqlx::query!(
                "UPDATE grants g SET consumed = g.consumed + u.c, expired = g.expired + u.e,
                                     refunded = g.refunded + u.r,
                                     remaining = g.remaining - u.c - u.e - u.r
                   FROM UNNEST($1::uuid[], $2::numeric[], $3::numeric[], $4::numeric[])
                     AS u(id, c, e, r)
                  WHERE g.id = u.id",
                &ids,
                &consumed,
                &expired,
                &refunded
            )
            .execute(&mut **tx)
            .await?;
            if updated.rows_affected() != ids.len() as u64 {
                return Err(StoreError::Invariant("a drawn grant vanished".into()));
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct MadeColumns {
    ids: Vec<Uuid>,
    orgs: Vec<Uuid>,
    sources: Vec<String>,
    categories: Vec<String>,
    purchases: Vec<Option<Uuid>>,
    topups: Vec<Option<Uuid>>,
    parents: Vec<Option<Uuid>>,
    amounts: Vec<Decimal>,
    remaining: Vec<Decimal>,
    consumed: Vec<Decimal>,
    expired: Vec<Decimal>,
    refunded: Vec<Decimal>,
    bases: Vec<Decimal>,
    priorities: Vec<i16>,
    effective: Vec<DateTime<Utc>>,
    expires: Vec<Option<DateTime<Utc>>>,
    applies: Vec<Option<serde_json::Value>>,
    reasons: Vec<String>,
}

/// The expiry entry of a grant due at `expires_at`: its unspent credits to breakage, keyed
/// by the grant so it is booked once.
pub(crate) fn expiry_entry(org: Uuid, grant: Uuid, amount: Credits) -> Entry {
    Entry::new(
        Posting::expiry(org, amount),
        format!("expiry:{grant}"),
        "system:expiry",
        format!("grant {grant} expired"),
        Refs::default(),
    )
    .with_flow(Flow::Grants(vec![grant]))
}

/// Credits of an org's grants expiring soon, by day (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Expiring {
    pub date: NaiveDate,
    pub credits: Credits,
}

/// How far ahead a balance shows expiring credits.
pub const EXPIRING_WINDOW_DAYS: i64 = 30;

impl Grants<'_> {
    /// The org's credits expiring after the clock's now and within the next
    /// [`EXPIRING_WINDOW_DAYS`], by day (UTC). Credits already due are no balance's (see
    /// `Ledger::balance`).
    pub async fn expiring(&self, org_id: Uuid) -> Result<Vec<Expiring>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT expires_at AS "expires_at!", remaining
                 FROM grants
                WHERE org_id = $1 AND remaining > 0
                  AND expires_at > COALESCE($2, now())
                  AND expires_at <= COALESCE($2, now()) + make_interval(days => $3)
                ORDER BY expires_at"#,
            org_id,
            self.clock.booking_time(),
            EXPIRING_WINDOW_DAYS as i32
        )
        .fetch_all(&self.pool)
        .await?;
        let mut expiring: Vec<Expiring> = Vec::new();
        for r in rows {
            let credits = Credits::from_stored(r.remaining);
            let date = r.expires_at.date_naive();
            match expiring.last_mut() {
                Some(e) if e.date == date => e.credits = e.credits.checked_add(credits)?,
                _ => expiring.push(Expiring { date, credits }),
            }
        }
        Ok(expiring)
    }

    /// One page of an org's grants, oldest first.
    pub async fn list(&self, q: &GrantQuery) -> Result<GrantPage, StoreError> {
        let state = q.state.map(|s| match s {
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Depleted => "depleted",
        });
        let rows = sqlx::query_as!(
            GrantRow,
            "SELECT id, org_id, source, category, purchase_id, topup_id, parent_grant_id, amount,
                    remaining, consumed, expired, refunded, cost_basis_minor_per_credit, priority,
                    effective_at, expires_at, applies_to, reason
               FROM grants
              WHERE org_id = $1
                AND ($2::uuid IS NULL OR id > $2)
                AND ($3::text IS NULL OR source = $3)
                AND CASE $4::text
                      WHEN 'active' THEN remaining > 0
                                      AND (expires_at IS NULL OR expires_at > COALESCE($6, now()))
                      WHEN 'expired' THEN expired > 0 OR expires_at <= COALESCE($6, now())
                      WHEN 'depleted' THEN remaining = 0 AND expired = 0
                                      AND (expires_at IS NULL OR expires_at > COALESCE($6, now()))
                      ELSE true END
              ORDER BY id LIMIT $5",
            q.org_id,
            q.after,
            q.source.map(|s| s.as_str()),
            state,
            q.limit + 1,
            self.clock.booking_time()
        )
        .fetch_all(&self.pool)
        .await?;
        let mut grants = rows
            .into_iter()
            .map(GrantRow::into_grant)
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = if grants.len() as i64 > q.limit {
            grants.truncate(q.limit as usize);
            grants.last().map(|g| g.id)
        } else {
            None
        };
        Ok(GrantPage { grants, next_after })
    }

    pub async fn grant(&self, org_id: Uuid, id: Uuid) -> Result<CreditGrant, StoreError> {
        sqlx::query_as!(
            GrantRow,
            "SELECT id, org_id, source, category, purchase_id, topup_id, parent_grant_id, amount,
                    remaining, consumed, expired, refunded, cost_basis_minor_per_credit, priority,
                    effective_at, expires_at, applies_to, reason
               FROM grants WHERE org_id = $1 AND id = $2",
            org_id,
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("grant"))?
        .into_grant()
    }

    /// The grants of a purchase or topup payment, oldest first.
    pub async fn of_payment(&self, payment_id: Uuid) -> Result<Vec<CreditGrant>, StoreError> {
        sqlx::query_as!(
            GrantRow,
            "SELECT id, org_id, source, category, purchase_id, topup_id, parent_grant_id, amount,
                    remaining, consumed, expired, refunded, cost_basis_minor_per_credit, priority,
                    effective_at, expires_at, applies_to, reason
               FROM grants WHERE purchase_id = $1 OR topup_id = $1 ORDER BY id",
            payment_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(GrantRow::into_grant)
        .collect()
    }

    /// Grants promotional credits, idempotent on the operator's key: the same key and body
    /// answer the first grant; the same key with another body is a conflict.
    pub async fn grant_promo(
        &self,
        p: &NewPromo,
        actor: &str,
        idempotency_key: &str,
    ) -> Result<CreditGrant, StoreError> {
        let scope = format!("grant:{}", p.org_id);
        let applies = serde_json::to_string(&p.applies_to).unwrap_or_default();
        let expires = p.expires_at.map(|e| e.to_rfc3339()).unwrap_or_default();
        let hash = idempotency::request_hash(&[
            p.amount.to_string().as_bytes(),
            &[p.priority],
            expires.as_bytes(),
            applies.as_bytes(),
            p.reason.as_bytes(),
        ]);
        let mut tx = self.pool.begin().await?;
        if let crate::Claim::Replay(t) =
            idempotency::claim::<crate::Transfer>(&mut tx, &scope, idempotency_key, &hash).await?
        {
            tx.rollback().await?;
            return self.grant(p.org_id, t.id).await;
        }
        let mut locked = self.ledger().lock_orgs(&mut tx, &[p.org_id]).await?;
        if p.expires_at.is_some_and(|e| e <= locked.now()) {
            return Err(StoreError::ExpiryNotInFuture);
        }
        let entry = Entry::new(
            Posting::promo(p.org_id, p.amount),
            format!("{scope}:{idempotency_key}"),
            actor,
            p.reason.clone(),
            Refs {
                idempotency_key: Some(idempotency_key.to_string()),
                ..Refs::default()
            },
        )
        .with_flow(Flow::New(GrantTerms {
            priority: p.priority,
            expires_at: p.expires_at,
            applies_to: p.applies_to.clone(),
            ..GrantTerms::plain(GrantSource::Promo)
        }));
        let outcome = self
            .ledger()
            .book_locked(&mut tx, &mut locked, std::slice::from_ref(&entry), true)
            .await?;
        let transfer = outcome[0].transfer().clone();
        idempotency::finish(&mut tx, &scope, idempotency_key, &transfer).await?;
        tx.commit().await?;
        self.grant(p.org_id, transfer.id).await
    }

    /// Books the expiry of every grant due at the clock's now, one org per transaction, at
    /// most `orgs_max` orgs; returns how many orgs it expired grants of. Idempotent: a grant
    /// expires once (its key), and booking any org expires its due grants first anyway.
    pub async fn expire_due(&self, orgs_max: i64) -> Result<usize, StoreError> {
        let orgs = sqlx::query_scalar!(
            "SELECT DISTINCT org_id FROM grants
              WHERE remaining > 0 AND expires_at <= COALESCE($1, now()) LIMIT $2",
            self.clock.booking_time(),
            orgs_max
        )
        .fetch_all(&self.pool)
        .await?;
        for org in &orgs {
            self.expire_org(*org).await?;
        }
        Ok(orgs.len())
    }

    /// Books the expiry of the org's due grants now (a booking of nothing expires first).
    pub async fn expire_org(&self, org_id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut locked = self.ledger().lock_orgs(&mut tx, &[org_id]).await?;
        self.ledger()
            .book_locked(&mut tx, &mut locked, &[], false)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Gives every org whose balance predates grants (listed in `grant_backfill` by the grants
/// migration) its grants: its history is replayed in order through a wallet, each credit
/// making a grant (a purchase's or topup's at its package's cost basis, a bonus pointing at its
/// base), each debit drawing in the burn-down order (a refund or reversal from its payment's
/// grants first), so every grant's remaining is what the new order leaves. One transaction per
/// org, under its lock; the org's grants must add up to its balance or nothing is written.
/// Old transfers keep their rows (immutable); only the grants are new.
pub async fn backfill(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    let orgs = sqlx::query_scalar!("SELECT org_id FROM grant_backfill ORDER BY org_id")
        .fetch_all(pool)
        .await?;
    for org in orgs {
        backfill_org(pool, org).await?;
    }
    Ok(())
}

async fn backfill_org(pool: &sqlx::PgPool, org: Uuid) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let balance = sqlx::query_scalar!(
        r#"SELECT credits_posted - debits_posted AS "balance!" FROM accounts
            WHERE org_id = $1 FOR UPDATE"#,
        org
    )
    .fetch_one(&mut *tx)
    .await?;
    let history = sqlx::query!(
        r#"SELECT t.id, t.kind, t.amount, t.credit_account_id = a.id AS "credit!", t.refs,
                  t.reason, t.created_at,
                  COALESCE(p.package, tp.package) AS package,
                  d.purchase_id AS "disputed_purchase?", d.topup_id AS "disputed_topup?"
             FROM transfers t
             JOIN accounts a ON a.org_id = t.org_id
             LEFT JOIN disputes d ON d.id = t.refs->>'dispute_id'
             LEFT JOIN purchases p
                    ON p.id = COALESCE((t.refs->>'purchase_id')::uuid, d.purchase_id)
             LEFT JOIN topups tp ON tp.id = COALESCE((t.refs->>'topup_id')::uuid, d.topup_id)
            WHERE t.org_id = $1 ORDER BY t.org_seq"#,
        org
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut wallet = Wallet::default();
    let mut writes = GrantWrites::default();
    // Each payment's grants: paid ones, bonus ones.
    let mut of_payment: HashMap<Uuid, (Vec<Uuid>, Vec<Uuid>)> = HashMap::new();
    let any = any_usage();
    for t in history {
        let kind: TransferKind = t.kind.parse()?;
        let amount = Credits::from_stored(t.amount);
        let refs: Refs = serde_json::from_value(t.refs)
            .map_err(|e| StoreError::Decode(format!("transfer refs: {e}")))?;
        // A dispute's clawback and restore name the dispute; its payment is the disputed one.
        let disputed = t.disputed_purchase.or(t.disputed_topup);
        let purchase_id = refs.purchase_id.or(t.disputed_purchase);
        let topup_id = refs.topup_id.or(t.disputed_topup);
        let payment = purchase_id.or(topup_id);
        let package: Option<billing::packages::Package> =
            t.package.and_then(|p| serde_json::from_value(p).ok());
        if t.credit {
            let source = GrantTerms::source_of(kind);
            let mut terms = GrantTerms {
                purchase_id,
                topup_id,
                ..GrantTerms::plain(source)
            };
            if matches!(source, GrantSource::Purchase | GrantSource::Topup) {
                terms.cost_basis_minor_per_credit = package
                    .as_ref()
                    .map(|p| p.cost_basis_minor_per_credit())
                    .unwrap_or_default();
            }
            if source == GrantSource::Bonus {
                terms.parent_grant_id =
                    payment.and_then(|p| of_payment.get(&p)?.0.first().copied());
            }
            let moves = wallet
                .apply(t.id, kind, amount, &Flow::New(terms), t.created_at)
                .map_err(|e| StoreError::from_grants(e, kind))?;
            if let Some(p) = payment {
                let e = of_payment.entry(p).or_default();
                if source == GrantSource::Bonus {
                    e.1.push(t.id);
                } else {
                    e.0.push(t.id);
                }
            }
            writes.record(org, kind, moves, t.created_at, &t.reason);
            continue;
        }
        // A debit: its payment's grants first (a refund its paid ones, a reversal its bonus, a
        // dispute's clawback both), then the burn-down order.
        let mut left = amount;
        let first: Vec<Uuid> = match (kind, payment.and_then(|p| of_payment.get(&p))) {
            (TransferKind::Refund, Some(g)) if disputed.is_some() => {
                g.0.iter().chain(&g.1).copied().collect()
            }
            (TransferKind::Refund, Some(g)) => g.0.clone(),
            (TransferKind::Reversal, Some(g)) => g.1.clone(),
            _ => Vec::new(),
        };
        let held: Credits = first
            .iter()
            .filter_map(|id| wallet.grant(*id))
            .try_fold(Credits::ZERO, |s, g| s.checked_add(g.remaining))?;
        let from_payment = left.min(held);
        if from_payment.is_positive() {
            let moves = wallet
                .apply(
                    t.id,
                    kind,
                    -from_payment,
                    &Flow::Grants(first),
                    t.created_at,
                )
                .map_err(|e| StoreError::from_grants(e, kind))?;
            writes.record(org, kind, moves, t.created_at, &t.reason);
            left = left.checked_sub(from_payment)?;
        }
        if left.is_positive() {
            let flow = Flow::Usage(any.clone());
            let moves = wallet
                .apply(t.id, kind, -left, &flow, t.created_at)
                .map_err(|e| StoreError::from_grants(e, kind))?;
            writes.record(org, kind, moves, t.created_at, &t.reason);
        }
    }
    let balance = Credits::from_stored(balance);
    if wallet.balance()? != balance {
        return Err(StoreError::Invariant(format!(
            "backfill of org {org}: grants hold {} less overdraft, the balance is {balance}",
            wallet.balance()?
        )));
    }
    writes.write(&mut tx).await?;
    sqlx::query!("DELETE FROM grant_backfill WHERE org_id = $1", org)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%org, grants = wallet.grants().len(), "backfilled the org's grants");
    Ok(())
}

/// Round-1 grants have no restriction, so a replayed debit may take any of them: a scope no
/// restriction names stands for "any usage".
fn any_usage() -> billing::grants::UsageScope {
    billing::grants::UsageScope {
        usage_type: "ai_tokens",
        name: String::new(),
    }
}
