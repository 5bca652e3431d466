//! Workflow starts shared by the request handlers and the outbox dispatcher: each workflow's id,
//! options and input in one place, and the bound on how long a caller waits for Temporal.
//!
//! A start is idempotent (the workflow id comes from the business id; an existing workflow is
//! left to run), so the handler's fast start and the dispatcher's later one never make two.

use std::{future::Future, time::Duration};

use temporalio_client::{Client, WorkflowStartOptions, errors::WorkflowStartError};
use temporalio_common::search_attributes::SearchAttributes;
use uuid::Uuid;
use workflows::purchase::{PurchaseInput, PurchaseWorkflow, workflow_id};

/// How long a request handler waits for Temporal before it answers 503 (the client retries
/// inside; a caller's own timeout is often a few seconds).
pub const REQUEST_LIMIT: Duration = Duration::from_secs(1);

/// `fut` bounded by `limit`: a call that does not answer in time is an error like any other.
pub async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "Temporal did not answer within {} ms",
            limit.as_millis()
        )),
    }
}

fn started(kind: &str, r: Result<(), WorkflowStartError>) -> Result<(), WorkflowStartError> {
    crate::metrics::record_workflow_start(kind, &r);
    match r {
        Ok(()) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Starts `purchase-{id}` (or finds it running).
pub async fn start_purchase(
    temporal: &Client,
    task_queue: &str,
    purchase_id: Uuid,
    org_id: Uuid,
    expires_after_secs: u64,
    limit: Duration,
) -> Result<(), String> {
    let input = PurchaseInput {
        purchase_id,
        org_id,
        expires_after_secs: expires_after_secs.max(1),
        funds_recheck_secs: None,
    };
    let options = WorkflowStartOptions::new(
        task_queue.to_string(),
        workflow_id(&input.purchase_id.to_string()),
    )
    .search_attributes(SearchAttributes::new([
        workflows::ORG_ID.value_set(input.org_id.to_string())
    ]))
    .build();
    bounded(limit, async {
        started(
            "purchase_checkout",
            temporal
                .start_workflow(PurchaseWorkflow::run, input, options)
                .await
                .map(|_| ()),
        )
    })
    .await
}

/// Starts `refund-{id}` (or finds it running).
pub async fn start_refund(
    temporal: &Client,
    task_queue: &str,
    refund_id: Uuid,
    org_id: Uuid,
    limit: Duration,
) -> Result<(), String> {
    let options = WorkflowStartOptions::new(
        task_queue.to_string(),
        workflows::refund::workflow_id(&refund_id.to_string()),
    )
    .search_attributes(SearchAttributes::new([
        workflows::ORG_ID.value_set(org_id.to_string())
    ]))
    .build();
    bounded(limit, async {
        started(
            "refund",
            temporal
                .start_workflow(workflows::refund::RefundWorkflow::run, refund_id, options)
                .await
                .map(|_| ()),
        )
    })
    .await
}
