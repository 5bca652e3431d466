//! The grants migration on a database built with round-1 data: the schema as round 1 left it
//! (every migration before grants), orgs with purchases, bonuses, usage, adjustments, a refund
//! and an overdraft booked as round 1 booked them (no grants), then the full migration and its
//! backfill. Balances are unchanged, every org's grants hold its balance, and each remaining is
//! what replaying the history in the burn-down order leaves.
use std::{borrow::Cow, str::FromStr};

use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Postgres, Transaction, postgres::PgPoolOptions};
use uuid::Uuid;

/// The first migration of round 2's grants; everything before it is round 1's schema.
const GRANTS_MIGRATION: i64 = 20261203000001;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A round-1 org: the org and its account.
async fn org(tx: &mut Transaction<'_, Postgres>, name: &str) -> (Uuid, i64) {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO orgs (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(&mut **tx)
        .await
        .unwrap();
    let account: i64 =
        sqlx::query_scalar("INSERT INTO accounts (code, org_id) VALUES ($1, $2) RETURNING id")
            .bind(format!("org:{id}"))
            .bind(id)
            .fetch_one(&mut **tx)
            .await
            .unwrap();
    (id, account)
}

/// Books one transfer as round 1 did: the row, both accounts' totals, the org's sequence and
/// its per-kind totals. `into_org`: credits into the org's account.
async fn book(
    tx: &mut Transaction<'_, Postgres>,
    (org, account): (Uuid, i64),
    kind: &str,
    amount: &str,
    into_org: bool,
    counterparty: &str,
    refs: Value,
) {
    let amount = dec(amount);
    let other: i64 = sqlx::query_scalar("SELECT id FROM accounts WHERE code = $1")
        .bind(counterparty)
        .fetch_one(&mut **tx)
        .await
        .unwrap();
    let (debit, credit) = if into_org {
        (other, account)
    } else {
        (account, other)
    };
    let (seq, balance): (i64, Decimal) = sqlx::query_as(
        "UPDATE accounts SET transfer_seq = transfer_seq + 1,
                credits_posted = credits_posted + CASE WHEN id = $2 THEN $3 ELSE 0 END,
                debits_posted = debits_posted + CASE WHEN id = $2 THEN 0 ELSE $3 END
          WHERE id = $1
         RETURNING transfer_seq, credits_posted - debits_posted",
    )
    .bind(account)
    .bind(credit)
    .bind(amount)
    .fetch_one(&mut **tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE accounts SET credits_posted = credits_posted + CASE WHEN id = $2 THEN $3 ELSE 0 END,
                debits_posted = debits_posted + CASE WHEN id = $2 THEN 0 ELSE $3 END
          WHERE id = $1",
    )
    .bind(other)
    .bind(credit)
    .bind(amount)
    .execute(&mut **tx)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO transfers (id, org_id, org_seq, debit_account_id, credit_account_id, amount,
                                kind, balance_after, idempotency_key, actor, reason, refs)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'round-1', $7, $10)",
    )
    .bind(id)
    .bind(org)
    .bind(seq)
    .bind(debit)
    .bind(credit)
    .bind(amount)
    .bind(kind)
    .bind(balance)
    .bind(format!("r1:{id}"))
    .bind(refs)
    .execute(&mut **tx)
    .await
    .unwrap();
    let (c, d) = if into_org {
        (amount, Decimal::ZERO)
    } else {
        (Decimal::ZERO, amount)
    };
    sqlx::query(
        "INSERT INTO org_kind_totals (org_id, kind, credits_posted, debits_posted)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id, kind) DO UPDATE
            SET credits_posted = org_kind_totals.credits_posted + EXCLUDED.credits_posted,
                debits_posted = org_kind_totals.debits_posted + EXCLUDED.debits_posted",
    )
    .bind(org)
    .bind(kind)
    .bind(c)
    .bind(d)
    .execute(&mut **tx)
    .await
    .unwrap();
}

