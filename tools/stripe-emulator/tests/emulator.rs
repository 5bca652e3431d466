//! The emulator over real HTTP: `Idempotency-Key` applied once under concurrency, and webhook
//! deliveries retried until the endpoint answers 2xx.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use serde_json::Value;
use stripe_emulator::{Config, Emulator};

const SECRET: &str = "whsec_emulator_test";
const KEY: &str = "sk_test_emulator";

/// Serves the emulator on a loopback port; returns its base URL.
async fn start(webhook_url: Option<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let emulator = Emulator::new(Config {
        webhook_url,
        webhook_secret: SECRET.into(),
        public_url: url.clone(),
    });
    let router = emulator.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

async fn events(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let v: Value = http
        .get(format!("{base}/_emulator/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

const CHARGE: &str = "amount=2000&currency=usd&customer=cus_test_1&payment_method=pm_card_visa&confirm=true&off_session=true";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_requests_with_one_idempotency_key_create_one_object() {
    let base = start(None).await;
    let http = reqwest::Client::new();

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (http, base) = (http.clone(), base.clone());
        requests.spawn(async move {
            let r = http
                .post(format!("{base}/v1/payment_intents"))
                .bearer_auth(KEY)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("idempotency-key", "charge-1")
                .body(CHARGE)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let body: Value = r.json().await.unwrap();
            (status, replayed, body)
        });
    }
    let answers = requests.join_all().await;

    assert!(
        answers.iter().all(|(status, _, _)| *status == 200),
        "{answers:?}"
    );
    let first_id = answers[0].2["id"].as_str().unwrap().to_string();
    assert!(first_id.starts_with("pi_"), "{first_id}");
    assert!(
        answers.iter().all(|(_, _, b)| b["id"] == first_id.as_str()),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1,
        "exactly one request ran, the others replayed it"
    );
    let listed: Value = http
        .get(format!("{base}/v1/payment_intents?limit=100"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    let succeeded = events(&http, &base)
        .await
        .into_iter()
        .filter(|e| e["type"] == "payment_intent.succeeded")
        .count();
    assert_eq!(succeeded, 1);

    // The same key with other parameters is refused, and creates nothing.
    let other = http
        .post(format!("{base}/v1/payment_intents"))
        .bearer_auth(KEY)
        .header("idempotency-key", "charge-1")
        .body("amount=999&currency=usd&payment_method=pm_card_visa")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400);
    let error: Value = other.json().await.unwrap();
    assert_eq!(error["error"]["type"], "idempotency_error");
    assert_eq!(events(&http, &base).await.len(), 1);
}

/// What the test's webhook endpoint received: (Stripe-Signature, body), in order.
#[derive(Clone, Default)]
struct Endpoint {
    received: Arc<Mutex<Vec<(String, String)>>>,
}

/// Fails the first two deliveries with 500, then accepts.
async fn receive(State(endpoint): State<Endpoint>, headers: HeaderMap, body: String) -> StatusCode {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut received = endpoint.received.lock().unwrap();
    received.push((signature, body));
    if received.len() <= 2 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answered_non_2xx_is_retried_with_the_same_signed_event() {
    let endpoint = Endpoint::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(endpoint.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let base = start(Some(hook_url)).await;
    let http = reqwest::Client::new();

    let charged = http
        .post(format!("{base}/v1/payment_intents"))
        .bearer_auth(KEY)
        .body(CHARGE)
        .send()
        .await
        .unwrap();
    assert_eq!(charged.status(), 200);
    // Delivered once the endpoint answers 2xx (the emulator counts only accepted deliveries).
    let began = Instant::now();
    loop {
        let emitted = events(&http, &base).await;
        if emitted.first().is_some_and(|e| e["delivered"] == 1) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "no accepted delivery after 15 s: {emitted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let received = endpoint.received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        3,
        "two failed deliveries, then one accepted"
    );
    let ids: Vec<String> = received
        .iter()
        .map(|(_, body)| {
            let event: Value = serde_json::from_str(body).unwrap();
            assert_eq!(event["type"], "payment_intent.succeeded");
            event["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ids[0].starts_with("evt_"), "{ids:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    for (signature, body) in &received {
        let t: i64 = signature
            .split(',')
            .find_map(|part| part.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in {signature}"));
        assert_eq!(*signature, stripe_emulator::sign(SECRET, t, body));
        assert_ne!(*signature, stripe_emulator::sign("whsec_other", t, body));
    }
}

#[tokio::test]
async fn a_session_expiry_outside_30_minutes_to_24_hours_is_refused_like_stripe() {
    let base = start(None).await;
    let http = reqwest::Client::new();
    let create = |expires_at: i64| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v1/checkout/sessions"))
                .bearer_auth(KEY)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "mode=payment&line_items[0][price_data][unit_amount]=5000\
                     &line_items[0][price_data][currency]=usd&line_items[0][quantity]=1\
                     &success_url=http://x/s&expires_at={expires_at}"
                ))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    assert_eq!(create(now + 29 * 60).await, 400);
    assert_eq!(create(now + 25 * 3600).await, 400);
    assert_eq!(create(now + 31 * 60).await, 200);
    assert_eq!(create(now + 23 * 3600).await, 200);
}
