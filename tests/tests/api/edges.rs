//! The ingestion edge: hostile text, key scopes and sources, CloudEvents in every mode.

use base64::Engine;
use chrono::{SecondsFormat, Utc};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use store::{IngestConfig, Ingestor, RatedEvent, UsageJob};
use tests::{AppOptions, OPERATOR_KEY, TestApp, TestOrg};

const STARTER: &str = "01970000-0000-7000-8000-000000000001";

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// 4,000 gpt-4o input tokens: 1 credit.
fn ai(id: &str) -> Value {
    json!({"id": id, "type": "ai_tokens", "occurred_at": now(), "user": "u-1",
           "model": "gpt-4o", "operation": "chat", "labels": {"team": "search"},
           "input_tokens": 4000})
}

async fn send(app: &TestApp, key: &str, events: Value) -> tests::Answer {
    app.call(
        Method::POST,
        "/v1/usage",
        Some(key),
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

async fn new_key(app: &TestApp, org: &TestOrg, by: &str, body: Value) -> tests::Answer {
    app.call(
        Method::POST,
        &format!("/v1/orgs/{}/api-keys", org.id),
        Some(by),
        Some(&body),
        &[],
    )
    .await
}

/// Control characters in any event field refuse that event only naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_any_event_field_refuse_that_event_only_naming_the_field() {
    let app = TestApp::spawn().await.unwrap();
    let a = app.create_org("hostile").await;
    let b = app.create_org("bystander").await;
    let with = |id: &str, f: &dyn Fn(&mut Value)| {
        let mut e = ai(id);
        f(&mut e);
        e
    };
    let mut events = vec![ai("good-1")];
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "nul-label",
            with("nul-label", &|e| e["labels"]["k"] = json!("a\u{0}b")),
            "invalid_field",
            "labels.k",
        ),
        (
            "nul-key",
            with("nul-key", &|e| e["labels"] = json!({"k\u{0}": "v"})),
            "invalid_field",
            "labels.k",
        ),
        (
            "nul-user",
            with("nul-user", &|e| e["user"] = json!("an\u{0}a")),
            "invalid_field",
            "user",
        ),
        (
            "nul-op",
            with("nul-op", &|e| e["operation"] = json!("chat\u{0}")),
            "invalid_field",
            "operation",
        ),
        (
            "nul-model",
            with("nul-model", &|e| e["model"] = json!("gpt-4o\u{0}")),
            "invalid_field",
            "model",
        ),
        (
            "nl-user",
            with("nl-user", &|e| e["user"] = json!("ana\nbob")),
            "invalid_field",
            "user",
        ),
        (
            "esc-label",
            with("esc-label", &|e| e["labels"]["k"] = json!("\u{1b}[31m")),
            "invalid_field",
            "labels.k",
        ),
        (
            "nul-source",
            with("nul-source", &|e| e["source"] = json!("/gw\u{0}")),
            "invalid_field",
            "source",
        ),
    ];
    for (_, e, _, _) in &cases {
        events.push(e.clone());
    }
    events.push(with("nul\u{0}id", &|_| {}));
    events.push(ai("good-2"));

    // Both orgs at once, many requests, so they share writer batches.
    let hostile = send(&app, &a.key, Value::Array(events));
    let bystanders = join_all((0..8).map(|i| send(&app, &b.key, json!([ai(&format!("b-{i}"))]))));
    let (answer, others) = tokio::join!(hostile, bystanders);

    assert_eq!(answer.status, 200, "{}", answer.text);
    let results = answer.body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "accepted", "{}", answer.text);
    for (i, (id, _, code, field)) in cases.iter().enumerate() {
        let r = &results[i + 1];
        assert_eq!(r["id"], *id, "{r}");
        assert_eq!(r["status"], "rejected", "{r}");
        assert_eq!(r["code"], *code, "{r}");
        assert_eq!(r["field"], *field, "{r}");
    }
    let nul_id = &results[cases.len() + 1];
    assert_eq!(
        (&nul_id["code"], &nul_id["field"]),
        (&json!("invalid_id"), &json!("id"))
    );
    assert_eq!(results[cases.len() + 2]["status"], "accepted");
    assert_eq!(answer.body["accepted"], 2);
    for o in &others {
        assert_eq!(o.status, 200, "{}", o.text);
        assert_eq!(o.body["accepted"], 1, "{}", o.text);
    }
    assert_eq!(app.balance(&a).await, "-2.000000");
    assert_eq!(app.balance(&b).await, "-8.000000");
}

