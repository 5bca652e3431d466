//! The HTTP API: axum routes under `/v1`, API-key auth, problem+json errors, and the OpenAPI
//! document generated from the same routes.

pub mod auth;
pub mod budgets;
pub mod check;
pub mod cloudevents;
pub mod codes;
pub mod error;
pub mod extract;
pub mod grants;
pub mod health;
pub mod holds;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod orgs;
pub mod packages;
pub mod pages;
pub mod payment_method;
pub mod prices;
pub mod pricing;
pub mod purchases;
pub mod refunds;
pub mod settings;
pub mod starts;
pub mod summaries;
pub mod usage;
pub mod usecases;
pub mod webhooks;

use std::time::Duration;

use axum::{Router, extract::DefaultBodyLimit, http::StatusCode};
use pricing::PriceCache;
use store::{IngestConfig, Ingestor, Store};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, router::UtoipaMethodRouterExt, routes};

pub use auth::{Caller, OperatorKeys};
pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub operator_keys: OperatorKeys,
    pub temporal: temporalio_client::Client,
    /// How long a readiness check waits for each dependency.
    pub probe_timeout: Duration,
    pub prices: PriceCache,
    pub ingestor: Ingestor,
    /// How far ahead a new price version must start (longer than the price refresh interval).
    pub price_publish_lead: chrono::Duration,
    /// How far after the price cache's last check a usage event may be stamped: the publish
    /// lead less the price refresh interval. A version the cache does not know was published
    /// after that check, so it starts at least this far after it; an accepted event can
    /// therefore never fall under a version published after it was rated.
    pub usage_future_skew: chrono::Duration,
    pub keys: auth::KeyCache,
    /// The task queue workflows are started on.
    pub task_queue: String,
    pub stripe_webhook_secret: String,
    /// How long a buyer has to pay a checkout.
    pub checkout_expiry: Duration,
    pub limits: RequestLimits,
    pub usage: UsageBounds,
    /// Usage bytes in flight, in [`usage::BYTES_PER_PERMIT`] units.
    pub usage_bytes: std::sync::Arc<tokio::sync::Semaphore>,
    /// Holds this process made, by the org's id for them: a settle finds its hold here without
    /// a read (see [`holds::HoldCache`]).
    pub holds: holds::HoldCache,
}

/// Requests per org per minute for what costs a processor call and a workflow (0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub purchases_per_minute: u32,
    pub setups_per_minute: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            purchases_per_minute: 20,
            setups_per_minute: 10,
        }
    }
}

impl AppState {
    /// Counts one `action` of `org_id` against its per-minute `limit`: 429 `rate_limited`
    /// with `Retry-After` when over it.
    pub async fn take_rate(
        &self,
        org_id: uuid::Uuid,
        action: &str,
        limit: u32,
    ) -> Result<(), error::ApiError> {
        match self.store.limits().take_rate(org_id, action, limit).await? {
            None => Ok(()),
            Some(retry_after) => Err(error::ApiError::rate_limited(
                format!(
                    "at most {limit} {action} requests per minute for an organization; try again in {retry_after} s"
                ),
                retry_after,
            )),
        }
    }
}

/// Tunables of the API process.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub probe_timeout: Duration,
    pub price_refresh_every: Duration,
    /// How far ahead a new price version must start. It also bounds how far in the future a
    /// usage event may be stamped (less `price_refresh_every`; see [`AppState::usage_future_skew`]).
    pub price_publish_lead: Duration,
    pub ingest: IngestConfig,
    /// How long an authenticated API key is trusted without asking the database again.
    pub key_cache_ttl: Duration,
    pub task_queue: String,
    pub stripe_webhook_secret: String,
    pub checkout_expiry: Duration,
    pub limits: RequestLimits,
    pub usage: UsageBounds,
}

/// Bounds on usage ingestion (config `[ingest]`).
#[derive(Debug, Clone, Copy)]
pub struct UsageBounds {
    /// Bytes of usage request bodies held at once (read, parsed or waiting on the writer);
    /// beyond it a request is refused 429 `usage_overloaded` with `Retry-After`.
    pub bytes_in_flight_max: usize,
    /// The largest cost one event may have (`event_cost_too_high` beyond it).
    pub max_event_cost: billing::Credits,
    /// How far usage may overdraw an org without a limit of its own.
    pub overdraft_limit: billing::Credits,
    /// How long before now an event may be stamped (`occurred_too_long_ago` beyond it).
    pub late_usage_max: chrono::Duration,
}

impl Default for UsageBounds {
    fn default() -> Self {
        UsageBounds {
            bytes_in_flight_max: 64 * 1024 * 1024,
            max_event_cost: billing::Credits::whole(DEFAULT_MAX_EVENT_COST_CREDITS),
            overdraft_limit: billing::Credits::whole(store::DEFAULT_OVERDRAFT_LIMIT_CREDITS),
            late_usage_max: chrono::Duration::days(DEFAULT_LATE_USAGE_MAX_DAYS),
        }
    }
}

