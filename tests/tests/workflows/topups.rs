use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    AppOptions, OPERATOR_KEY, STARTER, TestApp, TestOrg, eventually,
    worker::{ProcessWorker, TestWorker},
};
use workflows::payment_method::PaymentMethodSetupWorkflow;

async fn spend(app: &TestApp, org: &TestOrg, id: &str, credits: u64) {
    app.spend(org, id, credits).await;
}

/// `PUT /v1/orgs/{org}/billing-settings` with the org's own key.
async fn put_settings(app: &TestApp, org: &TestOrg, body: &Value) -> tests::Answer {
    app.call(
        Method::PUT,
        &format!("/v1/orgs/{}/billing-settings", org.id),
        Some(&org.key),
        Some(body),
        &[],
    )
    .await
}

async fn org_with(
    app: &TestApp,
    pm: &str,
    topup: Option<(&str, i64)>,
    alert: Option<&str>,
) -> TestOrg {
    app.org_with_billing("topups", pm, topup, alert).await
}

async fn topups(app: &TestApp, org: &TestOrg) -> Vec<Value> {
    app.topups(org).await
}

async fn finished_topup(app: &TestApp, org: &TestOrg) -> Value {
    eventually("a finished topup", Duration::from_secs(60), || async {
        topups(app, org)
            .await
            .into_iter()
            .find(|t| t["state"] != "running")
    })
    .await
}

async fn succeeded_charges(app: &TestApp) -> usize {
    app.emulator_event_count("payment_intent.succeeded").await
}

fn mails_with(app: &TestApp, subject: &str) -> usize {
    app.smtp
        .received()
        .iter()
        .filter(|m| m.subject().starts_with(subject))
        .count()
}

/// Fifty clients driving below the threshold charge grant and alert once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_driving_below_the_threshold_charge_grant_and_alert_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 100_000)), Some("50")).await;

    // 50 clients × 1.2 credits: 100 → 40, one crossing of 50.
    join_all((0..50).map(|i| {
        let (app, org) = (&app, &org);
        async move {
            let e = json!({"id": format!("c{i}"), "type": "ai_tokens", "occurred_at": chrono::Utc::now().to_rfc3339(),
                           "model": "gpt-4o", "input_tokens": 4800});
            app.call(Method::POST, "/v1/usage", Some(&org.key), Some(&json!({"events": [e]})), &[]).await
        }
    }))
    .await;
    let topup = finished_topup(&app, &org).await;
    eventually("the alert", Duration::from_secs(20), || async {
        (mails_with(&app, "Low credit balance") == 1).then_some(())
    })
    .await;

    assert_eq!(topup["state"], "succeeded", "{topup}");
    assert_eq!(topups(&app, &org).await.len(), 1);
    assert_eq!(app.balance(&org).await, "1040.000000");
    assert_eq!(succeeded_charges(&app).await, 1);
    let topup_transfers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transfers WHERE kind = 'topup'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(topup_transfers, 1);
    assert_eq!(mails_with(&app, "Low credit balance"), 1);
    let alerts = app
        .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
        .await;
    assert_eq!(alerts.body["data"].as_array().unwrap().len(), 1);
    app.assert_invariants().await;
    let (threshold_id, crossing_seq): (i64, i64) = sqlx::query_as(
        "SELECT (payload->>'threshold_id')::bigint, (payload->>'crossing_seq')::bigint
           FROM outbox WHERE payload->>'purpose' = 'alert'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let alert =
        workflows::topup::alert_workflow_id(&org.id.to_string(), threshold_id, crossing_seq);
    app.keep_history("low_balance_alert", &alert).await;
}

/// Two soft declines then success grant once after three attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_soft_declines_then_success_grant_once_after_three_attempts() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(
        &app,
        "pm_card_softDeclineTwice",
        Some(("50", 100_000)),
        None,
    )
    .await;

    spend(&app, &org, "dip", 60).await;
    let topup = finished_topup(&app, &org).await;

    assert_eq!(topup["state"], "succeeded", "{topup}");
    let outcomes: Vec<&str> = topup["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["soft_decline", "soft_decline", "succeeded"]);
    assert_eq!(topup["attempts"][0]["decline_code"], "insufficient_funds");
    assert_eq!(succeeded_charges(&app).await, 1);
    assert_eq!(app.balance(&org).await, "1040.000000");
    app.keep_history(
        "auto_topup",
        &workflows::topup::topup_workflow_id(&org.id.to_string()),
    )
    .await;
}

