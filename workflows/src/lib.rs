//! Deterministic Temporal workflows and the definitions of the activities they call.
//!
//! No I/O here: activities are only *declared* (`#[activity_definitions]`) and implemented in
//! the `activities` crate. Every workflow and activity has an explicit, stable name, so renaming
//! Rust code never breaks running histories.

pub mod health;
