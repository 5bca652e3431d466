//! The monthly-summary Schedule (created or updated idempotently) and on-demand runs.

use std::time::Duration;

use anyhow::Context;
use billing::summary::Month;
use chrono::Utc;
use temporalio_client::{
    Client, WorkflowGetResultOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowStartOptions,
    schedules::{CreateScheduleOptions, ScheduleAction, ScheduleOverlapPolicy, ScheduleSpec},
};
use workflows::summary::{MonthlySummaryWorkflow, SCHEDULE_ID, SummaryInput, workflow_id};

use crate::config::Summaries;

fn input(cfg: &Summaries, month: String) -> SummaryInput {
    SummaryInput {
        month,
        page_size: cfg.page_size,
        pages_per_run: cfg.pages_per_run,
        ..SummaryInput::default()
    }
}

/// Creates the Schedule that starts the summaries of the month before, on the 1st of each month
/// at `grace_hours` UTC (late events get that long to arrive), or brings an existing one to
/// this spec and action. Safe to run at every worker start.
pub async fn sync_schedule(
    temporal: &Client,
    task_queue: &str,
    cfg: &Summaries,
) -> anyhow::Result<()> {
    let spec = ScheduleSpec::builder()
        .cron_strings(vec![format!("0 {} 1 * *", cfg.grace_hours.min(23))])
        .build();
    let action = || {
        ScheduleAction::start_workflow(
            MonthlySummaryWorkflow::run,
            input(cfg, String::new()),
            task_queue.to_string(),
            "monthly-summaries-scheduled",
        )
    };
    let created = temporal
        .create_schedule(
            SCHEDULE_ID,
            CreateScheduleOptions::builder()
                .action(action())
                .spec(spec.clone())
                .overlap_policy(ScheduleOverlapPolicy::Skip)
                .note("monthly usage summaries (creditflow)".to_string())
                .build(),
        )
        .await;
    match created {
        Ok(_) => tracing::info!(schedule = SCHEDULE_ID, "schedule created"),
        Err(e) if e.to_string().to_lowercase().contains("already") => {
            let action = action();
            temporal
                .get_schedule_handle(SCHEDULE_ID)
                .update(
                    move |u| {
                        u.set_spec(spec);
                        u.set_action(action);
                    },
                    Default::default(),
                )
                .await
                .context("updating the summaries schedule")?;
            tracing::info!(schedule = SCHEDULE_ID, "schedule updated");
        }
        Err(e) => return Err(e).context("creating the summaries schedule"),
    }
    Ok(())
}

/// Runs (or joins the running) generation for one month and waits for it: the backfill.
///
/// Only a month that is over may be generated: the summary of the current (or a future) month
/// would be stored as final while usage can still land in it. Its figures are live instead
/// (`GET /v1/summaries`, marked provisional).
pub async fn run_month(
    temporal: &Client,
    task_queue: &str,
    cfg: &Summaries,
    month: &str,
) -> anyhow::Result<String> {
    run_month_reporting(temporal, task_queue, cfg, month, |_| {}).await
}

/// [`run_month`], calling `on_progress` with the number of orgs summarised so far about once a
/// second while it runs.
pub async fn run_month_reporting(
    temporal: &Client,
    task_queue: &str,
    cfg: &Summaries,
    month: &str,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<String> {
    let parsed: Month = month
        .parse()
        .map_err(|_| anyhow::anyhow!("the month must be YYYY-MM, not {month:?}"))?;
    let now = Utc::now();
    anyhow::ensure!(
        parsed.is_closed_at(now),
        "{parsed} is not over yet (it ends at {}; now is {}): only past months' summaries are \
         generated and stored; this month's figures are live at GET /v1/summaries",
        parsed.end().to_rfc3339(),
        now.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let id = format!("{}{}", cfg.workflow_id_prefix, workflow_id(month));
    let options = WorkflowStartOptions::new(task_queue.to_string(), id.clone())
        .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .build();
    let handle = temporal
        .start_workflow(
            MonthlySummaryWorkflow::run,
            input(cfg, month.to_string()),
            options,
        )
        .await
        .context("starting the summaries workflow")?;
    // The latest run (the workflow continues as new every `pages_per_run` pages).
    let latest = temporal.get_workflow_handle::<MonthlySummaryWorkflow>(id);
    let result = handle.get_result(WorkflowGetResultOptions::default());
    tokio::pin!(result);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            done = &mut result => return Ok(done?),
            _ = tick.tick() => {
                let asked = latest.query(MonthlySummaryWorkflow::orgs_done, (), Default::default());
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), asked).await {
                    on_progress(n);
                }
            }
        }
    }
}
