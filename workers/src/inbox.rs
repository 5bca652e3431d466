//! The webhook inbox, dispatched: each stored payment-processor event is handed to the workflow
//! it concerns, as a hint (the workflow asks the processor before money moves). An event whose
//! workflow cannot be reached waits and is tried again, so nothing the processor reports is lost
//! to a Temporal outage; one that concerns nothing still running is marked done.

use store::InboxEvent;
use temporalio_client::{WorkflowSignalOptions, errors::WorkflowInteractionError};
use uuid::Uuid;
use workflows::{
    payment_method::{
        PaymentMethodSetupWorkflow, SetupCompleted, workflow_id as setup_workflow_id,
    },
    purchase::{PaymentCompleted, PurchaseWorkflow, workflow_id as purchase_workflow_id},
    topup::{AutoTopupWorkflow, ChargeSettled, topup_workflow_id},
};

use crate::dispatch::{CALL_LIMIT, Dispatched, Dispatcher, backoff};

const BATCH_EVENTS: i64 = 50;

/// Hands on up to one batch of due events; returns how many it looked at.
pub async fn round(d: &Dispatcher) -> anyhow::Result<usize> {
    let mut tx = d.store.pool().begin().await?;
    let events = d
        .store
        .inbox()
        .claim_stripe_events(&mut tx, BATCH_EVENTS)
        .await?;
    for event in &events {
        match dispatch(d, event).await {
            Ok(Dispatched::Done) => d.store.inbox().event_dispatched(&mut tx, &event.id).await?,
            Ok(Dispatched::Later(after, why)) => {
                tracing::warn!(event = %event.id, kind = %event.kind, reason = %why, "event not handed on yet; retrying later");
                d.store
                    .inbox()
                    .event_retry_later(&mut tx, &event.id, after, &why)
                    .await?
            }
            Err(e) => {
                tracing::warn!(event = %event.id, error = %e, "event not handed on; retrying later");
                d.store
                    .inbox()
                    .event_retry_later(&mut tx, &event.id, backoff(event.attempts), &e.to_string())
                    .await?
            }
        }
    }
    tx.commit().await?;
    Ok(events.len())
}

/// What a signal that could not be delivered means: a workflow that is gone has nothing left
/// to do with the event unless `still_needed` says the business object has not ended (then it
/// is our side that is behind, and the event waits).
async fn settle(
    signalled: Result<Result<(), WorkflowInteractionError>, tokio::time::error::Elapsed>,
    attempts: i32,
    still_needed: impl AsyncFnOnce() -> anyhow::Result<bool>,
) -> anyhow::Result<Dispatched> {
    match signalled {
        Ok(Ok(())) => Ok(Dispatched::Done),
        Ok(Err(WorkflowInteractionError::NotFound(_))) => {
            if still_needed().await? {
                Ok(Dispatched::Later(
                    backoff(attempts),
                    "its workflow is not running yet".into(),
                ))
            } else {
                Ok(Dispatched::Done)
            }
        }
        Ok(Err(e)) => Ok(Dispatched::Later(backoff(attempts), e.to_string())),
        Err(_) => Ok(Dispatched::Later(
            backoff(attempts),
            "Temporal did not answer in time".into(),
        )),
    }
}

