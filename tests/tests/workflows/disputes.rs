//! Disputed payments (chargebacks): unspent credits clawed back (never below zero), auto-topup
//! paused, the billing contacts told once, the outcome recorded.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{OPERATOR_KEY, TestApp, TestOrg, eventually, worker::TestWorker};

/// An org with auto-topup on (a saved card) and ops@acme.test as billing contact, that bought
/// 80 + 20 bonus credits for $10.00. Returns the org and the purchase.
async fn org_that_bought_100(app: &TestApp) -> (TestOrg, Value) {
    let pkg = app
        .call(Method::POST, "/v1/packages", Some(OPERATOR_KEY),
              Some(&json!({"name": "Hundred", "price_minor": 1000, "currency": "usd", "base_credits": "80", "bonus_credits": "20"})), &[])
        .await;
    let org = app.create_org("Acme Disputes").await;
    let saved = app
        .call(Method::POST, &format!("/v1/orgs/{}/payment-method", org.id), Some(OPERATOR_KEY),
              Some(&json!({"payment_method_id": "pm_card_visa", "customer_id": "cus_test_1", "user": "ana@acme.test"})), &[])
        .await;
    assert_eq!(saved.status, 200, "{}", saved.text);
    let settings = json!({
        "auto_topup": {"enabled": true, "threshold_credits": "0", "package_id": pkg.body["id"], "monthly_cap_minor": 100_000},
        "alerts": {"thresholds_credits": [], "recipients": ["ops@acme.test"]},
    });
    let put = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/billing-settings", org.id),
            Some(&org.key),
            Some(&settings),
            &[],
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let bought = app
        .call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&json!({"package_id": pkg.body["id"], "user": "ana@acme.test"})),
            &[],
        )
        .await;
    let bought = app.ready_purchase(&org, &bought).await;
    let id = bought["id"].as_str().unwrap().to_string();
    app.pay_checkout(bought["checkout_url"].as_str().unwrap(), "pm_card_visa")
        .await;
    let credited = app.wait_purchase(&org, &id, "credited").await;
    (org, credited)
}

async fn dispute(app: &TestApp, payment_intent: &str) -> String {
    let r: Value = app
        .http
        .post(format!(
            "{}/_emulator/payment_intents/{payment_intent}/dispute",
            app.stripe_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"].as_str().unwrap().to_string()
}

async fn close(app: &TestApp, dispute: &str, outcome: &str) {
    let r = app
        .http
        .post(format!(
            "{}/_emulator/disputes/{dispute}/close/{outcome}",
            app.stripe_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn dispute_row(
    app: &TestApp,
    id: &str,
) -> Option<(String, Option<String>, rust_decimal::Decimal)> {
    sqlx::query_as("SELECT status, outcome, clawed_back FROM disputes WHERE id = $1")
        .bind(id)
        .fetch_optional(app.store.pool())
        .await
        .unwrap()
}

/// A dispute claws back what is unspent never below zero and pauses auto topup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_claws_back_what_is_unspent_never_below_zero_and_pauses_auto_topup() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = org_that_bought_100(&app).await;
    let pid = purchase["id"].as_str().unwrap();
    // $2 refunded (16 + 4 credits back), 30 spent: 50 left, 80 of the purchase not refunded.
    let refund = app
        .call(
            Method::POST,
            &format!("/v1/purchases/{pid}/refunds"),
            Some(OPERATOR_KEY),
            Some(&json!({"amount_minor": 200, "reason": "partial"})),
            &[("idempotency-key", "r1")],
        )
        .await;
    assert_eq!(refund.status, 202, "{}", refund.text);
    app.spend(&org, "spend-30", 30).await;
    assert_eq!(app.balance(&org).await, "50.000000");

    let id = dispute(&app, purchase["payment_intent_id"].as_str().unwrap()).await;
    // min(balance 50, unspent share 80) = 50: the balance ends at zero, not below.
    let row = eventually("the dispute recorded", Duration::from_secs(30), || async {
        dispute_row(&app, &id).await
    })
    .await;
    assert_eq!(row.0, "needs_response");
    assert_eq!(row.2.to_string(), "50.000000");
    assert_eq!(app.balance(&org).await, "0.000000");
    let settings = app
        .get(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
        .await;
    assert!(
        settings.body["auto_topup"]["paused_reason"]
            .as_str()
            .unwrap()
            .contains("disputed"),
        "{}",
        settings.text
    );
    let mail = eventually("the dispute notice", Duration::from_secs(20), || async {
        app.smtp
            .received()
            .into_iter()
            .find(|m| m.subject().contains("disputed"))
    })
    .await;
    assert_eq!(mail.to, ["ops@acme.test"]);
    assert!(mail.text().contains("Acme Disputes"), "{}", mail.data);
    assert!(mail.text().contains(&org.id.to_string()), "{}", mail.data);

    // Lost: recorded, nothing given back; the redelivered opening changes nothing.
    close(&app, &id, "lost").await;
    eventually("the outcome", Duration::from_secs(30), || async {
        dispute_row(&app, &id)
            .await
            .filter(|r| r.1.as_deref() == Some("lost"))
    })
    .await;
    let events = app.emulator_events().await;
    let opened = events
        .iter()
        .find(|e| e["type"] == "charge.dispute.created")
        .unwrap();
    let redelivered = app
        .http
        .post(format!(
            "{}/_emulator/events/{}/deliver",
            app.stripe_url,
            opened["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert!(redelivered.status().is_success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.balance(&org).await, "0.000000");
    assert_eq!(
        app.smtp
            .received()
            .iter()
            .filter(|m| m.subject().contains("disputed"))
            .count(),
        1
    );
    app.assert_invariants().await;
}

/// A dispute takes at most the purchases credits and a won one gives them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_takes_at_most_the_purchases_credits_and_a_won_one_gives_them_back() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = org_that_bought_100(&app).await;
    assert_eq!(
        app.adjust(org.id, "500", "other credits", "other")
            .await
            .status,
        201
    );

    let id = dispute(&app, purchase["payment_intent_id"].as_str().unwrap()).await;
    let row = eventually("the dispute recorded", Duration::from_secs(30), || async {
        dispute_row(&app, &id).await
    })
    .await;
    // The purchase's 100 credits, not the org's other 500.
    assert_eq!(row.2.to_string(), "100.000000");
    assert_eq!(app.balance(&org).await, "500.000000");
    close(&app, &id, "won").await;
    eventually("given back", Duration::from_secs(30), || async {
        (app.balance(&org).await == "600.000000").then_some(())
    })
    .await;
    // Told twice (a second event of its own id): the credits come back once.
    close(&app, &id, "won").await;
    eventually("the second closing handled", Duration::from_secs(30), || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE type = 'charge.dispute.closed' AND dispatched_at IS NOT NULL",
        )
        .fetch_one(app.store.pool())
        .await
        .unwrap();
        (pending == 2).then_some(())
    })
    .await;
    assert_eq!(app.balance(&org).await, "600.000000");
    app.assert_invariants().await;
}
