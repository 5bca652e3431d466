//! Outcomes of the calls activities make to the outside world, in the process-wide Prometheus
//! registry that `creditflow` serves (see `workers::metrics`).
#![allow(
    clippy::expect_used,
    reason = "metric definitions are constants: registering one can fail only by a typo, at start"
)]

use std::sync::LazyLock;

use prometheus::{IntCounterVec, register_int_counter_vec};
use stripe::StripeError;

/// Stripe calls by operation and outcome (`ok`, `declined`, `refused`, `unavailable`).
pub static STRIPE_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "creditflow_stripe_calls_total",
        "Stripe API calls by operation and outcome (ok, declined, refused, unavailable)",
        &["operation", "outcome"]
    )
    .expect("creditflow_stripe_calls_total registers once")
});

/// E-mails handed to SMTP by outcome (`sent`, `invalid`, `failed`).
pub static SMTP_SENDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "creditflow_smtp_sends_total",
        "E-mails handed to the SMTP server by outcome (sent, invalid, failed)",
        &["outcome"]
    )
    .expect("creditflow_smtp_sends_total registers once")
});

/// Counts one Stripe call and hands its result back unchanged.
pub fn stripe_call<T>(operation: &str, result: Result<T, StripeError>) -> Result<T, StripeError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(StripeError::Stripe(_, 402)) => "declined",
        Err(StripeError::Stripe(_, status))
            if (400..500).contains(status) && *status != 409 && *status != 429 =>
        {
            "refused"
        }
        Err(_) => "unavailable",
    };
    STRIPE_CALLS.with_label_values(&[operation, outcome]).inc();
    result
}
