//! The transfers of one booking as column arrays: one `INSERT … SELECT FROM UNNEST` whatever
//! their number.

use billing::{Credits, TransferKind};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::NewTransfer;
use crate::StoreError;

/// Column-wise rows for one bulk insert.
#[derive(Default)]
pub(super) struct NewRows {
    ids: Vec<Uuid>,
    orgs: Vec<Uuid>,
    seqs: Vec<i64>,
    debits: Vec<i64>,
    credits: Vec<i64>,
    amounts: Vec<Decimal>,
    kinds: Vec<String>,
    balances: Vec<Decimal>,
    keys: Vec<String>,
    actors: Vec<String>,
    reasons: Vec<String>,
    refs: Vec<serde_json::Value>,
    grants: Vec<serde_json::Value>,
    /// A row's own booking time (an expiry's is its grant's `expires_at`).
    ats: Vec<Option<DateTime<Utc>>>,
}

impl NewRows {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        id: Uuid,
        org: Uuid,
        seq: i64,
        debit: i64,
        credit: i64,
        amount: Credits,
        kind: TransferKind,
        balance_after: Credits,
        t: &NewTransfer,
        grants: &[billing::GrantMove],
        at: Option<DateTime<Utc>>,
    ) {
        self.ids.push(id);
        self.orgs.push(org);
        self.seqs.push(seq);
        self.debits.push(debit);
        self.credits.push(credit);
        self.amounts.push(amount.as_decimal());
        self.kinds.push(kind.as_str().to_string());
        self.balances.push(balance_after.as_decimal());
        self.keys.push(t.idempotency_key.clone());
        self.actors.push(t.actor.clone());
        self.reasons.push(t.reason.clone());
        #[allow(clippy::expect_used, reason = "Refs is plain strings and ids")]
        self.refs
            .push(serde_json::to_value(&t.refs).expect("refs serialize to JSON"));
        #[allow(clippy::expect_used, reason = "grant moves are ids and decimals")]
        self.grants
            .push(serde_json::to_value(grants).expect("grant moves serialize to JSON"));
        self.ats.push(at);
    }

    /// Inserts all rows in one statement, booked at `at` (the transaction's start when
    /// `None`), and returns their common `created_at`.
    pub(super) async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        at: Option<DateTime<Utc>>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let created_at = sqlx::query_scalar!(
            r#"WITH inserted AS (
                 INSERT INTO transfers (id, org_id, org_seq, debit_account_id, credit_account_id,
                                        amount, kind, balance_after, idempotency_key, actor,
                                        reason, refs, grants, created_at)
                 SELECT u.id, u.org_id, u.seq, u.debit, u.credit, u.amount, u.kind, u.balance,
                        u.key, u.actor, u.reason, u.refs, u.grants, COALESCE(u.at, $13, now())
                   FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[],
                               $5::bigint[], $6::numeric[], $7::text[], $8::numeric[],
                               $9::text[], $10::text[], $11::text[], $12::jsonb[],
                               $14::jsonb[], $15::timestamptz[])
                     AS u(id, org_id, seq, debit, credit, amount, kind, balance, key, actor,
                          reason, refs, grants, at)
                 RETURNING 1)
               SELECT COALESCE($13, now()) AS "created_at!""#,
            &self.ids,
            &self.orgs,
            &self.seqs,
            &self.debits,
            &self.credits,
            &self.amounts,
            &self.kinds,
            &self.balances,
            &self.keys,
            &self.actors,
            &self.reasons,
            &self.refs,
            at,
            &self.grants,
            &self.ats as &[Option<DateTime<Utc>>]
        )
        .fetch_one(&mut **tx)
        .await?;
        Ok(created_at)
    }
}
