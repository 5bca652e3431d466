//! The operator CLI: the real `creditflow` binary against a test database.

use std::process::Command;

use serde_json::Value;
use tests::{GROWTH, TestApp, worker::TestWorker};

fn creditflow(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    Cli::of(app).run(args)
}

/// The `creditflow` binary set up for one test app (its database, task queue, workflow ids).
#[derive(Clone)]
struct Cli {
    database_url: String,
    task_queue: String,
}

impl Cli {
    fn of(app: &TestApp) -> Cli {
        Cli {
            database_url: app.database_url.clone(),
            task_queue: app.task_queue.clone(),
        }
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let root = tests::workspace_root();
        let out = Command::new(root.join("target/debug/creditflow"))
            .args(args)
            .current_dir(&root)
            .env("CREDITFLOW_ENV", "test")
            .env("CREDITFLOW__DATABASE__URL", &self.database_url)
            .env("CREDITFLOW__TEMPORAL__TASK_QUEUE", &self.task_queue)
            // Workflow ids are global to the namespace: this test's summary runs are its own.
            .env(
                "CREDITFLOW__SUMMARIES__WORKFLOW_ID_PREFIX",
                format!("{}-", self.task_queue),
            )
            .env("CREDITFLOW__LOG__FILTER", "warn")
            .output()
            .expect("run creditflow (scripts/up builds it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`Cli::run`] on a blocking thread: the command may wait on this test's own servers.
    async fn run_async(&self, args: &[&str]) -> (bool, String, String) {
        let (cli, args) = (
            self.clone(),
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || {
            cli.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap()
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Operators create orgs, adjust credits and show balances from the CLI.
#[tokio::test]
async fn operators_create_orgs_adjust_credits_and_show_balances_from_the_cli() {
    let app = TestApp::spawn().await.unwrap();

    let (ok, out, err) = creditflow(&app, &["orgs", "create", "--name", "Cli Co"]);
    assert!(ok, "{err}");
    let created = json(&out);
    let org = created["org"]["id"].as_str().unwrap().to_string();
    let key = created["api_key"]["secret"].as_str().unwrap().to_string();
    assert!(key.starts_with("cf_"));
    let adjust = |amount: &str, k: &str| {
        creditflow(
            &app,
            &[
                "credits", "adjust", "--org", &org, "--amount", amount, "--reason", "goodwill",
                "--key", k,
            ],
        )
    };
    let (ok, first, err) = adjust("42.5", "k1");
    assert!(ok, "{err}");
    let (ok, again, _) = adjust("42.5", "k1");
    assert!(ok);
    let (ok, _, err) = adjust("-100", "k2");
    assert!(!ok && err.contains("insufficient balance"), "{err}");
    let (ok, _, err) = adjust("1.0000001", "k3");
    assert!(!ok && err.contains("decimal places"), "{err}");
    let (ok, shown, err) = creditflow(&app, &["orgs", "show", "--org", &org, "--last", "5"]);
    assert!(ok, "{err}");

    assert_eq!(
        json(&first),
        json(&again),
        "the same key moves credits once"
    );
    let shown = json(&shown);
    assert_eq!(shown["balance_credits"], "42.500000");
    assert_eq!(shown["totals"]["adjusted_credits"], "42.500000");
    assert_eq!(shown["transactions"].as_array().unwrap().len(), 1);
    assert_eq!(shown["transactions"][0]["actor"], "operator:cli");
    assert_eq!(
        app.balance(&tests::TestOrg {
            id: org.parse().unwrap(),
            key,
            key_id: uuid::Uuid::nil()
        })
        .await,
        "42.500000"
    );
    let (ok, _, err) = creditflow(
        &app,
        &["orgs", "show", "--org", &uuid::Uuid::now_v7().to_string()],
    );
    assert!(!ok && err.contains("organization not found"), "{err}");
    let (ok, verified, err) = creditflow(&app, &["verify-ledger"]);
    assert!(ok && verified.contains("ledger invariants hold"), "{err}");
}

/// Operators refund from the CLI once per key and wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_refund_from_the_cli_once_per_key_and_wait_for_it() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("cli-refund").await;
    let bought = app.buy_ready(&org, GROWTH).await;
    let purchase = bought["id"].as_str().unwrap().to_string();
    app.pay_checkout(bought["checkout_url"].as_str().unwrap(), "pm_card_visa")
        .await;
    app.wait_purchase(&org, &purchase, "credited").await;
    let cli = Cli::of(&app);
    let refund = |amount: &'static str, key: &'static str| {
        let (cli, purchase) = (cli.clone(), purchase.clone());
        async move {
            cli.run_async(&[
                "refunds",
                "create",
                "--purchase",
                &purchase,
                "--amount-minor",
                amount,
                "--reason",
                "customer asked",
                "--key",
                key,
                "--wait",
            ])
            .await
        }
    };

    // 30 % of the $50.00 payment: 1,500 of the 5,000 credits and 75 of the 250 bonus.
    let (ok, first, progress) = refund("1500", "cli-r1").await;
    let (again_ok, again, again_progress) = refund("1500", "cli-r1").await;
    let (too_much, _, refused) = refund("999999", "cli-r2").await;

    assert!(ok, "{progress}");
    assert!(progress.contains("reversed"), "{progress}");
    let first = json(&first);
    assert_eq!(first["state"], "reversed");
    assert_eq!(first["credits_reversed"], "1500.000000");
    assert_eq!(first["bonus_credits_reversed"], "75.000000");
    assert_eq!(first["requested_by"], "operator:cli");
    assert!(again_ok, "{again_progress}");
    assert_eq!(
        json(&again)["id"],
        first["id"],
        "the same key is the same refund"
    );
    assert!(
        !too_much && refused.contains("refund_not_allowed"),
        "{refused}"
    );
    assert_eq!(app.emulator_event_count("charge.refunded").await, 1);
    assert_eq!(app.balance(&org).await, "3675.000000");
    let (ok, shown, err) = cli.run(&["refunds", "show", "--id", first["id"].as_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(json(&shown)["state"], "reversed");
    app.assert_invariants().await;
}

/// Operators publish and read prices from the CLI.
#[tokio::test]
async fn operators_publish_and_read_prices_from_the_cli() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("cli-prices").await;
    let current = app.get("/v1/prices", &org.key).await.body;
    let mut models = current["ai_models"].clone();
    for m in models.as_array_mut().unwrap() {
        if m["model"] == "gpt-4o" {
            m["input_per_mtok_credits"] = serde_json::json!("321.5");
        }
    }
    let infra: Vec<Value> = current["infra"]
        .as_array()
        .unwrap()
        .iter()
        .map(
            |i| serde_json::json!({"resource": i["resource"], "price_credits": i["price_credits"]}),
        )
        .collect();
    let dir = std::env::temp_dir().join(format!("cf-cli-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let book = dir.join("prices.json");
    std::fs::write(
        &book,
        serde_json::json!({"note": "from the CLI", "ai_models": models, "infra": infra})
            .to_string(),
    )
    .unwrap();
    let mut negative = serde_json::json!({"ai_models": models, "infra": infra});
    negative["infra"][0]["price_credits"] = serde_json::json!("-1");
    let bad = dir.join("negative.json");
    std::fs::write(&bad, negative.to_string()).unwrap();
    let cli = Cli::of(&app);
    let versions_before: i64 = sqlx::query_scalar("SELECT count(*) FROM price_versions")
        .fetch_one(app.store.pool())
        .await
        .unwrap();

    let (ok, published, err) = cli.run(&["prices", "publish", "--file", book.to_str().unwrap()]);
    let (bad_ok, _, refused) = cli.run(&["prices", "publish", "--file", bad.to_str().unwrap()]);
    let (missing_ok, _, missing) = cli.run(&["prices", "publish", "--file", "/nonexistent.json"]);

    assert!(ok, "{err}");
    let published = json(&published);
    let version = published["version"].as_i64().unwrap();
    assert!(version > current["version"].as_i64().unwrap());
    let at = published["effective_from"].as_str().unwrap();
    let (ok, then, err) = cli.run(&["prices", "show", "--at", at]);
    assert!(ok, "{err}");
    let then = json(&then);
    assert_eq!(then["version"], version);
    let gpt4o = then["ai_models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "gpt-4o")
        .unwrap()
        .clone();
    assert_eq!(gpt4o["input_per_mtok_credits"], "321.5");
    let (ok, now, _) = cli.run(&["prices", "show"]);
    assert!(ok);
    assert_eq!(
        json(&now)["version"],
        current["version"],
        "not in force yet"
    );
    assert!(!bad_ok && refused.contains("negative_price"), "{refused}");
    assert!(!missing_ok && missing.contains("reading"), "{missing}");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM price_versions")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    // Counted, not compared with the version id: ids come from a sequence, which may skip
    // (after a crash, Postgres resumes a sequence past the values it had logged ahead).
    assert_eq!(
        versions,
        versions_before + 1,
        "the refused file wrote nothing"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Operators generate a past month from the CLI and not an open one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_generate_a_past_month_from_the_cli_and_not_an_open_one() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    for name in ["cli-sum-a", "cli-sum-b"] {
        app.create_org(name).await;
    }
    let cli = Cli::of(&app);
    let this_month = chrono::Utc::now().format("%Y-%m").to_string();

    let (ok, done, err) = cli
        .run_async(&["summaries", "run", "--month", "2024-01"])
        .await;
    let (open_ok, _, open) = cli
        .run_async(&["summaries", "run", "--month", &this_month])
        .await;

    assert!(ok, "{err}");
    assert!(err.contains("generating the summaries of 2024-01"), "{err}");
    assert!(
        done.contains("2024-01: 2 orgs, 2 summaries written"),
        "{done}"
    );
    assert!(!open_ok && open.contains("is not over yet"), "{open}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM monthly_summaries WHERE month = '2024-01-01'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, 2);
}
