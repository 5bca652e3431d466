//! Generating and revising stored months: per page of orgs, an org that fails retried alone,
//! late usage revising the months it touches and re-chaining the later ones.

use std::collections::BTreeMap;

use billing::summary::Month;
use chrono::{Datelike, NaiveDate};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{OutboxEvent, StoreError, outbox};

use super::*;

/// Which orgs a generation covers.
#[derive(Clone, Copy)]
enum Selection {
    /// Up to `limit` orgs after `after`, by id.
    Page { after: Option<Uuid>, limit: i64 },
    /// This org, if its month is stored.
    Stored(Uuid),
    /// This org.
    One(Uuid),
}

impl Summaries<'_> {
    /// Generates and stores the month's summaries for up to `limit` orgs after `after` (by id):
    /// a summary whose figures equal the latest stored revision is not stored again, a changed
    /// one (late usage) becomes the next revision.
    ///
    /// The chain holds across revisions: when an org's month gets a new revision, every later
    /// month already stored for that org is recomputed too, and those whose figures changed
    /// (their opening at least) get a new revision as well, so each stored month's closing stays
    /// the next stored month's opening. Months never generated are not created here. Everything
    /// a page writes is stored in one transaction, so a retry after a crash finds either all of
    /// it or none of it.
    ///
    /// The month's lock is held (exclusively) from before the snapshot is taken until the page
    /// is stored: usage of this month still committing is in the snapshot, and usage committing
    /// after sees the stored summary and asks for a revision (see `usage::revisions_due`).
    pub async fn generate_summaries(
        &self,
        month: Month,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<PageOutcome, StoreError> {
        self.generate_locked(month, Selection::Page { after, limit })
            .await
    }

    /// Like [`Summaries::generate_summaries`], but an org that fails never stalls the month: when
    /// the page fails as a whole (not for want of the database), each of its orgs is tried
    /// alone; those that still fail are recorded in `summary_failures` and queued to be retried
    /// alone (outbox `summary.generate_org`), and the page reports them.
    pub async fn generate_summaries_isolated(
        &self,
        month: Month,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<PageOutcome, StoreError> {
        let err = match self.generate_summaries(month, after, limit).await {
            Ok(done) => return Ok(done),
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(error = %err, %month, "a summary page failed; trying its orgs one by one");
        let (orgs, _) = self.org_ids_page(after, limit).await?;
        let mut done = PageOutcome {
            orgs: orgs.len(),
            last_org: orgs.last().copied(),
            ..PageOutcome::default()
        };
        for org in orgs {
            match self.generate_org_summary(month, org).await {
                Ok(one) => {
                    done.revisions_written += one.revisions_written;
                    done.later_revisions_written += one.later_revisions_written;
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, org_id = %org, %month, "an org's summary failed; it is retried alone");
                    self.record_summary_failure(org, month, &e.to_string())
                        .await?;
                    done.failed_orgs.push(org);
                }
            }
        }
        Ok(done)
    }

    /// One org's month, generated alone (a retry after it failed in its page); clears its
    /// failure once stored.
    pub async fn generate_org_summary(
        &self,
        month: Month,
        org_id: Uuid,
    ) -> Result<PageOutcome, StoreError> {
        self.generate_locked(month, Selection::One(org_id)).await
    }

    async fn record_summary_failure(
        &self,
        org_id: Uuid,
        month: Month,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query_scalar!(
            r#"INSERT INTO summary_failures (org_id, month, error) VALUES ($1, $2, $3)
               ON CONFLICT (org_id, month) DO UPDATE
                  SET error = EXCLUDED.error, failures = summary_failures.failures + 1,
                      last_at = now()
               RETURNING (xmax = 0) AS "first!""#,
            org_id,
            month.first_day(),
            error
        )
        .fetch_one(&mut *tx)
        .await?;
        if first {
            let retry = OutboxEvent::SummaryGenerateOrg { month };
            outbox::write(&mut tx, &[(org_id, retry)]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Orgs whose month could not be summarised yet: id, why, and how many times it failed.
    pub async fn summary_failures(
        &self,
        month: Month,
    ) -> Result<Vec<(Uuid, String, i32)>, StoreError> {
        Ok(sqlx::query!(
            "SELECT org_id, error, failures FROM summary_failures WHERE month = $1 ORDER BY org_id",
            month.first_day()
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.org_id, r.error, r.failures))
        .collect())
    }

    /// Regenerates one org's stored month (and re-chains its later stored months), as late
    /// usage asks through the outbox; a month not stored yet is left to its generation.
    pub async fn revise_summaries(
        &self,
        org_id: Uuid,
        month: Month,
    ) -> Result<PageOutcome, StoreError> {
        self.generate_locked(month, Selection::Stored(org_id)).await
    }

    async fn generate_locked(
        &self,
        month: Month,
        selection: Selection,
    ) -> Result<PageOutcome, StoreError> {
        // Grants that expired by the month's end leave in it: their expiries are booked (at
        // their instants) before the month is read, whether or not the sweep got to them.
        if month.is_closed_at(self.clock.booking_time().unwrap_or_else(chrono::Utc::now)) {
            self.grants().expire_due(i64::MAX).await?;
        }
        let key = crate::usage::month_lock_key(month);
        let mut conn = self.pool.acquire().await?;
        sqlx::query!("SELECT pg_advisory_lock($1)", key)
            .execute(&mut *conn)
            .await?;
        let outcome = Summaries::generate_in(&mut conn, month, selection, self.breakdown_max).await;
        let unlocked = sqlx::query_scalar!("SELECT pg_advisory_unlock($1)", key)
            .fetch_one(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Closing the connection releases the lock with it.
            drop(conn.detach());
        }
        outcome
    }

    async fn generate_in(
        conn: &mut PgConnection,
        month: Month,
        selection: Selection,
        breakdown_max: usize,
    ) -> Result<PageOutcome, StoreError> {
        use sqlx::Connection;
        // One snapshot for every figure the page reads: a late event landing meanwhile is in
        // all of them or in none, so a month and the later ones it revises always chain.
        let mut tx = conn.begin().await?;
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        let orgs: Vec<Uuid> = match selection {
            Selection::Page { after, limit } => {
                sqlx::query_scalar!(
                    "SELECT id FROM orgs WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
                    after,
                    limit
                )
                .fetch_all(&mut *tx)
                .await?
            }
            Selection::One(org) => vec![org],
            Selection::Stored(org) => sqlx::query_scalar!(
                "SELECT DISTINCT org_id FROM monthly_summaries WHERE org_id = $1 AND month = $2",
                org,
                month.first_day()
            )
            .fetch_all(&mut *tx)
            .await?,
        };
        let mut fresh = Summaries::changed_in(&mut tx, &orgs, month, breakdown_max).await?;
        let revisions_written = fresh.len();
        let changed: Vec<Uuid> = fresh.iter().map(|(_, s)| s.org_id).collect();
        let mut later_revisions_written = 0;
        if !changed.is_empty() {
            // Bounded: at most one row per org and calendar month stored after this one, and
            // only closed months are generated, so no more months than there are up to today.
            let later = sqlx::query!(
                "SELECT DISTINCT org_id, month FROM monthly_summaries
                  WHERE org_id = ANY($1) AND month > $2
                  ORDER BY month, org_id",
                &changed[..],
                month.first_day()
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut by_month: BTreeMap<NaiveDate, Vec<Uuid>> = BTreeMap::new();
            for r in later {
                by_month.entry(r.month).or_default().push(r.org_id);
            }
            for (first_day, stored_orgs) in by_month {
                let later_month = Month::new(first_day.year(), first_day.month())
                    .ok_or_else(|| StoreError::Decode(format!("summary month {first_day}")))?;
                let revised =
                    Summaries::changed_in(&mut tx, &stored_orgs, later_month, breakdown_max)
                        .await?;
                later_revisions_written += revised.len();
                fresh.extend(revised);
            }
        }
        for (revision, s) in &fresh {
            let m = &s.movements;
            sqlx::query!(
                "INSERT INTO monthly_summaries (org_id, month, revision, opening, purchased, bonus,
                     topup, refunded, adjusted, reversed, used, closing, lines, users, promo,
                     expired)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 ON CONFLICT DO NOTHING",
                s.org_id,
                s.month.first_day(),
                revision,
                m.opening.as_decimal(),
                m.purchased.as_decimal(),
                m.bonus.as_decimal(),
                m.topup.as_decimal(),
                m.refunded.as_decimal(),
                m.adjusted.as_decimal(),
                m.reversed.as_decimal(),
                m.used.as_decimal(),
                s.closing.as_decimal(),
                s.lines,
                s.users,
                m.promo.as_decimal(),
                m.expired.as_decimal()
            )
            .execute(&mut *tx)
            .await?;
        }
        if let Selection::One(org) = selection {
            // Stored with its summary: the failure is over.
            sqlx::query!(
                "DELETE FROM summary_failures WHERE org_id = $1 AND month = $2",
                org,
                month.first_day()
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(PageOutcome {
            orgs: orgs.len(),
            revisions_written,
            later_revisions_written,
            last_org: orgs.last().copied(),
            failed_orgs: vec![],
        })
    }

    /// The month's summaries of these orgs whose figures differ from their latest stored
    /// revision (or that have none), each with the revision it is to be stored as.
    async fn changed_in(
        conn: &mut PgConnection,
        org_ids: &[Uuid],
        month: Month,
        breakdown_max: usize,
    ) -> Result<Vec<(i32, Summary)>, StoreError> {
        let computed = Summaries::compute_in(conn, org_ids, month, breakdown_max).await?;
        let latest = Summaries::latest_in(conn, org_ids, month).await?;
        let mut fresh = Vec::new();
        for s in computed {
            match latest.get(&s.org_id) {
                Some(old)
                    if old.movements == s.movements
                        && old.lines == s.lines
                        && old.users == s.users => {}
                Some(old) => fresh.push((old.revision + 1, s)),
                None => fresh.push((1, s)),
            }
        }
        Ok(fresh)
    }
}
