use crate::errors;
use std::sync::Arc;

use store::Store;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;
use workflows::purchase::{
    CheckoutSession, ExpireOutcome, GrantResult, MarkFailed, MarkPaid, PaymentCheck,
};

use crate::{
    mail::Mailer,
    payments::{CheckoutRequest, Expired, Payments, SessionPayment},
};

/// When the processor should expire a checkout session created `now`: the purchase's own
/// expiry, moved into the window the processor accepts (30 minutes to 24 hours after creation,
/// with a minute's margin each side), computed at creation so a delayed or retried create is not
/// refused. The purchase's workflow still expires the session itself at the purchase's expiry.
pub fn session_expires_at(
    purchase_expires_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let earliest = (now + chrono::Duration::minutes(31)).timestamp();
    let latest = (now + chrono::Duration::hours(24) - chrono::Duration::minutes(1)).timestamp();
    purchase_expires_at.timestamp().clamp(earliest, latest)
}

/// Judges what the processor says of a purchase's checkout session: paid only when the money
/// was received, for this purchase (its reference), its amount and its currency.
pub fn judge_payment(purchase_id: Uuid, price: billing::Money, s: &SessionPayment) -> PaymentCheck {
    let not_paid = |reason: &str| PaymentCheck::NotPaid {
        reason: reason.to_string(),
    };
    if s.client_reference_id.as_deref() != Some(purchase_id.to_string().as_str()) {
        return not_paid("the checkout session belongs to another purchase");
    }
    if s.amount_total != Some(price.amount_minor)
        || s.currency.as_deref() != Some(price.currency.code())
    {
        return not_paid("the checkout session's amount or currency differs from the purchase");
    }
    if s.status != "complete" {
        return not_paid("the checkout session is not complete");
    }
    let Some(pi) = s.payment_intent_id.clone().filter(|pi| !pi.is_empty()) else {
        return not_paid("the checkout session has no payment");
    };
    match (
        s.payment_status.as_str(),
        s.payment_intent_status.as_deref(),
    ) {
        ("paid", _) | (_, Some("succeeded")) => PaymentCheck::Paid {
            payment_intent_id: pi,
        },
        ("unpaid", Some("requires_payment_method" | "canceled")) => PaymentCheck::Failed {
            reason: "the payment failed at the processor".into(),
        },
        ("unpaid", _) => PaymentCheck::Pending,
        _ => not_paid("the checkout session was not paid"),
    }
}

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

