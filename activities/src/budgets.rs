//! Budget alerts: the e-mail of one budget's percent reached in one period, sent once.

use std::sync::Arc;

use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use workflows::budgets::BudgetAlertInput;

use crate::{errors, mail::Mailer};
use store::Store;

pub struct BudgetActivitiesImpl {
    pub store: Store,
    pub mailer: Mailer,
}

#[activities]
impl BudgetActivitiesImpl {
    #[activity(definition = workflows::budgets::markers::SendAlert)]
    pub async fn send_alert(
        self: Arc<Self>,
        ctx: ActivityContext,
        a: BudgetAlertInput,
    ) -> Result<(), ActivityError> {
        let org = self
            .store
            .orgs()
            .get_org(a.org_id)
            .await
            .map_err(errors::classify)?;
        let budgets = self
            .store
            .budgets()
            .standings(a.org_id)
            .await
            .map_err(errors::classify)?;
        // A budget removed since has no one to tell.
        let Some(b) = budgets.iter().find(|s| s.budget.id == a.budget_id) else {
            tracing::info!(org = %a.org_id, budget = %a.budget_id, "budget alert for a removed budget: not mailed");
            return Ok(());
        };
        let recipients = if b.budget.recipients.is_empty() {
            self.store
                .settings()
                .billing_settings(a.org_id)
                .await
                .map_err(errors::classify)?
                .recipients
        } else {
            b.budget.recipients.clone()
        };
        use billing::money::display::credits as shown;
        let resets = a
            .resets_at
            .map_or("never (a total budget)".to_string(), |r| r.to_rfc3339());
        let body = format!(
            "Budget `{id}` of {name} ({org_id}) has reached {percent}% of its limit: {spent} of {limit} \
             used this period (since {start}).\n\nIt resets at {resets}.\n",
            id = a.budget_id,
            name = org.name,
            org_id = a.org_id,
            percent = a.percent,
            spent = shown(a.spent),
            limit = shown(a.limit),
            start = a.period_start.to_rfc3339(),
        );
        let subject = format!("Budget {}: {}% used ({})", a.budget_id, a.percent, org.name);
        let key = format!(
            "budget-alert:{}:{}:{}:{}",
            a.org_id,
            a.budget_id,
            a.period_start.timestamp(),
            a.percent
        );
        let mailed = crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &key,
            &recipients,
            &subject,
            &body,
        )
        .await?;
        if let crate::Mailed::Failed(why) | crate::Mailed::Unknown(why) = &mailed {
            tracing::warn!(org = %a.org_id, budget = %a.budget_id, reason = %why, "budget alert e-mail not sent");
        }
        Ok(())
    }
}
