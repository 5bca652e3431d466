use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    OPERATOR_KEY, TestApp, TestOrg, eventually,
    worker::{ProcessWorker, TestWorker},
};

/// A package of 80 credits + 20 bonus for $10.00, bought and paid: the org holds 100 credits.
async fn bought_100(app: &TestApp) -> (TestOrg, String) {
    let pkg = app
        .call(Method::POST, "/v1/packages", Some(OPERATOR_KEY),
              Some(&json!({"name": "Hundred", "price_minor": 1000, "currency": "usd", "base_credits": "80", "bonus_credits": "20"})), &[])
        .await;
    let org = app.create_org("refunds").await;
    let bought = app
        .call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&json!({"package_id": pkg.body["id"], "user": "ana@acme.test"})),
            &[],
        )
        .await;
    let bought = app.ready_purchase(&org, &bought).await;
    let id = bought["id"].as_str().unwrap().to_string();
    app.pay_checkout(bought["checkout_url"].as_str().unwrap(), "pm_card_visa")
        .await;
    eventually("credited", Duration::from_secs(60), || async {
        (app.get(&format!("/v1/purchases/{id}"), &org.key).await.body["state"] == "credited")
            .then_some(())
    })
    .await;
    (org, id)
}

async fn refund(app: &TestApp, purchase: &str, amount: i64, key: &str) -> tests::Answer {
    app.call(
        Method::POST,
        &format!("/v1/purchases/{purchase}/refunds"),
        Some(OPERATOR_KEY),
        Some(&json!({"amount_minor": amount, "reason": "customer asked"})),
        &[("idempotency-key", key)],
    )
    .await
}

async fn refunds_of(app: &TestApp, org: &TestOrg, purchase: &str) -> Vec<Value> {
    app.get(&format!("/v1/purchases/{purchase}/refunds"), &org.key)
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .clone()
}

async fn processor_refunds(app: &TestApp) -> usize {
    app.emulator_event_count("charge.refunded").await
}

async fn use_credits(app: &TestApp, org: &TestOrg, credits: u64) {
    app.spend(org, "spend", credits).await;
}

/// A refund of spent credits is refused with what is refundable, and a partial one takes
/// unspent paid credits only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_spent_credits_is_refused_with_what_is_refundable_and_a_partial_one_takes_unspent_paid_credits()
 {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;
    // The bonus (promotional) burns first: 20 bonus and 50 paid credits are spent, 30 paid left.
    use_credits(&app, &org, 70).await;

    let full = refund(&app, &purchase, 1000, "full").await;
    full.assert_problem(409, "refund_exceeds_unspent");
    // $10.00 less the 50 paid credits used at 12.5 cents each.
    assert_eq!(full.body["refundable_minor"], 375, "{}", full.text);
    assert_eq!(
        full.body["refundable_credits"], "30.000000",
        "{}",
        full.text
    );
    refund(&app, &purchase, 1001, "too-much")
        .await
        .assert_problem(422, "refund_not_allowed");
    let partial = refund(&app, &purchase, 300, "thirty").await;
    assert_eq!(partial.status, 202, "{}", partial.text);
    assert_eq!(partial.body["credits_reversed"], "24.000000");
    assert_eq!(partial.body["bonus_credits_reversed"], "0.000000");
    eventually("reversed", Duration::from_secs(30), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    assert_eq!(app.balance(&org).await, "6.000000");
    assert_eq!(processor_refunds(&app).await, 1);
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.body["totals"]["refunded_credits"], "24.000000");
    assert_eq!(b.body["totals"]["reversed_credits"], "0.000000");
    let t = |k: &str| credits(b.body["totals"][k].as_str().unwrap());
    assert_eq!(
        t("purchased_credits") + t("topup_credits") + t("bonus_credits") + t("adjusted_credits")
            - t("used_credits")
            - t("refunded_credits")
            - t("reversed_credits"),
        credits(b.body["balance_credits"].as_str().unwrap())
    );
    app.assert_invariants().await;
    let refund_id = partial.body["id"].as_str().unwrap();
    app.keep_history("refund", &workflows::refund::workflow_id(refund_id))
        .await;
}

