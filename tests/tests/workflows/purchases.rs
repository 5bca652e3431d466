use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    AppOptions, GROWTH, OPERATOR_KEY, STRIPE_KEY, TestApp, TestOrg, WEBHOOK_SECRET, eventually,
    worker::{ProcessWorker, TestWorker},
};

/// Pays a session the way the hosted page's form does.
async fn pay(app: &TestApp, session_url: &str) {
    let page = app.http.get(session_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Pay"));
    app.pay_checkout(session_url, "pm_card_visa").await;
}

async fn transfer_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

/// The advisory lock [`park_checkout_session_writes`] makes the session's write wait on.
const PARK_KEY: i64 = 4_711_001;

/// Makes the first recording of a purchase's checkout session (the last step of the activity
/// that creates it) wait while the test holds advisory lock [`PARK_KEY`]. The trigger lives in
/// this test's own database only.
async fn park_checkout_session_writes(app: &TestApp) {
    sqlx::query(
        "CREATE FUNCTION test_park_checkout_session() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_advisory_xact_lock(4711001);
             RETURN NEW;
         END $$",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER test_park_checkout_session
             BEFORE UPDATE OF checkout_session_id ON purchases
             FOR EACH ROW WHEN (OLD.checkout_session_id IS NULL)
             EXECUTE FUNCTION test_park_checkout_session()",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
}

/// Waits until the completion webhook's event was stored in the inbox and, with `handed_on`,
/// handed to the workflow (the dispatcher marks it only after the workflow took the signal).
async fn completion_recorded(app: &TestApp, handed_on: bool) {
    eventually("the webhook", Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE type = 'checkout.session.completed'
                AND (dispatched_at IS NOT NULL OR NOT $1)",
        )
        .bind(handed_on)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
}

/// The purchase's Checkout Session as the emulator has it (found by its client reference).
async fn emulator_session(app: &TestApp, purchase_id: &str) -> Value {
    let sessions: Vec<Value> = app
        .emulator_list("/v1/checkout/sessions")
        .await
        .into_iter()
        .filter(|s| s["client_reference_id"] == purchase_id)
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    sessions[0].clone()
}

/// Packages show effective credits cost per credit and saving.
#[tokio::test]
async fn packages_show_effective_credits_cost_per_credit_and_saving() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("shopper").await;

    let list = app.get("/v1/packages", &org.key).await;

    let names: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Starter", "Growth", "Scale"]);
    let growth = &list.body["data"][1];
    assert_eq!(growth["effective_credits"], "5250.000000");
    assert_eq!(growth["cost_per_credit"], "0.009524");
    assert_eq!(growth["saving_percent"], "4.8");
    assert_eq!(list.body["data"][2]["saving_percent"], "9.1");
    assert_eq!(list.body["data"][0]["saving_percent"], "0.0");
}

/// Operators create change and deactivate packages.
#[tokio::test]
async fn operators_create_change_and_deactivate_packages() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("ops").await;
    let body = json!({"name": "Mega", "price_minor": 100000, "currency": "usd", "base_credits": "100000", "bonus_credits": "15000"});

    app.call(
        Method::POST,
        "/v1/packages",
        Some(&org.key),
        Some(&body),
        &[],
    )
    .await
    .assert_problem(403, "operator_only");
    let created = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let mut off = body.clone();
    off["active"] = json!(false);
    let changed = app
        .call(
            Method::PUT,
            &format!("/v1/packages/{id}"),
            Some(OPERATOR_KEY),
            Some(&off),
            &[],
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let bad = json!({"name": "", "price_minor": 0, "currency": "usd", "base_credits": "1"});
    app.call(
        Method::POST,
        "/v1/packages",
        Some(OPERATOR_KEY),
        Some(&bad),
        &[],
    )
    .await
    .assert_problem(422, "invalid_package");

    let list = app.get("/v1/packages", &org.key).await;
    assert!(
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != id.as_str())
    );
    app.buy(&org, &id)
        .await
        .assert_problem(422, "package_inactive");
    app.buy(&org, &uuid::Uuid::now_v7().to_string())
        .await
        .assert_problem(422, "unknown_package");
}

