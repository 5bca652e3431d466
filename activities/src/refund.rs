use crate::errors;
use std::sync::Arc;
use uuid::Uuid;

use store::Store;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use workflows::refund::ProcessorRefund;

use crate::{
    mail::Mailer,
    payments::{PaymentError, Payments},
};

pub struct RefundActivitiesImpl {
    pub store: Store,
    pub payments: Payments,
    pub mailer: Mailer,
}

#[activities]
impl RefundActivitiesImpl {
    #[activity(definition = workflows::refund::markers::RefundPayment)]
    pub async fn refund_payment(
        self: Arc<Self>,
        _ctx: ActivityContext,
        refund_id: Uuid,
    ) -> Result<ProcessorRefund, ActivityError> {
        let r = self
            .store
            .refunds()
            .refund(refund_id)
            .await
            .map_err(errors::classify)?;
        if let Some(done) = r.stripe_refund_id.clone() {
            return Ok(ProcessorRefund::Refunded {
                stripe_refund_id: done,
            });
        }
        // Without a processor payment there is nothing to refund: the refund ends `failed` (its
        // credits given back) instead of asking the processor for an empty id for ever.
        let Some(pi) = r.payment_intent_id.clone().filter(|pi| !pi.is_empty()) else {
            let reason = "the purchase has no processor payment to refund".to_string();
            self.store
                .refunds()
                .refund_failed(r.id, &reason)
                .await
                .map_err(errors::classify)?;
            return Ok(ProcessorRefund::Refused { reason });
        };
        // A 5xx answer may hide a refund that was made: it is found by our id in its metadata.
        let refunded = crate::processor_call(
            &self.store,
            &format!("refund-{refund_id}"),
            async || {
                let listed = self.payments.refunds_of(&pi).await?;
                Ok(listed
                    .into_iter()
                    .find(|l| l.ours.as_deref() == Some(refund_id.to_string().as_str()))
                    .map(|l| l.id))
            },
            async |key: &str| {
                self.payments
                    .refund(key, &refund_id.to_string(), &pi, r.amount_minor)
                    .await
            },
        )
        .await?;
        match refunded {
            Ok(stripe_refund_id) => {
                self.store
                    .refunds()
                    .refund_refunded(r.id, &stripe_refund_id)
                    .await
                    .map_err(errors::classify)?;
                Ok(ProcessorRefund::Refunded { stripe_refund_id })
            }
            Err(PaymentError::Refused(reason)) => {
                self.store
                    .refunds()
                    .refund_failed(r.id, &reason)
                    .await
                    .map_err(errors::classify)?;
                Ok(ProcessorRefund::Refused { reason })
            }
            Err(e @ (PaymentError::Unavailable(_) | PaymentError::ServerError(_))) => {
                Err(errors::retryable(e))
            }
        }
    }

    #[activity(definition = workflows::refund::markers::ReverseCredits)]
    pub async fn reverse_credits(
        self: Arc<Self>,
        _ctx: ActivityContext,
        refund_id: Uuid,
    ) -> Result<String, ActivityError> {
        let balance = self
            .store
            .refunds()
            .reverse_refund(refund_id)
            .await
            .map_err(errors::classify)?;
        Ok(balance.to_string())
    }

    #[activity(definition = workflows::refund::markers::Notify)]
    pub async fn notify(
        self: Arc<Self>,
        ctx: ActivityContext,
        refund_id: Uuid,
    ) -> Result<(), ActivityError> {
        let r = self
            .store
            .refunds()
            .refund(refund_id)
            .await
            .map_err(errors::classify)?;
        // A purchase's buyer gets the notice at the receipt address; a topup's at the
        // billing contacts of the org.
        let (to, what) = match (r.purchase_id, r.topup_id) {
            (Some(purchase), _) => {
                let p = self
                    .store
                    .purchases()
                    .purchase(purchase)
                    .await
                    .map_err(errors::classify)?;
                (
                    p.receipt_email.into_iter().collect::<Vec<_>>(),
                    format!("purchase {purchase}"),
                )
            }
            (None, Some(topup)) => {
                let s = self
                    .store
                    .settings()
                    .billing_settings(r.org_id)
                    .await
                    .map_err(errors::classify)?;
                (s.recipients, format!("auto-topup {topup}"))
            }
            (None, None) => return Ok(()),
        };
        let currency: billing::Currency = r.currency.parse().map_err(|_| {
            errors::retryable(format!("refund {} has currency {}", r.id, r.currency))
        })?;
        use billing::money::display::{credits, money};
        let body = format!(
            "We refunded {} of {what}.\nCredits taken back: {} (bonus {}).\nReason: {}\n",
            money(billing::Money::new(r.amount_minor, currency)),
            credits(r.credits),
            credits(r.bonus_credits),
            r.reason
        );
        crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &format!("refund:{refund_id}"),
            &to,
            "Your creditflow refund",
            &body,
        )
        .await
        .map(|_| ())
    }
}
