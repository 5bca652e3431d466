//! Monthly summaries (`monthly-summaries-{YYYY-MM}`), started by a Temporal Schedule on the 1st
//! of each month after a grace period, or on demand (backfill). Walks all orgs in pages of
//! `page_size`, one activity per page, and continues as new every `pages_per_run` pages so its
//! history stays small whatever the number of orgs.

use crate::steps;

use billing::summary::Month;
use serde::{Deserialize, Serialize};
use temporalio_common::{ActivityError, error::ApplicationFailure};
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{ContinueAsNewOptions, WorkflowContext, WorkflowContextView, WorkflowResult};
use uuid::Uuid;

pub const SCHEDULE_ID: &str = "monthly-summaries";

pub fn workflow_id(month: &str) -> String {
    format!("monthly-summaries-{month}")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SummaryInput {
    /// `YYYY-MM`; empty means the month before the one the workflow started in (the schedule).
    pub month: String,
    /// Resume after this org id (set by continue-as-new).
    pub after_org: Option<Uuid>,
    pub page_size: u32,
    pub pages_per_run: u32,
    /// Totals carried across continue-as-new.
    pub orgs_done: u64,
    pub revisions_written: u64,
    /// Revisions of later, already stored months rewritten to keep the chain (late events).
    #[serde(default)]
    pub later_revisions_written: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageRequest {
    #[serde(with = "billing::summary::month_text")]
    pub month: Month,
    pub after_org: Option<Uuid>,
    pub page_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageDone {
    pub orgs: u32,
    pub revisions_written: u32,
    /// New revisions of later months already stored, so their openings follow this month.
    #[serde(default)]
    pub later_revisions_written: u32,
    pub last_org: Option<Uuid>,
    /// Orgs of the page that failed alone: recorded in `summary_failures` and retried alone
    /// through the outbox, so the month goes on without waiting for them.
    #[serde(default)]
    pub failed_orgs: Vec<Uuid>,
}

pub struct SummaryActivities;

#[activity_definitions]
impl SummaryActivities {
    /// Computes and stores one page of orgs' summaries for the month (idempotent).
    #[activity(name = "summaries.generate_page")]
    pub fn generate_page(_input: PageRequest) -> Result<PageDone, ActivityError> {
        unimplemented!()
    }
}

/// See [`SummaryActivities`]; re-exported for the `activities` crate.
pub mod markers {
    pub use super::summary_activities::*;
}

/// The month before the one containing `unix_secs` (UTC), as `YYYY-MM`. Pure arithmetic on the
/// workflow's start time, so replay computes the same month.
pub fn previous_month_of(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let (py, pm) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    format!("{py:04}-{pm:02}")
}

#[workflow]
#[derive(Default)]
pub struct MonthlySummaryWorkflow {
    /// Orgs summarised so far, over every run of this month's generation.
    orgs_done: u64,
}

#[workflow_methods]
impl MonthlySummaryWorkflow {
    #[run(name = "monthly_summaries")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: SummaryInput,
    ) -> WorkflowResult<String> {
        let mut input = input;
        if input.month.is_empty() {
            let started = ctx
                .workflow_time()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            input.month = previous_month_of(started);
        }
        let page_size = input.page_size.max(1);
        for _ in 0..input.pages_per_run.max(1) {
            let month: Month = input.month.parse().map_err(|e| {
                ApplicationFailure::non_retryable(format!("month {:?}: {e}", input.month))
            })?;
            let page = PageRequest {
                month,
                after_org: input.after_org,
                page_size,
            };
            let done = ctx
                .execute_activity(SummaryActivities::generate_page, page, steps::store())
                .await?;
            input.orgs_done += u64::from(done.orgs);
            let orgs_done = input.orgs_done;
            ctx.state_mut(|s| s.orgs_done = orgs_done);
            input.revisions_written += u64::from(done.revisions_written);
            input.later_revisions_written += u64::from(done.later_revisions_written);
            if done.orgs < page_size || done.last_org.is_none() {
                let later = if input.later_revisions_written > 0 {
                    format!(
                        ", {} revisions of later months (their openings follow {})",
                        input.later_revisions_written, input.month
                    )
                } else {
                    String::new()
                };
                return Ok(format!(
                    "{}: {} orgs, {} summaries written{later}",
                    input.month, input.orgs_done, input.revisions_written
                ));
            }
            input.after_org = done.last_org;
        }
        // Bounded history: carry on in a fresh run from the last org done.
        ctx.continue_as_new(input, ContinueAsNewOptions::default())?;
        Ok("continued as new".into())
    }

    /// How many orgs are summarised so far (for progress reports).
    #[query(name = "orgs_done")]
    pub fn orgs_done(&self, _ctx: &WorkflowContextView) -> u64 {
        self.orgs_done
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn previous_month_of_a_start_time() {
        // 2024-03-01T00:10:00Z → February (leap year)
        assert_eq!(super::previous_month_of(1_709_251_800), "2024-02");
        // 2025-01-01T01:00:00Z → December of the year before
        assert_eq!(super::previous_month_of(1_735_693_200), "2024-12");
        // 2026-11-26 → October
        assert_eq!(super::previous_month_of(1_795_651_200), "2026-10");
    }
}