/// The writer's own guard: a request whose rows the database refuses (here a NUL that skipped
/// validation) fails alone; the requests coalesced with it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_fails_only_its_own_request() {
    let app = TestApp::spawn().await.unwrap();
    let orgs = [app.create_org("w-1").await, app.create_org("w-2").await];
    let ingestor = Ingestor::start(
        app.store.clone(),
        IngestConfig {
            writers: 1,
            ..IngestConfig::default()
        },
    );
    let event = |id: &str, label: &str| {
        let mut e = billing::usage::UsageEvent {
            source: "default".into(),
            id: id.into(),
            occurred_at: Utc::now(),
            user: None,
            api_key: None,
            labels: [("k".to_string(), label.to_string())].into(),
            usage: billing::usage::Usage::AiTokens(billing::usage::AiTokens {
                model: "gpt-4o".into(),
                operation: "chat".into(),
                input_tokens: 4000,
                output_tokens: 0,
                cached_input_tokens: 0,
            }),
        };
        e.user = Some("u".into());
        RatedEvent {
            payload_hash: store::request_hash(&[e.canonical_text().as_bytes()]),
            event: e,
            cost: "1".parse().unwrap(),
            price_version: 1,
        }
    };
    let jobs: Vec<UsageJob> = (0..20)
        .map(|i| UsageJob {
            org_id: orgs[i % 2].id,
            actor: "test".into(),
            events: vec![event(
                &format!("e-{i}"),
                if i == 7 { "a\u{0}b" } else { "ok" },
            )],
            hold: None,
        })
        .collect();

    let results = join_all(jobs.into_iter().map(|j| ingestor.submit(j))).await;

    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 7, "job {i}: {r:?}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 19);
    app.assert_invariants().await;
}

/// Control characters in any request body or query are a 422 naming the field.
#[tokio::test]
async fn control_characters_in_any_request_body_or_query_are_a_422_naming_the_field() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("text").await;
    let cases = [
        (
            Method::POST,
            "/v1/orgs".to_string(),
            json!({"name": "Ac\u{0}me"}),
            "name",
        ),
        (
            Method::POST,
            format!("/v1/orgs/{}/api-keys", org.id),
            json!({"label": "ci\u{7}"}),
            "label",
        ),
        (
            Method::PUT,
            format!("/v1/orgs/{}/billing-settings", org.id),
            json!({"alerts": {"recipients": ["a@example.com", "b\u{0}@example.com"]}}),
            "alerts.recipients[1]",
        ),
    ];
    for (method, path, body, field) in cases {
        let a = app
            .call(
                method,
                &path,
                Some(OPERATOR_KEY),
                Some(&body),
                &[("idempotency-key", "k")],
            )
            .await;
        a.assert_problem(422, "invalid_characters");
        assert_eq!(a.body["field"], field, "{}", a.text);
    }
    let q = app
        .get(
            &format!("/v1/orgs/{}/transactions?kind=usage%00", org.id),
            &org.key,
        )
        .await;
    q.assert_problem(400, "invalid_query");
    assert_eq!(count(&app, "SELECT count(*) FROM orgs").await, 1);
}

