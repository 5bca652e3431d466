//! Holds, budgets and checks from outside: concurrent holds on one org never overdraw it,
//! settles under, at and over the hold, expiry exact at its instant before any sweep, late
//! settles recorded, a daily budget per user that resets at its time zone's midnight, the
//! check API writing nothing, scopes, idempotency and bad input.
use std::str::FromStr;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tests::{AppOptions, OPERATOR_KEY, TestApp, TestOrg};

pub(super) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn dec(v: &Value) -> Decimal {
    d(v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}")))
}

pub(super) async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> tests::Answer {
    app.call(Method::POST, path, Some(key), Some(&body), &[])
        .await
}

pub(super) async fn hold(app: &TestApp, org: &TestOrg, body: Value) -> tests::Answer {
    post(app, &org.key, &format!("/v1/orgs/{}/holds", org.id), body).await
}

async fn settle(app: &TestApp, org: &TestOrg, hold_id: &str, body: Value) -> tests::Answer {
    post(app, &org.key, &format!("/v1/holds/{hold_id}/settle"), body).await
}

/// gpt-4o input: 4,000 tokens a credit.
fn event(id: &str, credits: u64) -> Value {
    json!({"id": id, "type": "ai_tokens", "occurred_at": Utc::now().to_rfc3339(),
           "model": "gpt-4o", "input_tokens": credits * 4000})
}

/// (balance, available, held) as the balance endpoint shows them; asserts the identity.
pub(super) async fn position(app: &TestApp, org: &TestOrg) -> (Decimal, Decimal, Decimal) {
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.status, 200, "{}", b.text);
    let (total, available, held) = (
        dec(&b.body["balance_credits"]),
        dec(&b.body["available_credits"]),
        dec(&b.body["held_credits"]),
    );
    assert_eq!(
        total,
        available + held,
        "balance = available + held: {}",
        b.text
    );
    (total, available, held)
}

pub(super) async fn funded(app: &TestApp, name: &str, credits: &str) -> TestOrg {
    let org = app.create_org(name).await;
    let a = app
        .adjust(org.id, credits, "seed", &format!("seed-{name}"))
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    org
}

/// 64 holds of 10 at once on an org with 100 available: exactly 10 are made, the others are
/// refused with 402, and the org's 100 credits are all held, none overdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_holds_of_ten_on_a_hundred_make_exactly_ten() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "concurrent-holds", "100").await;
    let answers = futures::future::join_all((0..64).map(|i| {
        hold(
            &app,
            &org,
            json!({"hold_id": format!("h-{i}"), "amount_credits": "10"}),
        )
    }))
    .await;
    let made = answers.iter().filter(|a| a.status == 201).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 402).collect();
    assert_eq!(
        made,
        10,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(refused.len(), 54);
    for r in refused {
        r.assert_problem(402, "insufficient_credits");
        assert!(dec(&r.body["available_credits"]) < d("10"), "{}", r.text);
    }
    assert_eq!(position(&app, &org).await, (d("100"), d("0"), d("100")));
    app.assert_invariants().await;
}

