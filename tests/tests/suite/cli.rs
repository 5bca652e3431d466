//! The operator CLI: the real `creditflow` binary against a test database.

use std::process::Command;

use serde_json::Value;
use tests::TestApp;

fn creditflow(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let root = tests::workspace_root();
    let out = Command::new(root.join("target/debug/creditflow"))
        .args(args)
        .current_dir(&root)
        .env("CREDITFLOW_ENV", "test")
        .env("CREDITFLOW__DATABASE__URL", &app.database_url)
        .env("CREDITFLOW__LOG__FILTER", "warn")
        .output()
        .expect("run creditflow (scripts/up builds it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

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