/// A hard decline stops at once pauses and a new card resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_decline_stops_at_once_pauses_and_a_new_card_resumes() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(
        &app,
        "pm_card_chargeDeclinedExpiredCard",
        Some(("50", 100_000)),
        None,
    )
    .await;

    spend(&app, &org, "dip", 60).await;
    let topup = finished_topup(&app, &org).await;
    eventually("the failure e-mail", Duration::from_secs(10), || async {
        (mails_with(&app, "Auto-topup failed") == 1).then_some(())
    })
    .await;

    assert_eq!(topup["state"], "failed");
    assert_eq!(topup["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(topup["attempts"][0]["outcome"], "hard_decline");
    let settings = app
        .get(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
        .await;
    assert!(
        settings.body["auto_topup"]["paused_reason"]
            .as_str()
            .unwrap()
            .contains("expired_card")
    );

    // The failed topup's workflow has ended (a card saved while it still runs would join it).
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        app.temporal
            .get_workflow_handle::<workflows::topup::AutoTopupWorkflow>(
                workflows::topup::topup_workflow_id(&org.id.to_string()),
            )
            .get_result(Default::default()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ended, billing::topup::TopupState::Failed);

    // A new card resumes it: the balance is still below the threshold, so it is topped up now.
    let saved = app
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/payment-method", org.id),
            Some(OPERATOR_KEY),
            Some(&json!({"payment_method_id": "pm_card_visa", "user": "ana@acme.test"})),
            &[],
        )
        .await;
    assert!(saved.body["auto_topup"]["paused_reason"].is_null());
    assert_eq!(
        saved.body["auto_topup"]["payment_method"]["consented_by"],
        "ana@acme.test"
    );
    let resumed = eventually("a successful topup", Duration::from_secs(30), || async {
        topups(&app, &org)
            .await
            .into_iter()
            .find(|t| t["state"] == "succeeded")
    })
    .await;
    eventually("the outbox dispatched", Duration::from_secs(10), || async {
        (app.store.outbox().backlog().await.unwrap().rows == 0).then_some(())
    })
    .await;

    assert_eq!(
        resumed["attempts"].as_array().unwrap().len(),
        1,
        "{resumed}"
    );
    assert_eq!(resumed["attempts"][0]["outcome"], "succeeded");
    assert_eq!(topups(&app, &org).await.len(), 2);
    assert_eq!(mails_with(&app, "Auto-topup failed"), 1);
    assert_eq!(succeeded_charges(&app).await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM transfers WHERE kind = 'topup'").await,
        1
    );
    assert_eq!(app.balance(&org).await, "1040.000000");
    // Saving a card again once the balance is back above the threshold starts nothing.
    let again = app
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/payment-method", org.id),
            Some(OPERATOR_KEY),
            Some(&json!({"payment_method_id": "pm_card_visa", "user": "ana@acme.test"})),
            &[],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(app.store.outbox().backlog().await.unwrap().rows, 0);
    app.assert_invariants().await;
}

/// A reached monthly cap charges nothing and says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reached_monthly_cap_charges_nothing_and_says_so_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 500)), None).await;

    spend(&app, &org, "dip", 60).await;
    let topup = finished_topup(&app, &org).await;
    eventually("the cap e-mail", Duration::from_secs(10), || async {
        (mails_with(&app, "Auto-topup cap reached") == 1).then_some(())
    })
    .await;

    assert_eq!(topup["state"], "capped");
    assert_eq!(succeeded_charges(&app).await, 0);
    assert_eq!(app.balance(&org).await, "40.000000");
}

