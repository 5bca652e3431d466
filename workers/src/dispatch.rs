//! The outbox dispatcher: turns outbox rows (written in the same transaction as the balance
//! change they announce) into workflow starts, then marks them dispatched.
//!
//! At least once: a row is claimed (`FOR UPDATE SKIP LOCKED`), its workflow started, and the row
//! marked in the same database transaction; a crash in between leaves it to be dispatched again,
//! and the start is then not repeated: workflow ids come from business keys, alert workflows
//! refuse a duplicate id, and the auto-topup workflow (one per org) joins the running one.

use std::time::Duration;

use serde_json::Value;
use store::{OutboxRow, Store, THRESHOLD_CROSSED};
use temporalio_client::{
    Client, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
    errors::WorkflowStartError,
};
use temporalio_common::search_attributes::SearchAttributes;
use workflows::topup::{
    AlertInput, AutoTopupWorkflow, LowBalanceAlertWorkflow, TopupInput, alert_workflow_id,
    topup_workflow_id,
};

/// Rows per dispatch round, and the pause when the outbox is empty.
const BATCH_ROWS: i64 = 100;
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Auto-topup retry settings passed to each workflow.
#[derive(Debug, Clone)]
pub struct TopupPolicy {
    pub attempts_max: u32,
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
}

pub struct Dispatcher {
    pub store: Store,
    pub temporal: Client,
    pub task_queue: String,
    pub topup: TopupPolicy,
}

impl Dispatcher {
    /// Runs until the process stops.
    pub async fn run(&self) {
        loop {
            match self.round().await {
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
        let rows = self.store.claim_outbox(&mut tx, BATCH_ROWS).await?;
        for row in &rows {
            self.dispatch(row).await?;
            self.store.mark_dispatched(&mut tx, row.id).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    async fn dispatch(&self, row: &OutboxRow) -> anyhow::Result<()> {
        if row.topic != THRESHOLD_CROSSED {
            tracing::warn!(topic = %row.topic, id = row.id, "unknown outbox topic; skipped");
            return Ok(());
        }
        let org = row.org_id.to_string();
        let p = &row.payload;
        let seq = p["crossing_seq"].as_i64().unwrap_or_default();
        let attrs = || SearchAttributes::new([workflows::ORG_ID.value_set(org.clone())]);
        let started = match p["purpose"].as_str() {
            Some("auto_topup") => {
                let input = TopupInput {
                    org_id: org.clone(),
                    crossing_seq: seq,
                    attempts_max: self.topup.attempts_max,
                    backoff_initial_secs: self.topup.backoff_initial_secs,
                    backoff_max_secs: self.topup.backoff_max_secs,
                };
                // Single flight: a dip while a topup runs joins it instead of charging again.
                let options =
                    WorkflowStartOptions::new(self.task_queue.clone(), topup_workflow_id(&org))
                        .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                        .search_attributes(attrs())
                        .build();
                let started = self
                    .temporal
                    .start_workflow(AutoTopupWorkflow::run, input, options)
                    .await;
                api::metrics::record_workflow_start("auto_topup", &started);
                started.map(|_| ())
            }
            Some("alert") => {
                let threshold_id = p["threshold_id"].as_i64().unwrap_or_default();
                let input = AlertInput {
                    org_id: org.clone(),
                    threshold_id,
                    crossing_seq: seq,
                    threshold: text(&p["threshold"]),
                    balance: text(&p["balance"]),
                };
                let options = WorkflowStartOptions::new(
                    self.task_queue.clone(),
                    alert_workflow_id(&org, threshold_id, seq),
                )
                .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
                .search_attributes(attrs())
                .build();
                let started = self
                    .temporal
                    .start_workflow(LowBalanceAlertWorkflow::run, input, options)
                    .await;
                api::metrics::record_workflow_start("low_balance_alert", &started);
                started.map(|_| ())
            }
            other => {
                tracing::warn!(purpose = ?other, id = row.id, "unknown threshold purpose; skipped");
                Ok(())
            }
        };
        match started {
            Ok(()) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}
