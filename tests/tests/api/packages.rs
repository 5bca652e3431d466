//! Versioned packages: changing what a package sells makes a new version, the catalog shows
//! the current one, and purchases keep the version they bought.
use reqwest::Method;
use serde_json::{Value, json};
use tests::{OPERATOR_KEY, TestApp};
use uuid::Uuid;

fn body(name: &str, price_minor: i64) -> Value {
    json!({"name": name, "price_minor": price_minor, "currency": "usd", "base_credits": "1000",
           "bonus_credits": "100"})
}

async fn put(app: &TestApp, id: &str, b: Value) -> tests::Answer {
    app.call(
        Method::PUT,
        &format!("/v1/packages/{id}"),
        Some(OPERATOR_KEY),
        Some(&b),
        &[],
    )
    .await
}

async fn versions(app: &TestApp, id: &str, key: &str) -> Vec<(i64, i64, String)> {
    let a = app.get(&format!("/v1/packages/{id}/versions"), key).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["price_minor"].as_i64().unwrap(),
                v["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A purchase of the package's current version, as the checkout records it.
async fn purchase_of(app: &TestApp, org: &tests::TestOrg, id: &str) -> (Uuid, Value) {
    let package = app
        .store
        .packages()
        .package(id.parse::<Uuid>().unwrap())
        .await
        .unwrap();
    let (p, _) = app
        .store
        .purchases()
        .create_purchase(
            org.id,
            &package,
            "ana",
            None,
            chrono::Utc::now(),
            None,
            None,
        )
        .await
        .unwrap();
    (p.id, package_of(app, org, p.id).await)
}

async fn package_of(app: &TestApp, org: &tests::TestOrg, purchase: Uuid) -> Value {
    let a = app
        .get(&format!("/v1/purchases/{purchase}"), &org.key)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["package"].clone()
}

/// Changing a package's price makes a new version; renaming does not; purchases keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_makes_a_new_version_and_purchases_keep_theirs() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("versions").await;
    let created = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&body("Pro", 1000)),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["version"], 1);
    let id = created.body["id"].as_str().unwrap().to_string();
    let (first_id, first) = purchase_of(&app, &org, &id).await;
    assert_eq!(
        (first["version"].as_i64(), first["price_minor"].as_i64()),
        (Some(1), Some(1000))
    );

    // A new name only: the same version.
    let renamed = put(&app, &id, body("Pro monthly", 1000)).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(renamed.body["version"], 1);
    // A new price: version 2, shown by the catalog.
    let repriced = put(&app, &id, body("Pro monthly", 1200)).await;
    assert_eq!(repriced.status, 200, "{}", repriced.text);
    assert_eq!(repriced.body["version"], 2);
    let listed = app.get("/v1/packages", &org.key).await;
    let mine: Vec<&Value> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{}", listed.text);
    assert_eq!(
        (mine[0]["version"].as_i64(), mine[0]["price_minor"].as_i64()),
        (Some(2), Some(1200))
    );
    // The first purchase still shows what it bought; a new one buys version 2.
    let old = package_of(&app, &org, first_id).await;
    assert_eq!(
        (old["version"].as_i64(), old["price_minor"].as_i64()),
        (Some(1), Some(1000))
    );
    let (_, second) = purchase_of(&app, &org, &id).await;
    assert_eq!(
        (second["version"].as_i64(), second["price_minor"].as_i64()),
        (Some(2), Some(1200))
    );

    // Bad input changes nothing.
    put(&app, &id, body("Pro monthly", 0))
        .await
        .assert_problem(422, "invalid_package");
    // Two changes at once: each its own version, none lost or doubled.
    let (x, y) = tokio::join!(
        put(&app, &id, body("Pro monthly", 1300)),
        put(&app, &id, body("Pro monthly", 1400))
    );
    assert_eq!((x.status.as_u16(), y.status.as_u16()), (200, 200));
    let mut got = [
        x.body["version"].as_i64().unwrap(),
        y.body["version"].as_i64().unwrap(),
    ];
    got.sort_unstable();
    assert_eq!(got, [3, 4]);
    let all = versions(&app, &id, &org.key).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[0], (1, 1000, "Pro".to_string()));
    assert_eq!(all[1], (2, 1200, "Pro monthly".to_string()));
    app.get(
        &format!("/v1/packages/{}/versions", Uuid::now_v7()),
        &org.key,
    )
    .await
    .assert_problem(404, "not_found");
}

