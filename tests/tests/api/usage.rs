use chrono::{SecondsFormat, Utc};
use futures::future::join_all;
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tests::{Answer, OPERATOR_KEY, TestApp, TestOrg};

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ai(id: &str, input: u64, output: u64, cached: u64) -> Value {
    json!({
        "id": id, "type": "ai_tokens", "occurred_at": now(), "user": "u-1",
        "model": "gpt-4o", "operation": "chat", "labels": {"team": "search"},
        "input_tokens": input, "output_tokens": output, "cached_input_tokens": cached,
    })
}

fn infra(id: &str, resource: &str, quantity: &str, unit: &str) -> Value {
    json!({"id": id, "type": "infra", "occurred_at": now(), "resource": resource,
           "quantity": quantity, "unit": unit})
}

async fn send(app: &TestApp, org: &TestOrg, events: Value) -> Answer {
    app.call(
        Method::POST,
        "/v1/usage",
        Some(&org.key),
        Some(&json!({ "events": events })),
        &[],
    )
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

/// An accepted event is rated recorded and debited.
#[tokio::test]
async fn an_accepted_event_is_rated_recorded_and_debited() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("usage").await;
    app.adjust(org.id, "10", "seed", "seed").await;

    let a = send(
        &app,
        &org,
        json!([
            ai("e1", 1000, 500, 200),
            infra("e2", "data_operations", "2500", "operations")
        ]),
    )
    .await;

    assert_eq!(a.status, 200, "{}", a.text);
    // gpt-4o: (1000 × 250 + 500 × 1000 + 200 × 125) / 10^6 = 0.775
    assert_eq!(a.body["results"][0]["status"], "accepted");
    assert_eq!(a.body["results"][0]["cost_credits"], "0.775000");
    assert_eq!(a.body["results"][0]["price_version"], 1);
    // 2,500 operations at 0.04 per 1,000 = 0.1
    assert_eq!(a.body["results"][1]["cost_credits"], "0.100000");
    assert_eq!(a.body["balance_credits"], "9.125000");
    assert_eq!(a.body["accepted"], 2);
    let row: (String, String, i64, Value) = sqlx::query_as(
        "SELECT model, operation, input_tokens, labels FROM usage_events WHERE event_id = 'e1'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "gpt-4o".into(),
            "chat".into(),
            1000,
            json!({"team": "search"})
        )
    );
    let history = app
        .get(
            &format!("/v1/orgs/{}/transactions?kind=usage", org.id),
            &org.key,
        )
        .await;
    assert_eq!(history.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(history.body["data"][1]["refs"]["event_id"], "e1");
    assert_eq!(history.body["data"][1]["refs"]["price_version"], 1);
    app.assert_invariants().await;
}

/// Usage is recorded past zero and the reply says so.
#[tokio::test]
async fn usage_is_recorded_past_zero_and_the_reply_says_so() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("overdraft").await;

    let a = send(&app, &org, json!([ai("e1", 1_000_000, 0, 0)])).await;

    assert_eq!(a.body["results"][0]["status"], "accepted");
    assert_eq!(a.body["balance_credits"], "-250.000000");
    assert_eq!(a.body["negative"], true);
    app.assert_invariants().await;
}

/// Same event id ten times in a row debits once.
#[tokio::test]
async fn same_event_id_ten_times_in_a_row_debits_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("dup").await;
    let event = ai("same", 4000, 0, 0);

    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(send(&app, &org, json!([event.clone()])).await);
    }

    assert_eq!(answers[0].body["results"][0]["status"], "accepted");
    for a in &answers[1..] {
        assert_eq!(a.body["results"][0]["status"], "duplicate");
        assert_eq!(
            a.body["results"][0]["transfer_id"],
            answers[0].body["results"][0]["transfer_id"]
        );
        assert_eq!(a.body["results"][0]["cost_credits"], "1.000000");
    }
    assert_eq!(app.balance(&org).await, "-1.000000");
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 1);
    app.assert_invariants().await;
}

/// Same event id ten times at once debits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_event_id_ten_times_at_once_debits_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("dup-concurrent").await;
    let event = ai("same", 4000, 0, 0);

    let answers = join_all((0..10).map(|_| send(&app, &org, json!([event.clone()])))).await;

    let statuses: Vec<&str> = answers
        .iter()
        .map(|a| a.body["results"][0]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "accepted").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == "duplicate").count(), 9);
    assert_eq!(app.balance(&org).await, "-1.000000");
    app.assert_invariants().await;
}