/// A usage key reports and reads its balance and nothing else.
#[tokio::test]
async fn a_usage_key_reports_and_reads_its_balance_and_nothing_else() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("scoped").await;
    let made = new_key(
        &app,
        &org,
        &org.key,
        json!({"label": "gateway", "scopes": ["usage:write", "balance:read"], "sources": ["/gateway"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    assert_eq!(made.body["scopes"], json!(["usage:write", "balance:read"]));
    assert_eq!(made.body["sources"], json!(["/gateway"]));
    let gw = made.body["secret"].as_str().unwrap().to_string();

    let sent = send(&app, &gw, json!([ai("gw-1")])).await;
    assert_eq!(sent.body["accepted"], 1, "{}", sent.text);
    let source: String = sqlx::query_scalar("SELECT source FROM usage_events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(
        source, "/gateway",
        "an event naming no source gets the key's"
    );
    let balance = app.get(&format!("/v1/orgs/{}/balance", org.id), &gw).await;
    assert_eq!(balance.status, 200, "{}", balance.text);

    let refused = [
        app.get(&format!("/v1/orgs/{}/transactions", org.id), &gw)
            .await,
        app.get(&format!("/v1/orgs/{}/billing-settings", org.id), &gw)
            .await,
        app.call(
            Method::PUT,
            &format!("/v1/orgs/{}/billing-settings", org.id),
            Some(&gw),
            Some(&json!({"alerts": {"recipients": ["x@example.com"]}})),
            &[],
        )
        .await,
        app.get(&format!("/v1/orgs/{}/api-keys", org.id), &gw).await,
        new_key(&app, &org, &gw, json!({})).await,
        app.get("/v1/summaries", &gw).await,
        app.call(
            Method::POST,
            "/v1/purchases",
            Some(&gw),
            Some(&json!({"package_id": STARTER})),
            &[],
        )
        .await,
    ];
    for a in &refused {
        a.assert_problem(403, "missing_scope");
    }
    assert!(
        refused[0].body["detail"]
            .as_str()
            .unwrap()
            .contains("history:read")
    );

    // Only its own sources.
    let other = send(&app, &gw, json!([with_source(ai("gw-2"), "/billing-ui")])).await;
    assert_eq!(
        other.body["results"][0]["code"], "source_not_allowed",
        "{}",
        other.text
    );
    assert_eq!(other.body["results"][0]["field"], "source");

    // A key grants no more than it holds, and names only real scopes.
    let usage_only = new_key(&app, &org, &org.key, json!({"scopes": ["usage:write"]})).await;
    let usage_only = usage_only.body["secret"].as_str().unwrap().to_string();
    let history = app
        .get(&format!("/v1/orgs/{}/transactions", org.id), &usage_only)
        .await;
    history.assert_problem(403, "missing_scope");
    new_key(&app, &org, &org.key, json!({"scopes": ["usage:read"]}))
        .await
        .assert_problem(422, "unknown_scope");
    new_key(&app, &org, &org.key, json!({"scopes": []}))
        .await
        .assert_problem(422, "invalid_scopes");
    let keys_only = new_key(&app, &org, &org.key, json!({"scopes": ["keys:manage"]})).await;
    let keys_only = keys_only.body["secret"].as_str().unwrap().to_string();
    new_key(&app, &org, &keys_only, json!({"scopes": ["usage:write"]}))
        .await
        .assert_problem(403, "missing_scope");
    let listed = app
        .get(&format!("/v1/orgs/{}/api-keys", org.id), &org.key)
        .await;
    assert_eq!(
        listed.body["data"][0]["scopes"],
        json!([
            "usage:write",
            "balance:read",
            "history:read",
            "billing:manage",
            "keys:manage"
        ]),
        "the first key keeps every scope"
    );
}

fn with_source(mut e: Value, source: &str) -> Value {
    e["source"] = json!(source);
    e
}

/// Ids are unique per source and a rotated key of the same source still dedupes.
#[tokio::test]
async fn ids_are_unique_per_source_and_a_rotated_key_of_the_same_source_still_dedupes() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("sources").await;
    let gw1 = new_key(
        &app,
        &org,
        &org.key,
        json!({"scopes": ["usage:write"], "sources": ["/gw"]}),
    )
    .await
    .body["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let ui = new_key(
        &app,
        &org,
        &org.key,
        json!({"scopes": ["usage:write"], "sources": ["/ui"]}),
    )
    .await
    .body["secret"]
        .as_str()
        .unwrap()
        .to_string();

    // The customer's key sends the platform's next id first: it is its own event.
    let event = ai("req-1");
    let first = send(&app, &ui, json!([event])).await;
    let platform = send(&app, &gw1, json!([event])).await;
    assert_eq!(first.body["accepted"], 1, "{}", first.text);
    assert_eq!(platform.body["accepted"], 1, "{}", platform.text);

    // The gateway's key is rotated: the retry through the new key is a duplicate.
    let gw2 = new_key(
        &app,
        &org,
        &org.key,
        json!({"scopes": ["usage:write"], "sources": ["/gw"]}),
    )
    .await
    .body["secret"]
        .as_str()
        .unwrap()
        .to_string();
    app.call(
        Method::DELETE,
        &format!(
            "/v1/orgs/{}/api-keys/{}",
            org.id,
            key_id(&app, &org, 1).await
        ),
        Some(&org.key),
        None,
        &[],
    )
    .await;
    let retry = send(&app, &gw2, json!([event])).await;
    assert_eq!(retry.body["duplicates"], 1, "{}", retry.text);
    assert_eq!(
        retry.body["results"][0]["usage_event_id"],
        platform.body["results"][0]["usage_event_id"]
    );
    // A full key names the source itself.
    let named = send(&app, &org.key, json!([with_source(event.clone(), "/gw")])).await;
    assert_eq!(named.body["duplicates"], 1, "{}", named.text);
    assert_eq!(app.balance(&org).await, "-2.000000");
}

async fn key_id(app: &TestApp, org: &TestOrg, index: usize) -> String {
    let listed = app
        .get(&format!("/v1/orgs/{}/api-keys", org.id), &org.key)
        .await;
    listed.body["data"][index]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ce(id: &str, source: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source,
           "type": "dev.creditflow.usage.ai_tokens", "time": now(), "subject": "u-1",
           "datacontenttype": "application/json",
           "data": {"model": "gpt-4o", "operation": "chat", "input_tokens": 4000}})
}

async fn post_raw(
    app: &TestApp,
    key: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: String,
) -> tests::Answer {
    let mut req = app
        .http
        .post(format!("{}/v1/usage", app.base_url))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tests::answer(req.send().await.unwrap()).await
}

/// CloudEvents in all three modes dedupe on source and id.
#[tokio::test]
async fn cloudevents_in_all_three_modes_dedupe_on_source_and_id() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("ce-modes").await;

    // Batch: the same id from two collectors is two events.
    let batch = post_raw(
        &app,
        &org.key,
        "application/cloudevents-batch+json",
        &[],
        json!([ce("ce-1", "/collector-a"), ce("ce-1", "/collector-b")]).to_string(),
    )
    .await;
    assert_eq!(batch.body["accepted"], 2, "{}", batch.text);

    // Structured, with data_base64.
    let mut structured = ce("ce-2", "/collector-a");
    let data = structured.as_object_mut().unwrap().remove("data").unwrap();
    structured["data_base64"] =
        json!(base64::engine::general_purpose::STANDARD.encode(data.to_string()));
    let one = post_raw(
        &app,
        &org.key,
        "application/cloudevents+json; charset=utf-8",
        &[],
        structured.to_string(),
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["accepted"], 1, "{}", one.text);
    // The same event again, batched: a duplicate.
    let again = post_raw(
        &app,
        &org.key,
        "application/cloudevents-batch+json",
        &[],
        json!([structured]).to_string(),
    )
    .await;
    assert_eq!(again.body["duplicates"], 1, "{}", again.text);

    // Binary: attributes in ce-* headers, data the body.
    let time = now();
    let binary = post_raw(
        &app,
        &org.key,
        "application/json",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "ce-3"),
            ("ce-source", "/collector-a"),
            ("ce-type", "dev.creditflow.usage.ai_tokens"),
            ("ce-time", &time),
            ("ce-subject", "u-9"),
            (
                "ce-traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
        json!({"model": "gpt-4o", "input_tokens": 4000}).to_string(),
    )
    .await;
    assert_eq!(binary.status, 200, "{}", binary.text);
    assert_eq!(binary.body["accepted"], 1, "{}", binary.text);
    let user: String =
        sqlx::query_scalar("SELECT user_id FROM usage_events WHERE event_id = 'ce-3'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(user, "u-9");

    // Only the exact types; a CloudEvent needs its source.
    let mut near = ce("ce-4", "/collector-a");
    near["type"] = json!("com.example.ai_tokens");
    let mut sourceless = ce("ce-5", "/collector-a");
    sourceless.as_object_mut().unwrap().remove("source");
    let mut both = ce("ce-6", "/collector-a");
    both["data_base64"] = json!("e30=");
    let mut not_json = ce("ce-7", "/collector-a");
    not_json["datacontenttype"] = json!("text/plain");
    let refused = post_raw(
        &app,
        &org.key,
        "application/cloudevents-batch+json",
        &[],
        json!([near, sourceless, both, not_json]).to_string(),
    )
    .await;
    let codes: Vec<(&str, &str)> = refused.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["code"].as_str().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            ("unknown_type", "type"),
            ("invalid_cloudevent", "source"),
            ("invalid_cloudevent", "data"),
            ("invalid_cloudevent", "datacontenttype"),
        ],
        "{}",
        refused.text
    );
    assert_eq!(app.balance(&org).await, "-4.000000");
}