/// The same refund request twice refunds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_refund_request_twice_refunds_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;

    let first = refund(&app, &purchase, 500, "same").await;
    let again = refund(&app, &purchase, 500, "same").await;
    eventually("reversed", Duration::from_secs(30), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(refunds_of(&app, &org, &purchase).await.len(), 1);
    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "50.000000");
    app.assert_invariants().await;
}

/// A worker killed after the processor refund reverses once after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_the_processor_refund_reverses_once_after_restart() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = ProcessWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;

    refund(&app, &purchase, 1000, "all").await;
    eventually(
        "the processor's refund",
        Duration::from_secs(30),
        || async {
            refunds_of(&app, &org, &purchase).await[0]["stripe_refund_id"]
                .as_str()
                .map(|_| ())
        },
    )
    .await;
    worker.kill();
    let _restarted = ProcessWorker::start(&app).unwrap();
    eventually("reversed", Duration::from_secs(60), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "0.000000");
    let reversals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transfers WHERE kind IN ('refund', 'reversal')")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(reversals, 2);
    app.assert_invariants().await;
}

/// Refunds are for operators and need a credited purchase.
#[tokio::test]
async fn refunds_are_for_operators_and_need_a_credited_purchase() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("no-refund").await;
    let package = app
        .store
        .packages()
        .package("01970000-0000-7000-8000-000000000001".parse().unwrap())
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

    app.call(
        Method::POST,
        &format!("/v1/purchases/{}/refunds", p.id),
        Some(&org.key),
        Some(&json!({"amount_minor": 100, "reason": "x"})),
        &[("idempotency-key", "k")],
    )
    .await
    .assert_problem(403, "operator_only");
    refund(&app, &p.id.to_string(), 100, "k")
        .await
        .assert_problem(422, "refund_not_allowed");
    refund(&app, &p.id.to_string(), 0, "k0")
        .await
        .assert_problem(422, "amount_not_positive");
}

/// A package whose price and credits do not divide evenly: 3,000.5 credits + 333.333333 bonus
/// for $9.97.
async fn uneven_package(app: &TestApp) -> billing::packages::Package {
    let a = app
        .call(
            Method::POST,
            "/v1/packages",
            Some(OPERATOR_KEY),
            Some(
                &json!({"name": "Uneven", "price_minor": 997, "currency": "usd",
                           "base_credits": "3000.5", "bonus_credits": "333.333333"}),
            ),
            &[],
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    app.store
        .packages()
        .package(a.body["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
}

fn credits(text: &str) -> rust_decimal::Decimal {
    text.parse().unwrap()
}

/// Usage while a refund waits at the processor cannot keep refunded credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_while_a_refund_waits_at_the_processor_cannot_keep_refunded_credits() {
    let app = TestApp::spawn().await.unwrap();
    let (org, purchase) = {
        let _worker = TestWorker::start(&app).unwrap();
        bought_100(&app).await
    };
    // No worker now: the refund waits before the processor is asked.

    let accepted = refund(&app, &purchase, 1000, "all").await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(app.balance(&org).await, "0.000000", "taken when accepted");
    use_credits(&app, &org, 30).await;
    // A second refund finds nothing left to refund.
    refund(&app, &purchase, 1, "more")
        .await
        .assert_problem(422, "refund_not_allowed");
    let _worker = TestWorker::start(&app).unwrap();
    eventually("reversed", Duration::from_secs(60), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;

    // The money went back and so did every credit: the usage is an overdraft, not a gift.
    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "-30.000000");
    app.assert_invariants().await;
}

/// Two refunds together cannot take more than the unspent paid credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refunds_together_cannot_take_more_than_the_unspent_paid_credits() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;
    use_credits(&app, &org, 30).await;

    // 20 bonus and 10 paid credits are spent. Each half takes 40 paid credits; after one, the
    // other half asks for more than the 375 minor units the 30 unspent paid credits are worth.
    let (a, b) = tokio::join!(
        refund(&app, &purchase, 500, "r-a"),
        refund(&app, &purchase, 500, "r-b")
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "{} / {}", a.text, b.text);
    eventually("reversed", Duration::from_secs(60), || async {
        let all = refunds_of(&app, &org, &purchase).await;
        (all.len() == 1 && all[0]["state"] == "reversed").then_some(())
    })
    .await;
    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "30.000000");
    app.assert_invariants().await;
}

