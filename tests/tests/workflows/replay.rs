//! Recorded histories of the shipped workflows (`tests/histories/*.json`), replayed against
//! the current code: a change that breaks determinism fails here, before it can break a running
//! workflow.
//!
//! The histories come from the end-to-end tests themselves: run them once with
//! `CREDITFLOW_RECORD_HISTORIES=1` after an intended workflow change (each test that finishes a
//! workflow calls `TestApp::keep_history`), then commit `tests/histories/`.

use std::time::Duration;

use temporalio_client::WorkflowHistory;
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};
use tests::{GROWTH, TestApp, eventually, worker::TestWorker};
use workflows::purchase::PurchaseWorkflow;

/// The paid path of a purchase (pay, grant, receipt). The other workflows' histories are kept by
/// the tests that run them to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_purchase_keeps_its_history() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("replay").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();

    app.pay_checkout(bought["checkout_url"].as_str().unwrap(), "pm_card_visa")
        .await;
    let workflow_id = workflows::purchase::workflow_id(&id);
    let handle = app
        .temporal
        .get_workflow_handle::<PurchaseWorkflow>(workflow_id.clone());
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

    app.keep_history("purchase_checkout", &workflow_id).await;
}

/// Every recorded history replays against the current code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_history_replays_against_the_current_code() {
    let mut files: Vec<_> = std::fs::read_dir(tests::histories_dir())
        .expect("tests/histories")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for shipped in [
        "purchase_checkout",
        "purchase_checkout_expired",
        "purchase_checkout_bank_debit",
        "auto_topup",
        "auto_topup_processing",
        "low_balance_alert",
        "payment_method_setup",
        "refund",
        "monthly_summaries",
        "budget_alert",
    ] {
        assert!(
            names.iter().any(|n| n == shipped),
            "no recorded history for {shipped}: run the suite with CREDITFLOW_RECORD_HISTORIES=1"
        );
    }

    for file in &files {
        let history = WorkflowHistory::from_json(&std::fs::read(file).unwrap()).unwrap();
        let mut options = WorkflowReplayerOptions::new().build();
        options.register_workflow::<PurchaseWorkflow>().unwrap();
        options
            .register_workflow::<workflows::topup::AutoTopupWorkflow>()
            .unwrap();
        options
            .register_workflow::<workflows::topup::LowBalanceAlertWorkflow>()
            .unwrap();
        options
            .register_workflow::<workflows::payment_method::PaymentMethodSetupWorkflow>()
            .unwrap();
        options
            .register_workflow::<workflows::refund::RefundWorkflow>()
            .unwrap();
        options
            .register_workflow::<workflows::summary::MonthlySummaryWorkflow>()
            .unwrap();
        options
            .register_workflow::<workflows::budgets::BudgetAlertWorkflow>()
            .unwrap();
        let replayer = WorkflowReplayer::new(options).unwrap();

        replayer
            .replay_workflow(history)
            .await
            .unwrap_or_else(|e| panic!("{} no longer replays: {e}", file.display()));
    }
}
