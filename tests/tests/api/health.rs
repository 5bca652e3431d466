use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use reqwest::Method;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, Url,
    callback_based::{CallbackBasedGrpcService, GrpcRequest, GrpcSuccessResponse},
    tonic::Status,
};
use tests::{Answer, BODY_LIMIT_BYTES, OPERATOR_KEY, TestApp};

/// `/healthz` and `/readyz` answer when Postgres and Temporal do.
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

/// `/readyz` is 503 when Postgres is gone.
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

/// How a stand-in Temporal server fails every call after the client has connected.
#[derive(Debug, Clone, Copy)]
enum Silence {
    /// Calls never answer (a hung server or a black-holed network).
    Hangs,
    /// Calls fail as unavailable (the server went away).
    Refuses,
}

/// A Temporal client whose calls go to a stand-in that answers only the connection handshake.
///
/// `Connection::connect` dials and calls GetSystemInfo at once, so a client cannot be built
/// against an address where nothing listens; the client's `service_override` routes every call
/// through a callback instead, which answers the handshake and then fails as `silence` says.
async fn temporal_that(silence: Silence) -> Client {
    let service = CallbackBasedGrpcService {
        callback: Arc::new(
            move |req: GrpcRequest| -> BoxFuture<'static, Result<GrpcSuccessResponse, Status>> {
                if req.rpc == "GetSystemInfo" {
                    // An empty message is a valid GetSystemInfoResponse (every field default).
                    return async {
                        Ok::<_, Status>(GrpcSuccessResponse {
                            headers: Default::default(),
                            proto: Vec::new(),
                        })
                    }
                    .boxed();
                }
                match silence {
                    Silence::Hangs => {
                        std::future::pending::<Result<GrpcSuccessResponse, Status>>().boxed()
                    }
                    Silence::Refuses => async {
                        Err::<GrpcSuccessResponse, _>(Status::unavailable("Temporal is down"))
                    }
                    .boxed(),
                }
            },
        ),
    };
    let options = ConnectionOptions::new(Url::parse("http://127.0.0.1:7233").unwrap())
        .service_override(service)
        .dns_load_balancing(None)
        .build();
    let connection = Connection::connect(options)
        .await
        .expect("connect to the stand-in");
    Client::new(
        connection,
        ClientOptions::new("default".to_string()).build(),
    )
    .expect("client")
}

/// GET /readyz from an API (on `app`'s database) whose Temporal client is `temporal`, and how
/// long the answer took.
async fn readyz_with(app: &TestApp, temporal: Client) -> (Answer, Duration) {
    let options = api::ApiOptions {
        probe_timeout: Duration::from_millis(500),
        ..api::ApiOptions::default()
    };
    let state = api::AppState::start(
        app.store.clone(),
        api::OperatorKeys::new([OPERATOR_KEY]),
        temporal,
        options,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(workers::app::serve(
        listener,
        state,
        BODY_LIMIT_BYTES,
        async move {
            let _ = stopped.await;
        },
    ));

    let started = Instant::now();
    let res = app
        .http
        .get(format!("{base_url}/readyz"))
        .send()
        .await
        .expect("request failed");
    let answer = tests::answer(res).await;
    let elapsed = started.elapsed();
    let _ = stop.send(());
    (answer, elapsed)
}

/// `/readyz` is 503 when Temporal does not answer.
#[tokio::test]
async fn readyz_is_503_when_temporal_does_not_answer() {
    let app = TestApp::spawn().await.unwrap();
    let temporal = temporal_that(Silence::Hangs).await;

    let (ready, elapsed) = readyz_with(&app, temporal).await;

    ready.assert_problem(503, "not_ready");
    let detail = ready.body["detail"].as_str().unwrap();
    assert!(detail.contains("temporal: unavailable"), "{detail}");
    assert!(detail.contains("postgres: ok"), "{detail}");
    // The probe timeout bounds the answer although the call itself never returns.
    assert!(elapsed < Duration::from_secs(10), "readyz took {elapsed:?}");
}

/// `/readyz` is 503 when Temporal refuses calls.
#[tokio::test]
async fn readyz_is_503_when_temporal_refuses_calls() {
    let app = TestApp::spawn().await.unwrap();
    let temporal = temporal_that(Silence::Refuses).await;

    let (ready, _) = readyz_with(&app, temporal).await;

    ready.assert_problem(503, "not_ready");
    let detail = ready.body["detail"].as_str().unwrap();
    assert!(detail.contains("temporal: unavailable"), "{detail}");
    assert!(detail.contains("postgres: ok"), "{detail}");
}