/// Eight concurrent same key refunds make one and another body is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_same_key_refunds_make_one_and_another_body_is_a_conflict() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;

    let answers =
        futures::future::join_all((0..8).map(|_| refund(&app, &purchase, 400, "same-key"))).await;
    for a in &answers {
        assert_eq!(a.status, 202, "{}", a.text);
        assert_eq!(a.body["id"], answers[0].body["id"]);
        assert_eq!(
            a.body["credits_reversed"],
            answers[0].body["credits_reversed"]
        );
    }
    app.call(
        Method::POST,
        &format!("/v1/purchases/{purchase}/refunds"),
        Some(OPERATOR_KEY),
        Some(&json!({"amount_minor": 500, "reason": "customer asked"})),
        &[("idempotency-key", "same-key")],
    )
    .await
    .assert_problem(409, "idempotency_conflict");
    app.call(
        Method::POST,
        &format!("/v1/purchases/{purchase}/refunds"),
        Some(OPERATOR_KEY),
        Some(&json!({"amount_minor": 400, "reason": "another reason"})),
        &[("idempotency-key", "same-key")],
    )
    .await
    .assert_problem(409, "idempotency_conflict");
    eventually("reversed", Duration::from_secs(60), || async {
        (refunds_of(&app, &org, &purchase).await[0]["state"] == "reversed").then_some(())
    })
    .await;
    assert_eq!(refunds_of(&app, &org, &purchase).await.len(), 1);
    assert_eq!(processor_refunds(&app).await, 1);
    assert_eq!(app.balance(&org).await, "60.000000");
    app.assert_invariants().await;
}

/// A refund with no processor payment fails and gives the credits back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_with_no_processor_payment_fails_and_gives_the_credits_back_exactly() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("no-payment").await;
    let package = uneven_package(&app).await;
    // Round 1 credited such purchases (an unpaid checkout with no PaymentIntent).
    let purchase = tests::credited_purchase(&app.store, org.id, &package, "")
        .await
        .to_string();
    let before = app.balance(&org).await;

    let accepted = refund(&app, &purchase, 333, "part").await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let taken = credits(accepted.body["credits_reversed"].as_str().unwrap())
        + credits(accepted.body["bonus_credits_reversed"].as_str().unwrap());
    assert_eq!(credits(&app.balance(&org).await), credits(&before) - taken);
    let failed = eventually("failed", Duration::from_secs(60), || async {
        let r = refunds_of(&app, &org, &purchase).await.remove(0);
        (r["state"] == "failed").then_some(r)
    })
    .await;

    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("no processor payment"),
        "{failed}"
    );
    assert_eq!(app.balance(&org).await, before, "restored exactly");
    assert_eq!(processor_refunds(&app).await, 0);
    // A failed refund holds nothing back: the whole payment can still be refunded.
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(b.body["totals"]["refunded_credits"], "0.000000");
    app.assert_invariants().await;
}

