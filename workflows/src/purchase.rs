//! Purchase checkout (`purchase-{purchase_id}`): create the Checkout Session, wait for the
//! payment signal (from the webhook) or the session's expiry, grant the credits and bonus
//! exactly once, then send the receipt. A step that cannot succeed (its activity failed for
//! good, e.g. the processor refused to create the session) ends the purchase as `failed`.

use crate::steps;
use std::time::Duration;

use billing::{Credits, PurchaseState};
use serde::{Deserialize, Serialize};
use temporalio_common::{
    ActivityError,
    error::{ActivityExecutionError, ApplicationFailure},
};
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult};
use uuid::Uuid;

/// The workflow id of a purchase: one workflow per purchase, so a start is idempotent.
pub fn workflow_id(purchase_id: &str) -> String {
    format!("purchase-{purchase_id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurchaseInput {
    pub purchase_id: Uuid,
    pub org_id: Uuid,
    /// How long the buyer has to pay before the session is expired.
    pub expires_after_secs: u64,
    /// How long a payment that settles later (bank debits) is waited for before the processor
    /// is asked again; absent in inputs of round 1 (then [`FUNDS_RECHECK_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funds_recheck_secs: Option<u64>,
}

/// The patch that makes the processor, not the webhook, decide whether a purchase was paid.
/// Histories recorded before it replay the old path (grant on the first signal).
pub const VERIFY_PATCH: &str = "processor-verifies-payment";

/// Bank debits settle in days (ACH up to 4 business days, SEPA up to 14): while one is pending
/// the processor is asked again this often, besides on every webhook hint.
pub const FUNDS_RECHECK_SECS: u64 = 6 * 3600;

/// Sent by the webhook when the payment processor reports the session paid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PaymentCompleted {
    pub checkout_session_id: String,
    pub payment_intent_id: String,
    pub event_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExpireOutcome {
    Expired,
    /// The session was paid after all (the payment raced the expiry).
    AlreadyPaid {
        payment_intent_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkPaid {
    pub purchase_id: Uuid,
    pub payment_intent_id: String,
}

/// Ends a purchase that cannot go on as `failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkFailed {
    pub purchase_id: Uuid,
    /// Which step failed and why (for the log; the purchase keeps only its state).
    pub reason: String,
}

/// What the processor says of a purchase's payment: the truth the workflow acts on, where a
/// webhook is only a hint to ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentCheck {
    /// The money was received, for the purchase's amount and currency.
    Paid { payment_intent_id: String },
    /// The checkout completed with a payment that settles later: wait for its outcome.
    Pending,
    /// The payment failed for good (a bank debit bounced, the session expired unpaid).
    Failed { reason: String },
    /// Nothing was paid (the session is still open, or it does not match the purchase): the
    /// hint was not a payment, and the checkout goes on as before.
    NotPaid { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantResult {
    pub balance_credits: Credits,
    pub newly_booked: bool,
}

pub struct PurchaseActivities;

#[activity_definitions]
impl PurchaseActivities {
    /// Creates (or finds) the purchase's Checkout Session and records its URL.
    #[activity(name = "purchase.create_checkout_session")]
    pub fn create_checkout_session(_purchase_id: Uuid) -> Result<CheckoutSession, ActivityError> {
        unimplemented!()
    }

    /// Expires the session; reports a payment that beat the expiry.
    #[activity(name = "purchase.expire_checkout_session")]
    pub fn expire_checkout_session(_purchase_id: Uuid) -> Result<ExpireOutcome, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "purchase.mark_paid")]
    pub fn mark_paid(_input: MarkPaid) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Books base credits and bonus in one transaction, idempotent on the purchase.
    #[activity(name = "purchase.grant_credits")]
    pub fn grant_credits(_purchase_id: Uuid) -> Result<GrantResult, ActivityError> {
        unimplemented!()
    }

    /// E-mails the receipt once.
    #[activity(name = "purchase.send_receipt")]
    pub fn send_receipt(_purchase_id: Uuid) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Asks the processor about the purchase's own checkout session (never the one a hint
    /// names) and checks status, amount, currency and reference against the purchase; a pending
    /// payment moves the purchase to `awaiting_funds`.
    #[activity(name = "purchase.check_payment")]
    pub fn check_payment(_purchase_id: Uuid) -> Result<PaymentCheck, ActivityError> {
        unimplemented!()
    }

    /// Tells the buyer, once, that the payment failed and nothing was charged.
    #[activity(name = "purchase.send_failure_notice")]
    pub fn send_failure_notice(_input: MarkFailed) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Moves an unfinished purchase (awaiting payment, or paid but not credited) to `failed`;
    /// idempotent.
    #[activity(name = "purchase.mark_failed")]
    pub fn mark_failed(_input: MarkFailed) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// See [`PurchaseActivities`]; re-exported for the `activities` crate.
pub mod markers {
    pub use super::purchase_activities::*;
}

#[workflow]
#[derive(Default)]
pub struct PurchaseWorkflow {
    /// `None` only before the run's first step.
    state: Option<PurchaseState>,
    payment: Option<PaymentCompleted>,
    /// Every hint (signal) received, the first and all later ones: each is a reason to ask the
    /// processor again.
    hints: u32,
}

/// Ends a purchase whose checkout could not be created (`what` failed): an activity that
/// *failed* has no retries left (its error was non-retryable), so the purchase cannot go on and
/// no money has moved: it is marked `failed` and the workflow completes with that. A
/// cancellation is passed on as is.
async fn end_failed(
    ctx: &WorkflowContext<PurchaseWorkflow>,
    purchase_id: Uuid,
    what: &str,
    error: ActivityExecutionError,
) -> WorkflowResult<PurchaseState> {
    if !matches!(error, ActivityExecutionError::Failed(_)) {
        return Err(error.into());
    }
    let mark = MarkFailed {
        purchase_id,
        reason: format!("{what}: {error}"),
    };
    ctx.execute_activity(PurchaseActivities::mark_failed, mark, steps::store())
        .await?;
    ctx.state_mut(|s| s.state = Some(PurchaseState::Failed));
    Ok(PurchaseState::Failed)
}

#[workflow_methods]
impl PurchaseWorkflow {
    #[run(name = "purchase_checkout")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: PurchaseInput,
    ) -> WorkflowResult<PurchaseState> {
        ctx.state_mut(|s| s.state = Some(PurchaseState::AwaitingPayment));
        let id = input.purchase_id;
        if let Err(e) = ctx
            .execute_activity(
                PurchaseActivities::create_checkout_session,
                id,
                steps::processor(),
            )
            .await
        {
            // No session, so no money can have moved: the purchase ends here, as failed.
            return end_failed(ctx, id, "creating the checkout session", e).await;
        }

        if ctx.patched(VERIFY_PATCH) {
            return checked_payment(ctx, &input).await;
        }
        // A payment signal that arrived before this point is already in the state.
        let paid = temporalio_sdk::workflows::select! {
            r = ctx.wait_condition(|s| s.payment.is_some()) => { r?; true },
            _ = ctx.timer(Duration::from_secs(input.expires_after_secs)) => false,
        };
        let payment_intent_id = if paid {
            ctx.state(|s| s.payment.as_ref().map(|p| p.payment_intent_id.clone()))
                .unwrap_or_default()
        } else {
            match ctx
                .execute_activity(
                    PurchaseActivities::expire_checkout_session,
                    id,
                    steps::processor(),
                )
                .await?
            {
                ExpireOutcome::Expired => {
                    ctx.state_mut(|s| s.state = Some(PurchaseState::Expired));
                    return Ok(PurchaseState::Expired);
                }
                ExpireOutcome::AlreadyPaid { payment_intent_id } => payment_intent_id,
            }
        };

        credit_paid(ctx, id, payment_intent_id).await
    }

    /// The webhook's signal: something happened to the checkout session (completed, paid
    /// later, failed later). Before the processor-verifies patch only the first one counted,
    /// as the payment itself; now each is a hint to ask the processor.
    #[signal(name = "payment_completed")]
    pub fn payment_completed(&mut self, _ctx: &mut SyncWorkflowContext<Self>, p: PaymentCompleted) {
        self.hints = self.hints.saturating_add(1);
        if self.payment.is_none() {
            self.payment = Some(p);
        }
    }

    #[query(name = "state")]
    pub fn current_state(&self, _ctx: &WorkflowContextView) -> Option<PurchaseState> {
        self.state
    }
}

/// Seconds since the epoch in workflow time (deterministic on replay).
fn now_secs(ctx: &WorkflowContext<PurchaseWorkflow>) -> u64 {
    ctx.workflow_time()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The checkout after [`VERIFY_PATCH`]: every hint (and the expiry) makes the workflow ask the
/// processor, and only its answer moves the purchase. Paid: credited once and a receipt. Pending
/// (`awaiting_funds`): wait for the next hint or a recheck. Failed: `failed` and a notice.
/// Not paid: the checkout goes on until it expires. The loop is bounded by time: the session's
/// expiry while it is open, the processor's settlement (days) once a payment is pending.
async fn checked_payment(
    ctx: &mut WorkflowContext<PurchaseWorkflow>,
    input: &PurchaseInput,
) -> WorkflowResult<PurchaseState> {
    let id = input.purchase_id;
    let expires_at = now_secs(ctx) + input.expires_after_secs;
    let recheck = input
        .funds_recheck_secs
        .unwrap_or(FUNDS_RECHECK_SECS)
        .max(1);
    let mut seen = 0u32;
    let mut pending = false;
    let payment_intent_id = loop {
        // While the session is open, wait for a hint until it expires; once a payment is
        // pending, for a hint or the next recheck.
        let wait = if pending {
            recheck
        } else {
            expires_at.saturating_sub(now_secs(ctx))
        };
        let hinted = temporalio_sdk::workflows::select! {
            r = ctx.wait_condition(move |s| s.hints > seen) => { r?; true },
            _ = ctx.timer(Duration::from_secs(wait)) => false,
        };
        seen = ctx.state(|s| s.hints);
        let expired = !hinted && !pending;
        if expired {
            // Expired unpaid, unless the payment raced the expiry: then ask as for a hint.
            match ctx
                .execute_activity(
                    PurchaseActivities::expire_checkout_session,
                    id,
                    steps::processor(),
                )
                .await?
            {
                ExpireOutcome::Expired => {
                    ctx.state_mut(|s| s.state = Some(PurchaseState::Expired));
                    return Ok(PurchaseState::Expired);
                }
                ExpireOutcome::AlreadyPaid { .. } => {}
            }
        }
        match ctx
            .execute_activity(PurchaseActivities::check_payment, id, steps::processor())
            .await?
        {
            PaymentCheck::Paid { payment_intent_id } => break payment_intent_id,
            PaymentCheck::Pending => {
                pending = true;
                ctx.state_mut(|s| s.state = Some(PurchaseState::AwaitingFunds));
            }
            PaymentCheck::Failed { reason } => {
                let failed = MarkFailed {
                    purchase_id: id,
                    reason,
                };
                ctx.execute_activity(
                    PurchaseActivities::mark_failed,
                    failed.clone(),
                    steps::store(),
                )
                .await?;
                ctx.state_mut(|s| s.state = Some(PurchaseState::Failed));
                ctx.execute_activity(
                    PurchaseActivities::send_failure_notice,
                    failed,
                    steps::notice(),
                )
                .await?;
                return Ok(PurchaseState::Failed);
            }
            PaymentCheck::NotPaid { reason } if expired => {
                // The session was completed (it could not be expired) with a payment that does
                // not match the purchase: money may have moved, so it is not given up as failed
                // but left to an operator, the workflow failed and visible in the Temporal UI.
                return Err(ApplicationFailure::non_retryable(format!(
                    "the checkout session of purchase {id} was completed but {reason}: an operator must look into it"
                ))
                .into());
            }
            PaymentCheck::NotPaid { .. } => {}
        }
    };
    credit_paid(ctx, id, payment_intent_id).await
}

/// A paid purchase: marked paid, credited once, receipt sent (both paths end here).
///
/// From here the buyer has paid: these steps are never given up as `failed` (the money would be
/// recorded nowhere). Their activities retry until they succeed; a bug that makes one fail for
/// good fails the workflow, visible to operators in the Temporal UI and in
/// temporal_workflow_failed, with the purchase left truthfully `awaiting_payment` or `paid`, to
/// be fixed and the workflow reset.
async fn credit_paid(
    ctx: &mut WorkflowContext<PurchaseWorkflow>,
    id: Uuid,
    payment_intent_id: String,
) -> WorkflowResult<PurchaseState> {
    let mark = MarkPaid {
        purchase_id: id,
        payment_intent_id,
    };
    ctx.execute_activity(PurchaseActivities::mark_paid, mark, steps::store())
        .await?;
    ctx.state_mut(|s| s.state = Some(PurchaseState::Paid));
    ctx.execute_activity(PurchaseActivities::grant_credits, id, steps::store())
        .await?;
    ctx.state_mut(|s| s.state = Some(PurchaseState::Credited));
    ctx.execute_activity(PurchaseActivities::send_receipt, id, steps::notice())
        .await?;
    Ok(PurchaseState::Credited)
}