/// Buying and paying grants base and bonus once with one receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buying_and_paying_grants_base_and_bonus_once_with_one_receipt() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("buyer").await;

    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();
    let url = bought["checkout_url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&app.stripe_url), "{url}");
    pay(&app, &url).await;
    let done = app.wait_purchase(&org, &id, "credited").await;

    assert_eq!(app.balance(&org).await, "5250.000000");
    let history = app
        .get(&format!("/v1/orgs/{}/transactions", org.id), &org.key)
        .await;
    let rows = history.body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let kinds: Vec<&str> = rows.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bonus", "purchase"]);
    for t in rows {
        assert_eq!(t["actor"], "user:ana@acme.test");
        assert_eq!(t["refs"]["purchase_id"], id.as_str());
        assert_eq!(
            t["refs"]["checkout_session_id"],
            done["checkout_session_id"]
        );
        assert!(
            t["refs"]["payment_intent_id"]
                .as_str()
                .unwrap()
                .starts_with("pi_")
        );
    }
    let mails = eventually("the receipt", Duration::from_secs(10), || async {
        let m = app.smtp.received();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["ana@acme.test"]);
    assert!(
        mails[0].text().contains("Bonus: 250 credits") && mails[0].text().contains("Price: $50.00"),
        "{}",
        mails[0].data
    );
    assert!(
        mails[0].text().contains("New balance: 5,250 credits"),
        "{}",
        mails[0].data
    );
    // Named after the send record's key, so a resend after a crash is the same message.
    assert!(
        mails[0]
            .data
            .contains(&format!("Message-ID: <receipt-{id}@creditflow>")),
        "{}",
        mails[0].data
    );
    let state: Option<billing::PurchaseState> = app
        .temporal
        .get_workflow_handle::<workflows::purchase::PurchaseWorkflow>(format!("purchase-{id}"))
        .query(
            workflows::purchase::PurchaseWorkflow::current_state,
            (),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(state, Some(billing::PurchaseState::Credited));
    app.assert_invariants().await;
}

/// The completion webhook delivered again and early still grants once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_completion_webhook_delivered_again_and_early_still_grants_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("dupes").await;
    // Early, every time: the activity that creates the session is held at its last step
    // (recording the session) until the payment's signal is in the workflow's history, so the
    // workflow reaches its wait with the payment already there.
    park_checkout_session_writes(&app).await;
    let mut hold = app.store.pool().begin().await.unwrap();
    let holder = tests::backend_pid(&mut hold).await;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARK_KEY)
        .execute(&mut *hold)
        .await
        .unwrap();

    let bought = app.buy(&org, GROWTH).await;
    // The session exists on the emulator but is not recorded yet, so the answer has no URL.
    assert_eq!(bought.status, 202, "{}", bought.text);
    assert!(bought.body["checkout_url"].is_null(), "{}", bought.text);
    let id = bought.body["id"].as_str().unwrap().to_string();
    app.wait_blocked_by(holder, "the session's recording to wait")
        .await;
    let session = emulator_session(&app, &id).await;
    pay(&app, session["url"].as_str().unwrap()).await;
    // The dispatcher marks the event handed on only after the workflow accepted the signal.
    completion_recorded(&app, true).await;
    let completed = app
        .emulator_events()
        .await
        .into_iter()
        .find(|e| e["type"] == "checkout.session.completed")
        .expect("the completion event");
    let redeliver = format!(
        "{}/_emulator/events/{}/deliver?times=3",
        app.stripe_url,
        completed["id"].as_str().unwrap()
    );
    assert_eq!(
        app.http.post(&redeliver).send().await.unwrap().status(),
        204
    );
    let parked = app.purchase(&org, &id).await;
    assert_eq!(parked["state"], "awaiting_payment");
    assert!(parked["checkout_session_id"].is_null(), "{parked}");
    hold.rollback().await.unwrap();
    let done = app.wait_purchase(&org, &id, "credited").await;
    assert_eq!(
        app.http.post(&redeliver).send().await.unwrap().status(),
        204
    );

    assert_eq!(done["checkout_session_id"], session["id"]);
    assert_eq!(app.balance(&org).await, "5250.000000");
    assert_eq!(transfer_count(&app).await, 2);
    app.assert_invariants().await;
    // The history shows the case: the signal came before the session activity completed.
    let history = app
        .temporal
        .get_workflow_handle::<workflows::purchase::PurchaseWorkflow>(format!("purchase-{id}"))
        .fetch_history(temporalio_client::WorkflowFetchHistoryOptions::default())
        .to_json()
        .await
        .unwrap();
    let history: Value = serde_json::from_slice(&history).unwrap();
    let events = history["events"].as_array().unwrap();
    let first = |attributes: &str| {
        events
            .iter()
            .position(|e| e["attributes"].get(attributes).is_some())
    };
    let signalled = first("WorkflowExecutionSignaledEventAttributes").expect("a signal");
    let session_done = first("ActivityTaskCompletedEventAttributes").expect("an activity");
    assert!(
        signalled < session_done,
        "signal at event {signalled}, first activity done at {session_done}"
    );
}

