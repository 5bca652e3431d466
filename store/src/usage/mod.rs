//! Recording usage: many events of many orgs in one transaction, each event once.

use std::collections::{HashMap, HashSet};

use billing::{
    Credits, Entry, Flow, Posting, Refs, SystemAccount,
    grants::UsageScope,
    summary::Month,
    usage::{Usage, UsageEvent},
};
use chrono::Datelike;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    NewTransfer, OutboxEvent, StoreError,
    holds::{Gate, HoldBatch, HoldOp, HoldOutcome},
    outbox,
    positions::Booker,
};

/// A validated, rated event ready to record.
#[derive(Debug, Clone)]
pub struct RatedEvent {
    pub event: UsageEvent,
    pub cost: Credits,
    pub price_version: i64,
    /// Hash of the event's canonical text: the same id with another payload is a conflict.
    pub payload_hash: Vec<u8>,
}

/// One request's events for one org.
#[derive(Debug, Clone)]
pub struct UsageJob {
    pub org_id: Uuid,
    /// Who reported it (`key:{id}`), written on the transfers.
    pub actor: String,
    pub events: Vec<RatedEvent>,
    /// A hold to make, or the hold these events settle (boxed: most jobs have none).
    pub hold: Option<Box<HoldOp>>,
}

/// What was recorded for an event (now or the first time it was sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub usage_id: Uuid,
    pub cost: Credits,
    pub price_version: i64,
    /// `None` when the cost rounded to zero: nothing moved.
    pub transfer_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    Accepted(Recorded),
    /// The id was recorded before with the same payload; this is that first result.
    Duplicate(Recorded),
    /// The id was recorded before with a different payload: refused.
    Conflict,
    /// Its cost would take the org below minus its overdraft limit: refused, nothing kept (the
    /// id stays free for a retry once there are credits).
    OverdraftLimit,
    /// Its job's hold operation was refused (a settle of a hold not active): nothing kept.
    Dropped,
}

#[derive(Debug, Clone)]
pub struct JobResult {
    /// One per event of the job, in order.
    pub outcomes: Vec<EventOutcome>,
    /// The org's available balance after this transaction.
    pub balance: Credits,
    /// What became of the job's hold operation (boxed: most jobs have none).
    pub hold: Option<Box<HoldOutcome>>,
}

mod rows;

use rows::EventRows;

handle! {
    /// Recording usage events.
    UsageEvents
}

