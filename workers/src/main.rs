//! `creditflow`: the one binary. `serve` (HTTP API), `worker` (Temporal worker), `dev` (both),
//! `migrate`, and operator commands.

mod config;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config_dir, &cli.env).context("loading settings")?;
    match cli.command {
        Command::Migrate => {
            let pool = sqlx::PgPool::connect(settings.database.url.expose()).await?;
            store::Store::migrate(&pool).await?;
        }
    }
    Ok(())
}
