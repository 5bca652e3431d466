//! `creditflow`: the one binary. `serve` (HTTP API), `worker` (Temporal worker), `dev` (both),
//! `migrate`, and operator commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use workers::{app, config::Settings, metrics::MetricsHandle, telemetry};

#[derive(Parser)]
#[command(name = "creditflow", about = "Credits-based billing service")]
struct Cli {
    /// Folder with base.toml and {env}.toml.
    #[arg(long, env = "CREDITFLOW_CONFIG_DIR", default_value = "config")]
    config_dir: PathBuf,
    /// Which config/{env}.toml to layer over base.toml.
    #[arg(long, env = "CREDITFLOW_ENV", default_value = "dev")]
    env: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations.
    Migrate,
    /// Serve the HTTP API.
    Serve,
    /// Run the Temporal worker.
    Worker,
    /// The HTTP API and the worker in one process (the local stack).
    Dev,
    /// Check the ledger's invariants; exits non-zero on any violation.
    VerifyLedger,
    /// Organizations (operator).
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Manual credit adjustments (operator).
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Temporal Schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Monthly summaries.
    #[command(subcommand)]
    Summaries(SummariesCommand),
    /// Benchmarks against the local stack (build with --release).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum OrgsCommand {
    /// Create an organization; prints it with its first API key (shown only this once).
    Create {
        #[arg(long)]
        name: String,
    },
    /// An organization's balance, totals and last transactions.
    Show {
        #[arg(long)]
        org: uuid::Uuid,
        /// How many of the latest transactions to show (at most 1,000).
        #[arg(long, default_value_t = 10)]
        last: i64,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Add (positive) or remove (negative) credits, with a reason; the same --key twice moves
    /// credits once.
    Adjust {
        #[arg(long)]
        org: uuid::Uuid,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        reason: String,
        /// Idempotency key (default: a new one, so each run is a new adjustment).
        #[arg(long)]
        key: Option<String>,
        /// Who is doing it, for the ledger's actor column.
        #[arg(long, default_value = "cli")]
        operator: String,
    },
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// Create or update the monthly-summary schedule.
    Sync,
}

#[derive(Subcommand)]
enum SummariesCommand {
    /// Generate (or regenerate, for late events) one month's summaries and wait for them.
    Run {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Usage ingestion and balance reads under load.
    Ingest(workers::bench::IngestArgs),
    /// Monthly summary generation over many orgs and events.
    Summaries(workers::bench::SummariesArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config_dir, &cli.env).context("loading settings")?;
    telemetry::init(&settings.log);
    match cli.command {
        Command::Migrate => {
            let pool = sqlx::PgPool::connect(settings.database.url.expose()).await?;
            store::Store::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let metrics = serve_metrics(&settings).await?;
            serve(&settings).await?;
            drop(metrics);
        }
        Command::Worker => {
            let metrics = serve_metrics(&settings).await?;
            run_worker(&settings, metrics.as_ref()).await?
        }
        Command::Dev => {
            let metrics = serve_metrics(&settings).await?;
            // The worker's future is not Send, so it runs on this task beside the server.
            tokio::select! {
                r = serve(&settings) => r?,
                r = run_worker(&settings, metrics.as_ref()) => r?,
            }
        }
        Command::Bench(BenchCommand::Ingest(args)) => {
            workers::bench::ingest(&settings, &args).await?
        }
        Command::Bench(BenchCommand::Summaries(args)) => {
            workers::bench::summaries(&settings, &args).await?
        }
        Command::Orgs(OrgsCommand::Create { name }) => {
            let store = app::connect_store(&settings).await?;
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty() && name.chars().count() <= 200,
                "--name: 1 to 200 characters"
            );
            let (org, key) = store.create_org(name, "operator:cli").await?;
            println!("{}", serde_json::json!({ "org": org, "api_key": key }));
        }
        Command::Orgs(OrgsCommand::Show { org, last }) => {
            let store = app::connect_store(&settings).await?;
            let b = store.balance(org).await?;
            let page = store
                .transfers(&store::TransferQuery {
                    org_id: org,
                    kinds: None,
                    from: None,
                    to: None,
                    before_seq: None,
                    limit: last.clamp(1, 1000),
                })
                .await?;
            println!(
                "{}",
                serde_json::json!({
                    "org_id": org,
                    "balance_credits": b.balance,
                    "totals": {
                        "purchased_credits": b.purchased()?, "bonus_credits": b.bonus()?,
                        "used_credits": b.used()?, "refunded_credits": b.refunded()?,
                        "adjusted_credits": b.adjusted()?,
                    },
                    "transactions": page.transfers,
                })
            );
        }
        Command::Credits(CreditsCommand::Adjust {
            org,
            amount,
            reason,
            key,
            operator,
        }) => {
            let store = app::connect_store(&settings).await?;
            let amount: billing::Credits = amount
                .parse()
                .map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
            anyhow::ensure!(!reason.trim().is_empty(), "--reason is required");
            let key = key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
            let t = store
                .post_adjustment(
                    org,
                    amount,
                    reason.trim(),
                    &format!("operator:{operator}"),
                    &key,
                )
                .await?;
            eprintln!("adjusted {org} by {amount}: balance {}", t.balance_after);
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Schedules(SchedulesCommand::Sync) => {
            let temporal = app::connect_temporal(&settings.temporal).await?;
            workers::summaries::sync_schedule(
                &temporal,
                &settings.temporal.task_queue,
                &settings.summaries,
            )
            .await?;
            println!("schedule {} is in sync", workflows::summary::SCHEDULE_ID);
        }
        Command::Summaries(SummariesCommand::Run { month }) => {
            let month: billing::summary::Month = month
                .parse()
                .map_err(|_| anyhow::anyhow!("--month takes YYYY-MM"))?;
            let temporal = app::connect_temporal(&settings.temporal).await?;
            eprintln!("generating the summaries of {month} (workflow monthly-summaries-{month}) …");
            let done = workers::summaries::run_month(
                &temporal,
                &settings.temporal.task_queue,
                &settings.summaries,
                &month.to_string(),
            )
            .await?;
            println!("{done}");
        }
        Command::VerifyLedger => {
            let store = app::connect_store(&settings).await?;
            let violations = store.check_invariants().await?;
            for v in &violations {
                eprintln!("violation: {v}");
            }
            anyhow::ensure!(
                violations.is_empty(),
                "{} ledger violations",
                violations.len()
            );
            println!("ledger invariants hold");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let store = app::connect_store(settings).await?;
    let temporal = app::connect_temporal(&settings.temporal).await?;
    let state = app::app_state(settings, store, temporal).await?;
    let listener = TcpListener::bind(&settings.server.bind)
        .await
        .with_context(|| format!("binding {}", settings.server.bind))?;
    app::serve(
        listener,
        state,
        settings.server.body_limit_bytes,
        shutdown_signal(),
    )
    .await
}

/// `/metrics` on `metrics.bind`, when set.
async fn serve_metrics(settings: &Settings) -> anyhow::Result<Option<MetricsHandle>> {
    let Some(listener) = workers::metrics::bind(&settings.metrics.bind).await? else {
        return Ok(None);
    };
    let store = app::connect_store(settings).await?;
    Ok(Some(workers::metrics::spawn(listener, store)))
}

async fn run_worker(settings: &Settings, metrics: Option<&MetricsHandle>) -> anyhow::Result<()> {
    let store = app::connect_store(settings).await?;
    let temporal = app::connect_temporal(&settings.temporal).await?;
    let deps = app::activity_deps(settings, store)?;
    if settings.summaries.sync_schedule_on_start {
        // In the background: polling must not wait on the Schedule API.
        let (temporal, queue, cfg) = (
            temporal.clone(),
            settings.temporal.task_queue.clone(),
            settings.summaries.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = workers::summaries::sync_schedule(&temporal, &queue, &cfg).await {
                tracing::warn!(error = %e, "could not sync the summaries schedule; run `creditflow schedules sync`");
            }
        });
    }
    tracing::info!(task_queue = %settings.temporal.task_queue, "worker polling");
    app::run_worker(
        deps,
        temporal,
        &settings.temporal.task_queue,
        app::topup_policy(settings),
        metrics,
        |stop| {
            tokio::spawn(async move {
                shutdown_signal().await;
                stop();
            });
        },
    )
    .await
}
