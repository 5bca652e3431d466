//! The workflows binary: the API with a worker on the real Temporal server, so purchases,
//! refunds, auto-topups, alerts, summaries and disputes run as they do in production (and
//! schemathesis checks the API against its OpenAPI document). Needs the local stack.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod budgets;
mod disputes;
mod metrics;
mod openapi;
mod outage;
mod purchases;
mod refunds;
mod replay;
mod summaries;
mod topups;
mod worker;
