//! Budgets below the org (the rules are `billing::budgets`'s): their terms, and what each
//! scope spent per period, kept by the usage writer under the org's lock.

use std::collections::HashMap;

use billing::{
    Credits,
    budgets::{Budget, BudgetScope, Enforcement, Period, Standing, Tz},
    holds::Dimensions,
};
use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{OutboxEvent, StoreError, outbox};

/// A soft (or hard) budget's alert: its scope's usage reached `percent` of its limit in the
/// period starting at `period_start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetAlert {
    pub budget_id: String,
    pub percent: i32,
    pub spent: Credits,
    pub limit: Credits,
    pub period_start: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<DateTime<Utc>>,
}

/// The budgets of one org as a writer batch sees them under the org's lock, and what the batch
/// spent in each.
pub(crate) struct BudgetBook {
    standings: Vec<Standing>,
    /// Per standing: the highest alert sent this period, what the batch added, its alerts.
    alerted: Vec<i32>,
    added: Vec<Credits>,
    alerts: Vec<(usize, i32)>,
}

impl BudgetBook {
    pub(crate) async fn load(
        tx: &mut Transaction<'_, Postgres>,
        orgs: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<HashMap<Uuid, BudgetBook>, StoreError> {
        let loaded = load_standings(&mut *tx, orgs, now).await?;
        Ok(loaded
            .into_iter()
            .map(|(org, list)| {
                let n = list.len();
                let (standings, alerted): (Vec<Standing>, Vec<i32>) = list.into_iter().unzip();
                (
                    org,
                    BudgetBook {
                        standings,
                        alerted,
                        added: vec![Credits::ZERO; n],
                        alerts: Vec::new(),
                    },
                )
            })
            .collect())
    }

    pub(crate) fn standings(&self) -> &[Standing] {
        &self.standings
    }

    /// A hold made about `d`: the budgets it matches hold more.
    pub(crate) fn hold(&mut self, d: &Dimensions, amount: Credits) -> Result<(), StoreError> {
        for s in self
            .standings
            .iter_mut()
            .filter(|s| s.budget.scope.matches(d))
        {
            s.held = s.held.checked_add(amount)?;
        }
        Ok(())
    }

    /// A hold about `d` ended.
    pub(crate) fn release(&mut self, d: &Dimensions, amount: Credits) -> Result<(), StoreError> {
        for s in self
            .standings
            .iter_mut()
            .filter(|s| s.budget.scope.matches(d))
        {
            s.held = s.held.checked_sub(amount)?.max(Credits::ZERO);
        }
        Ok(())
    }

    /// Usage about `d` was booked: the budgets it matches spent more, and alert.
    pub(crate) fn spend(&mut self, d: &Dimensions, cost: Credits) -> Result<(), StoreError> {
        for (i, s) in self.standings.iter_mut().enumerate() {
            if !s.budget.scope.matches(d) {
                continue;
            }
            let before = s.spent;
            s.spent = s.spent.checked_add(cost)?;
            self.added[i] = self.added[i].checked_add(cost)?;
            for p in s.budget.alerts_due(before, s.spent, self.alerted[i]) {
                self.alerted[i] = p;
                self.alerts.push((i, p));
            }
        }
        Ok(())
    }

    /// Writes what the batch spent (one statement for every org's budgets) and the alerts.
    pub(crate) async fn write_all(
        tx: &mut Transaction<'_, Postgres>,
        books: HashMap<Uuid, BudgetBook>,
    ) -> Result<(), StoreError> {
        let (mut orgs, mut ids, mut starts, mut added, mut alerted) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut events = Vec::new();
        for (org, book) in &books {
            for (i, s) in book.standings.iter().enumerate() {
                if book.added[i].is_positive() {
                    orgs.push(*org);
                    ids.push(s.budget.id.clone());
                    starts.push(s.period_start);
                    added.push(book.added[i].as_decimal());
                    alerted.push(book.alerted[i]);
                }
            }
            for (i, percent) in &book.alerts {
                let s = &book.standings[*i];
                events.push((
                    *org,
                    OutboxEvent::BudgetAlert(BudgetAlert {
                        budget_id: s.budget.id.clone(),
                        percent: *percent,
                        spent: s.spent,
                        limit: s.budget.limit,
                        period_start: s.period_start,
                        resets_at: s.resets_at,
                    }),
                ));
            }
        }
        if !orgs.is_empty() {
            sqlx::query!(
                "INSERT INTO budget_spend (org_id, budget_id, period_start, spent, alerted_percent)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::numeric[],
                                      $5::int[])
                 ON CONFLICT (org_id, budget_id, period_start) DO UPDATE
                    SET spent = budget_spend.spent + EXCLUDED.spent,
                        alerted_percent = GREATEST(budget_spend.alerted_percent,
                                                   EXCLUDED.alerted_percent)",
                &orgs,
                &ids,
                &starts,
                &added,
                &alerted
            )
            .execute(&mut **tx)
            .await?;
        }
        outbox::write(tx, &events).await
    }
}

