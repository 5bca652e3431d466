//! The test harness: real Postgres (a fresh database per test, cloned from a migrated
//! template), the real Temporal dev server, the real HTTP API on a loopback port.
//!
//! The services come from the local stack (`scripts/up` writes `.env.local`); each test gets
//! its own database and, when it runs workflows, its own task queue, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

pub mod client;
pub mod proxy;
pub mod smtp;
pub mod worker;

use std::{
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{Connection, PgConnection, postgres::PgPoolOptions};
use store::Store;
use uuid::Uuid;

pub const OPERATOR_KEY: &str = "cf_op_test_operator_key";
pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
pub const STRIPE_KEY: &str = "sk_test_harness";
/// The body limit the test server uses (the default from config/base.toml).
pub const BODY_LIMIT_BYTES: usize = 65_536;

/// The workspace root (where `.env.local` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reads `.env.local` once into the process environment (variables already set win).
fn load_env() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(text) = std::fs::read_to_string(workspace_root().join(".env.local")) else {
            return;
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=')
                && std::env::var_os(k).is_none()
            {
                // SAFETY: runs once, before any test reads the environment.
                #[allow(unsafe_code, reason = "set_var before the tests' threads read it")]
                unsafe {
                    std::env::set_var(k, v)
                };
            }
        }
    });
}

fn env(name: &str) -> anyhow::Result<String> {
    load_env();
    std::env::var(name).with_context(|| format!("{name} is not set: run scripts/up first"))
}

pub fn admin_database_url() -> anyhow::Result<String> {
    env("CREDITFLOW_TEST_ADMIN_DATABASE_URL")
}

pub fn temporal_url() -> anyhow::Result<String> {
    env("CREDITFLOW__TEMPORAL__URL")
}

/// A purchase of `package` recorded, paid with `payment_intent` and credited through `store`
/// (its clock books the grants), as the checkout workflow would, without one; its id.
pub async fn credited_purchase(
    store: &Store,
    org_id: Uuid,
    package: &billing::packages::Package,
    payment_intent: &str,
) -> Uuid {
    let (p, _) = store
        .purchases()
        .create_purchase(org_id, package, "ana", None, chrono::Utc::now(), None, None)
        .await
        .expect("purchase recorded");
    store
        .purchases()
        .mark_purchase_paid(p.id, payment_intent)
        .await
        .expect("purchase paid");
    store
        .purchases()
        .grant_purchase(p.id)
        .await
        .expect("purchase credited");
    p.id
}

/// The URL of database `name` on the server of `admin_url`.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}

/// The name of the migrated template database: named after the migrations, so a schema change
/// gets a new one.
fn template_name() -> String {
    let digest: u64 = store::MIGRATOR
        .iter()
        .flat_map(|m| m.checksum.iter().copied())
        .fold(0xcbf29ce484222325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    format!("cft_template_{digest:016x}")
}

/// The advisory lock every test process and thread takes to build a template (Postgres releases
/// it when the holder's session ends, so a killed builder never leaves it held).
const TEMPLATE_LOCK: i64 = 4242;

/// How long the harness waits for a step of the template build that should take milliseconds
/// (a bound for a broken server, not a timing the build relies on).
const TEMPLATE_STEP_DEADLINE: Duration = Duration::from_secs(30);

/// The migrated template for this build's migrations, made at most once per test run: the first
/// caller in any process builds it (see [`ensure_template`]); every later call in this process
/// answers from memory.
async fn template_database() -> anyhow::Result<String> {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_try_init(|| async {
            let mut admin = PgConnection::connect(&admin_database_url()?).await?;
            let name = template_name();
            let built = ensure_template(&mut admin, &name).await;
            admin.close().await?;
            built.map(|()| name)
        })
        .await
        .cloned()
}

/// Makes sure template database `name` exists, building it if not, under [`TEMPLATE_LOCK`].
///
/// The build never touches a database anyone else may use: it migrates a scratch database whose
/// name only this call knows, over one connection that it closes, ends whatever session is still
/// in it (its own closing backend, an autovacuum worker) after refusing new ones, and only then
/// renames it. The template refuses connections for good, so `CREATE DATABASE … TEMPLATE` never
/// finds anyone in it. Public for the harness's own race test.
pub async fn ensure_template(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin)
        .await?;
    let built = build_template_locked(admin, name).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin)
        .await?;
    built
}