/// An alert while SMTP is down arrives exactly once when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_while_smtp_is_down_arrives_exactly_once_when_it_is_back() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", None, Some("50")).await;
    app.smtp.set_accepting(false);

    spend(&app, &org, "dip", 60).await;
    eventually(
        "two refused deliveries",
        Duration::from_secs(30),
        || async { (app.smtp.refused() >= 2).then_some(()) },
    )
    .await;
    app.smtp.set_accepting(true);
    eventually("the alert recorded", Duration::from_secs(60), || async {
        let a = app
            .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
            .await;
        let data = a.body["data"].as_array().unwrap().clone();
        (data.len() == 1 && data[0]["state"] == "sent").then_some(())
    })
    .await;

    assert_eq!(mails_with(&app, "Low credit balance"), 1);
    let mail = &app.smtp.received()[0];
    assert_eq!(mail.to, ["ops@acme.test"]);
    assert!(
        mail.text()
            .contains("below your alert threshold of 50 credits"),
        "{}",
        mail.data
    );
    assert!(
        mail.text()
            .contains("Used in the last 24 hours: 60 credits"),
        "{}",
        mail.data
    );
    // For people: the org named (name and id), plain text and HTML declared UTF-8.
    assert!(mail.subject().contains("topups"), "{}", mail.data);
    assert!(mail.text().contains(&org.id.to_string()), "{}", mail.data);
    assert!(mail.data.contains("MIME-Version: 1.0"), "{}", mail.data);
    assert!(
        mail.data
            .to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"),
        "{}",
        mail.data
    );
    // And the same text as HTML, for clients that show only that.
    assert!(
        mail.data
            .to_ascii_lowercase()
            .contains("content-type: multipart/alternative"),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{}",
        mail.data
    );
}

/// Dip recover dip alerts once within the hour and records the repeat suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dip_recover_dip_alerts_once_within_the_hour_and_records_the_repeat_suppressed() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", None, Some("50")).await;

    spend(&app, &org, "dip-1", 60).await; // 100 → 40: alert
    spend(&app, &org, "dip-1b", 10).await; // 40 → 30: still below, no alert
    eventually("the first alert", Duration::from_secs(20), || async {
        (mails_with(&app, "Low credit balance") == 1).then_some(())
    })
    .await;
    app.adjust(org.id, "40", "recover", "up").await; // 30 → 70: re-armed
    spend(&app, &org, "dip-2", 30).await; // 70 → 40: crossed again, within the hour
    let alerts = eventually(
        "both crossings recorded",
        Duration::from_secs(20),
        || async {
            let a = app
                .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
                .await;
            let data = a.body["data"].as_array().unwrap().clone();
            (data.len() == 2 && data.iter().all(|a| a["state"] != "sending")).then_some(data)
        },
    )
    .await;
    let states: Vec<&str> = alerts
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["suppressed", "sent"], "{alerts:?}");
    assert!(
        alerts[0]["detail"]
            .as_str()
            .unwrap()
            .contains("was sent at"),
        "{alerts:?}"
    );
    assert_eq!(mails_with(&app, "Low credit balance"), 1);
    assert_eq!(app.store.outbox().backlog().await.unwrap().rows, 0);
}

