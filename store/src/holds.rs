//! Holds: credits set aside for work in flight, and their settles, voids, extensions and
//! expiries. The rules are `billing::holds`'s; this module stores them.
//!
//! Every change of a hold's state happens under its org's account lock (`Ledger::lock_orgs`),
//! in the transaction that books its transfer, so the org lock orders them: a hold is
//! created, settled, voided, extended or expired by one transaction at a time, and its row is
//! read again under the lock before it changes. Creating and settling ride the usage writer's
//! batches ([`crate::Ingestor`]): one transaction, one balance update per org, for many holds.

use std::collections::HashMap;

use billing::{
    Credits, Entry, Flow, Posting, Refs,
    budgets::Standing,
    holds::{self, Dimensions, HoldState, Overage, Refusal},
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    LockedOrgs, NewTransfer, StoreError, budgets::BudgetBook, ledger::DueHold, usage::UsageJob,
};

/// A hold to make.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    /// The client's id, unique per org: the same id and body again is the same hold.
    pub hold_id: String,
    pub request_hash: Vec<u8>,
    pub requested: Credits,
    pub overage: Overage,
    pub ttl: Duration,
    pub dims: Dimensions,
    /// The price version an estimate was rated with.
    pub price_version: Option<i64>,
}

/// A settle of a hold: the job's events are its usage.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    /// Ours.
    pub hold: Uuid,
    pub settle_id: String,
    pub request_hash: Vec<u8>,
}

/// What a usage job does to a hold before its events are booked.
#[derive(Debug, Clone)]
pub enum HoldOp {
    Create(HoldRequest),
    Settle(SettleRequest),
}

/// A hold as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub id: Uuid,
    pub org_id: Uuid,
    pub hold_id: String,
    /// As stored: an active hold past `expires_at` is expired ([`Hold::state_at`]).
    pub state: HoldState,
    pub requested: Credits,
    pub amount: Credits,
    pub overage: Overage,
    pub dims: Dimensions,
    pub price_version: Option<i64>,
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub settled: Option<Credits>,
    pub released: Option<Credits>,
    pub settle_id: Option<String>,
    /// What the settle recorded as usage (all of it, also beyond the hold).
    pub usage_credits: Option<Credits>,
    /// The settle came after the hold had expired.
    pub late: bool,
    #[serde(skip)]
    request_hash: Vec<u8>,
    #[serde(skip)]
    settle_hash: Option<Vec<u8>>,
}

impl Hold {
    /// The state at `at`: an active hold at or past its expiry is expired, booked or not.
    pub fn state_at(&self, at: DateTime<Utc>) -> HoldState {
        if self.state == HoldState::Active && self.expires_at <= at {
            HoldState::Expired
        } else {
            self.state
        }
    }

    /// What it ended with, as of `at`: (settled, released) once it ended.
    pub fn split_at(&self, at: DateTime<Utc>) -> (Option<Credits>, Option<Credits>) {
        match (self.state, self.state_at(at)) {
            (HoldState::Active, HoldState::Expired) => (Some(Credits::ZERO), Some(self.amount)),
            _ => (self.settled, self.released),
        }
    }
}

/// What became of a hold operation.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldOutcome {
    Created(Hold),
    /// The same `hold_id` and body as before: the hold as it stands.
    Replay(Hold),
    /// The `hold_id` was used with another body.
    Conflict(Hold),
    /// Not made: the org's credits or a hard budget do not cover it.
    Refused {
        refusal: Refusal,
        available: Credits,
        budget: Option<Box<Standing>>,
    },
    Settled(Hold),
    /// The same settle as before: the hold as it stands.
    SettleReplay(Hold),
    /// Settled (by another settle), voided, or expired (for a void or an extension).
    NotActive(Hold),
    /// Voided or extended, as asked.
    Done(Hold),
    NotFound,
}

