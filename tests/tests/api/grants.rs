//! Credit grants from outside: restricted promotional credits, package bonuses that expire on
//! the clock, refunds that take back unspent paid credits only, operator grants (idempotent,
//! bad input refused), and the migration that gives round-1 balances their grants.
use std::str::FromStr;

use chrono::{DateTime, Duration as Days, SubsecRound, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tests::{OPERATOR_KEY, TestApp, TestOrg};
use uuid::Uuid;

fn credits(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

async fn grants(app: &TestApp, org: &TestOrg, query: &str) -> Vec<Value> {
    let a = app
        .get(&format!("/v1/orgs/{}/grants{query}", org.id), &org.key)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["data"].as_array().unwrap().clone()
}

/// The grant of `source` (the only one), as listed.
async fn grant_of(app: &TestApp, org: &TestOrg, source: &str) -> Value {
    let mut all = grants(app, org, &format!("?source={source}")).await;
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

async fn promo(app: &TestApp, org: &TestOrg, body: Value, key: &str) -> tests::Answer {
    app.call(
        Method::POST,
        &format!("/v1/orgs/{}/grants", org.id),
        Some(OPERATOR_KEY),
        Some(&body),
        &[("idempotency-key", key)],
    )
    .await
}

/// Spends `credits` of claude-haiku-3.5 input (80 credits per million tokens).
async fn spend_haiku(app: &TestApp, org: &TestOrg, id: &str, credits: u64) {
    let e = json!({"id": id, "type": "ai_tokens", "occurred_at": Utc::now().to_rfc3339(),
                   "model": "claude-haiku-3.5", "input_tokens": credits * 12_500});
    let a = app
        .call(
            Method::POST,
            "/v1/usage",
            Some(&org.key),
            Some(&json!({"events": [e]})),
            &[],
        )
        .await;
    assert_eq!(a.body["accepted"], 1, "{}", a.text);
}

/// The grant moves of the org's latest transfer, as the history lists them: (grant, amount).
async fn last_moves(app: &TestApp, org: &TestOrg) -> Vec<(Option<String>, Decimal)> {
    let a = app
        .get(
            &format!("/v1/orgs/{}/transactions?limit=1", org.id),
            &org.key,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["data"][0]["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["grant_id"].as_str().map(str::to_string),
                credits(m["amount"].as_str().unwrap()),
            )
        })
        .collect()
}

/// A promotional grant restricted to one model pays only for that model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotional_grant_for_one_model_pays_only_for_that_model() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("promo-model").await;
    let paid = app.adjust(org.id, "10", "seed", "seed").await;
    assert_eq!(paid.status, 201, "{}", paid.text);
    let p = promo(
        &app,
        &org,
        json!({"amount_credits": "5", "applies_to": {"models": ["gpt-4o"]},
               "reason": "launch offer"}),
        "promo-1",
    )
    .await;
    assert_eq!(p.status, 201, "{}", p.text);
    assert_eq!(p.body["source"], "promo");
    assert_eq!(p.body["category"], "promotional");
    assert_eq!(p.body["priority"], 50);
    let promo_id = p.body["id"].as_str().unwrap().to_string();
    let adjustment_id = grant_of(&app, &org, "adjustment").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Another model never touches it.
    spend_haiku(&app, &org, "haiku-1", 2).await;
    assert_eq!(
        last_moves(&app, &org).await,
        vec![(Some(adjustment_id.clone()), credits("-2"))]
    );
    // Its model takes it first (the narrowest grant), then the rest from the plain grant.
    app.spend(&org, "gpt-1", 3).await;
    assert_eq!(
        last_moves(&app, &org).await,
        vec![(Some(promo_id.clone()), credits("-3"))]
    );
    app.spend(&org, "gpt-2", 4).await;
    assert_eq!(
        last_moves(&app, &org).await,
        vec![
            (Some(promo_id.clone()), credits("-2")),
            (Some(adjustment_id.clone()), credits("-2"))
        ]
    );
    // Past every grant it may use, usage of the other model overdraws even though no grant is
    // left for it: the overdraft is its own remainder.
    spend_haiku(&app, &org, "haiku-2", 7).await;
    assert_eq!(
        last_moves(&app, &org).await,
        vec![
            (Some(adjustment_id.clone()), credits("-6")),
            (None, credits("-1"))
        ]
    );
    let promo_now = grant_of(&app, &org, "promo").await;
    assert_eq!(promo_now["remaining_credits"], "0.000000");
    assert_eq!(promo_now["consumed_credits"], "5.000000");
    assert_eq!(promo_now["state"], "depleted");
    assert_eq!(app.balance(&org).await, "-1.000000");

    // A restricted grant keeps its credits for its model: it does not repay the overdraft the
    // other model made; the next unrestricted grant does, first.
    let p2 = promo(
        &app,
        &org,
        json!({"amount_credits": "3", "applies_to": {"models": ["gpt-4o"]},
               "reason": "sorry"}),
        "promo-2",
    )
    .await;
    assert_eq!(p2.status, 201, "{}", p2.text);
    assert_eq!(p2.body["remaining_credits"], "3.000000", "{}", p2.text);
    assert_eq!(app.balance(&org).await, "2.000000");
    let plain = app.adjust(org.id, "4", "top", "top").await;
    assert_eq!(plain.status, 201, "{}", plain.text);
    assert_eq!(
        last_moves(&app, &org).await,
        vec![
            (
                Some(plain.body["id"].as_str().unwrap().to_string()),
                credits("4")
            ),
            (
                Some(plain.body["id"].as_str().unwrap().to_string()),
                credits("-1")
            ),
            (None, credits("1"))
        ]
    );
    assert_eq!(app.balance(&org).await, "6.000000");
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.body["totals"]["promo_credits"], "8.000000", "{}", b.text);
    app.assert_invariants().await;
}

