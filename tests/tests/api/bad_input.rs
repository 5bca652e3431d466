//! Bad input is refused with a clear problem+json error, and nothing is written.

use reqwest::Method;
use serde_json::{Value, json};
use tests::{Answer, BODY_LIMIT_BYTES, OPERATOR_KEY, TestApp, TestOrg};

async fn post_adjustment(app: &TestApp, org: &TestOrg, key: Option<&str>, body: Value) -> Answer {
    app.call(
        Method::POST,
        &format!("/v1/orgs/{}/adjustments", org.id),
        key,
        Some(&body),
        &[("idempotency-key", "bad-input")],
    )
    .await
}

async fn assert_nothing_written(app: &TestApp, org: &TestOrg) {
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.body["balance_credits"], "0.000000");
    assert_eq!(b.body["transfer_count"], 0);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(keys, 0, "no idempotency record for a refused request");
    app.assert_invariants().await;
}

/// Bad amounts and fields are refused and nothing is written.
#[tokio::test]
async fn bad_amounts_and_fields_are_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("bad").await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"amount_credits": "0", "reason": "r"}),
            422,
            "amount_zero",
        ),
        (
            json!({"amount_credits": 0, "reason": "r"}),
            422,
            "amount_zero",
        ),
        (
            json!({"amount_credits": "1.0000001", "reason": "r"}),
            422,
            "too_many_decimals",
        ),
        (
            json!({"amount_credits": 0.0000001, "reason": "r"}),
            422,
            "too_many_decimals",
        ),
        (
            // 17 significant digits: as a JSON number it is a float that may not be what was
            // sent, so it is refused rather than rounded to a neighbouring amount.
            json!({"amount_credits": 12345678901.123456, "reason": "r"}),
            422,
            "too_many_decimals",
        ),
        (
            json!({"amount_credits": "1000000000001", "reason": "r"}),
            422,
            "amount_out_of_range",
        ),
        (
            json!({"amount_credits": "-99999999999999999999999999999999", "reason": "r"}),
            422,
            "amount_out_of_range",
        ),
        (
            json!({"amount_credits": 1e300, "reason": "r"}),
            422,
            "amount_out_of_range",
        ),
        (
            json!({"amount_credits": "ten", "reason": "r"}),
            422,
            "invalid_amount",
        ),
        (
            json!({"amount_credits": "1e3", "reason": "r"}),
            422,
            "invalid_amount",
        ),
        (
            json!({"amount_credits": "", "reason": "r"}),
            422,
            "invalid_amount",
        ),
        (
            json!({"amount_credits": true, "reason": "r"}),
            422,
            "invalid_amount",
        ),
        (
            json!({"amount_credits": {"v": 1}, "reason": "r"}),
            422,
            "invalid_amount",
        ),
        (json!({"reason": "r"}), 422, "missing_field"),
        (json!({"amount_credits": "5"}), 422, "missing_field"),
        (
            json!({"amount_credits": "5", "reason": "   "}),
            422,
            "missing_field",
        ),
        (
            json!({"amount_credits": "5", "reason": "x".repeat(1001)}),
            422,
            "field_too_long",
        ),
        (
            json!({"amount_credits": "5", "reason": "r", "extra": 1}),
            422,
            "invalid_body",
        ),
        (json!("just a string"), 422, "invalid_body"),
        (json!(42), 422, "invalid_body"),
    ];

    for (body, status, code) in cases {
        let a = post_adjustment(&app, &org, Some(OPERATOR_KEY), body.clone()).await;
        assert_eq!(a.status.as_u16(), status, "{body}: {}", a.text);
        a.assert_problem(status, code);
    }
    assert_nothing_written(&app, &org).await;
}

/// Negative where positive is required is refused.
#[tokio::test]
async fn negative_where_positive_is_required_is_refused() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("neg").await;

    for limit in ["0", "-1", "1001", "x"] {
        let a = app
            .get(
                &format!("/v1/orgs/{}/transactions?limit={limit}", org.id),
                &org.key,
            )
            .await;
        assert_eq!(a.status, 400, "limit={limit}: {}", a.text);
        assert_eq!(a.content_type, "application/problem+json");
    }
    app.get(
        &format!("/v1/orgs/{}/transactions?cursor=-5", org.id),
        &org.key,
    )
    .await
    .assert_problem(400, "invalid_cursor");
}

/// Malformed JSON and oversized bodies are refused.
#[tokio::test]
async fn malformed_json_and_oversized_bodies_are_refused() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("malformed").await;
    let path = format!("/v1/orgs/{}/adjustments", org.id);

    app.call_raw(
        Method::POST,
        &path,
        Some(OPERATOR_KEY),
        b"{\"amount_credits\": \"1\",".to_vec(),
    )
    .await
    .assert_problem(400, "malformed_json");
    app.call_raw(
        Method::POST,
        &path,
        Some(OPERATOR_KEY),
        b"not json".to_vec(),
    )
    .await
    .assert_problem(400, "malformed_json");
    let huge = format!(
        "{{\"amount_credits\": \"1\", \"reason\": \"{}\"}}",
        "x".repeat(BODY_LIMIT_BYTES + 1)
    );
    app.call_raw(Method::POST, &path, Some(OPERATOR_KEY), huge.into_bytes())
        .await
        .assert_problem(413, "body_too_large");
    let no_type = app
        .http
        .post(format!("{}{}", app.base_url, path))
        .bearer_auth(OPERATOR_KEY)
        .header("idempotency-key", "k")
        .body("{\"amount_credits\": \"1\", \"reason\": \"r\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 415);

    assert_nothing_written(&app, &org).await;
}

