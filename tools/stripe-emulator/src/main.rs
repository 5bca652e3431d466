//! `stripe-emulator`: a local stand-in for the parts of Stripe's API creditflow uses.

use clap::Parser;

#[derive(Parser)]
#[command(about = "A local Stripe emulator for development and tests")]
struct Args {
    #[arg(long, env = "STRIPE_EMULATOR_BIND", default_value = "127.0.0.1:12111")]
    bind: String,
    /// Where events are delivered.
    #[arg(long, env = "STRIPE_EMULATOR_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The endpoint secret events are signed with.
    #[arg(
        long,
        env = "STRIPE_EMULATOR_WEBHOOK_SECRET",
        default_value = "whsec_dev"
    )]
    webhook_secret: String,
    /// The address people's browsers reach the hosted checkout pages at.
    #[arg(long, env = "STRIPE_EMULATOR_PUBLIC_URL")]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.bind).await?;
    let public = args
        .public_url
        .unwrap_or_else(|| format!("http://{}", args.bind));
    let emulator = stripe_emulator::Emulator::new(stripe_emulator::Config {
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
        public_url: public,
    });
    tracing::info!(bind = %args.bind, "stripe emulator listening");
    axum::serve(listener, emulator.router()).await?;
    Ok(())
}
