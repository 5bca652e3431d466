//! Auto-topup (`auto-topup-{org}`, single flight per org) and low-balance alerts
//! (`alert-{org}-{threshold}-{crossing}`), started by the outbox dispatcher.

use crate::steps;
use std::time::Duration;

use billing::{Credits, topup::TopupState};
use serde::{Deserialize, Serialize};
use temporalio_common::ActivityError;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{SyncWorkflowContext, WorkflowContext, WorkflowResult};
use uuid::Uuid;

pub fn topup_workflow_id(org_id: &str) -> String {
    format!("auto-topup-{org_id}")
}

pub fn alert_workflow_id(org_id: &str, threshold_id: i64, crossing_seq: i64) -> String {
    format!("alert-{org_id}-{threshold_id}-{crossing_seq}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopupInput {
    pub org_id: Uuid,
    pub crossing_seq: i64,
    /// Charge attempts at most (soft declines are retried up to this).
    pub attempts_max: u32,
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
    /// Topups charged per org in 24 hours, at most (absent before round 2: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_max: Option<u32>,
    /// How often a charge that is still `processing` is checked when no event says it settled
    /// (absent before round 2: [`SETTLE_RECHECK_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_recheck_secs: Option<u64>,
}

/// A processing charge (a bank debit) settles in days; without an event the processor is asked
/// again this often.
pub const SETTLE_RECHECK_SECS: u64 = 6 * 3600;

/// A processing charge that has not settled after this long is given up on (and failed): the
/// processor's slowest debits settle within 14 days.
pub const SETTLE_GIVE_UP_SECS: u64 = 21 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginTopup {
    pub org_id: Uuid,
    pub crossing_seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_max: Option<u32>,
}

/// Sent by the webhook inbox when the processor reports a topup's PaymentIntent settled
/// (`payment_intent.succeeded` / `payment_intent.payment_failed`): a hint to ask it again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChargeSettled {
    pub payment_intent_id: String,
    pub event_id: String,
}

