//! Monthly summaries, computed from the ledger's transfers (other than usage) and the monthly
//! usage rollups (`crate::rollups`) with set-based queries over a page of orgs at a time, and
//! stored as immutable revisions. No query scans an org's usage events.

use std::collections::HashMap;

use billing::{
    Credits,
    summary::{Month, Movements},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub org_id: Uuid,
    pub month: Month,
    /// 0 for a live (provisional) computation, else the stored revision.
    pub revision: i32,
    pub movements: Movements,
    pub closing: Credits,
    /// Usage by type, model and operation (AI) or resource (infra), with quantities and cost.
    pub lines: Value,
    /// Usage cost and events per user.
    pub users: Value,
    pub computed_at: DateTime<Utc>,
}

/// What generating one page of orgs did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageOutcome {
    pub orgs: usize,
    /// New revisions of this month.
    pub revisions_written: usize,
    /// New revisions of later months already stored, recomputed to keep the chain.
    #[serde(default)]
    pub later_revisions_written: usize,
    pub last_org: Option<Uuid>,
    /// Orgs of the page that could not be summarised: stored in `summary_failures` and retried
    /// alone through the outbox; the rest of the page is stored without them.
    #[serde(default)]
    pub failed_orgs: Vec<Uuid>,
}

/// A breakdown of at most `max` entries: when longer, the `max` costliest (ties by their
/// order, which is by key) in key order, then one `other` entry adding up the rest (how many,
/// their events and cost), so the summary's size is bounded and its sums unchanged.
fn bounded(
    entries: Vec<Value>,
    max: usize,
    mut other: Value,
    count_field: &str,
) -> Result<Vec<Value>, StoreError> {
    if entries.len() <= max {
        return Ok(entries);
    }
    let cost = |v: &Value| -> Result<Credits, StoreError> {
        v["cost_credits"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .map_err(|e| StoreError::Decode(format!("breakdown cost: {e}")))
    };
    let mut ranked: Vec<(usize, Credits)> = entries
        .iter()
        .enumerate()
        .map(|(i, v)| Ok((i, cost(v)?)))
        .collect::<Result<_, StoreError>>()?;
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<usize> = ranked.iter().take(max).map(|(i, _)| *i).collect();
    kept.sort_unstable();
    let (mut events, mut total, mut folded) = (0i64, Credits::ZERO, 0usize);
    let mut out = Vec::with_capacity(max + 1);
    let mut next = kept.iter().peekable();
    for (i, v) in entries.into_iter().enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            out.push(v);
        } else {
            events += v["events"].as_i64().unwrap_or(0);
            total = total.checked_add(cost(&v)?)?;
            folded += 1;
        }
    }
    other[count_field] = json!(folded);
    other["events"] = json!(events);
    other["cost_credits"] = json!(total);
    out.push(other);
    Ok(out)
}

fn dec(v: Option<Decimal>) -> Credits {
    Credits::from_stored(v.unwrap_or_default())
}

mod generate;

handle! {
    /// Monthly summaries: computed, stored, revised.
    Summaries
}

