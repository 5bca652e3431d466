//! The API's Prometheus metrics, kept in the process-wide default registry; `creditflow` serves
//! that registry on a port of its own (see `workers::metrics`). Recording is a few atomic adds,
//! cheap enough for the usage hot path.
#![allow(
    clippy::expect_used,
    reason = "metric definitions are constants: registering one can fail only by a typo, at start"
)]

use std::sync::LazyLock;

use prometheus::{
    Histogram, IntCounter, IntCounterVec, register_histogram, register_int_counter,
    register_int_counter_vec,
};
use temporalio_client::errors::WorkflowStartError;

/// Usage events by outcome (`accepted`, `duplicate`, `rejected`) and, for rejections, the code.
pub static USAGE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "creditflow_usage_events_total",
        "Usage events by outcome (accepted, duplicate, rejected) and rejection code",
        &["outcome", "code"]
    )
    .expect("creditflow_usage_events_total registers once")
});

/// Usage requests refused whole because too many usage bytes were in flight.
pub static USAGE_OVERLOADED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "creditflow_usage_overloaded_total",
        "Usage requests refused 429 usage_overloaded (bytes in flight at the bound)"
    )
    .expect("creditflow_usage_overloaded_total registers once")
});

/// Wall time of one `POST /v1/usage`, from the parsed body to the answer (parse, rate, commit).
pub static USAGE_BATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "creditflow_usage_batch_seconds",
        "Time to ingest one usage batch (parse, rate, durable commit)",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5
        ]
    )
    .expect("creditflow_usage_batch_seconds registers once")
});

/// Holds by what happened to them (`created`, `settled`, `late_settled`, `voided`); expiries
/// happen at an instant, not in a request: the worker's metrics port counts them from
/// Postgres (`creditflow_holds_expired_last_hour`, `creditflow_holds_expired_unreleased`).
pub static HOLDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "creditflow_holds_total",
        "Holds by event (created, settled, late_settled, voided)",
        &["event"]
    )
    .expect("creditflow_holds_total registers once")
});

/// Holds and checks refused, by reason (`insufficient_credits`, `budget_exhausted`) and, for
/// budgets, the blocking budget's scope kind (`user`, `api_key`, `model`, `label`).
pub static HOLD_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "creditflow_hold_refusals_total",
        "Holds and checks refused, by reason and budget scope",
        &["reason", "scope"]
    )
    .expect("creditflow_hold_refusals_total registers once")
});

/// Wall time of one `POST /v1/check`.
pub static CHECK_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "creditflow_check_seconds",
        "Time to answer one check",
        vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1
        ]
    )
    .expect("creditflow_check_seconds registers once")
});

/// Wall time of one balance read.
pub static BALANCE_READ_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "creditflow_balance_read_seconds",
        "Time to read one organization's balance",
        vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1
        ]
    )
    .expect("creditflow_balance_read_seconds registers once")
});

/// Workflow starts by workflow type and outcome (`started`, `already_started`, `failed`).
pub static WORKFLOW_STARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "creditflow_workflow_starts_total",
        "Workflow starts by workflow type and outcome (started, already_started, failed)",
        &["workflow", "outcome"]
    )
    .expect("creditflow_workflow_starts_total registers once")
});

/// Counts one workflow start attempt; `workflow` is the workflow type's registered name.
pub fn record_workflow_start<T>(workflow: &str, started: &Result<T, WorkflowStartError>) {
    let outcome = match started {
        Ok(_) => "started",
        Err(WorkflowStartError::AlreadyStarted { .. }) => "already_started",
        Err(_) => "failed",
    };
    WORKFLOW_STARTS
        .with_label_values(&[workflow, outcome])
        .inc();
}
