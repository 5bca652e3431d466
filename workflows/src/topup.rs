//! Auto-topup (`auto-topup-{org}`, single flight per org) and low-balance alerts
//! (`alert-{org}-{threshold}-{crossing}`), started by the outbox dispatcher.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_common::{ActivityError, RetryPolicy};
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{ActivityOptions, WorkflowContext, WorkflowResult};

pub fn topup_workflow_id(org_id: &str) -> String {
    format!("auto-topup-{org_id}")
}

pub fn alert_workflow_id(org_id: &str, threshold_id: i64, crossing_seq: i64) -> String {
    format!("alert-{org_id}-{threshold_id}-{crossing_seq}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopupInput {
    pub org_id: String,
    pub crossing_seq: i64,
    /// Charge attempts at most (soft declines are retried up to this).
    pub attempts_max: u32,
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginTopup {
    pub org_id: String,
    pub crossing_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TopupPlan {
    Charge {
        topup_id: String,
        amount_minor: i64,
        currency: String,
        customer: Option<String>,
        payment_method: String,
    },
    Skipped {
        reason: String,
    },
    Capped {
        topup_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeInput {
    pub topup_id: String,
    pub attempt: u32,
    pub amount_minor: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub payment_method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChargeOutcome {
    Succeeded { payment_intent_id: String },
    SoftDecline { code: String },
    HardDecline { code: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantTopup {
    pub topup_id: String,
    pub payment_intent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailTopup {
    pub topup_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertInput {
    pub org_id: String,
    pub threshold_id: i64,
    pub crossing_seq: i64,
    pub threshold: String,
    pub balance: String,
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
    pub fn notify_capped(_topup_id: String) -> Result<(), ActivityError> {
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

fn step() -> ActivityOptions {
    ActivityOptions::start_to_close_timeout(Duration::from_secs(30))
}

#[workflow]
#[derive(Default)]
pub struct AutoTopupWorkflow;

#[workflow_methods]
impl AutoTopupWorkflow {
    #[run(name = "auto_topup")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: TopupInput) -> WorkflowResult<String> {
        let begin = BeginTopup {
            org_id: input.org_id.clone(),
            crossing_seq: input.crossing_seq,
        };
        let (topup_id, amount_minor, currency, customer, payment_method) = match ctx
            .execute_activity(TopupActivities::begin, begin, step())
            .await?
        {
            TopupPlan::Skipped { .. } => return Ok("skipped".into()),
            TopupPlan::Capped { topup_id } => {
                ctx.execute_activity(TopupActivities::notify_capped, topup_id, step())
                    .await?;
                return Ok("capped".into());
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
                topup_id: topup_id.clone(),
                attempt,
                amount_minor,
                currency: currency.clone(),
                customer: customer.clone(),
                payment_method: payment_method.clone(),
            };
            match ctx
                .execute_activity(TopupActivities::charge, charge, step())
                .await?
            {
                ChargeOutcome::Succeeded { payment_intent_id } => {
                    let grant = GrantTopup {
                        topup_id,
                        payment_intent_id,
                    };
                    ctx.execute_activity(TopupActivities::grant, grant, step())
                        .await?;
                    return Ok("succeeded".into());
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
        ctx.execute_activity(TopupActivities::fail, fail, step())
            .await?;
        Ok("failed".into())
    }
}

#[workflow]
#[derive(Default)]
pub struct LowBalanceAlertWorkflow;

#[workflow_methods]
impl LowBalanceAlertWorkflow {
    #[run(name = "low_balance_alert")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: AlertInput) -> WorkflowResult<String> {
        // SMTP failures are retried until delivered: no attempt limit, backoff capped at 30 s.
        let mut options = step();
        options.retry_policy = Some(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(30))
                .build(),
        );
        ctx.execute_activity(TopupActivities::send_alert, input, options)
            .await?;
        Ok("sent".into())
    }
}