/// The entry that gives a hold's credits back: held → org, once per hold (its key).
pub(crate) fn release_entry(
    org: Uuid,
    hold: Uuid,
    amount: Credits,
    actor: &str,
    why: &str,
) -> Entry {
    Entry::new(
        Posting::release(org, amount),
        format!("release:{hold}"),
        actor,
        format!("hold {hold} {why}"),
        Refs {
            hold_id: Some(hold),
            ..Refs::default()
        },
    )
    .with_flow(Flow::Hold)
}

/// Holds by where they are, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldCounts {
    /// Active and not past their expiry.
    pub active: i64,
    /// Past their expiry, the release not booked yet (every read counts them released).
    pub expired_unreleased: i64,
    /// Whose expiry fell in the last hour, booked or not (late settles included: they
    /// expired first).
    pub expired_last_hour: i64,
}

/// Marks the holds whose releases at expiry were just booked: (hold, release transfer,
/// amount, expires_at).
pub(crate) async fn mark_expired(
    tx: &mut Transaction<'_, Postgres>,
    released: &[(Uuid, Uuid, Credits, DateTime<Utc>)],
) -> Result<(), StoreError> {
    if released.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = released.iter().map(|r| r.0).collect();
    let transfers: Vec<Uuid> = released.iter().map(|r| r.1).collect();
    let at: Vec<DateTime<Utc>> = released.iter().map(|r| r.3).collect();
    let n = sqlx::query!(
        "UPDATE holds h SET state = 'expired', ended_at = u.at, settled = 0, released = h.amount,
                release_transfer_id = u.t
           FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(id, t, at)
          WHERE h.id = u.id AND h.state = 'active'",
        &ids,
        &transfers,
        &at
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n != released.len() as u64 {
        return Err(StoreError::Invariant(
            "a hold released at its expiry was not active under its org's lock".into(),
        ));
    }
    Ok(())
}

struct HoldRow {
    id: Uuid,
    org_id: Uuid,
    hold_id: String,
    request_hash: Vec<u8>,
    state: String,
    requested: rust_decimal::Decimal,
    amount: rust_decimal::Decimal,
    overage: String,
    user_id: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    labels: serde_json::Value,
    price_version: Option<i64>,
    actor: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    settled: Option<rust_decimal::Decimal>,
    released: Option<rust_decimal::Decimal>,
    settle_id: Option<String>,
    settle_hash: Option<Vec<u8>>,
    usage_credits: Option<rust_decimal::Decimal>,
    late: bool,
}

impl HoldRow {
    fn into_hold(self) -> Result<Hold, StoreError> {
        Ok(Hold {
            id: self.id,
            org_id: self.org_id,
            hold_id: self.hold_id,
            state: self.state.parse()?,
            requested: Credits::from_stored(self.requested),
            amount: Credits::from_stored(self.amount),
            overage: self.overage.parse()?,
            dims: Dimensions {
                user: self.user_id,
                api_key: self.api_key,
                model: self.model,
                labels: serde_json::from_value(self.labels)
                    .map_err(|e| StoreError::Decode(format!("hold labels: {e}")))?,
            },
            price_version: self.price_version,
            actor: self.actor,
            created_at: self.created_at,
            expires_at: self.expires_at,
            ended_at: self.ended_at,
            settled: self.settled.map(Credits::from_stored),
            released: self.released.map(Credits::from_stored),
            settle_id: self.settle_id,
            usage_credits: self.usage_credits.map(Credits::from_stored),
            late: self.late,
            request_hash: self.request_hash,
            settle_hash: self.settle_hash,
        })
    }
}

/// The holds of one writer batch: those its jobs name, as they stand under the orgs' locks,
/// and what the batch did to them.
pub(crate) struct HoldBatch {
    now: DateTime<Utc>,
    holds: HashMap<Uuid, Hold>,
    by_client: HashMap<(Uuid, String), Uuid>,
    created: Vec<Uuid>,
    settled: Vec<Uuid>,
    /// The release each settle booked.
    release_of: HashMap<Uuid, Uuid>,
    budgets: HashMap<Uuid, BudgetBook>,
}

/// What a job may book after its hold operation.
pub(crate) enum Gate {
    /// Book the job's events (after these transfers).
    Open(Vec<NewTransfer>),
    /// Book nothing of the job: its hold operation was refused.
    Closed,
}

impl HoldBatch {
    /// Reads, under the orgs' locks, the holds the jobs name and the budgets of their orgs.
    pub(crate) async fn load(
        tx: &mut Transaction<'_, Postgres>,
        locked: &mut LockedOrgs,
        jobs: &[UsageJob],
    ) -> Result<HoldBatch, StoreError> {
        let now = locked.now();
        let (mut ids, mut orgs, mut client_ids) = (Vec::new(), Vec::new(), Vec::new());
        for j in jobs {
            match j.hold.as_deref() {
                Some(HoldOp::Create(r)) => {
                    orgs.push(j.org_id);
                    client_ids.push(r.hold_id.clone());
                }
                Some(HoldOp::Settle(s)) => ids.push(s.hold),
                None => {}
            }
        }
        let mut batch = HoldBatch {
            now,
            holds: HashMap::new(),
            by_client: HashMap::new(),
            created: Vec::new(),
            settled: Vec::new(),
            release_of: HashMap::new(),
            budgets: HashMap::new(),
        };
        if !ids.is_empty() || !orgs.is_empty() {
            let rows = sqlx::query_as!(
                HoldRow,
                r#"SELECT id AS "id!", org_id AS "org_id!", hold_id AS "hold_id!",
                        request_hash AS "request_hash!", state AS "state!",
                        requested AS "requested!", amount AS "amount!", overage AS "overage!",
                        user_id, api_key, model, labels AS "labels!", price_version,
                        actor AS "actor!", created_at AS "created_at!",
                        expires_at AS "expires_at!", ended_at, settled, released, settle_id,
                        settle_hash, usage_credits, late AS "late!"
                   FROM holds WHERE id = ANY($1)
                 UNION
                 SELECT h.id, h.org_id, h.hold_id, h.request_hash, h.state, h.requested, h.amount,
                        h.overage, h.user_id, h.api_key, h.model, h.labels, h.price_version,
                        h.actor, h.created_at, h.expires_at, h.ended_at, h.settled, h.released,
                        h.settle_id, h.settle_hash, h.usage_credits, h.late
                   FROM UNNEST($2::uuid[], $3::text[]) AS q(org_id, hold_id)
                   JOIN holds h ON h.org_id = q.org_id AND h.hold_id = q.hold_id"#,
                &ids,
                &orgs,
                &client_ids
            )
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                let h = r.into_hold()?;
                if h.state == HoldState::Active {
                    // Past its expiry (`release_due` checks), it goes back first: a settle
                    // of it is late and finds it released by this booking.
                    locked.release_due(
                        h.org_id,
                        DueHold {
                            id: h.id,
                            amount: h.amount,
                            expires_at: h.expires_at,
                        },
                    );
                }
                batch.by_client.insert((h.org_id, h.hold_id.clone()), h.id);
                batch.holds.insert(h.id, h);
            }
        }
        let mut budgeted: Vec<Uuid> = jobs
            .iter()
            .map(|j| j.org_id)
            .filter(|o| locked.budgeted(*o))
            .collect();
        budgeted.sort();
        budgeted.dedup();
        if !budgeted.is_empty() {
            batch.budgets = BudgetBook::load(tx, &budgeted, now).await?;
        }
        Ok(batch)
    }

    /// The job's hold operation, against the org's running `available` balance (changed by
    /// what it books) and its `floor`.
    pub(crate) fn begin(
        &mut self,
        job: &UsageJob,
        available: &mut Credits,
        floor: Credits,
    ) -> Result<(Gate, Option<HoldOutcome>), StoreError> {
        let org = job.org_id;
        match job.hold.as_deref() {
            None => Ok((Gate::Open(Vec::new()), None)),
            Some(HoldOp::Create(r)) => {
                if let Some(id) = self.by_client.get(&(org, r.hold_id.clone())) {
                    let h = self.holds[id].clone();
                    let outcome = if h.request_hash == r.request_hash {
                        HoldOutcome::Replay(h)
                    } else {
                        HoldOutcome::Conflict(h)
                    };
                    return Ok((Gate::Closed, Some(outcome)));
                }
                let standings = self.budgets.get(&org).map(BudgetBook::standings);
                let room = standings.and_then(|s| billing::budgets::hard_room(s, &r.dims));
                let amount = match holds::decide(r.requested, r.overage, *available, floor, room) {
                    Ok(a) => a,
                    Err(refusal) => {
                        let budget = match &refusal {
                            Refusal::BudgetExhausted { budget_id } => standings
                                .and_then(|s| s.iter().find(|s| &s.budget.id == budget_id))
                                .cloned()
                                .map(Box::new),
                            Refusal::InsufficientCredits { .. } => None,
                        };
                        let outcome = HoldOutcome::Refused {
                            refusal,
                            available: *available,
                            budget,
                        };
                        return Ok((Gate::Closed, Some(outcome)));
                    }
                };
                let id = Uuid::now_v7();
                let mut entry = Entry::new(
                    Posting::hold(org, amount),
                    format!("hold:{id}"),
                    &job.actor,
                    format!("hold {}", r.hold_id),
                    Refs {
                        hold_id: Some(id),
                        client_hold_id: Some(r.hold_id.clone()),
                        price_version: r.price_version,
                        ..Refs::default()
                    },
                )
                .with_flow(Flow::Hold);
                entry.id = id;
                *available = available.checked_sub(amount)?;
                if let Some(b) = self.budgets.get_mut(&org) {
                    b.hold(&r.dims, amount)?;
                }
                let hold = Hold {
                    id,
                    org_id: org,
                    hold_id: r.hold_id.clone(),
                    state: HoldState::Active,
                    requested: r.requested,
                    amount,
                    overage: r.overage,
                    dims: r.dims.clone(),
                    price_version: r.price_version,
                    actor: job.actor.clone(),
                    created_at: self.now,
                    expires_at: self.now + r.ttl,
                    ended_at: None,
                    settled: None,
                    released: None,
                    settle_id: None,
                    usage_credits: None,
                    late: false,
                    request_hash: r.request_hash.clone(),
                    settle_hash: None,
                };
                self.by_client.insert((org, r.hold_id.clone()), id);
                self.holds.insert(id, hold.clone());
                self.created.push(id);
                Ok((Gate::Open(vec![entry]), Some(HoldOutcome::Created(hold))))
            }
            Some(HoldOp::Settle(s)) => {
                let Some(h) = self.holds.get_mut(&s.hold).filter(|h| h.org_id == org) else {
                    return Ok((Gate::Closed, Some(HoldOutcome::NotFound)));
                };
                if let Some(done) = &h.settle_id {
                    let same = *done == s.settle_id
                        && h.settle_hash.as_deref() == Some(s.request_hash.as_slice());
                    return Ok(if same {
                        // Nothing is booked again: its events recorded the first time answer
                        // as duplicates, and any refused at the floor then stay refused.
                        (Gate::Closed, Some(HoldOutcome::SettleReplay(h.clone())))
                    } else {
                        (Gate::Closed, Some(HoldOutcome::NotActive(h.clone())))
                    });
                }
                match h.state_at(self.now) {
                    HoldState::Settled | HoldState::Voided => {
                        Ok((Gate::Closed, Some(HoldOutcome::NotActive(h.clone()))))
                    }
                    HoldState::Expired => {
                        // Late: its credits went back at its instant (booked, or released
                        // first by this very booking); the usage is recorded all the same.
                        h.late = true;
                        h.settle_id = Some(s.settle_id.clone());
                        h.settle_hash = Some(s.request_hash.clone());
                        if h.state == HoldState::Active {
                            h.state = HoldState::Expired;
                            h.ended_at = Some(h.expires_at);
                            h.settled = Some(Credits::ZERO);
                            h.released = Some(h.amount);
                        }
                        self.settled.push(h.id);
                        Ok((Gate::Open(Vec::new()), None))
                    }
                    HoldState::Active => {
                        let entry = release_entry(org, h.id, h.amount, &job.actor, "settled");
                        *available = available.checked_add(h.amount)?;
                        if let Some(b) = self.budgets.get_mut(&org) {
                            b.release(&h.dims, h.amount)?;
                        }
                        h.state = HoldState::Settled;
                        h.ended_at = Some(self.now);
                        h.settle_id = Some(s.settle_id.clone());
                        h.settle_hash = Some(s.request_hash.clone());
                        self.settled.push(h.id);
                        self.release_of.insert(h.id, entry.id);
                        Ok((Gate::Open(vec![entry]), None))
                    }
                }
            }
        }
    }

    /// After the job's events: a settle's split, by the usage it booked.
    pub(crate) fn finish(&mut self, job: &UsageJob, usage: Credits) -> Option<HoldOutcome> {
        let Some(HoldOp::Settle(s)) = job.hold.as_deref() else {
            return None;
        };
        let h = self.holds.get_mut(&s.hold)?;
        h.usage_credits = Some(usage);
        if h.state == HoldState::Settled {
            let (settled, released) = holds::settle_split(h.amount, usage);
            h.settled = Some(settled);
            h.released = Some(released);
        }
        Some(HoldOutcome::Settled(h.clone()))
    }

    /// Counts a booked usage event toward the org's budgets.
    pub(crate) fn count_usage(
        &mut self,
        org: Uuid,
        dims: &Dimensions,
        cost: Credits,
    ) -> Result<(), StoreError> {
        if let Some(b) = self.budgets.get_mut(&org) {
            b.spend(dims, cost)?;
        }
        Ok(())
    }

    /// The soonest expiry of the holds this batch made for `org`.
    pub(crate) fn first_made_expiry(&self, org: Uuid) -> Option<DateTime<Utc>> {
        self.created
            .iter()
            .filter_map(|id| self.holds.get(id))
            .filter(|h| h.org_id == org)
            .map(|h| h.expires_at)
            .min()
    }

    /// Writes the holds made and settled, and the budgets' spend and alerts.
    pub(crate) async fn write(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), StoreError> {
        if !self.created.is_empty() {
            let mut c = HoldColumns::default();
            for id in &self.created {
                c.push(&self.holds[id]);
            }
            sqlx::query!(
                "INSERT INTO holds (id, org_id, hold_id, request_hash, state, requested, amount,
                                    overage, user_id, api_key, model, labels, price_version,
                                    actor, created_at, expires_at)
                 SELECT u.id, u.org_id, u.hold_id, u.request_hash, 'active', u.requested, u.amount,
                        u.overage, u.user_id, u.api_key, u.model, u.labels, u.price_version,
                        u.actor, u.created_at, u.expires_at
                   FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::numeric[],
                               $6::numeric[], $7::text[], $8::text[], $9::text[], $10::text[],
                               $11::jsonb[], $12::bigint[], $13::text[], $14::timestamptz[],
                               $15::timestamptz[])
                     AS u(id, org_id, hold_id, request_hash, requested, amount, overage, user_id,
                          api_key, model, labels, price_version, actor, created_at, expires_at)",
                &c.ids,
                &c.orgs,
                &c.hold_ids,
                &c.hashes,
                &c.requested,
                &c.amounts,
                &c.overages,
                &c.users as &[Option<String>],
                &c.api_keys as &[Option<String>],
                &c.models as &[Option<String>],
                &c.labels,
                &c.versions as &[Option<i64>],
                &c.actors,
                &c.created,
                &c.expires
            )
            .execute(&mut **tx)
            .await?;
        }
        if !self.settled.is_empty() {
            let mut ids = Vec::new();
            let mut states = Vec::new();
            let mut ended = Vec::new();
            let mut settled = Vec::new();
            let mut released = Vec::new();
            let mut settle_ids = Vec::new();
            let mut hashes = Vec::new();
            let mut usage = Vec::new();
            let mut late = Vec::new();
            let mut transfers: Vec<Option<Uuid>> = Vec::new();
            for id in &self.settled {
                let h = &self.holds[id];
                ids.push(h.id);
                states.push(h.state.as_str().to_string());
                ended.push(h.ended_at.unwrap_or(self.now));
                settled.push(h.settled.unwrap_or_default().as_decimal());
                released.push(h.released.unwrap_or_default().as_decimal());
                settle_ids.push(h.settle_id.clone().unwrap_or_default());
                hashes.push(h.settle_hash.clone().unwrap_or_default());
                usage.push(h.usage_credits.unwrap_or_default().as_decimal());
                late.push(h.late);
                transfers.push(self.release_of.get(id).copied());
            }
            // A late settle leaves the expiry's own columns (booked before it, under the same
            // lock) as they are.
            sqlx::query!(
                "UPDATE holds h
                    SET state = u.state, ended_at = COALESCE(h.ended_at, u.ended),
                        settled = CASE WHEN u.late THEN h.settled ELSE u.settled END,
                        released = CASE WHEN u.late THEN h.released ELSE u.released END,
                        settle_id = u.settle_id, settle_hash = u.hash, usage_credits = u.usage,
                        late = u.late,
                        release_transfer_id = COALESCE(h.release_transfer_id, u.transfer)
                   FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::numeric[],
                               $5::numeric[], $6::text[], $7::bytea[], $8::numeric[],
                               $9::bool[], $10::uuid[])
                     AS u(id, state, ended, settled, released, settle_id, hash, usage, late,
                          transfer)
                  WHERE h.id = u.id",
                &ids,
                &states,
                &ended,
                &settled,
                &released,
                &settle_ids,
                &hashes,
                &usage,
                &late,
                &transfers as &[Option<Uuid>]
            )
            .execute(&mut **tx)
            .await?;
        }
        BudgetBook::write_all(tx, std::mem::take(&mut self.budgets)).await
    }
}

