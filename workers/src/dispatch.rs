//! The outbox dispatcher: turns outbox rows (written in the same transaction as the change they
//! announce: a threshold crossing, a purchase, a refund) into workflow starts, then marks them
//! dispatched. The same loop hands webhook events from the inbox on (`crate::inbox`).
//!
//! At least once: a row is claimed (`FOR UPDATE SKIP LOCKED`), its workflow started, and the row
//! marked in the same database transaction; a crash in between leaves it to be dispatched again,
//! and the start is then not repeated: workflow ids come from business keys and an existing
//! workflow is left to run. A row that cannot be dispatched now (Temporal unreachable, an
//! auto-topup while the org's previous one still runs) waits with a backoff; the rows behind it
//! go on.

use std::time::Duration;

use billing::{PurchaseState, ThresholdPurpose, summary::Month};
use store::{Crossed, OutboxEvent, OutboxRow, Store};
use temporalio_client::{
    Client, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
    errors::WorkflowStartError,
};
use temporalio_common::search_attributes::SearchAttributes;
use uuid::Uuid;
use workflows::topup::{
    AlertInput, AutoTopupWorkflow, LowBalanceAlertWorkflow, TopupInput, alert_workflow_id,
    topup_workflow_id,
};

/// Rows per dispatch round, and the pause when the outbox is empty.
const BATCH_ROWS: i64 = 100;
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long one Temporal call of the dispatcher may take before the row waits for later.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(5);
/// Dispatched outbox rows are kept this long (to look at), then pruned, a batch at a time, at
/// most once per `PRUNE_EVERY`.
pub const OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_BATCH: i64 = 10_000;
/// The expiry sweep: grants past their expiry are booked (to breakage), and holds past theirs
/// released, at most this long after it, a bounded number of orgs per round. No balance waits
/// for it: reads and bookings never count due credits or due holds (see
/// `store::Grants::expire_due`, `store::Holds::expire_due`).
pub const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(10);
const EXPIRY_SWEEP_ORGS: i64 = 500;
/// An auto-topup row waits this long while the org's previous topup still runs.
const TOPUP_BUSY_RETRY: Duration = Duration::from_secs(2);

/// The wait before the `attempts`-th retry of a row: 1 s doubling, at most a minute.
pub(crate) fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 6).unsigned_abs()).min(Duration::from_secs(60))
}

/// What dispatching one row came to.
pub(crate) enum Dispatched {
    /// Done (or nothing to do): mark it.
    Done,
    /// Not now: try again after this long, with why.
    Later(Duration, String),
}

/// Auto-topup and alert settings passed to each workflow.
#[derive(Debug, Clone)]
pub struct TopupPolicy {
    pub attempts_max: u32,
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
    pub daily_max: u32,
    pub settle_recheck_secs: u64,
    /// An alert at a threshold at or above one already sent within this long is recorded
    /// `suppressed`, not mailed (0: every crossing mails).
    pub alert_repeat_after_secs: u64,
}

pub struct Dispatcher {
    pub store: Store,
    /// For the notices the inbox sends itself (a disputed payment).
    pub mailer: activities::mail::Mailer,
    /// To ask the processor what an event reports (the refunds of a charge).
    pub payments: activities::payments::Payments,
    pub temporal: Client,
    pub task_queue: String,
    pub topup: TopupPolicy,
}

