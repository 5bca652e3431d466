use std::sync::Arc;

use store::Store;
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;
use workflows::purchase::{CheckoutSession, ExpireOutcome, GrantResult, MarkFailed, MarkPaid};

use crate::{
    mail::Mailer,
    payment_error,
    payments::{CheckoutRequest, Expired, Payments},
};

/// Where the processor's hosted page sends the buyer back to.
#[derive(Clone, Debug)]
pub struct CheckoutUrls {
    pub success_url: String,
    pub cancel_url: String,
}

pub struct PurchaseActivitiesImpl {
    pub store: Store,
    pub payments: Payments,
    pub mailer: Mailer,
    pub urls: CheckoutUrls,
}

fn purchase_id(s: &str) -> Result<Uuid, ActivityError> {
    s.parse().map_err(|_| {
        ActivityError::application(ApplicationFailure::non_retryable(format!(
            "bad purchase id {s}"
        )))
    })
}

fn store_error(e: store::StoreError) -> ActivityError {
    ActivityError::from(anyhow::anyhow!("store: {e}"))
}

#[activities]
impl PurchaseActivitiesImpl {
    #[activity(definition = workflows::purchase::markers::CreateCheckoutSession)]
    pub async fn create_checkout_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: String,
    ) -> Result<CheckoutSession, ActivityError> {
        let p = self
            .store
            .purchase(purchase_id(&id)?)
            .await
            .map_err(store_error)?;
        if let (Some(sid), Some(url)) = (&p.checkout_session_id, &p.checkout_url) {
            return Ok(CheckoutSession {
                id: sid.clone(),
                url: url.clone(),
            });
        }
        let session = self
            .payments
            .create_checkout_session(&CheckoutRequest {
                idempotency_key: &format!("checkout-{id}"),
                client_reference_id: &id,
                product_name: &format!("{} credits", p.package.name),
                price: p.package.price,
                expires_at_unix: p.expires_at.timestamp(),
                success_url: &self.urls.success_url,
                cancel_url: &self.urls.cancel_url,
                metadata: vec![
                    ("purchase_id".into(), id.clone()),
                    ("org_id".into(), p.org_id.to_string()),
                ],
            })
            .await
            .map_err(payment_error)?;
        self.store
            .set_checkout_session(p.id, &session.id, &session.url)
            .await
            .map_err(store_error)?;
        Ok(CheckoutSession {
            id: session.id,
            url: session.url,
        })
    }

    #[activity(definition = workflows::purchase::markers::ExpireCheckoutSession)]
    pub async fn expire_checkout_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: String,
    ) -> Result<ExpireOutcome, ActivityError> {
        let p = self
            .store
            .purchase(purchase_id(&id)?)
            .await
            .map_err(store_error)?;
        let outcome = match &p.checkout_session_id {
            Some(sid) => self
                .payments
                .expire_checkout_session(sid)
                .await
                .map_err(payment_error)?,
            None => Expired::Expired,
        };
        Ok(match outcome {
            Expired::Expired => {
                self.store
                    .end_purchase(p.id, "expired")
                    .await
                    .map_err(store_error)?;
                ExpireOutcome::Expired
            }
            Expired::AlreadyPaid { payment_intent_id } => {
                ExpireOutcome::AlreadyPaid { payment_intent_id }
            }
        })
    }

    #[activity(definition = workflows::purchase::markers::MarkPaid)]
    pub async fn mark_paid(
        self: Arc<Self>,
        _ctx: ActivityContext,
        m: MarkPaid,
    ) -> Result<(), ActivityError> {
        self.store
            .mark_purchase_paid(purchase_id(&m.purchase_id)?, &m.payment_intent_id)
            .await
            .map_err(store_error)
    }

    #[activity(definition = workflows::purchase::markers::MarkFailed)]
    pub async fn mark_failed(
        self: Arc<Self>,
        _ctx: ActivityContext,
        m: MarkFailed,
    ) -> Result<(), ActivityError> {
        let id = purchase_id(&m.purchase_id)?;
        // The purchases table keeps no reason; the log does, for whoever looks into it.
        tracing::warn!(purchase = %id, reason = %m.reason, "purchase failed");
        self.store
            .end_purchase(id, "failed")
            .await
            .map_err(store_error)
    }

    #[activity(definition = workflows::purchase::markers::GrantCredits)]
    pub async fn grant_credits(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: String,
    ) -> Result<GrantResult, ActivityError> {
        let grant = self
            .store
            .grant_purchase(purchase_id(&id)?)
            .await
            .map_err(store_error)?;
        Ok(GrantResult {
            balance_credits: grant.balance.to_string(),
            newly_booked: grant.newly_booked,
        })
    }

    #[activity(definition = workflows::purchase::markers::SendReceipt)]
    pub async fn send_receipt(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: String,
    ) -> Result<(), ActivityError> {
        let p = self
            .store
            .purchase(purchase_id(&id)?)
            .await
            .map_err(store_error)?;
        let Some(to) = p.receipt_email.clone() else {
            return Ok(());
        };
        let subject = format!("Your creditflow receipt: {} credits", p.package.name);
        let balance = self
            .store
            .balance(p.org_id)
            .await
            .map_err(store_error)?
            .balance;
        let major = rust_decimal::Decimal::new(
            p.package.price.amount_minor,
            p.package.price.currency.minor_digits(),
        );
        let body = format!(
            "Thank you for your purchase.\n\nPackage: {}\nCredits: {}\nBonus credits: {}\nPrice: {} {}\nNew balance: {} credits\nPurchase: {}\n",
            p.package.name,
            p.package.base_credits,
            p.package.bonus_credits,
            major,
            p.package.price.currency.code().to_uppercase(),
            balance,
            id
        );
        crate::mail_once(
            &self.store,
            &self.mailer,
            &format!("receipt:{id}"),
            &[to],
            &subject,
            &body,
        )
        .await
    }
}