#[derive(Default)]
struct HoldColumns {
    ids: Vec<Uuid>,
    orgs: Vec<Uuid>,
    hold_ids: Vec<String>,
    hashes: Vec<Vec<u8>>,
    requested: Vec<rust_decimal::Decimal>,
    amounts: Vec<rust_decimal::Decimal>,
    overages: Vec<String>,
    users: Vec<Option<String>>,
    api_keys: Vec<Option<String>>,
    models: Vec<Option<String>>,
    labels: Vec<serde_json::Value>,
    versions: Vec<Option<i64>>,
    actors: Vec<String>,
    created: Vec<DateTime<Utc>>,
    expires: Vec<DateTime<Utc>>,
}

impl HoldColumns {
    fn push(&mut self, h: &Hold) {
        self.ids.push(h.id);
        self.orgs.push(h.org_id);
        self.hold_ids.push(h.hold_id.clone());
        self.hashes.push(h.request_hash.clone());
        self.requested.push(h.requested.as_decimal());
        self.amounts.push(h.amount.as_decimal());
        self.overages.push(h.overage.as_str().to_string());
        self.users.push(h.dims.user.clone());
        self.api_keys.push(h.dims.api_key.clone());
        self.models.push(h.dims.model.clone());
        self.labels
            .push(serde_json::to_value(&h.dims.labels).unwrap_or_default());
        self.versions.push(h.price_version);
        self.actors.push(h.actor.clone());
        self.created.push(h.created_at);
        self.expires.push(h.expires_at);
    }
}