/// Same id in one batch counts once and a changed payload is refused.
#[tokio::test]
async fn same_id_in_one_batch_counts_once_and_a_changed_payload_is_refused() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("dup-batch").await;

    // One value sent twice: built twice, its `occurred_at` (read from the clock, in ms) could
    // differ across a millisecond and make it another payload (a flake the hunt found).
    let event = ai("x", 4000, 0, 0);
    let mut changed = event.clone();
    changed["input_tokens"] = json!(8000);
    let a = send(&app, &org, json!([event.clone(), event.clone(), changed])).await;
    let later = send(&app, &org, json!([ai("x", 4000, 1, 0)])).await;

    let r = &a.body["results"];
    assert_eq!(r[0]["status"], "accepted");
    assert_eq!(r[1]["status"], "duplicate");
    assert_eq!(r[1]["transfer_id"], r[0]["transfer_id"]);
    assert_eq!(r[2]["status"], "rejected");
    assert_eq!(r[2]["code"], "id_conflict");
    assert_eq!(later.body["results"][0]["code"], "id_conflict");
    assert_eq!(app.balance(&org).await, "-1.000000");
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 1);
}

/// Two orgs may use the same event id.
#[tokio::test]
async fn two_orgs_may_use_the_same_event_id() {
    let app = TestApp::spawn().await.unwrap();
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;

    let ra = send(&app, &a, json!([ai("shared", 4000, 0, 0)])).await;
    let rb = send(&app, &b, json!([ai("shared", 8000, 0, 0)])).await;

    assert_eq!(ra.body["results"][0]["status"], "accepted");
    assert_eq!(rb.body["results"][0]["status"], "accepted");
    assert_eq!(app.balance(&a).await, "-1.000000");
    assert_eq!(app.balance(&b).await, "-2.000000");
}

/// Ten thousand events from 64 clients on one org are all counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_from_64_clients_on_one_org_are_all_counted_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("hot").await;
    // 64 clients × 8 batches × 20 events = 10,240 ≥ 10,000; every cost has six decimals.
    let answers = join_all((0..64).map(|client| {
        let (app, org) = (&app, &org);
        async move {
            let mut answers = Vec::new();
            for batch in 0..8 {
                let events: Vec<Value> = (0..20)
                    .map(|i| {
                        ai(
                            &format!("c{client}-b{batch}-e{i}"),
                            1 + client * 7 + i,
                            3 + batch,
                            i,
                        )
                    })
                    .collect();
                answers.push(send(app, org, Value::Array(events)).await);
            }
            answers
        }
    }))
    .await;

    let mut sum = Decimal::ZERO;
    let mut accepted = 0;
    for a in answers.iter().flatten() {
        assert_eq!(a.status, 200, "{}", a.text);
        for r in a.body["results"].as_array().unwrap() {
            assert_eq!(r["status"], "accepted", "{r}");
            sum += dec(&r["cost_credits"]);
            accepted += 1;
        }
    }
    assert_eq!(accepted, 64 * 8 * 20);
    let balance: Decimal = app.balance(&org).await.parse().unwrap();
    assert_eq!(
        balance, -sum,
        "the balance is exactly minus the sum of the rated costs"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM usage_events").await,
        10_240
    );
    assert_eq!(count(&app, "SELECT count(*) FROM transfers").await, 10_240);
    app.assert_invariants().await;
}

/// Summed event costs equal the org debits to the last micro credit.
#[tokio::test]
async fn summed_event_costs_equal_the_org_debits_to_the_last_micro_credit() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("exact").await;
    // Costs that each round: 1 input token of gemini-2.0-flash (10/M) = 0.00001, 7 cached
    // tokens of gpt-4o-mini (7.5/M) = 0.0000525 → 0.000053, odd vCPU-seconds …
    let mut events = Vec::new();
    for i in 0..300u64 {
        events.push(
            json!({"id": format!("g{i}"), "type": "ai_tokens", "occurred_at": now(),
            "model": if i % 2 == 0 { "gemini-2.0-flash" } else { "gpt-4o-mini" },
            "input_tokens": i, "output_tokens": i % 13, "cached_input_tokens": 7 + i % 5}),
        );
        events.push(infra(
            &format!("c{i}"),
            "compute",
            &format!("{}.{:03}", i, i % 997),
            "vcpu_seconds",
        ));
    }
    let mut sum = Decimal::ZERO;
    for chunk in events.chunks(100) {
        let a = send(&app, &org, Value::Array(chunk.to_vec())).await;
        for r in a.body["results"].as_array().unwrap() {
            assert_eq!(r["status"], "accepted", "{r}");
            sum += dec(&r["cost_credits"]);
        }
    }

    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(dec(&b.body["totals"]["used_credits"]), sum);
    assert_eq!(dec(&b.body["balance_credits"]), -sum);
    let debits: Decimal =
        sqlx::query_scalar("SELECT debits_posted FROM accounts WHERE org_id = $1")
            .bind(org.id)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(debits, sum);
    app.assert_invariants().await;
}