/// An unpaid session expires without credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_session_expires_without_credits() {
    let app = TestApp::spawn_with(AppOptions {
        checkout_expiry: Duration::from_secs(2),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("late").await;
    let bought = app.buy(&org, GROWTH).await;
    let id = bought.body["id"].as_str().unwrap().to_string();

    let expired = app.wait_purchase(&org, &id, "expired").await;

    assert_eq!(app.balance(&org).await, "0.000000");
    let session: Value = app
        .http
        .get(format!(
            "{}/v1/checkout/sessions/{}",
            app.stripe_url,
            expired["checkout_session_id"].as_str().unwrap()
        ))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["status"], "expired");
    app.keep_history(
        "purchase_checkout_expired",
        &workflows::purchase::workflow_id(&id),
    )
    .await;
}

/// A forged or stale signature is refused and changes nothing.
#[tokio::test]
async fn a_forged_or_stale_signature_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let body = json!({"id": "evt_forged", "type": "checkout.session.completed",
                      "data": {"object": {"mode": "payment", "client_reference_id": "x"}}})
    .to_string();
    let now = chrono::Utc::now().timestamp();
    let send = |sig: String| {
        let (app, body) = (&app, body.clone());
        async move {
            let r = app
                .http
                .post(format!("{}/v1/webhooks/stripe", app.base_url))
                .header("stripe-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };

    assert_eq!(
        send(stripe_emulator::sign("whsec_wrong", now, &body)).await,
        400
    );
    assert_eq!(
        send(stripe_emulator::sign(WEBHOOK_SECRET, now - 301, &body)).await,
        400
    );
    assert_eq!(send("t=1,v1=00".into()).await, 400);
    let missing = app
        .http
        .post(format!("{}/v1/webhooks/stripe", app.base_url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(events, 0);
    // A good signature on an unknown event type is acknowledged and ignored.
    let other =
        json!({"id": "evt_other", "type": "customer.created", "data": {"object": {}}}).to_string();
    let ok = app
        .http
        .post(format!("{}/v1/webhooks/stripe", app.base_url))
        .header(
            "stripe-signature",
            stripe_emulator::sign(WEBHOOK_SECRET, now, &other),
        )
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// Another org's purchase is not visible.
#[tokio::test]
async fn another_orgs_purchase_is_not_visible() {
    let app = TestApp::spawn().await.unwrap();
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;
    let package = app
        .store
        .packages()
        .package(GROWTH.parse().unwrap())
        .await
        .unwrap();
    let p = app
        .store
        .purchases()
        .create_purchase(a.id, &package, "ana", None, chrono::Utc::now(), None, None)
        .await
        .unwrap()
        .0;

    // Like a missing one (audit L12): ids of other orgs cannot be probed.
    app.get(&format!("/v1/purchases/{}", p.id), &b.key)
        .await
        .assert_problem(404, "not_found");
    app.get(&format!("/v1/purchases/{}", uuid::Uuid::now_v7()), &b.key)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(
        app.get(&format!("/v1/purchases/{}", p.id), &a.key)
            .await
            .status,
        200
    );
    app.call(
        Method::POST,
        "/v1/purchases",
        Some(&a.key),
        Some(&json!({"package_id": GROWTH})),
        &[],
    )
    .await
    .assert_problem(422, "missing_field");
}

/// Granting a purchase twice books it once.
#[tokio::test]
async fn granting_a_purchase_twice_books_it_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("retry").await;
    let package = app
        .store
        .packages()
        .package(GROWTH.parse().unwrap())
        .await
        .unwrap();
    let p = app
        .store
        .purchases()
        .create_purchase(
            org.id,
            &package,
            "ana",
            None,
            chrono::Utc::now(),
            None,
            None,
        )
        .await
        .unwrap()
        .0;

    let first = app.store.purchases().grant_purchase(p.id).await.unwrap();
    let again = app.store.purchases().grant_purchase(p.id).await.unwrap();

    assert!(first.newly_booked);
    assert!(!again.newly_booked);
    assert_eq!(first.transfers, again.transfers);
    assert_eq!(app.balance(&org).await, "5250.000000");
    app.assert_invariants().await;
}

/// A worker killed before the grant and restarted grants once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_the_grant_and_restarted_grants_once() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let org = app.create_org("crash").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();

    // The worker dies (SIGKILL) while the workflow waits; the payment arrives with no worker
    // alive, so nothing can grant until one comes back.
    worker.kill();
    pay(&app, bought["checkout_url"].as_str().unwrap()).await;
    // Stored in the inbox; the dispatcher that hands it on runs in the (dead) worker.
    completion_recorded(&app, false).await;
    assert_eq!(app.purchase(&org, &id).await["state"], "awaiting_payment");
    assert_eq!(app.balance(&org).await, "0.000000");
    let _restarted = ProcessWorker::start(&app).unwrap();

    app.wait_purchase(&org, &id, "credited").await;
    assert_eq!(app.balance(&org).await, "5250.000000");
    app.assert_invariants().await;
}

/// A worker killed mid grant after payment grants once after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_grant_after_payment_grants_once_after_restart() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let org = app.create_org("mid-grant").await;
    // The grant's transaction first locks the org's account row (`Store::lock_orgs`); marking
    // the purchase paid only updates the purchase. Holding that row parks the grant inside its
    // transaction, after the payment, every time.
    let mut hold = app.store.pool().begin().await.unwrap();
    let holder = tests::backend_pid(&mut hold).await;
    sqlx::query("SELECT id FROM accounts WHERE org_id = $1 FOR UPDATE")
        .bind(org.id)
        .fetch_one(&mut *hold)
        .await
        .unwrap();

    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();
    pay(&app, bought["checkout_url"].as_str().unwrap()).await;
    app.wait_purchase(&org, &id, "paid").await;
    app.wait_blocked_by(holder, "the grant to wait for the account row")
        .await;
    // SIGKILL mid-grant: its transaction can never commit, whatever happens to the lock.
    worker.kill();
    hold.rollback().await.unwrap();
    assert_eq!(transfer_count(&app).await, 0);
    assert_eq!(app.purchase(&org, &id).await["state"], "paid");
    let _restarted = ProcessWorker::start(&app).unwrap();

    // The killed attempt is retried once its 30 s start-to-close timeout has passed.
    eventually(
        "credited after the restart",
        Duration::from_secs(90),
        || async { (app.purchase(&org, &id).await["state"] == "credited").then_some(()) },
    )
    .await;
    assert_eq!(app.balance(&org).await, "5250.000000");
    assert_eq!(transfer_count(&app).await, 2);
    app.assert_invariants().await;
}

/// The same purchase request twice makes one checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_purchase_request_twice_makes_one_checkout() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("retry-buy").await;
    let body = json!({"package_id": GROWTH, "user": "ana@acme.test"});
    let post = |key: &'static str, body: Value| {
        let (app, org) = (&app, &org);
        async move {
            app.call(
                Method::POST,
                "/v1/purchases",
                Some(&org.key),
                Some(&body),
                &[("idempotency-key", key)],
            )
            .await
        }
    };

    let first = post("buy-1", body.clone()).await;
    let again = post("buy-1", body.clone()).await;
    let other = post(
        "buy-1",
        json!({"package_id": GROWTH, "user": "bob@acme.test"}),
    )
    .await;

    let ready = app.ready_purchase(&org, &first).await;
    assert_eq!(again.body["id"], first.body["id"]);
    // One checkout: the replay answers the first purchase's (once it has its URL).
    for answer in [&first, &again] {
        assert!(
            answer.body["checkout_url"].is_null()
                || answer.body["checkout_url"] == ready["checkout_url"],
            "{}",
            answer.text
        );
    }
    other.assert_problem(409, "idempotency_conflict");
    let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(purchases, 1);
}

