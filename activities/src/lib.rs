//! Activity implementations: the I/O behind the workflows' steps. Every activity is idempotent,
//! because Temporal retries it.

pub mod budgets;
pub mod errors;
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
        .register_workflow::<workflows::budgets::BudgetAlertWorkflow>()?
        .register_activities(budgets::BudgetActivitiesImpl {
            store: deps.store.clone(),
            mailer: deps.mailer.clone(),
        })
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
pub fn message_id(key: &str) -> String {
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

/// Runs a processor call under its operation's Idempotency-Key (`base`: ours, from our ids), by
/// the processor's replay rules. The processor saves the answer to a key once its endpoint ran,
/// a 5xx too, and replays it for 24 hours, so a key that got a 5xx can only get that 5xx again.
/// Such an answer is recorded; the next try first asks the processor for what the call may
/// have made (`find`) and uses it, and only when nothing is there moves to a fresh key. A call
/// that got no answer at all (network, timeout) keeps its key: the processor may still be
/// running it, and the same key is what makes the retry safe. Keys live 24 hours at the
/// processor: a key first sent more than 23 hours ago may be gone, so its step looks (`find`)
/// before sending it again too.
pub(crate) async fn processor_call<T>(
    store: &Store,
    base: &str,
    find: impl AsyncFnOnce() -> Result<Option<T>, payments::PaymentError>,
    call: impl AsyncFnOnce(&str) -> Result<T, payments::PaymentError>,
) -> Result<Result<T, payments::PaymentError>, ActivityError> {
    let mut key = store
        .processor_keys()
        .processor_key(base)
        .await
        .map_err(errors::classify)?;
    if key.server_error || key.stale {
        match find().await {
            Ok(Some(found)) => return Ok(Ok(found)),
            Ok(None) if key.server_error => {
                key = store
                    .processor_keys()
                    .next_processor_key(base, key.generation)
                    .await
                    .map_err(errors::classify)?;
            }
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
    }
    let answer = call(&key.key).await;
    if let Err(payments::PaymentError::ServerError(m)) = &answer {
        store
            .processor_keys()
            .processor_server_error(base, key.generation, m)
            .await
            .map_err(errors::classify)?;
    }
    Ok(answer)
}

/// Tries of one e-mail before it is recorded `failed` (SMTP unreachable throughout). With the
/// notice retry policy (1 s doubling to 30 s) the 24th try comes about 10 minutes after the
/// first, so an SMTP outage of minutes delays mail and loses none; a notice never holds up the
/// money step it reports on (it is sent after it, or by a workflow of its own).
pub const MAIL_TRIES: u32 = 24;

/// What became of an e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mailed {
    /// Accepted by the SMTP server (now or by an earlier try), or no one to tell.
    Sent,
    /// Never sent, for good: an address the mailer refuses, a permanent SMTP refusal, or SMTP
    /// unreachable for every try.
    Failed(String),
    /// A try handed it over and stopped before the answer: it may have been delivered.
    Unknown(String),
}

impl Mailed {
    pub fn state(&self) -> &'static str {
        match self {
            Mailed::Sent => "sent",
            Mailed::Failed(_) => "failed",
            Mailed::Unknown(_) => "unknown",
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            Mailed::Sent => None,
            Mailed::Failed(d) | Mailed::Unknown(d) => Some(d),
        }
    }
}

/// Sends an e-mail at most once per `key` (receipts, alerts, notices).
///
/// The send is claimed in the database (`sending`) before the message is handed to SMTP and
/// recorded `sent` after the server's answer. A retry that finds it still `sending` knows an
/// earlier try stopped in between, when the server may have taken it: it records `unknown`
/// and does not send again. What cannot succeed (an address the mailer refuses, a 5xx
/// answer) is recorded `failed` at once; SMTP unreachable is retried by Temporal and recorded
/// `failed` on try `MAIL_TRIES`, so a notice never blocks the money step it reports on.
pub async fn mail_once(
    store: &Store,
    mailer: &mail::Mailer,
    attempt: u32,
    key: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<Mailed, ActivityError> {
    if to.is_empty() {
        return Ok(Mailed::Sent);
    }
    match store
        .mail()
        .claim_email(key, &to.join(","), subject)
        .await
        .map_err(errors::classify)?
    {
        store::EmailClaim::Done { state, detail } => {
            let detail = detail.unwrap_or_default();
            return Ok(match state.as_str() {
                "failed" => Mailed::Failed(detail),
                "unknown" => Mailed::Unknown(detail),
                _ => Mailed::Sent,
            });
        }
        store::EmailClaim::Send => {}
    }
    match mailer.send(&message_id(key), to, subject, body).await {
        Ok(()) => {
            store
                .mail()
                .email_sent(key)
                .await
                .map_err(errors::classify)?;
            Ok(Mailed::Sent)
        }
        Err(e @ (mail::MailError::Invalid(_) | mail::MailError::Refused(_))) => {
            let detail = e.to_string();
            store
                .mail()
                .email_ended(key, "failed", &detail)
                .await
                .map_err(errors::classify)?;
            Ok(Mailed::Failed(detail))
        }
        Err(e @ mail::MailError::Timeout(_)) => {
            let detail = e.to_string();
            store
                .mail()
                .email_ended(key, "unknown", &detail)
                .await
                .map_err(errors::classify)?;
            Ok(Mailed::Unknown(detail))
        }
        Err(e @ mail::MailError::Smtp(_)) if attempt >= MAIL_TRIES => {
            let detail = format!("{e} (gave up after {attempt} tries)");
            store
                .mail()
                .email_ended(key, "failed", &detail)
                .await
                .map_err(errors::classify)?;
            Ok(Mailed::Failed(detail))
        }
        Err(e) => {
            store
                .mail()
                .email_not_sent(key, &e.to_string())
                .await
                .map_err(errors::classify)?;
            Err(errors::retryable(e))
        }
    }
}
