//! A probe workflow: proves a worker is polling the task queue and can reach its dependencies.

use temporalio_common::ActivityError;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowResult};

pub struct HealthActivities;

#[activity_definitions]
impl HealthActivities {
    /// Answers `pong: {message}` once the worker's database answers.
    #[activity(name = "health.ping")]
    pub fn ping(_message: String) -> Result<String, ActivityError> {
        unimplemented!()
    }
}

/// The markers `#[activity_definitions]` generates live in a private module; re-exported here so
/// the `activities` crate can name them in `#[activity(definition = …)]`.
pub mod markers {
    pub use super::health_activities::*;
}

#[workflow]
#[derive(Default)]
pub struct PingWorkflow;

#[workflow_methods]
impl PingWorkflow {
    #[run(name = "ping")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, message: String) -> WorkflowResult<String> {
        let answer = ctx
            .execute_activity(HealthActivities::ping, message, crate::steps::probe())
            .await?;
        Ok(answer)
    }
}