/// A settle records the actual usage and releases the rest of the hold: under the hold
/// (the rest goes back), exactly the hold, and over it (all of the usage is recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_under_at_and_over_the_hold_record_the_usage_and_release_the_rest() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "settles", "100").await;
    let mut first_settle = None;
    for (name, held, used) in [("under", 10, 4), ("exact", 10, 10), ("over", 10, 13)] {
        let h = hold(
            &app,
            &org,
            json!({"hold_id": name, "amount_credits": held.to_string()}),
        )
        .await;
        assert_eq!(h.status, 201, "{}", h.text);
        assert_eq!(h.body["state"], "active");
        let (total, available, on_hold) = position(&app, &org).await;
        assert_eq!(on_hold, Decimal::from(held));
        assert_eq!(dec(&h.body["available_credits"]), available);
        let body = json!({"settle_id": "s1", "events": [event(&format!("{name}-e"), used)]});
        first_settle.get_or_insert_with(|| body.clone());
        let s = settle(&app, &org, name, body).await;
        assert_eq!(s.status, 200, "{}", s.text);
        let v = &s.body["hold"];
        assert_eq!(v["state"], "settled");
        let settled = dec(&v["settled_credits"]);
        let released = dec(&v["released_credits"]);
        assert_eq!(settled + released, Decimal::from(held), "{}", s.text);
        assert_eq!(settled, Decimal::from(used.min(held)));
        assert_eq!(dec(&v["usage_credits"]), Decimal::from(used));
        assert_eq!(s.body["results"][0]["status"], "accepted");
        let after = position(&app, &org).await;
        assert_eq!(
            after,
            (
                total - Decimal::from(used),
                total - Decimal::from(used),
                d("0")
            )
        );
        assert_eq!(dec(&s.body["available_credits"]), after.1);
    }
    // The same settle again answers the same, and books nothing more.
    let again = settle(&app, &org, "under", first_settle.unwrap()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["results"][0]["status"], "duplicate");
    assert_eq!(position(&app, &org).await.0, d("73"));
    // Another settle of an ended hold is refused.
    settle(
        &app,
        &org,
        "under",
        json!({"settle_id": "s2", "amount_credits": "1"}),
    )
    .await
    .assert_problem(409, "hold_not_active");
    app.assert_invariants().await;
}

/// A hold whose `hold_id` comes again with the same body is the same hold; with another body
/// it is refused; a void gives the credits back once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_hold_id_is_one_hold_and_a_void_gives_back_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "hold-idempotency", "50").await;
    let body = json!({"hold_id": "h1", "estimate": {"model": "gpt-4o", "input_tokens": 4000,
                      "max_output_tokens": 1000}, "user": "ann"});
    let first = hold(&app, &org, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(
        first.body["amount_credits"], "2.000000",
        "1 input + 1 output credit"
    );
    assert_eq!(first.body["model"], "gpt-4o");
    assert!(first.body["price_version"].is_i64());
    let second = hold(&app, &org, body).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body["id"], first.body["id"]);
    hold(&app, &org, json!({"hold_id": "h1", "amount_credits": "3"}))
        .await
        .assert_problem(409, "hold_id_conflict");
    assert_eq!(position(&app, &org).await, (d("50"), d("48"), d("2")));

    let v = post(&app, &org.key, "/v1/holds/h1/void", json!({})).await;
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["state"], "voided");
    assert_eq!(v.body["released_credits"], "2.000000");
    let again = post(&app, &org.key, "/v1/holds/h1/void", json!({})).await;
    assert_eq!(again.status, 200, "voiding twice answers the voided hold");
    assert_eq!(position(&app, &org).await, (d("50"), d("50"), d("0")));
    settle(
        &app,
        &org,
        "h1",
        json!({"settle_id": "s", "amount_credits": "1"}),
    )
    .await
    .assert_problem(409, "hold_not_active");
    post(
        &app,
        &org.key,
        "/v1/holds/h1/extend",
        json!({"by_ms": 1000}),
    )
    .await
    .assert_problem(409, "hold_not_active");
    // By our id too (operators use it); another org's key does not see it.
    let id = first.body["id"].as_str().unwrap();
    let by_id = app.get(&format!("/v1/holds/{id}"), OPERATOR_KEY).await;
    assert_eq!(by_id.body["hold_id"], "h1");
    let other = app.create_org("hold-other").await;
    app.get(&format!("/v1/holds/{id}"), &other.key)
        .await
        .assert_problem(404, "hold_not_found");
    let listed = app
        .get(&format!("/v1/orgs/{}/holds?state=voided", org.id), &org.key)
        .await;
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        listed.text
    );
    app.assert_invariants().await;
}