/// Missing or malformed idempotency key is refused.
#[tokio::test]
async fn missing_or_malformed_idempotency_key_is_refused() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("idem-key").await;
    let path = format!("/v1/orgs/{}/adjustments", org.id);
    let body = json!({"amount_credits": "1", "reason": "r"});

    app.call(Method::POST, &path, Some(OPERATOR_KEY), Some(&body), &[])
        .await
        .assert_problem(400, "missing_idempotency_key");
    let long = "k".repeat(256);
    for bad in ["has space", long.as_str(), ""] {
        app.call(
            Method::POST,
            &path,
            Some(OPERATOR_KEY),
            Some(&body),
            &[("idempotency-key", bad)],
        )
        .await
        .assert_problem(400, "invalid_idempotency_key");
    }
    assert_nothing_written(&app, &org).await;
}

/// Unknown org missing revoked and foreign keys are refused.
#[tokio::test]
async fn unknown_org_missing_revoked_and_foreign_keys_are_refused() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("mine").await;
    let other = app.create_org("theirs").await;
    let body = json!({"amount_credits": "1", "reason": "r"});

    // Unknown org, as an operator.
    let unknown = uuid::Uuid::now_v7();
    app.call(
        Method::POST,
        &format!("/v1/orgs/{unknown}/adjustments"),
        Some(OPERATOR_KEY),
        Some(&body),
        &[("idempotency-key", "u")],
    )
    .await
    .assert_problem(404, "org_not_found");
    app.get(&format!("/v1/orgs/{unknown}/balance"), OPERATOR_KEY)
        .await
        .assert_problem(404, "org_not_found");
    app.get("/v1/orgs/not-a-uuid/balance", OPERATOR_KEY)
        .await
        .assert_problem(404, "not_found");

    // Missing, malformed and unknown keys.
    let balance = format!("/v1/orgs/{}/balance", org.id);
    app.call(Method::GET, &balance, None, None, &[])
        .await
        .assert_problem(401, "missing_api_key");
    app.call(
        Method::GET,
        &balance,
        None,
        None,
        &[("authorization", "Basic abc")],
    )
    .await
    .assert_problem(401, "missing_api_key");
    app.get(&balance, "cf_notarealkey")
        .await
        .assert_problem(401, "invalid_api_key");

    // Another org's key.
    app.get(&balance, &other.key)
        .await
        .assert_problem(403, "wrong_org");
    app.get(&format!("/v1/orgs/{}/transactions", org.id), &other.key)
        .await
        .assert_problem(403, "wrong_org");

    // An org key may not adjust, not even its own org.
    post_adjustment(&app, &org, Some(&org.key), body.clone())
        .await
        .assert_problem(403, "operator_only");

    // A revoked key.
    let revoke = app
        .call(
            Method::DELETE,
            &format!("/v1/orgs/{}/api-keys/{}", org.id, org.key_id),
            Some(&org.key),
            None,
            &[],
        )
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.text);
    app.get(&balance, &org.key)
        .await
        .assert_problem(401, "invalid_api_key");

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

/// Unknown routes and methods answer problem JSON.
#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let app = TestApp::spawn().await.unwrap();
    app.get("/v1/nothing-here", OPERATOR_KEY)
        .await
        .assert_problem(404, "no_route");
    app.call(Method::PUT, "/v1/orgs", Some(OPERATOR_KEY), None, &[])
        .await
        .assert_problem(405, "method_not_allowed");
}

/// The usage route's own body limit (`USAGE_BODY_LIMIT_BYTES` in api/src/usage.rs, which the api
/// crate does not export): larger than the default so that 1,000 events with labels fit.
const USAGE_BODY_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// A valid one-event usage batch padded with trailing whitespace (still valid JSON) to `size`.
fn usage_batch_of_size(id: &str, size: usize) -> Vec<u8> {
    let mut body = json!({"events": [{
        "id": id, "type": "ai_tokens", "occurred_at": chrono::Utc::now().to_rfc3339(),
        "model": "gpt-4o", "input_tokens": 4000,
    }]})
    .to_string()
    .into_bytes();
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

/// An oversized usage body is refused with 413 and nothing is written.
#[tokio::test]
async fn an_oversized_usage_body_is_refused_with_413_and_nothing_is_written() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("oversized-usage").await;

    // A client of its own: the server may close a connection whose body it did not read, and
    // the shared client must not pick that connection up again.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/usage", app.base_url))
        .bearer_auth(&org.key)
        .header("content-type", "application/json")
        .body(usage_batch_of_size("too-big", USAGE_BODY_LIMIT_BYTES + 1))
        .send()
        .await
        .expect("request failed");
    let too_big = tests::answer(res).await;

    too_big.assert_problem(413, "body_too_large");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(events, 0);
    assert_nothing_written(&app, &org).await;

    // The route's own limit applies, not the default: four times the default is accepted.
    let within = app
        .call_raw(
            Method::POST,
            "/v1/usage",
            Some(&org.key),
            usage_batch_of_size("big-but-fine", BODY_LIMIT_BYTES * 4),
        )
        .await;
    assert_eq!(within.status, 200, "{}", within.text);
    assert_eq!(
        within.body["results"][0]["status"], "accepted",
        "{}",
        within.text
    );
}
