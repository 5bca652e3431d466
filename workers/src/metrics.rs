//! `GET /metrics` in Prometheus text format, on a port of its own (`metrics.bind`), so it is
//! never exposed with the API. It serves the process-wide registry (usage events, ingestion
//! and balance-read latency, workflow starts, Stripe and SMTP outcomes), the outbox and webhook
//! inbox backlogs read at scrape time, and, in a worker, the Temporal SDK's own worker metrics (workflows
//! completed and failed by type, activity outcomes, poll latency).
#![allow(
    clippy::expect_used,
    reason = "metric definitions are constants: registering one can fail only by a typo, at start"
)]

use std::{net::SocketAddr, sync::LazyLock, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus::{Encoder, IntGauge, TextEncoder, register_int_gauge};
use store::Store;
use tokio::net::TcpListener;

static OUTBOX_BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_outbox_backlog",
        "Outbox rows not yet turned into workflow starts"
    )
    .expect("creditflow_outbox_backlog registers once")
});

static OUTBOX_OLDEST_AGE_SECONDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_outbox_oldest_age_seconds",
        "Age of the oldest outbox row not yet dispatched (0 when none)"
    )
    .expect("creditflow_outbox_oldest_age_seconds registers once")
});

static INBOX_BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_inbox_backlog",
        "Stripe events received and stored but not yet handed on (a Temporal outage grows it)"
    )
    .expect("creditflow_inbox_backlog registers once")
});

static INBOX_OLDEST_AGE_SECONDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_inbox_oldest_age_seconds",
        "Age of the oldest Stripe event not yet handed on (0 when none)"
    )
    .expect("creditflow_inbox_oldest_age_seconds registers once")
});

static HOLDS_ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_holds_active",
        "Holds active now (not past their expiry)"
    )
    .expect("creditflow_holds_active registers once")
});

static HOLDS_DUE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_holds_expired_unreleased",
        "Holds past their expiry whose release is not booked yet (reads count them released)"
    )
    .expect("creditflow_holds_expired_unreleased registers once")
});

static HOLDS_EXPIRED_HOUR: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "creditflow_holds_expired_last_hour",
        "Holds whose expiry fell in the last hour, released or not (never settled nor voided in time)"
    )
    .expect("creditflow_holds_expired_last_hour registers once")
});

/// How long a scrape waits for the database and for the SDK's exporter.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Scrape {
    store: Store,
    /// Where the Temporal SDK's own exporters listen (loopback, ephemeral ports): the SDK keeps
    /// its registry to itself, so a scrape reads it there and appends it.
    sdk: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    http: reqwest::Client,
}

/// The metrics endpoint. Workers started later in this process add their SDK exporter with
/// [`MetricsHandle::add_sdk_exporter`].
pub struct MetricsHandle {
    sdk: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl MetricsHandle {
    pub fn add_sdk_exporter(&self, addr: SocketAddr) {
        self.sdk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(addr);
    }
}

/// Serves `/metrics` on `listener` in the background.
pub fn spawn(listener: TcpListener, store: Store) -> MetricsHandle {
    let sdk = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let state = Scrape {
        store,
        sdk: sdk.clone(),
        http: reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .build()
            .expect("HTTP client"),
    };
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    MetricsHandle { sdk }
}

/// Binds `metrics.bind` (empty: no metrics endpoint).
pub async fn bind(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding metrics.bind {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    Ok(Some(listener))
}

async fn scrape(State(s): State<Scrape>) -> impl IntoResponse {
    match tokio::time::timeout(SCRAPE_TIMEOUT, s.store.outbox().backlog()).await {
        Ok(Ok(b)) => {
            OUTBOX_BACKLOG.set(b.rows);
            OUTBOX_OLDEST_AGE_SECONDS.set(b.oldest_age_secs);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: outbox backlog unreadable"),
        Err(_) => tracing::warn!("metrics: outbox backlog query timed out"),
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, s.store.inbox().inbox_backlog()).await {
        Ok(Ok(b)) => {
            INBOX_BACKLOG.set(b.rows);
            INBOX_OLDEST_AGE_SECONDS.set(b.oldest_age_secs);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: inbox backlog unreadable"),
        Err(_) => tracing::warn!("metrics: inbox backlog query timed out"),
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, s.store.holds().counts()).await {
        Ok(Ok(c)) => {
            HOLDS_ACTIVE.set(c.active);
            HOLDS_DUE.set(c.expired_unreleased);
            HOLDS_EXPIRED_HOUR.set(c.expired_last_hour);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: holds unreadable"),
        Err(_) => tracing::warn!("metrics: holds query timed out"),
    }
    let mut body = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut body) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    let sdk: Vec<SocketAddr> = s
        .sdk
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for addr in sdk {
        match s.http.get(format!("http://{addr}/metrics")).send().await {
            Ok(r) => {
                if let Ok(text) = r.bytes().await {
                    body.extend_from_slice(&text);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: Temporal SDK exporter unreadable"),
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            TextEncoder::new().format_type().to_string(),
        )],
        body,
    )
}
