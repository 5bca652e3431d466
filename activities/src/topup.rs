use crate::errors;
use std::sync::Arc;

use billing::{
    Currency, Money,
    topup::{AttemptOutcome, DeclineClass},
};
use store::{Store, TopupStart};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;
use workflows::topup::{
    AlertInput, BeginTopup, ChargeInput, ChargeOutcome, CheckCharge, FailTopup, GrantTopup,
    TopupPlan,
};

use crate::{
    mail::Mailer,
    payments::{Charge, PaymentError, Payments},
};

pub struct TopupActivitiesImpl {
    pub store: Store,
    pub payments: Payments,
    pub mailer: Mailer,
}

#[activities]
impl TopupActivitiesImpl {
    #[activity(definition = workflows::topup::markers::Begin)]
    pub async fn begin(
        self: Arc<Self>,
        _ctx: ActivityContext,
        b: BeginTopup,
    ) -> Result<TopupPlan, ActivityError> {
        Ok(
            match self
                .store
                .topups()
                .begin_topup(b.org_id, b.crossing_seq, b.daily_max)
                .await
                .map_err(errors::classify)?
            {
                TopupStart::Charge {
                    topup_id,
                    package,
                    customer,
                    payment_method,
                } => TopupPlan::Charge {
                    topup_id,
                    amount_minor: package.price.amount_minor,
                    currency: package.price.currency.code().to_string(),
                    customer,
                    payment_method,
                },
                TopupStart::Skipped { reason, .. } => TopupPlan::Skipped { reason },
                TopupStart::Capped { topup_id, .. } => TopupPlan::Capped { topup_id },
            },
        )
    }

    #[activity(definition = workflows::topup::markers::Charge)]
    pub async fn charge(
        self: Arc<Self>,
        _ctx: ActivityContext,
        c: ChargeInput,
    ) -> Result<ChargeOutcome, ActivityError> {
        let topup_id = c.topup_id;
        let currency: Currency = c
            .currency
            .parse()
            .map_err(|_| errors::bad_input(&c.currency))?;
        // A 5xx answer may hide a charge that was made: it is found by its metadata.
        let charged = crate::processor_call(
            &self.store,
            &format!("topup-{}-{}", c.topup_id, c.attempt),
            async || {
                self.payments
                    .find_topup_charge(c.customer.as_deref(), &c.topup_id.to_string(), c.attempt)
                    .await
            },
            async |key: &str| {
                self.payments
                    .charge_off_session(
                        key,
                        Money::new(c.amount_minor, currency),
                        c.customer.as_deref(),
                        &c.payment_method,
                        vec![
                            ("topup_id".into(), c.topup_id.to_string()),
                            ("attempt".into(), c.attempt.to_string()),
                        ],
                    )
                    .await
            },
        )
        .await?;
        let attempt = c.attempt as i32;
        Ok(match charged {
            Ok(Charge::Succeeded { payment_intent_id }) => {
                self.store
                    .topups()
                    .record_topup_attempt(
                        topup_id,
                        attempt,
                        AttemptOutcome::Succeeded.as_str(),
                        None,
                        None,
                        Some(&payment_intent_id),
                    )
                    .await
                    .map_err(errors::classify)?;
                ChargeOutcome::Succeeded { payment_intent_id }
            }
            Ok(Charge::Processing { payment_intent_id }) => {
                self.store
                    .topups()
                    .record_topup_attempt(
                        topup_id,
                        attempt,
                        AttemptOutcome::Processing.as_str(),
                        None,
                        None,
                        Some(&payment_intent_id),
                    )
                    .await
                    .map_err(errors::classify)?;
                ChargeOutcome::Processing { payment_intent_id }
            }
            Ok(Charge::RequiresAction { payment_intent_id }) => {
                self.store
                    .topups()
                    .record_topup_attempt(
                        topup_id,
                        attempt,
                        AttemptOutcome::RequiresAction.as_str(),
                        Some("requires_action"),
                        None,
                        Some(&payment_intent_id),
                    )
                    .await
                    .map_err(errors::classify)?;
                ChargeOutcome::RequiresAction { payment_intent_id }
            }
            Ok(Charge::Declined {
                code,
                decline_code,
                class,
                payment_intent_id,
            }) => {
                self.store
                    .topups()
                    .record_topup_attempt(
                        topup_id,
                        attempt,
                        AttemptOutcome::declined(class).as_str(),
                        code.as_deref(),
                        decline_code.as_deref(),
                        payment_intent_id.as_deref(),
                    )
                    .await
                    .map_err(errors::classify)?;
                let code = decline_code.or(code).unwrap_or_else(|| "declined".into());
                match class {
                    DeclineClass::Soft => ChargeOutcome::SoftDecline { code },
                    DeclineClass::Hard => ChargeOutcome::HardDecline { code },
                }
            }
            // A refused request (bad parameters) will not succeed later: treat it as hard.
            Err(PaymentError::Refused(m)) => {
                self.store
                    .topups()
                    .record_topup_attempt(
                        topup_id,
                        attempt,
                        AttemptOutcome::HardDecline.as_str(),
                        Some("invalid_request"),
                        None,
                        None,
                    )
                    .await
                    .map_err(errors::classify)?;
                ChargeOutcome::HardDecline { code: m }
            }
            // No answer from the processor: the charge may have gone through. Temporal retries
            // this same attempt, with the same idempotency key, until the processor answers,
            // so an unanswered charge is never taken for a failed one (nor made twice). A 5xx
            // answer is retried too, by `processor_call`'s rules (find, then a fresh key).
            Err(e @ (PaymentError::Unavailable(_) | PaymentError::ServerError(_))) => {
                return Err(errors::retryable(e));
            }
        })
    }

