//! Per-org monthly usage rollups (`usage_month_lines`, `usage_month_users`): what summaries,
//! stored and live, read instead of scanning `usage_events`. Kept in the transaction that
//! records the events, under the orgs' balance locks (so two writers of one org never touch
//! its rows at once), from the events that stay recorded: not duplicates, not refused.

use std::collections::BTreeMap;

use billing::{
    summary::Month,
    usage::{Usage, UsageEvent},
};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{StoreError, usage::RatedEvent};

/// A line of a month's usage: by type, then model and operation (AI) or resource and unit.
type LineKey = (
    Uuid,
    NaiveDate,
    &'static str,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

#[derive(Default)]
struct LineSums {
    events: i64,
    tokens: Option<[Decimal; 3]>,
    quantity: Option<Decimal>,
    cost: Decimal,
}

fn line_key(org: Uuid, e: &UsageEvent) -> LineKey {
    let month = Month::of(e.occurred_at).first_day();
    match &e.usage {
        Usage::AiTokens(a) => (
            org,
            month,
            "ai_tokens",
            Some(a.model.clone()),
            Some(a.operation.clone()),
            None,
            None,
        ),
        Usage::Infra(i) => (
            org,
            month,
            "infra",
            None,
            None,
            Some(i.resource.as_str().to_string()),
            Some(i.resource.unit().to_string()),
        ),
    }
}

/// Adds these recorded events to their orgs' rollups (one upsert per table).
pub(crate) async fn add<'a>(
    conn: &mut PgConnection,
    kept: impl Iterator<Item = (Uuid, &'a RatedEvent)>,
) -> Result<(), StoreError> {
    let mut lines: BTreeMap<LineKey, LineSums> = BTreeMap::new();
    let mut users: BTreeMap<(Uuid, NaiveDate, Option<String>), (i64, Decimal)> = BTreeMap::new();
    for (org, e) in kept {
        let ev = &e.event;
        let cost = e.cost.as_decimal();
        let line = lines.entry(line_key(org, ev)).or_default();
        line.events += 1;
        line.cost += cost;
        match &ev.usage {
            Usage::AiTokens(a) => {
                let t = line.tokens.get_or_insert([Decimal::ZERO; 3]);
                t[0] += Decimal::from(a.input_tokens);
                t[1] += Decimal::from(a.output_tokens);
                t[2] += Decimal::from(a.cached_input_tokens);
            }
            Usage::Infra(i) => *line.quantity.get_or_insert(Decimal::ZERO) += i.quantity,
        }
        let user = users
            .entry((org, Month::of(ev.occurred_at).first_day(), ev.user.clone()))
            .or_default();
        user.0 += 1;
        user.1 += cost;
    }
    if lines.is_empty() {
        return Ok(());
    }
    let n = lines.len();
    let (mut orgs, mut months, mut types) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut models, mut operations, mut resources, mut units) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut events, mut inputs, mut outputs, mut cached, mut quantities, mut costs) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for ((org, month, kind, model, operation, resource, unit), s) in lines {
        orgs.push(org);
        months.push(month);
        types.push(kind.to_string());
        models.push(model);
        operations.push(operation);
        resources.push(resource);
        units.push(unit);
        events.push(s.events);
        inputs.push(s.tokens.map(|t| t[0]));
        outputs.push(s.tokens.map(|t| t[1]));
        cached.push(s.tokens.map(|t| t[2]));
        quantities.push(s.quantity);
        costs.push(s.cost);
    }
    sqlx::query!(
        "INSERT INTO usage_month_lines AS l (org_id, month, type, model, operation, resource, unit,
                                             events, input_tokens, output_tokens,
                                             cached_input_tokens, quantity, cost)
         SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::bigint[], $9::numeric[], $10::numeric[],
                              $11::numeric[], $12::numeric[], $13::numeric[])
         ON CONFLICT (org_id, month, type, model, operation, resource, unit) DO UPDATE
            SET events = l.events + EXCLUDED.events,
                input_tokens = l.input_tokens + EXCLUDED.input_tokens,
                output_tokens = l.output_tokens + EXCLUDED.output_tokens,
                cached_input_tokens = l.cached_input_tokens + EXCLUDED.cached_input_tokens,
                quantity = l.quantity + EXCLUDED.quantity,
                cost = l.cost + EXCLUDED.cost",
        &orgs,
        &months,
        &types,
        &models as &[Option<String>],
        &operations as &[Option<String>],
        &resources as &[Option<String>],
        &units as &[Option<String>],
        &events,
        &inputs as &[Option<Decimal>],
        &outputs as &[Option<Decimal>],
        &cached as &[Option<Decimal>],
        &quantities as &[Option<Decimal>],
        &costs
    )
    .execute(&mut *conn)
    .await?;
    let (mut orgs, mut months, mut ids, mut events, mut costs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((org, month, user), (n, cost)) in users {
        orgs.push(org);
        months.push(month);
        ids.push(user);
        events.push(n);
        costs.push(cost);
    }
    sqlx::query!(
        "INSERT INTO usage_month_users AS u (org_id, month, user_id, events, cost)
         SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::text[], $4::bigint[], $5::numeric[])
         ON CONFLICT (org_id, month, user_id) DO UPDATE
            SET events = u.events + EXCLUDED.events, cost = u.cost + EXCLUDED.cost",
        &orgs,
        &months,
        &ids as &[Option<String>],
        &events,
        &costs
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rebuilds every rollup from `usage_events` (for a database seeded without the API, such as
/// `creditflow bench summaries`'s; the migration that made the tables did the same).
pub async fn rebuild(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query!("DELETE FROM usage_month_lines")
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM usage_month_users")
        .execute(&mut *conn)
        .await?;
    sqlx::query!(
        "INSERT INTO usage_month_lines
         SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date, type, model,
                operation, resource, unit, count(*), sum(input_tokens), sum(output_tokens),
                sum(cached_input_tokens), sum(quantity), sum(cost)
           FROM usage_events GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO usage_month_users
         SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date, user_id,
                count(*), sum(cost)
           FROM usage_events GROUP BY 1, 2, 3"
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Where the rollups differ from the events they add up (for `verify-ledger`): each line and
/// each user of each org's month, its events, tokens, quantity and cost.
pub(crate) async fn mismatches(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    let lines = sqlx::query!(
        r#"WITH e AS (
             SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
                    type, COALESCE(model, '') AS model, COALESCE(operation, '') AS operation,
                    COALESCE(resource, '') AS resource, count(*) AS events,
                    sum(input_tokens) AS input_tokens, sum(quantity) AS quantity, sum(cost) AS cost
               FROM usage_events GROUP BY 1, 2, 3, 4, 5, 6),
           r AS (
             SELECT org_id, month, type, COALESCE(model, '') AS model,
                    COALESCE(operation, '') AS operation, COALESCE(resource, '') AS resource,
                    events, input_tokens, quantity, cost
               FROM usage_month_lines)
           SELECT COALESCE(e.org_id, r.org_id) AS "org_id!", COALESCE(e.month, r.month) AS "month!",
                  COALESCE(e.type, r.type) AS "type!",
                  COALESCE(e.model, r.model) || COALESCE(e.resource, r.resource) AS "what!",
                  e.events AS "events?", r.events AS "rolled_events?", e.cost AS "cost?",
                  r.cost AS "rolled_cost?"
             FROM e FULL JOIN r
               ON e.org_id = r.org_id AND e.month = r.month AND e.type = r.type
              AND e.model = r.model AND e.operation = r.operation AND e.resource = r.resource
            WHERE e.events IS DISTINCT FROM r.events OR e.cost IS DISTINCT FROM r.cost
               OR e.input_tokens IS DISTINCT FROM r.input_tokens
               OR e.quantity IS DISTINCT FROM r.quantity"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<String> = lines
        .into_iter()
        .map(|r| {
            format!(
                "org {} {} {} {}: events {:?}, rollup {:?}; cost {:?}, rollup {:?}",
                r.org_id,
                r.month,
                r.r#type,
                r.what,
                r.events,
                r.rolled_events,
                r.cost,
                r.rolled_cost
            )
        })
        .collect();
    let users = sqlx::query!(
        r#"WITH e AS (
             SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
                    COALESCE(user_id, '') AS user_id, count(*) AS events, sum(cost) AS cost
               FROM usage_events GROUP BY 1, 2, 3),
           r AS (SELECT org_id, month, COALESCE(user_id, '') AS user_id, events, cost
                   FROM usage_month_users)
           SELECT COALESCE(e.org_id, r.org_id) AS "org_id!", COALESCE(e.month, r.month) AS "month!",
                  COALESCE(e.user_id, r.user_id) AS "user_id!", e.events AS "events?",
                  r.events AS "rolled_events?"
             FROM e FULL JOIN r
               ON e.org_id = r.org_id AND e.month = r.month AND e.user_id = r.user_id
            WHERE e.events IS DISTINCT FROM r.events OR e.cost IS DISTINCT FROM r.cost"#
    )
    .fetch_all(&mut *conn)
    .await?;
    out.extend(users.into_iter().map(|r| {
        format!(
            "org {} {} user {:?}: events {:?}, rollup {:?}",
            r.org_id, r.month, r.user_id, r.events, r.rolled_events
        )
    }));
    Ok(out)
}