/// Rows from before sources were deduplicated by id alone: a retry of one from any source is
/// still its duplicate.
#[tokio::test]
async fn events_recorded_before_sources_still_hold_their_ids() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("legacy").await;
    send(&app, &org.key, json!([ai("old-1")])).await;
    sqlx::query("UPDATE usage_events SET source = ''")
        .execute(app.store.pool())
        .await
        .unwrap();
    // The store notices such rows when it starts.
    let store = store::Store::from_pool(app.store.pool().clone())
        .await
        .unwrap();
    let mut job_event = None;
    for (source, expect_dup) in [("/collector", true), ("default", true)] {
        let e = {
            let mut ev = billing::usage::UsageEvent {
                source: source.into(),
                id: "old-1".into(),
                occurred_at: Utc::now(),
                user: None,
                api_key: None,
                labels: Default::default(),
                usage: billing::usage::Usage::AiTokens(billing::usage::AiTokens {
                    model: "gpt-4o".into(),
                    operation: "chat".into(),
                    input_tokens: 4000,
                    output_tokens: 0,
                    cached_input_tokens: 0,
                }),
            };
            ev.user = None;
            ev
        };
        let stored_hash: Vec<u8> = sqlx::query_scalar("SELECT payload_hash FROM usage_events")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        let r = store
            .usage()
            .record_usage(&[UsageJob {
                org_id: org.id,
                actor: "test".into(),
                events: vec![RatedEvent {
                    event: e.clone(),
                    cost: "1".parse().unwrap(),
                    price_version: 1,
                    payload_hash: stored_hash,
                }],
                hold: None,
            }])
            .await
            .unwrap();
        assert_eq!(
            matches!(r[0].outcomes[0], store::EventOutcome::Duplicate(_)),
            expect_dup,
            "{source}: {:?}",
            r[0].outcomes
        );
        job_event = Some(e);
    }
    assert!(job_event.is_some());
    assert_eq!(count(&app, "SELECT count(*) FROM usage_events").await, 1);
    assert_eq!(app.balance(&org).await, "-1.000000");
}