/// A package of 80 credits + 20 bonus for $10.00 with its bonus expiring 90 days after the
/// purchase, bought at the clock's time (no checkout: the purchase is paid and credited as the
/// workflow would).
async fn bought(app: &TestApp, store: &store::Store, org: &TestOrg, body: Value) -> Uuid {
    let pkg = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(pkg.status, 201, "{}", pkg.text);
    let package = store
        .packages()
        .package(pkg.body["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    tests::credited_purchase(
        store,
        org.id,
        &package,
        &format!("pi_{}", Uuid::now_v7().simple()),
    )
    .await
}

fn hundred(bonus_expires_after_days: Option<u32>) -> Value {
    json!({"name": "Hundred", "price_minor": 1000, "currency": "usd", "base_credits": "80",
           "bonus_credits": "20", "bonus_expires_after_days": bonus_expires_after_days})
}

/// Bonus credits of a package with `bonus_expires_after_days` expire on time, exactly once,
/// at their instant; usage before consumes the bonus first (it expires first); a read after
/// the instant never counts them, even before the sweep; the summary and the ledger's check
/// reconcile; the crossing the expiry causes alerts like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_bonus_credits_expire_on_time_once_and_are_used_first() {
    let app = TestApp::spawn().await.unwrap();
    let start = Utc::now().trunc_subsecs(6);
    let clock = store::Clock::manual(start);
    let clocked = app.store.clone().with_clock(clock.clone());
    let org = app.create_org("bonus-expiry").await;
    let seeded = app.adjust(org.id, "100", "seed", "seed").await;
    assert_eq!(seeded.status, 201, "{}", seeded.text);
    bought(&app, &clocked, &org, hundred(Some(90))).await;
    let bonus = grant_of(&app, &org, "bonus").await;
    let expires_at: DateTime<Utc> = bonus["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at, start + Days::days(90), "{bonus}");
    assert_eq!(bonus["category"], "promotional");
    assert_eq!(bonus["cost_basis_minor_per_credit"], "0");
    let base = grant_of(&app, &org, "purchase").await;
    assert_eq!(base["expires_at"], Value::Null);
    assert_eq!(base["cost_basis_minor_per_credit"], "12.5");
    assert_eq!(
        bonus["parent_grant_id"], base["id"],
        "the bonus points at its purchase grant"
    );

    // Same priority: the grant that expires goes first (the seed adjustment of 100 never does
    // and, being paid, comes after the promotional bonus).
    app.spend(&org, "before", 15).await;
    let bonus = grant_of(&app, &org, "bonus").await;
    assert_eq!(bonus["remaining_credits"], "5.000000");
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.body["balance_credits"], "185.000000");
    assert_eq!(b.body["expiring"], json!([]), "not within 30 days yet");

    // 29 days before: shown as expiring on its date.
    clock.set(expires_at - Days::days(29));
    let view = clocked.ledger().balance(org.id).await.unwrap();
    assert_eq!(view.expiring.len(), 1, "{view:?}");
    assert_eq!(view.expiring[0].date, expires_at.date_naive());
    assert_eq!(view.expiring[0].credits.to_string(), "5.000000");

    // A microsecond before: still there; at the instant: gone, before any sweep ran.
    clock.set(expires_at - Days::microseconds(1));
    assert_eq!(
        clocked
            .ledger()
            .balance(org.id)
            .await
            .unwrap()
            .balance
            .to_string(),
        "185.000000"
    );
    assert_eq!(clocked.grants().expire_due(100).await.unwrap(), 0);
    clock.set(expires_at);
    assert_eq!(
        clocked
            .ledger()
            .balance(org.id)
            .await
            .unwrap()
            .balance
            .to_string(),
        "180.000000"
    );
    // The sweep books it once, at its instant, to breakage; again finds nothing.
    clock.set(expires_at + Days::hours(3));
    assert_eq!(clocked.grants().expire_due(100).await.unwrap(), 1);
    assert_eq!(clocked.grants().expire_due(100).await.unwrap(), 0);
    let expiry: Vec<(DateTime<Utc>, Decimal, String)> = sqlx::query_as(
        "SELECT t.created_at, t.amount, a.code FROM transfers t
           JOIN accounts a ON a.id = t.credit_account_id
          WHERE t.org_id = $1 AND t.kind = 'expiry'",
    )
    .bind(org.id)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        expiry,
        vec![(expires_at, credits("5"), "breakage".to_string())]
    );
    let bonus = grant_of(&app, &org, "bonus").await;
    assert_eq!(bonus["remaining_credits"], "0.000000");
    assert_eq!(bonus["expired_credits"], "5.000000");
    assert_eq!(bonus["consumed_credits"], "15.000000");
    assert_eq!(bonus["state"], "expired");
    assert_eq!(grants(&app, &org, "?state=expired").await.len(), 1);

    // Usage after it never reaches the bonus.
    app.spend(&org, "after", 35).await;
    assert_eq!(app.balance(&org).await, "145.000000");

    let month = billing::summary::Month::of(expires_at);
    let s = clocked
        .summaries()
        .compute_summaries(&[org.id], month)
        .await
        .unwrap();
    assert_eq!(s[0].movements.expired.to_string(), "5.000000");
    assert_eq!(s[0].closing.to_string(), "145.000000");
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(
        b.body["totals"]["expired_credits"], "5.000000",
        "{}",
        b.text
    );
    app.assert_invariants().await;
}