    #[activity(definition = workflows::topup::markers::CheckCharge)]
    pub async fn check_charge(
        self: Arc<Self>,
        _ctx: ActivityContext,
        c: CheckCharge,
    ) -> Result<ChargeOutcome, ActivityError> {
        let topup_id = c.topup_id;
        let charge = self
            .payments
            .payment_intent_charge(&c.payment_intent_id)
            .await
            .map_err(errors::classify)?;
        let (outcome, code, decline_code, result) = match charge {
            Charge::Processing { payment_intent_id } => {
                return Ok(ChargeOutcome::Processing { payment_intent_id });
            }
            Charge::Succeeded { payment_intent_id } => (
                AttemptOutcome::Succeeded,
                None,
                None,
                ChargeOutcome::Succeeded { payment_intent_id },
            ),
            Charge::RequiresAction { payment_intent_id } => (
                AttemptOutcome::RequiresAction,
                Some("requires_action".to_string()),
                None,
                ChargeOutcome::RequiresAction { payment_intent_id },
            ),
            Charge::Declined {
                code, decline_code, ..
            } => {
                // A debit that failed after processing is not retried: the account refused.
                let shown = decline_code
                    .clone()
                    .or(code.clone())
                    .unwrap_or_else(|| "payment_failed".into());
                (
                    AttemptOutcome::HardDecline,
                    code,
                    decline_code,
                    ChargeOutcome::HardDecline { code: shown },
                )
            }
        };
        self.store
            .topups()
            .settle_topup_attempt(
                topup_id,
                c.attempt as i32,
                outcome.as_str(),
                code.as_deref(),
                decline_code.as_deref(),
            )
            .await
            .map_err(errors::classify)?;
        Ok(result)
    }

    #[activity(definition = workflows::topup::markers::Grant)]
    pub async fn grant(
        self: Arc<Self>,
        _ctx: ActivityContext,
        g: GrantTopup,
    ) -> Result<(), ActivityError> {
        self.store
            .topups()
            .grant_topup(g.topup_id, &g.payment_intent_id)
            .await
            .map(|_| ())
            .map_err(errors::classify)
    }

