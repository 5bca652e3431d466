//! The end-to-end binary: the `creditflow` binary itself (its CLI, its configuration, the
//! deployment files) and the Temporal UI in a browser. The crash and outage suite that restarts
//! the shared Postgres is `tests/faults.rs`, run after every other binary by `scripts/test`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod cli;
mod config;
mod deployment;
mod temporal_ui;
