//! Saving a payment method for off-session charges (`payment-method-setup-{setup_id}`): a
//! Checkout Session in setup mode; when the webhook reports it completed, the payment method is
//! recorded with the user who consented and the time.

use crate::steps;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_common::ActivityError;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult};
use uuid::Uuid;

use crate::purchase::CheckoutSession;

pub fn workflow_id(setup_id: &str) -> String {
    format!("payment-method-setup-{setup_id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupInput {
    pub setup_id: String,
    pub org_id: Uuid,
    /// Who consents to off-session charges.
    pub user: String,
    pub expires_after_secs: u64,
}

/// Sent by the webhook when the setup session completed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetupCompleted {
    pub checkout_session_id: String,
    pub setup_intent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveSetup {
    pub org_id: Uuid,
    pub user: String,
    pub setup_intent_id: String,
}

/// What expiring the setup session found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SetupExpiry {
    /// The session is expired: a card can no longer be saved through it.
    Expired,
    /// The person saved the card just before: the SetupIntent to record.
    AlreadySetUp { setup_intent_id: String },
}

/// Sessions are expired when the workflow's time is up (before, a card saved at the processor
/// later would be signalled to a closed workflow and never recorded).
pub const EXPIRE_PATCH: &str = "setup-expires-session";

pub struct SetupActivities;

#[activity_definitions]
impl SetupActivities {
    /// Finds or creates the org's customer and a setup-mode Checkout Session.
    #[activity(name = "payment_method.create_setup_session")]
    pub fn create_setup_session(_input: SetupInput) -> Result<CheckoutSession, ActivityError> {
        unimplemented!()
    }

    /// Expires the setup session (by its id), or finds it completed.
    #[activity(name = "payment_method.expire_session")]
    pub fn expire_session(_checkout_session_id: String) -> Result<SetupExpiry, ActivityError> {
        unimplemented!()
    }

    /// Reads the saved payment method off the SetupIntent and records it with the consent.
    #[activity(name = "payment_method.save")]
    pub fn save(_input: SaveSetup) -> Result<String, ActivityError> {
        unimplemented!()
    }
}

/// See [`SetupActivities`]; re-exported for the `activities` crate.
pub mod markers {
    pub use super::setup_activities::*;
}

#[workflow]
#[derive(Default)]
pub struct PaymentMethodSetupWorkflow {
    checkout_url: Option<String>,
    completed: Option<SetupCompleted>,
}

#[workflow_methods]
impl PaymentMethodSetupWorkflow {
    #[run(name = "payment_method_setup")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: SetupInput) -> WorkflowResult<String> {
        let session = ctx
            .execute_activity(
                SetupActivities::create_setup_session,
                input.clone(),
                steps::processor(),
            )
            .await?;
        ctx.state_mut(|s| s.checkout_url = Some(session.url.clone()));
        let done = temporalio_sdk::workflows::select! {
            r = ctx.wait_condition(|s| s.completed.is_some()) => { r?; true },
            _ = ctx.timer(Duration::from_secs(input.expires_after_secs)) => false,
        };
        let setup_intent_id = if done {
            ctx.state(|s| s.completed.as_ref().map(|c| c.setup_intent_id.clone()))
                .unwrap_or_default()
        } else if ctx.patched(EXPIRE_PATCH) {
            match ctx
                .execute_activity(
                    SetupActivities::expire_session,
                    session.id,
                    steps::processor(),
                )
                .await?
            {
                SetupExpiry::Expired => return Ok("expired".into()),
                SetupExpiry::AlreadySetUp { setup_intent_id } => setup_intent_id,
            }
        } else {
            return Ok("expired".into());
        };
        let save = SaveSetup {
            org_id: input.org_id,
            user: input.user,
            setup_intent_id,
        };
        ctx.execute_activity(SetupActivities::save, save, steps::processor())
            .await?;
        Ok("saved".into())
    }

    #[signal(name = "setup_completed")]
    pub fn setup_completed(&mut self, _ctx: &mut SyncWorkflowContext<Self>, c: SetupCompleted) {
        if self.completed.is_none() {
            self.completed = Some(c);
        }
    }

    /// The hosted page's URL once the session exists.
    #[query(name = "checkout_url")]
    pub fn checkout_url(&self, _ctx: &WorkflowContextView) -> Option<String> {
        self.checkout_url.clone()
    }
}
