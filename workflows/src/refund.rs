//! Refund (`refund-{refund_id}`): the processor's refund, then the ledger reversal, then the
//! e-mail; each step idempotent on the refund id. A refused refund leaves the ledger untouched.

use crate::steps;

use serde::{Deserialize, Serialize};
use temporalio_common::ActivityError;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowResult};
use uuid::Uuid;

pub fn workflow_id(refund_id: &str) -> String {
    format!("refund-{refund_id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProcessorRefund {
    Refunded { stripe_refund_id: String },
    Refused { reason: String },
}

pub struct RefundActivities;

#[activity_definitions]
impl RefundActivities {
    /// Refunds through the processor (idempotency key from the refund id).
    #[activity(name = "refund.processor")]
    pub fn refund_payment(_refund_id: Uuid) -> Result<ProcessorRefund, ActivityError> {
        unimplemented!()
    }

    /// Reverses the credits in the ledger (idempotent on the refund).
    #[activity(name = "refund.reverse_credits")]
    pub fn reverse_credits(_refund_id: Uuid) -> Result<String, ActivityError> {
        unimplemented!()
    }

    /// Tells the buyer, once.
    #[activity(name = "refund.notify")]
    pub fn notify(_refund_id: Uuid) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// See [`RefundActivities`]; re-exported for the `activities` crate.
pub mod markers {
    pub use super::refund_activities::*;
}

#[workflow]
#[derive(Default)]
pub struct RefundWorkflow;

#[workflow_methods]
impl RefundWorkflow {
    #[run(name = "refund")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, refund_id: Uuid) -> WorkflowResult<String> {
        match ctx
            .execute_activity(
                RefundActivities::refund_payment,
                refund_id,
                steps::processor(),
            )
            .await?
        {
            ProcessorRefund::Refused { reason } => return Ok(format!("failed: {reason}")),
            ProcessorRefund::Refunded { .. } => {}
        }
        ctx.execute_activity(RefundActivities::reverse_credits, refund_id, steps::store())
            .await?;
        ctx.execute_activity(RefundActivities::notify, refund_id, steps::notice())
            .await?;
        Ok("reversed".into())
    }
}