async fn dispatch(d: &Dispatcher, event: &InboxEvent) -> anyhow::Result<Dispatched> {
    let object = &event.payload["data"]["object"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    match (event.kind.as_str(), object["mode"].as_str()) {
        // Completed (paid or not yet), paid later, failed later: each is a hint to the
        // purchase's workflow, which asks the processor what really happened before it grants.
        (
            "checkout.session.completed"
            | "checkout.session.async_payment_succeeded"
            | "checkout.session.async_payment_failed",
            Some("payment"),
        ) => {
            let reference = text(&object["client_reference_id"]);
            let signal = PaymentCompleted {
                checkout_session_id: text(&object["id"]),
                payment_intent_id: text(&object["payment_intent"]),
                event_id: event.id.clone(),
            };
            let signalled = tokio::time::timeout(
                CALL_LIMIT,
                d.temporal
                    .get_workflow_handle::<PurchaseWorkflow>(purchase_workflow_id(&reference))
                    .signal(
                        PurchaseWorkflow::payment_completed,
                        signal,
                        WorkflowSignalOptions::default(),
                    ),
            )
            .await;
            settle(signalled, event.attempts, async || {
                // A purchase that has not ended still needs it (its workflow is about to be
                // started by the outbox); one that ended, or is not ours, does not.
                Ok(match reference.parse::<Uuid>() {
                    Ok(id) => match d.store.purchases().purchase(id).await {
                        Ok(p) => !p.state.is_final(),
                        Err(store::StoreError::NotFound(_)) => false,
                        Err(e) => return Err(e.into()),
                    },
                    Err(_) => false,
                })
            })
            .await
        }
        ("checkout.session.completed", Some("setup")) => {
            let reference = text(&object["client_reference_id"]);
            let signal = SetupCompleted {
                checkout_session_id: text(&object["id"]),
                setup_intent_id: text(&object["setup_intent"]),
            };
            let signalled = tokio::time::timeout(
                CALL_LIMIT,
                d.temporal
                    .get_workflow_handle::<PaymentMethodSetupWorkflow>(setup_workflow_id(
                        &reference,
                    ))
                    .signal(
                        PaymentMethodSetupWorkflow::setup_completed,
                        signal,
                        WorkflowSignalOptions::default(),
                    ),
            )
            .await;
            // A setup is only its workflow: once that is gone (expired), so is the setup.
            settle(signalled, event.attempts, async || Ok(false)).await
        }
        // A topup charge that was processing has settled (or failed): a hint to the org's
        // auto-topup workflow, which asks the processor.
        ("payment_intent.succeeded" | "payment_intent.payment_failed", _) => {
            let Ok(topup_id) = text(&object["metadata"]["topup_id"]).parse::<Uuid>() else {
                return Ok(Dispatched::Done);
            };
            let org = match d.store.topups().topup_org(topup_id).await {
                Ok(org) => org,
                Err(store::StoreError::NotFound(_)) => return Ok(Dispatched::Done),
                Err(e) => return Err(e.into()),
            };
            let signal = ChargeSettled {
                payment_intent_id: text(&object["id"]),
                event_id: event.id.clone(),
            };
            let signalled = tokio::time::timeout(
                CALL_LIMIT,
                d.temporal
                    .get_workflow_handle::<AutoTopupWorkflow>(topup_workflow_id(&org.to_string()))
                    .signal(
                        AutoTopupWorkflow::charge_settled,
                        signal,
                        WorkflowSignalOptions::default(),
                    ),
            )
            .await;
            settle(signalled, event.attempts, async || {
                Ok(d.store.topups().topup_state(topup_id).await?
                    == billing::topup::TopupState::Running)
            })
            .await
        }
        // A refund of one of our payments: ours are recorded already (they carry our refund's
        // id); one made at the processor (its dashboard) takes its credits back like ours. The
        // processor's list of the payment's refunds is the truth, the event only the hint.
        ("charge.refunded", _) => {
            let pi = text(&object["payment_intent"]);
            if d.store.refunds().payment_of(&pi).await?.is_none() {
                return Ok(Dispatched::Done);
            }
            let refunds = match d.payments.refunds_of(&pi).await {
                Ok(r) => r,
                Err(activities::payments::PaymentError::Refused(why)) => {
                    tracing::warn!(payment_intent = %pi, %why, "refunds of a refunded charge not listed");
                    return Ok(Dispatched::Done);
                }
                Err(e) => return Ok(Dispatched::Later(backoff(event.attempts), e.to_string())),
            };
            for r in refunds
                .iter()
                .filter(|r| r.status == "succeeded" && r.ours.is_none())
            {
                let report = store::ProcessorRefundReport {
                    id: r.id.clone(),
                    payment_intent_id: pi.clone(),
                    amount_minor: r.amount_minor,
                };
                if let Some(recorded) = d.store.refunds().record_processor_refund(&report).await? {
                    tracing::info!(refund = %recorded.id, processor_refund = %r.id,
                        credits = %recorded.credits, bonus = %recorded.bonus_credits,
                        "a refund made at the processor took its credits back");
                }
            }
            Ok(Dispatched::Done)
        }
        // A chargeback: claw back what is unspent, pause auto-topup, tell the billing contacts.
        ("charge.dispute.created", _) => {
            let report = store::DisputeReport {
                id: text(&object["id"]),
                payment_intent_id: text(&object["payment_intent"]),
                amount_minor: object["amount"].as_i64().unwrap_or_default(),
                currency: text(&object["currency"]),
                reason: text(&object["reason"]),
                status: text(&object["status"]),
            };
            if report.id.is_empty() || report.payment_intent_id.is_empty() {
                return Ok(Dispatched::Done);
            }
            d.store.disputes().open_dispute(&report).await?;
            notify_dispute(d, event, &report).await
        }
        ("charge.dispute.closed", _) => {
            let outcome = match object["status"].as_str() {
                Some("won") => "won",
                Some("lost") => "lost",
                _ => return Ok(Dispatched::Done),
            };
            let id = text(&object["id"]);
            if d.store.disputes().close_dispute(&id, outcome).await? {
                Ok(Dispatched::Done)
            } else if d
                .store
                .disputes()
                .dispute_of_ours(&text(&object["payment_intent"]))
                .await?
            {
                // Its opening event has not been handled yet.
                Ok(Dispatched::Later(
                    backoff(event.attempts),
                    "the dispute is not recorded yet".into(),
                ))
            } else {
                Ok(Dispatched::Done)
            }
        }
        _ => Ok(Dispatched::Done),
    }
}

/// The billing contacts' notice of a dispute, sent at most once (keyed by the dispute), after
/// the clawback is booked.
async fn notify_dispute(
    d: &Dispatcher,
    event: &InboxEvent,
    report: &store::DisputeReport,
) -> anyhow::Result<Dispatched> {
    let Some((org, clawed, recipients, name)) =
        d.store.disputes().dispute_notice(&report.id).await?
    else {
        return Ok(Dispatched::Done);
    };
    let body = format!(
        "A payment of {org_name} ({org}) was disputed with the card issuer (reason: {reason}).\n\n         Credits clawed back: {clawed} (what was still unspent of that payment's credits; the \
         balance is never taken below zero).\nAuto-topup is paused until an operator resumes it.\n\n         Payment: {pi}\nDispute: {id}\n",
        org_name = name,
        reason = report.reason,
        pi = report.payment_intent_id,
        id = report.id,
    );
    match activities::mail_once(
        &d.store,
        &d.mailer,
        u32::try_from(event.attempts).unwrap_or(0) + 1,
        &format!("dispute:{}", report.id),
        &recipients,
        &format!("A payment of {name} is disputed"),
        &body,
    )
    .await
    {
        Ok(_) => Ok(Dispatched::Done),
        Err(e) => Ok(Dispatched::Later(backoff(event.attempts), format!("{e:?}"))),
    }
}
