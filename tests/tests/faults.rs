//! The fault suite: its own binary, whose tests start `creditflow` processes of their own and
//! break them (SIGKILL), with bounded loops and deadlines. `scripts/test` runs it with the rest.
//! Needs the local stack (Postgres, Temporal) and the built `creditflow` binary.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{OPERATOR_KEY, fresh_database, workspace_root};
use tokio::process::{Child, Command};

struct Api {
    child: Child,
    port: u16,
}

/// Starts `creditflow serve` on `port` against `db_url`; waits (at most 60 s) until ready.
async fn start_api(db_url: &str, port: u16) -> Api {
    let bin = workspace_root().join("target/debug/creditflow");
    assert!(
        bin.exists(),
        "build the binary first (cargo build): {}",
        bin.display()
    );
    let child = Command::new(bin)
        .arg("serve")
        .current_dir(workspace_root())
        .env("CREDITFLOW_ENV", "dev")
        .env("CREDITFLOW__DATABASE__URL", db_url)
        .env("CREDITFLOW__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("CREDITFLOW__AUTH__OPERATOR_KEYS", OPERATOR_KEY)
        .env("CREDITFLOW__LOG__FILTER", "warn")
        .env("CREDITFLOW__METRICS__BIND", "")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("creditflow serve starts");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            return Api { child, port };
        }
        assert!(Instant::now() < deadline, "the API was not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fault tests break shared processes (Postgres): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn create_org(http: &reqwest::Client, base: &str) -> (String, String) {
    let created: Value = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"name": "faults"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        created["org"]["id"].as_str().unwrap().to_string(),
        created["api_key"]["secret"].as_str().unwrap().to_string(),
    )
}

/// Sends `batches` batches of 100 one-credit events for client `c`, each retried with the same
/// ids until it is answered in full (at most 120 s each); counts batches done and retries.
fn client(
    http: reqwest::Client,
    base: String,
    key: String,
    c: u64,
    batches: u64,
    done: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let at = chrono::Utc::now().to_rfc3339();
    tokio::spawn(async move {
        for b in 0..batches {
            // 4,000 gpt-4o input tokens: 1 credit each.
            let events: Vec<Value> = (0..100)
                .map(|i| {
                    json!({"id": format!("c{c}-b{b}-e{i}"), "type": "ai_tokens",
                                "occurred_at": at, "model": "gpt-4o", "input_tokens": 4000})
                })
                .collect();
            let body = json!({ "events": events });
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let answer = http
                    .post(format!("{base}/v1/usage"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                if let Ok(r) = answer
                    && r.status().is_success()
                {
                    let v: Value = r.json().await.unwrap_or_default();
                    let settled =
                        v["accepted"].as_u64().unwrap_or(0) + v["duplicates"].as_u64().unwrap_or(0);
                    if settled == 100 {
                        break;
                    }
                }
                retries.fetch_add(1, Ordering::Relaxed);
                assert!(Instant::now() < deadline, "batch {c}/{b} never answered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Waits (at most 120 s) until `done` reaches `target`.
async fn wait_done(done: &AtomicU64, target: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "the load stalled before {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_exact(db_url: &str, base: &str, org: &str, key: &str, events: i64) {
    let pool = sqlx::PgPool::connect(db_url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, events);
    let balance: Value = reqwest::Client::new()
        .get(format!("{base}/v1/orgs/{org}/balance"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        balance["balance_credits"],
        format!("-{events}.000000"),
        "{balance}"
    );
    let store = store::Store::from_pool(pool).await.unwrap();
    assert_eq!(
        store.check_invariants().await.unwrap(),
        Vec::<String>::new()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (a) SIGKILL the API three times while 4 clients send 20,000 usage events, each batch
/// retried with the same ids until answered: exactly 20,000 recorded, the balance exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_api_mid_load_loses_and_doubles_nothing() {
    const CLIENTS: u64 = 4;
    const BATCHES: u64 = 50; // per client, of 100 events: 20,000 in all
    let _serial = SERIAL.lock().await;
    let db_url = fresh_database().await.unwrap();
    let mut api = start_api(&db_url, free_port()).await;
    let base = format!("http://127.0.0.1:{}", api.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (org, key) = create_org(&http, &base).await;
    let (done, retries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            client(
                http.clone(),
                base.clone(),
                key.clone(),
                c,
                BATCHES,
                done.clone(),
                retries.clone(),
            )
        })
        .collect();

    // Three kills, spread over the load; each time a new process takes the same port.
    for kill in 1..=3u64 {
        wait_done(&done, kill * CLIENTS * BATCHES / 4, &format!("kill {kill}")).await;
        api.child.start_kill().unwrap(); // SIGKILL
        let _ = api.child.wait().await;
        api = start_api(&db_url, api.port).await;
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(300), c)
            .await
            .expect("the clients finished")
            .unwrap();
    }
    eprintln!(
        "faults (a): 3 kills, {} retried requests",
        retries.load(Ordering::Relaxed)
    );
    assert_exact(&db_url, &base, &org, &key, 20_000).await;
    drop(api);
}

/// (b) Postgres restarted (as after a crash) mid-load: the API answers 503 meanwhile, `/readyz`
/// recovers without restarting the service, and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_mid_load_loses_and_doubles_nothing() {
    const CLIENTS: u64 = 2;
    const BATCHES: u64 = 50;
    let _serial = SERIAL.lock().await;
    let db_url = fresh_database().await.unwrap();
    let api = start_api(&db_url, free_port()).await;
    let base = format!("http://127.0.0.1:{}", api.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (org, key) = create_org(&http, &base).await;
    let (done, retries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            client(
                http.clone(),
                base.clone(),
                key.clone(),
                c,
                BATCHES,
                done.clone(),
                retries.clone(),
            )
        })
        .collect();

    wait_done(&done, CLIENTS * BATCHES / 3, "the restart").await;
    let restart = Command::new(workspace_root().join("scripts/pg-restart"))
        .status()
        .await
        .unwrap();
    assert!(restart.success(), "scripts/pg-restart failed");
    // The same process becomes ready again by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz did not recover in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(300), c)
            .await
            .expect("the clients finished")
            .unwrap();
    }
    eprintln!(
        "faults (b): Postgres restarted, {} retried requests",
        retries.load(Ordering::Relaxed)
    );
    assert_exact(&db_url, &base, &org, &key, 10_000).await;
    drop(api);
}