/// Publishes `book` (as `GET /v1/prices` shows one) as a new version, as an operator; without
/// `effective_from` it starts as soon as allowed.
async fn publish(
    app: &TestApp,
    book: &Value,
    effective_from: Option<chrono::DateTime<Utc>>,
    note: &str,
) -> tests::Answer {
    let mut body = json!({
        "note": note,
        "ai_models": book["ai_models"],
        "infra": book["infra"].as_array().unwrap().iter()
            .map(|i| json!({"resource": i["resource"], "price_credits": i["price_credits"]}))
            .collect::<Vec<_>>(),
    });
    if let Some(at) = effective_from {
        body["effective_from"] = json!(at);
    }
    app.call(
        Method::POST,
        "/v1/prices",
        Some(OPERATOR_KEY),
        Some(&body),
        &[],
    )
    .await
}

/// A price version applies from its effective time and never reprices.
#[tokio::test]
async fn a_price_version_applies_from_its_effective_time_and_never_reprices() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("prices").await;
    let before = send(&app, &org, json!([ai("before", 1_000_000, 0, 0)])).await;
    let effective = Utc::now() + chrono::Duration::seconds(2);
    let mut book = app.get("/v1/prices", &org.key).await.body;
    for m in book["ai_models"].as_array_mut().unwrap() {
        if m["model"] == "gpt-4o" {
            m["input_per_mtok_credits"] = json!("300");
        }
    }
    let published = publish(&app, &book, Some(effective), "gpt-4o input up").await;
    assert_eq!(published.status, 201, "{}", published.text);
    let version = published.body["version"].as_i64().unwrap();

    // An event after the new version's start uses it; one before it still uses version 1; the
    // event recorded before publication is unchanged. Events may be stamped only less than the
    // publish lead ahead, so the one after the start is sent once that time has passed.
    let at = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let after_at = effective + chrono::Duration::milliseconds(500);
    tests::eventually(
        "the new version's start to pass",
        std::time::Duration::from_secs(30),
        move || async move { (Utc::now() > after_at).then_some(()) },
    )
    .await;
    let mut after = ai("after", 1_000_000, 0, 0);
    after["occurred_at"] = json!(at(after_at));
    let mut just_before = ai("just-before", 1_000_000, 0, 0);
    just_before["occurred_at"] = json!(at(effective - chrono::Duration::milliseconds(1)));
    let a = send(&app, &org, json!([after, just_before])).await;
    let again = send(&app, &org, json!([ai("before", 1_000_000, 0, 0)])).await;

    assert_eq!(before.body["results"][0]["cost_credits"], "250.000000");
    assert_eq!(a.body["results"][0]["cost_credits"], "300.000000");
    assert_eq!(a.body["results"][0]["price_version"], version);
    assert_eq!(a.body["results"][1]["cost_credits"], "250.000000");
    assert_eq!(a.body["results"][1]["price_version"], 1);
    // Re-sent with a new occurred_at it would be a different payload; the same payload is a
    // duplicate of the original, at the original price.
    assert!(matches!(
        again.body["results"][0]["status"].as_str(),
        Some("duplicate" | "rejected")
    ));
    let stored: Decimal =
        sqlx::query_scalar("SELECT cost FROM usage_events WHERE event_id = 'before'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, Decimal::from(250));
    let at_param = at(effective + chrono::Duration::seconds(1)).replace('+', "%2B");
    let shown = app
        .get(&format!("/v1/prices?at={at_param}"), &org.key)
        .await;
    assert_eq!(shown.body["version"], version);
}