/// An expiry that takes the balance below an alert threshold is a crossing like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_below_a_threshold_alerts() {
    let app = TestApp::spawn().await.unwrap();
    let org = app
        .org_with_billing("expiry-alert", "pm_card_visa", None, Some("50"))
        .await;
    let expires_at = Utc::now() + Days::hours(1);
    // Priority 90: the seed's 100 credits (priority 50) burn first.
    let p = promo(
        &app,
        &org,
        json!({"amount_credits": "60", "priority": 90, "expires_at": expires_at,
               "reason": "trial"}),
        "trial",
    )
    .await;
    assert_eq!(p.status, 201, "{}", p.text);
    app.spend(&org, "use", 70).await;
    assert_eq!(app.balance(&org).await, "90.000000");
    assert_eq!(
        grant_of(&app, &org, "promo").await["remaining_credits"],
        "60.000000"
    );
    let crossed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox
              WHERE org_id = $1 AND topic = 'balance.threshold_crossed'",
        )
        .bind(org.id)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
    };
    assert_eq!(crossed().await, 0);
    let clock = store::Clock::manual(expires_at + Days::seconds(1));
    let clocked = app.store.clone().with_clock(clock);
    assert_eq!(clocked.grants().expire_due(100).await.unwrap(), 1);
    assert_eq!(app.balance(&org).await, "30.000000");
    assert_eq!(crossed().await, 1);
    app.assert_invariants().await;
}

