use reqwest::Method;
use tests::TestApp;

#[tokio::test]
async fn healthz_and_readyz_answer_when_postgres_and_temporal_do() {
    let app = TestApp::spawn().await.unwrap();

    let health = app.call(Method::GET, "/healthz", None, None, &[]).await;
    let ready = app.call(Method::GET, "/readyz", None, None, &[]).await;

    assert_eq!(health.status, 200);
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["postgres"], "ok");
    assert_eq!(ready.body["temporal"], "ok");
}

#[tokio::test]
async fn readyz_is_503_when_postgres_is_gone() {
    let app = TestApp::spawn().await.unwrap();
    app.store.pool().close().await;

    let ready = app.call(Method::GET, "/readyz", None, None, &[]).await;

    ready.assert_problem(503, "not_ready");
    assert!(
        ready.body["detail"]
            .as_str()
            .unwrap()
            .contains("postgres: unavailable")
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = TestApp::spawn().await.unwrap();

    let doc = app
        .call(Method::GET, "/v1/openapi.json", None, None, &[])
        .await;

    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in api::ROUTES {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
    }
}