async fn build_template_locked(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await?;
    if exists {
        return Ok(());
    }
    // `cft_` so that scripts/test drops it if this process dies half way.
    let scratch = format!(
        "cft_build_{}_{}",
        std::process::id(),
        Uuid::now_v7().simple()
    );
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut *admin)
        .await?;
    let mut conn = PgConnection::connect(&database_url(&admin_database_url()?, &scratch)).await?;
    let migrated = store::MIGRATOR.run(&mut conn).await;
    conn.close().await?;
    migrated?;
    sqlx::query(&format!(
        "ALTER DATABASE {scratch} WITH ALLOW_CONNECTIONS false"
    ))
    .execute(&mut *admin)
    .await?;
    end_sessions(admin, &scratch).await?;
    sqlx::query(&format!("ALTER DATABASE {scratch} RENAME TO {name}"))
        .execute(&mut *admin)
        .await?;
    Ok(())
}

/// Ends every session in database `name` (which refuses new ones) and waits until they are gone.
async fn end_sessions(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TEMPLATE_STEP_DEADLINE;
    loop {
        let sessions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_one(&mut *admin)
        .await?;
        if sessions == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "database {name} still has {sessions} sessions {TEMPLATE_STEP_DEADLINE:?} after they were terminated"
        );
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut *admin)
        .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh, migrated database for one test. Databases are dropped by `scripts/test` before the
/// next run, so a failed test's data stays around to look at.
pub async fn fresh_database() -> anyhow::Result<String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin_url = admin_database_url()?;
    let template = template_database().await?;
    let mut admin = PgConnection::connect(&admin_url).await?;
    let name = format!(
        "cft_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &Uuid::now_v7().simple().to_string()[24..]
    );
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(database_url(&admin_url, &name))
}

pub async fn connect_store(url: &str, max_connections: u32) -> anyhow::Result<Store> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await?;
    Ok(Store::from_pool(pool).await?)
}

pub async fn connect_temporal() -> anyhow::Result<temporalio_client::Client> {
    connect_temporal_at(&temporal_url()?).await
}

pub async fn connect_temporal_at(url: &str) -> anyhow::Result<temporalio_client::Client> {
    workers::app::connect_temporal(&workers::config::Temporal {
        url: url.to_string(),
        namespace: "default".into(),
        task_queue: String::new(),
    })
    .await
}

/// The API served on a loopback port against a fresh database, with its own Stripe emulator
/// (delivering webhooks to this API) and SMTP server, and a task queue of its own.
pub struct TestApp {
    pub base_url: String,
    pub database_url: String,
    pub store: Store,
    pub http: reqwest::Client,
    pub temporal: temporalio_client::Client,
    pub stripe_url: String,
    pub smtp: smtp::SmtpServer,
    pub task_queue: String,
    /// `/metrics` of this test process (the API's figures), as `creditflow serve` has it.
    pub metrics_url: String,
    /// Where this app's API and workers reach Temporal: the server, or a proxy the test cuts.
    pub temporal_url: String,
    pub temporal_proxy: Option<proxy::TcpProxy>,
    /// The proxy between the API and Postgres, when the test asked for one (the test's own
    /// `store` connects directly, so it can look while the API cannot).
    pub postgres_proxy: Option<proxy::TcpProxy>,
    /// The settings this app runs with, as `creditflow serve` would load them; in-process
    /// workers are wired from them too.
    pub settings: workers::config::Settings,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What a test may change about its app.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub checkout_expiry: Duration,
    /// Reach Temporal through a [`proxy::TcpProxy`] the test can cut (`TestApp::temporal_proxy`).
    pub temporal_proxy: bool,
    /// The API reaches Postgres through a [`proxy::TcpProxy`] (`TestApp::postgres_proxy`),
    /// waiting at most 2 s for a connection.
    pub postgres_proxy: bool,
    pub limits: api::RequestLimits,
    pub usage: api::UsageBounds,
    /// The time the API books and reads at (a manual clock the test moves), else the database's.
    pub clock: Option<store::Clock>,
    /// How long what the usage writer committed answers checks (`store::positions`).
    pub position_lease: Option<Duration>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            checkout_expiry: Duration::from_secs(600),
            temporal_proxy: false,
            postgres_proxy: false,
            limits: api::RequestLimits::default(),
            // Tests stamp usage in months long past (summaries of 2024 and 2025); the 35-day
            // bound has tests of its own.
            usage: api::UsageBounds {
                late_usage_max: chrono::Duration::days(3650),
                ..api::UsageBounds::default()
            },
            clock: None,
            position_lease: None,
        }
    }
}