/// An operator's refund of `amount` of the purchase, through the store.
async fn refund(
    store: &store::Store,
    purchase: Uuid,
    amount: i64,
    key: &str,
) -> Result<store::Refund, store::StoreError> {
    store
        .refunds()
        .request_refund(
            store::RefundOf::Purchase(purchase),
            amount,
            "asked",
            "operator:test",
            key,
        )
        .await
}

/// A refund after partial use returns only unspent paid credits, worth their cost basis, and
/// claws back the bonus fraction; it never takes consumed credit; asking for more is refused up
/// front with what is refundable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_partial_use_takes_only_unspent_paid_credits_and_the_bonus_fraction() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("refund-grants").await;
    let purchase = bought(&app, &app.store, &org, hundred(None)).await;
    // The bonus burns first (promotional before paid): 10 of its 20 are used.
    app.spend(&org, "a", 10).await;

    // Half the money takes half the paid credits (80 unspent) and half the unspent bonus.
    let r = refund(&app.store, purchase, 500, "half").await.unwrap();
    assert_eq!(r.credits.to_string(), "40.000000");
    assert_eq!(r.bonus_credits.to_string(), "5.000000");
    assert_eq!(app.balance(&org).await, "45.000000");

    // 5 bonus and 15 paid credits more are used: 25 paid credits are left, and the 15 used are
    // worth 187.5 cents, kept in full (rounded up).
    app.spend(&org, "b", 20).await;
    let over = refund(&app.store, purchase, 500, "rest-too-much")
        .await
        .unwrap_err();
    match over {
        store::StoreError::RefundExceedsUnspent {
            asked_minor,
            refundable_minor,
            refundable_credits,
        } => {
            assert_eq!(
                (asked_minor, refundable_minor),
                (500, 312),
                "500 - ceil(187.5)"
            );
            assert_eq!(refundable_credits.to_string(), "25.000000");
        }
        other => panic!("{other:?}"),
    }
    let rest = refund(&app.store, purchase, 312, "rest").await.unwrap();
    assert_eq!(rest.credits.to_string(), "25.000000");
    assert_eq!(rest.bonus_credits.to_string(), "0.000000");
    assert_eq!(app.balance(&org).await, "0.000000");

    let base = grant_of(&app, &org, "purchase").await;
    assert_eq!(
        (
            base["consumed_credits"].as_str().unwrap(),
            base["refunded_credits"].as_str().unwrap(),
            base["remaining_credits"].as_str().unwrap()
        ),
        ("15.000000", "65.000000", "0.000000")
    );
    let bonus = grant_of(&app, &org, "bonus").await;
    assert_eq!(
        (
            bonus["consumed_credits"].as_str().unwrap(),
            bonus["refunded_credits"].as_str().unwrap()
        ),
        ("15.000000", "5.000000")
    );
    // Nothing is left to refund: no paid credit is unspent.
    let none = refund(&app.store, purchase, 1, "more").await.unwrap_err();
    assert!(
        matches!(
            none,
            store::StoreError::RefundExceedsUnspent {
                refundable_minor: 0,
                ..
            }
        ),
        "{none:?}"
    );
    app.assert_invariants().await;
}

/// Base credits past their expiry cannot be refunded: they were never spent, but they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_base_credits_are_not_refundable() {
    let app = TestApp::spawn().await.unwrap();
    let start = Utc::now();
    let clock = store::Clock::manual(start);
    let clocked = app.store.clone().with_clock(clock.clone());
    let org = app.create_org("refund-expired").await;
    let purchase = bought(
        &app,
        &clocked,
        &org,
        json!({"name": "Short", "price_minor": 1000, "currency": "usd", "base_credits": "100",
               "bonus_credits": "0", "expires_after_days": 30}),
    )
    .await;
    clock.set(start + Days::days(30));
    let e = refund(&clocked, purchase, 1, "late").await.unwrap_err();
    assert!(
        matches!(
            e,
            store::StoreError::RefundExceedsUnspent {
                refundable_minor: 0,
                ..
            }
        ),
        "{e:?}"
    );
    // The refusal booked nothing, and no read counts the expired credits.
    assert_eq!(
        clocked
            .ledger()
            .balance(org.id)
            .await
            .unwrap()
            .balance
            .to_string(),
        "0.000000"
    );
    app.assert_invariants().await;
}