    #[activity(definition = workflows::topup::markers::Fail)]
    pub async fn fail(
        self: Arc<Self>,
        ctx: ActivityContext,
        f: FailTopup,
    ) -> Result<(), ActivityError> {
        let recipients = self
            .store
            .topups()
            .fail_topup(f.topup_id, &f.reason)
            .await
            .map_err(errors::classify)?;
        let body = format!(
            "Auto-topup could not charge your saved payment method: {}.\n\n\
             Auto-topup is paused until the payment method is updated. Your balance is not \
             being topped up; buy credits or update the payment method to resume.\n\nTopup: {}\n",
            f.reason, f.topup_id
        );
        crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &format!("topup-failed:{}", f.topup_id),
            &recipients,
            "Auto-topup failed",
            &body,
        )
        .await
        .map(|_| ())
    }

    #[activity(definition = workflows::topup::markers::NotifyCapped)]
    pub async fn notify_capped(
        self: Arc<Self>,
        ctx: ActivityContext,
        topup_id: Uuid,
    ) -> Result<(), ActivityError> {
        let row = org_of(&self.store, topup_id).await?;
        let settings = self
            .store
            .settings()
            .billing_settings(row)
            .await
            .map_err(errors::classify)?;
        let body = format!(
            "Your balance fell below the auto-topup threshold, but charging again would exceed \
             the monthly auto-topup cap ({} minor units), so nothing was charged.\n\nTopup: {topup_id}\n",
            settings.topup_monthly_cap_minor.unwrap_or_default()
        );
        crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &format!("topup-capped:{topup_id}"),
            &settings.recipients,
            "Auto-topup cap reached",
            &body,
        )
        .await
        .map(|_| ())
    }

    #[activity(definition = workflows::topup::markers::SendAlert)]
    pub async fn send_alert(
        self: Arc<Self>,
        ctx: ActivityContext,
        a: AlertInput,
    ) -> Result<(), ActivityError> {
        let org = a.org_id;
        let settings = self
            .store
            .settings()
            .billing_settings(org)
            .await
            .map_err(errors::classify)?;
        let (threshold, balance) = (a.threshold, a.balance);
        let claim = self
            .store
            .alerts()
            .claim_alert(&store::NewAlert {
                org_id: org,
                threshold_id: a.threshold_id,
                crossing_seq: a.crossing_seq,
                threshold,
                balance,
                recipients: &settings.recipients,
                repeat_after_secs: a.repeat_after_secs,
            })
            .await
            .map_err(errors::classify)?;
        if let store::AlertClaim::Done(state) = claim {
            tracing::info!(org = %org, state, "low-balance alert not mailed");
            return Ok(());
        }
        let burn = self
            .store
            .ledger()
            .usage_last_24h(org)
            .await
            .map_err(errors::classify)?;
        let org_row = self
            .store
            .orgs()
            .get_org(org)
            .await
            .map_err(errors::classify)?;
        let until_zero = if burn.is_positive() && balance.is_positive() {
            let hours = balance.as_decimal() / burn.as_decimal() * rust_decimal::Decimal::from(24);
            format!("about {} hours at that rate", hours.round_dp(1))
        } else if balance.is_positive() {
            "no usage in the last 24 hours".to_string()
        } else {
            "the balance is already used up".to_string()
        };
        use billing::money::display::credits as shown;
        let body = format!(
            "The creditflow balance of {name} ({org}) is {balance}, below your alert threshold of {threshold}.\n\n\
             Used in the last 24 hours: {burn}; time until zero: {until_zero}.\n\n\
             To buy more, POST /v1/purchases with one of GET /v1/packages, or turn on auto-topup.\n",
            name = org_row.name,
            balance = shown(balance),
            threshold = shown(threshold),
            burn = shown(burn),
        );
        let subject = format!("Low credit balance: {}", org_row.name);
        let key = format!("alert:{}:{}:{}", a.org_id, a.threshold_id, a.crossing_seq);
        // Whatever became of the e-mail (an address the mailer refuses, SMTP gone for every
        // try), the alert is recorded with it and the workflow ends: never retried forever.
        let mailed = crate::mail_once(
            &self.store,
            &self.mailer,
            ctx.info().attempt,
            &key,
            &settings.recipients,
            &subject,
            &body,
        )
        .await?;
        if let crate::Mailed::Failed(why) | crate::Mailed::Unknown(why) = &mailed {
            tracing::warn!(org = %org, reason = %why, "low-balance alert e-mail not sent");
        }
        self.store
            .alerts()
            .record_alert(
                org,
                a.threshold_id,
                a.crossing_seq,
                mailed.state(),
                mailed.detail(),
            )
            .await
            .map_err(errors::classify)
    }
}

/// The org a topup belongs to.
async fn org_of(store: &Store, topup_id: Uuid) -> Result<Uuid, ActivityError> {
    store
        .topups()
        .topup_org(topup_id)
        .await
        .map_err(errors::classify)
}
