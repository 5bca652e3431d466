//! The API binary, the fastest: each test serves the real API on a fresh database (cloned from
//! a template) and calls it over HTTP; no workflow runs (the Temporal client is only connected,
//! one test in `edges` starts a worker). Needs the local stack: `scripts/test` brings it up.
//! The pure rules (parsing, booking, rating) are unit tests in `billing`, `store` and `api`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod adjustments;
mod bad_input;
mod edges;
mod grant_migration;
mod grants;
mod harness;
mod health;
mod history;
mod holds;
mod holds_model;
mod holds_races;
mod keys;
mod ledger_invariants;
mod packages;
mod usage;
