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
    /// Refunds of purchases (operator).
    #[command(subcommand)]
    Refunds(RefundsCommand),
    /// The price book (operator).
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Temporal Schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Monthly summaries.
    #[command(subcommand)]
    Summaries(SummariesCommand),
    /// Credit grants (operator).
    #[command(subcommand)]
    Grants(GrantsCommand),
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
enum RefundsCommand {
    /// Refund part or all of a purchase's payment (in minor units of its currency) and reverse
    /// its credits in proportion, as `POST /v1/purchases/{id}/refunds` does; the same --key
    /// twice refunds once.
    Create {
        /// The purchase refunded (or --topup).
        #[arg(long, required_unless_present = "topup", conflicts_with = "topup")]
        purchase: Option<uuid::Uuid>,
        /// An auto-topup charge refunded.
        #[arg(long)]
        topup: Option<uuid::Uuid>,
        #[arg(long)]
        amount_minor: i64,
        #[arg(long)]
        reason: String,
        /// Idempotency key (default: a new one, so each run is a new refund).
        #[arg(long)]
        key: Option<String>,
        /// Who is doing it, for the ledger's actor column.
        #[arg(long, default_value = "cli")]
        operator: String,
        /// Wait for the refund to finish (at most 5 minutes), printing each state it reaches.
        #[arg(long)]
        wait: bool,
    },
    /// One refund and its state.
    Show {
        #[arg(long)]
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Publish a new price book version from a JSON file shaped like `POST /v1/prices`'s body.
    Publish {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "cli")]
        operator: String,
    },
    /// The version in force now, or at --at (RFC 3339).
    Show {
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
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
enum GrantsCommand {
    /// An org's grants, newest last, one JSON object per line.
    List {
        #[arg(long)]
        org: uuid::Uuid,
    },
    /// Book every expiry that is due now (the worker's sweep does it every few seconds).
    Expire,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Usage ingestion and balance reads under load.
    Ingest(workers::bench::IngestArgs),
    /// Hold + settle pairs/s on one org and on 1,000 orgs, and check and balance latency while
    /// usage ingestion runs at full speed.
    Holds(workers::bench::HoldsArgs),
    /// Monthly summary generation over many orgs and events.
    Summaries(workers::bench::SummariesArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config_dir, &cli.env).context("loading settings")?;
    telemetry::init(&settings.log);
    if matches!(cli.command, Command::Serve | Command::Worker | Command::Dev) {
        settings.check_for_env(&cli.env)?;
    }
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
        Command::Bench(BenchCommand::Holds(args)) => {
            workers::bench::holds(&settings, &args).await?
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
            let (org, key) = store.orgs().create_org(name, "operator:cli").await?;
            println!("{}", serde_json::json!({ "org": org, "api_key": key }));
        }
        Command::Orgs(OrgsCommand::Show { org, last }) => {
            let store = app::connect_store(&settings).await?;
            let b = store.ledger().balance(org).await?;
            let page = store
                .ledger()
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
                    "totals": b.totals()?,
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
            // Printed first: a retry after an error must reuse it to adjust only once.
            eprintln!("idempotency key: {key}");
            let t = store
                .ledger()
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
        Command::Refunds(RefundsCommand::Create {
            purchase,
            topup,
            amount_minor,
            reason,
            key,
            operator,
            wait,
        }) => {
            let store = app::connect_store(&settings).await?;
            let temporal = app::connect_temporal(&settings.temporal).await?;
            let key = key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
            // Printed first: a retry after an error must reuse it (--key) to refund only once.
            eprintln!("idempotency key: {key}");
            let body = api::refunds::RefundBody {
                amount_minor: Some(amount_minor),
                reason: Some(reason),
            };
            let refund = api::usecases::start_refund(
                &store,
                &temporal,
                &settings.temporal.task_queue,
                match (purchase, topup) {
                    (Some(p), _) => store::RefundOf::Purchase(p),
                    (None, Some(t)) => store::RefundOf::Topup(t),
                    (None, None) => anyhow::bail!("--purchase or --topup is required"),
                },
                body,
                &format!("operator:{operator}"),
                &key,
            )
            .await
            .map_err(problem)?;
            eprintln!("refund {} requested: {}", refund.id, refund.state);
            let refund = if wait {
                wait_for_refund(&store, refund).await?
            } else {
                refund
            };
            println!(
                "{}",
                serde_json::to_string(&api::refunds::Refund::from(&refund))?
            );
        }
        Command::Refunds(RefundsCommand::Show { id }) => {
            let store = app::connect_store(&settings).await?;
            println!(
                "{}",
                serde_json::to_string(&api::refunds::Refund::from(
                    &store.refunds().refund(id).await?
                ))?
            );
        }
        Command::Prices(PricesCommand::Publish { file, operator }) => {
            let store = app::connect_store(&settings).await?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: api::prices::PublishBody = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a price book", file.display()))?;
            let lead = chrono::Duration::milliseconds(settings.pricing.publish_lead_ms as i64);
            let new =
                api::usecases::new_version(body, chrono::Utc::now(), lead).map_err(problem)?;
            let version = store
                .prices()
                .publish_prices(&new, &format!("operator:{operator}"))
                .await?;
            eprintln!(
                "price version {version} published, effective from {}",
                new.effective_from
            );
            println!(
                "{}",
                serde_json::json!({ "version": version, "effective_from": new.effective_from })
            );
        }
        Command::Prices(PricesCommand::Show { at }) => {
            let store = app::connect_store(&settings).await?;
            let catalog = store.prices().price_catalog().await?;
            let at = at.unwrap_or_else(chrono::Utc::now);
            let book = catalog
                .at(at)
                .with_context(|| format!("no price version is effective at {at}"))?;
            println!(
                "{}",
                serde_json::to_string(&api::prices::Prices::from(&**book))?
            );
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
            let mut shown = None;
            let done = workers::summaries::run_month_reporting(
                &temporal,
                &settings.temporal.task_queue,
                &settings.summaries,
                &month.to_string(),
                |orgs| {
                    if shown != Some(orgs) {
                        eprintln!("… {orgs} orgs summarised");
                        shown = Some(orgs);
                    }
                },
            )
            .await?;
            println!("{done}");
        }
        Command::Grants(GrantsCommand::List { org }) => {
            let store = app::connect_store(&settings).await?;
            let mut after = None;
            loop {
                let page = store
                    .grants()
                    .list(&store::GrantQuery {
                        org_id: org,
                        state: None,
                        source: None,
                        after,
                        limit: 500,
                    })
                    .await?;
                for g in &page.grants {
                    println!("{}", serde_json::to_string(g)?);
                }
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Command::Grants(GrantsCommand::Expire) => {
            let store = app::connect_store(&settings).await?;
            let mut orgs = 0;
            loop {
                let n = store.grants().expire_due(1_000).await?;
                orgs += n;
                if n < 1_000 {
                    break;
                }
            }
            println!("expired the due grants of {orgs} orgs");
        }
        Command::VerifyLedger => {
            let store = app::connect_store(&settings).await?;
            let violations = store.ledger().check_invariants().await?;
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

/// An API error as the CLI reports it: its stable code, then the detail.
fn problem(e: api::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code, e.detail)
}

/// Polls a refund until it is `reversed` or `failed` (at most 5 minutes), printing each new
/// state on stderr.
async fn wait_for_refund(
    store: &store::Store,
    mut refund: store::Refund,
) -> anyhow::Result<store::Refund> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !refund.state.is_final() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "refund {} still {} after 5 minutes; `creditflow refunds show --id {}` follows it",
            refund.id,
            refund.state,
            refund.id
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = store.refunds().refund(refund.id).await?;
        if now.state != refund.state {
            eprintln!("refund {}: {}", now.id, now.state);
        }
        refund = now;
    }
    Ok(refund)
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