/// A credited round-1 purchase of the Growth package ($50.00: 5,000 credits + 250 bonus).
async fn purchase(tx: &mut Transaction<'_, Postgres>, org: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    // The snapshot as round 1 wrote it (no expiry fields).
    let package = json!({"id": "01970000-0000-7000-8000-000000000002", "name": "Growth",
        "price": {"amount_minor": 5000, "currency": "usd"}, "base_credits": "5000.000000",
        "bonus_credits": "250.000000", "active": true});
    sqlx::query(
        "INSERT INTO purchases (id, org_id, package_id, package, buyer, state, payment_intent_id,
                                expires_at, paid_at, credited_at)
         VALUES ($1, $2, '01970000-0000-7000-8000-000000000002', $3, 'ana', 'credited',
                 $4, now(), now(), now())",
    )
    .bind(id)
    .bind(org)
    .bind(package)
    .bind(format!("pi_{}", id.simple()))
    .execute(&mut **tx)
    .await
    .unwrap();
    id
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct GrantRow {
    source: String,
    amount: Decimal,
    remaining: Decimal,
    consumed: Decimal,
    refunded: Decimal,
    cost_basis_minor_per_credit: Decimal,
    purchase_id: Option<Uuid>,
}

async fn grants_of(conn: &mut PgConnection, org: Uuid) -> Vec<GrantRow> {
    sqlx::query_as(
        "SELECT source, amount, remaining, consumed, refunded, cost_basis_minor_per_credit,
                purchase_id
           FROM grants WHERE org_id = $1 ORDER BY id",
    )
    .bind(org)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Round-1 balances are unchanged by the grants migration, and its grants hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grants_migration_keeps_round_1_balances_and_gives_them_grants() {
    let admin_url = tests::admin_database_url().unwrap();
    let name = format!("cft_migration_{}", Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let url = tests::database_url(&admin_url, &name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let round_1 = sqlx::migrate::Migrator {
        migrations: Cow::Owned(
            store::MIGRATOR
                .iter()
                .filter(|m| m.version < GRANTS_MIGRATION)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    round_1.run(&pool).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    // A: a purchase with its bonus, usage, a positive adjustment, more usage, a partial refund
    // of the purchase (credits, then the bonus share as a reversal).
    let a = org(&mut tx, "round-1 a").await;
    let p = purchase(&mut tx, a.0).await;
    let of_p = json!({"purchase_id": p});
    book(&mut tx, a, "purchase", "5000", true, "sales", of_p.clone()).await;
    book(&mut tx, a, "bonus", "250", true, "promotions", of_p.clone()).await;
    book(&mut tx, a, "usage", "300", false, "usage:ai", json!({})).await;
    book(
        &mut tx,
        a,
        "adjustment",
        "100",
        true,
        "adjustments",
        json!({}),
    )
    .await;
    book(&mut tx, a, "usage", "1000", false, "usage:ai", json!({})).await;
    book(&mut tx, a, "refund", "2000", false, "refunds", of_p.clone()).await;
    book(
        &mut tx,
        a,
        "reversal",
        "100",
        false,
        "promotions",
        of_p.clone(),
    )
    .await;
    // B: usage past its credits (an overdraft).
    let b = org(&mut tx, "round-1 b").await;
    book(
        &mut tx,
        b,
        "adjustment",
        "10",
        true,
        "adjustments",
        json!({}),
    )
    .await;
    book(&mut tx, b, "usage", "25", false, "usage:infra", json!({})).await;
    // C: nothing booked yet.
    let c = org(&mut tx, "round-1 c").await;
    // D: a purchase, some usage, then a dispute that clawed back what was left (its refs name
    // only the dispute).
    let d = org(&mut tx, "round-1 d").await;
    let pd = purchase(&mut tx, d.0).await;
    let of_pd = json!({"purchase_id": pd});
    book(&mut tx, d, "purchase", "5000", true, "sales", of_pd.clone()).await;
    book(
        &mut tx,
        d,
        "bonus",
        "250",
        true,
        "promotions",
        of_pd.clone(),
    )
    .await;
    book(
        &mut tx,
        d,
        "adjustment",
        "40",
        true,
        "adjustments",
        json!({}),
    )
    .await;
    book(&mut tx, d, "usage", "100", false, "usage:ai", json!({})).await;
    sqlx::query(
        "INSERT INTO disputes (id, org_id, purchase_id, payment_intent_id, amount_minor, currency,
                               reason, status, clawed_back)
         VALUES ('dp_round_1', $1, $2, 'pi_d', 5000, 'usd', 'fraudulent', 'needs_response', 5150)",
    )
    .bind(d.0)
    .bind(pd)
    .execute(&mut *tx)
    .await
    .unwrap();
    book(
        &mut tx,
        d,
        "refund",
        "5150",
        false,
        "refunds",
        json!({"dispute_id": "dp_round_1"}),
    )
    .await;
    tx.commit().await.unwrap();
    let balances = || async {
        sqlx::query_as::<_, (Uuid, Decimal)>(
            "SELECT org_id, credits_posted - debits_posted FROM accounts
              WHERE org_id IS NOT NULL ORDER BY org_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = balances().await;
    assert_eq!(
        before,
        vec![
            (a.0, dec("1950")),
            (b.0, dec("-15")),
            (c.0, dec("0")),
            (d.0, dec("40"))
        ]
    );

    store::Store::migrate(&pool).await.unwrap();
    assert_eq!(balances().await, before, "balances unchanged");
    let mut conn = pool.acquire().await.unwrap();
    // Promotional before paid: the bonus burned first, then the purchase; at the second usage
    // the adjustment (promotional too) went before the purchase. The refund took the purchase's
    // credits; the reversal found its bonus spent and took the rest in the burn-down order.
    assert_eq!(
        grants_of(&mut conn, a.0).await,
        vec![
            GrantRow {
                source: "purchase".into(),
                amount: dec("5000"),
                remaining: dec("1950"),
                consumed: dec("950"),
                refunded: dec("2100"),
                cost_basis_minor_per_credit: dec("1"),
                purchase_id: Some(p),
            },
            GrantRow {
                source: "bonus".into(),
                amount: dec("250"),
                remaining: dec("0"),
                consumed: dec("250"),
                refunded: dec("0"),
                cost_basis_minor_per_credit: dec("0"),
                purchase_id: Some(p),
            },
            GrantRow {
                source: "adjustment".into(),
                amount: dec("100"),
                remaining: dec("0"),
                consumed: dec("100"),
                refunded: dec("0"),
                cost_basis_minor_per_credit: dec("0"),
                purchase_id: None,
            },
        ]
    );
    let b_grants = grants_of(&mut conn, b.0).await;
    assert_eq!(b_grants.len(), 1);
    assert_eq!(
        (b_grants[0].remaining, b_grants[0].consumed),
        (dec("0"), dec("10"))
    );
    assert!(grants_of(&mut conn, c.0).await.is_empty());
    // The clawback took the disputed payment's grants, not the adjustment the order would
    // have taken first: nothing of the disputed purchase is left to refund.
    let d_grants = grants_of(&mut conn, d.0).await;
    let by_source = |s: &str| d_grants.iter().find(|g| g.source == s).unwrap();
    assert_eq!(
        (
            by_source("purchase").remaining,
            by_source("purchase").refunded
        ),
        (dec("0"), dec("5000"))
    );
    assert_eq!(
        (by_source("bonus").consumed, by_source("bonus").refunded),
        (dec("100"), dec("150"))
    );
    assert_eq!(by_source("adjustment").remaining, dec("40"));
    drop(conn);

    // Migrating again changes nothing; the ledger's check holds; booking goes on from the
    // grants (B's next credit repays its overdraft first).
    store::Store::migrate(&pool).await.unwrap();
    let store = store::Store::from_pool(pool.clone()).await.unwrap();
    let violations = store.ledger().check_invariants().await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let refused = store
        .refunds()
        .request_refund(store::RefundOf::Purchase(pd), 100, "asked", "op", "r")
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            store::StoreError::RefundExceedsUnspent {
                refundable_minor: 0,
                ..
            }
        ),
        "{refused:?}"
    );
    let t = store
        .ledger()
        .post_adjustment(
            b.0,
            billing::Credits::from_str("20").unwrap(),
            "after",
            "op",
            "k",
        )
        .await
        .unwrap();
    assert_eq!(t.balance_after.to_string(), "5.000000");
    let mut conn = pool.acquire().await.unwrap();
    let b_grants = grants_of(&mut conn, b.0).await;
    assert_eq!(b_grants.len(), 2);
    assert_eq!(b_grants[1].remaining, dec("5"));
    let violations = store.ledger().check_invariants().await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");

    // A round-1 binary still running after the migration books without grant moves: the
    // ledger's check names it (its credits would otherwise read as an overdraft).
    let mut tx = pool.begin().await.unwrap();
    book(&mut tx, b, "usage", "1", false, "usage:ai", json!({})).await;
    tx.commit().await.unwrap();
    let violations = store.ledger().check_invariants().await.unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v.contains("moves no grant, though earlier ones did")),
        "{violations:?}"
    );
}