/// How many days before now usage may be stamped, unless configured otherwise (Stripe's bound).
pub const DEFAULT_LATE_USAGE_MAX_DAYS: i64 = 35;

/// The largest cost of one event, unless configured otherwise.
pub const DEFAULT_MAX_EVENT_COST_CREDITS: i64 = 100_000;

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            probe_timeout: Duration::from_secs(2),
            price_refresh_every: Duration::from_secs(1),
            price_publish_lead: Duration::from_secs(300),
            ingest: IngestConfig::default(),
            key_cache_ttl: Duration::from_secs(2),
            task_queue: "creditflow".into(),
            stripe_webhook_secret: String::new(),
            checkout_expiry: Duration::from_secs(30 * 60),
            limits: RequestLimits::default(),
            usage: UsageBounds::default(),
        }
    }
}

impl AppState {
    /// Loads the price catalog and starts the background pieces (price refresh, usage writers)
    /// on the current runtime.
    pub async fn start(
        store: Store,
        operator_keys: OperatorKeys,
        temporal: temporalio_client::Client,
        options: ApiOptions,
    ) -> Result<AppState, store::StoreError> {
        let store = store.with_overdraft_limit(options.usage.overdraft_limit);
        let prices = PriceCache::load(&store).await?;
        prices.spawn_refresher(store.clone(), options.price_refresh_every);
        Ok(AppState {
            ingestor: Ingestor::start(store.clone(), options.ingest),
            store,
            operator_keys,
            temporal,
            probe_timeout: options.probe_timeout,
            prices,
            price_publish_lead: chrono::Duration::from_std(options.price_publish_lead)
                .unwrap_or(chrono::Duration::seconds(300)),
            usage_future_skew: chrono::Duration::from_std(
                options
                    .price_publish_lead
                    .saturating_sub(options.price_refresh_every),
            )
            .unwrap_or(chrono::Duration::zero()),
            keys: auth::KeyCache::new(options.key_cache_ttl),
            task_queue: options.task_queue,
            stripe_webhook_secret: options.stripe_webhook_secret,
            checkout_expiry: options.checkout_expiry,
            limits: options.limits,
            holds: holds::HoldCache::default(),
            usage_bytes: std::sync::Arc::new(tokio::sync::Semaphore::new(
                // At least one largest body, or such a body could never be taken.
                options
                    .usage
                    .bytes_in_flight_max
                    .max(usage::USAGE_BODY_LIMIT_BYTES)
                    .div_ceil(usage::BYTES_PER_PERMIT),
            )),
            usage: options.usage,
        })
    }
}

/// Every route with its OpenAPI description: the router and the document are built from this
/// one list ([`openapi::document`]).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::openapi_json))
        .routes(routes!(pages::success))
        .routes(routes!(pages::cancel))
        .routes(routes!(orgs::create_org))
        .routes(routes!(orgs::get_org))
        .routes(routes!(orgs::list_keys, orgs::create_key))
        .routes(routes!(orgs::revoke_key))
        .routes(routes!(orgs::put_overdraft_limit))
        .routes(routes!(ledger::balance))
        .routes(routes!(ledger::transactions))
        .routes(routes!(ledger::adjust))
        .routes(routes!(grants::list_grants, grants::grant_promo))
        .routes(routes!(holds::create_hold, holds::list_holds))
        .routes(routes!(holds::get_hold))
        .routes(routes!(holds::settle_hold))
        .routes(routes!(holds::void_hold))
        .routes(routes!(holds::extend_hold))
        .routes(routes!(check::check))
        .routes(routes!(budgets::put_budget, budgets::delete_budget))
        .routes(routes!(budgets::list_budgets))
        .routes(routes!(prices::current, prices::publish))
        .routes(routes!(usage::ingest).layer(DefaultBodyLimit::max(usage::USAGE_BODY_LIMIT_BYTES)))
        .routes(routes!(packages::list_packages, packages::create_package))
        .routes(routes!(packages::put_package))
        .routes(routes!(packages::package_versions))
        .routes(routes!(purchases::create_purchase))
        .routes(routes!(purchases::get_purchase))
        .routes(routes!(webhooks::stripe_webhook))
        .routes(routes!(settings::get_settings, settings::put_settings))
        .routes(routes!(settings::save_payment_method))
        .routes(routes!(payment_method::start_payment_method_setup))
        .routes(routes!(settings::topups))
        .routes(routes!(settings::alerts))
        .routes(routes!(summaries::list))
        .routes(routes!(summaries::one))
        .routes(routes!(refunds::list_refunds, refunds::create_refund))
        .routes(routes!(
            refunds::list_topup_refunds,
            refunds::create_topup_refund
        ))
}

pub fn router(state: AppState, body_limit_bytes: usize) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
