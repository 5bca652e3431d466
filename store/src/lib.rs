//! Postgres access for creditflow: organizations and API keys, the ledger, idempotency records.
//!
//! Every query is compile-checked by sqlx against the migrations (the `.sqlx` folder at the top
//! of the workspace caches them so builds need no database; `scripts/sqlx-prepare` renews it).

pub mod disputes;
mod error;
pub mod idempotency;
pub mod inbox;
pub mod ingest;
pub mod ledger;
mod limits;
pub mod orgs;
pub mod prices;
pub mod processor_keys;
pub mod purchases;
pub mod refunds;
pub mod rollups;
pub mod summaries;
pub mod topups;
pub mod usage;

use std::{collections::HashMap, str::FromStr, time::Duration};

use billing::{Credits, SystemAccount};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use disputes::{DisputeReport, OpenedDispute};
pub use error::StoreError;
pub use idempotency::{Claim, request_hash};
pub use inbox::{EmailClaim, InboxEvent, PURCHASE_START, REFUND_START};
pub use ingest::{IngestConfig, Ingestor};
pub use ledger::{
    Balance, BookOutcome, LockedOrgs, NewTransfer, THRESHOLD_CROSSED, Totals, Transfer,
    TransferPage, TransferQuery,
};
pub use orgs::{ApiKey, DEFAULT_SOURCE, KeyGrant, NewApiKey, Org, Principal, Scope, Scopes};
pub use prices::NewPriceVersion;
pub use processor_keys::ProcessorKey;
pub use purchases::{Grant, Purchase};
pub use refunds::{ProcessorRefundReport, Refund, RefundOf};
pub use summaries::{PageOutcome, SUMMARY_ORG_RETRY, Summary};
pub use topups::{
    AlertClaim, AlertRecord, BillingSettings, NewAlert, OutboxBacklog, TopupRecord, TopupStart,
};
pub use usage::{
    EventOutcome, JobResult, OutboxRow, RatedEvent, Recorded, SUMMARY_REVISION, UsageJob,
};

/// The migrations, embedded so the binary can apply them (`creditflow migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A handle on the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    system_accounts: HashMap<SystemAccount, i64>,
    /// Whether usage events recorded before sources existed (source `''`, deduplicated by id
    /// alone) are present: only then does recording usage look for them.
    events_before_sources: bool,
    /// How far usage may take an org below zero when it has no limit of its own.
    overdraft_limit: Credits,
    /// Entries of a summary's per-line and per-user breakdowns at most (the rest as `other`).
    breakdown_max: usize,
}

/// A summary breakdown's entries at most, unless configured otherwise.
pub const DEFAULT_BREAKDOWN_MAX: usize = 100;

/// The overdraft limit of an org without its own, unless configured otherwise.
pub const DEFAULT_OVERDRAFT_LIMIT_CREDITS: i64 = 1_000_000;

/// How long a caller waits for a database connection, unless configured otherwise.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Connects a pool (bounded by `max_connections`) and loads the system account ids.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Store::connect_bounded(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// Connects a pool whose callers wait at most `acquire_timeout` for a connection; then the
    /// call fails as [`StoreError::is_unavailable`] (the API answers 503).
    pub async fn connect_bounded(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("creditflow");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Store::from_pool(pool).await
    }

    /// Wraps an existing pool; the schema must be migrated.
    pub async fn from_pool(pool: PgPool) -> Result<Store, StoreError> {
        let rows = sqlx::query!("SELECT id, code FROM accounts WHERE org_id IS NULL")
            .fetch_all(&pool)
            .await?;
        let mut system_accounts = HashMap::new();
        for account in SystemAccount::ALL {
            let row = rows
                .iter()
                .find(|r| r.code == account.code())
                .ok_or_else(|| {
                    StoreError::Schema(format!("system account `{}` is missing", account.code()))
                })?;
            system_accounts.insert(account, row.id);
        }
        let events_before_sources = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM usage_events WHERE source = '') AS "x!""#
        )
        .fetch_one(&pool)
        .await?;
        Ok(Store {
            pool,
            system_accounts,
            events_before_sources,
            overdraft_limit: Credits::whole(DEFAULT_OVERDRAFT_LIMIT_CREDITS),
            breakdown_max: DEFAULT_BREAKDOWN_MAX,
        })
    }

    /// The same store over another pool (of the same database).
    pub fn with_pool(&self, pool: PgPool) -> Store {
        Store {
            pool,
            system_accounts: self.system_accounts.clone(),
            events_before_sources: self.events_before_sources,
            overdraft_limit: self.overdraft_limit,
            breakdown_max: self.breakdown_max,
        }
    }

    /// The same store with summary breakdowns of at most `max` entries (the rest as `other`).
    pub fn with_breakdown_max(mut self, max: usize) -> Store {
        self.breakdown_max = max.max(1);
        self
    }

    /// The same store with another default overdraft limit (orgs without their own).
    pub fn with_overdraft_limit(mut self, limit: Credits) -> Store {
        self.overdraft_limit = limit;
        self
    }

    /// Applies pending migrations.
    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        MIGRATOR
            .run(pool)
            .await
            .map_err(|e| StoreError::Schema(e.to_string()))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query_scalar!("SELECT 1 AS one")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Commits a transaction that takes a transaction id: the database accepts writes (a
    /// server starting up, in recovery or read-only refuses it).
    pub async fn probe_commit(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query_scalar!("SELECT txid_current()::bigint AS txid")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) fn system_account_id(&self, account: SystemAccount) -> i64 {
        self.system_accounts[&account]
    }
}
