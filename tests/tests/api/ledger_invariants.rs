use billing::{Credits, Posting, SystemAccount, TransferKind};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use rust_decimal::Decimal;
use store::{NewTransfer, StoreError};
use tests::TestApp;

/// Transfers cannot be updated deleted or truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cannot_be_updated_deleted_or_truncated() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("immutable").await;
    assert_eq!(app.adjust(org.id, "10", "seed", "k1").await.status, 201);
    let pool = app.store.pool();

    let update = sqlx::query("UPDATE transfers SET amount = amount + 1")
        .execute(pool)
        .await;
    let delete = sqlx::query("DELETE FROM transfers").execute(pool).await;
    let truncate = sqlx::query("TRUNCATE transfers CASCADE")
        .execute(pool)
        .await;

    for (what, result) in [
        ("UPDATE", update),
        ("DELETE", delete),
        ("TRUNCATE", truncate),
    ] {
        let err = result.expect_err(what).to_string();
        assert!(err.contains("transfers are immutable"), "{what}: {err}");
    }
    assert_eq!(app.balance(&org).await, "10.000000");
    app.assert_invariants().await;
}

/// One random ledger operation for the property test.
#[derive(Debug, Clone)]
enum Op {
    Adjust {
        org: usize,
        micros: i64,
    },
    Grant {
        org: usize,
        kind: TransferKind,
        micros: i64,
    },
    Usage {
        org: usize,
        micros: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let micros = 1i64..=50_000_000; // up to 50 credits, in micro-credits
    prop_oneof![
        (0..3usize, micros.clone(), any::<bool>()).prop_map(|(org, m, neg)| Op::Adjust {
            org,
            micros: if neg { -m } else { m }
        }),
        (
            0..3usize,
            prop_oneof![
                Just(TransferKind::Purchase),
                Just(TransferKind::Bonus),
                Just(TransferKind::Topup)
            ],
            micros.clone()
        )
            .prop_map(|(org, kind, micros)| Op::Grant { org, kind, micros }),
        (0..3usize, micros).prop_map(|(org, micros)| Op::Usage { org, micros }),
    ]
}

fn credits(micros: i64) -> Credits {
    Credits::from_stored(Decimal::new(micros, 6))
}

/// Random sequences of every movement kind booked so far hold the ledger's invariants: stored
/// totals equal the sums of transfers, debits equal credits, balances match a model, and only
/// usage overdraws.
#[test]
fn random_movements_hold_the_ledger_invariants() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::spawn()).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            rt.block_on(async {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut orgs = Vec::new();
                for i in 0..3 {
                    orgs.push(app.create_org(&format!("prop-{n}-{i}")).await);
                }
                let mut model = [Decimal::ZERO; 3];
                for (i, op) in ops.iter().enumerate() {
                    let key = format!("case{n}-op{i}");
                    match *op {
                        Op::Adjust { org, micros } => {
                            let r = app
                                .store
                                .ledger()
                                .post_adjustment(
                                    orgs[org].id,
                                    credits(micros),
                                    "prop",
                                    "test",
                                    &key,
                                )
                                .await;
                            apply(&mut model[org], micros, false, r.map(|_| ()));
                        }
                        Op::Grant { org, kind, micros } => {
                            let r = book_one(&app, orgs[org].id, kind, micros, &key).await;
                            apply(&mut model[org], micros, false, r);
                        }
                        Op::Usage { org, micros } => {
                            let r = book_one(&app, orgs[org].id, TransferKind::Usage, micros, &key)
                                .await;
                            apply(&mut model[org], -micros, true, r);
                        }
                    }
                }
                for (i, org) in orgs.iter().enumerate() {
                    let b = app.store.ledger().balance(org.id).await.unwrap();
                    assert_eq!(b.balance.as_decimal(), model[i], "org {i} after {ops:?}");
                }
                app.assert_invariants().await;
            });
            Ok(())
        })
        .unwrap();
}

/// Books one grant (purchase, bonus, topup) or usage transfer, then books it again with the
/// same key to check the second booking changes nothing.
async fn book_one(
    app: &TestApp,
    org_id: uuid::Uuid,
    kind: TransferKind,
    micros: i64,
    key: &str,
) -> Result<(), StoreError> {
    let amount = credits(micros);
    let posting = match kind {
        TransferKind::Usage => Posting::usage(org_id, SystemAccount::UsageAi, amount),
        TransferKind::Bonus => Posting::bonus(org_id, amount),
        TransferKind::Topup => Posting::topup(org_id, amount),
        _ => Posting::purchase(org_id, amount),
    };
    let t = NewTransfer::new(
        posting,
        key.to_string(),
        "test",
        "prop".into(),
        Default::default(),
    );
    let mut tx = app.store.pool().begin().await?;
    app.store
        .ledger()
        .book(&mut tx, org_id, std::slice::from_ref(&t))
        .await?;
    tx.commit().await?;
    let mut tx = app.store.pool().begin().await?;
    let again = app.store.ledger().book(&mut tx, org_id, &[t]).await?;
    tx.commit().await?;
    assert!(matches!(again[0], store::BookOutcome::AlreadyBooked(_)));
    Ok(())
}

/// Applies an operation's effect to the model balance, checking the store refused exactly the
/// movements that would have overdrawn a balance without being usage.
fn apply(balance: &mut Decimal, micros: i64, may_overdraw: bool, result: Result<(), StoreError>) {
    let delta = Decimal::new(micros, 6);
    let after = *balance + delta;
    if delta < Decimal::ZERO && after < Decimal::ZERO && !may_overdraw {
        assert!(
            matches!(result, Err(StoreError::InsufficientBalance { .. })),
            "{result:?}"
        );
    } else {
        result.unwrap();
        *balance = after;
    }
}
