//! The fault suite: its own binary, whose tests start `creditflow` processes of their own and
//! break them (SIGKILL), with bounded loops and deadlines. `scripts/test` runs it with the rest.
//! Needs the local stack (Postgres, Temporal) and the built `creditflow` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    AppOptions, OPERATOR_KEY, STARTER, TestApp, TestOrg, eventually, fresh_database,
    worker::{ProcessWorker, TestWorker},
    workspace_root,
};
use tokio::process::{Child, Command};

struct Api {
    child: Child,
    port: u16,
}

/// Starts `creditflow serve` on `port` against `db_url`; waits (at most 60 s) until ready.
async fn start_api(db_url: &str, port: u16) -> Api {
    start_api_with(db_url, port, &[]).await
}

/// As [`start_api`], with settings of the test's over the defaults (another task queue, the
/// test's own Stripe emulator).
async fn start_api_with(db_url: &str, port: u16, extra_env: &[(String, String)]) -> Api {
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
        .envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

/// Restarting Postgres breaks every test's connections: that test runs alone (write); the
/// others break only processes of their own and run side by side (read).
static SHARED: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
        store.ledger().check_invariants().await.unwrap(),
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
    let _shared = SHARED.read().await;
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
    let _alone = SHARED.write().await;
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

/// Ends the test's wait for a fault to last: the outage itself is the point, so this is the
/// one place the suite waits for time rather than for a condition.
async fn hold_outage(since: Instant, length: Duration) {
    tokio::time::sleep_until((since + length).into()).await;
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

/// The `Message-ID` of each mail the app's SMTP server took.
fn message_ids(app: &TestApp) -> Vec<String> {
    app.smtp
        .received()
        .iter()
        .map(|m| {
            m.data
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Message-ID:")
                        .or_else(|| l.strip_prefix("Message-Id:"))
                })
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

/// Buys `n` Starter packages for `org` and returns their ids and checkout pages.
async fn checkouts(app: &TestApp, org: &TestOrg, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let p = app.buy_ready(org, STARTER).await;
        out.push((
            p["id"].as_str().unwrap().to_string(),
            p["checkout_url"].as_str().expect("a checkout").to_string(),
        ));
    }
    out
}

/// (c) SIGKILL the worker while 20 paid purchases are being granted: each is credited once,
/// none is left behind, each buyer gets one receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_mid_grant_credits_each_purchase_once() {
    const PURCHASES: usize = 20;
    let _shared = SHARED.read().await;
    let app = TestApp::spawn_with(AppOptions {
        limits: api::RequestLimits {
            purchases_per_minute: 100,
            ..api::RequestLimits::default()
        },
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let org = app.create_org("faults-c").await;
    let bought = checkouts(&app, &org, PURCHASES).await;
    // A grant books the package against the `sales` system account: holding that row parks
    // every grant inside its transaction, so the kill lands mid-grant every time.
    let mut hold = app.store.pool().begin().await.unwrap();
    let holder = tests::backend_pid(&mut hold).await;
    sqlx::query("SELECT id FROM accounts WHERE code = 'sales' FOR UPDATE")
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    futures::future::join_all(
        bought
            .iter()
            .map(|(_, url)| app.pay_checkout(url, "pm_card_visa")),
    )
    .await;
    app.wait_blocked_by(holder, "a grant waiting for the sales account")
        .await;
    worker.kill();
    hold.rollback().await.unwrap();
    let parked = count(
        &app,
        "SELECT count(*) FROM transfers WHERE kind = 'purchase'",
    )
    .await;
    let _restarted = ProcessWorker::start(&app).unwrap();

    // The killed grants are retried once their start-to-close timeout (30 s) has passed.
    let deadline = Instant::now() + Duration::from_secs(150);
    for (id, _) in &bought {
        loop {
            let p = app.purchase(&org, id).await;
            if p["state"] == "credited" {
                break;
            }
            assert!(Instant::now() < deadline, "purchase {id} stuck: {p}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("faults (c): worker killed with {parked} of {PURCHASES} grants committed");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM transfers WHERE kind = 'purchase'"
        )
        .await,
        PURCHASES as i64
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(DISTINCT refs->>'purchase_id') FROM transfers WHERE kind = 'purchase'"
        )
        .await,
        PURCHASES as i64
    );
    assert_eq!(app.balance(&org).await, "20000.000000");
    // One receipt per purchase, none twice.
    let receipts = eventually("the receipts", Duration::from_secs(60), || async {
        let n = count(
            &app,
            "SELECT count(*) FROM email_sends WHERE state = 'sent'",
        )
        .await;
        (n == PURCHASES as i64).then_some(n)
    })
    .await;
    let mut ids = message_ids(&app);
    assert_eq!(ids.len() as i64, receipts);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), PURCHASES);
    app.assert_invariants().await;
}

/// (d) SMTP down for a minute while alerts and receipts are due: every mail arrives exactly
/// once after it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_for_a_minute_delays_every_mail_and_loses_or_doubles_none() {
    const ORGS: usize = 4;
    const PURCHASES: usize = 3;
    let _shared = SHARED.read().await;
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let buyer = app.create_org("faults-d-buyer").await;
    let bought = checkouts(&app, &buyer, PURCHASES).await;
    let mut orgs = Vec::new();
    for i in 0..ORGS {
        orgs.push(
            app.org_with_billing(&format!("faults-d-{i}"), "pm_card_visa", None, Some("50"))
                .await,
        );
    }

    app.smtp.set_accepting(false);
    let down = Instant::now();
    for (i, org) in orgs.iter().enumerate() {
        app.spend(org, &format!("dip-{i}"), 60).await;
    }
    for (_, url) in &bought {
        app.pay_checkout(url, "pm_card_visa").await;
    }
    for (id, _) in &bought {
        app.wait_purchase(&buyer, id, "credited").await;
    }
    eventually("refused deliveries", Duration::from_secs(60), || async {
        (app.smtp.refused() as usize >= ORGS + PURCHASES).then_some(())
    })
    .await;
    hold_outage(down, Duration::from_secs(60)).await;
    let refused = app.smtp.refused();
    app.smtp.set_accepting(true);

    let expected = (ORGS + PURCHASES) as i64;
    eventually("every mail sent", Duration::from_secs(120), || async {
        let sent = count(
            &app,
            "SELECT count(*) FROM email_sends WHERE state = 'sent'",
        )
        .await;
        (sent == expected).then_some(())
    })
    .await;
    eprintln!("faults (d): SMTP down 60 s, {refused} sessions refused meanwhile");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM email_sends WHERE state <> 'sent'"
        )
        .await,
        0
    );
    let mut ids = message_ids(&app);
    assert_eq!(ids.len() as i64, expected, "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as i64, expected, "a mail arrived twice");
    for org in &orgs {
        let alerts = app
            .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
            .await;
        let data = alerts.body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{}", alerts.text);
        assert_eq!(data[0]["state"], "sent", "{}", alerts.text);
    }
}