/// `cap_to_available` holds what there is; `allow` may go below zero down to the org's floor
/// and no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overage_caps_to_available_or_overdraws_down_to_the_floor() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "overage", "10").await;
    let put = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/overdraft-limit", org.id),
            Some(OPERATOR_KEY),
            Some(&json!({"overdraft_limit_credits": "5"})),
            &[],
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let capped = hold(
        &app,
        &org,
        json!({"hold_id": "cap", "amount_credits": "25", "overage": "cap_to_available"}),
    )
    .await;
    assert_eq!(capped.status, 201, "{}", capped.text);
    assert_eq!(capped.body["amount_credits"], "10.000000");
    assert_eq!(capped.body["requested_credits"], "25.000000");
    hold(
        &app,
        &org,
        json!({"hold_id": "cap2", "amount_credits": "1", "overage": "cap_to_available"}),
    )
    .await
    .assert_problem(402, "insufficient_credits");
    let allowed = hold(
        &app,
        &org,
        json!({"hold_id": "allow", "amount_credits": "5", "overage": "allow"}),
    )
    .await;
    assert_eq!(allowed.status, 201, "{}", allowed.text);
    assert_eq!(allowed.body["available_credits"], "-5.000000");
    hold(
        &app,
        &org,
        json!({"hold_id": "allow2", "amount_credits": "0.000001", "overage": "allow"}),
    )
    .await
    .assert_problem(402, "insufficient_credits");
    assert_eq!(position(&app, &org).await, (d("10"), d("-5"), d("15")));
    app.assert_invariants().await;
}