/// An event cannot be stamped later than a price version could be published.
#[tokio::test]
async fn an_event_cannot_be_stamped_later_than_a_price_version_could_be_published() {
    // The test API makes versions start at least 1 s ahead and reloads prices every 200 ms, so
    // usage may be stamped at most 800 ms after the cache's last check (600 to 800 ms ahead of
    // now): never at or after a version not yet published.
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("future").await;
    let at = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let sent_at = Utc::now();
    let near_at = sent_at + chrono::Duration::milliseconds(300);
    let mut near = ai("near", 1_000_000, 0, 0);
    near["occurred_at"] = json!(at(near_at));
    // Beyond the 1 s lead, with room for a slow request on a loaded machine.
    let mut beyond_lead = ai("beyond-lead", 1_000_000, 0, 0);
    beyond_lead["occurred_at"] = json!(at(sent_at + chrono::Duration::seconds(3)));
    // Once allowed (300 s of clock skew), and priced wrongly by a version published 10 s ahead.
    let mut far = ai("far", 1_000_000, 0, 0);
    far["occurred_at"] = json!(at(sent_at + chrono::Duration::seconds(200)));
    let book = app.get("/v1/prices", &org.key).await.body;

    let a = send(&app, &org, json!([near, beyond_lead, far])).await;
    // The earliest version that can be published now.
    let published = publish(&app, &book, None, "as soon as allowed").await;

    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["results"][0]["status"], "accepted", "{}", a.text);
    assert_eq!(a.body["results"][0]["price_version"], 1);
    for i in [1usize, 2] {
        let r = &a.body["results"][i];
        assert_eq!(r["status"], "rejected", "{r}");
        assert_eq!(r["code"], "occurred_in_future", "{r}");
        let message = r["message"].as_str().unwrap();
        let bound_ms: i64 = message
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no bound in {message}"));
        assert!((0..=800).contains(&bound_ms), "{message}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 1);
    assert_eq!(published.status, 201, "{}", published.text);
    let effective: chrono::DateTime<Utc> = published.body["effective_from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        effective > near_at,
        "the accepted event ({near_at}) falls before any version published after it ({effective})"
    );
}

/// Publishing prices is for operators, and a refused version is answered as a problem and
/// writes nothing (each rule is a unit test of `api::usecases::new_version`).
#[tokio::test]
async fn publishing_prices_is_validated() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("p").await;
    let infra: Vec<Value> = [
        "compute",
        "memory",
        "storage",
        "bandwidth",
        "data_operations",
    ]
    .iter()
    .map(|r| json!({"resource": r, "price_credits": "1"}))
    .collect();
    let model = json!([{"model": "m", "input_per_mtok_credits": "1", "output_per_mtok_credits": "1", "cached_input_per_mtok_credits": "1"}]);
    let publish = |body: Value, key: &str| {
        let key = key.to_string();
        let app = &app;
        async move {
            app.call(Method::POST, "/v1/prices", Some(&key), Some(&body), &[])
                .await
        }
    };

    publish(json!({"ai_models": model, "infra": infra}), &org.key)
        .await
        .assert_problem(403, "operator_only");
    publish(
        json!({"effective_from": now(), "ai_models": model, "infra": infra}),
        OPERATOR_KEY,
    )
    .await
    .assert_problem(422, "effective_too_soon");
    let negative = json!([{"model": "m", "input_per_mtok_credits": "-1", "output_per_mtok_credits": "1", "cached_input_per_mtok_credits": "1"}]);
    publish(json!({"ai_models": negative, "infra": infra}), OPERATOR_KEY)
        .await
        .assert_problem(422, "negative_price");
    assert_eq!(count(&app, "SELECT count(*) FROM price_versions").await, 1);
}