/// An organization created through the API, with its first key.
#[derive(Debug, Clone)]
pub struct TestOrg {
    pub id: Uuid,
    pub key: String,
    pub key_id: Uuid,
}

/// An HTTP answer: status, content type and parsed body (JSON, or the text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// Asserts a problem+json error with this status and code, and returns it.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status of {}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.text
        );
        assert_eq!(self.body["code"], code, "{}", self.text);
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        self
    }
}

impl TestApp {
    pub async fn spawn() -> anyhow::Result<TestApp> {
        TestApp::spawn_with(AppOptions::default()).await
    }

    pub async fn spawn_with(app_options: AppOptions) -> anyhow::Result<TestApp> {
        let database_url = fresh_database().await?;
        let task_queue = format!("test-{}", Uuid::now_v7());
        let stripe_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stripe_url = format!("http://{}", stripe_listener.local_addr()?);
        let emulator = stripe_emulator::Emulator::new(stripe_emulator::Config {
            webhook_url: None,
            webhook_secret: WEBHOOK_SECRET.into(),
            public_url: stripe_url.clone(),
        });
        tokio::spawn(axum_serve(stripe_listener, emulator.router()));
        let smtp = smtp::SmtpServer::start().await?;
        let mut store = connect_store(&database_url, 16).await?;
        if let Some(clock) = &app_options.clock {
            store = store.with_clock(clock.clone());
        }
        if let Some(lease) = app_options.position_lease {
            store = store.with_position_lease(lease);
        }
        let temporal_proxy = match app_options.temporal_proxy {
            true => {
                let server = temporal_url()?;
                let upstream = server
                    .split_once("://")
                    .map(|(_, rest)| rest)
                    .unwrap_or(&server)
                    .trim_end_matches('/')
                    .to_string();
                Some(proxy::TcpProxy::start(upstream).await?)
            }
            false => None,
        };
        let temporal_url = match &temporal_proxy {
            Some(p) => p.url(),
            None => temporal_url()?,
        };
        let temporal = connect_temporal_at(&temporal_url).await?;
        // The settings `creditflow serve` would read with CREDITFLOW_ENV=test (config/base.toml,
        // config/test.toml), with this test's own database, ports and task queue.
        let mut settings = workers::config::Settings::load_with(
            &workspace_root().join("config"),
            "test",
            &[
                ("database.url", database_url.clone()),
                ("temporal.url", temporal_url.clone()),
                ("temporal.task_queue", task_queue.clone()),
                ("stripe.api_base", stripe_url.clone()),
                ("mail.smtp_port", smtp.port.to_string()),
                // Tests publish prices a moment ahead, refreshed faster than that.
                ("pricing.refresh_ms", "200".into()),
                ("pricing.publish_lead_ms", "1000".into()),
            ],
        )?;
        settings.checkout.expiry_secs = app_options.checkout_expiry.as_secs();
        settings.limits.purchases_per_minute = app_options.limits.purchases_per_minute;
        settings.limits.setups_per_minute = app_options.limits.setups_per_minute;
        let u = app_options.usage;
        settings.ingest.bytes_in_flight_max = u.bytes_in_flight_max;
        settings.ingest.max_event_cost_credits = u.max_event_cost;
        settings.ingest.overdraft_limit_credits = u.overdraft_limit;
        settings.ingest.late_usage_max_days = u32::try_from(u.late_usage_max.num_days())?;
        let (api_store, postgres_proxy) = if app_options.postgres_proxy {
            let admin = admin_database_url()?;
            let upstream = admin
                .split_once('@')
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(hostport, _)| hostport.to_string())
                .ok_or_else(|| anyhow::anyhow!("no host:port in {admin}"))?;
            let proxy = proxy::TcpProxy::start(upstream.clone()).await?;
            let url = database_url.replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(2))
                .connect(&url)
                .await?;
            (Store::from_pool(pool).await?, Some(proxy))
        } else {
            (store.clone(), None)
        };
        let state = workers::app::app_state(&settings, api_store, temporal.clone()).await?;
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics_url = format!("http://{}/metrics", metrics_listener.local_addr()?);
        workers::metrics::spawn(metrics_listener, store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        emulator.set_webhook_url(Some(format!("{base_url}/v1/webhooks/stripe")));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(workers::app::serve(
            listener,
            state,
            settings.server.body_limit_bytes,
            async {
                let _ = rx.await;
            },
        ));
        Ok(TestApp {
            base_url,
            database_url,
            store,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            temporal,
            stripe_url,
            smtp,
            task_queue,
            metrics_url,
            temporal_url,
            temporal_proxy,
            postgres_proxy,
            settings,
            shutdown: Some(tx),
        })
    }

    /// The settings a worker for this app runs with (as the binary would read them).
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "CREDITFLOW__DATABASE__URL".into(),
                self.database_url.clone(),
            ),
            (
                "CREDITFLOW__TEMPORAL__URL".into(),
                self.temporal_url.clone(),
            ),
            (
                "CREDITFLOW__TEMPORAL__TASK_QUEUE".into(),
                self.task_queue.clone(),
            ),
            (
                "CREDITFLOW__STRIPE__API_BASE".into(),
                self.stripe_url.clone(),
            ),
            ("CREDITFLOW__STRIPE__SECRET_KEY".into(), STRIPE_KEY.into()),
            (
                "CREDITFLOW__MAIL__SMTP_PORT".into(),
                self.smtp.port.to_string(),
            ),
            ("CREDITFLOW__LOG__FILTER".into(), "warn".into()),
            ("CREDITFLOW__TOPUP__BACKOFF_INITIAL_SECS".into(), "1".into()),
            // The Schedule is global to the namespace: test workers leave it alone.
            (
                "CREDITFLOW__SUMMARIES__SYNC_SCHEDULE_ON_START".into(),
                "false".into(),
            ),
            ("CREDITFLOW__TOPUP__BACKOFF_MAX_SECS".into(), "2".into()),
            // Many workers run at once: each takes a port of its own for /metrics.
            ("CREDITFLOW__METRICS__BIND".into(), "127.0.0.1:0".into()),
        ]
    }

    /// Sends a request; `key` goes in `Authorization: Bearer`, `body` as JSON when present.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request failed");
        answer(res).await
    }

    /// Sends a raw body with a JSON content type (for malformed or oversized bodies).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .header("content-type", "application/json")
            .header("idempotency-key", "raw")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        answer(req.send().await.expect("request failed")).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.call(Method::GET, path, Some(key), None, &[]).await
    }

    pub async fn create_org(&self, name: &str) -> TestOrg {
        let a = self
            .call(
                Method::POST,
                "/v1/orgs",
                Some(OPERATOR_KEY),
                Some(&serde_json::json!({ "name": name })),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        TestApp::created(&a)
    }

    /// An operator adjustment through the API.
    pub async fn adjust(
        &self,
        org: Uuid,
        amount: &str,
        reason: &str,
        idempotency_key: &str,
    ) -> Answer {
        self.call(
            Method::POST,
            &format!("/v1/orgs/{org}/adjustments"),
            Some(OPERATOR_KEY),
            Some(&serde_json::json!({ "amount_credits": amount, "reason": reason })),
            &[("idempotency-key", idempotency_key)],
        )
        .await
    }

    /// Spends `credits` with one usage event `id` (gpt-4o input at 250 credits per million
    /// tokens: 4,000 tokens a credit), which must be accepted.
    pub async fn spend(&self, org: &TestOrg, id: &str, credits: u64) {
        let e = serde_json::json!({"id": id, "type": "ai_tokens",
            "occurred_at": chrono::Utc::now().to_rfc3339(),
            "model": "gpt-4o", "input_tokens": credits * 4000});
        let a = self
            .call(
                Method::POST,
                "/v1/usage",
                Some(&org.key),
                Some(&serde_json::json!({"events": [e]})),
                &[],
            )
            .await;
        assert_eq!(a.body["accepted"], 1, "{}", a.text);
    }

    /// An org with 100 credits, `pm` saved as its payment method (customer `cus_test_1`), the
    /// given auto-topup (threshold, monthly cap in minor units; it buys [`STARTER`]) and alert
    /// threshold, mailed to ops@acme.test. Settings are put with the org's own key.
    pub async fn org_with_billing(
        &self,
        name: &str,
        pm: &str,
        topup: Option<(&str, i64)>,
        alert: Option<&str>,
    ) -> TestOrg {
        let org = self.create_org(name).await;
        let seeded = self.adjust(org.id, "100", "seed", "seed").await;
        assert_eq!(seeded.status, StatusCode::CREATED, "{}", seeded.text);
        let saved = self
            .call(
                Method::POST,
                &format!("/v1/orgs/{}/payment-method", org.id),
                Some(OPERATOR_KEY),
                Some(
                    &serde_json::json!({"payment_method_id": pm, "customer_id": "cus_test_1",
                                         "user": "ana@acme.test"}),
                ),
                &[],
            )
            .await;
        assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
        let body = serde_json::json!({
            "auto_topup": match topup {
                Some((threshold, cap)) => serde_json::json!({"enabled": true,
                    "threshold_credits": threshold, "package_id": STARTER,
                    "monthly_cap_minor": cap}),
                None => serde_json::json!({"enabled": false}),
            },
            "alerts": {"thresholds_credits": alert.map(|a| vec![a]).unwrap_or_default(),
                       "recipients": ["ops@acme.test"]},
        });
        let put = self
            .call(
                Method::PUT,
                &format!("/v1/orgs/{}/billing-settings", org.id),
                Some(&org.key),
                Some(&body),
                &[],
            )
            .await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.text);
        org
    }

    /// The org's topups as `GET /v1/orgs/{org}/topups` lists them.
    pub async fn topups(&self, org: &TestOrg) -> Vec<Value> {
        self.get(&format!("/v1/orgs/{}/topups", org.id), &org.key)
            .await
            .body["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn balance(&self, org: &TestOrg) -> String {
        self.balance_of(org).await.balance_credits.to_string()
    }

    /// Starts a purchase of `package` for `org`, bought by ana@acme.test.
    pub async fn buy(&self, org: &TestOrg, package: &str) -> Answer {
        self.call(
            Method::POST,
            "/v1/purchases",
            Some(&org.key),
            Some(&serde_json::json!({"package_id": package, "user": "ana@acme.test"})),
            &[],
        )
        .await
    }

    /// Buys `package` and waits (at most 60 s) until its checkout exists or the purchase has
    /// ended: `POST /v1/purchases` answers 201 with the checkout URL when the workflow made the
    /// session within the API's short wait, or 202 without it (a busy machine), and then the
    /// purchase shows the URL a moment later. Tests take what the answer means, never how fast
    /// it came. Returns the purchase as `GET /v1/purchases/{id}` shows it.
    pub async fn buy_ready(&self, org: &TestOrg, package: &str) -> Value {
        let bought = self.buy(org, package).await;
        self.ready_purchase(org, &bought).await
    }

    /// The purchase a `POST /v1/purchases` answer (201 or 202) names, once its checkout exists
    /// or it has ended (see [`TestApp::buy_ready`]).
    pub async fn ready_purchase(&self, org: &TestOrg, bought: &Answer) -> Value {
        assert!(
            bought.status == StatusCode::CREATED || bought.status == StatusCode::ACCEPTED,
            "{}",
            bought.text
        );
        let id = bought.body["id"]
            .as_str()
            .expect("a purchase id")
            .to_string();
        eventually("the checkout", Duration::from_secs(60), || async {
            let p = self.purchase(org, &id).await;
            (p["checkout_url"].is_string() || p["state"] != "awaiting_payment").then_some(p)
        })
        .await
    }

    /// A purchase as `GET /v1/purchases/{id}` shows it.
    pub async fn purchase(&self, org: &TestOrg, id: &str) -> Value {
        self.get(&format!("/v1/purchases/{id}"), &org.key)
            .await
            .body
    }

    /// Waits (at most 60 s) until the purchase is in state `want`.
    pub async fn wait_purchase(&self, org: &TestOrg, id: &str, want: &str) -> Value {
        eventually(
            &format!("purchase {want}"),
            Duration::from_secs(60),
            || async {
                let p = self.purchase(org, id).await;
                (p["state"] == want).then_some(p)
            },
        )
        .await
    }

    /// Pays a hosted checkout page the way its form does (`pm_card_visa` and the other test
    /// payment methods), without following the redirect to the success URL.
    pub async fn pay_checkout(&self, checkout_url: &str, payment_method: &str) {
        let no_redirect = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let paid = no_redirect
            .post(format!("{checkout_url}/pay"))
            .form(&[("payment_method", payment_method)])
            .send()
            .await
            .expect("pay");
        assert!(
            paid.status().is_redirection() || paid.status().is_success(),
            "paying {checkout_url}: {}",
            paid.status()
        );
    }

    /// The events the Stripe emulator emitted (each with its `delivered` count).
    /// The emulator's next request to `path` answers 500 (saved under its key, as Stripe saves
    /// a 500), after running it when `executed`: the object exists but the answer was lost.
    pub async fn fail_next(&self, path: &str, executed: bool) {
        let r = self
            .http
            .post(format!("{}/_emulator/fail_next", self.stripe_url))
            .form(&[
                ("path", path),
                ("executed", if executed { "true" } else { "false" }),
            ])
            .send()
            .await
            .expect("fail_next");
        assert!(r.status().is_success(), "{}", r.status());
    }

    pub async fn emulator_events(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_emulator/events", self.stripe_url))
            .send()
            .await
            .expect("emulator events")
            .json()
            .await
            .expect("emulator events JSON");
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// A Stripe list the emulator serves (`/v1/checkout/sessions`, `/v1/payment_intents`),
    /// newest first, at most 100 objects.
    pub async fn emulator_list(&self, path: &str) -> Vec<Value> {
        let list: Value = self
            .http
            .get(format!("{}{path}?limit=100", self.stripe_url))
            .bearer_auth(STRIPE_KEY)
            .send()
            .await
            .expect("emulator list")
            .json()
            .await
            .expect("emulator list JSON");
        list["data"].as_array().cloned().unwrap_or_default()
    }

    /// How many events of this type the emulator emitted.
    pub async fn emulator_event_count(&self, kind: &str) -> usize {
        self.emulator_events()
            .await
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    }

    /// With `CREDITFLOW_RECORD_HISTORIES` set, saves the finished workflow's history as
    /// `tests/histories/{name}.json` for the replay test (run once after an intended workflow
    /// change, then commit the files); otherwise does nothing.
    pub async fn keep_history(&self, name: &str, workflow_id: &str) {
        if std::env::var_os("CREDITFLOW_RECORD_HISTORIES").is_none() {
            return;
        }
        let handle = self
            .temporal
            .get_workflow_handle::<temporalio_client::UntypedWorkflow>(workflow_id.to_string());
        // The whole history: wait (bounded) until the workflow has closed.
        let _ = tokio::time::timeout(
            Duration::from_secs(60),
            handle.get_result(Default::default()),
        )
        .await
        .expect("the workflow closed");
        let json = handle
            .fetch_history(temporalio_client::WorkflowFetchHistoryOptions::default())
            .to_json()
            .await
            .expect("the workflow's history");
        std::fs::write(histories_dir().join(format!("{name}.json")), json)
            .expect("writing the history");
    }

    /// Waits (at most 30 s) until a session of this test's database is blocked on a lock that
    /// the session `holder` (a [`backend_pid`]) holds.
    pub async fn wait_blocked_by(&self, holder: i32, what: &str) {
        eventually(what, Duration::from_secs(30), || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(holder)
            .fetch_one(self.store.pool())
            .await
            .unwrap();
            (waiting > 0).then_some(())
        })
        .await;
    }

    /// Asserts the ledger invariants over this test's whole database.
    pub async fn assert_invariants(&self) {
        let violations = self.store.ledger().check_invariants().await.unwrap();
        assert!(
            violations.is_empty(),
            "ledger invariants violated: {violations:#?}"
        );
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn axum_serve(listener: tokio::net::TcpListener, router: axum::Router) {
    let _ = axum::serve(listener, router).await;
}

/// An HTTP response read into an [`Answer`].
pub async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = res.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    Answer {
        status,
        content_type,
        body,
        text,
    }
}

/// This connection's server process id, to find who waits on the locks it holds.
pub async fn backend_pid(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

/// Where recorded workflow histories are kept (see [`TestApp::keep_history`]).
pub fn histories_dir() -> PathBuf {
    workspace_root().join("tests/histories")
}

/// The seeded Growth package (5,000 credits + 250 bonus).
/// The Starter package: 1,000 credits for $10, no bonus.
pub const STARTER: &str = "01970000-0000-7000-8000-000000000001";
pub const GROWTH: &str = "01970000-0000-7000-8000-000000000002";

/// Sums the samples of metric `name` whose labels include all of `labels`, in a Prometheus
/// text exposition (0 when there is none).
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> rust_decimal::Decimal {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<rust_decimal::Decimal>().ok())?
        })
        .sum()
}

/// Polls `check` until it returns `Some`, or panics after `deadline`. Tests wait this way, never
/// with fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