/// A hold past `expires_at` is not counted by the balance or a check from that instant, before
/// any sweep; the sweep books its release once, at the instant; a settle after it is recorded
/// as usage and flagged late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_not_counted_before_any_sweep_and_a_late_settle_is_recorded() {
    let start = Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap();
    let clock = store::Clock::manual(start);
    let app = TestApp::spawn_with(AppOptions {
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let org = funded(&app, "expiry", "30").await;
    let h = hold(
        &app,
        &org,
        json!({"hold_id": "e1", "amount_credits": "10", "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(h.status, 201, "{}", h.text);
    let expires_at: DateTime<Utc> = h.body["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at, start + Span::seconds(60));
    let check = |amount: &'static str| {
        let app = &app;
        let org = &org;
        async move {
            post(
                app,
                &org.key,
                "/v1/check",
                json!({"amount_credits": amount}),
            )
            .await
        }
    };

    clock.set(expires_at - Span::microseconds(1));
    assert_eq!(position(&app, &org).await, (d("30"), d("20"), d("10")));
    assert_eq!(check("25").await.body["allowed"], false);
    clock.set(expires_at);
    assert_eq!(position(&app, &org).await, (d("30"), d("30"), d("0")));
    let c = check("25").await;
    assert_eq!(c.body["allowed"], true, "{}", c.text);
    assert_eq!(c.body["held_credits"], "0.000000");
    let got = app.get("/v1/holds/e1", &org.key).await;
    assert_eq!(got.body["state"], "expired", "{}", got.text);
    assert_eq!(got.body["released_credits"], "10.000000");

    clock.set(expires_at + Span::seconds(5));
    // The metrics see it expired, booked or not (other tests' holds may share the window, so
    // at least this one).
    let counts = app.store.holds().counts().await.unwrap();
    assert!(counts.expired_unreleased >= 1, "{counts:?}");
    assert!(counts.expired_last_hour >= 1, "{counts:?}");
    assert_eq!(app.store.holds().expire_due(100).await.unwrap(), 1);
    assert_eq!(app.store.holds().expire_due(100).await.unwrap(), 0);
    let booked = app.store.holds().counts().await.unwrap();
    assert!(booked.expired_last_hour >= 1, "{booked:?}");
    let releases: Vec<(DateTime<Utc>, Decimal)> = sqlx::query_as(
        "SELECT created_at, amount FROM transfers WHERE org_id = $1 AND kind = 'release'",
    )
    .bind(org.id)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(releases, vec![(expires_at, d("10"))]);

    // The call ran anyway and reports late: its usage is recorded, never dropped.
    let late = settle(
        &app,
        &org,
        "e1",
        json!({"settle_id": "late", "events": [event("late-e", 7)]}),
    )
    .await;
    assert_eq!(late.status, 200, "{}", late.text);
    assert_eq!(late.body["hold"]["state"], "expired");
    assert_eq!(late.body["hold"]["late"], true);
    assert_eq!(late.body["hold"]["usage_credits"], "7.000000");
    assert_eq!(late.body["hold"]["settled_credits"], "0.000000");
    assert_eq!(late.body["results"][0]["status"], "accepted");
    assert_eq!(position(&app, &org).await, (d("23"), d("23"), d("0")));
    app.assert_invariants().await;
}

/// A hard budget of 50 per user per day refuses holds beyond it with 402 naming it, counts
/// settled usage and active holds, and resets exactly at the day's boundary in its time zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_user_budget_refuses_beyond_its_limit_and_resets_at_local_midnight() {
    // 2026-12-04 20:00 in New York is 2026-12-05 01:00 UTC; its midnight is 05:00 UTC.
    let start = Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0).unwrap();
    let midnight = Utc.with_ymd_and_hms(2026, 12, 5, 5, 0, 0).unwrap();
    let clock = store::Clock::manual(start);
    let app = TestApp::spawn_with(AppOptions {
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let org = funded(&app, "budget-day", "500").await;
    let b = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/budgets/ann-daily", org.id),
            Some(&org.key),
            Some(
                &json!({"scope": {"user": "ann"}, "limit_credits": "50", "period": "day",
                         "timezone": "America/New_York", "enforcement": "hard"}),
            ),
            &[],
        )
        .await;
    assert_eq!(b.status, 201, "{}", b.text);
    assert_eq!(
        b.body["resets_at"],
        midnight.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );

    // Holds that live through the test (a day), so what the budget holds is theirs.
    let ann = |id: &str, amount: &str| json!({"hold_id": id, "amount_credits": amount, "user": "ann", "ttl_ms": 86_400_000});
    assert_eq!(hold(&app, &org, ann("a1", "20")).await.status, 201);
    assert_eq!(hold(&app, &org, ann("a2", "20")).await.status, 201);
    let refused = hold(&app, &org, ann("a3", "20")).await;
    refused.assert_problem(402, "budget_exhausted");
    let named = &refused.body["budget"];
    assert_eq!(named["id"], "ann-daily");
    assert_eq!(named["scope"], json!({"user": "ann"}));
    assert_eq!(named["limit_credits"], "50.000000");
    assert_eq!(named["held_credits"], "40.000000");
    assert_eq!(named["remaining_credits"], "10.000000");
    // Another user is not in its scope.
    assert_eq!(
        hold(
            &app,
            &org,
            json!({"hold_id": "b1", "amount_credits": "20", "user": "bob"})
        )
        .await
        .status,
        201
    );
    // Settled usage counts as spent; plain usage too, and is never refused by a budget.
    let s = settle(
        &app,
        &org,
        "a1",
        json!({"settle_id": "s", "events": [event("a1-e", 15)]}),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    let plain = post(
        &app,
        &org.key,
        "/v1/usage",
        json!({"events": [{"id": "plain-1", "type": "ai_tokens", "user": "ann",
                           "occurred_at": Utc::now().to_rfc3339(), "model": "gpt-4o",
                           "input_tokens": 40 * 4000}]}),
    )
    .await;
    assert_eq!(plain.body["accepted"], 1, "{}", plain.text);
    let list = app
        .get(&format!("/v1/orgs/{}/budgets", org.id), &org.key)
        .await;
    let view = &list.body["data"][0];
    assert_eq!(view["spent_credits"], "55.000000", "{}", list.text);
    assert_eq!(view["held_credits"], "20.000000");
    assert_eq!(view["remaining_credits"], "0.000000");
    let c = post(
        &app,
        &org.key,
        "/v1/check",
        json!({"amount_credits": "1", "user": "ann"}),
    )
    .await;
    assert_eq!(c.body["allowed"], false, "{}", c.text);
    assert_eq!(c.body["reason"], "budget_exhausted");
    assert_eq!(c.body["blocking_budget"]["id"], "ann-daily");
    assert_eq!(
        hold(&app, &org, ann("a4", "1")).await.status,
        402,
        "a microsecond before midnight it is still today"
    );
    clock.set(midnight - Span::microseconds(1));
    hold(&app, &org, ann("a5", "1"))
        .await
        .assert_problem(402, "budget_exhausted");

    // At local midnight the day's spend is new; the hold still active counts.
    clock.set(midnight);
    let list = app
        .get(&format!("/v1/orgs/{}/budgets", org.id), &org.key)
        .await;
    let view = &list.body["data"][0];
    assert_eq!(view["spent_credits"], "0.000000", "{}", list.text);
    assert_eq!(view["held_credits"], "20.000000");
    assert_eq!(
        view["period_start"],
        midnight.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(hold(&app, &org, ann("a6", "30")).await.status, 201);
    hold(&app, &org, ann("a7", "0.000001"))
        .await
        .assert_problem(402, "budget_exhausted");
    // Changing the budget counts its period again from the usage booked in it.
    let raised = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/budgets/ann-daily", org.id),
            Some(&org.key),
            Some(
                &json!({"scope": {"user": "ann"}, "limit_credits": "60", "period": "day",
                         "timezone": "America/New_York", "enforcement": "hard"}),
            ),
            &[],
        )
        .await;
    assert_eq!(raised.status, 200, "{}", raised.text);
    assert_eq!(raised.body["spent_credits"], "0.000000");
    assert_eq!(raised.body["remaining_credits"], "10.000000");
    app.assert_invariants().await;
}

/// A soft budget never refuses, and alerts once per percent per period (an outbox row the
/// worker turns into the e-mail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_budget_alerts_once_per_percent_and_refuses_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "budget-soft", "500").await;
    let b = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/budgets/team-a", org.id),
            Some(OPERATOR_KEY),
            Some(&json!({"scope": {"label": {"key": "team", "value": "a"}},
                         "limit_credits": "10", "period": "month", "enforcement": "soft",
                         "alert_at_percent": [50, 90], "recipients": ["lead@acme.test"]})),
            &[],
        )
        .await;
    assert_eq!(b.status, 201, "{}", b.text);
    let h = hold(
        &app,
        &org,
        json!({"hold_id": "t1", "amount_credits": "20", "labels": {"team": "a"}}),
    )
    .await;
    assert_eq!(h.status, 201, "a soft budget refuses nothing: {}", h.text);
    for (i, credits) in [3u64, 3, 5].into_iter().enumerate() {
        let s = post(
            &app,
            &org.key,
            "/v1/usage",
            json!({"events": [{"id": format!("t-{i}"), "type": "ai_tokens",
                               "labels": {"team": "a"}, "occurred_at": Utc::now().to_rfc3339(),
                               "model": "gpt-4o", "input_tokens": credits * 4000}]}),
        )
        .await;
        assert_eq!(s.body["accepted"], 1, "{}", s.text);
    }
    let alerts: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE org_id = $1 AND topic = 'budget.alert' ORDER BY id",
    )
    .bind(org.id)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let percents: Vec<i64> = alerts
        .iter()
        .map(|a| a["percent"].as_i64().unwrap())
        .collect();
    assert_eq!(percents, vec![50, 90], "{alerts:?}");
    let list = app
        .get(&format!("/v1/orgs/{}/budgets", org.id), &org.key)
        .await;
    assert_eq!(list.body["data"][0]["spent_credits"], "11.000000");
    assert_eq!(list.body["data"][0]["held_credits"], "20.000000");
}

/// The check writes nothing, and a key with only `usage:write` and `balance:read` can hold,
/// settle and check; one with `balance:read` alone can check but not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_and_balance_key_can_hold_settle_and_check_and_a_check_writes_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "hold-scopes", "20").await;
    let made = post(
        &app,
        &org.key,
        &format!("/v1/orgs/{}/api-keys", org.id),
        json!({"label": "gateway", "scopes": ["usage:write", "balance:read"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let gateway = TestOrg {
        key: made.body["secret"].as_str().unwrap().to_string(),
        ..org.clone()
    };
    let reader = post(
        &app,
        &org.key,
        &format!("/v1/orgs/{}/api-keys", org.id),
        json!({"label": "reader", "scopes": ["balance:read"]}),
    )
    .await;
    let reader = TestOrg {
        key: reader.body["secret"].as_str().unwrap().to_string(),
        ..org.clone()
    };
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    for amount in ["5", "20", "21"] {
        let c = post(
            &app,
            &reader.key,
            "/v1/check",
            json!({"amount_credits": amount}),
        )
        .await;
        assert_eq!(c.status, 200, "{}", c.text);
        assert_eq!(c.body["allowed"], amount != "21", "{}", c.text);
        assert!(c.body["lag_ms"].as_i64().unwrap() >= 0);
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(before, after, "a check writes nothing");
    hold(
        &app,
        &reader,
        json!({"hold_id": "r", "amount_credits": "1"}),
    )
    .await
    .assert_problem(403, "missing_scope");
    let h = hold(
        &app,
        &gateway,
        json!({"hold_id": "g", "amount_credits": "5"}),
    )
    .await;
    assert_eq!(h.status, 201, "{}", h.text);
    let e = post(
        &app,
        &gateway.key,
        "/v1/holds/g/extend",
        json!({"by_ms": 60000}),
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text);
    assert!(e.body["expires_at"].as_str() > h.body["expires_at"].as_str());
    let s = settle(
        &app,
        &gateway,
        "g",
        json!({"settle_id": "s", "amount_credits": "2.5"}),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["hold"]["settled_credits"], "2.500000");
    assert_eq!(s.body["hold"]["released_credits"], "2.500000");
    assert_eq!(position(&app, &org).await, (d("17.5"), d("17.5"), d("0")));
    app.assert_invariants().await;
}

/// Bad input is answered with a problem naming it, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_holds_are_refused_with_a_problem_and_write_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let org = funded(&app, "hold-bad-input", "20").await;
    let cases = [
        (json!({"amount_credits": "1"}), 422, "missing_field"),
        (
            json!({"hold_id": "", "amount_credits": "1"}),
            422,
            "invalid_hold_id",
        ),
        (
            json!({"hold_id": "a\u{7}b", "amount_credits": "1"}),
            422,
            "invalid_characters",
        ),
        (json!({"hold_id": "x"}), 422, "amount_or_estimate"),
        (
            json!({"hold_id": "x", "amount_credits": "1",
                   "estimate": {"model": "gpt-4o", "input_tokens": 1, "max_output_tokens": 1}}),
            422,
            "amount_or_estimate",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "-1"}),
            422,
            "amount_not_positive",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "0"}),
            422,
            "amount_not_positive",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1.0000001"}),
            422,
            "too_many_decimals",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1e40"}),
            422,
            "invalid_amount",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "99999999999999999999999999999"}),
            422,
            "amount_out_of_range",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1", "ttl_ms": 999}),
            422,
            "invalid_ttl",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1", "ttl_ms": 86_400_001}),
            422,
            "invalid_ttl",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1", "overage": "maybe"}),
            422,
            "invalid_overage",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1", "user": "a\u{0}"}),
            422,
            "invalid_characters",
        ),
        (
            json!({"hold_id": "x", "estimate": {"model": "no-such-model", "input_tokens": 1,
                   "max_output_tokens": 1}}),
            422,
            "unknown_model",
        ),
        (
            json!({"hold_id": "x", "amount_credits": "1", "colour": "red"}),
            422,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let a = hold(&app, &org, body.clone()).await;
        assert_eq!(
            (a.status.as_u16(), a.body["code"].as_str()),
            (status, Some(code)),
            "{body}: {}",
            a.text
        );
    }
    let malformed = app
        .call_raw(
            Method::POST,
            &format!("/v1/orgs/{}/holds", org.id),
            Some(&org.key),
            b"{\"hold_id\": ".to_vec(),
        )
        .await;
    malformed.assert_problem(400, "malformed_json");
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM holds")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(holds, 0);
    assert_eq!(position(&app, &org).await, (d("20"), d("20"), d("0")));
    // A settle with a bad event records nothing, and the hold stays active.
    assert_eq!(
        hold(&app, &org, json!({"hold_id": "ok", "amount_credits": "5"}))
            .await
            .status,
        201
    );
    let bad = settle(
        &app,
        &org,
        "ok",
        json!({"settle_id": "s", "events": [event("fine", 1), {"id": "bad", "type": "ai_tokens"}]}),
    )
    .await;
    bad.assert_problem(422, "settle_event_rejected");
    assert_eq!(bad.body["index"], 1);
    let got = app.get("/v1/holds/ok", &org.key).await;
    assert_eq!(got.body["state"], "active");
    assert_eq!(position(&app, &org).await, (d("20"), d("15"), d("5")));
    app.assert_invariants().await;
}