/// A checkout the processor refuses ends failed at once without credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_the_processor_refuses_ends_failed_at_once_without_credits() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("refused").await;
    // The processor refuses a payment below the currency's minimum charge (50 cents in USD).
    let tiny = json!({"name": "Tiny", "price_minor": 10, "currency": "usd", "base_credits": "10"});
    let created = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&tiny),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let package = created.body["id"].as_str().unwrap().to_string();
    let transfers_before = transfer_count(&app).await;

    // Failed at once: the purchase ends without waiting out its checkout's expiry (600 s here),
    // either within the API's answer (201) or a moment after it (202 on a busy machine).
    let bought = app.buy(&org, &package).await;
    let id = bought.body["id"].as_str().unwrap().to_string();
    let ended = app.wait_purchase(&org, &id, "failed").await;

    assert!(ended["checkout_url"].is_null(), "{ended}");
    assert!(bought.body["checkout_url"].is_null(), "{}", bought.text);
    let handle = app
        .temporal
        .get_workflow_handle::<workflows::purchase::PurchaseWorkflow>(format!("purchase-{id}"));
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        handle.get_result(Default::default()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(result, billing::PurchaseState::Failed);
    let state: Option<billing::PurchaseState> = handle
        .query(
            workflows::purchase::PurchaseWorkflow::current_state,
            (),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(state, Some(billing::PurchaseState::Failed));
    assert_eq!(app.purchase(&org, &id).await["state"], "failed");
    assert_eq!(app.balance(&org).await, "0.000000");
    assert_eq!(transfer_count(&app).await, transfers_before);
    assert!(app.smtp.received().is_empty());
}

/// Waits until the purchase's workflow has asked the processor about its payment `times` times
/// (each hint, and the expiry, makes it ask), read from the workflow's history.
async fn payment_checked(app: &TestApp, purchase: &str, times: usize) {
    let handle = app
        .temporal
        .get_workflow_handle::<temporalio_client::UntypedWorkflow>(
            workflows::purchase::workflow_id(purchase),
        );
    eventually("the processor asked", Duration::from_secs(60), || async {
        let history = handle
            .fetch_history(temporalio_client::WorkflowFetchHistoryOptions::default())
            .to_json()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&history).into_owned();
        // Activities completed after the session's creation are the checks.
        let checks = text.matches("purchase.check_payment").count();
        let completed = text.matches("ActivityTaskCompletedEventAttributes").count();
        (checks >= times && completed > times).then_some(())
    })
    .await;
}