/// Every rejection code refuses its event and writes nothing for it.
#[tokio::test]
async fn every_rejection_code_refuses_its_event_and_writes_nothing_for_it() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("rejections").await;
    let future = (Utc::now() + chrono::Duration::seconds(600)).to_rfc3339();
    let with = |mut e: Value, k: &str, v: Value| {
        e[k] = v;
        e
    };
    let without = |mut e: Value, k: &str| {
        e.as_object_mut().unwrap().remove(k);
        e
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(ai("", 1, 0, 0), "id", json!("")), "invalid_id"),
        (
            with(ai("", 1, 0, 0), "id", json!("x".repeat(256))),
            "invalid_id",
        ),
        (with(ai("", 1, 0, 0), "id", json!("tab\tid")), "invalid_id"),
        (with(ai("", 1, 0, 0), "id", json!(5)), "invalid_id"),
        (without(ai("", 1, 0, 0), "id"), "missing_field"),
        (with(ai("t", 1, 0, 0), "type", json!("gpu")), "unknown_type"),
        (
            with(ai("f", 1, 0, 0), "colour", json!("red")),
            "unknown_field",
        ),
        (
            with(ai("m", 1, 0, 0), "model", json!("gpt-9")),
            "unknown_model",
        ),
        (without(ai("m2", 1, 0, 0), "model"), "missing_field"),
        (
            with(ai("n", 1, 0, 0), "input_tokens", json!(-5)),
            "negative_quantity",
        ),
        (
            with(ai("n2", 1, 0, 0), "output_tokens", json!(1.5)),
            "invalid_quantity",
        ),
        (
            with(ai("n3", 1, 0, 0), "input_tokens", json!("12")),
            "invalid_quantity",
        ),
        (
            with(
                ai("n4", 1, 0, 0),
                "input_tokens",
                json!(10_000_000_000_000u64),
            ),
            "quantity_out_of_range",
        ),
        (
            with(ai("fut", 1, 0, 0), "occurred_at", json!(future)),
            "occurred_in_future",
        ),
        (
            with(ai("bad-time", 1, 0, 0), "occurred_at", json!("yesterday")),
            "invalid_time",
        ),
        (
            without(ai("no-time", 1, 0, 0), "occurred_at"),
            "missing_field",
        ),
        (
            with(
                ai("old", 1, 0, 0),
                "occurred_at",
                json!("2019-01-01T00:00:00Z"),
            ),
            "no_price",
        ),
        (
            with(ai("l", 1, 0, 0), "labels", json!({"k": 1})),
            "invalid_labels",
        ),
        (
            with(ai("l2", 1, 0, 0), "labels", json!("x")),
            "invalid_labels",
        ),
        (infra("r", "gpu", "1", "hours"), "unknown_resource"),
        (
            infra("q", "compute", "-1", "vcpu_seconds"),
            "negative_quantity",
        ),
        (
            infra("q2", "compute", "1.0000001", "vcpu_seconds"),
            "too_many_decimals",
        ),
        (
            infra("q3", "compute", "1e5", "vcpu_seconds"),
            "invalid_quantity",
        ),
        (
            infra("q4", "compute", "10000000000000", "vcpu_seconds"),
            "quantity_out_of_range",
        ),
        (infra("u", "compute", "1", "gb"), "unit_mismatch"),
        (
            without(infra("u2", "compute", "1", "gb"), "unit"),
            "missing_field",
        ),
        (json!("not an object"), "invalid_event"),
    ];
    let mut events: Vec<Value> = cases.iter().map(|(e, _)| e.clone()).collect();
    events.push(ai("good", 4000, 0, 0));

    let a = send(&app, &org, Value::Array(events)).await;

    assert_eq!(a.status, 200, "{}", a.text);
    for (i, (event, code)) in cases.iter().enumerate() {
        let r = &a.body["results"][i];
        assert_eq!(r["status"], "rejected", "{event}: {r}");
        assert_eq!(r["code"], *code, "{event}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(a.body["results"][cases.len()]["status"], "accepted");
    assert_eq!(a.body["rejected"], cases.len());
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM transfers").await, 1);
    assert_eq!(app.balance(&org).await, "-1.000000");
}

/// Bad batches are refused whole.
#[tokio::test]
async fn bad_batches_are_refused_whole() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("batches").await;

    send(&app, &org, json!([]))
        .await
        .assert_problem(422, "invalid_batch");
    let many: Vec<Value> = (0..1001).map(|i| ai(&format!("e{i}"), 1, 0, 0)).collect();
    send(&app, &org, Value::Array(many))
        .await
        .assert_problem(422, "invalid_batch");
    app.call(
        Method::POST,
        "/v1/usage",
        Some(&org.key),
        Some(&json!([ai("a", 1, 0, 0)])),
        &[],
    )
    .await
    .assert_problem(422, "invalid_batch");
    app.call_raw(
        Method::POST,
        "/v1/usage",
        Some(&org.key),
        b"{\"events\": [".to_vec(),
    )
    .await
    .assert_problem(400, "malformed_json");
    app.call(
        Method::POST,
        "/v1/usage",
        Some(OPERATOR_KEY),
        Some(&json!({"events": [ai("a", 1, 0, 0)]})),
        &[],
    )
    .await
    .assert_problem(403, "org_key_required");
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 0);
}