impl Dispatcher {
    /// Runs until the process stops.
    pub async fn run(&self) {
        let mut pruned_at: Option<std::time::Instant> = None;
        let mut swept_at: Option<std::time::Instant> = None;
        loop {
            if swept_at.is_none_or(|t| t.elapsed() >= EXPIRY_SWEEP_EVERY) {
                swept_at = Some(std::time::Instant::now());
                match self.store.grants().expire_due(EXPIRY_SWEEP_ORGS).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(orgs = n, "expired grants booked"),
                    Err(e) => tracing::warn!(error = %e, "grant expiry sweep failed; later"),
                }
                match self.store.holds().expire_due(EXPIRY_SWEEP_ORGS).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(orgs = n, "expired holds released"),
                    Err(e) => tracing::warn!(error = %e, "hold expiry sweep failed; later"),
                }
            }
            if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(std::time::Instant::now());
                match self
                    .store
                    .outbox()
                    .prune(OUTBOX_RETENTION, PRUNE_BATCH)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "dispatched outbox rows pruned"),
                    Err(e) => tracing::warn!(error = %e, "outbox pruning failed; later"),
                }
            }
            let handled = async {
                let outbox = self.round().await?;
                let inbox = crate::inbox::round(self).await?;
                anyhow::Ok(outbox + inbox)
            };
            match handled.await {
                Ok(0) => tokio::time::sleep(IDLE_POLL).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox dispatch failed; retrying");
                    tokio::time::sleep(IDLE_POLL * 5).await;
                }
            }
        }
    }

    /// Dispatches up to one batch; returns how many rows it handled.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let mut tx = self.store.pool().begin().await?;
        let rows = self.store.outbox().claim(&mut tx, BATCH_ROWS).await?;
        for row in &rows {
            let dispatched = match row.event() {
                Ok(Some(event)) => self.dispatch(row, event).await,
                Ok(None) => {
                    tracing::warn!(topic = %row.topic, id = row.id, "unknown outbox topic; skipped");
                    Ok(Dispatched::Done)
                }
                Err(e) => Err(e.into()),
            };
            match dispatched {
                Ok(Dispatched::Done) => {
                    self.store.outbox().mark_dispatched(&mut tx, row.id).await?
                }
                Ok(Dispatched::Later(after, why)) => {
                    self.store
                        .outbox()
                        .defer(&mut tx, row.id, after, &why)
                        .await?
                }
                Err(e) => {
                    tracing::warn!(error = %e, id = row.id, topic = %row.topic, "outbox row not dispatched; retrying later");
                    let after = backoff(row.attempts);
                    self.store
                        .outbox()
                        .defer(&mut tx, row.id, after, &e.to_string())
                        .await?
                }
            }
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    async fn dispatch(&self, row: &OutboxRow, event: OutboxEvent) -> anyhow::Result<Dispatched> {
        match event {
            OutboxEvent::ThresholdCrossed(c) => self.crossing(row, c).await,
            OutboxEvent::PurchaseStart {
                purchase_id,
                expires_after_secs,
            } => {
                self.start_purchase(row, purchase_id, expires_after_secs)
                    .await
            }
            OutboxEvent::RefundStart { refund_id } => self.start_refund(row, refund_id).await,
            OutboxEvent::SummaryRevisionDue { month } => self.revise_summary(row, month).await,
            OutboxEvent::SummaryGenerateOrg { month } => self.retry_org_summary(row, month).await,
            OutboxEvent::BudgetAlert(a) => self.budget_alert(row, a).await,
        }
    }

    /// A budget's percent reached: its alert's workflow, once per budget, period and percent.
    async fn budget_alert(
        &self,
        row: &OutboxRow,
        a: store::BudgetAlert,
    ) -> anyhow::Result<Dispatched> {
        use workflows::budgets::{BudgetAlertInput, BudgetAlertWorkflow, workflow_id};
        let org = row.org_id.to_string();
        let options = WorkflowStartOptions::new(
            self.task_queue.clone(),
            workflow_id(&org, &a.budget_id, a.period_start, a.percent),
        )
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .search_attributes(SearchAttributes::new([workflows::ORG_ID.value_set(org)]))
        .build();
        let input = BudgetAlertInput {
            org_id: row.org_id,
            budget_id: a.budget_id,
            percent: a.percent,
            spent: a.spent,
            limit: a.limit,
            period_start: a.period_start,
            resets_at: a.resets_at,
        };
        let started = tokio::time::timeout(
            CALL_LIMIT,
            self.temporal
                .start_workflow(BudgetAlertWorkflow::run, input, options),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Temporal did not answer in time"))?;
        api::metrics::record_workflow_start("budget_alert", &started);
        match started {
            Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(Dispatched::Done),
            Err(e) => Ok(Dispatched::Later(backoff(row.attempts), e.to_string())),
        }
    }

    /// A purchase's workflow, unless the purchase already ended; a purchase whose checkout
    /// would have expired before its workflow could start ends `failed` instead.
    async fn start_purchase(
        &self,
        row: &OutboxRow,
        id: Uuid,
        expires_after: u64,
    ) -> anyhow::Result<Dispatched> {
        let p = self.store.purchases().purchase(id).await?;
        if p.state != PurchaseState::AwaitingPayment || p.checkout_session_id.is_some() {
            return Ok(Dispatched::Done);
        }
        if chrono::Utc::now() >= p.expires_at {
            tracing::warn!(purchase = %id, "the purchase's workflow never started before its expiry; failed");
            self.store
                .purchases()
                .end_purchase(id, PurchaseState::Failed)
                .await?;
            return Ok(Dispatched::Done);
        }
        let left = (p.expires_at - chrono::Utc::now()).num_seconds().max(1) as u64;
        match api::starts::start_purchase(
            &self.temporal,
            &self.task_queue,
            id,
            p.org_id,
            left.min(expires_after),
            CALL_LIMIT,
        )
        .await
        {
            Ok(()) => Ok(Dispatched::Done),
            Err(e) => Ok(Dispatched::Later(backoff(row.attempts), e)),
        }
    }

    /// Late usage landed in a stored month: its next revision, and the later months re-chained.
    async fn revise_summary(&self, row: &OutboxRow, month: Month) -> anyhow::Result<Dispatched> {
        let page = self
            .store
            .summaries()
            .revise_summaries(row.org_id, month)
            .await?;
        tracing::info!(org_id = %row.org_id, %month, revisions = page.revisions_written,
                       later = page.later_revisions_written, "summary revised after late usage");
        Ok(Dispatched::Done)
    }

    /// An org that failed in its month's page, tried alone; while it fails the row waits with
    /// the dispatcher's backoff (and `summary_failures` says why), never blocking other rows.
    async fn retry_org_summary(&self, row: &OutboxRow, month: Month) -> anyhow::Result<Dispatched> {
        match self
            .store
            .summaries()
            .generate_org_summary(month, row.org_id)
            .await
        {
            Ok(_) => {
                tracing::info!(org_id = %row.org_id, %month, "an org's failed summary is stored");
                Ok(Dispatched::Done)
            }
            Err(e) => Ok(Dispatched::Later(backoff(row.attempts), e.to_string())),
        }
    }

    async fn start_refund(&self, row: &OutboxRow, id: Uuid) -> anyhow::Result<Dispatched> {
        match api::starts::start_refund(
            &self.temporal,
            &self.task_queue,
            id,
            row.org_id,
            CALL_LIMIT,
        )
        .await
        {
            Ok(()) => Ok(Dispatched::Done),
            Err(e) => Ok(Dispatched::Later(backoff(row.attempts), e)),
        }
    }

    async fn crossing(&self, row: &OutboxRow, c: Crossed) -> anyhow::Result<Dispatched> {
        let org = row.org_id.to_string();
        let seq = c.crossing_seq;
        let attrs = || SearchAttributes::new([workflows::ORG_ID.value_set(org.clone())]);
        let started = match c.purpose {
            ThresholdPurpose::AutoTopup => {
                let input = TopupInput {
                    org_id: row.org_id,
                    crossing_seq: seq,
                    attempts_max: self.topup.attempts_max,
                    backoff_initial_secs: self.topup.backoff_initial_secs,
                    backoff_max_secs: self.topup.backoff_max_secs,
                    daily_max: Some(self.topup.daily_max),
                    settle_recheck_secs: Some(self.topup.settle_recheck_secs),
                };
                // Single flight: one topup runs per org. A crossing that arrives while one runs
                // waits for it to end and is then decided on the balance of that moment (a
                // topup that already brought it back above the threshold charges nothing more).
                let options =
                    WorkflowStartOptions::new(self.task_queue.clone(), topup_workflow_id(&org))
                        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
                        .search_attributes(attrs())
                        .build();
                let started = tokio::time::timeout(
                    CALL_LIMIT,
                    self.temporal
                        .start_workflow(AutoTopupWorkflow::run, input, options),
                )
                .await
                .map_err(|_| anyhow::anyhow!("Temporal did not answer in time"))?;
                api::metrics::record_workflow_start("auto_topup", &started);
                return match started {
                    Ok(_) => Ok(Dispatched::Done),
                    Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(Dispatched::Later(
                        TOPUP_BUSY_RETRY,
                        "the org's previous topup is still running".into(),
                    )),
                    Err(e) => Err(e.into()),
                };
            }
            ThresholdPurpose::Alert => {
                let threshold_id = c.threshold_id;
                let input = AlertInput {
                    org_id: row.org_id,
                    threshold_id,
                    crossing_seq: seq,
                    threshold: c.threshold,
                    balance: c.balance,
                    repeat_after_secs: self.topup.alert_repeat_after_secs,
                };
                let options = WorkflowStartOptions::new(
                    self.task_queue.clone(),
                    alert_workflow_id(&org, threshold_id, seq),
                )
                .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
                .search_attributes(attrs())
                .build();
                let started = tokio::time::timeout(
                    CALL_LIMIT,
                    self.temporal
                        .start_workflow(LowBalanceAlertWorkflow::run, input, options),
                )
                .await
                .map_err(|_| anyhow::anyhow!("Temporal did not answer in time"))?;
                api::metrics::record_workflow_start("low_balance_alert", &started);
                started.map(|_| ())
            }
        };
        match started {
            Ok(()) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(Dispatched::Done),
            Err(e) => Err(e.into()),
        }
    }
}