impl UsageEvents<'_> {
    /// Records the jobs' events in one transaction: inserts the events not recorded before,
    /// then locks every org involved and books one usage transfer per new event with a cost.
    ///
    /// The events go in first, before any org lock, with `ON CONFLICT DO NOTHING` on
    /// `(org_id, source, event_id)`: the unique index is the duplicate check, so several
    /// writers can insert events of the same org at once and only serialize on the org's
    /// balance row. Rows are inserted in key order, so two writers never wait on each other's
    /// keys in a cycle. An event recorded before sources existed (source `''`) holds its id for
    /// every source.
    pub async fn record_usage(&self, jobs: &[UsageJob]) -> Result<Vec<JobResult>, StoreError> {
        // The first occurrence of each (org, id) in the batch is a candidate to insert.
        let mut candidates: HashMap<EventKey, Candidate> = HashMap::new();
        let mut transfers = Vec::new();
        for j in jobs {
            for e in &j.events {
                candidates
                    .entry((j.org_id, e.event.source.as_str(), e.event.id.as_str()))
                    .or_insert_with(|| {
                        let usage_id = Uuid::now_v7();
                        let transfer = e.cost.is_positive().then(|| usage_transfer(j, e, usage_id));
                        let c = Candidate {
                            usage_id,
                            transfer_id: transfer.as_ref().map(|t| t.id),
                            event: e,
                            transfer_index: transfer.as_ref().map(|_| transfers.len()),
                        };
                        transfers.extend(transfer);
                        c
                    });
            }
        }
        let mut ordered: Vec<(&EventKey, &Candidate)> = candidates.iter().collect();
        ordered.sort_by(|a, b| a.0.cmp(b.0));
        let mut rows = EventRows::default();
        for ((org, _, _), c) in &ordered {
            rows.push(*org, c.usage_id, c.transfer_id, c.event);
        }

        let mut tx = self.pool.begin().await?;
        let inserted: HashSet<Uuid> = rows
            .insert(&mut tx, self.events_before_sources)
            .await?
            .into_iter()
            .collect();

        // Candidates that were not inserted were recorded before: read what they were.
        let (mut q_orgs, mut q_sources, mut q_ids) = (vec![], vec![], vec![]);
        for ((org, source, id), c) in &ordered {
            if !inserted.contains(&c.usage_id) {
                q_orgs.push(*org);
                q_sources.push(source.to_string());
                q_ids.push(id.to_string());
            }
        }
        let mut earlier: HashMap<(Uuid, String, String), (Vec<u8>, Recorded)> = HashMap::new();
        if !q_orgs.is_empty() {
            for r in sqlx::query!(
                r#"SELECT u.org_id, q.source AS "source!", u.event_id, u.payload_hash, u.id,
                          u.cost, u.price_version, u.transfer_id
                     FROM usage_events u
                     JOIN UNNEST($1::uuid[], $2::text[], $3::text[]) AS q(org_id, source, event_id)
                       ON u.org_id = q.org_id AND u.event_id = q.event_id
                      AND u.source IN (q.source, '')"#,
                &q_orgs,
                &q_sources,
                &q_ids
            )
            .fetch_all(&mut *tx)
            .await?
            {
                let rec = Recorded {
                    usage_id: r.id,
                    cost: Credits::from_stored(r.cost),
                    price_version: r.price_version,
                    transfer_id: r.transfer_id,
                };
                earlier.insert((r.org_id, r.source, r.event_id), (r.payload_hash, rec));
            }
        }

        // Usage stamped in a month already over may land in a stored summary: that month (and
        // the later stored ones) is revised. See `revisions_due`.
        revisions_due(&mut tx, &ordered, &inserted).await?;

        // Book the transfers of the inserted events only, in request order, down to each org's
        // overdraft floor: an event that would go below it is refused and its row removed.
        let org_ids: Vec<Uuid> = jobs.iter().map(|j| j.org_id).collect();
        let mut locked = self
            .ledger()
            .lock_orgs_as(&mut tx, &org_ids, Booker::UsageWriter)
            .await?;
        // Holds the jobs make or settle, and the budgets their usage counts toward.
        let mut holds = HoldBatch::load(&mut tx, &mut locked, jobs).await?;
        let mut hold_outcomes: Vec<Option<Box<HoldOutcome>>> = Vec::with_capacity(jobs.len());
        // Whether each job's hold operation let its events be booked.
        let mut opened: Vec<bool> = Vec::with_capacity(jobs.len());
        let mut running: HashMap<Uuid, Credits> = HashMap::new();
        let mut refused: HashSet<Uuid> = HashSet::new();
        let mut dropped: HashSet<Uuid> = HashSet::new();
        let mut booked: HashSet<Uuid> = HashSet::new();
        let mut new_transfers: Vec<NewTransfer> = Vec::new();
        let mut refusals: HashMap<Uuid, (i64, Credits)> = HashMap::new();
        for j in jobs {
            let limit = locked
                .overdraft_limit(j.org_id)
                .unwrap_or(self.overdraft_limit);
            let floor = Credits::ZERO.checked_sub(limit)?;
            let mut balance = match running.get(&j.org_id) {
                Some(b) => *b,
                None => locked.balance(j.org_id).ok_or(StoreError::OrgNotFound)?,
            };
            // The job's hold first: a hold is booked before its events (it has none), a
            // settle's release before the usage it settles.
            let (gate, mut outcome) = holds.begin(j, &mut balance, floor)?;
            let open = match gate {
                Gate::Open(entries) => {
                    new_transfers.extend(entries);
                    true
                }
                Gate::Closed => false,
            };
            running.insert(j.org_id, balance);
            let budgeted = locked.budgeted(j.org_id);
            let mut usage = Credits::ZERO;
            for e in &j.events {
                let c = &candidates[&(j.org_id, e.event.source.as_str(), e.event.id.as_str())];
                if !open {
                    if inserted.contains(&c.usage_id) {
                        dropped.insert(c.usage_id);
                    }
                    continue;
                }
                let Some(index) = c.transfer_index else {
                    continue;
                };
                if !inserted.contains(&c.usage_id) || !booked.insert(c.usage_id) {
                    continue;
                }
                let balance = running[&j.org_id];
                let after = balance.checked_sub(e.cost)?;
                if after < floor {
                    refused.insert(c.usage_id);
                    let r = refusals.entry(j.org_id).or_insert((0, Credits::ZERO));
                    r.0 += 1;
                    r.1 = r.1.checked_add(e.cost)?;
                } else {
                    running.insert(j.org_id, after);
                    new_transfers.push(transfers[index].clone());
                    usage = usage.checked_add(e.cost)?;
                    if budgeted {
                        holds.count_usage(j.org_id, &e.event.dimensions(), e.cost)?;
                    }
                }
            }
            if open && outcome.is_none() {
                outcome = holds.finish(j, usage);
            }
            hold_outcomes.push(outcome.map(Box::new));
            opened.push(open);
        }
        if !dropped.is_empty() {
            // An event an open job names stays recorded, also when a closed job named it too.
            for (j, _) in jobs.iter().zip(&opened).filter(|(_, open)| **open) {
                for e in &j.events {
                    let c = &candidates[&(j.org_id, e.event.source.as_str(), e.event.id.as_str())];
                    dropped.remove(&c.usage_id);
                }
            }
        }
        if !refused.is_empty() {
            record_refusals(&mut tx, &refused, &refusals).await?;
        }
        if !dropped.is_empty() {
            let ids: Vec<Uuid> = dropped.iter().copied().collect();
            sqlx::query!("DELETE FROM usage_events WHERE id = ANY($1)", &ids)
                .execute(&mut *tx)
                .await?;
        }
        self.ledger()
            .book_locked(&mut tx, &mut locked, &new_transfers, false)
            .await?;
        holds.write(&mut tx).await?;
        // The monthly rollups summaries read, from the events that stay recorded.
        crate::rollups::add(
            &mut tx,
            ordered
                .iter()
                .filter(|(_, c)| {
                    inserted.contains(&c.usage_id)
                        && !refused.contains(&c.usage_id)
                        && !dropped.contains(&c.usage_id)
                })
                .map(|((org, _, _), c)| (*org, c.event)),
        )
        .await?;

        // Each event's outcome, against the record that holds its id: the earlier one, or the
        // first occurrence in this batch.
        let mut results = Vec::with_capacity(jobs.len());
        let mut accepted_once: HashSet<Uuid> = HashSet::new();
        for ((j, hold), open) in jobs.iter().zip(hold_outcomes).zip(opened) {
            let mut outcomes = Vec::with_capacity(j.events.len());
            for e in &j.events {
                let key = (j.org_id, e.event.source.clone(), e.event.id.clone());
                let (hash, rec, fresh) = match earlier.get(&key) {
                    Some((hash, rec)) => (hash.as_slice(), rec.clone(), false),
                    None => {
                        let c =
                            &candidates[&(j.org_id, e.event.source.as_str(), e.event.id.as_str())];
                        let rec = Recorded {
                            usage_id: c.usage_id,
                            cost: c.event.cost,
                            price_version: c.event.price_version,
                            transfer_id: c.transfer_id,
                        };
                        (c.event.payload_hash.as_slice(), rec, true)
                    }
                };
                outcomes.push(if hash != e.payload_hash.as_slice() {
                    EventOutcome::Conflict
                } else if fresh && refused.contains(&rec.usage_id) {
                    EventOutcome::OverdraftLimit
                } else if fresh && dropped.contains(&rec.usage_id) {
                    EventOutcome::Dropped
                } else if fresh && open && accepted_once.insert(rec.usage_id) {
                    // (A closed job's event that another job booked is that job's.)
                    EventOutcome::Accepted(rec)
                } else {
                    EventOutcome::Duplicate(rec)
                });
            }
            let balance = locked.balance(j.org_id).ok_or(StoreError::OrgNotFound)?;
            results.push(JobResult {
                outcomes,
                balance,
                hold,
            });
        }
        tx.commit().await?;
        // What the writer now knows of each org without budgets, for checks (see
        // `crate::positions`): true until the org's next expiry or its next booking.
        let mut seen: HashSet<Uuid> = HashSet::new();
        for j in jobs {
            let org = j.org_id;
            if locked.budgeted(org) || !seen.insert(org) {
                continue;
            }
            let (Some(available), Some(held)) = (locked.balance(org), locked.held(org)) else {
                continue;
            };
            let until = match (locked.next_expiry(org), holds.first_made_expiry(org)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.positions.put(
                org,
                locked.positions_ticket(),
                available,
                held,
                locked.now(),
                until,
            );
        }
        Ok(results)
    }
}