/// A CloudEvents batch maps onto the same events.
#[tokio::test]
async fn a_cloudevents_batch_maps_onto_the_same_events() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("ce").await;
    let batch = json!([
        {"specversion": "1.0", "id": "ce-1", "source": "/gateway", "type": "dev.creditflow.usage.ai_tokens",
         "time": now(), "subject": "user-7",
         "data": {"model": "gpt-4o", "operation": "embed", "input_tokens": 4000}},
        {"specversion": "1.0", "id": "ce-2", "source": "/k8s", "type": "dev.creditflow.usage.infra",
         "time": now(), "data": {"resource": "bandwidth", "quantity": "0.5", "unit": "gb"}},
        {"specversion": "0.3", "id": "ce-3", "source": "/old", "type": "x.infra", "time": now(), "data": {}},
    ]);

    let a = app
        .http
        .post(format!("{}/v1/usage", app.base_url))
        .bearer_auth(&org.key)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let body: Value = a.json().await.unwrap();

    assert_eq!(body["results"][0]["status"], "accepted", "{body}");
    assert_eq!(body["results"][0]["cost_credits"], "1.000000");
    assert_eq!(body["results"][1]["cost_credits"], "4.500000");
    assert_eq!(body["results"][2]["code"], "invalid_cloudevent");
    let user: String =
        sqlx::query_scalar("SELECT user_id FROM usage_events WHERE event_id = 'ce-1'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(user, "user-7");
}

