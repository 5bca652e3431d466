//! Starting the pieces: the Temporal client, the HTTP API, the worker.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use api::{ApiOptions, AppState, OperatorKeys};
use store::{IngestConfig, Store};
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};
use temporalio_common::telemetry::{
    PrometheusExporterOptions, TelemetryOptions, metrics::CoreMeter,
    start_prometheus_metric_exporter,
};
use temporalio_sdk::{Runtime, Worker, runtime::RuntimeOptions};
use tokio::net::TcpListener;

use crate::{
    config::{Settings, Temporal},
    metrics::MetricsHandle,
};

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn connect_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect_bounded(
        settings.database.url.expose(),
        settings.database.max_connections,
        Duration::from_millis(settings.database.acquire_timeout_ms),
    )
    .await
    .map(|s| s.with_breakdown_max(settings.summaries.breakdown_max))
    .context("connecting to Postgres")
}

pub async fn connect_temporal(t: &Temporal) -> anyhow::Result<Client> {
    let url = Url::parse(&t.url).context("temporal.url")?;
    let options = ConnectionOptions::new(url)
        .identity(format!("creditflow@{}", std::process::id()))
        .connect_timeout(Duration::from_secs(10))
        .build();
    let connection = Connection::connect(options)
        .await
        .with_context(|| format!("connecting to Temporal at {}", t.url))?;
    Ok(Client::new(
        connection,
        ClientOptions::new(t.namespace.clone()).build(),
    )?)
}

pub async fn app_state(
    settings: &Settings,
    store: Store,
    temporal: Client,
) -> anyhow::Result<AppState> {
    let options = ApiOptions {
        probe_timeout: PROBE_TIMEOUT,
        price_refresh_every: Duration::from_millis(settings.pricing.refresh_ms),
        price_publish_lead: Duration::from_millis(settings.pricing.publish_lead_ms),
        ingest: IngestConfig {
            writers: settings.ingest.writers,
            queue_jobs_per_org: settings.ingest.queue_jobs_per_org,
            batch_events_max: settings.ingest.batch_events_max,
        },
        usage: api::UsageBounds {
            bytes_in_flight_max: settings.ingest.bytes_in_flight_max,
            max_event_cost: settings.ingest.max_event_cost_credits,
            overdraft_limit: settings.ingest.overdraft_limit_credits,
            late_usage_max: chrono::Duration::days(settings.ingest.late_usage_max_days.into()),
        },
        task_queue: settings.temporal.task_queue.clone(),
        stripe_webhook_secret: settings.stripe.webhook_secret.expose().to_string(),
        checkout_expiry: Duration::from_secs(settings.checkout.expiry_secs),
        limits: api::RequestLimits {
            purchases_per_minute: settings.limits.purchases_per_minute,
            setups_per_minute: settings.limits.setups_per_minute,
        },
        ..ApiOptions::default()
    };
    // Every process must know a version before it applies, and the difference is how far in
    // the future usage may be stamped (see `AppState::usage_future_skew`).
    anyhow::ensure!(
        options.price_publish_lead > options.price_refresh_every,
        "pricing.publish_lead_ms must be longer than pricing.refresh_ms"
    );
    let keys = OperatorKeys::new(settings.auth.operator_keys.iter().map(|k| k.expose()));
    Ok(AppState::start(store, keys, temporal, options).await?)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    body_limit_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = api::router(state, body_limit_bytes);
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server")
}

/// What the activities reach: the processor, the mail server, the checkout return URLs.
pub fn activity_deps(settings: &Settings, store: Store) -> anyhow::Result<activities::Deps> {
    Ok(activities::Deps {
        store,
        payments: activities::payments::Payments::new(
            &settings.stripe.api_base,
            settings.stripe.secret_key.expose(),
        )?,
        mailer: activities::mail::Mailer::new(
            &settings.mail.smtp_host,
            settings.mail.smtp_port,
            &settings.mail.from,
        )?,
        checkout_urls: activities::purchase::CheckoutUrls {
            success_url: settings.checkout.success_url.clone(),
            cancel_url: settings.checkout.cancel_url.clone(),
        },
    })
}

/// A worker polling `task_queue` with every workflow and activity registered. Its `run()`
/// future is not `Send`: drive it on the current task (or a `LocalSet`), never `tokio::spawn`.
/// With `metrics`, the SDK's own worker metrics join the process's `/metrics`.
pub fn worker(
    deps: activities::Deps,
    temporal: Client,
    task_queue: &str,
    metrics: Option<&MetricsHandle>,
) -> anyhow::Result<Worker> {
    let runtime_options = match metrics {
        Some(m) => {
            // The SDK keeps its registry to itself and serves it: on loopback, an ephemeral
            // port, read by our /metrics on each scrape.
            let exporter = start_prometheus_metric_exporter(
                PrometheusExporterOptions::builder()
                    .socket_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .build(),
            )
            .context("Temporal SDK metrics exporter")?;
            m.add_sdk_exporter(exporter.bound_addr);
            let meter: Arc<dyn CoreMeter> = exporter.meter;
            RuntimeOptions::builder()
                .telemetry_options(TelemetryOptions::builder().metrics(meter).build())
                .build()
                .map_err(|e| anyhow::anyhow!("Temporal runtime options: {e}"))?
        }
        None => RuntimeOptions::default(),
    };
    let runtime = Runtime::from_current_tokio(runtime_options)
        .map_err(|e| anyhow::anyhow!("Temporal runtime: {e}"))?;
    let options = activities::worker_options(task_queue, deps)?;
    Worker::new(&runtime, temporal, options).map_err(|e| anyhow::anyhow!("Temporal worker: {e}"))
}

/// The worker and the outbox dispatcher, until the worker stops (its shutdown handle is sent
/// through `ready` once it is built). Not `Send`: run it on the current task.
pub async fn run_worker(
    deps: activities::Deps,
    temporal: Client,
    task_queue: &str,
    topup: crate::dispatch::TopupPolicy,
    metrics: Option<&MetricsHandle>,
    ready: impl FnOnce(Box<dyn FnOnce() + Send>),
) -> anyhow::Result<()> {
    let dispatcher = crate::dispatch::Dispatcher {
        store: deps.store.clone(),
        mailer: deps.mailer.clone(),
        payments: deps.payments.clone(),
        temporal: temporal.clone(),
        task_queue: task_queue.to_string(),
        topup,
    };
    let mut worker = worker(deps, temporal, task_queue, metrics)?;
    let handle = worker.shutdown_handle();
    ready(Box::new(handle));
    tokio::select! {
        r = worker.run() => r.map_err(|e| anyhow::anyhow!("worker: {e}")),
        _ = dispatcher.run() => Ok(()),
    }
}

pub fn topup_policy(settings: &Settings) -> crate::dispatch::TopupPolicy {
    crate::dispatch::TopupPolicy {
        attempts_max: settings.topup.attempts_max,
        backoff_initial_secs: settings.topup.backoff_initial_secs,
        backoff_max_secs: settings.topup.backoff_max_secs,
        daily_max: settings.topup.daily_max,
        settle_recheck_secs: settings.topup.settle_recheck_secs,
        alert_repeat_after_secs: settings.alerts.repeat_after_secs,
    }
}