impl Summaries<'_> {
    /// Computes the month's summaries for these orgs (live; nothing stored).
    pub async fn compute_summaries(
        &self,
        org_ids: &[Uuid],
        month: Month,
    ) -> Result<Vec<Summary>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Summaries::compute_in(&mut conn, org_ids, month, self.breakdown_max).await
    }

    /// [`Summaries::compute_summaries`] on one connection (a transaction's snapshot, when it is one).
    async fn compute_in(
        conn: &mut PgConnection,
        org_ids: &[Uuid],
        month: Month,
        breakdown_max: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        let (start, end) = (month.start(), month.end());
        let mut movements: HashMap<Uuid, Movements> =
            org_ids.iter().map(|o| (*o, Movements::default())).collect();
        // Every kind but usage, which summaries read from the rollups, and holds and releases,
        // which move credits within the balance (available ↔ held).
        let booked_kinds: Vec<String> = billing::TransferKind::ALL
            .into_iter()
            .filter(|k| {
                !matches!(
                    k,
                    billing::TransferKind::Usage
                        | billing::TransferKind::Hold
                        | billing::TransferKind::Release
                )
            })
            .map(|k| k.as_str().to_string())
            .collect();
        // Booked movements other than usage (few per org: purchases, topups, refunds,
        // adjustments), before and within the month, by when they were booked.
        for r in sqlx::query!(
            r#"SELECT t.org_id, t.kind,
                      sum(CASE WHEN t.credit_account_id = a.id THEN t.amount ELSE -t.amount END)
                        FILTER (WHERE t.created_at < $2) AS before,
                      sum(CASE WHEN t.credit_account_id = a.id THEN t.amount ELSE -t.amount END)
                        FILTER (WHERE t.created_at >= $2) AS during
                 FROM transfers t JOIN accounts a ON a.org_id = t.org_id
                WHERE t.org_id = ANY($1) AND t.kind = ANY($4) AND t.created_at < $3
                GROUP BY t.org_id, t.kind"#,
            org_ids,
            start,
            end,
            &booked_kinds[..]
        )
        .fetch_all(&mut *conn)
        .await?
        {
            let m = movements.entry(r.org_id).or_default();
            m.opening = m.opening.checked_add(dec(r.before))?;
            let during = dec(r.during);
            m.record(r.kind.parse()?, during);
        }
        // Usage by the month it happened in, from the monthly rollups (`crate::rollups`): the
        // months before (opening) and this one (used), a handful of rows per org and month.
        let first_day = month.first_day();
        for r in sqlx::query!(
            r#"SELECT org_id, sum(cost) FILTER (WHERE month < $2) AS before,
                      sum(cost) FILTER (WHERE month = $2) AS during
                 FROM usage_month_lines WHERE org_id = ANY($1) AND month <= $2
                GROUP BY org_id"#,
            org_ids,
            first_day
        )
        .fetch_all(&mut *conn)
        .await?
        {
            let m = movements.entry(r.org_id).or_default();
            m.opening = m.opening.checked_sub(dec(r.before))?;
            m.used = dec(r.during);
        }
        let mut lines: HashMap<Uuid, Vec<Value>> = HashMap::new();
        for r in sqlx::query!(
            r#"SELECT org_id, type AS kind, model, operation, resource, unit, events,
                      input_tokens::bigint AS input_tokens, output_tokens::bigint AS output_tokens,
                      cached_input_tokens::bigint AS cached_input_tokens, quantity, cost
                 FROM usage_month_lines
                WHERE org_id = ANY($1) AND month = $2
                ORDER BY org_id, type, model, operation, resource, unit"#,
            org_ids,
            first_day
        )
        .fetch_all(&mut *conn)
        .await?
        {
            let line = if r.kind == "ai_tokens" {
                json!({"type": "ai_tokens", "model": r.model, "operation": r.operation, "events": r.events,
                       "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                       "cached_input_tokens": r.cached_input_tokens, "cost_credits": Credits::from_stored(r.cost)})
            } else {
                json!({"type": "infra", "resource": r.resource, "unit": r.unit, "events": r.events,
                       "quantity": r.quantity.map(|q| q.normalize().to_string()),
                       "cost_credits": Credits::from_stored(r.cost)})
            };
            lines.entry(r.org_id).or_default().push(line);
        }
        let mut users: HashMap<Uuid, Vec<Value>> = HashMap::new();
        for r in sqlx::query!(
            r#"SELECT org_id, user_id, events, cost
                 FROM usage_month_users
                WHERE org_id = ANY($1) AND month = $2
                ORDER BY org_id, user_id"#,
            org_ids,
            first_day
        )
        .fetch_all(&mut *conn)
        .await?
        {
            users.entry(r.org_id).or_default().push(
                json!({"user": r.user_id, "events": r.events, "cost_credits": Credits::from_stored(r.cost)}),
            );
        }
        let now = Utc::now();
        let mut out = Vec::with_capacity(org_ids.len());
        for org in org_ids {
            let m = movements.remove(org).unwrap_or_default();
            out.push(Summary {
                org_id: *org,
                month,
                revision: 0,
                closing: m.closing()?,
                movements: m,
                lines: Value::Array(bounded(
                    lines.remove(org).unwrap_or_default(),
                    breakdown_max,
                    json!({"type": "other"}),
                    "lines",
                )?),
                users: Value::Array(bounded(
                    users.remove(org).unwrap_or_default(),
                    breakdown_max,
                    json!({"user": null, "other": true}),
                    "users",
                )?),
                computed_at: now,
            });
        }
        Ok(out)
    }

    /// The latest stored revision per org for a month.
    pub async fn latest_summaries(
        &self,
        org_ids: &[Uuid],
        month: Month,
    ) -> Result<HashMap<Uuid, Summary>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Summaries::latest_in(&mut conn, org_ids, month).await
    }

    async fn latest_in(
        conn: &mut PgConnection,
        org_ids: &[Uuid],
        month: Month,
    ) -> Result<HashMap<Uuid, Summary>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT DISTINCT ON (org_id) org_id, revision, opening, purchased, bonus, topup, refunded,
                      adjusted, reversed, used, closing, lines, users, computed_at, promo, expired
                 FROM monthly_summaries WHERE org_id = ANY($1) AND month = $2
                ORDER BY org_id, revision DESC"#,
            org_ids,
            month.first_day()
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let s = Summary {
                    org_id: r.org_id,
                    month,
                    revision: r.revision,
                    movements: Movements {
                        opening: Credits::from_stored(r.opening),
                        purchased: Credits::from_stored(r.purchased),
                        bonus: Credits::from_stored(r.bonus),
                        topup: Credits::from_stored(r.topup),
                        refunded: Credits::from_stored(r.refunded),
                        adjusted: Credits::from_stored(r.adjusted),
                        reversed: Credits::from_stored(r.reversed),
                        used: Credits::from_stored(r.used),
                        promo: Credits::from_stored(r.promo),
                        expired: Credits::from_stored(r.expired),
                    },
                    closing: Credits::from_stored(r.closing),
                    lines: r.lines,
                    users: r.users,
                    computed_at: r.computed_at,
                };
                (r.org_id, s)
            })
            .collect())
    }

    /// One page of org ids in id order, after `after` (all from the start without it), at most
    /// `limit` of them; with the cursor of the next page (this page's last id) when more follow.
    pub async fn org_ids_page(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<(Vec<Uuid>, Option<Uuid>), StoreError> {
        // One more than asked tells whether another page follows without a second query.
        let mut ids: Vec<Uuid> = sqlx::query_scalar!(
            "SELECT id FROM orgs WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
            after,
            limit.saturating_add(1)
        )
        .fetch_all(&self.pool)
        .await?;
        let next = if ids.len() as i64 > limit {
            ids.truncate(limit.max(0) as usize);
            ids.last().copied()
        } else {
            None
        };
        Ok((ids, next))
    }

    /// Stored revisions of one org's month, oldest first.
    pub async fn summary_revisions(
        &self,
        org_id: Uuid,
        month: Month,
    ) -> Result<Vec<i32>, StoreError> {
        Ok(sqlx::query_scalar!(
            "SELECT revision FROM monthly_summaries WHERE org_id = $1 AND month = $2 ORDER BY revision",
            org_id,
            month.first_day()
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