/// Operator grants are idempotent (same key twice grants once; the same key with another body
/// is 409) and bad input is refused with a problem and nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_grants_are_idempotent_and_bad_input_writes_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("promo-input").await;
    let body = json!({"amount_credits": "12.5", "priority": 10, "reason": "welcome"});
    let (a, b) = tokio::join!(
        promo(&app, &org, body.clone(), "same"),
        promo(&app, &org, body.clone(), "same")
    );
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (201, 201));
    assert_eq!(a.body["id"], b.body["id"]);
    promo(
        &app,
        &org,
        json!({"amount_credits": "13", "priority": 10, "reason": "welcome"}),
        "same",
    )
    .await
    .assert_problem(409, "idempotency_conflict");
    assert_eq!(app.balance(&org).await, "12.500000");

    let past = (Utc::now() - Days::minutes(1)).to_rfc3339();
    let bad: Vec<(Value, u16, &str)> = vec![
        (
            json!({"amount_credits": "-1", "reason": "r"}),
            422,
            "amount_not_positive",
        ),
        (
            json!({"amount_credits": "0", "reason": "r"}),
            422,
            "amount_not_positive",
        ),
        (
            json!({"amount_credits": "1.0000001", "reason": "r"}),
            422,
            "too_many_decimals",
        ),
        (
            json!({"amount_credits": "ten", "reason": "r"}),
            422,
            "invalid_amount",
        ),
        (
            json!({"amount_credits": "1000000000001", "reason": "r"}),
            422,
            "amount_out_of_range",
        ),
        (
            json!({"amount_credits": "1", "priority": 101, "reason": "r"}),
            422,
            "invalid_priority",
        ),
        (
            json!({"amount_credits": "1", "priority": -1, "reason": "r"}),
            422,
            "invalid_priority",
        ),
        (
            json!({"amount_credits": "1", "expires_at": past, "reason": "r"}),
            422,
            "invalid_expiry",
        ),
        (
            json!({"amount_credits": "1", "applies_to": {}, "reason": "r"}),
            422,
            "invalid_applies_to",
        ),
        (
            json!({"amount_credits": "1", "applies_to": {"usage_types": ["gpu"]}, "reason": "r"}),
            422,
            "invalid_applies_to",
        ),
        (
            json!({"amount_credits": "1", "applies_to": {"models": ["a\u{7}b"]}, "reason": "r"}),
            422,
            "invalid_characters",
        ),
        (
            json!({"amount_credits": "1", "applies_to": {"models": [""]}, "reason": "r"}),
            422,
            "invalid_applies_to",
        ),
        (
            json!({"amount_credits": "1", "reason": ""}),
            422,
            "missing_field",
        ),
        (json!({"amount_credits": "1"}), 422, "missing_field"),
        (
            json!({"amount_credits": "1", "reason": "r", "currency": "usd"}),
            422,
            "invalid_body",
        ),
        (
            json!({"amount_credits": "1", "reason": "a\u{0}b"}),
            422,
            "invalid_characters",
        ),
    ];
    for (i, (body, status, code)) in bad.iter().enumerate() {
        let a = promo(&app, &org, body.clone(), &format!("bad-{i}")).await;
        assert_eq!(a.status.as_u16(), *status, "{body}: {}", a.text);
        assert_eq!(a.body["code"], *code, "{body}: {}", a.text);
    }
    app.call_raw(
        Method::POST,
        &format!("/v1/orgs/{}/grants", org.id),
        Some(OPERATOR_KEY),
        b"{\"amount_credits\": \"1\",".to_vec(),
    )
    .await
    .assert_problem(400, "malformed_json");
    // Not an operator: refused.
    app.call(
        Method::POST,
        &format!("/v1/orgs/{}/grants", org.id),
        Some(&org.key),
        Some(&json!({"amount_credits": "1", "reason": "r"})),
        &[("idempotency-key", "self")],
    )
    .await
    .assert_problem(403, "operator_only");
    assert_eq!(
        grants(&app, &org, "").await.len(),
        1,
        "only the first grant"
    );
    assert_eq!(app.balance(&org).await, "12.500000");
    app.get(&format!("/v1/orgs/{}/grants?state=gone", org.id), &org.key)
        .await
        .assert_problem(400, "invalid_state");
}

