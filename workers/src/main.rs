//! `creditflow`: the one binary. `serve` (HTTP API), `worker` (Temporal worker), `dev` (both),
//! `migrate`, and operator commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use workers::{app, config::Settings, telemetry};

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
        Command::Serve => serve(&settings).await?,
        Command::Worker => run_worker(&settings).await?,
        Command::Dev => {
            // The worker's future is not Send, so it runs on this task beside the server.
            tokio::select! {
                r = serve(&settings) => r?,
                r = run_worker(&settings) => r?,
            }
        }
        Command::Bench(BenchCommand::Ingest(args)) => {
            workers::bench::ingest(&settings, &args).await?
        }
        Command::Bench(BenchCommand::Summaries(args)) => {
            workers::bench::summaries(&settings, &args).await?
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

async fn run_worker(settings: &Settings) -> anyhow::Result<()> {
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
        |stop| {
            tokio::spawn(async move {
                shutdown_signal().await;
                stop();
            });
        },
    )
    .await
}