/// Settles a completed bank-debit checkout at the emulator (as the bank would, days later).
async fn settle(app: &TestApp, session_id: &str) {
    let r = app
        .http
        .post(format!(
            "{}/_emulator/checkout/{session_id}/settle",
            app.stripe_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// A bank debit grants nothing until the money arrives then grants once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_debit_grants_nothing_until_the_money_arrives_then_grants_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("bank-debit").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();

    // Completed, but unpaid: the money is on its way.
    app.pay_checkout(
        bought["checkout_url"].as_str().unwrap(),
        "pm_usBankAccount_success",
    )
    .await;
    let waiting = app.wait_purchase(&org, &id, "awaiting_funds").await;
    assert_eq!(app.balance(&org).await, "0.000000");
    assert!(waiting["credited_at"].is_null());
    settle(&app, waiting["checkout_session_id"].as_str().unwrap()).await;
    app.wait_purchase(&org, &id, "credited").await;

    assert_eq!(app.balance(&org).await, "5250.000000");
    // Three hints (completed, payment_intent events aside, async_payment_succeeded) and one grant.
    let grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transfers WHERE kind IN ('purchase', 'bonus')")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(grants, 2);
    app.assert_invariants().await;
    app.keep_history(
        "purchase_checkout_bank_debit",
        &workflows::purchase::workflow_id(&id),
    )
    .await;
}

/// A bank debit that fails ends the purchase failed with a notice and no credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_debit_that_fails_ends_the_purchase_failed_with_a_notice_and_no_credits() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("bank-debit-fails").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();

    app.pay_checkout(
        bought["checkout_url"].as_str().unwrap(),
        "pm_usBankAccount_fail",
    )
    .await;
    let waiting = app.wait_purchase(&org, &id, "awaiting_funds").await;
    settle(&app, waiting["checkout_session_id"].as_str().unwrap()).await;
    app.wait_purchase(&org, &id, "failed").await;

    assert_eq!(app.balance(&org).await, "0.000000");
    let notice = eventually("the failure notice", Duration::from_secs(30), || async {
        app.smtp
            .received()
            .into_iter()
            .find(|m| m.data.contains("did not go through"))
    })
    .await;
    assert!(notice.data.contains(&id), "{}", notice.data);
    assert_eq!(transfer_count(&app).await, 0);
}

/// A signed completion for an unpaid session grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_completion_for_an_unpaid_session_grants_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("forged").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();

    // Signed with the endpoint's own secret (as one who stole it would), claiming "paid".
    let forged = json!({"id": "evt_forged_paid", "type": "checkout.session.completed",
        "data": {"object": {"id": bought["checkout_session_id"], "object": "checkout.session",
                            "mode": "payment", "client_reference_id": id, "status": "complete",
                            "payment_status": "paid", "payment_intent": "pi_forged",
                            "amount_total": 5000, "currency": "usd"}}})
    .to_string();
    let sent = app
        .http
        .post(format!("{}/v1/webhooks/stripe", app.base_url))
        .header(
            "stripe-signature",
            stripe_emulator::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &forged),
        )
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    payment_checked(&app, &id, 1).await;

    assert_eq!(app.purchase(&org, &id).await["state"], "awaiting_payment");
    assert_eq!(app.balance(&org).await, "0.000000");
    // The real payment still goes through, once.
    pay(&app, bought["checkout_url"].as_str().unwrap()).await;
    app.wait_purchase(&org, &id, "credited").await;
    assert_eq!(app.balance(&org).await, "5250.000000");
}