/// A booking writes one outbox row per purpose at the lowest threshold crossed.
#[tokio::test]
async fn a_booking_writes_one_outbox_row_per_purpose_at_the_lowest_threshold_crossed() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("thresholds").await;
    app.adjust(org.id, "120", "seed", "seed").await;
    app.store
        .settings()
        .set_thresholds(
            org.id,
            billing::ThresholdPurpose::Alert,
            &["100".parse().unwrap(), "50".parse().unwrap()],
        )
        .await
        .unwrap();
    app.store
        .settings()
        .set_thresholds(
            org.id,
            billing::ThresholdPurpose::AutoTopup,
            &["30".parse().unwrap()],
        )
        .await
        .unwrap();

    // 120 → 45: crosses 100 and 50 in one event, one row for 50; 45 → 44: crosses nothing.
    send(&app, &org, json!([ai("big", 300_000, 0, 0)])).await;
    send(&app, &org, json!([ai("small", 4000, 0, 0)])).await;
    let first = app.store.outbox().pending(100).await.unwrap();
    // Back above 100, then down below 100 and 30 in one batch of two events.
    app.adjust(org.id, "60", "top up", "up").await;
    send(
        &app,
        &org,
        json!([ai("d1", 80_000, 0, 0), ai("d2", 300_000, 0, 0)]),
    )
    .await;
    let all = app.store.outbox().pending(100).await.unwrap();

    let thresholds = |rows: &[store::OutboxRow]| -> Vec<(String, String)> {
        rows.iter()
            .map(|r| {
                (
                    r.payload["purpose"].as_str().unwrap().to_string(),
                    r.payload["threshold"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(thresholds(&first), [("alert".into(), "50.000000".into())]);
    assert_eq!(first[0].payload["balance"], "45.000000");
    assert_eq!(first[0].topic, "balance.threshold_crossed");
    // 104 → 84 crosses 100; 84 → 9 crosses 50 and 30: one alert (for 50, the lowest) and
    // one topup crossing for the batch.
    assert_eq!(
        thresholds(&all[1..]),
        [
            ("alert".into(), "50.000000".into()),
            ("auto_topup".into(), "30.000000".into()),
        ]
    );
    assert_eq!(all[1].payload["balance"], "9.000000");
    let seqs: Vec<i64> = all
        .iter()
        .map(|r| r.payload["crossing_seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    app.assert_invariants().await;
}

/// Names of the wrong type too long or with control characters are invalid fields.
#[tokio::test]
async fn names_of_the_wrong_type_too_long_or_with_control_characters_are_invalid_fields() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("invalid-field").await;
    let with = |mut e: Value, k: &str, v: Value| {
        e[k] = v;
        e
    };
    let cases: Vec<Value> = vec![
        with(ai("user-number", 1, 0, 0), "user", json!(5)),
        with(ai("user-long", 1, 0, 0), "user", json!("u".repeat(256))),
        with(ai("user-newline", 1, 0, 0), "user", json!("line\nbreak")),
        with(ai("model-number", 1, 0, 0), "model", json!(42)),
        with(ai("model-bell", 1, 0, 0), "model", json!("gpt-4o\u{7}")),
        with(
            ai("operation-nul", 1, 0, 0),
            "operation",
            json!("chat\u{0}"),
        ),
        with(ai("operation-list", 1, 0, 0), "operation", json!(["chat"])),
        with(ai("type-number", 1, 0, 0), "type", json!(7)),
        with(
            infra("resource-object", "compute", "1", "vcpu_seconds"),
            "resource",
            json!({"name": "compute"}),
        ),
        with(
            infra("unit-bool", "compute", "1", "vcpu_seconds"),
            "unit",
            json!(true),
        ),
    ];
    let mut events = cases.clone();
    events.push(ai("good", 4000, 0, 0));

    let a = send(&app, &org, Value::Array(events)).await;

    assert_eq!(a.status, 200, "{}", a.text);
    for (i, event) in cases.iter().enumerate() {
        let r = &a.body["results"][i];
        assert_eq!(r["status"], "rejected", "{event}: {r}");
        assert_eq!(r["code"], "invalid_field", "{event}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(a.body["results"][cases.len()]["status"], "accepted");
    assert_eq!(a.body["accepted"], 1);
    assert_eq!(a.body["rejected"], cases.len());
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM transfers").await, 1);
    assert_eq!(app.balance(&org).await, "-1.000000");
    app.assert_invariants().await;
}

/// An event costing more than the credits range is refused as amount out of range.
#[tokio::test]
async fn an_event_costing_more_than_the_credits_range_is_refused_as_amount_out_of_range() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("amount-out-of-range").await;
    // Bandwidth costs 9 credits per GB. A quantity may be up to 10^12 units, a single cost only
    // up to Credits::MAX_AMOUNT = 10^12 credits, so these parse and then fail in rating.
    let cases = vec![
        // 9 × 10^12 credits.
        infra("largest-quantity", "bandwidth", "1000000000000", "gb"),
        // 1,000,000,000,000.000008 credits: one step past the range.
        infra("just-over", "bandwidth", "111111111111.111112", "gb"),
    ];
    let mut events = cases.clone();
    // 999,999,999,999.999999 credits: inside the range, but above the largest cost one event
    // may have (ingest.max_event_cost_credits, 100,000 by default).
    events.push(infra(
        "just-under",
        "bandwidth",
        "111111111111.111111",
        "gb",
    ));
    // 100,000.000008 and 99,999.999999 credits: either side of that bound.
    events.push(infra("over-max", "bandwidth", "11111.111112", "gb"));
    events.push(infra("at-max", "bandwidth", "11111.111111", "gb"));
    events.push(ai("good", 4000, 0, 0));

    let a = send(&app, &org, Value::Array(events)).await;

    assert_eq!(a.status, 200, "{}", a.text);
    for (i, event) in cases.iter().enumerate() {
        let r = &a.body["results"][i];
        assert_eq!(r["status"], "rejected", "{event}: {r}");
        assert_eq!(r["code"], "amount_out_of_range", "{event}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for i in [cases.len(), cases.len() + 1] {
        let r = &a.body["results"][i];
        assert_eq!(r["code"], "event_cost_too_high", "{r}");
    }
    let at_max = &a.body["results"][cases.len() + 2];
    assert_eq!(at_max["status"], "accepted", "{at_max}");
    assert_eq!(dec(&at_max["cost_credits"]), dec(&json!("99999.999999")));
    assert_eq!(a.body["results"][cases.len() + 3]["status"], "accepted");
    assert_eq!(a.body["accepted"], 2);
    assert_eq!(a.body["rejected"], cases.len() + 2);
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 2);
    assert_eq!(count(&app, "SELECT count(*) FROM transfers").await, 2);
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_events WHERE event_id IN ('largest-quantity', 'just-over')",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0);
    let balance: Decimal = app.balance(&org).await.parse().unwrap();
    assert_eq!(balance, dec(&json!("-100000.999999")));
    app.assert_invariants().await;
}

/// A CloudEvents batch of invalid CloudEvents writes nothing.
#[tokio::test]
async fn a_cloudevents_batch_of_invalid_cloudevents_writes_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("ce-invalid").await;
    let batch = json!([
        {"specversion": "0.3", "id": "old-version", "source": "/old",
         "type": "dev.creditflow.usage.ai_tokens", "time": now(),
         "data": {"model": "gpt-4o", "input_tokens": 4000}},
        {"id": "no-version", "source": "/k8s", "type": "dev.creditflow.usage.infra",
         "time": now(), "data": {"resource": "bandwidth", "quantity": "1", "unit": "gb"}},
    ]);

    let res = app
        .http
        .post(format!("{}/v1/usage", app.base_url))
        .bearer_auth(&org.key)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();

    assert_eq!(status, 200, "{body}");
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["status"], "rejected", "{r}");
        assert_eq!(r["code"], "invalid_cloudevent", "{r}");
    }
    assert_eq!(body["accepted"], 0, "{body}");
    assert_eq!(body["rejected"], 2, "{body}");
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM transfers").await, 0);
    assert_eq!(app.balance(&org).await, "0.000000");
}

/// Concurrent requests for one org share transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_one_org_share_transactions() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("coalesced").await;

    // 64 requests of 10 events each, all at once.
    let answers = join_all((0..64u64).map(|request| {
        let events: Vec<Value> = (0..10u64)
            .map(|i| ai(&format!("r{request}-e{i}"), 1 + request * 10 + i, 2, 0))
            .collect();
        send(&app, &org, Value::Array(events))
    }))
    .await;

    let mut sum = Decimal::ZERO;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["accepted"], 10, "{}", a.text);
        for r in a.body["results"].as_array().unwrap() {
            sum += dec(&r["cost_credits"]);
        }
    }
    let (transfers, commits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text::bigint) FROM transfers
         WHERE org_id = $1 AND kind = 'usage'",
    )
    .bind(org.id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(transfers, 640);
    // Rows written by one transaction share its xmin: fewer distinct values than requests
    // means several requests were committed together.
    assert!(
        (1..64).contains(&commits),
        "64 requests were committed in {commits} transactions"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 640);
    let balance: Decimal = app.balance(&org).await.parse().unwrap();
    assert_eq!(balance, -sum, "every event is counted once");
    app.assert_invariants().await;
}

