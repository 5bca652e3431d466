//! Activity implementations: the I/O behind the workflows' steps. Every activity is idempotent,
//! because Temporal retries it.

pub mod health;
pub mod mail;
pub mod metrics;
pub mod payment_method;
pub mod payments;
pub mod purchase;
pub mod refund;
pub mod summary;
pub mod topup;

use std::sync::Arc;

use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

use store::Store;
use temporalio_sdk::{WorkerOptions, WorkerOptionsBuilder};

/// What the activities need from the outside world.
#[derive(Clone)]
pub struct Deps {
    pub store: Store,
    pub payments: payments::Payments,
    pub mailer: mail::Mailer,
    pub checkout_urls: purchase::CheckoutUrls,
}

/// Every workflow and activity the project runs, registered on one worker's options. The
/// binary and the tests both build their workers here, so they run the same set.
pub fn worker_options(task_queue: &str, deps: Deps) -> Result<WorkerOptions, anyhow::Error> {
    // A crashed worker's workflows move to another worker after this long (default 10 s).
    let builder: WorkerOptionsBuilder = WorkerOptions::new(task_queue);
    Ok(builder
        .register_workflow::<workflows::health::PingWorkflow>()?
        .register_workflow::<workflows::purchase::PurchaseWorkflow>()?
        .register_activities(health::HealthActivitiesImpl {
            store: Arc::new(deps.store.clone()),
        })
        .register_workflow::<workflows::topup::AutoTopupWorkflow>()?
        .register_workflow::<workflows::topup::LowBalanceAlertWorkflow>()?
        .register_workflow::<workflows::payment_method::PaymentMethodSetupWorkflow>()?
        .register_workflow::<workflows::summary::MonthlySummaryWorkflow>()?
        .register_workflow::<workflows::refund::RefundWorkflow>()?
        .register_activities(refund::RefundActivitiesImpl {
            store: deps.store.clone(),
            payments: deps.payments.clone(),
            mailer: deps.mailer.clone(),
        })
        .register_activities(summary::SummaryActivitiesImpl {
            store: deps.store.clone(),
        })
        .register_activities(payment_method::SetupActivitiesImpl {
            store: deps.store.clone(),
            payments: deps.payments.clone(),
            urls: deps.checkout_urls.clone(),
        })
        .register_activities(topup::TopupActivitiesImpl {
            store: deps.store.clone(),
            payments: deps.payments.clone(),
            mailer: deps.mailer.clone(),
        })
        .register_activities(purchase::PurchaseActivitiesImpl {
            store: deps.store,
            payments: deps.payments,
            mailer: deps.mailer,
            urls: deps.checkout_urls,
        })
        .sticky_queue_schedule_to_start_timeout(std::time::Duration::from_secs(3))
        .build())
}

/// The Message-ID (without brackets) of the e-mail sent once per `key`: the key with every
/// character a Message-ID may not hold replaced, at the creditflow domain.
pub(crate) fn message_id(key: &str) -> String {
    let local: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{local}@creditflow")
}

/// An error Temporal should retry (the database or a service was unavailable).
pub(crate) fn retryable(e: impl std::fmt::Display) -> ActivityError {
    ActivityError::from(anyhow::anyhow!("{e}"))
}

/// A payment error as an activity error: a refused request is not retried.
pub(crate) fn payment_error(e: payments::PaymentError) -> ActivityError {
    match e {
        payments::PaymentError::Refused(m) => {
            ActivityError::application(ApplicationFailure::non_retryable(m))
        }
        payments::PaymentError::Unavailable(m) => retryable(m),
    }
}

/// Sends an e-mail once per `key` (receipts, alerts, failures): a send record is kept, so a
/// retried activity does not deliver a second copy. The one window left, a crash after the
/// SMTP server took the message and before the record says so, resends the same Message-ID
/// (derived from `key`), which mail systems treat as one message.
pub(crate) async fn mail_once(
    store: &Store,
    mailer: &mail::Mailer,
    key: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(), ActivityError> {
    if to.is_empty() {
        return Ok(());
    }
    if !store
        .email_pending(key, &to.join(","), subject)
        .await
        .map_err(retryable)?
    {
        return Ok(());
    }
    mailer
        .send(&message_id(key), to, subject, body)
        .await
        .map_err(retryable)?;
    store.email_sent(key).await.map_err(retryable)
}