/// (e) Temporal unreachable for a minute (this app's API and worker reach it through a proxy
/// the test cuts): purchases answer 503 problem+json, usage keeps flowing, and the alert and
/// topup its crossing owes are made once after it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_down_for_a_minute_refuses_purchases_and_keeps_usage_flowing() {
    let _shared = SHARED.read().await;
    let app = TestApp::spawn_with(AppOptions {
        temporal_proxy: true,
        ..AppOptions::default()
    })
    .await
    .unwrap();
    let proxy = app.temporal_proxy.clone().unwrap();
    let _worker = ProcessWorker::start(&app).unwrap();
    let org = app
        .org_with_billing(
            "faults-e",
            "pm_card_visa",
            Some(("50", 100_000)),
            Some("60"),
        )
        .await;
    // The worker is up and polling before the cut.
    app.buy_ready(&org, STARTER).await;

    proxy.set_up(false);
    let down = Instant::now();
    app.buy(&org, STARTER)
        .await
        .assert_problem(503, "workflow_unavailable");
    // Usage goes on all minute: 70 credits at once (below both thresholds), then one a second.
    app.spend(&org, "dip", 70).await;
    let mut spent = 70u64;
    let mut n = 0;
    while down.elapsed() < Duration::from_secs(60) {
        app.spend(&org, &format!("during-{n}"), 1).await;
        spent += 1;
        n += 1;
        hold_outage(Instant::now(), Duration::from_secs(1)).await;
    }
    app.buy(&org, STARTER)
        .await
        .assert_problem(503, "workflow_unavailable");
    assert!(app.topups(&org).await.is_empty());
    proxy.set_up(true);

    let topup = eventually("the topup after", Duration::from_secs(120), || async {
        app.topups(&org)
            .await
            .into_iter()
            .find(|t| t["state"] != "running")
    })
    .await;
    assert_eq!(topup["state"], "succeeded", "{topup}");
    eventually("the alert after", Duration::from_secs(120), || async {
        let a = app
            .get(&format!("/v1/orgs/{}/alerts", org.id), &org.key)
            .await;
        let data = a.body["data"].as_array().cloned().unwrap_or_default();
        (data.len() == 1 && data[0]["state"] == "sent").then_some(())
    })
    .await;
    eprintln!("faults (e): Temporal down 60 s, {n} usage requests accepted meanwhile");
    assert_eq!(app.topups(&org).await.len(), 1);
    assert_eq!(
        app.emulator_event_count("payment_intent.succeeded").await,
        1
    );
    assert_eq!(
        app.balance(&org).await,
        format!("{}.000000", 100 - spent as i64 + 1000)
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL"
        )
        .await,
        0
    );
    app.assert_invariants().await;
}