/// Price versions cannot be updated deleted or truncated in Postgres.
#[tokio::test]
async fn price_versions_cannot_be_updated_deleted_or_truncated_in_postgres() {
    let app = TestApp::spawn().await.unwrap();
    let rows = "SELECT (SELECT count(*) FROM price_versions) * 1000000
                     + (SELECT count(*) FROM ai_model_prices) * 1000
                     + (SELECT count(*) FROM infra_prices)";
    let before = count(&app, rows).await;
    let statements = [
        "UPDATE price_versions SET note = 'edited' WHERE id = 1",
        "UPDATE price_versions SET effective_from = now() WHERE id = 1",
        "DELETE FROM price_versions WHERE id = 1",
        "UPDATE ai_model_prices SET input_per_mtok = 1 WHERE version_id = 1 AND model = 'gpt-4o'",
        "DELETE FROM ai_model_prices WHERE version_id = 1",
        "UPDATE infra_prices SET price_per_unit = 0 WHERE version_id = 1",
        "DELETE FROM infra_prices WHERE version_id = 1",
        "TRUNCATE ai_model_prices",
        "TRUNCATE infra_prices",
        "TRUNCATE price_versions CASCADE",
    ];

    for sql in statements {
        let err = sqlx::query(sql)
            .execute(app.store.pool())
            .await
            .expect_err(sql);
        let db = err
            .as_database_error()
            .unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().as_deref(), Some("23001"), "{sql}: {err}");
        assert!(
            db.message().contains("price versions are immutable"),
            "{sql}: {err}"
        );
    }

    assert_eq!(count(&app, rows).await, before);
    let input: Decimal = sqlx::query_scalar(
        "SELECT input_per_mtok FROM ai_model_prices WHERE version_id = 1 AND model = 'gpt-4o'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(input, Decimal::from(250));
}