/// What an org may spend now: its available credits, what its holds set aside, its budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub available: Credits,
    pub held: Credits,
    /// In id order, as of `as_of`.
    pub budgets: Vec<Standing>,
    /// The instant this is true at.
    pub as_of: DateTime<Utc>,
}

handle! {
    /// Holds outside the usage writer: reads, voids, extensions, the expiry sweep.
    Holds
}

/// A filter of an org's holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldQuery {
    pub org_id: Uuid,
    /// As of now (an active hold past its expiry is expired).
    pub state: Option<HoldState>,
    /// Only holds with an id below this one (the previous page's last).
    pub before: Option<Uuid>,
    pub limit: i64,
}

impl Holds<'_> {
    /// The org's position now: the writer's last commit while it stands, else one snapshot of
    /// the balance (due grant expiries and due holds counted as booked) and one of its budgets.
    pub async fn position(&self, org_id: Uuid) -> Result<Position, StoreError> {
        let at = self.now();
        // What this process's writer committed last, while it stands (see `crate::positions`).
        if let Some(k) = self.positions.get(org_id, at) {
            return Ok(Position {
                available: k.available,
                held: k.held,
                budgets: Vec::new(),
                as_of: k.as_of,
            });
        }
        let b = self.ledger().balance_now(org_id).await?;
        Ok(Position {
            available: b.available,
            held: b.held,
            budgets: self.budgets().standings(org_id).await?,
            as_of: at,
        })
    }

    /// A hold by our id.
    pub async fn hold(&self, id: Uuid) -> Result<Hold, StoreError> {
        sqlx::query_as!(
            HoldRow,
            "SELECT id, org_id, hold_id, request_hash, state, requested, amount, overage,
                    user_id, api_key, model, labels, price_version, actor, created_at,
                    expires_at, ended_at, settled, released, settle_id, settle_hash,
                    usage_credits, late
               FROM holds WHERE id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("hold"))?
        .into_hold()
    }

    /// A hold by the org's own id for it.
    pub async fn by_client_id(&self, org_id: Uuid, hold_id: &str) -> Result<Hold, StoreError> {
        sqlx::query_as!(
            HoldRow,
            "SELECT id, org_id, hold_id, request_hash, state, requested, amount, overage,
                    user_id, api_key, model, labels, price_version, actor, created_at,
                    expires_at, ended_at, settled, released, settle_id, settle_hash,
                    usage_credits, late
               FROM holds WHERE org_id = $1 AND hold_id = $2",
            org_id,
            hold_id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("hold"))?
        .into_hold()
    }

    /// A page of an org's holds, newest first.
    pub async fn list(&self, q: &HoldQuery) -> Result<Vec<Hold>, StoreError> {
        let now = self.now();
        // The state as of now: an active row past its expiry is expired.
        let (stored, due): (Option<&str>, Option<bool>) = match q.state {
            None => (None, None),
            Some(HoldState::Active) => (Some("active"), Some(false)),
            Some(HoldState::Expired) => (None, Some(true)),
            Some(s) => (Some(s.as_str()), None),
        };
        let rows = sqlx::query_as!(
            HoldRow,
            r#"SELECT id, org_id, hold_id, request_hash, state, requested, amount, overage,
                      user_id, api_key, model, labels, price_version, actor, created_at,
                      expires_at, ended_at, settled, released, settle_id, settle_hash,
                      usage_credits, late
                 FROM holds
                WHERE org_id = $1 AND ($2::uuid IS NULL OR id < $2)
                  AND ($3::text IS NULL OR state = $3)
                  AND ($4::bool IS NULL
                       OR ($4 AND (state = 'expired' OR (state = 'active' AND expires_at <= $5)))
                       OR (NOT $4 AND NOT (state = 'active' AND expires_at <= $5)))
                ORDER BY id DESC LIMIT $6"#,
            q.org_id,
            q.before,
            stored,
            due,
            now,
            q.limit
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(HoldRow::into_hold).collect()
    }

    /// Voids an active hold: its credits go back now. Voiding a voided hold again answers it
    /// as it is; a settled or expired one is not active.
    pub async fn void(&self, id: Uuid, actor: &str) -> Result<HoldOutcome, StoreError> {
        let Some((mut tx, mut locked, h)) = self.lock_hold(id).await? else {
            return Ok(HoldOutcome::NotFound);
        };
        let now = locked.now();
        match h.state_at(now) {
            HoldState::Voided => return Ok(HoldOutcome::Replay(h)),
            HoldState::Active => {}
            HoldState::Settled | HoldState::Expired => {
                // An expiry due but not booked yet is booked now, so the row says expired.
                self.ledger()
                    .book_locked(&mut tx, &mut locked, &[], false)
                    .await?;
                tx.commit().await?;
                return Ok(HoldOutcome::NotActive(self.hold(id).await?));
            }
        }
        let release = release_entry(h.org_id, h.id, h.amount, actor, "voided");
        self.ledger()
            .book_locked(&mut tx, &mut locked, std::slice::from_ref(&release), false)
            .await?;
        sqlx::query!(
            "UPDATE holds SET state = 'voided', ended_at = $2, settled = 0, released = amount,
                    release_transfer_id = $3
              WHERE id = $1 AND state = 'active'",
            id,
            now,
            release.id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(HoldOutcome::Done(self.hold(id).await?))
    }

    /// Pushes an active hold's expiry later by `by`; its whole life stays within the longest
    /// time to live from now.
    pub async fn extend(&self, id: Uuid, by: Duration) -> Result<HoldOutcome, StoreError> {
        let Some((mut tx, locked, h)) = self.lock_hold(id).await? else {
            return Ok(HoldOutcome::NotFound);
        };
        let now = locked.now();
        if h.state_at(now) != HoldState::Active {
            return Ok(HoldOutcome::NotActive(h));
        }
        let max = now + Duration::milliseconds(holds::TTL_MAX_MS);
        let to = (h.expires_at + by).min(max);
        sqlx::query!("UPDATE holds SET expires_at = $2 WHERE id = $1", id, to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(HoldOutcome::Done(Hold {
            expires_at: to,
            ..h
        }))
    }

    /// A transaction holding the hold's org lock (every change of a hold's state takes it
    /// first), and the hold as it stands under it; `None` when there is no such hold.
    async fn lock_hold(
        &self,
        id: Uuid,
    ) -> Result<Option<(Transaction<'static, Postgres>, LockedOrgs, Hold)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(org) = sqlx::query_scalar!("SELECT org_id FROM holds WHERE id = $1", id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let locked = self.ledger().lock_orgs(&mut tx, &[org]).await?;
        let h = sqlx::query_as!(
            HoldRow,
            "SELECT id, org_id, hold_id, request_hash, state, requested, amount, overage,
                    user_id, api_key, model, labels, price_version, actor, created_at,
                    expires_at, ended_at, settled, released, settle_id, settle_hash,
                    usage_credits, late
               FROM holds WHERE id = $1 FOR UPDATE",
            id
        )
        .fetch_one(&mut *tx)
        .await?
        .into_hold()?;
        Ok(Some((tx, locked, h)))
    }

    /// What the metrics show of holds, at the clock's now.
    pub async fn counts(&self) -> Result<HoldCounts, StoreError> {
        let r = sqlx::query!(
            // One scan of the active holds (their partial index), one of the recent expired.
            r#"SELECT count(*) FILTER (WHERE expires_at > $1) AS "active!",
                      count(*) FILTER (WHERE expires_at <= $1) AS "due!",
                      count(*) FILTER (WHERE expires_at <= $1
                                         AND expires_at > $1 - interval '1 hour')
                    + (SELECT count(*) FROM holds e
                        WHERE e.state = 'expired' AND e.ended_at <= $1
                          AND e.ended_at > $1 - interval '1 hour') AS "expired_last_hour!"
                 FROM holds WHERE state = 'active'"#,
            self.clock.booking_time().unwrap_or_else(Utc::now)
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(HoldCounts {
            active: r.active,
            expired_unreleased: r.due,
            expired_last_hour: r.expired_last_hour,
        })
    }

    /// Books the release of every hold due at the clock's now, one org per transaction, at
    /// most `orgs_max` orgs; returns how many orgs it released holds of. Idempotent, and
    /// needed by nothing but tidiness: reads count a due hold released, and any booking on
    /// its org releases it first.
    pub async fn expire_due(&self, orgs_max: i64) -> Result<usize, StoreError> {
        let orgs = sqlx::query_scalar!(
            "SELECT DISTINCT org_id FROM holds
              WHERE state = 'active' AND expires_at <= COALESCE($1, now()) LIMIT $2",
            self.clock.booking_time(),
            orgs_max
        )
        .fetch_all(&self.pool)
        .await?;
        for org in &orgs {
            self.grants().expire_org(*org).await?;
        }
        Ok(orgs.len())
    }
}
