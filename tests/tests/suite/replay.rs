//! Recorded histories of the shipped workflows, replayed against the current code: a change
//! that breaks determinism fails here, before it can break a running workflow.
//!
//! `CREDITFLOW_RECORD_HISTORIES=1` re-records them (run once after an intended change, then
//! commit `tests/histories/`).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use temporalio_client::{WorkflowFetchHistoryOptions, WorkflowHistory};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};
use tests::{TestApp, eventually, worker::TestWorker};
use workflows::purchase::PurchaseWorkflow;

fn history_path() -> std::path::PathBuf {
    tests::workspace_root().join("tests/histories/purchase_checkout.json")
}

/// Runs a whole purchase (pay, grant, receipt) and saves its history.
async fn record() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("replay").await;
    let bought = app
        .call(Method::POST, "/v1/purchases", Some(&org.key),
              Some(&json!({"package_id": "01970000-0000-7000-8000-000000000002", "user": "ana@acme.test"})), &[])
        .await;
    let id = bought.body["id"].as_str().unwrap().to_string();
    let url = bought.body["checkout_url"].as_str().unwrap();
    app.pay_checkout(url, "pm_card_visa").await;
    let handle = app
        .temporal
        .get_workflow_handle::<PurchaseWorkflow>(format!("purchase-{id}"));
    tokio::time::timeout(
        Duration::from_secs(30),
        handle.get_result(Default::default()),
    )
    .await
    .unwrap()
    .unwrap();
    eventually("the receipt", Duration::from_secs(10), || async {
        (!app.smtp.received().is_empty()).then_some(())
    })
    .await;
    let json = handle
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .to_json()
        .await
        .unwrap();
    std::fs::write(history_path(), json).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_purchase_history_replays_against_the_current_code() {
    if std::env::var_os("CREDITFLOW_RECORD_HISTORIES").is_some() {
        record().await;
    }
    let bytes = std::fs::read(history_path())
        .expect("a recorded history: run with CREDITFLOW_RECORD_HISTORIES=1");
    let history = WorkflowHistory::from_json(&bytes).unwrap();
    let mut options = WorkflowReplayerOptions::new().build();
    options.register_workflow::<PurchaseWorkflow>().unwrap();
    let replayer = WorkflowReplayer::new(options).unwrap();

    replayer
        .replay_workflow(history)
        .await
        .expect("the purchase workflow is still deterministic");
}
