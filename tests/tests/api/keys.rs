use reqwest::Method;
use serde_json::json;
use tests::{OPERATOR_KEY, TestApp};

/// Creating an org returns its first key once and stores only a hash.
#[tokio::test]
async fn creating_an_org_returns_its_first_key_once_and_stores_only_a_hash() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("Acme").await;

    let listed = app
        .get(&format!("/v1/orgs/{}/api-keys", org.id), &org.key)
        .await;

    assert_eq!(listed.status, 200);
    let keys = listed.body["data"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].get("secret").is_none(),
        "a listed key never shows its secret"
    );
    assert!(org.key.starts_with(keys[0]["prefix"].as_str().unwrap()));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&org.key));
}

/// Keys can be created listed and revoked.
#[tokio::test]
async fn keys_can_be_created_listed_and_revoked() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("keys").await;
    let path = format!("/v1/orgs/{}/api-keys", org.id);

    let created = app
        .call(
            Method::POST,
            &path,
            Some(&org.key),
            Some(&json!({"label": "ci"})),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let second = created.body["secret"].as_str().unwrap().to_string();
    let second_id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.get(&format!("/v1/orgs/{}/balance", org.id), &second)
            .await
            .status,
        200
    );

    let revoked = app
        .call(
            Method::DELETE,
            &format!("{path}/{second_id}"),
            Some(OPERATOR_KEY),
            None,
            &[],
        )
        .await;
    assert_eq!(revoked.status, 200);
    assert!(revoked.body["revoked_at"].is_string());

    app.get(&format!("/v1/orgs/{}/balance", org.id), &second)
        .await
        .assert_problem(401, "invalid_api_key");
    assert_eq!(
        app.get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
            .await
            .status,
        200
    );
    let listed = app.get(&path, &org.key).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2);
}

/// An org key cannot touch another org's keys.
#[tokio::test]
async fn an_org_key_cannot_touch_another_orgs_keys() {
    let app = TestApp::spawn().await.unwrap();
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;

    app.get(&format!("/v1/orgs/{}/api-keys", b.id), &a.key)
        .await
        .assert_problem(403, "wrong_org");
    app.call(
        Method::DELETE,
        &format!("/v1/orgs/{}/api-keys/{}", b.id, b.key_id),
        Some(&a.key),
        None,
        &[],
    )
    .await
    .assert_problem(403, "wrong_org");
    // Revoking b's key through a's org path finds nothing.
    app.call(
        Method::DELETE,
        &format!("/v1/orgs/{}/api-keys/{}", a.id, b.key_id),
        Some(&a.key),
        None,
        &[],
    )
    .await
    .assert_problem(404, "not_found");
    assert_eq!(
        app.get(&format!("/v1/orgs/{}/balance", b.id), &b.key)
            .await
            .status,
        200
    );
}

/// Only operators create orgs, and names are validated.
#[tokio::test]
async fn only_operators_create_orgs_and_names_are_validated() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("first").await;

    app.call(
        Method::POST,
        "/v1/orgs",
        Some(&org.key),
        Some(&json!({"name": "x"})),
        &[],
    )
    .await
    .assert_problem(403, "operator_only");
    app.call(
        Method::POST,
        "/v1/orgs",
        Some(OPERATOR_KEY),
        Some(&json!({})),
        &[],
    )
    .await
    .assert_problem(422, "missing_field");
    app.call(
        Method::POST,
        "/v1/orgs",
        Some(OPERATOR_KEY),
        Some(&json!({"name": "n".repeat(201)})),
        &[],
    )
    .await
    .assert_problem(422, "field_too_long");
}
