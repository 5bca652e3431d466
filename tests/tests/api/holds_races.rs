//! Holds at their edges: a booking that waited for the org's lock sees what committed while it
//! waited; a late settle of a hold past the first 1,000 due ones still releases it; a settle by
//! amount sent twice counts once; a settle refused in the same batch as usage naming the same
//! event leaves that event recorded once; a check with an estimate sees the estimate's model.
use chrono::{Duration as Span, TimeZone, Utc};
use reqwest::Method;
use serde_json::json;
use store::{EventOutcome, HoldOp, RatedEvent, SettleRequest, UsageJob};
use tests::{AppOptions, TestApp, backend_pid};

use super::holds::{d, funded, hold, position, post};

/// A budget made while a usage batch waits for the org's lock counts that batch's usage: what
/// the writer reads under the lock (budgets, held, due holds) is read after the lock, not from
/// the snapshot its lock statement started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_that_waited_for_the_lock_counts_toward_a_budget_made_meanwhile() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "waited-budget", "100").await;
    let mut tx = app.store.pool().begin().await.unwrap();
    let holder = backend_pid(&mut tx).await;
    sqlx::query("SELECT id FROM accounts WHERE org_id = $1 FOR UPDATE")
        .bind(org.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO budgets (org_id, id, scope_kind, scope_value, limit_credits, period,
                              timezone, enforcement)
         VALUES ($1, 'ann', 'user', 'ann', 50, 'total', 'UTC', 'hard')",
    )
    .bind(org.id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let usage = {
        let app = &app;
        let org = &org;
        async move {
            post(
                app,
                &org.key,
                "/v1/usage",
                json!({"events": [{"id": "u1", "type": "ai_tokens",
                                   "occurred_at": Utc::now().to_rfc3339(), "user": "ann",
                                   "model": "gpt-4o", "input_tokens": 12000}]}),
            )
            .await
        }
    };
    let release = async {
        app.wait_blocked_by(holder, "the usage batch to wait for the org's lock")
            .await;
        tx.commit().await.unwrap();
    };
    let (answer, ()) = tokio::join!(usage, release);
    assert_eq!(answer.status, 200, "{}", answer.text);
    let budgets = app
        .get(&format!("/v1/orgs/{}/budgets", org.id), &org.key)
        .await;
    assert_eq!(budgets.status, 200, "{}", budgets.text);
    assert_eq!(
        budgets.body["data"][0]["spent_credits"], "3.000000",
        "{}",
        budgets.text
    );
    assert_eq!(position(&app, &org).await, (d("97"), d("97"), d("0")));
    app.assert_invariants().await;
}

/// A booking releases at most 1,000 of an org's due holds; a late settle of one past them is
/// released by its own booking all the same (its credits never stay held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_settle_of_a_hold_past_the_first_thousand_due_still_releases_it() {
    let start = Utc.with_ymd_and_hms(2026, 12, 6, 9, 0, 0).unwrap();
    let clock = store::Clock::manual(start);
    let app = TestApp::spawn_with(AppOptions {
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let org = funded(&app, "many-due", "2000").await;
    let n = 1001;
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let made = futures::future::join_all(chunk.iter().map(|i| {
            hold(
                &app,
                &org,
                json!({"hold_id": format!("h-{i}"), "amount_credits": "1", "ttl_ms": 1000}),
            )
        }))
        .await;
        for a in made {
            assert_eq!(a.status, 201, "{}", a.text);
        }
    }
    assert_eq!(position(&app, &org).await, (d("2000"), d("999"), d("1001")));
    clock.set(start + Span::seconds(2));
    // The one a booking reaches last (soonest expiry first, then id).
    let last: String = sqlx::query_scalar(
        "SELECT hold_id FROM holds WHERE org_id = $1 ORDER BY expires_at DESC, id DESC LIMIT 1",
    )
    .bind(org.id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let late = post(
        &app,
        &org.key,
        &format!("/v1/holds/{last}/settle"),
        json!({"settle_id": "late", "amount_credits": "2"}),
    )
    .await;
    assert_eq!(late.status, 200, "{}", late.text);
    assert_eq!(late.body["hold"]["state"], "expired");
    assert_eq!(late.body["hold"]["late"], true);
    assert_eq!(late.body["hold"]["released_credits"], "1.000000");
    assert_eq!(position(&app, &org).await, (d("1998"), d("1998"), d("0")));
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM holds WHERE org_id = $1 AND state = 'active'")
            .bind(org.id)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(
        active, 0,
        "the booking released the first 1,000 and the late one"
    );
    app.assert_invariants().await;
}

/// A settle by amount sent again (a retry after a timeout) answers the first settle and books
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_by_amount_sent_twice_counts_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "settle-twice", "20").await;
    let h = hold(&app, &org, json!({"hold_id": "h", "amount_credits": "10"})).await;
    assert_eq!(h.status, 201, "{}", h.text);
    let body = json!({"settle_id": "s", "amount_credits": "4"});
    let first = post(&app, &org.key, "/v1/holds/h/settle", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["results"][0]["status"], "accepted");
    let again = post(&app, &org.key, "/v1/holds/h/settle", body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["results"][0]["status"], "duplicate");
    assert_eq!(again.body["hold"], first.body["hold"]);
    assert_eq!(position(&app, &org).await, (d("16"), d("16"), d("0")));
    post(
        &app,
        &org.key,
        "/v1/holds/h/settle",
        json!({"settle_id": "s", "amount_credits": "5"}),
    )
    .await
    .assert_problem(409, "hold_not_active");
    app.assert_invariants().await;
}