/// Another org's purchase is not found like a missing one.
#[tokio::test]
async fn another_orgs_purchase_is_not_found_like_a_missing_one() {
    let app = TestApp::spawn().await.unwrap();
    let buyer = app.create_org("buyer").await;
    let other = app.create_org("prober").await;
    let bought = app.buy(&buyer, STARTER).await;
    let id = bought.body["id"].as_str().unwrap();

    let theirs = app.get(&format!("/v1/purchases/{id}"), &other.key).await;
    let missing = app
        .get(
            &format!("/v1/purchases/{}", uuid::Uuid::now_v7()),
            &other.key,
        )
        .await;
    let refunds = app
        .get(&format!("/v1/purchases/{id}/refunds"), &other.key)
        .await;

    theirs.assert_problem(404, "not_found");
    missing.assert_problem(404, "not_found");
    refunds.assert_problem(404, "not_found");
    assert_eq!(theirs.body["detail"], missing.body["detail"]);
}

/// Events produced by the CloudEvents Python SDK, in every mode, debit exactly what the same
/// usage sent as a JSON batch debits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_sdk_events_debit_as_a_json_batch_would() {
    let app = TestApp::spawn().await.unwrap();
    let sdk = app.create_org("sdk").await;
    let plain = app.create_org("plain").await;
    let time = now();
    let python = tests::workspace_root().join(".local/venv/bin/python");
    let script = tests::workspace_root().join("tests/python/cloudevents_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&app.base_url, &sdk.key, &time])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let accepted: u64 = answers
        .iter()
        .map(|a| a["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 5, "{answers:?}");

    let ai = |id: &str, source: &str, f: Value| {
        let mut e = json!({"id": id, "source": source, "type": "ai_tokens", "occurred_at": time,
                           "model": "gpt-4o"});
        for (k, v) in f.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    let json_batch = json!([
        ai("sdk-1", "/collector-a", json!({"input_tokens": 4000, "user": "ana"})),
        ai("sdk-1", "/collector-b", json!({"output_tokens": 1000})),
        {"id": "sdk-2", "source": "/collector-a", "type": "infra", "occurred_at": time,
         "resource": "bandwidth", "quantity": "0.5", "unit": "gb"},
        ai("sdk-3", "/collector-a", json!({"model": "gpt-4o-mini", "input_tokens": 100000})),
        ai("sdk-4", "/collector-a", json!({"cached_input_tokens": 8000, "user": "bob"})),
    ]);
    let same = send(&app, &plain.key, json_batch).await;
    assert_eq!(same.body["accepted"], 5, "{}", same.text);
    let sdk_costs: Vec<Value> = answers
        .iter()
        .flat_map(|a| a["results"].as_array().unwrap().clone())
        .map(|r| r["cost_credits"].clone())
        .collect();
    let json_costs: Vec<Value> = same.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cost_credits"].clone())
        .collect();
    assert_eq!(sdk_costs, json_costs);
    assert_eq!(app.balance(&sdk).await, app.balance(&plain).await);
    let users: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT user_id FROM usage_events WHERE org_id = $1 ORDER BY event_id, source",
    )
    .bind(sdk.id)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        users,
        [
            Some("ana".to_string()),
            None,
            None,
            None,
            Some("bob".to_string())
        ]
    );
}

/// 11,111.111111 GB of bandwidth at 9 credits: 99,999.999999 credits, the most one event may
/// cost by default.
fn max_cost(id: &str) -> Value {
    json!({"id": id, "type": "infra", "occurred_at": now(), "resource": "bandwidth",
           "quantity": "11111.111111", "unit": "gb"})
}

/// An overdraft limit is set, reset with an explicit `null`, and never reset by a body that
/// forgot the field (schemathesis found `{}` taken as a reset).
#[tokio::test]
async fn an_overdraft_limit_is_reset_only_by_saying_null() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("limits").await;
    let put = |body: Value| {
        let app = &app;
        let path = format!("/v1/orgs/{}/overdraft-limit", org.id);
        async move {
            app.call(Method::PUT, &path, Some(OPERATOR_KEY), Some(&body), &[])
                .await
        }
    };

    let set = put(json!({"overdraft_limit_credits": "25"})).await;
    let forgot = put(json!({})).await;
    let array = put(json!(["25"])).await;
    let still = app.get(&format!("/v1/orgs/{}", org.id), &org.key).await;
    let reset = put(json!({"overdraft_limit_credits": null})).await;

    assert_eq!(
        set.body["overdraft_limit_credits"], "25.000000",
        "{}",
        set.text
    );
    forgot.assert_problem(422, "missing_field");
    array.assert_problem(422, "invalid_body");
    assert_eq!(still.body["overdraft_limit_credits"], "25.000000");
    assert_eq!(
        reset.body["overdraft_limit_is_default"], true,
        "{}",
        reset.text
    );
}