/// The orgs' budgets at `at`, in id order, each with what its scope spent this period and
/// holds now, and the highest alert percent sent this period.
pub(crate) async fn load_standings(
    conn: &mut PgConnection,
    orgs: &[Uuid],
    at: DateTime<Utc>,
) -> Result<HashMap<Uuid, Vec<(Standing, i32)>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT org_id, id, scope_kind, scope_key, scope_value, limit_credits, period, timezone,
                enforcement, alert_at_percent, recipients
           FROM budgets WHERE org_id = ANY($1) ORDER BY org_id, id",
        orgs
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<Uuid, Vec<(Standing, i32)>> = HashMap::new();
    if rows.is_empty() {
        return Ok(out);
    }
    let (mut q_orgs, mut q_ids, mut q_starts) = (vec![], vec![], vec![]);
    for r in rows {
        let budget = Budget {
            id: r.id,
            scope: BudgetScope::from_parts(&r.scope_kind, &r.scope_key, &r.scope_value)
                .ok_or_else(|| StoreError::Decode(format!("budget scope {}", r.scope_kind)))?,
            limit: Credits::from_stored(r.limit_credits),
            period: Period::parse(&r.period)
                .ok_or_else(|| StoreError::Decode(format!("budget period {}", r.period)))?,
            timezone: r
                .timezone
                .parse::<Tz>()
                .map_err(|_| StoreError::Decode(format!("budget time zone {}", r.timezone)))?,
            enforcement: Enforcement::parse(&r.enforcement).ok_or_else(|| {
                StoreError::Decode(format!("budget enforcement {}", r.enforcement))
            })?,
            alert_at_percent: r.alert_at_percent,
            recipients: r.recipients,
        };
        let (start, resets_at) = budget.bounds(at);
        q_orgs.push(r.org_id);
        q_ids.push(budget.id.clone());
        q_starts.push(start);
        out.entry(r.org_id).or_default().push((
            Standing {
                budget,
                period_start: start,
                resets_at,
                spent: Credits::ZERO,
                held: Credits::ZERO,
            },
            0,
        ));
    }
    for r in sqlx::query!(
        "SELECT s.org_id, s.budget_id, s.spent, s.alerted_percent
           FROM budget_spend s
           JOIN UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS q(o, b, p)
             ON s.org_id = q.o AND s.budget_id = q.b AND s.period_start = q.p",
        &q_orgs,
        &q_ids,
        &q_starts
    )
    .fetch_all(&mut *conn)
    .await?
    {
        if let Some(list) = out.get_mut(&r.org_id)
            && let Some(e) = list.iter_mut().find(|e| e.0.budget.id == r.budget_id)
        {
            e.0.spent = Credits::from_stored(r.spent);
            e.1 = r.alerted_percent;
        }
    }
    let budgeted: Vec<Uuid> = out.keys().copied().collect();
    for r in sqlx::query!(
        "SELECT org_id, user_id, api_key, model, labels, amount FROM holds
          WHERE org_id = ANY($1) AND state = 'active' AND expires_at > $2",
        &budgeted,
        at
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let d = Dimensions {
            user: r.user_id,
            api_key: r.api_key,
            model: r.model,
            labels: serde_json::from_value(r.labels).unwrap_or_default(),
        };
        let amount = Credits::from_stored(r.amount);
        if let Some(list) = out.get_mut(&r.org_id) {
            for e in list.iter_mut().filter(|e| e.0.budget.scope.matches(&d)) {
                e.0.held = e.0.held.checked_add(amount)?;
            }
        }
    }
    Ok(out)
}

handle! {
    /// Budgets: their terms and standings.
    Budgets
}

