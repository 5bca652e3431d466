//! The ledger's invariant check (`creditflow verify-ledger`): every identity the design
//! promises, over every org, reported rather than assumed.

use rust_decimal::Decimal;

use super::*;
use crate::StoreError;

impl Ledger<'_> {
    /// Checks the ledger's invariants over the whole database and returns every violation:
    /// each account's stored totals equal the sums over its transfers; total debits equal total
    /// credits; per-org kind totals and positions match the transfers; each org's last
    /// `balance_after` equals its balance; the grants hold every org's balance (see
    /// [`grant_violations`]).
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
        violations.extend(grant_violations(&self.pool).await?);
        // The monthly usage rollups summaries read add up exactly the recorded events.
        let mut conn = self.pool.acquire().await?;
        violations.extend(crate::rollups::mismatches(&mut conn).await?);
        Ok(violations)
    }
}

/// The grants' invariants: each org's grants hold its balance plus a non-negative overdraft;
/// each grant's moves (the transfers that made and drew it) add up to its remaining; once an
/// org's transfers move grants, all later ones do; each
/// grant with expired credits has exactly one expiry transfer, of that amount, at its expiry
/// instant. (A grant made by the backfill has no making move; its draws since are checked by
/// the counters' CHECK constraint, not here.)
async fn grant_violations(pool: &sqlx::PgPool) -> Result<Vec<String>, StoreError> {
    let mut violations = Vec::new();
    // The balance is the account (available) plus what holds set aside: both are the grants'.
    let uncovered = sqlx::query!(
        r#"SELECT code, balance AS "balance!", held AS "held!" FROM (
               SELECT a.code, a.credits_posted - a.debits_posted
                        + COALESCE((SELECT sum(k.debits_posted - k.credits_posted)
                                      FROM org_kind_totals k
                                     WHERE k.org_id = a.org_id AND k.kind IN ('hold', 'release')), 0)
                        AS balance,
                      COALESCE((SELECT sum(g.remaining) FROM grants g WHERE g.org_id = a.org_id), 0)
                        AS held
                 FROM accounts a WHERE a.org_id IS NOT NULL) x
            WHERE held < balance"#
    )
    .fetch_all(pool)
    .await?;
    for o in uncovered {
        violations.push(format!(
            "{}: balance {} but its grants hold only {}",
            o.code, o.balance, o.held
        ));
    }
    let drifted = sqlx::query!(
        r#"WITH moves AS (
               SELECT (m->>'grant_id')::uuid AS grant_id, sum((m->>'amount')::numeric) AS net,
                      bool_or((m->>'amount')::numeric > 0) AS made
                 FROM transfers t, jsonb_array_elements(t.grants) m
                WHERE m->>'grant_id' IS NOT NULL
                GROUP BY 1)
           SELECT g.id, g.remaining, mv.net AS "net!"
             FROM grants g JOIN moves mv ON mv.grant_id = g.id
            WHERE mv.made AND mv.net <> g.remaining"#
    )
    .fetch_all(pool)
    .await?;
    for g in drifted {
        violations.push(format!(
            "grant {}: remaining {} but its transfers move {}",
            g.id, g.remaining, g.net
        ));
    }
    // Once an org's transfers carry grant moves, every later one must (a booking without them
    // is a writer that does not know grants: a binary from before them, after the backfill).
    let unmoved = sqlx::query!(
        r#"SELECT org_id AS "org_id!", id AS "id!", org_seq AS "org_seq!" FROM (
               SELECT t.org_id, t.id, t.org_seq, t.grants, t.kind,
                      bool_or(t.grants <> '[]'::jsonb) OVER (
                          PARTITION BY t.org_id ORDER BY t.org_seq
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS moved_before
                 FROM transfers t) x
            WHERE x.grants = '[]'::jsonb AND x.moved_before
              AND x.kind NOT IN ('hold', 'release')"#
    )
    .fetch_all(pool)
    .await?;
    for t in unmoved {
        violations.push(format!(
            "org {}: transfer {} (seq {}) moves no grant, though earlier ones did",
            t.org_id, t.id, t.org_seq
        ));
    }
    let expiries = sqlx::query!(
        r#"SELECT g.id, g.expired, g.expires_at, t.amount AS "amount?", t.created_at AS "at?"
             FROM grants g LEFT JOIN transfers t ON t.idempotency_key = 'expiry:' || g.id
            WHERE (g.expired > 0) <> (t.id IS NOT NULL)
               OR (t.id IS NOT NULL AND (t.amount <> g.expired
                                         OR t.created_at IS DISTINCT FROM g.expires_at))"#
    )
    .fetch_all(pool)
    .await?;
    for e in expiries {
        violations.push(format!(
            "grant {}: expired {} (due {:?}) but its expiry transfer is {:?} at {:?}",
            e.id, e.expired, e.expires_at, e.amount, e.at
        ));
    }
    violations.extend(hold_violations(pool).await?);
    Ok(violations)
}

/// The holds' invariants: each hold has one hold transfer of its amount; an ended hold has one
/// release of its amount (at its expiry instant when it expired), an active one none; what an
/// org's holds set aside in the ledger (hold less release transfers) is the sum of its active
/// holds.
async fn hold_violations(pool: &sqlx::PgPool) -> Result<Vec<String>, StoreError> {
    let mut violations = Vec::new();
    let wrong = sqlx::query!(
        r#"SELECT h.id, h.state, h.amount, h.expires_at, h.ended_at,
                  ht.amount AS "hold_amount?", rt.amount AS "release_amount?",
                  rt.created_at AS "released_at?"
             FROM holds h
             LEFT JOIN transfers ht ON ht.idempotency_key = 'hold:' || h.id
             LEFT JOIN transfers rt ON rt.idempotency_key = 'release:' || h.id
            WHERE ht.amount IS DISTINCT FROM h.amount
               OR (h.state = 'active') <> (rt.id IS NULL)
               OR (rt.id IS NOT NULL AND rt.amount <> h.amount)
               OR (h.state = 'expired' AND rt.created_at IS DISTINCT FROM h.expires_at)"#
    )
    .fetch_all(pool)
    .await?;
    for h in wrong {
        violations.push(format!(
            "hold {} ({}, {}): hold transfer {:?}, release {:?} at {:?} (expires {})",
            h.id, h.state, h.amount, h.hold_amount, h.release_amount, h.released_at, h.expires_at
        ));
    }
    let held = sqlx::query!(
        r#"SELECT o.id AS "org_id!",
                  COALESCE((SELECT sum(k.debits_posted - k.credits_posted) FROM org_kind_totals k
                             WHERE k.org_id = o.id AND k.kind IN ('hold', 'release')), 0)
                    AS "booked!",
                  COALESCE((SELECT sum(h.amount) FROM holds h
                             WHERE h.org_id = o.id AND h.state = 'active'), 0) AS "active!"
             FROM orgs o"#
    )
    .fetch_all(pool)
    .await?;
    for o in held.into_iter().filter(|o| o.booked != o.active) {
        violations.push(format!(
            "org {}: its holds set aside {} in the ledger, its active holds {}",
            o.org_id, o.booked, o.active
        ));
    }
    Ok(violations)
}
