//! The generated OpenAPI document, checked by third-party tools: it is valid OpenAPI
//! (openapi-spec-validator), and requests schemathesis generates from it get only answers the
//! document describes.

use reqwest::Method;
use tests::{OPERATOR_KEY, TestApp, worker::TestWorker, workspace_root};

/// The served document is the committed one, which the code generates.
#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let app = TestApp::spawn().await.unwrap();

    let doc = app
        .call(Method::GET, "/v1/openapi.json", None, None, &[])
        .await;

    assert_eq!(doc.status, 200);
    assert_eq!(doc.content_type, "application/json");
    assert_eq!(doc.text, api::openapi::document_json());
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
}

/// openapi-spec-validator accepts the document, and schemathesis, with an org key and then an
/// operator key, finds no server error, no undocumented status, content type or header, and
/// no answer outside its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_outside_the_document() {
    let app = TestApp::spawn().await.unwrap();
    // A worker, so purchases and card setups get their checkout at once, as in production.
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("schemathesis").await;
    app.adjust(org.id, "100", "fixture", "schemathesis-fixture")
        .await;
    app.spend(&org, "schemathesis-fixture", 1).await;
    let bought = app.buy(&org, tests::STARTER).await;
    assert!(bought.status.is_success(), "{}", bought.text);
    let purchase = bought.body["id"].as_str().unwrap().to_string();
    let venv = workspace_root().join(".local/venv/bin");
    let doc = std::env::temp_dir().join(format!("creditflow-openapi-{}.json", org.id));
    std::fs::write(&doc, api::openapi::document_json()).unwrap();

    let valid = tokio::process::Command::new(venv.join("openapi-spec-validator"))
        .arg(&doc)
        .output()
        .await
        .unwrap();
    assert!(
        valid.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&valid.stdout),
        String::from_utf8_lossy(&valid.stderr)
    );

    for (who, key) in [
        ("org key", org.key.as_str()),
        ("operator key", OPERATOR_KEY),
    ] {
        let out = tokio::process::Command::new(venv.join("st"))
            .current_dir(workspace_root().join("tests"))
            .env("CF_ORG", org.id.to_string())
            .env("CF_PURCHASE", &purchase)
            .env("NO_COLOR", "1")
            .args(["run", doc.to_str().unwrap(), "--url", &app.base_url])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args(["--phases", "examples,coverage,fuzzing", "--seed", "1"])
            .args(["--workers", "2", "--request-timeout", "20"])
            .output()
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        // The summary (cases generated, time), for the log.
        let tail: Vec<&str> = report.lines().rev().take(12).collect();
        eprintln!(
            "schemathesis with an {who}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        assert!(
            out.status.success(),
            "schemathesis with an {who}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_file(&doc).ok();
}
