//! One error policy for every activity: what Temporal retries (an outage: the database, SMTP,
//! the processor's 5xx or network) and what it never retries (a refusal that will not change:
//! a bad id, a missing row, a rule of the ledger, a processor's 4xx). A refusal carries a type
//! name, shown in the Temporal UI and matchable by a workflow.

use std::fmt::Display;

use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use crate::{mail::MailError, payments::PaymentError};

/// What to do with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Try again with the step's backoff: the cause may go away.
    Retry,
    /// Fail the step for good, with this type name.
    Refuse(&'static str),
}

/// Errors an activity may meet, each classified once.
pub trait Classify: Display {
    fn class(&self) -> Class;
}

impl Classify for store::StoreError {
    fn class(&self) -> Class {
        use store::StoreError as E;
        match self {
            E::OrgNotFound | E::NotFound(_) => Class::Refuse("NotFound"),
            E::InsufficientBalance { .. } => Class::Refuse("InsufficientBalance"),
            E::Billing(_) => Class::Refuse("BillingRule"),
            E::Decode(_) => Class::Refuse("Decode"),
            E::PaymentNotRefundable { .. }
            | E::RefundExceedsPayment { .. }
            | E::RefundExceedsUnspent { .. } => Class::Refuse("RefundNotAllowed"),
            E::PriceVersionNotAfterNewest => Class::Refuse("PriceVersionNotAfterNewest"),
            E::ExpiryNotInFuture => Class::Refuse("ExpiryNotInFuture"),
            E::IdempotencyConflict => Class::Refuse("IdempotencyConflict"),
            E::TooMany(_) => Class::Refuse("TooMany"),
            // An outage, or a ledger check that failed and rolled back (a write that bypassed
            // the locks, visible in the log): money steps wait rather than give up.
            E::Db(_) | E::Schema(_) | E::WriterUnavailable(_) | E::Invariant(_) => Class::Retry,
        }
    }
}

impl Classify for PaymentError {
    fn class(&self) -> Class {
        match self {
            PaymentError::Refused(_) => Class::Refuse("PaymentRefused"),
            PaymentError::Unavailable(_) | PaymentError::ServerError(_) => Class::Retry,
        }
    }
}

impl Classify for MailError {
    fn class(&self) -> Class {
        match self {
            MailError::Invalid(_) => Class::Refuse("MailInvalid"),
            MailError::Refused(_) => Class::Refuse("MailRefused"),
            MailError::Smtp(_) | MailError::Timeout(_) => Class::Retry,
        }
    }
}

/// The activity error for `e`, by its class.
pub fn classify<E: Classify>(e: E) -> ActivityError {
    match e.class() {
        Class::Retry => retryable(e),
        Class::Refuse(type_name) => refuse(type_name, e.to_string()),
    }
}

/// An error Temporal retries.
pub fn retryable(e: impl Display) -> ActivityError {
    ActivityError::from(anyhow::anyhow!("{e}"))
}

/// An error Temporal never retries, with its type name.
pub fn refuse(type_name: &'static str, message: impl Into<String>) -> ActivityError {
    let failure = ApplicationFailure::builder(message.into())
        .type_name(type_name.to_string())
        .non_retryable(true)
        .build();
    ActivityError::application(failure)
}

/// An input a workflow sent that cannot be read: never retried.
pub fn bad_input(what: impl Display) -> ActivityError {
    refuse("BadInput", format!("bad input: {what}"))
}

/// An id from a workflow's input.
pub fn id(what: &str, s: &str) -> Result<Uuid, ActivityError> {
    s.parse()
        .map_err(|_| bad_input(format_args!("{what} id {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_as(e: ActivityError) -> Option<String> {
        match e {
            ActivityError::Application(f) if f.is_non_retryable() => {
                Some(f.type_name().unwrap_or_default().to_string())
            }
            _ => None,
        }
    }

    #[test]
    fn refusals_are_never_retried_and_outages_always_are() {
        use store::StoreError as E;
        let cases: Vec<(ActivityError, Option<&str>)> = vec![
            (classify(E::NotFound("purchase")), Some("NotFound")),
            (classify(E::OrgNotFound), Some("NotFound")),
            (
                classify(E::InsufficientBalance {
                    balance: billing::Credits::ZERO,
                    would_be: billing::Credits::whole(-1),
                }),
                Some("InsufficientBalance"),
            ),
            (
                classify(E::Billing(billing::BillingError::Zero)),
                Some("BillingRule"),
            ),
            (classify(E::Decode("x".into())), Some("Decode")),
            (
                classify(E::RefundExceedsPayment {
                    asked_minor: 2,
                    left_minor: 1,
                    paid_minor: 1,
                }),
                Some("RefundNotAllowed"),
            ),
            (
                classify(E::IdempotencyConflict),
                Some("IdempotencyConflict"),
            ),
            (classify(E::Db(sqlx::Error::PoolTimedOut)), None),
            (classify(E::WriterUnavailable("stopped")), None),
            (classify(E::Invariant("x".into())), None),
            (
                classify(PaymentError::Refused("card_declined".into())),
                Some("PaymentRefused"),
            ),
            (classify(PaymentError::Unavailable("timeout".into())), None),
            (classify(PaymentError::ServerError("500".into())), None),
            (
                classify(MailError::Invalid("no @".into())),
                Some("MailInvalid"),
            ),
            (
                classify(MailError::Refused("550".into())),
                Some("MailRefused"),
            ),
            (classify(MailError::Smtp("421".into())), None),
            (id("purchase", "nope").unwrap_err(), Some("BadInput")),
        ];
        for (i, (error, want)) in cases.into_iter().enumerate() {
            assert_eq!(refused_as(error).as_deref(), want, "case {i}");
        }
        assert!(id("purchase", &Uuid::nil().to_string()).is_ok());
    }
}
