//! Budget alerts end to end: a soft budget's percent reached by usage becomes one e-mail to
//! the budget's recipients, through the outbox and the `budget_alert` workflow, once.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::json;
use tests::{OPERATOR_KEY, TestApp, eventually, worker::TestWorker};

/// Usage that reaches 80 % of a soft budget e-mails its recipient once, however much more
/// usage follows in the period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_budget_percent_reached_is_mailed_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("budget-mail").await;
    let seeded = app.adjust(org.id, "100", "seed", "seed").await;
    assert_eq!(seeded.status, 201, "{}", seeded.text);
    let put = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/budgets/ann", org.id),
            Some(OPERATOR_KEY),
            Some(
                &json!({"scope": {"user": "ann"}, "limit_credits": "10", "period": "month",
                         "enforcement": "soft", "alert_at_percent": [80],
                         "recipients": ["ann-lead@acme.test"]}),
            ),
            &[],
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.text);
    for i in 0..3 {
        let e = json!({"id": format!("u-{i}"), "type": "ai_tokens", "user": "ann",
                       "occurred_at": Utc::now().to_rfc3339(), "model": "gpt-4o",
                       "input_tokens": 4 * 4000});
        let a = app
            .call(
                Method::POST,
                "/v1/usage",
                Some(&org.key),
                Some(&json!({"events": [e]})),
                &[],
            )
            .await;
        assert_eq!(a.body["accepted"], 1, "{}", a.text);
    }
    let mail = eventually("the budget alert", Duration::from_secs(30), || async {
        app.smtp
            .received()
            .into_iter()
            .find(|m| m.subject().starts_with("Budget ann: 80% used"))
    })
    .await;
    assert_eq!(mail.to, vec!["ann-lead@acme.test".to_string()]);
    assert!(
        mail.text().contains("reached 80% of its limit"),
        "{}",
        mail.text()
    );
    let start: chrono::DateTime<Utc> = sqlx::query_scalar(
        "SELECT (payload->>'period_start')::timestamptz FROM outbox WHERE topic = 'budget.alert'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let id = workflows::budgets::workflow_id(&org.id.to_string(), "ann", start, 80);
    app.keep_history("budget_alert", &id).await;
    let sent = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.subject().starts_with("Budget ann"))
        .count();
    assert_eq!(sent, 1);
}
