//! Deterministic Temporal workflows and the definitions of the activities they call.
//!
//! No I/O here: activities are only *declared* (`#[activity_definitions]`) and implemented in
//! the `activities` crate. Every workflow and activity has an explicit, stable name, so renaming
//! Rust code never breaks running histories.

pub mod budgets;
pub mod health;
pub mod payment_method;
pub mod purchase;
pub mod refund;
pub mod steps;
pub mod summary;
pub mod topup;

use temporalio_common::search_attributes::SearchAttributeKey;

/// The search attribute that lets operators find an organization's workflows in the UI
/// (registered by `scripts/up` with `--search-attribute OrgId=Keyword`).
pub const ORG_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("OrgId");
