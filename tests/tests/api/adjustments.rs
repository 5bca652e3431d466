use futures::future::join_all;
use serde_json::json;
use tests::TestApp;

/// Sixty-four concurrent adjustments on one org are all counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_adjustments_on_one_org_are_all_counted() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("concurrent").await;

    let answers = join_all((0..64).map(|i| {
        let app = &app;
        async move {
            app.adjust(org.id, "1.015625", "load", &format!("c-{i}"))
                .await
        }
    }))
    .await;

    assert!(answers.iter().all(|a| a.status == 201), "{answers:?}");
    assert_eq!(app.balance(&org).await, "65.000000"); // 64 × 1.015625
    let mut seqs: Vec<i64> = answers
        .iter()
        .map(|a| a.body["seq"].as_i64().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=64).collect::<Vec<_>>(),
        "each adjustment has its own position"
    );
    app.assert_invariants().await;
}

/// Same idempotency key twice moves credits once and answers the same.
#[tokio::test]
async fn same_idempotency_key_twice_moves_credits_once_and_answers_the_same() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("idem").await;

    let first = app.adjust(org.id, "25.5", "goodwill", "same-key").await;
    let second = app.adjust(org.id, "25.5", "goodwill", "same-key").await;

    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(second.status, first.status);
    assert_eq!(second.body, first.body);
    assert_eq!(app.balance(&org).await, "25.500000");
    app.assert_invariants().await;
}

/// Same idempotency key sent concurrently moves credits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_idempotency_key_sent_concurrently_moves_credits_once() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("idem-concurrent").await;

    let answers = join_all((0..10).map(|_| app.adjust(org.id, "3", "race", "one-key"))).await;

    assert!(answers.iter().all(|a| a.status == 201), "{answers:?}");
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(app.balance(&org).await, "3.000000");
    app.assert_invariants().await;
}

/// Same idempotency key with a different body is a conflict.
#[tokio::test]
async fn same_idempotency_key_with_a_different_body_is_a_conflict() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("conflict").await;
    app.adjust(org.id, "10", "first", "k").await;

    app.adjust(org.id, "11", "first", "k")
        .await
        .assert_problem(409, "idempotency_conflict");
    app.adjust(org.id, "10", "other reason", "k")
        .await
        .assert_problem(409, "idempotency_conflict");

    assert_eq!(app.balance(&org).await, "10.000000");
}

/// The same key on two orgs is two adjustments.
#[tokio::test]
async fn the_same_key_on_two_orgs_is_two_adjustments() {
    let app = TestApp::spawn().await.unwrap();
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;

    assert_eq!(app.adjust(a.id, "1", "x", "shared").await.status, 201);
    assert_eq!(app.adjust(b.id, "2", "x", "shared").await.status, 201);

    assert_eq!(app.balance(&a).await, "1.000000");
    assert_eq!(app.balance(&b).await, "2.000000");
}

/// An adjustment never takes the balance below zero.
#[tokio::test]
async fn an_adjustment_never_takes_the_balance_below_zero() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("floor").await;
    app.adjust(org.id, "5", "seed", "k1").await;

    app.adjust(org.id, "-5.000001", "too much", "k2")
        .await
        .assert_problem(422, "insufficient_balance");
    let ok = app.adjust(org.id, "-5", "exactly all", "k3").await;

    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(ok.body["balance_after_credits"], "0.000000");
    assert_eq!(app.balance(&org).await, "0.000000");
    app.assert_invariants().await;
}

/// A failed adjustment can be retried with its key.
#[tokio::test]
async fn a_failed_adjustment_can_be_retried_with_its_key() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("retry").await;

    app.adjust(org.id, "-1", "early", "k")
        .await
        .assert_problem(422, "insufficient_balance");
    app.adjust(org.id, "1", "seed", "seed").await;
    let retried = app.adjust(org.id, "-1", "early", "k").await;

    assert_eq!(retried.status, 201, "{}", retried.text);
    assert_eq!(app.balance(&org).await, "0.000000");
}

/// Balance reports totals by kind.
#[tokio::test]
async fn balance_reports_totals_by_kind() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("totals").await;
    app.adjust(org.id, "100", "seed", "k1").await;
    app.adjust(org.id, "-30.25", "correction", "k2").await;

    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;

    assert_eq!(
        b.body,
        json!({
            "org_id": org.id,
            "balance_credits": "69.750000",
            "available_credits": "69.750000",
            "held_credits": "0.000000",
            "negative": false,
            "totals": {
                "purchased_credits": "0.000000",
                "topup_credits": "0.000000",
                "bonus_credits": "0.000000",
                "adjusted_credits": "69.750000",
                "used_credits": "0.000000",
                "refunded_credits": "0.000000",
                "reversed_credits": "0.000000",
                "promo_credits": "0.000000",
                "expired_credits": "0.000000",
            },
            "identity": "balance = purchased + topup + bonus + adjusted + promo - used - refunded - reversed - expired",
            "transfer_count": 2,
            "expiring": [],
        })
    );
    let typed: api::ledger::Balance = b.typed();
    assert_eq!(typed.totals.balance().unwrap(), typed.balance_credits);
}