// Multi-threaded: the SMTP server runs on the test's runtime, and the worker's pooled SMTP
// connection says QUIT to it when the worker is dropped at the end.
/// Falling through several thresholds mails once and falling further mails again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falling_through_several_thresholds_mails_once_and_falling_further_mails_again() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", None, None).await;
    let alerts = json!({"alerts": {"thresholds_credits": ["80", "50", "20"], "recipients": ["ops@acme.test"]}});
    assert_eq!(put_settings(&app, &org, &alerts).await.status, 200);

    spend(&app, &org, "through-two", 70).await; // 100 → 30: crosses 80 and 50, one alert
    eventually("the alert for 50", Duration::from_secs(20), || async {
        (mails_with(&app, "Low credit balance") == 1).then_some(())
    })
    .await;
    spend(&app, &org, "further", 20).await; // 30 → 10: crosses 20, lower: mailed
    let recorded = eventually("the alert for 20", Duration::from_secs(20), || async {
        let a = app
            .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
            .await;
        let data = a.body["data"].as_array().unwrap().clone();
        (data.len() == 2 && data.iter().all(|a| a["state"] == "sent")).then_some(data)
    })
    .await;
    let levels: Vec<&str> = recorded
        .iter()
        .map(|a| a["threshold"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["20.000000", "50.000000"], "{recorded:?}");
    assert_eq!(mails_with(&app, "Low credit balance"), 2);
    let bodies: Vec<String> = app
        .smtp
        .received()
        .iter()
        .filter(|m| m.subject().starts_with("Low credit balance"))
        .map(|m| m.text())
        .collect();
    assert!(
        bodies[0].contains("threshold of 50 credits"),
        "{}",
        bodies[0]
    );
    assert!(
        bodies[1].contains("threshold of 20 credits"),
        "{}",
        bodies[1]
    );
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

/// The PaymentIntents the emulator holds (every charge attempt makes one).
async fn emulator_payment_intents(app: &TestApp) -> Vec<Value> {
    app.emulator_list("/v1/payment_intents").await
}

/// A worker killed after the charge and restarted charges and grants once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_the_charge_and_restarted_charges_and_grants_once() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 100_000)), None).await;
    // The grant books the package against the `sales` system account, which nothing before it
    // here touches (the seed is an adjustment, the dip is usage; deciding and charging book
    // nothing). Holding that row parks the grant inside its transaction, after the charge,
    // every time.
    let mut hold = app.store.pool().begin().await.unwrap();
    let holder = tests::backend_pid(&mut hold).await;
    sqlx::query("SELECT id FROM accounts WHERE code = 'sales' FOR UPDATE")
        .fetch_one(&mut *hold)
        .await
        .unwrap();

    spend(&app, &org, "dip", 60).await;
    eventually("the charge", Duration::from_secs(30), || async {
        let n = count(
            &app,
            "SELECT count(*) FROM topup_attempts WHERE outcome = 'succeeded'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    app.wait_blocked_by(holder, "the grant to wait for the sales account")
        .await;
    // SIGKILL mid-grant: its transaction can never commit, whatever happens to the lock.
    worker.kill();
    hold.rollback().await.unwrap();
    assert_eq!(
        count(&app, "SELECT count(*) FROM transfers WHERE kind = 'topup'").await,
        0
    );
    assert_eq!(topups(&app, &org).await[0]["state"], "running");
    let _restarted = ProcessWorker::start(&app).unwrap();
    // The killed attempt is retried once its 30 s start-to-close timeout has passed.
    let topup = eventually(
        "the topup finished after the restart",
        Duration::from_secs(90),
        || async {
            topups(&app, &org)
                .await
                .into_iter()
                .find(|t| t["state"] != "running")
        },
    )
    .await;

    assert_eq!(topup["state"], "succeeded", "{topup}");
    assert_eq!(topup["attempts"].as_array().unwrap().len(), 1, "{topup}");
    assert_eq!(succeeded_charges(&app).await, 1);
    let intents = emulator_payment_intents(&app).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(
        count(&app, "SELECT count(*) FROM transfers WHERE kind = 'topup'").await,
        1
    );
    assert_eq!(app.balance(&org).await, "1040.000000");
    app.assert_invariants().await;
}

/// Settings are validated.
#[tokio::test]
async fn settings_are_validated() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("settings").await;
    let put = |body: Value| {
        let (app, org) = (&app, &org);
        async move { put_settings(app, org, &body).await }
    };

    put(json!({"auto_topup": {"enabled": true, "threshold_credits": "50", "package_id": STARTER, "monthly_cap_minor": 1000}}))
        .await.assert_problem(422, "payment_method_required");
    put(json!({"auto_topup": {"enabled": false, "threshold_credits": "-1"}}))
        .await
        .assert_problem(422, "negative_threshold");
    put(json!({"auto_topup": {"enabled": false, "package_id": uuid::Uuid::now_v7()}}))
        .await
        .assert_problem(422, "unknown_package");
    put(json!({"auto_topup": {"enabled": false, "monthly_cap_minor": 0}}))
        .await
        .assert_problem(422, "invalid_cap");
    put(json!({"alerts": {"thresholds_credits": ["10"], "recipients": ["not-an-email"]}}))
        .await
        .assert_problem(422, "invalid_email");
    put(json!({"alerts": {"thresholds_credits": ["1.0000001"]}}))
        .await
        .assert_problem(422, "too_many_decimals");
    let other = app.create_org("other").await;
    app.get(&format!("/v1/orgs/{}/billing-settings", org.id), &other.key)
        .await
        .assert_problem(403, "wrong_org");
    let ok = put(json!({"alerts": {"thresholds_credits": ["10", "50", "10"], "recipients": ["a@b.example"]}})).await;
    assert_eq!(
        ok.body["alerts"]["thresholds_credits"],
        json!(["50.000000", "10.000000"])
    );
    assert_eq!(
        app.get(
            &format!("/v1/orgs/{}/billing-settings", org.id),
            OPERATOR_KEY
        )
        .await
        .status,
        200
    );
}

/// Starts a card setup for `org` and returns its id and the hosted page's URL.
async fn start_setup(app: &TestApp, org: &TestOrg) -> (String, String) {
    let setup = app
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/payment-method/setup", org.id),
            Some(&org.key),
            Some(&json!({"user": "ana@acme.test"})),
            &[],
        )
        .await;
    // 201 with the URL, or 202 when the workflow had not made the session within the API's
    // short wait (a busy machine): then the workflow's `checkout_url` query has it a moment later.
    assert!(matches!(setup.status.as_u16(), 201 | 202), "{}", setup.text);
    let setup_id = setup.body["setup_id"].as_str().unwrap().to_string();
    let handle = app
        .temporal
        .get_workflow_handle::<PaymentMethodSetupWorkflow>(workflows::payment_method::workflow_id(
            &setup_id,
        ));
    let url = match setup.body["checkout_url"].as_str() {
        Some(url) => url.to_string(),
        None => {
            eventually("the setup checkout", Duration::from_secs(60), || async {
                handle
                    .query(
                        PaymentMethodSetupWorkflow::checkout_url,
                        (),
                        Default::default(),
                    )
                    .await
                    .ok()
                    .flatten()
            })
            .await
        }
    };
    (setup_id, url)
}

/// A card saved through a setup checkout is recorded with its consent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_saved_through_a_setup_checkout_is_recorded_with_its_consent() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("setup").await;
    let (setup_id, url) = start_setup(&app, &org).await;
    app.pay_checkout(&url, "pm_card_visa").await;
    let saved = eventually("the saved card", Duration::from_secs(30), || async {
        let s = app
            .get(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
            .await;
        (!s.body["auto_topup"]["payment_method"].is_null()).then_some(s.body)
    })
    .await;

    let pm = &saved["auto_topup"]["payment_method"];
    app.keep_history(
        "payment_method_setup",
        &workflows::payment_method::workflow_id(&setup_id),
    )
    .await;
    assert_eq!(pm["id"], "pm_card_visa");
    assert_eq!(pm["consented_by"], "ana@acme.test");
    assert!(pm["customer"].as_str().unwrap().starts_with("cus_"));
    assert!(pm["consented_at"].is_string());
    let enable = json!({"auto_topup": {"enabled": true, "threshold_credits": "50", "package_id": STARTER, "monthly_cap_minor": 5000}});
    let put = put_settings(&app, &org, &enable).await;
    assert_eq!(put.status, 200, "{}", put.text);
}

/// A setup not finished in time is expired at the processor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_not_finished_in_time_is_expired_at_the_processor() {
    let app = TestApp::spawn_with(AppOptions {
        checkout_expiry: Duration::from_secs(2),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("setup-late").await;
    let (setup_id, url) = start_setup(&app, &org).await;
    let workflow_id = workflows::payment_method::workflow_id(&setup_id);
    let handle = app
        .temporal
        .get_workflow_handle::<PaymentMethodSetupWorkflow>(workflow_id.clone());
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        handle.get_result(Default::default()),
    )
    .await
    .expect("the setup ends")
    .expect("its result");
    assert_eq!(result, "expired");

    // The session is expired at the processor, so no card can be saved through it any more.
    let session_id = url.rsplit('/').next().unwrap();
    let session: Value = app
        .http
        .get(format!(
            "{}/v1/checkout/sessions/{session_id}",
            app.stripe_url
        ))
        .bearer_auth(tests::STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["status"], "expired", "{session}");
    let refused = reqwest::Client::new()
        .post(format!("{url}/pay"))
        .form(&[("payment_method", "pm_card_visa")])
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let s = app
        .get(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
        .await;
    assert!(
        s.body["auto_topup"]["payment_method"].is_null(),
        "{}",
        s.text
    );
    app.keep_history("payment_method_setup_expired", &workflow_id)
        .await;
}

/// An org key cannot point charges at a payment method of its choosing.
#[tokio::test]
async fn an_org_key_cannot_point_charges_at_a_payment_method_of_its_choosing() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("own-card").await;

    let refused = app
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/payment-method", org.id),
            Some(&org.key),
            Some(&json!({"payment_method_id": "pm_card_visa", "user": "ana@acme.test"})),
            &[],
        )
        .await;

    refused.assert_problem(403, "operator_only");
    let settings = app
        .get(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
        .await;
    assert!(
        settings.body["auto_topup"]["payment_method"].is_null(),
        "{}",
        settings.text
    );
}

/// Turning auto topup on below the threshold tops up once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_auto_topup_on_below_the_threshold_tops_up_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", None, None).await;
    spend(&app, &org, "before", 60).await;
    let enable = json!({
        "auto_topup": {"enabled": true, "threshold_credits": "50", "package_id": STARTER,
                       "monthly_cap_minor": 100_000},
        "alerts": {"thresholds_credits": [], "recipients": ["ops@acme.test"]},
    });
    let put = |body: Value| {
        let (app, org) = (&app, &org);
        async move { put_settings(app, org, &body).await }
    };

    // No debit will cross 50 while the balance stays at 40: turning it on is the trigger.
    assert_eq!(put(enable.clone()).await.status, 200);
    let topup = finished_topup(&app, &org).await;
    assert_eq!(put(enable).await.status, 200);

    assert_eq!(topup["state"], "succeeded", "{topup}");
    assert_eq!(app.balance(&org).await, "1040.000000");
    assert_eq!(app.store.outbox().backlog().await.unwrap().rows, 0);
    assert_eq!(
        topups(&app, &org).await.len(),
        1,
        "unchanged terms start nothing"
    );
    assert_eq!(succeeded_charges(&app).await, 1);
    app.assert_invariants().await;
}

