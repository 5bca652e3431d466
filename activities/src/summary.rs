use crate::errors;
use std::sync::Arc;

use store::Store;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use workflows::summary::{PageDone, PageRequest};

pub struct SummaryActivitiesImpl {
    pub store: Store,
}

#[activities]
impl SummaryActivitiesImpl {
    #[activity(definition = workflows::summary::markers::GeneratePage)]
    pub async fn generate_page(
        self: Arc<Self>,
        _ctx: ActivityContext,
        p: PageRequest,
    ) -> Result<PageDone, ActivityError> {
        let month = p.month;
        // However the workflow was started (the Schedule, the CLI, the Temporal UI), a stored
        // summary is final, so a month that is not over is never stored.
        if !month.is_closed_at(chrono::Utc::now()) {
            return Err(errors::refuse(
                "MonthNotOver",
                format!("{month} is not over yet: only past months are summarised"),
            ));
        }
        let after = p.after_org;
        let done = self
            .store
            .summaries()
            .generate_summaries_isolated(month, after, i64::from(p.page_size))
            .await
            .map_err(errors::classify)?;
        Ok(PageDone {
            orgs: done.orgs as u32,
            revisions_written: done.revisions_written as u32,
            later_revisions_written: done.later_revisions_written as u32,
            last_org: done.last_org,
            failed_orgs: done.failed_orgs,
        })
    }
}