/// A payment whose amount differs from the purchase grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_whose_amount_differs_from_the_purchase_grants_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("mismatch").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();
    // The purchase's snapshot says $60 while its session charges $50.
    sqlx::query(
        "UPDATE purchases SET package = jsonb_set(package, '{price,amount_minor}', '6000')
          WHERE id = $1",
    )
    .bind(id.parse::<uuid::Uuid>().unwrap())
    .execute(app.store.pool())
    .await
    .unwrap();

    pay(&app, bought["checkout_url"].as_str().unwrap()).await;
    payment_checked(&app, &id, 1).await;

    assert_eq!(app.purchase(&org, &id).await["state"], "awaiting_payment");
    assert_eq!(app.balance(&org).await, "0.000000");
    assert_eq!(transfer_count(&app).await, 0);
}

/// A completion for an unfinished purchase without its workflow waits in the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_for_an_unfinished_purchase_without_its_workflow_waits_in_the_inbox() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("no-workflow").await;
    let package = app
        .store
        .packages()
        .package(GROWTH.parse().unwrap())
        .await
        .unwrap();
    // A purchase whose workflow does not exist (nothing starts it), with the dispatcher running.
    let _worker = TestWorker::start(&app).unwrap();
    let (p, _) = app
        .store
        .purchases()
        .create_purchase(
            org.id,
            &package,
            "ana",
            None,
            chrono::Utc::now(),
            None,
            None,
        )
        .await
        .unwrap();
    let send = |event_id: &str, purchase: String| {
        let body = json!({"id": event_id, "type": "checkout.session.completed",
            "data": {"object": {"id": "cs_x", "mode": "payment", "client_reference_id": purchase,
                                "payment_status": "paid"}}})
        .to_string();
        let sig = stripe_emulator::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &body);
        let app = &app;
        async move {
            app.http
                .post(format!("{}/v1/webhooks/stripe", app.base_url))
                .header("stripe-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // Stored and answered 200 at once; the dispatcher keeps it for later, since the purchase
    // has not ended (it is our side that is behind, not the event that is stale).
    assert_eq!(send("evt_unfinished", p.id.to_string()).await, 200);
    let pending = |id: &'static str| {
        let pool = app.store.pool().clone();
        async move {
            sqlx::query_as::<_, (i32, Option<String>, bool)>(
                "SELECT attempts, last_error, dispatched_at IS NOT NULL FROM stripe_events WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (attempts, error, done) =
        eventually("a dispatch attempt", Duration::from_secs(20), || async {
            let row = pending("evt_unfinished").await;
            (row.0 >= 1).then_some(row)
        })
        .await;
    assert!(attempts >= 1 && !done, "{attempts} {done}");
    assert!(error.unwrap().contains("not running"));
    // An ended purchase (or none at all) has nothing left to do with it: marked handled.
    app.store
        .purchases()
        .end_purchase(p.id, billing::PurchaseState::Expired)
        .await
        .unwrap();
    assert_eq!(send("evt_ended", p.id.to_string()).await, 200);
    assert_eq!(
        send("evt_unknown", uuid::Uuid::now_v7().to_string()).await,
        200
    );
    for id in ["evt_ended", "evt_unknown"] {
        eventually("the event handled", Duration::from_secs(20), || async {
            pending(id).await.2.then_some(())
        })
        .await;
    }
}

/// A worker killed after SMTP took the receipt does not send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_smtp_took_the_receipt_does_not_send_it_again() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let org = app.create_org("mail-crash").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();

    // The server takes the receipt and never answers: the worker is killed in that window.
    app.smtp.set_holding(true);
    pay(&app, bought["checkout_url"].as_str().unwrap()).await;
    eventually("the receipt taken", Duration::from_secs(30), || async {
        (!app.smtp.received().is_empty()).then_some(())
    })
    .await;
    worker.kill();
    app.smtp.set_holding(false);
    let _restarted = ProcessWorker::start(&app).unwrap();

    // The retried activity finds the send claimed and unanswered: `unknown`, not sent again.
    let key = format!("receipt:{id}");
    let (state, detail): (String, Option<String>) = eventually(
        "the receipt recorded unknown",
        Duration::from_secs(90),
        || async {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT state, detail FROM email_sends WHERE key = $1")
                    .bind(&key)
                    .fetch_optional(app.store.pool())
                    .await
                    .unwrap();
            row.filter(|(s, _)| s != "sending")
        },
    )
    .await;
    assert_eq!(state, "unknown");
    assert!(detail.unwrap().contains("may or may not"));
    app.wait_purchase(&org, &id, "credited").await;
    let handle = app
        .temporal
        .get_workflow_handle::<temporalio_client::UntypedWorkflow>(format!("purchase-{id}"));
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        handle.get_result(Default::default()),
    )
    .await
    .expect("the workflow closed");
    assert_eq!(app.smtp.received().len(), 1);
    assert_eq!(app.balance(&org).await, "5250.000000");
}

/// The return pages show what was bought and where it stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_pages_show_what_was_bought_and_where_it_stands() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("pages").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let id = bought["id"].as_str().unwrap().to_string();
    let session = bought["checkout_session_id"].as_str().unwrap().to_string();
    let get = |path: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .get(format!("{}{path}", app.base_url))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let kind = r.headers()["content-type"].to_str().unwrap().to_string();
            (status, kind, r.text().await.unwrap())
        }
    };
    // Left the checkout: nothing charged, and the way back to it while it is open.
    let (status, kind, cancel) = get(format!("/checkout/cancel?session_id={session}")).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(
        cancel.contains("Checkout cancelled") && cancel.contains("Return to the checkout"),
        "{cancel}"
    );
    assert!(
        cancel.contains("Growth") && cancel.contains("5,000 credits") && cancel.contains("$50.00"),
        "{cancel}"
    );

    app.pay_checkout(bought["checkout_url"].as_str().unwrap(), "pm_card_visa")
        .await;
    app.wait_purchase(&org, &id, "credited").await;
    let (status, _, done) = get(format!("/checkout/success?session_id={session}")).await;
    assert_eq!(status, 200);
    assert!(done.contains("your credits are added"), "{done}");
    assert!(
        done.contains(&id) && done.contains("<code>credited</code>"),
        "{done}"
    );
    assert!(!done.contains("{\"status\""), "{done}");
    assert_eq!(
        get("/checkout/success?session_id=cs_nope".into()).await.0,
        404
    );
    assert_eq!(get("/checkout/success".into()).await.0, 400);
    let (_, _, escaped) = get("/checkout/success?session_id=%3Cscript%3E".into()).await;
    assert!(!escaped.contains("<script>"), "{escaped}");
    // A session id no processor issues (a NUL, a space) names no checkout: 404, not a 500
    // from the database (schemathesis found it).
    for odd in ["cs_%00x", "cs%20x", "%C3%A9"] {
        let (status, kind, _) = get(format!("/checkout/cancel?session_id={odd}")).await;
        assert_eq!(
            (status, kind.as_str()),
            (404, "text/html; charset=utf-8"),
            "{odd}"
        );
    }
}