/// Usage at the largest cost stops at the overdraft floor and spares other orgs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_at_the_largest_cost_stops_at_the_overdraft_floor_and_spares_other_orgs() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("floor").await;
    let other = app.create_org("neighbour").await;
    let set = app
        .call(
            Method::PUT,
            &format!("/v1/orgs/{}/overdraft-limit", org.id),
            Some(OPERATOR_KEY),
            Some(&json!({"overdraft_limit_credits": "250000"})),
            &[],
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.body["overdraft_limit_credits"], "250000.000000");
    let own = app.get(&format!("/v1/orgs/{}", org.id), &org.key).await;
    assert_eq!(own.body["overdraft_limit_is_default"], false);

    // Five events at the largest cost, beside a small one, while the neighbour reports too.
    let events = json!([
        max_cost("m-1"),
        max_cost("m-2"),
        max_cost("m-3"),
        ai("small"),
        max_cost("m-4"),
        max_cost("m-5")
    ]);
    let (a, b) = tokio::join!(
        send(&app, &org.key, events),
        send(&app, &other.key, json!([ai("n-1"), ai("n-2")]))
    );

    let codes: Vec<&str> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap_or(r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            "accepted",
            "accepted",
            "overdraft_limit",
            "accepted",
            "overdraft_limit",
            "overdraft_limit"
        ],
        "{}",
        a.text
    );
    assert_eq!(app.balance(&org).await, "-200000.999998");
    assert_eq!(b.body["accepted"], 2, "{}", b.text);
    // Refused events leave nothing but a count; their ids stay free.
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) FROM usage_events WHERE org_id = '{}'",
                org.id
            )
        )
        .await,
        3
    );
    let (events, credits): (i64, rust_decimal::Decimal) = sqlx::query_as(
        "SELECT events, credits FROM usage_refusals WHERE org_id = $1 AND code = 'overdraft_limit'",
    )
    .bind(org.id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        (events, credits.to_string()),
        (3, "299999.999997".to_string())
    );
    let metrics = app
        .http
        .get(&app.metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        tests::metric_sum(
            &metrics,
            "creditflow_usage_events_total",
            &[("code", "overdraft_limit")]
        ) >= rust_decimal::Decimal::from(3)
    );

    // Credits in, and the same event is taken.
    app.adjust(org.id, "100000", "top up", "seed").await;
    let retry = send(&app, &org.key, json!([max_cost("m-3")])).await;
    assert_eq!(retry.body["accepted"], 1, "{}", retry.text);
    app.assert_invariants().await;
}

