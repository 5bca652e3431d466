//! Layered settings: config/base.toml → config/{env}.toml → CREDITFLOW__… environment.

use std::{fmt, path::Path};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: Server,
    pub database: Database,
    pub temporal: Temporal,
    pub auth: Auth,
    pub log: Log,
    pub pricing: Pricing,
    pub ingest: Ingest,
    pub stripe: Stripe,
    pub checkout: Checkout,
    pub mail: Mail,
    pub topup: Topup,
    pub alerts: Alerts,
    pub limits: Limits,
    pub summaries: Summaries,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metrics {
    /// Where `GET /metrics` (Prometheus text format) listens, apart from the API; empty: off.
    pub bind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Summaries {
    /// Whether `creditflow worker` creates or updates the Schedule when it starts.
    #[serde(default = "yes")]
    pub sync_schedule_on_start: bool,
    /// Put before `monthly-summaries-{YYYY-MM}` workflow ids: lets several deployments (or
    /// test runs) share one Temporal namespace without joining each other's runs.
    #[serde(default)]
    pub workflow_id_prefix: String,
    /// Hours after midnight UTC on the 1st when last month's summaries are generated.
    pub grace_hours: u32,
    /// Orgs per activity, and pages per workflow run before it continues as new.
    pub page_size: u32,
    pub pages_per_run: u32,
    /// Entries of a summary's per-line and per-user breakdowns at most; the rest are added up
    /// in one `other` entry.
    #[serde(default = "breakdown_max")]
    pub breakdown_max: usize,
}

fn breakdown_max() -> usize {
    store::DEFAULT_BREAKDOWN_MAX
}

#[derive(Debug, Clone, Deserialize)]
pub struct Topup {
    pub attempts_max: u32,
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
    /// Topups charged per org in 24 hours, at most.
    pub daily_max: u32,
    /// How often a still-processing charge is checked when no event arrives.
    pub settle_recheck_secs: u64,
}

/// Per-org request limits (each such request costs a processor call and a workflow).
#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    pub purchases_per_minute: u32,
    pub setups_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Alerts {
    /// Low-balance alerts per org: a crossing at or above a threshold already alerted within
    /// this long is recorded `suppressed` and not mailed; a lower one is (0: no limit).
    pub repeat_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stripe {
    pub api_base: String,
    pub secret_key: Secret,
    pub webhook_secret: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Checkout {
    pub expiry_secs: u64,
    pub success_url: String,
    pub cancel_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mail {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub from: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pricing {
    pub refresh_ms: u64,
    /// How far ahead a new price version must start; usage events may be stamped at most
    /// `publish_lead_ms - refresh_ms` ahead of the server's clock.
    pub publish_lead_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ingest {
    pub writers: usize,
    pub queue_jobs_per_org: usize,
    pub batch_events_max: usize,
    pub bytes_in_flight_max: usize,
    pub max_event_cost_credits: billing::Credits,
    pub overdraft_limit_credits: billing::Credits,
    pub late_usage_max_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub bind: String,
    pub body_limit_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Database {
    pub url: Secret,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503.
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Temporal {
    pub url: String,
    pub namespace: String,
    pub task_queue: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    #[serde(deserialize_with = "list_or_csv")]
    pub operator_keys: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Log {
    pub format: String,
    pub filter: String,
}

/// A value that must never reach a log line: its Debug and Display print a placeholder.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Operator keys come as a TOML list, or as a comma-separated environment variable.
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    }
    .into_iter()
    .map(Secret)
    .collect())
}

impl Settings {
    /// Loads settings from `dir` for environment `env` (`dev`, `test`, `prod` …).
    pub fn load(dir: &Path, env: &str) -> anyhow::Result<Settings> {
        Settings::load_with(dir, env, &[])
    }

    /// [`Settings::load`], then `overrides` (dotted keys such as `database.url`) over files
    /// and environment: how the test harness runs the production wiring in one process with a
    /// database, ports and task queue per test (the environment is shared by every test).
    pub fn load_with(
        dir: &Path,
        env: &str,
        overrides: &[(&str, String)],
    ) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from(dir.join("base.toml")))
            .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false))
            .add_source(
                config::Environment::with_prefix("CREDITFLOW")
                    .prefix_separator("__")
                    .separator("__"),
            );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }
}

/// The environments whose settings may come from the repository's own files (config/dev.toml,
/// config/test.toml), public secrets included.
pub const LOCAL_ENVS: [&str; 2] = ["dev", "test"];

/// Secrets the repository publishes (config/dev.toml, config/test.toml, docker-compose.yml):
/// anyone can sign a webhook or call as an operator with them, so no other environment may run
/// with one.
const PUBLIC_SECRETS: [&str; 6] = [
    "sk_test_local",
    "whsec_local",
    "cf_op_dev_operator_key",
    "sk_test_harness",
    "whsec_test_secret",
    "cf_op_test_operator_key",
];

impl Settings {
    /// What a process that moves money (`serve`, `worker`, `dev`) must have been given
    /// explicitly outside dev and test: the Stripe secret key and webhook secret, at least one
    /// operator key, none of them a value the repository publishes, and an https Stripe API.
    /// The error names every setting that is missing, with its environment variable.
    pub fn check_for_env(&self, env: &str) -> anyhow::Result<()> {
        if LOCAL_ENVS.contains(&env) {
            return Ok(());
        }
        let unusable = |s: &str| s.trim().is_empty() || PUBLIC_SECRETS.contains(&s.trim());
        let mut missing = Vec::new();
        if unusable(self.stripe.secret_key.expose()) {
            missing.push("stripe.secret_key (CREDITFLOW__STRIPE__SECRET_KEY)");
        }
        if unusable(self.stripe.webhook_secret.expose()) {
            missing.push("stripe.webhook_secret (CREDITFLOW__STRIPE__WEBHOOK_SECRET)");
        }
        if self.auth.operator_keys.is_empty()
            || self.auth.operator_keys.iter().any(|k| unusable(k.expose()))
        {
            missing.push("auth.operator_keys (CREDITFLOW__AUTH__OPERATOR_KEYS, comma-separated)");
        }
        if !self.stripe.api_base.starts_with("https://") {
            missing.push("stripe.api_base as an https URL (CREDITFLOW__STRIPE__API_BASE)");
        }
        anyhow::ensure!(
            missing.is_empty(),
            "refusing to start in environment `{env}` without explicit settings (none may be \
             empty or a value the repository publishes): {}",
            missing.join(", ")
        );
        Ok(())
    }
}

fn yes() -> bool {
    true
}
