//! `/metrics`: the counters move as the service works, in the API process and in the worker.

use std::time::Duration;

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::json;
use tests::{GROWTH, TestApp, eventually, metric_sum, worker::ProcessWorker};

async fn scrape(app: &TestApp, url: &str) -> String {
    let r = app.http.get(url).send().await.expect("scrape");
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    r.text().await.unwrap()
}

/// API metrics count usage outcomes latencies and the outbox.
#[tokio::test]
async fn api_metrics_count_usage_outcomes_latencies_and_the_outbox() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("metered").await;
    let before = scrape(&app, &app.metrics_url).await;
    let now = chrono::Utc::now().to_rfc3339();
    let batch = json!({"events": [
        {"id": "m-1", "type": "ai_tokens", "occurred_at": now, "model": "gpt-4o",
         "operation": "chat", "input_tokens": 1000},
        {"id": "m-2", "type": "infra", "occurred_at": now, "resource": "compute",
         "quantity": "10", "unit": "vcpu_seconds"},
        {"id": "m-3", "type": "ai_tokens", "occurred_at": now, "model": "no-such-model",
         "input_tokens": 1},
    ]});

    let sent = app
        .call(Method::POST, "/v1/usage", Some(&org.key), Some(&batch), &[])
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    app.call(Method::POST, "/v1/usage", Some(&org.key), Some(&batch), &[])
        .await;
    app.balance(&org).await;
    let after = scrape(&app, &app.metrics_url).await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    let events = "creditflow_usage_events_total";
    assert!(moved(events, &[("outcome", "accepted")]) >= Decimal::from(2));
    assert!(moved(events, &[("outcome", "duplicate")]) >= Decimal::from(2));
    assert!(
        moved(
            events,
            &[("outcome", "rejected"), ("code", "unknown_model")]
        ) >= Decimal::TWO
    );
    assert!(moved("creditflow_usage_batch_seconds_count", &[]) >= Decimal::TWO);
    assert!(moved("creditflow_balance_read_seconds_count", &[]) >= Decimal::ONE);
    assert!(after.contains("creditflow_outbox_backlog "), "{after}");
    assert!(after.contains("creditflow_inbox_backlog "), "{after}");
    assert!(
        after.contains("creditflow_inbox_oldest_age_seconds "),
        "{after}"
    );
    assert!(
        after.contains("creditflow_outbox_oldest_age_seconds "),
        "{after}"
    );
}

/// Worker metrics count workflows Stripe calls and emails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_workflows_stripe_calls_and_emails() {
    let app = TestApp::spawn().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let _worker = ProcessWorker::start_with(&app, &[("CREDITFLOW__METRICS__BIND", &bind)]).unwrap();
    let worker_metrics = format!("http://{bind}/metrics");
    let org = app.create_org("metered-buyer").await;
    let api_before = scrape(&app, &app.metrics_url).await;

    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap();
    app.pay_checkout(bought["checkout_url"].as_str().unwrap(), "pm_card_visa")
        .await;
    app.wait_purchase(&org, id, "credited").await;

    let api_after = scrape(&app, &app.metrics_url).await;
    let starts = [("workflow", "purchase_checkout"), ("outcome", "started")];
    assert!(
        metric_sum(&api_after, "creditflow_workflow_starts_total", &starts)
            > metric_sum(&api_before, "creditflow_workflow_starts_total", &starts)
    );
    // The receipt is the workflow's last step: wait until the worker has counted it all.
    let worker = eventually("the worker's figures", Duration::from_secs(30), || async {
        let text = app
            .http
            .get(&worker_metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let done = metric_sum(
            &text,
            "temporal_workflow_completed",
            &[("workflow_type", "purchase_checkout")],
        );
        (done >= Decimal::ONE).then_some(text)
    })
    .await;
    let stripe = "creditflow_stripe_calls_total";
    assert!(
        metric_sum(
            &worker,
            stripe,
            &[("operation", "checkout_session.create"), ("outcome", "ok")]
        ) >= Decimal::ONE,
        "{worker}"
    );
    assert!(
        metric_sum(
            &worker,
            "creditflow_smtp_sends_total",
            &[("outcome", "sent")]
        ) >= Decimal::ONE,
        "{worker}"
    );
    assert_eq!(
        metric_sum(
            &worker,
            "temporal_workflow_failed",
            &[("workflow_type", "purchase_checkout")]
        ),
        Decimal::ZERO
    );
    for gauge in [
        "creditflow_outbox_backlog ",
        "creditflow_holds_active ",
        "creditflow_holds_expired_unreleased ",
        "creditflow_holds_expired_last_hour ",
    ] {
        assert!(worker.contains(gauge), "{gauge}: {worker}");
    }
}