/// A processing charge to look at again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckCharge {
    pub topup_id: Uuid,
    pub attempt: u32,
    pub payment_intent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TopupPlan {
    Charge {
        topup_id: Uuid,
        amount_minor: i64,
        currency: String,
        customer: Option<String>,
        payment_method: String,
    },
    Skipped {
        reason: String,
    },
    Capped {
        topup_id: Uuid,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeInput {
    pub topup_id: Uuid,
    pub attempt: u32,
    pub amount_minor: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub payment_method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChargeOutcome {
    Succeeded {
        payment_intent_id: String,
    },
    SoftDecline {
        code: String,
    },
    HardDecline {
        code: String,
    },
    /// Accepted but not settled (bank debits): wait for the processor, grant nothing yet.
    Processing {
        payment_intent_id: String,
    },
    /// The customer must act (authentication): a hard stop for an off-session charge.
    RequiresAction {
        payment_intent_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantTopup {
    pub topup_id: Uuid,
    pub payment_intent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailTopup {
    pub topup_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertInput {
    pub org_id: Uuid,
    pub threshold_id: i64,
    pub crossing_seq: i64,
    pub threshold: Credits,
    pub balance: Credits,
    /// See the worker's `alerts.repeat_after_secs` (absent in older histories: no limit).
    #[serde(default)]
    pub repeat_after_secs: u64,
}

pub struct TopupActivities;

#[activity_definitions]
impl TopupActivities {
    /// Records the topup for this crossing and decides: charge, skip, or capped.
    #[activity(name = "topup.begin")]
    pub fn begin(_input: BeginTopup) -> Result<TopupPlan, ActivityError> {
        unimplemented!()
    }

    /// One charge attempt, recorded with its typed outcome.
    #[activity(name = "topup.charge")]
    pub fn charge(_input: ChargeInput) -> Result<ChargeOutcome, ActivityError> {
        unimplemented!()
    }

    /// Asks the processor what became of a processing charge (and records a settled one).
    #[activity(name = "topup.check_charge")]
    pub fn check_charge(_input: CheckCharge) -> Result<ChargeOutcome, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "topup.grant")]
    pub fn grant(_input: GrantTopup) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Ends the topup as failed, pauses auto-topup and e-mails the recipients once.
    #[activity(name = "topup.fail")]
    pub fn fail(_input: FailTopup) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// E-mails the recipients once that the monthly cap stopped a charge.
    #[activity(name = "topup.notify_capped")]
    pub fn notify_capped(_topup_id: Uuid) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// E-mails one low-balance alert, once per crossing.
    #[activity(name = "alert.send")]
    pub fn send_alert(_input: AlertInput) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// See [`TopupActivities`]; re-exported for the `activities` crate.
pub mod markers {
    pub use super::topup_activities::*;
}

#[workflow]
#[derive(Default)]
pub struct AutoTopupWorkflow {
    /// Settlement hints received (each is a reason to ask the processor again).
    hints: u32,
}

#[workflow_methods]
impl AutoTopupWorkflow {
    #[run(name = "auto_topup")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: TopupInput,
    ) -> WorkflowResult<TopupState> {
        let begin = BeginTopup {
            org_id: input.org_id,
            crossing_seq: input.crossing_seq,
            daily_max: input.daily_max,
        };
        let (topup_id, amount_minor, currency, customer, payment_method) = match ctx
            .execute_activity(TopupActivities::begin, begin, steps::store())
            .await?
        {
            TopupPlan::Skipped { .. } => return Ok(TopupState::Skipped),
            TopupPlan::Capped { topup_id } => {
                ctx.execute_activity(TopupActivities::notify_capped, topup_id, steps::notice())
                    .await?;
                return Ok(TopupState::Capped);
            }
            TopupPlan::Charge {
                topup_id,
                amount_minor,
                currency,
                customer,
                payment_method,
            } => (topup_id, amount_minor, currency, customer, payment_method),
        };
        let mut delay = Duration::from_secs(input.backoff_initial_secs.max(1));
        let attempts_max = input.attempts_max.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts_max {
            let charge = ChargeInput {
                topup_id,
                attempt,
                amount_minor,
                currency: currency.clone(),
                customer: customer.clone(),
                payment_method: payment_method.clone(),
            };
            let mut outcome = ctx
                .execute_activity(TopupActivities::charge, charge, steps::processor())
                .await?;
            // Only `succeeded` grants. A charge that settles later is waited for (an event
            // hints, a recheck timer bounds the wait) and decided by the processor's answer.
            let mut seen = 0u32;
            let mut waited = 0u64;
            while let ChargeOutcome::Processing { payment_intent_id } = &outcome {
                if waited >= SETTLE_GIVE_UP_SECS {
                    outcome = ChargeOutcome::HardDecline {
                        code: "the payment did not settle in time".into(),
                    };
                    break;
                }
                let recheck = input
                    .settle_recheck_secs
                    .unwrap_or(SETTLE_RECHECK_SECS)
                    .max(1);
                temporalio_sdk::workflows::select! {
                    r = ctx.wait_condition(move |s| s.hints > seen) => { r?; },
                    _ = ctx.timer(Duration::from_secs(recheck)) => { waited += recheck; },
                };
                seen = ctx.state(|s| s.hints);
                let check = CheckCharge {
                    topup_id,
                    attempt,
                    payment_intent_id: payment_intent_id.clone(),
                };
                outcome = ctx
                    .execute_activity(TopupActivities::check_charge, check, steps::processor())
                    .await?;
            }
            match outcome {
                ChargeOutcome::Processing { .. } => {
                    last = "the payment did not settle".to_string();
                    break;
                }
                ChargeOutcome::RequiresAction { .. } => {
                    last = "the payment method needs the customer's authentication \
                            (requires_action); off-session charges cannot ask for it"
                        .to_string();
                    break;
                }
                ChargeOutcome::Succeeded { payment_intent_id } => {
                    let grant = GrantTopup {
                        topup_id,
                        payment_intent_id,
                    };
                    ctx.execute_activity(TopupActivities::grant, grant, steps::store())
                        .await?;
                    return Ok(TopupState::Succeeded);
                }
                ChargeOutcome::HardDecline { code } => {
                    last = format!("the card was declined ({code})");
                    break;
                }
                ChargeOutcome::SoftDecline { code } => {
                    last = format!("the card was declined {attempt} times (last: {code})");
                    if attempt < attempts_max {
                        ctx.timer(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(input.backoff_max_secs.max(1)));
                    }
                }
            }
        }
        let fail = FailTopup {
            topup_id,
            reason: last,
        };
        ctx.execute_activity(TopupActivities::fail, fail, steps::store())
            .await?;
        Ok(TopupState::Failed)
    }

    /// From the webhook inbox: the processor reports a topup charge settled (or failed).
    #[signal(name = "charge_settled")]
    pub fn charge_settled(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _s: ChargeSettled) {
        self.hints = self.hints.saturating_add(1);
    }
}

#[workflow]
#[derive(Default)]
pub struct LowBalanceAlertWorkflow;

#[workflow_methods]
impl LowBalanceAlertWorkflow {
    #[run(name = "low_balance_alert")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: AlertInput) -> WorkflowResult<String> {
        ctx.execute_activity(TopupActivities::send_alert, input, steps::notice())
            .await?;
        Ok("sent".into())
    }
}
