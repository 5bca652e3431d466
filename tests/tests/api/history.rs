use serde_json::Value;
use tests::{OPERATOR_KEY, TestApp};

/// History is newest first with cursor pages and balance after.
#[tokio::test]
async fn history_is_newest_first_with_cursor_pages_and_balance_after() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("history").await;
    for i in 1..=5 {
        assert_eq!(
            app.adjust(org.id, &i.to_string(), &format!("r{i}"), &format!("k{i}"))
                .await
                .status,
            201
        );
    }

    let first = app
        .get(
            &format!("/v1/orgs/{}/transactions?limit=2", org.id),
            &org.key,
        )
        .await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .get(
            &format!("/v1/orgs/{}/transactions?limit=2&cursor={cursor}", org.id),
            &org.key,
        )
        .await;
    let cursor = second.body["next_cursor"].as_str().unwrap();
    let third = app
        .get(
            &format!("/v1/orgs/{}/transactions?limit=2&cursor={cursor}", org.id),
            &org.key,
        )
        .await;

    let reasons: Vec<&str> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p.body["data"].as_array().unwrap())
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["r5", "r4", "r3", "r2", "r1"]);
    assert!(third.body["next_cursor"].is_null());
    let newest = &first.body["data"][0];
    assert_eq!(newest["balance_after_credits"], "15.000000");
    assert_eq!(newest["amount_credits"], "5.000000");
    assert_eq!(newest["kind"], "adjustment");
    assert!(newest["actor"].as_str().unwrap().starts_with("operator:"));
    assert!(newest["created_at"].is_string());
}

/// History filters by kind and time.
#[tokio::test]
async fn history_filters_by_kind_and_time() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("filters").await;
    app.adjust(org.id, "1", "a", "k1").await;
    let cut = chrono::Utc::now();
    app.adjust(org.id, "2", "b", "k2").await;
    let q = |query: &str| format!("/v1/orgs/{}/transactions?{query}", org.id);

    let usage = app.get(&q("kind=usage"), &org.key).await;
    let adjustments = app.get(&q("kind=usage,adjustment"), &org.key).await;
    let cut_s = cut
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .replace('+', "%2B");
    let after = app.get(&q(&format!("from={cut_s}")), &org.key).await;
    let before = app.get(&q(&format!("to={cut_s}")), &org.key).await;

    assert_eq!(usage.body["data"].as_array().unwrap().len(), 0);
    assert_eq!(adjustments.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(after.body["data"][0]["reason"], "b");
    assert_eq!(after.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(before.body["data"][0]["reason"], "a");
    assert_eq!(before.body["data"].as_array().unwrap().len(), 1);
    app.get(&q("kind=bogus"), &org.key)
        .await
        .assert_problem(400, "invalid_kind");
    app.get(&q("from=yesterday"), &org.key)
        .await
        .assert_problem(400, "invalid_query");
    app.get(&q("format=xml"), &org.key)
        .await
        .assert_problem(400, "invalid_format");
}

/// CSV streams the same rows across chunks.
#[tokio::test]
async fn csv_streams_the_same_rows_across_chunks() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("csv").await;
    // More rows than one CSV chunk (1,000), booked straight through the store to keep it fast.
    for i in 0..1205 {
        app.store
            .ledger()
            .post_adjustment(
                org.id,
                billing::Credits::whole(1),
                "bulk, \"quoted\"",
                "test",
                &format!("k{i}"),
            )
            .await
            .unwrap();
    }

    let csv = app
        .get(
            &format!("/v1/orgs/{}/transactions?format=csv", org.id),
            &org.key,
        )
        .await;
    let limited = app
        .get(
            &format!("/v1/orgs/{}/transactions?format=csv&limit=3", org.id),
            &org.key,
        )
        .await;
    let json = app
        .get(
            &format!("/v1/orgs/{}/transactions?limit=3", org.id),
            &org.key,
        )
        .await;

    assert_eq!(csv.status, 200);
    assert!(csv.content_type.starts_with("text/csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(
        lines[0],
        "id,seq,created_at,kind,amount_credits,balance_after_credits,counterparty,actor,reason,refs,grants"
    );
    assert_eq!(lines.len(), 1 + 1205);
    assert!(lines[1].contains(",1205,") && lines[1].contains("\"bulk, \"\"quoted\"\"\""));
    assert!(lines[1205].contains(",1,"));
    let ids: Vec<&str> = limited
        .text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let json_ids: Vec<&str> = json.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, json_ids);
}

/// Operators read any org's history.
#[tokio::test]
async fn operators_read_any_orgs_history() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("op").await;
    app.adjust(org.id, "1", "a", "k1").await;
    let a = app
        .get(&format!("/v1/orgs/{}/transactions", org.id), OPERATOR_KEY)
        .await;
    assert_eq!(a.body["data"].as_array().map(Vec::len), Some(1));
    let _: &Value = &a.body;
}
