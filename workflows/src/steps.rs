//! The retry policy of every activity, by what the activity touches. One place, so a reader of
//! a workflow sees at each call which kind of step it is and how long it may keep trying.
//!
//! Every policy retries without an attempt limit: a step that moves or records money must not
//! be dropped because Postgres, SMTP or the processor was down for a while; it is delayed. What
//! can never succeed is not retried at all: the activity classifies it and fails
//! non-retryably (a processor's 4xx, a malformed id), or records it and returns (an address
//! the mailer refuses, see `activities::mail_once`, which also bounds the tries of a notice).

use std::time::Duration;

use temporalio_common::RetryPolicy;
use temporalio_sdk::ActivityOptions;

/// A health probe (the `ping` workflow): three quick tries, then the probe reports failure; it
/// moves no money and the caller asks again.
pub fn probe() -> ActivityOptions {
    let mut options = with(10, 1, 4);
    if let Some(policy) = options.retry_policy.as_mut() {
        policy.set_maximum_attempts(3);
    }
    options
}

/// Retries every `initial_secs`, doubling to `max_secs`, without an attempt limit.
fn with(timeout_secs: u64, initial_secs: u64, max_secs: u64) -> ActivityOptions {
    let mut options = ActivityOptions::start_to_close_timeout(Duration::from_secs(timeout_secs));
    options.retry_policy = Some(
        RetryPolicy::builder()
            .initial_interval(Duration::from_secs(initial_secs))
            .backoff_coefficient(2.0)
            .maximum_interval(Duration::from_secs(max_secs))
            .build(),
    );
    options
}

/// A step that reads and writes only our database (mark paid, grant, reverse, begin a topup):
/// idempotent by key, retried every 1 s doubling to 30 s while Postgres is away.
pub fn store() -> ActivityOptions {
    with(30, 1, 30)
}

/// A call to the payment processor (create or expire a session, charge, refund, retrieve):
/// idempotent by its Idempotency-Key; refusals fail at once, outages and 5xx are retried every
/// 2 s doubling to 2 min, so a long processor outage does not hammer its rate limit.
pub fn processor() -> ActivityOptions {
    with(30, 2, 120)
}

/// An e-mail (receipt, alert, notice): retried every 1 s doubling to 30 s; `mail_once` records
/// it `failed` after a bounded number of tries, so a notice never blocks the workflow for long.
pub fn notice() -> ActivityOptions {
    with(30, 1, 30)
}