/// The advisory lock key of a month's summaries: late usage of that month takes it shared,
/// summary generation exclusive (see [`Summaries::generate_summaries`]).
pub(crate) fn month_lock_key(month: Month) -> i64 {
    // A fixed tag in the high bits keeps these keys apart from every other advisory lock.
    let index = i64::from(month.first_day().year()) * 12 + i64::from(month.first_day().month0());
    (0x5355_4d4d_i64 << 24) | index
}

/// For the inserted events stamped in a month already over: asks, in this transaction, for a
/// revision of each (org, month) that has a stored summary, through the outbox.
///
/// Late usage is accepted (up to `ingest.late_usage_max_days` old), never dropped, and a
/// stored month it lands in is regenerated as the next revision, with the later stored months
/// re-chained (the revision chain of [`Summaries::generate_summaries`]). The month's lock makes the
/// two exclusive: generation holds it while it reads and stores, so an event commits either
/// before (and is in the summary) or after (and sees the summary, and asks for a revision).
async fn revisions_due(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ordered: &[(&EventKey<'_>, &Candidate<'_>)],
    inserted: &HashSet<Uuid>,
) -> Result<(), StoreError> {
    let current = Month::of(chrono::Utc::now());
    let mut late: Vec<(Uuid, Month)> = ordered
        .iter()
        .filter(|(_, c)| inserted.contains(&c.usage_id))
        .map(|((org, _, _), c)| (*org, Month::of(c.event.event.occurred_at)))
        .filter(|(_, m)| *m < current)
        .collect();
    if late.is_empty() {
        return Ok(());
    }
    late.sort();
    late.dedup();
    let mut months: Vec<Month> = late.iter().map(|(_, m)| *m).collect();
    months.sort();
    months.dedup();
    for m in &months {
        sqlx::query!(
            "SELECT pg_advisory_xact_lock_shared($1)",
            month_lock_key(*m)
        )
        .execute(&mut **tx)
        .await?;
    }
    let orgs: Vec<Uuid> = late.iter().map(|(o, _)| *o).collect();
    let firsts: Vec<chrono::NaiveDate> = late.iter().map(|(_, m)| m.first_day()).collect();
    // Only months already stored need a revision; a month not stored yet is left to its
    // generation, which will see these events.
    let stored = sqlx::query!(
        r#"SELECT q.org_id AS "org_id!", q.month AS "month!"
             FROM UNNEST($1::uuid[], $2::date[]) AS q(org_id, month)
            WHERE EXISTS (SELECT 1 FROM monthly_summaries s
                           WHERE s.org_id = q.org_id AND s.month = q.month)"#,
        &orgs,
        &firsts
    )
    .fetch_all(&mut **tx)
    .await?;
    let due: Vec<(Uuid, OutboxEvent)> = stored
        .into_iter()
        .map(|r| {
            let month = Month::of_date(r.month);
            (r.org_id, OutboxEvent::SummaryRevisionDue { month })
        })
        .collect();
    outbox::write(tx, &due).await
}

