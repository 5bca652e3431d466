//! The wiring of the `creditflow` binary, as a library so the tests start exactly what
//! production starts: settings, telemetry, the HTTP server and the Temporal worker.

pub mod app;
pub mod bench;
pub mod config;
pub mod dispatch;
pub mod inbox;
pub mod metrics;
pub mod summaries;
pub mod telemetry;