impl Budgets<'_> {
    /// Creates or replaces a budget. Its spend in the current period is counted again from
    /// the usage booked in it, under the org's lock (so no usage batch is halfway), and alerts
    /// for percents already reached are not sent. Returns its standing and whether it is new.
    pub async fn put(&self, org_id: Uuid, b: &Budget) -> Result<(Standing, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked = self.ledger().lock_orgs(&mut tx, &[org_id]).await?;
        let now = locked.now();
        let count = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM budgets WHERE org_id = $1 AND id <> $2"#,
            org_id,
            b.id
        )
        .fetch_one(&mut *tx)
        .await?;
        if count >= billing::budgets::BUDGETS_PER_ORG_MAX as i64 {
            return Err(StoreError::TooMany("budgets"));
        }
        let (kind, key, value) = b.scope.parts();
        let created = sqlx::query_scalar!(
            r#"INSERT INTO budgets (org_id, id, scope_kind, scope_key, scope_value, limit_credits,
                                    period, timezone, enforcement, alert_at_percent, recipients)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (org_id, id) DO UPDATE
                  SET scope_kind = EXCLUDED.scope_kind, scope_key = EXCLUDED.scope_key,
                      scope_value = EXCLUDED.scope_value, limit_credits = EXCLUDED.limit_credits,
                      period = EXCLUDED.period, timezone = EXCLUDED.timezone,
                      enforcement = EXCLUDED.enforcement,
                      alert_at_percent = EXCLUDED.alert_at_percent,
                      recipients = EXCLUDED.recipients, updated_at = now()
               RETURNING (xmax = 0) AS "created!""#,
            org_id,
            b.id,
            kind,
            key,
            value,
            b.limit.as_decimal(),
            b.period.as_str(),
            b.timezone.name(),
            b.enforcement.as_str(),
            &b.alert_at_percent,
            &b.recipients
        )
        .fetch_one(&mut *tx)
        .await?;
        let (start, end) = b.bounds(now);
        let spent = sqlx::query_scalar!(
            r#"SELECT COALESCE(sum(t.amount), 0) AS "spent!"
                 FROM transfers t JOIN usage_events u ON u.transfer_id = t.id AND u.org_id = t.org_id
                WHERE t.org_id = $1 AND u.org_id = $1 AND t.kind = 'usage'
                  AND t.created_at >= $2 AND ($3::timestamptz IS NULL OR t.created_at < $3)
                  AND CASE $4
                        WHEN 'user' THEN u.user_id = $6
                        WHEN 'api_key' THEN u.api_key = $6
                        WHEN 'model' THEN u.model = $6
                        ELSE u.labels ->> $5 = $6
                      END"#,
            org_id,
            start,
            end,
            kind,
            key,
            value
        )
        .fetch_one(&mut *tx)
        .await?;
        let spent = Credits::from_stored(spent);
        // Percents already reached are not news: the next alert is the next percent.
        let alerted = b
            .alerts_due(Credits::ZERO, spent, 0)
            .last()
            .copied()
            .unwrap_or(0);
        sqlx::query!(
            "INSERT INTO budget_spend (org_id, budget_id, period_start, spent, alerted_percent)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id, budget_id, period_start) DO UPDATE
                SET spent = EXCLUDED.spent,
                    alerted_percent = GREATEST(budget_spend.alerted_percent, EXCLUDED.alerted_percent)",
            org_id,
            b.id,
            start,
            spent.as_decimal(),
            alerted
        )
        .execute(&mut *tx)
        .await?;
        let standing = load_standings(&mut tx, &[org_id], now)
            .await?
            .remove(&org_id)
            .and_then(|l| l.into_iter().find(|(s, _)| s.budget.id == b.id))
            .map(|(s, _)| s)
            .ok_or(StoreError::NotFound("budget"))?;
        tx.commit().await?;
        Ok((standing, created))
    }

    /// The org's budgets as of now, in id order.
    pub async fn standings(&self, org_id: Uuid) -> Result<Vec<Standing>, StoreError> {
        let now = self.now();
        let mut conn = self.pool.acquire().await?;
        Ok(load_standings(&mut conn, &[org_id], now)
            .await?
            .remove(&org_id)
            .unwrap_or_default()
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// Removes a budget (and its spend); false when there was none.
    pub async fn delete(&self, org_id: Uuid, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        self.ledger().lock_orgs(&mut tx, &[org_id]).await?;
        let n = sqlx::query!(
            "DELETE FROM budgets WHERE org_id = $1 AND id = $2",
            org_id,
            id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }
}