/// A check is answered from what the usage writer committed (its `as_of` is that booking's
/// instant, not the read's), stops at the org's next expiry, and any other booking on the org
/// (an operator's adjustment, a void) is seen by the very next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_answers_from_the_writers_state_until_an_expiry_or_another_booking() {
    let start = Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap();
    let clock = store::Clock::manual(start);
    let app = TestApp::spawn_with(AppOptions {
        clock: Some(clock.clone()),
        // Long enough that the test sees the writer's entry however slow the machine is.
        position_lease: Some(std::time::Duration::from_secs(600)),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let org = funded(&app, "check-state", "30").await;
    let check = || post(&app, &org.key, "/v1/check", json!({"amount_credits": "1"}));
    let h = hold(
        &app,
        &org,
        json!({"hold_id": "c1", "amount_credits": "10", "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(h.status, 201, "{}", h.text);

    clock.set(start + Span::seconds(30));
    let c = check().await;
    assert_eq!(c.body["available_credits"], "20.000000", "{}", c.text);
    assert_eq!(c.body["held_credits"], "10.000000");
    let as_of: DateTime<Utc> = c.body["as_of"].as_str().unwrap().parse().unwrap();
    assert_eq!(as_of, start, "the writer's commit, not a read");
    assert_eq!(c.body["lag_ms"], 30_000);

    // Another path's booking drops what the writer knew: the next check reads it.
    let a = app.adjust(org.id, "-5", "correction", "adj-1").await;
    assert_eq!(a.status, 201, "{}", a.text);
    let c = check().await;
    assert_eq!(c.body["available_credits"], "15.000000", "{}", c.text);
    assert_eq!(
        c.body["as_of"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        start + Span::seconds(30)
    );

    // The writer's entry ends at the hold's expiry, exactly.
    let h2 = hold(
        &app,
        &org,
        json!({"hold_id": "c2", "amount_credits": "1", "ttl_ms": 120000}),
    )
    .await;
    assert_eq!(h2.status, 201, "{}", h2.text);
    clock.set(start + Span::seconds(60) - Span::microseconds(1));
    let c = check().await;
    assert_eq!(c.body["held_credits"], "11.000000", "{}", c.text);
    clock.set(start + Span::seconds(60));
    let c = check().await;
    assert_eq!(c.body["held_credits"], "1.000000", "{}", c.text);
    assert_eq!(c.body["available_credits"], "24.000000");
    app.assert_invariants().await;
}