/// Removes the rows of events refused at the overdraft floor and counts them per org and day.
async fn record_refusals(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    refused: &HashSet<Uuid>,
    per_org: &HashMap<Uuid, (i64, Credits)>,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = refused.iter().copied().collect();
    sqlx::query!("DELETE FROM usage_events WHERE id = ANY($1)", &ids)
        .execute(&mut **tx)
        .await?;
    let mut orgs: Vec<(&Uuid, &(i64, Credits))> = per_org.iter().collect();
    orgs.sort_by_key(|(org, _)| **org);
    let org_ids: Vec<Uuid> = orgs.iter().map(|(o, _)| **o).collect();
    let events: Vec<i64> = orgs.iter().map(|(_, (n, _))| *n).collect();
    let credits: Vec<Decimal> = orgs.iter().map(|(_, (_, c))| c.as_decimal()).collect();
    sqlx::query!(
        "INSERT INTO usage_refusals (org_id, day, code, events, credits, last_at)
         SELECT o, (now() AT TIME ZONE 'UTC')::date, 'overdraft_limit', n, c, now()
           FROM UNNEST($1::uuid[], $2::bigint[], $3::numeric[]) AS r(o, n, c)
         ON CONFLICT (org_id, day, code) DO UPDATE
            SET events = usage_refusals.events + EXCLUDED.events,
                credits = usage_refusals.credits + EXCLUDED.credits,
                last_at = EXCLUDED.last_at",
        &org_ids,
        &events,
        &credits
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An event's identity: org, source, id.
type EventKey<'a> = (Uuid, &'a str, &'a str);

struct Candidate<'a> {
    usage_id: Uuid,
    transfer_id: Option<Uuid>,
    event: &'a RatedEvent,
    transfer_index: Option<usize>,
}

fn usage_transfer(job: &UsageJob, e: &RatedEvent, usage_id: Uuid) -> NewTransfer {
    let (system, what) = match &e.event.usage {
        Usage::AiTokens(a) => (SystemAccount::UsageAi, a.model.as_str()),
        Usage::Infra(i) => (SystemAccount::UsageInfra, i.resource.as_str()),
    };
    Entry::new(
        Posting::usage(job.org_id, system, e.cost),
        format!("usage:{usage_id}"),
        &job.actor,
        format!("{} {}", e.event.usage.type_name(), what),
        Refs {
            usage_event_id: Some(usage_id),
            event_id: Some(e.event.id.clone()),
            source: Some(e.event.source.clone()),
            price_version: Some(e.price_version),
            ..Refs::default()
        },
    )
    .with_flow(Flow::Usage(UsageScope::of(&e.event.usage)))
}