/// Running totals were numeric(24,6), at most 10^18: a system account near that bound made
/// every usage batch of every org fail. Now they are numeric(28,6).
#[tokio::test]
async fn totals_past_the_old_column_bound_do_not_overflow() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("bound").await;
    sqlx::query(
        "UPDATE accounts SET credits_posted = 999999999999999999.999999 WHERE code = 'usage:ai'",
    )
    .execute(app.store.pool())
    .await
    .unwrap();

    let a = send(&app, &org.key, json!([ai("past-the-old-bound")])).await;

    assert_eq!(a.body["accepted"], 1, "{}", a.text);
    let total: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT credits_posted FROM accounts WHERE code = 'usage:ai'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(total.to_string(), "1000000000000000000.999999");
}

/// Bodies held beyond the bytes-in-flight bound are refused at once, before they are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_bytes_in_flight_are_bounded_with_a_429() {
    let app = TestApp::spawn_with(AppOptions {
        usage: api::UsageBounds {
            bytes_in_flight_max: api::usage::USAGE_BODY_LIMIT_BYTES,
            ..api::UsageBounds::default()
        },
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let org = app.create_org("bytes").await;
    // A client that declares the largest body and sends it slowly holds the whole bound. (If
    // the small request below comes first, the slow one is the one refused: try again.)
    let addr = app.base_url.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /v1/usage HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"events\": [",
        org.key,
        api::usage::USAGE_BODY_LIMIT_BYTES
    );
    let (slow, refused) = tests::eventually(
        "a 429 while a slow body is held",
        std::time::Duration::from_secs(20),
        || async {
            let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes())
                .await
                .unwrap();
            let a = send(&app, &org.key, json!([ai("while-held")])).await;
            (a.status == 429).then_some((slow, a))
        },
    )
    .await;
    refused.assert_problem(429, "usage_overloaded");
    assert!(refused.text.contains("retry"));

    drop(slow);
    let after = tests::eventually(
        "usage accepted once the slow client left",
        std::time::Duration::from_secs(10),
        || async {
            let a = send(&app, &org.key, json!([ai("after")])).await;
            (a.status == 200).then_some(a)
        },
    )
    .await;
    assert_eq!(after.body["accepted"], 1, "{}", after.text);
}