/// The org's charges at the emulator in the state `status`, oldest first.
async fn intents_in(app: &TestApp, status: &str) -> Vec<Value> {
    let mut v: Vec<Value> = emulator_payment_intents(app)
        .await
        .into_iter()
        .filter(|p| p["status"] == status)
        .collect();
    v.reverse();
    v
}

async fn settle_intent(app: &TestApp, id: &str) {
    let r = app
        .http
        .post(format!(
            "{}/_emulator/payment_intents/{id}/settle",
            app.stripe_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn topup_transfers(app: &TestApp) -> i64 {
    count(app, "SELECT count(*) FROM transfers WHERE kind = 'topup'").await
}

/// A processing debit grants only when it succeeds and crossings meanwhile are not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processing_debit_grants_only_when_it_succeeds_and_crossings_meanwhile_are_not_lost() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(
        &app,
        "pm_usBankAccount_success",
        Some(("50", 100_000)),
        None,
    )
    .await;

    // 100 → 40: the first topup's debit is accepted but only `processing`.
    spend(&app, &org, "dip-1", 60).await;
    let first = eventually("a processing debit", Duration::from_secs(30), || async {
        intents_in(&app, "processing").await.into_iter().next()
    })
    .await;
    // Two more crossings while it runs (credits put back, then spent again).
    assert_eq!(
        app.adjust(org.id, "100", "refill", "refill-1").await.status,
        201
    );
    spend(&app, &org, "dip-2", 100).await;
    assert_eq!(
        app.adjust(org.id, "100", "refill", "refill-2").await.status,
        201
    );
    spend(&app, &org, "dip-3", 1200).await;
    // Nothing is granted for money that has not arrived, however long it waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(topup_transfers(&app).await, 0);
    assert_eq!(app.balance(&org).await, "-1060.000000");
    assert_eq!(topups(&app, &org).await.len(), 1);

    // It settles: 1,000 credits, still below 50, so the crossings that waited start one more
    // topup (one, not three), whose debit is processing in its turn.
    settle_intent(&app, first["id"].as_str().unwrap()).await;
    let second = eventually("the second debit", Duration::from_secs(30), || async {
        intents_in(&app, "processing").await.into_iter().next()
    })
    .await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(topup_transfers(&app).await, 1);
    assert_eq!(app.balance(&org).await, "-60.000000");
    settle_intent(&app, second["id"].as_str().unwrap()).await;
    eventually("the second grant", Duration::from_secs(30), || async {
        (topup_transfers(&app).await == 2).then_some(())
    })
    .await;
    assert_eq!(app.balance(&org).await, "940.000000");
    // Every crossing was decided once the previous topup ended; the later ones found the
    // balance back above the threshold.
    eventually(
        "every crossing decided",
        Duration::from_secs(30),
        || async {
            let pending = count(
                &app,
                "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL",
            )
            .await;
            (pending == 0).then_some(())
        },
    )
    .await;
    let all = topups(&app, &org).await;
    let charged = all.iter().filter(|t| t["state"] == "succeeded").count();
    assert_eq!(charged, 2, "{all:?}");
    assert!(
        all.iter()
            .all(|t| t["state"] == "succeeded" || t["state"] == "skipped"),
        "{all:?}"
    );
    assert_eq!(intents_in(&app, "succeeded").await.len(), 2);
    app.assert_invariants().await;
}

/// A debit that fails after processing grants nothing and pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_that_fails_after_processing_grants_nothing_and_pauses() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_usBankAccount_fail", Some(("50", 100_000)), None).await;
    spend(&app, &org, "dip", 60).await;
    let pi = eventually("a processing debit", Duration::from_secs(30), || async {
        intents_in(&app, "processing").await.into_iter().next()
    })
    .await;
    settle_intent(&app, pi["id"].as_str().unwrap()).await;
    let topup = finished_topup(&app, &org).await;
    assert_eq!(topup["state"], "failed", "{topup}");
    assert_eq!(topup["attempts"][0]["outcome"], "hard_decline", "{topup}");
    assert_eq!(topup_transfers(&app).await, 0);
    assert_eq!(app.balance(&org).await, "40.000000");
    let settings = app
        .get(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
        .await;
    assert!(settings.body["auto_topup"]["paused_reason"].is_string());
    app.keep_history(
        "auto_topup_processing",
        &workflows::topup::topup_workflow_id(&org.id.to_string()),
    )
    .await;
}

/// A topup that leaves the balance below the threshold starts another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_that_leaves_the_balance_below_the_threshold_starts_another() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 100_000)), None).await;
    // 100 → -1,000: one topup of 1,000 leaves 0, below 50, so a second one follows.
    spend(&app, &org, "deep", 1100).await;
    eventually("two topups", Duration::from_secs(60), || async {
        (topup_transfers(&app).await == 2).then_some(())
    })
    .await;
    eventually(
        "nothing more to decide",
        Duration::from_secs(30),
        || async {
            let pending = count(
                &app,
                "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL",
            )
            .await;
            (pending == 0).then_some(())
        },
    )
    .await;
    assert_eq!(app.balance(&org).await, "1000.000000");
    assert_eq!(succeeded_charges(&app).await, 2);
}

