//! Budget alerts (`budget-alert-{org}-{budget}-{period start}-{percent}`): one e-mail per
//! budget, period and percent reached, started by the outbox dispatcher.

use crate::steps;

use billing::Credits;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use temporalio_common::ActivityError;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowResult};
use uuid::Uuid;

pub fn workflow_id(
    org_id: &str,
    budget_id: &str,
    period_start: DateTime<Utc>,
    percent: i32,
) -> String {
    format!(
        "budget-alert-{org_id}-{budget_id}-{}-{percent}",
        period_start.timestamp()
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetAlertInput {
    pub org_id: Uuid,
    pub budget_id: String,
    pub percent: i32,
    pub spent: Credits,
    pub limit: Credits,
    pub period_start: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<DateTime<Utc>>,
}

pub struct BudgetActivities;

#[activity_definitions]
impl BudgetActivities {
    /// E-mails the budget's recipients (the org's billing contacts when it names none) once.
    #[activity(name = "budget.send_alert")]
    pub fn send_alert(_input: BudgetAlertInput) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// See [`BudgetActivities`]; re-exported for the `activities` crate.
pub mod markers {
    pub use super::budget_activities::*;
}

#[workflow]
#[derive(Default)]
pub struct BudgetAlertWorkflow;

#[workflow_methods]
impl BudgetAlertWorkflow {
    #[run(name = "budget_alert")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: BudgetAlertInput,
    ) -> WorkflowResult<String> {
        ctx.execute_activity(BudgetActivities::send_alert, input, steps::notice())
            .await?;
        Ok("sent".into())
    }
}