/// Late usage, both edges of the rule: at most `late_usage_max` old (35 days by default), and
/// a month already stored is revised, not left stale.
#[tokio::test]
async fn usage_may_be_at_most_35_days_late() {
    let app = TestApp::spawn_with(AppOptions {
        usage: api::UsageBounds::default(),
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let org = app.create_org("late").await;
    let at = |t: chrono::DateTime<Utc>, id: &str| {
        let mut e = ai(id);
        e["occurred_at"] = json!(t.to_rfc3339_opts(SecondsFormat::Micros, true));
        e
    };
    let now = Utc::now();
    let a = send(
        &app,
        &org.key,
        json!([
            at(
                now - chrono::Duration::days(35) + chrono::Duration::minutes(1),
                "inside"
            ),
            at(
                now - chrono::Duration::days(35) - chrono::Duration::minutes(1),
                "outside"
            ),
        ]),
    )
    .await;
    assert_eq!(a.body["results"][0]["status"], "accepted", "{}", a.text);
    assert_eq!(
        a.body["results"][1]["code"], "occurred_too_long_ago",
        "{}",
        a.text
    );
    assert_eq!(a.body["results"][1]["field"], "occurred_at");
}

/// Late usage in a stored month revises it and the months still chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_in_a_stored_month_revises_it_and_the_months_still_chain() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = tests::worker::TestWorker::start(&app).unwrap();
    let org = app.create_org("revised").await;
    let this = billing::summary::Month::of(Utc::now());
    let (last, before) = (this.previous(), this.previous().previous());
    let at = |t: chrono::DateTime<Utc>, id: &str| {
        let mut e = ai(id);
        e["occurred_at"] = json!(t.to_rfc3339_opts(SecondsFormat::Micros, true));
        e
    };
    send(
        &app,
        &org.key,
        json!([at(before.start(), "b-1"), at(last.start(), "l-1")]),
    )
    .await;
    app.store
        .summaries()
        .generate_summaries(before, None, 100)
        .await
        .unwrap();
    app.store
        .summaries()
        .generate_summaries(last, None, 100)
        .await
        .unwrap();

    // The last microsecond of the month before last, and the first of the current month (no
    // stored summary: nothing to revise).
    let late = send(
        &app,
        &org.key,
        json!([
            at(last.start() - chrono::Duration::microseconds(1), "late-1"),
            at(this.start(), "current-1")
        ]),
    )
    .await;
    assert_eq!(late.body["accepted"], 2, "{}", late.text);
    let revision_rows = count(
        &app,
        "SELECT count(*) FROM outbox WHERE topic = 'summary.revision_due'",
    )
    .await;
    assert_eq!(revision_rows, 1);

    tests::eventually(
        "both stored months revised",
        std::time::Duration::from_secs(30),
        || async {
            let b = app
                .store
                .summaries()
                .summary_revisions(org.id, before)
                .await
                .unwrap();
            let l = app
                .store
                .summaries()
                .summary_revisions(org.id, last)
                .await
                .unwrap();
            (b == [1, 2] && l == [1, 2]).then_some(())
        },
    )
    .await;
    let revised = app
        .store
        .summaries()
        .latest_summaries(&[org.id], before)
        .await
        .unwrap()[&org.id]
        .clone();
    let next = app
        .store
        .summaries()
        .latest_summaries(&[org.id], last)
        .await
        .unwrap()[&org.id]
        .clone();
    assert_eq!(revised.movements.used.to_string(), "2.000000");
    assert_eq!(revised.closing, next.movements.opening);
    app.assert_invariants().await;
}

/// Audit L14: dispatched outbox rows are pruned after the retention; pending ones never.
#[tokio::test]
async fn dispatched_outbox_rows_are_pruned_after_the_retention() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("outbox").await;
    sqlx::query(
        "INSERT INTO outbox (org_id, topic, payload, created_at, dispatched_at) VALUES
           ($1, 'old.dispatched', '{}', now() - interval '9 days', now() - interval '8 days'),
           ($1, 'new.dispatched', '{}', now() - interval '1 day', now() - interval '1 hour'),
           ($1, 'old.pending', '{}', now() - interval '30 days', NULL)",
    )
    .bind(org.id)
    .execute(app.store.pool())
    .await
    .unwrap();

    let pruned = app
        .store
        .outbox()
        .prune(workers::dispatch::OUTBOX_RETENTION, 100)
        .await
        .unwrap();

    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT topic FROM outbox ORDER BY id")
        .fetch_all(app.store.pool())
        .await
        .unwrap();
    assert_eq!(left, ["new.dispatched", "old.pending"]);
}