/// Grants list oldest first, a page at a time, with a cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_page_with_a_cursor() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("grant-pages").await;
    for i in 0..5 {
        let a = promo(
            &app,
            &org,
            json!({"amount_credits": format!("{}", i + 1), "reason": "r"}),
            &format!("k{i}"),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.text);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_string(),
        };
        let a = app
            .get(&format!("/v1/orgs/{}/grants{q}", org.id), &org.key)
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        for g in a.body["data"].as_array().unwrap() {
            seen.push(g["amount_credits"].as_str().unwrap().to_string());
        }
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["1.000000", "2.000000", "3.000000", "4.000000", "5.000000"]
    );
}

/// Many writers on one org at once (usage of two models, restricted and expiring promotional
/// grants, adjustments both ways, refunds of a purchase, the expiry sweep): every grant's
/// counters add up, the grants hold the balance, each expiry is booked once at its instant
/// (the ledger's check), and the balance is what the transfers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_on_one_org_keep_the_grants_whole() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("grants-concurrent").await;
    let purchase = bought(&app, &app.store, &org, hundred(None)).await;
    let soon = Utc::now() + Days::seconds(30);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (app, org) = (&app, &org);
        tasks.push(Box::pin(async move {
            for i in 0..10 {
                if w % 2 == 0 {
                    app.spend(org, &format!("gpt-{w}-{i}"), 1).await;
                } else {
                    spend_haiku(app, org, &format!("haiku-{w}-{i}"), 1).await;
                }
            }
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);
    }
    for w in 0..2 {
        let (app, org) = (&app, &org);
        tasks.push(Box::pin(async move {
            for i in 0..5 {
                let mut body = json!({"amount_credits": "2", "priority": 10 * i,
                                      "reason": "promo"});
                if i % 2 == 0 {
                    body["expires_at"] = json!(soon);
                }
                if w == 1 {
                    body["applies_to"] = json!({"models": ["claude-haiku-3.5"]});
                }
                let a = promo(app, org, body, &format!("p-{w}-{i}")).await;
                assert_eq!(a.status, 201, "{}", a.text);
            }
        }));
    }
    {
        let (app, org) = (&app, &org);
        tasks.push(Box::pin(async move {
            for i in 0..5 {
                let amount = if i % 2 == 0 { "3" } else { "-1" };
                let a = app.adjust(org.id, amount, "ops", &format!("adj-{i}")).await;
                assert_eq!(a.status, 201, "{}", a.text);
            }
        }));
    }
    {
        let app = &app;
        tasks.push(Box::pin(async move {
            for i in 0..3 {
                // Refunds of 1.00 each: refused only when the rule says so, never an error.
                match refund(&app.store, purchase, 100, &format!("r-{i}")).await {
                    Ok(_) | Err(store::StoreError::RefundExceedsUnspent { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    futures::future::join_all(tasks).await;
    // Past the expiry of the expiring promos: the sweep books what is left, once.
    let clock = store::Clock::manual(soon + Days::seconds(1));
    let clocked = app.store.clone().with_clock(clock);
    clocked.grants().expire_due(100).await.unwrap();
    assert_eq!(clocked.grants().expire_due(100).await.unwrap(), 0);
    app.assert_invariants().await;
    let all = grants(&app, &org, "?limit=1000").await;
    let held: Decimal = all
        .iter()
        .map(|g| credits(g["remaining_credits"].as_str().unwrap()))
        .sum();
    let balance = credits(&app.balance(&org).await);
    assert!(
        held >= balance,
        "grants hold {held}, the balance is {balance}"
    );
    for g in &all {
        let n = |k: &str| credits(g[k].as_str().unwrap());
        assert_eq!(
            n("amount_credits"),
            n("remaining_credits")
                + n("consumed_credits")
                + n("expired_credits")
                + n("refunded_credits"),
            "{g}"
        );
    }
}