/// In one writer batch, a settle of a voided hold (refused) and plain usage naming the same
/// event: the usage's booking stands, recorded once, and answers accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_settle_and_usage_with_the_same_event_in_one_batch_record_it_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "same-batch", "20").await;
    let h = hold(&app, &org, json!({"hold_id": "h", "amount_credits": "5"})).await;
    assert_eq!(h.status, 201, "{}", h.text);
    let ours: uuid::Uuid = h.body["id"].as_str().unwrap().parse().unwrap();
    let v = post(&app, &org.key, "/v1/holds/h/void", json!({})).await;
    assert_eq!(v.status, 200, "{}", v.text);

    let e = billing::usage::UsageEvent {
        source: "default".into(),
        id: "shared".into(),
        occurred_at: Utc::now(),
        user: None,
        api_key: None,
        labels: Default::default(),
        usage: billing::usage::Usage::AiTokens(billing::usage::AiTokens {
            model: "gpt-4o".into(),
            operation: "chat".into(),
            input_tokens: 8000,
            output_tokens: 0,
            cached_input_tokens: 0,
        }),
    };
    let rated = RatedEvent {
        payload_hash: store::request_hash(&[e.canonical_text().as_bytes()]),
        event: e,
        cost: "2".parse().unwrap(),
        price_version: 1,
    };
    let settle = UsageJob {
        org_id: org.id,
        actor: "test".into(),
        events: vec![rated.clone()],
        hold: Some(Box::new(HoldOp::Settle(SettleRequest {
            hold: ours,
            settle_id: "s".into(),
            request_hash: vec![1],
        }))),
    };
    let usage = UsageJob {
        org_id: org.id,
        actor: "test".into(),
        events: vec![rated],
        hold: None,
    };
    let r = app
        .store
        .usage()
        .record_usage(&[settle, usage])
        .await
        .unwrap();
    assert!(
        matches!(r[0].hold.as_deref(), Some(store::HoldOutcome::NotActive(_))),
        "{:?}",
        r[0].hold
    );
    assert!(
        matches!(r[1].outcomes[0], EventOutcome::Accepted(_)),
        "{:?}",
        r[1].outcomes
    );
    let (events, transfers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events WHERE org_id = $1),
                (SELECT count(*) FROM transfers WHERE org_id = $1 AND kind = 'usage')",
    )
    .bind(org.id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!((events, transfers), (1, 1));
    assert_eq!(position(&app, &org).await, (d("18"), d("18"), d("0")));
    app.assert_invariants().await;
}

/// A check with an estimate sees the budgets of the estimate's model, as the hold it stands
/// for would, whatever `model` the body also names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_with_an_estimate_answers_for_the_estimates_model() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "check-model", "100").await;
    let b = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/budgets/gpt4o", org.id),
            Some(&org.key),
            Some(&json!({"scope": {"model": "gpt-4o"}, "limit_credits": "1",
                         "period": "total", "enforcement": "hard"})),
            &[],
        )
        .await;
    assert_eq!(b.status, 201, "{}", b.text);
    let estimate = json!({"model": "gpt-4o", "input_tokens": 8000, "max_output_tokens": 0});
    let c = post(
        &app,
        &org.key,
        "/v1/check",
        json!({"estimate": estimate, "model": "other"}),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["allowed"], false, "{}", c.text);
    assert_eq!(c.body["reason"], "budget_exhausted");
    let h = hold(
        &app,
        &org,
        json!({"hold_id": "h", "estimate": estimate, "model": "other"}),
    )
    .await;
    h.assert_problem(402, "budget_exhausted");
}