/// (f) Two API processes and two workers on one Postgres and Temporal: one hot org spending
/// through both APIs at once, four times below its threshold; one topup per crossing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_and_two_workers_top_up_once_per_crossing() {
    const ROUNDS: usize = 4;
    let _shared = SHARED.read().await;
    let app = TestApp::spawn().await.unwrap();
    let mut env: Vec<(String, String)> = app
        .worker_env()
        .into_iter()
        .filter(|(k, _)| k != "CREDITFLOW__METRICS__BIND")
        .collect();
    env.push((
        "CREDITFLOW__STRIPE__WEBHOOK_SECRET".into(),
        tests::WEBHOOK_SECRET.into(),
    ));
    let second = start_api_with(&app.database_url, free_port(), &env).await;
    let bases = [
        app.base_url.clone(),
        format!("http://127.0.0.1:{}", second.port),
    ];
    let _workers = [
        ProcessWorker::start(&app).unwrap(),
        ProcessWorker::start(&app).unwrap(),
    ];
    let org = app
        .org_with_billing("faults-f", "pm_card_visa", Some(("50", 1_000_000)), None)
        .await;
    let mut balance = 100u64;
    for round in 0..ROUNDS {
        // Down to 40 through both APIs at once (60 requests of 1 credit from 100, then 50 of
        // 20 from 1,040): every request after the one that crosses is still below the threshold.
        let (requests, each) = if balance == 100 { (60, 1) } else { (50, 20) };
        assert_eq!(requests * each, balance - 40);
        let sends = (0..requests).map(|i| {
            let (http, base, key) = (
                app.http.clone(),
                bases[i as usize % 2].clone(),
                org.key.clone(),
            );
            async move {
                let e = json!({"id": format!("r{round}-{i}"), "type": "ai_tokens",
                    "occurred_at": chrono::Utc::now().to_rfc3339(),
                    "model": "gpt-4o", "input_tokens": each * 4000});
                let r = http
                    .post(format!("{base}/v1/usage"))
                    .bearer_auth(&key)
                    .json(&json!({"events": [e]}))
                    .send()
                    .await
                    .unwrap();
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["accepted"], 1, "{v}");
            }
        });
        futures::future::join_all(sends).await;
        eventually(
            &format!("topup {}", round + 1),
            Duration::from_secs(90),
            || async {
                let t = app.topups(&org).await;
                (t.len() == round + 1 && t.iter().all(|t| t["state"] == "succeeded")).then_some(())
            },
        )
        .await;
        balance = 40 + 1000;
        assert_eq!(app.balance(&org).await, format!("{balance}.000000"));
    }
    assert_eq!(
        app.emulator_event_count("payment_intent.succeeded").await,
        ROUNDS
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM transfers WHERE kind = 'topup'").await,
        ROUNDS as i64
    );
    eprintln!("faults (f): {ROUNDS} crossings through two APIs and two workers, {ROUNDS} topups");
    app.assert_invariants().await;
    drop(second);
}