/// The daily limit bounds topups that keep the balance below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_bounds_topups_that_keep_the_balance_below() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 10_000_000)), None).await;
    // Far below: -20,000 would take 21 topups; the test policy allows 10 a day.
    for i in 0..20 {
        spend(&app, &org, &format!("very-deep-{i}"), 1005).await;
    }
    eventually("the daily limit", Duration::from_secs(120), || async {
        topups(&app, &org)
            .await
            .into_iter()
            .any(|t| {
                t["state"] == "skipped"
                    && t["detail"].as_str().unwrap_or_default().contains("daily")
            })
            .then_some(())
    })
    .await;
    assert_eq!(topup_transfers(&app).await, 10);
    assert_eq!(app.balance(&org).await, "-10000.000000");
}

/// An alert to a refused address is recorded failed and the topup still charges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_to_a_refused_address_is_recorded_failed_and_the_topup_still_charges() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 100_000)), Some("50")).await;
    // An address the API accepts and the mail server refuses for good (550).
    let body = json!({
        "auto_topup": {"enabled": true, "threshold_credits": "50", "package_id": STARTER, "monthly_cap_minor": 100_000},
        "alerts": {"thresholds_credits": ["50"], "recipients": ["reject-me@acme.test"]},
    });
    assert_eq!(put_settings(&app, &org, &body).await.status, 200);
    spend(&app, &org, "dip", 60).await;
    let topup = finished_topup(&app, &org).await;
    assert_eq!(topup["state"], "succeeded");
    let alert = eventually("the alert recorded", Duration::from_secs(30), || async {
        let a = app
            .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
            .await;
        let first = a.body["data"].as_array().unwrap().first().cloned();
        first.filter(|a| a["state"] != "sending")
    })
    .await;
    assert_eq!(alert["state"], "failed", "{alert}");
    assert!(alert["detail"].as_str().unwrap().contains("550"), "{alert}");
    // The alert's workflow ended instead of retrying for ever.
    let ended: i64 = count(
        &app,
        "SELECT count(*) FROM email_sends WHERE state = 'failed'",
    )
    .await;
    assert_eq!(ended, 1);
    assert_eq!(app.balance(&org).await, "1040.000000");
}

