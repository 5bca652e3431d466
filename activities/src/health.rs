use std::sync::Arc;

use store::Store;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

pub struct HealthActivitiesImpl {
    pub store: Arc<Store>,
}

#[activities]
impl HealthActivitiesImpl {
    #[activity(definition = workflows::health::markers::Ping)]
    pub async fn ping(
        self: Arc<Self>,
        _ctx: ActivityContext,
        message: String,
    ) -> Result<String, ActivityError> {
        self.store
            .ping()
            .await
            .map_err(|e| ActivityError::from(anyhow::anyhow!("database: {e}")))?;
        Ok(format!("pong: {message}"))
    }
}
