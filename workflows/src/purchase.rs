//! Purchase checkout (`purchase-{purchase_id}`): create the Checkout Session, wait for the
//! payment signal (from the webhook) or the session's expiry, grant the credits and bonus
//! exactly once, then send the receipt. A step that cannot succeed (its activity failed for
//! good, e.g. the processor refused to create the session) ends the purchase as `failed`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_common::{ActivityError, error::ActivityExecutionError};
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{
    ActivityOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

/// The workflow id of a purchase: one workflow per purchase, so a start is idempotent.
pub fn workflow_id(purchase_id: &str) -> String {
    format!("purchase-{purchase_id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurchaseInput {
    pub purchase_id: String,
    pub org_id: String,
    /// How long the buyer has to pay before the session is expired.
    pub expires_after_secs: u64,
}

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
    pub purchase_id: String,
    pub payment_intent_id: String,
}

/// Ends a purchase that cannot go on as `failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkFailed {
    pub purchase_id: String,
    /// Which step failed and why (for the log; the purchase keeps only its state).
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantResult {
    pub balance_credits: String,
    pub newly_booked: bool,
}

pub struct PurchaseActivities;

#[activity_definitions]
impl PurchaseActivities {
    /// Creates (or finds) the purchase's Checkout Session and records its URL.
    #[activity(name = "purchase.create_checkout_session")]
    pub fn create_checkout_session(_purchase_id: String) -> Result<CheckoutSession, ActivityError> {
        unimplemented!()
    }

    /// Expires the session; reports a payment that beat the expiry.
    #[activity(name = "purchase.expire_checkout_session")]
    pub fn expire_checkout_session(_purchase_id: String) -> Result<ExpireOutcome, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "purchase.mark_paid")]
    pub fn mark_paid(_input: MarkPaid) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Books base credits and bonus in one transaction, idempotent on the purchase.
    #[activity(name = "purchase.grant_credits")]
    pub fn grant_credits(_purchase_id: String) -> Result<GrantResult, ActivityError> {
        unimplemented!()
    }

    /// E-mails the receipt once.
    #[activity(name = "purchase.send_receipt")]
    pub fn send_receipt(_purchase_id: String) -> Result<(), ActivityError> {
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
    state: String,
    payment: Option<PaymentCompleted>,
}

fn step() -> ActivityOptions {
    ActivityOptions::start_to_close_timeout(Duration::from_secs(30))
}

/// Ends a purchase whose checkout could not be created (`what` failed): an activity that
/// *failed* has no retries left (its error was non-retryable), so the purchase cannot go on and
/// no money has moved: it is marked `failed` and the workflow completes with that. A
/// cancellation is passed on as is.
async fn end_failed(
    ctx: &WorkflowContext<PurchaseWorkflow>,
    purchase_id: &str,
    what: &str,
    error: ActivityExecutionError,
) -> WorkflowResult<String> {
    if !matches!(error, ActivityExecutionError::Failed(_)) {
        return Err(error.into());
    }
    let mark = MarkFailed {
        purchase_id: purchase_id.to_string(),
        reason: format!("{what}: {error}"),
    };
    ctx.execute_activity(PurchaseActivities::mark_failed, mark, step())
        .await?;
    ctx.state_mut(|s| s.state = "failed".into());
    Ok("failed".into())
}

#[workflow_methods]
impl PurchaseWorkflow {
    #[run(name = "purchase_checkout")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: PurchaseInput,
    ) -> WorkflowResult<String> {
        ctx.state_mut(|s| s.state = "awaiting_payment".into());
        let id = input.purchase_id.clone();
        if let Err(e) = ctx
            .execute_activity(
                PurchaseActivities::create_checkout_session,
                id.clone(),
                step(),
            )
            .await
        {
            // No session, so no money can have moved: the purchase ends here, as failed.
            return end_failed(ctx, &id, "creating the checkout session", e).await;
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
                    id.clone(),
                    step(),
                )
                .await?
            {
                ExpireOutcome::Expired => {
                    ctx.state_mut(|s| s.state = "expired".into());
                    return Ok("expired".into());
                }
                ExpireOutcome::AlreadyPaid { payment_intent_id } => payment_intent_id,
            }
        };

        let mark = MarkPaid {
            purchase_id: id.clone(),
            payment_intent_id,
        };
        // From here the buyer may have paid: these steps are never given up as `failed` (the
        // money would be recorded nowhere). Their activities retry until they succeed; a bug
        // that makes one fail for good fails the workflow, visible to operators in the Temporal
        // UI and in temporal_workflow_failed, with the purchase left truthfully `awaiting_payment`
        // or `paid`, to be fixed and the workflow reset.
        ctx.execute_activity(PurchaseActivities::mark_paid, mark, step())
            .await?;
        ctx.state_mut(|s| s.state = "paid".into());
        ctx.execute_activity(PurchaseActivities::grant_credits, id.clone(), step())
            .await?;
        ctx.state_mut(|s| s.state = "credited".into());
        ctx.execute_activity(PurchaseActivities::send_receipt, id, step())
            .await?;
        Ok("credited".into())
    }

    /// The webhook's signal; only the first one counts.
    #[signal(name = "payment_completed")]
    pub fn payment_completed(&mut self, _ctx: &mut SyncWorkflowContext<Self>, p: PaymentCompleted) {
        if self.payment.is_none() {
            self.payment = Some(p);
        }
    }

    #[query(name = "state")]
    pub fn current_state(&self, _ctx: &WorkflowContextView) -> String {
        self.state.clone()
    }
}
