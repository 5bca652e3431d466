//! Postgres access for creditflow: organizations and API keys, the ledger, idempotency records.
//!
//! Every query is compile-checked by sqlx against the migrations (the `.sqlx` folder at the top
//! of the workspace caches them so builds need no database; `scripts/sqlx-prepare` renews it).

/// A per-aggregate handle: borrows the store (its pool and system-account ids) so a call names
/// the module its code lives in: `store.purchases().grant_purchase(id)`.
macro_rules! handle {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy)]
        pub struct $name<'a>(pub(crate) &'a crate::Store);

        impl std::ops::Deref for $name<'_> {
            type Target = crate::Store;
            fn deref(&self) -> &crate::Store {
                self.0
            }
        }
    };
}

pub mod alerts;
pub mod budgets;
mod clock;
pub mod disputes;
mod error;
pub mod grants;
pub mod holds;
pub mod idempotency;
pub mod inbox;
pub mod ingest;
pub mod ledger;
mod limits;
pub mod mail;
pub mod orgs;
pub mod outbox;
pub mod packages;
pub mod positions;
pub mod prices;
pub mod processor_keys;
pub mod purchases;
pub mod refunds;
pub mod rollups;
pub mod settings;
pub mod summaries;
pub mod topups;
pub mod usage;

use std::{collections::HashMap, str::FromStr, time::Duration};

use billing::{Credits, SystemAccount};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use alerts::{AlertClaim, AlertRecord, Alerts, NewAlert};
pub use budgets::{BudgetAlert, Budgets};
pub use clock::Clock;
pub use disputes::{DisputeReport, Disputes, OpenedDispute};
pub use error::StoreError;
pub use grants::{CreditGrant, Expiring, GrantPage, GrantQuery, GrantState, Grants, NewPromo};
pub use holds::{
    Hold, HoldCounts, HoldOp, HoldOutcome, HoldQuery, HoldRequest, Holds, Position, SettleRequest,
};
pub use idempotency::{Claim, request_hash};
pub use inbox::{Inbox, InboxEvent};
pub use ingest::{IngestConfig, Ingestor};
pub use ledger::{
    Balance, BookOutcome, Ledger, LockedOrgs, NewTransfer, Totals, Transfer, TransferPage,
    TransferQuery,
};
pub use limits::Limits;
pub use mail::{EmailClaim, Mail};
pub use orgs::{ApiKey, DEFAULT_SOURCE, KeyGrant, NewApiKey, Org, Orgs, Principal, Scope, Scopes};
pub use outbox::{Backlog, Crossed, Outbox, OutboxEvent, OutboxRow};
pub use packages::Packages;
pub use prices::{NewPriceVersion, Prices};
pub use processor_keys::{ProcessorKey, ProcessorKeys};
pub use purchases::{Grant, Purchase, Purchases};
pub use refunds::{ProcessorRefundReport, Refund, RefundOf, Refunds};
pub use settings::{BillingSettings, Settings};
pub use summaries::{PageOutcome, Summaries, Summary};
pub use topups::{TopupRecord, TopupStart, Topups};
pub use usage::{EventOutcome, JobResult, RatedEvent, Recorded, UsageEvents, UsageJob};

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
    /// The time bookings are made at.
    clock: Clock,
    /// What the usage writer committed last, per org (see [`positions`]).
    positions: positions::Positions,
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
            clock: Clock::Database,
            positions: positions::Positions::default(),
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
            clock: self.clock.clone(),
            positions: self.positions.clone(),
        }
    }

    /// The same store, the writer's entries for checks standing `lease` (see [`positions`]).
    pub fn with_position_lease(mut self, lease: Duration) -> Store {
        self.positions = self.positions.with_lease(lease);
        self
    }

    /// The same store booking at `clock`'s time.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
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
            .map_err(|e| StoreError::Schema(e.to_string()))?;
        grants::backfill(pool).await
    }

    /// The time the store books at now: the manual clock's, or this machine's.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.booking_time().unwrap_or_else(chrono::Utc::now)
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

    pub fn alerts(&self) -> Alerts<'_> {
        Alerts(self)
    }
    pub fn disputes(&self) -> Disputes<'_> {
        Disputes(self)
    }
    pub fn grants(&self) -> Grants<'_> {
        Grants(self)
    }
    pub fn holds(&self) -> Holds<'_> {
        Holds(self)
    }
    pub fn budgets(&self) -> Budgets<'_> {
        Budgets(self)
    }
    pub fn inbox(&self) -> Inbox<'_> {
        Inbox(self)
    }
    pub fn ledger(&self) -> Ledger<'_> {
        Ledger(self)
    }
    pub fn limits(&self) -> Limits<'_> {
        Limits(self)
    }
    pub fn mail(&self) -> Mail<'_> {
        Mail(self)
    }
    pub fn orgs(&self) -> Orgs<'_> {
        Orgs(self)
    }
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox(self)
    }
    pub fn packages(&self) -> Packages<'_> {
        Packages(self)
    }
    pub fn prices(&self) -> Prices<'_> {
        Prices(self)
    }
    pub fn processor_keys(&self) -> ProcessorKeys<'_> {
        ProcessorKeys(self)
    }
    pub fn purchases(&self) -> Purchases<'_> {
        Purchases(self)
    }
    pub fn refunds(&self) -> Refunds<'_> {
        Refunds(self)
    }
    pub fn settings(&self) -> Settings<'_> {
        Settings(self)
    }
    pub fn summaries(&self) -> Summaries<'_> {
        Summaries(self)
    }
    pub fn topups(&self) -> Topups<'_> {
        Topups(self)
    }
    pub fn usage(&self) -> UsageEvents<'_> {
        UsageEvents(self)
    }
}