/// A small deterministic generator (xorshift), so a failing case can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random parts of an uneven payment, refunded 1, 2, 4 or 8 at a time: what they take back
/// never exceeds the grant, equals it exactly once the whole payment is refunded, and the
/// balance always equals the grant less what was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_parts_never_exceed_the_grant_and_add_up_to_it_when_all_is_refunded() {
    let app = TestApp::spawn().await.unwrap();
    let package = uneven_package(&app).await;
    let granted = package.base_credits.as_decimal() + package.bonus_credits.as_decimal();
    let paid = package.price.amount_minor as u64;
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let org = app.create_org(&format!("parts-{seed}")).await;
        let purchase =
            tests::credited_purchase(&app.store, org.id, &package, &format!("pi_parts_{seed}"))
                .await;
        // Parts that add up to the whole payment, sent in waves of 1, 2, 4 or 8 at once.
        let mut left = paid;
        let mut parts = Vec::new();
        while left > 0 {
            let part = if left == 1 {
                1
            } else {
                1 + rng.below(left.min(400))
            };
            parts.push(part as i64);
            left -= part;
        }
        let wave = [1, 2, 4, 8][rng.below(4) as usize];
        let mut n = 0;
        for chunk in parts.chunks(wave) {
            let requests = chunk.iter().map(|amount| {
                n += 1;
                let key = format!("s{seed}-{n}");
                let store = app.store.clone();
                async move {
                    store
                        .refunds()
                        .request_refund(
                            store::RefundOf::Purchase(purchase),
                            *amount,
                            "parts",
                            "operator:test",
                            &key,
                        )
                        .await
                        .expect("every part fits")
                }
            });
            futures::future::join_all(requests).await;
            let refunds = app
                .store
                .refunds()
                .refunds_of(store::RefundOf::Purchase(purchase))
                .await
                .unwrap();
            let taken: rust_decimal::Decimal = refunds
                .iter()
                .map(|r| r.credits.as_decimal() + r.bonus_credits.as_decimal())
                .sum();
            assert!(taken <= granted, "seed {seed}: {taken} > {granted}");
            assert_eq!(
                credits(&app.balance(&org).await),
                granted - taken,
                "seed {seed}"
            );
        }
        let refunds = app
            .store
            .refunds()
            .refunds_of(store::RefundOf::Purchase(purchase))
            .await
            .unwrap();
        let base: rust_decimal::Decimal = refunds.iter().map(|r| r.credits.as_decimal()).sum();
        let bonus: rust_decimal::Decimal =
            refunds.iter().map(|r| r.bonus_credits.as_decimal()).sum();
        assert_eq!(
            base,
            package.base_credits.as_decimal(),
            "seed {seed} {parts:?}"
        );
        assert_eq!(
            bonus,
            package.bonus_credits.as_decimal(),
            "seed {seed} {parts:?}"
        );
        assert_eq!(app.balance(&org).await, "0.000000", "seed {seed}");
    }
    app.assert_invariants().await;
}