/// A pay-what-you-want package: the buyer chooses the amount within its bounds, the purchase
/// buys `amount × credits per unit` credits at that price, and its grant's cost basis is what
/// was paid per credit; a fixed package takes no amount; auto-topup refuses such a package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_what_you_want_buys_credits_at_the_amount_paid() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("pwyw").await;
    let created = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&json!({"name": "Any amount", "currency": "usd",
                         "pay_what_you_want": {"credits_per_unit": "120", "min_minor": 500,
                                               "max_minor": 50000}})),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["price_minor"], 500, "the least amount");
    assert_eq!(created.body["base_credits"], "600.000000");
    assert_eq!(created.body["pay_what_you_want"]["min_minor"], 500);
    let id = created.body["id"].as_str().unwrap().to_string();
    // Both ways at once is refused, as are bounds that make no sense.
    for bad in [
        json!({"name": "x", "currency": "usd", "price_minor": 500,
               "pay_what_you_want": {"credits_per_unit": "1", "min_minor": 1, "max_minor": 2}}),
        json!({"name": "x", "currency": "usd",
               "pay_what_you_want": {"credits_per_unit": "1", "min_minor": 5, "max_minor": 2}}),
        json!({"name": "x", "currency": "usd",
               "pay_what_you_want": {"credits_per_unit": "0", "min_minor": 1, "max_minor": 2}}),
    ] {
        app.call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&bad),
            &[],
        )
        .await
        .assert_problem(422, "invalid_package");
    }
    app.call(
        Method::POST,
        "/v1/packages",
        Some(OPERATOR_KEY),
        Some(&json!({"name": "x", "currency": "usd", "base_credits": "5"})),
        &[],
    )
    .await
    .assert_problem(422, "missing_field");

    let buy = |amount: Option<i64>, package: String| {
        let (app, org) = (&app, &org);
        async move {
            let mut body = json!({"package_id": package, "user": "ana@acme.test"});
            if let Some(a) = amount {
                body["amount_minor"] = json!(a);
            }
            app.call(
                Method::POST,
                "/v1/purchases",
                Some(&org.key),
                Some(&body),
                &[],
            )
            .await
        }
    };
    buy(None, id.clone())
        .await
        .assert_problem(422, "missing_field");
    buy(Some(499), id.clone())
        .await
        .assert_problem(422, "amount_out_of_range");
    buy(Some(50_001), id.clone())
        .await
        .assert_problem(422, "amount_out_of_range");
    buy(Some(1000), "01970000-0000-7000-8000-000000000001".into())
        .await
        .assert_problem(422, "amount_not_allowed");

    // Bought at $25.01 (as the checkout would: the store's purchase of the priced snapshot).
    let package = app
        .store
        .packages()
        .package(id.parse().unwrap())
        .await
        .unwrap()
        .priced_at(Some(2_501))
        .unwrap();
    let purchase = tests::credited_purchase(&app.store, org.id, &package, "pi_pwyw").await;
    let seen = app
        .get(&format!("/v1/purchases/{purchase}"), &org.key)
        .await;
    assert_eq!(seen.body["package"]["price_minor"], 2501, "{}", seen.text);
    assert_eq!(seen.body["package"]["base_credits"], "3001.200000");
    assert_eq!(app.balance(&org).await, "3001.200000");
    let grants = app
        .get(&format!("/v1/orgs/{}/grants", org.id), &org.key)
        .await;
    let g = &grants.body["data"][0];
    assert_eq!(g["source"], "purchase", "{}", grants.text);
    assert_eq!(g["cost_basis_minor_per_credit"], "0.833333333333");
    // Half the money back: half the credits.
    let r = app
        .store
        .refunds()
        .request_refund(
            store::RefundOf::Purchase(purchase),
            1250,
            "asked",
            "op",
            "half",
        )
        .await
        .unwrap();
    assert_eq!(r.credits.to_string(), "1500.000000");

    // Auto-topup buys fixed packages only.
    let saved = app
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/payment-method", org.id),
            Some(OPERATOR_KEY),
            Some(
                &json!({"payment_method_id": "pm_card_visa", "customer_id": "cus_test_1",
                         "user": "ana@acme.test"}),
            ),
            &[],
        )
        .await;
    assert_eq!(saved.status, 200, "{}", saved.text);
    app.call(
        Method::PUT,
        &format!("/v1/orgs/{}/billing-settings", org.id),
        Some(&org.key),
        Some(
            &json!({"auto_topup": {"enabled": true, "threshold_credits": "10",
                                    "package_id": id, "monthly_cap_minor": 10000}}),
        ),
        &[],
    )
    .await
    .assert_problem(422, "invalid_package");
    app.assert_invariants().await;
}

/// A pay-what-you-want purchase with one `Idempotency-Key`: the same amount twice is one
/// purchase; another amount with that key is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_what_you_want_amount_is_part_of_the_purchase_key() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("pwyw-key").await;
    let created = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&json!({"name": "Any", "currency": "usd",
                         "pay_what_you_want": {"credits_per_unit": "100", "min_minor": 100,
                                               "max_minor": 10000}})),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let package = app
        .store
        .packages()
        .package(created.body["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    let buy = |amount: i64| {
        let (store, package) = (app.store.clone(), package.clone());
        async move {
            store
                .purchases()
                .create_purchase(
                    org.id,
                    &package.priced_at(Some(amount)).unwrap(),
                    "ana",
                    None,
                    chrono::Utc::now(),
                    Some("buy-1"),
                    None,
                )
                .await
        }
    };
    let (first, fresh) = buy(1500).await.unwrap();
    assert!(fresh);
    let (again, fresh) = buy(1500).await.unwrap();
    assert!(!fresh);
    assert_eq!(again.id, first.id);
    assert!(matches!(
        buy(2000).await,
        Err(store::StoreError::IdempotencyConflict)
    ));
}
