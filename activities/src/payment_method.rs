use crate::errors;
use std::sync::Arc;

use store::Store;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use workflows::{
    payment_method::{SaveSetup, SetupExpiry, SetupInput},
    purchase::CheckoutSession,
};

use crate::{
    payments::{Expired, Payments},
    purchase::CheckoutUrls,
};

pub struct SetupActivitiesImpl {
    pub store: Store,
    pub payments: Payments,
    pub urls: CheckoutUrls,
}

#[activities]
impl SetupActivitiesImpl {
    #[activity(definition = workflows::payment_method::markers::CreateSetupSession)]
    pub async fn create_setup_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: SetupInput,
    ) -> Result<CheckoutSession, ActivityError> {
        let org_id = input.org_id;
        let settings = self
            .store
            .settings()
            .billing_settings(org_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let customer = match settings.stripe_customer_id {
            Some(c) => c,
            None => {
                let o = self
                    .store
                    .orgs()
                    .get_org(org_id)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                self.payments
                    .create_customer(&input.org_id.to_string(), &o.name)
                    .await
                    .map_err(errors::classify)?
            }
        };
        let s = crate::processor_call(
            &self.store,
            &format!("setup-{}", input.setup_id),
            async || Ok(None),
            async |key: &str| {
                self.payments
                    .create_setup_session(
                        key,
                        &customer,
                        &input.setup_id,
                        &self.urls.success_url,
                        &self.urls.cancel_url,
                    )
                    .await
            },
        )
        .await?
        .map_err(errors::classify)?;
        Ok(CheckoutSession {
            id: s.id,
            url: s.url,
        })
    }

    #[activity(definition = workflows::payment_method::markers::ExpireSession)]
    pub async fn expire_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        checkout_session_id: String,
    ) -> Result<SetupExpiry, ActivityError> {
        match self
            .payments
            .expire_checkout_session(&checkout_session_id)
            .await
            .map_err(errors::classify)?
        {
            Expired::Expired => Ok(SetupExpiry::Expired),
            Expired::AlreadySetUp { setup_intent_id } => {
                Ok(SetupExpiry::AlreadySetUp { setup_intent_id })
            }
            Expired::AlreadyPaid { .. } => Err(errors::refuse(
                "WrongSessionKind",
                format!("{checkout_session_id} is a payment session, not a setup"),
            )),
        }
    }

    #[activity(definition = workflows::payment_method::markers::Save)]
    pub async fn save(
        self: Arc<Self>,
        _ctx: ActivityContext,
        s: SaveSetup,
    ) -> Result<String, ActivityError> {
        let (pm, customer) = self
            .payments
            .setup_intent_payment_method(&s.setup_intent_id)
            .await
            .map_err(errors::classify)?;
        self.store
            .settings()
            .save_payment_method(s.org_id, customer.as_deref(), &pm, &s.user)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(pm)
    }
}