/// An address the mailer refuses is refused by the API too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_mailer_refuses_is_refused_by_the_api_too() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("addresses").await;
    for bad in [
        "a@b@c.test",
        "ops@exa mple.test",
        "Ops <ops@acme.test>",
        "ops@acme..test",
    ] {
        let body = json!({
            "auto_topup": {"enabled": false},
            "alerts": {"thresholds_credits": ["50"], "recipients": [bad]},
        });
        put_settings(&app, &org, &body)
            .await
            .assert_problem(422, "invalid_email");
        assert!(billing::email::parse_address(bad).is_err(), "{bad}");
    }
}

/// A topup charge can be refunded through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_charge_can_be_refunded_through_the_api() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 100_000)), None).await;
    spend(&app, &org, "dip", 60).await; // 100 → 40: a topup of the Starter package
    let topup = finished_topup(&app, &org).await;
    assert_eq!(topup["state"], "succeeded", "{topup}");
    let id = topup["id"].as_str().unwrap();
    let paid = topup["amount_minor"].as_i64().unwrap();
    let before: rust_decimal::Decimal = app.balance(&org).await.parse().unwrap();

    let refund = |key: &'static str, amount: i64| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/v1/topups/{id}/refunds"),
                Some(OPERATOR_KEY),
                Some(&json!({"amount_minor": amount, "reason": "charged by mistake"})),
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let r = refund("all", paid).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["topup_id"], id);
    assert!(r.body["purchase_id"].is_null(), "{}", r.text);
    let done = eventually("the topup refund", Duration::from_secs(60), || async {
        let list = app.get(&format!("/v1/topups/{id}/refunds"), &org.key).await;
        let first = list.body["data"].as_array().unwrap().first().cloned();
        first.filter(|r| r["state"] == "reversed")
    })
    .await;
    let taken: rust_decimal::Decimal = done["credits_reversed"]
        .as_str()
        .unwrap()
        .parse::<rust_decimal::Decimal>()
        .unwrap()
        + done["bonus_credits_reversed"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap();
    // The balance right after the refund's transfers: the refund takes the balance back below
    // the topup threshold, so a new topup may already have landed on the live balance.
    let last = app
        .get(
            &format!(
                "/v1/orgs/{}/transactions?kind=refund,reversal&limit=1",
                org.id
            ),
            &org.key,
        )
        .await;
    let after: rust_decimal::Decimal = last.body["data"][0]["balance_after_credits"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(before - after, taken);
    assert_eq!(taken, rust_decimal::Decimal::from(1000));
    // The same key again is the same refund; the payment is used up for another.
    assert_eq!(refund("all", paid).await.body["id"], done["id"]);
    refund("more", 1)
        .await
        .assert_problem(422, "refund_not_allowed");
    // Another org's key sees nothing of it.
    let other = app.create_org("other").await;
    let hidden = app
        .get(&format!("/v1/topups/{id}/refunds"), &other.key)
        .await;
    assert!(
        matches!(hidden.status.as_u16(), 403 | 404),
        "{}",
        hidden.text
    );
    app.assert_invariants().await;
}

/// A topup charge answered 500 after it ran is found not charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_charge_answered_500_after_it_ran_is_found_not_charged_twice() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = org_with(&app, "pm_card_visa", Some(("50", 100_000)), None).await;
    app.fail_next("/v1/payment_intents", true).await;
    spend(&app, &org, "dip", 60).await; // 100 → 40: a topup, whose charge is answered 500
    let topup = finished_topup(&app, &org).await;
    assert_eq!(topup["state"], "succeeded", "{topup}");
    assert_eq!(succeeded_charges(&app).await, 1);
    assert_eq!(emulator_payment_intents(&app).await.len(), 1);
    assert_eq!(app.balance(&org).await, "1040.000000");
    app.assert_invariants().await;
}