#[activities]
impl PurchaseActivitiesImpl {
    #[activity(definition = workflows::purchase::markers::CreateCheckoutSession)]
    pub async fn create_checkout_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: Uuid,
    ) -> Result<CheckoutSession, ActivityError> {
        let p = self
            .store
            .purchases()
            .purchase(id)
            .await
            .map_err(errors::classify)?;
        if let (Some(sid), Some(url)) = (&p.checkout_session_id, &p.checkout_url) {
            return Ok(CheckoutSession {
                id: sid.clone(),
                url: url.clone(),
            });
        }
        // A session a lost (5xx) answer made is never shown to anyone and expires by itself:
        // nothing to find, a fresh key makes another.
        let session = crate::processor_call(
            &self.store,
            &format!("checkout-{id}"),
            async || Ok(None),
            async |key: &str| {
                self.payments
                    .create_checkout_session(&CheckoutRequest {
                        idempotency_key: key,
                        client_reference_id: &id.to_string(),
                        product_name: &format!("{} credits", p.package.name),
                        price: p.package.price,
                        expires_at_unix: session_expires_at(p.expires_at, chrono::Utc::now()),
                        success_url: &self.urls.success_url,
                        cancel_url: &self.urls.cancel_url,
                        metadata: vec![
                            ("purchase_id".into(), id.to_string()),
                            ("org_id".into(), p.org_id.to_string()),
                        ],
                    })
                    .await
            },
        )
        .await?
        .map_err(errors::classify)?;
        self.store
            .purchases()
            .set_checkout_session(p.id, &session.id, &session.url)
            .await
            .map_err(errors::classify)?;
        Ok(CheckoutSession {
            id: session.id,
            url: session.url,
        })
    }

    #[activity(definition = workflows::purchase::markers::ExpireCheckoutSession)]
    pub async fn expire_checkout_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: Uuid,
    ) -> Result<ExpireOutcome, ActivityError> {
        let p = self
            .store
            .purchases()
            .purchase(id)
            .await
            .map_err(errors::classify)?;
        let outcome = match &p.checkout_session_id {
            Some(sid) => self
                .payments
                .expire_checkout_session(sid)
                .await
                .map_err(errors::classify)?,
            None => Expired::Expired,
        };
        Ok(match outcome {
            Expired::Expired => {
                self.store
                    .purchases()
                    .end_purchase(p.id, billing::PurchaseState::Expired)
                    .await
                    .map_err(errors::classify)?;
                ExpireOutcome::Expired
            }
            Expired::AlreadyPaid { payment_intent_id } => {
                ExpireOutcome::AlreadyPaid { payment_intent_id }
            }
            Expired::AlreadySetUp { .. } => {
                return Err(errors::refuse(
                    "WrongSessionKind",
                    format!("the checkout session of purchase {id} is a setup session"),
                ));
            }
        })
    }

    #[activity(definition = workflows::purchase::markers::CheckPayment)]
    pub async fn check_payment(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: Uuid,
    ) -> Result<PaymentCheck, ActivityError> {
        let p = self
            .store
            .purchases()
            .purchase(id)
            .await
            .map_err(errors::classify)?;
        // The purchase's own session, whatever session a hint named.
        let Some(sid) = &p.checkout_session_id else {
            return Ok(PaymentCheck::NotPaid {
                reason: "the purchase has no checkout session".into(),
            });
        };
        let session = self
            .payments
            .session_payment(sid)
            .await
            .map_err(errors::classify)?;
        let check = judge_payment(p.id, p.package.price, &session);
        match &check {
            PaymentCheck::Pending => self
                .store
                .purchases()
                .mark_purchase_awaiting_funds(
                    p.id,
                    session.payment_intent_id.as_deref().unwrap_or(""),
                )
                .await
                .map_err(errors::classify)?,
            PaymentCheck::NotPaid { reason } => {
                tracing::warn!(purchase = %p.id, session = %sid, %reason, "a payment hint that is not a payment")
            }
            _ => {}
        }
        Ok(check)
    }

    #[activity(definition = workflows::purchase::markers::SendFailureNotice)]
    pub async fn send_failure_notice(
        self: Arc<Self>,
        ctx: ActivityContext,
        m: MarkFailed,
    ) -> Result<(), ActivityError> {
        let p = self
            .store
            .purchases()
            .purchase(m.purchase_id)
            .await
            .map_err(errors::classify)?;
        let Some(to) = p.receipt_email.clone() else {
            return Ok(());
        };
        let body = format!(
            "Your payment for {} credits did not go through, so nothing was charged and no credits were added.\n\nReason: {}\nPurchase: {}\n",
            p.package.name, m.reason, p.id
        );
        crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &format!("purchase-failed:{}", p.id),
            &[to],
            &format!(
                "Your creditflow payment for {} credits failed",
                p.package.name
            ),
            &body,
        )
        .await
        .map(|_| ())
    }

    #[activity(definition = workflows::purchase::markers::MarkPaid)]
    pub async fn mark_paid(
        self: Arc<Self>,
        _ctx: ActivityContext,
        m: MarkPaid,
    ) -> Result<(), ActivityError> {
        self.store
            .purchases()
            .mark_purchase_paid(m.purchase_id, &m.payment_intent_id)
            .await
            .map_err(errors::classify)
    }

    #[activity(definition = workflows::purchase::markers::MarkFailed)]
    pub async fn mark_failed(
        self: Arc<Self>,
        _ctx: ActivityContext,
        m: MarkFailed,
    ) -> Result<(), ActivityError> {
        let id = m.purchase_id;
        // The purchases table keeps no reason; the log does, for whoever looks into it.
        tracing::warn!(purchase = %id, reason = %m.reason, "purchase failed");
        self.store
            .purchases()
            .end_purchase(id, billing::PurchaseState::Failed)
            .await
            .map_err(errors::classify)
    }

    #[activity(definition = workflows::purchase::markers::GrantCredits)]
    pub async fn grant_credits(
        self: Arc<Self>,
        _ctx: ActivityContext,
        id: Uuid,
    ) -> Result<GrantResult, ActivityError> {
        let grant = self
            .store
            .purchases()
            .grant_purchase(id)
            .await
            .map_err(errors::classify)?;
        Ok(GrantResult {
            balance_credits: grant.balance,
            newly_booked: grant.newly_booked,
        })
    }

    #[activity(definition = workflows::purchase::markers::SendReceipt)]
    pub async fn send_receipt(
        self: Arc<Self>,
        ctx: ActivityContext,
        id: Uuid,
    ) -> Result<(), ActivityError> {
        let p = self
            .store
            .purchases()
            .purchase(id)
            .await
            .map_err(errors::classify)?;
        let Some(to) = p.receipt_email.clone() else {
            return Ok(());
        };
        let subject = format!("Your creditflow receipt: {} credits", p.package.name);
        let balance = self
            .store
            .ledger()
            .balance(p.org_id)
            .await
            .map_err(errors::classify)?
            .balance;
        use billing::money::display::{credits, money};
        let org = self
            .store
            .orgs()
            .get_org(p.org_id)
            .await
            .map_err(errors::classify)?;
        let body = format!(
            "Thank you for your purchase.\n\nOrganization: {} ({})\nPackage: {}\nCredits: {}\nBonus: {}\nPrice: {}\nNew balance: {}\nPurchase: {}\n",
            org.name,
            org.id,
            p.package.name,
            credits(p.package.base_credits),
            credits(p.package.bonus_credits),
            money(p.package.price),
            credits(balance),
            id
        );
        crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &format!("receipt:{id}"),
            &[to],
            &subject,
            &body,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid_session(purchase: Uuid) -> SessionPayment {
        SessionPayment {
            status: "complete".into(),
            payment_status: "paid".into(),
            amount_total: Some(5000),
            currency: Some("usd".into()),
            client_reference_id: Some(purchase.to_string()),
            payment_intent_id: Some("pi_1".into()),
            payment_intent_status: Some("succeeded".into()),
        }
    }

    fn price() -> billing::Money {
        billing::Money::new(5000, billing::Currency::Usd)
    }

    #[test]
    fn a_session_expiry_is_within_what_the_processor_accepts() {
        let now = chrono::Utc::now();
        let at = |minutes: i64| now + chrono::Duration::minutes(minutes);
        // A purchase of 10 minutes, or one whose create was delayed past its own expiry.
        assert_eq!(session_expires_at(at(10), now), at(31).timestamp());
        assert_eq!(session_expires_at(at(-5), now), at(31).timestamp());
        assert_eq!(session_expires_at(at(120), now), at(120).timestamp());
        assert_eq!(
            session_expires_at(at(48 * 60), now),
            at(24 * 60 - 1).timestamp()
        );
    }

    #[test]
    fn only_money_received_for_this_purchase_is_paid() {
        let id = Uuid::now_v7();
        let paid = paid_session(id);
        assert_eq!(
            judge_payment(id, price(), &paid),
            PaymentCheck::Paid {
                payment_intent_id: "pi_1".into()
            }
        );
        let unpaid = |pi: &str| SessionPayment {
            payment_status: "unpaid".into(),
            payment_intent_status: Some(pi.into()),
            ..paid_session(id)
        };
        assert_eq!(
            judge_payment(id, price(), &unpaid("processing")),
            PaymentCheck::Pending
        );
        assert!(matches!(
            judge_payment(id, price(), &unpaid("requires_payment_method")),
            PaymentCheck::Failed { .. }
        ));
        for wrong in [
            SessionPayment {
                amount_total: Some(4999),
                ..paid_session(id)
            },
            SessionPayment {
                currency: Some("eur".into()),
                ..paid_session(id)
            },
            SessionPayment {
                client_reference_id: Some(Uuid::now_v7().to_string()),
                ..paid_session(id)
            },
            SessionPayment {
                status: "open".into(),
                ..paid_session(id)
            },
            SessionPayment {
                payment_intent_id: None,
                ..paid_session(id)
            },
        ] {
            assert!(
                matches!(
                    judge_payment(id, price(), &wrong),
                    PaymentCheck::NotPaid { .. }
                ),
                "{wrong:?}"
            );
        }
    }
}