/// One answer of [`within_one_minute`]: status, Retry-After, and problem code.
type Limited = (u16, Option<u32>, Value);

/// Sends `n` requests back to back and returns their answers, if all were counted in one
/// minute window (else `Err` with them: the minute turned while they ran).
async fn within_one_minute(
    n: usize,
    send: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Vec<Limited>, Vec<Limited>> {
    let minute = || chrono::Utc::now().timestamp() / 60;
    let before = minute();
    let mut answers = Vec::new();
    for _ in 0..n {
        let r = send().send().await.unwrap();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        answers.push((status, retry_after, body["code"].clone()));
    }
    if minute() == before {
        Ok(answers)
    } else {
        Err(answers)
    }
}

/// Runs [`within_one_minute`] until one run falls in one window (at most 3 runs); returns it
/// and how many requests were accepted in all runs.
async fn in_one_window(
    n: usize,
    send: impl Fn() -> reqwest::RequestBuilder,
) -> (Vec<Limited>, usize) {
    let mut accepted = 0;
    for _ in 0..3 {
        let run = within_one_minute(n, &send).await;
        let answers = match &run {
            Ok(a) | Err(a) => a,
        };
        accepted += answers.iter().filter(|a| matches!(a.0, 201 | 202)).count();
        if let Ok(answers) = run {
            return (answers, accepted);
        }
    }
    panic!("no run of {n} requests within one minute");
}

/// Purchases and card setups are rate limited per org.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_and_card_setups_are_rate_limited_per_org() {
    let app = TestApp::spawn_with(AppOptions {
        limits: api::RequestLimits {
            purchases_per_minute: 2,
            setups_per_minute: 1,
        },
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("busy").await;
    let other = app.create_org("calm").await;
    let buy = |org: &TestOrg| {
        app.http
            .post(format!("{}/v1/purchases", app.base_url))
            .bearer_auth(&org.key)
            .json(&json!({"package_id": GROWTH, "user": "ana@acme.test"}))
    };
    let (answers, accepted) = in_one_window(3, || buy(&org)).await;
    assert!(matches!(answers[0].0, 201 | 202), "{answers:?}");
    assert!(matches!(answers[1].0, 201 | 202), "{answers:?}");
    assert_eq!(answers[2].0, 429, "{answers:?}");
    assert_eq!(answers[2].2, "rate_limited", "{answers:?}");
    let retry_after = answers[2].1.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // A refused request wrote nothing, and another org is not held back.
    let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases WHERE org_id = $1")
        .bind(org.id)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(purchases as usize, accepted);
    assert!(matches!(
        app.buy(&other, GROWTH).await.status.as_u16(),
        201 | 202
    ));

    let setup = || {
        app.http
            .post(format!(
                "{}/v1/orgs/{}/payment-method/setup",
                app.base_url, org.id
            ))
            .bearer_auth(&org.key)
            .json(&json!({"user": "ana@acme.test"}))
    };
    let (answers, _) = in_one_window(2, setup).await;
    assert!(matches!(answers[0].0, 201 | 202), "{answers:?}");
    assert_eq!(answers[1].0, 429, "{answers:?}");
    assert!(answers[1].1.is_some(), "{answers:?}");
}