/// The processor payment of a purchase.
async fn payment_intent_of(app: &TestApp, org: &TestOrg, purchase: &str) -> String {
    app.get(&format!("/v1/purchases/{purchase}"), &org.key)
        .await
        .body["payment_intent_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A refund made at the processor (its dashboard): `POST /v1/refunds` without our metadata.
async fn dashboard_refund(app: &TestApp, payment_intent: &str, amount: i64) -> String {
    let r: Value = app
        .http
        .post(format!("{}/v1/refunds", app.stripe_url))
        .bearer_auth(tests::STRIPE_KEY)
        .form(&[
            ("payment_intent", payment_intent),
            ("amount", &amount.to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"].as_str().expect("a processor refund").to_string()
}

async fn reversed_refunds(app: &TestApp, org: &TestOrg, purchase: &str, n: usize) -> Vec<Value> {
    eventually("the refunds reversed", Duration::from_secs(60), || async {
        let all = refunds_of(app, org, purchase).await;
        (all.len() == n && all.iter().all(|r| r["state"] == "reversed")).then_some(all)
    })
    .await
}

/// A refund made at the processor takes its credits back once like ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_made_at_the_processor_takes_its_credits_back_once_like_ours() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;
    let pi = payment_intent_of(&app, &org, &purchase).await;

    // Half at the processor's dashboard: half the credits and half the bonus come back.
    let re = dashboard_refund(&app, &pi, 500).await;
    let first = reversed_refunds(&app, &org, &purchase, 1).await;
    assert_eq!(first[0]["stripe_refund_id"], re.as_str());
    assert_eq!(first[0]["requested_by"], "processor");
    assert_eq!(first[0]["credits_reversed"], "40.000000");
    assert_eq!(first[0]["bonus_credits_reversed"], "10.000000");
    assert_eq!(app.balance(&org).await, "50.000000");

    // The other half through our API: its own charge.refunded lists both processor refunds,
    // and neither is counted twice.
    assert_eq!(refund(&app, &purchase, 500, "rest").await.status, 202);
    let both = reversed_refunds(&app, &org, &purchase, 2).await;
    assert_eq!(processor_refunds(&app).await, 2);
    assert_eq!(app.balance(&org).await, "0.000000");
    let reversed: rust_decimal::Decimal = both
        .iter()
        .map(|r| {
            credits(r["credits_reversed"].as_str().unwrap())
                + credits(r["bonus_credits_reversed"].as_str().unwrap())
        })
        .sum();
    assert_eq!(reversed, credits("100"));
    // Nothing is left to refund.
    refund(&app, &purchase, 1, "more")
        .await
        .assert_problem(422, "refund_not_allowed");
    app.assert_invariants().await;
}

/// A processor refund of spent credits takes what is left never below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_refund_of_spent_credits_takes_what_is_left_never_below_zero() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;
    let pi = payment_intent_of(&app, &org, &purchase).await;
    use_credits(&app, &org, 90).await;

    dashboard_refund(&app, &pi, 1000).await;
    let r = reversed_refunds(&app, &org, &purchase, 1).await;
    assert_eq!(r[0]["credits_reversed"], "10.000000", "{r:?}");
    assert_eq!(r[0]["bonus_credits_reversed"], "0.000000", "{r:?}");
    assert!(
        r[0]["detail"].as_str().unwrap().contains("already spent"),
        "{r:?}"
    );
    assert_eq!(app.balance(&org).await, "0.000000");
    app.assert_invariants().await;
}

/// The processor's refunds of a payment, as it lists them.
async fn listed_refunds(app: &TestApp, payment_intent: &str) -> Vec<Value> {
    let v: Value = app
        .http
        .get(format!(
            "{}/v1/refunds?payment_intent={payment_intent}&limit=100",
            app.stripe_url
        ))
        .bearer_auth(tests::STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().unwrap().clone()
}

/// Stripe saves a 5xx answer under its Idempotency-Key and replays it: a refund whose answer
/// was a 5xx is looked for before a fresh key is used, so it is made once whether or not the
/// failed call ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_answered_500_is_made_once_whether_or_not_the_call_ran() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    for (executed, generation) in [(true, 0), (false, 1)] {
        let (org, purchase) = bought_100(&app).await;
        let pi = payment_intent_of(&app, &org, &purchase).await;
        app.fail_next("/v1/refunds", executed).await;
        assert_eq!(refund(&app, &purchase, 1000, "all").await.status, 202);
        let done = reversed_refunds(&app, &org, &purchase, 1).await;
        let listed = listed_refunds(&app, &pi).await;
        assert_eq!(listed.len(), 1, "executed={executed}: {listed:?}");
        assert_eq!(done[0]["stripe_refund_id"], listed[0]["id"]);
        assert_eq!(app.balance(&org).await, "0.000000");
        let (found_generation, server_error): (i32, bool) =
            sqlx::query_as("SELECT generation, server_error FROM processor_keys WHERE base = $1")
                .bind(format!("refund-{}", done[0]["id"].as_str().unwrap()))
                .fetch_one(app.store.pool())
                .await
                .unwrap();
        // Found (it ran): the key stays; not found: one fresh key made it.
        assert_eq!(found_generation, generation, "executed={executed}");
        assert_eq!(server_error, executed, "executed={executed}");
    }
    app.assert_invariants().await;
}

/// A refund whose key was first sent more than 23 hours ago (the processor may have pruned it,
/// and the same key would run anew) looks for what the key made before sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_retried_past_its_keys_lifetime_finds_the_refund_it_made() {
    let app = TestApp::spawn().await.unwrap();
    let worker = TestWorker::start(&app).unwrap();
    let (org, purchase) = bought_100(&app).await;
    drop(worker);
    let pi = payment_intent_of(&app, &org, &purchase).await;
    let accepted = refund(&app, &purchase, 1000, "all").await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let id = accepted.body["id"].as_str().unwrap().to_string();
    // The first try, a day ago: it refunded at the processor, then its answer was lost.
    let made: Value = app
        .http
        .post(format!("{}/v1/refunds", app.stripe_url))
        .bearer_auth(tests::STRIPE_KEY)
        .form(&[
            ("payment_intent", pi.as_str()),
            ("amount", "1000"),
            ("metadata[creditflow_refund_id]", id.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO processor_keys (base, first_used_at) VALUES ($1, now() - interval '25 hours')",
    )
    .bind(format!("refund-{id}"))
    .execute(app.store.pool())
    .await
    .unwrap();

    let _worker = TestWorker::start(&app).unwrap();
    let done = reversed_refunds(&app, &org, &purchase, 1).await;
    assert_eq!(done[0]["stripe_refund_id"], made["id"]);
    assert_eq!(listed_refunds(&app, &pi).await.len(), 1);
    assert_eq!(app.balance(&org).await, "0.000000");
}
