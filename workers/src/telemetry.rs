use tracing_subscriber::{EnvFilter, fmt};

use crate::config::Log;

/// Structured logs to stderr: JSON for machines, pretty for people. `RUST_LOG` overrides the
/// configured filter.
pub fn init(log: &Log) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if log.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
