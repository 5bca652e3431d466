//! Temporal unreachable: this test's API and worker reach the shared server through a proxy the
//! test cuts, so the outage is real for them and nobody else.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tests::{AppOptions, GROWTH, OPERATOR_KEY, TestApp, eventually, worker::TestWorker};

/// A Temporal outage delays grants and starts but loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporal_outage_delays_grants_and_starts_but_loses_nothing() {
    let app = TestApp::spawn_with(AppOptions {
        temporal_proxy: true,
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let proxy = app.temporal_proxy.clone().unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("outage").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let paid_id = bought["id"].as_str().unwrap().to_string();
    let checkout = bought["checkout_url"].as_str().unwrap().to_string();

    proxy.set_up(false);
    // The buyer pays while Temporal is down: the webhook is stored and answered 200, so the
    // processor has nothing to redeliver.
    app.pay_checkout(&checkout, "pm_card_visa").await;
    eventually("the webhook stored", Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE type = 'checkout.session.completed'",
        )
        .fetch_one(app.store.pool())
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    // Purchases are refused fast, with Retry-After; none is left without a workflow.
    let body = json!({"package_id": GROWTH, "user": "ana@acme.test"});
    let started = Instant::now();
    let keyed = app
        .call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&body),
            &[("idempotency-key", "during-outage")],
        )
        .await;
    let keyed_took = started.elapsed();
    keyed.assert_problem(503, "workflow_unavailable");
    let started = Instant::now();
    let unkeyed = app
        .call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&body),
            &[],
        )
        .await;
    let unkeyed_took = started.elapsed();
    unkeyed.assert_problem(503, "workflow_unavailable");
    println!("503 answers took {keyed_took:?} and {unkeyed_took:?}");
    for took in [keyed_took, unkeyed_took] {
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
    // The payment is not credited while Temporal is away.
    assert_eq!(
        app.purchase(&org, &paid_id).await["state"],
        "awaiting_payment"
    );

    // A refund of an earlier, credited purchase is accepted and reserved during the outage.
    proxy.set_up(true);
    app.wait_purchase(&org, &paid_id, "credited").await;
    assert_eq!(app.balance(&org).await, "5250.000000");
    proxy.set_up(false);
    let refund = app
        .call(
            Method::POST,
            &format!("/v1/purchases/{paid_id}/refunds"),
            Some(OPERATOR_KEY),
            Some(&json!({"amount_minor": 1000, "reason": "outage"})),
            &[("idempotency-key", "refund-during-outage")],
        )
        .await;
    assert_eq!(refund.status, 202, "{}", refund.text);
    assert_eq!(app.balance(&org).await, "4200.000000");
    proxy.set_up(true);

    // Back: the keyed purchase gets its checkout (started by the dispatcher), the unkeyed one
    // ended failed, the refund is made once.
    let retried = app
        .call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&body),
            &[("idempotency-key", "during-outage")],
        )
        .await;
    let retried = app.ready_purchase(&org, &retried).await;
    assert!(retried["checkout_url"].is_string(), "{retried}");
    let refund_id = refund.body["id"].as_str().unwrap().to_string();
    // Refunded at the processor (then `reversed`: its credits were taken at acceptance).
    eventually("the refund made", Duration::from_secs(60), || async {
        let list = app
            .get(&format!("/v1/purchases/{paid_id}/refunds"), OPERATOR_KEY)
            .await;
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == refund_id.as_str())
            .filter(|r| matches!(r["state"].as_str(), Some("refunded" | "reversed")))
            .map(|_| ())
    })
    .await;
    assert_eq!(app.emulator_event_count("charge.refunded").await, 1);
    let stranded: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM purchases
          WHERE state = 'awaiting_payment' AND checkout_session_id IS NULL",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert!(stranded.is_empty(), "{stranded:?}");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases WHERE state = 'failed'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(failed, 1);
    assert_eq!(app.balance(&org).await, "4200.000000");
    app.assert_invariants().await;
}

/// Postgres unreachable for the API: requests wait a bounded time, then 503
/// database_unavailable with Retry-After (never 500); ready again only when usage commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_503_and_readiness_returns_with_ingestion() {
    let app = TestApp::spawn_with(AppOptions {
        postgres_proxy: true,
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let proxy = app.postgres_proxy.clone().unwrap();
    let org = app.create_org("db-outage").await;
    let event = |id: &str| {
        json!({"events": [{"id": id, "type": "ai_tokens", "occurred_at": chrono::Utc::now(),
                           "model": "gpt-4o", "input_tokens": 4000}]})
    };
    let before = app
        .call(
            Method::POST,
            "/v1/usage",
            Some(&org.key),
            Some(&event("before")),
            &[],
        )
        .await;
    assert_eq!(before.body["accepted"], 1, "{}", before.text);

    proxy.set_up(false);
    let started = Instant::now();
    let during = app
        .call(
            Method::POST,
            "/v1/usage",
            Some(&org.key),
            Some(&event("during")),
            &[],
        )
        .await;
    let took = started.elapsed();
    during.assert_problem(503, "database_unavailable");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let balance = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    balance.assert_problem(503, "database_unavailable");
    let ready = app.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    let res = app
        .http
        .get(format!("{}/v1/orgs/{}/balance", app.base_url, org.id))
        .bearer_auth(&org.key)
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));

    proxy.set_up(true);
    eventually("ready again", Duration::from_secs(30), || async {
        let r = app.call(Method::GET, "/readyz", None, None, &[]).await;
        (r.status == 200).then_some(())
    })
    .await;
    // Ready means the writer commits: the first usage after it is recorded.
    let after = app
        .call(
            Method::POST,
            "/v1/usage",
            Some(&org.key),
            Some(&event("after")),
            &[],
        )
        .await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(after.body["accepted"], 1, "{}", after.text);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE org_id = $1")
        .bind(org.id)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 2, "the refused event left nothing");
}
