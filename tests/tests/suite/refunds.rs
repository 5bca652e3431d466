use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    OPERATOR_KEY, TestApp, TestOrg, eventually,
    worker::{ProcessWorker, TestWorker},
};

/// A package of 80 credits + 20 bonus for $10.00, bought and paid: the org holds 100 credits.
async fn bought_100(app: &TestApp) -> (TestOrg, String) {
    let pkg = app
        .call(Method::POST, "/v1/packages", Some(OPERATOR_KEY),
              Some(&json!({"name": "Hundred", "price_minor": 1000, "currency": "usd", "base_credits": "80", "bonus_credits": "20"})), &[])
        .await;
    let org = app.create_org("refunds").await;
    let bought = app
        .call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&json!({"package_id": pkg.body["id"], "user": "ana@acme.test"})),
            &[],
        )
        .await;
    assert_eq!(bought.status, 201, "{}", bought.text);
    let id = bought.body["id"].as_str().unwrap().to_string();
    app.pay_checkout(
        bought.body["checkout_url"].as_str().unwrap(),
        "pm_card_visa",
    )
    .await;
    eventually("credited", Duration::from_secs(60), || async {
        (app.get(&format!("/v1/purchases/{id}"), &org.key).await.body["state"] == "credited")
            .then_some(())
    })
    .await;
    (org, id)
}

async fn refund(app: &TestApp, purchase: &str, amount: i64, key: &str) -> tests::Answer {
    app.call(
        Method::POST,
        &format!("/v1/purchases/{purchase}/refunds"),
        Some(OPERATOR_KEY),
        Some(&json!({"amount_minor": amount, "reason": "customer asked"})),
        &[("idempotency-key", key)],
    )
    .await
}

async fn refunds_of(app: &TestApp, org: &TestOrg, purchase: &str) -> Vec<Value> {
    app.get(&format!("/v1/purchases/{purchase}/refunds"), &org.key)
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .clone()
}

async fn processor_refunds(app: &TestApp) -> usize {
    app.emulator_event_count("charge.refunded").await
}

async fn use_credits(app: &TestApp, org: &TestOrg, credits: u64) {
    let e = json!({"id": "spend", "type": "ai_tokens", "occurred_at": chrono::Utc::now().to_rfc3339(),
                   "model": "gpt-4o", "input_tokens": credits * 4000});
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_would_overdraw_is_refused_and_a_partial_one_reverses_in_proportion() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;
    use_credits(&app, &org, 70).await;

    refund(&app, &purchase, 1000, "full")
        .await
        .assert_problem(422, "insufficient_balance");
    refund(&app, &purchase, 1001, "too-much")
        .await
        .assert_problem(422, "refund_not_allowed");
    let partial = refund(&app, &purchase, 300, "thirty").await;
    assert_eq!(partial.status, 202, "{}", partial.text);
    assert_eq!(partial.body["credits_reversed"], "24.000000");
    assert_eq!(partial.body["bonus_credits_reversed"], "6.000000");
    eventually("reversed", Duration::from_secs(30), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    assert_eq!(app.balance(&org).await, "0.000000");
    assert_eq!(processor_refunds(&app).await, 1);
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.body["totals"]["refunded_credits"], "24.000000");
    app.assert_invariants().await;
    let refund_id = partial.body["id"].as_str().unwrap();
    app.keep_history("refund", &workflows::refund::workflow_id(refund_id))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_refund_request_twice_refunds_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;

    let first = refund(&app, &purchase, 500, "same").await;
    let again = refund(&app, &purchase, 500, "same").await;
    eventually("reversed", Duration::from_secs(30), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(refunds_of(&app, &org, &purchase).await.len(), 1);
    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "50.000000");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_the_processor_refund_reverses_once_after_restart() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;

    refund(&app, &purchase, 1000, "all").await;
    eventually(
        "the processor's refund",
        Duration::from_secs(30),
        || async {
            refunds_of(&app, &org, &purchase).await[0]["stripe_refund_id"]
                .as_str()
                .map(|_| ())
        },
    )
    .await;
    worker.kill();
    let _restarted = ProcessWorker::start(&app).unwrap();
    eventually("reversed", Duration::from_secs(60), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "0.000000");
    let reversals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transfers WHERE kind IN ('refund', 'reversal')")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(reversals, 2);
    app.assert_invariants().await;
}

#[tokio::test]
async fn refunds_are_for_operators_and_need_a_credited_purchase() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("no-refund").await;
    let package = app
        .store
        .package("01970000-0000-7000-8000-000000000001".parse().unwrap())
        .await
        .unwrap();
    let (p, _) = app
        .store
        .create_purchase(org.id, &package, "ana", None, chrono::Utc::now(), None)
        .await
        .unwrap();

    app.call(
        Method::POST,
        &format!("/v1/purchases/{}/refunds", p.id),
        Some(&org.key),
        Some(&json!({"amount_minor": 100, "reason": "x"})),
        &[("idempotency-key", "k")],
    )
    .await
    .assert_problem(403, "operator_only");
    refund(&app, &p.id.to_string(), 100, "k")
        .await
        .assert_problem(422, "refund_not_allowed");
    refund(&app, &p.id.to_string(), 0, "k0")
        .await
        .assert_problem(422, "amount_not_positive");
}
