//! The integration suite, one binary (linking the Temporal SDK once is much faster than once per
//! file). Needs the local stack: `scripts/test` brings it up.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod adjustments;
mod bad_input;
mod cli;
mod config;
mod deployment;
mod disputes;
mod edges;
mod harness;
mod health;
mod history;
mod keys;
mod ledger_invariants;
mod metrics;
mod openapi;
mod outage;
mod purchases;
mod refunds;
mod replay;
mod summaries;
mod temporal_ui;
mod topups;
mod usage;
mod worker;
