//! Payments through Stripe (async-stripe) at a configurable base URL. Every call that creates
//! something sends an idempotency key derived from our own ids, so a retried activity never
//! creates twice. Money leaves `billing::Money` (minor units) only here.

use billing::{Currency, Money};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::{
    CheckoutSessionMode, CheckoutSessionStatus,
    checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems,
        CreateCheckoutSessionLineItemsPriceData, ExpireCheckoutSession, ProductData,
        RetrieveCheckoutSession,
    },
};
use thiserror::Error;

use crate::metrics::stripe_call;

#[derive(Debug, Error)]
pub enum PaymentError {
    /// The request was refused and retrying it will not help (bad parameters, a hard decline).
    #[error("payment refused: {0}")]
    Refused(String),
    /// The processor or the network failed; retrying may succeed.
    #[error("payment processor unavailable: {0}")]
    Unavailable(String),
    /// The processor answered 5xx: the call may or may not have run, and the processor
    /// replays this answer to the same Idempotency-Key for 24 hours (see
    /// `crate::processor_call`).
    #[error("payment processor error: {0}")]
    ServerError(String),
}

impl From<StripeError> for PaymentError {
    fn from(e: StripeError) -> Self {
        match &e {
            StripeError::Stripe(api, status)
                if (400..500).contains(status) && *status != 409 && *status != 429 =>
            {
                PaymentError::Refused(format!(
                    "{} ({status})",
                    api.message.clone().unwrap_or_default()
                ))
            }
            StripeError::Stripe(_, status) if *status >= 500 => {
                PaymentError::ServerError(e.to_string())
            }
            _ => PaymentError::Unavailable(e.to_string()),
        }
    }
}

/// A created Checkout Session.
pub struct Session {
    pub id: String,
    pub url: String,
}

/// What expiring a session found.
pub enum Expired {
    Expired,
    /// A payment-mode session completed meanwhile, with this PaymentIntent.
    AlreadyPaid {
        payment_intent_id: String,
    },
    /// A setup-mode session completed meanwhile, with this SetupIntent.
    AlreadySetUp {
        setup_intent_id: String,
    },
}

#[derive(Clone)]
pub struct Payments {
    client: Client,
}

fn currency(c: Currency) -> stripe_types::Currency {
    match c {
        Currency::Usd => stripe_types::Currency::USD,
        Currency::Eur => stripe_types::Currency::EUR,
        Currency::Gbp => stripe_types::Currency::GBP,
        Currency::Jpy => stripe_types::Currency::JPY,
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, PaymentError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| PaymentError::Refused(format!("idempotency key: {e}")))
}

/// A Checkout Session to create.
pub struct CheckoutRequest<'a> {
    pub idempotency_key: &'a str,
    pub client_reference_id: &'a str,
    pub product_name: &'a str,
    pub price: Money,
    pub expires_at_unix: i64,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub metadata: Vec<(String, String)>,
}

impl Payments {
    /// `base_url` is Stripe's API (or the emulator's); `secret_key` an `sk_…` key.
    pub fn new(base_url: &str, secret_key: &str) -> Result<Payments, PaymentError> {
        let url = if base_url.ends_with('/') {
            base_url.to_string()
        } else {
            format!("{base_url}/")
        };
        let client = ClientBuilder::new(secret_key)
            .url(url)
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|e| PaymentError::Refused(format!("payments client: {e}")))?;
        Ok(Payments { client })
    }

    pub async fn create_checkout_session(
        &self,
        r: &CheckoutRequest<'_>,
    ) -> Result<Session, PaymentError> {
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(currency(r.price.currency));
        price.unit_amount = Some(r.price.amount_minor);
        price.product_data = Some(ProductData::new(r.product_name));
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price_data = Some(price);
        item.quantity = Some(1);
        let session = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
            .line_items(vec![item])
            .client_reference_id(r.client_reference_id)
            .metadata(
                r.metadata
                    .iter()
                    .cloned()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
            .success_url(r.success_url)
            .cancel_url(r.cancel_url)
            .expires_at(r.expires_at_unix)
            .customize()
            .request_strategy(idempotent(r.idempotency_key)?)
            .send(&self.client)
            .await;
        let session = stripe_call("checkout_session.create", session)?;
        Ok(Session {
            id: session.id.to_string(),
            url: session.url.unwrap_or_default(),
        })
    }

    /// Expires an open session. A session that was completed meanwhile is reported as paid (or
    /// set up, in setup mode).
    pub async fn expire_checkout_session(&self, id: &str) -> Result<Expired, PaymentError> {
        let expired = stripe_call(
            "checkout_session.expire",
            ExpireCheckoutSession::new(id).send(&self.client).await,
        );
        if expired.is_ok() {
            return Ok(Expired::Expired);
        }
        let session = stripe_call(
            "checkout_session.retrieve",
            RetrieveCheckoutSession::new(id).send(&self.client).await,
        )?;
        match (session.status, session.payment_intent, session.setup_intent) {
            (Some(CheckoutSessionStatus::Complete), Some(pi), _) => Ok(Expired::AlreadyPaid {
                payment_intent_id: pi.id().to_string(),
            }),
            (Some(CheckoutSessionStatus::Complete), None, Some(si)) => Ok(Expired::AlreadySetUp {
                setup_intent_id: si.id().to_string(),
            }),
            (Some(CheckoutSessionStatus::Expired), _, _) => Ok(Expired::Expired),
            _ => Err(expired.err().map(PaymentError::from).unwrap_or_else(|| {
                PaymentError::Unavailable("session neither expired nor paid".into())
            })),
        }
    }
}

/// A Checkout Session as the processor has it, with its PaymentIntent's status: what the
/// purchase workflow decides on (a webhook only says when to ask).
#[derive(Debug, Clone)]
pub struct SessionPayment {
    /// `open`, `complete` or `expired`.
    pub status: String,
    /// `paid`, `unpaid` or `no_payment_required`.
    pub payment_status: String,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    pub client_reference_id: Option<String>,
    pub payment_intent_id: Option<String>,
    /// `succeeded`, `processing`, `requires_payment_method` (failed) …
    pub payment_intent_status: Option<String>,
}

impl Payments {
    /// Retrieves a Checkout Session and, when it has one, its PaymentIntent.
    pub async fn session_payment(&self, id: &str) -> Result<SessionPayment, PaymentError> {
        let session = stripe_call(
            "checkout_session.retrieve",
            RetrieveCheckoutSession::new(id).send(&self.client).await,
        )?;
        let payment_intent_id = session
            .payment_intent
            .as_ref()
            .map(|pi| pi.id().to_string());
        let payment_intent_status = match &payment_intent_id {
            Some(pi) => {
                let intent = stripe_call(
                    "payment_intent.retrieve",
                    stripe_core::payment_intent::RetrievePaymentIntent::new(pi.as_str())
                        .send(&self.client)
                        .await,
                )?;
                Some(intent.status.as_str().to_string())
            }
            None => None,
        };
        Ok(SessionPayment {
            status: session
                .status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            payment_status: session.payment_status.as_str().to_string(),
            amount_total: session.amount_total,
            currency: session.currency.map(|c| c.to_string()),
            client_reference_id: session.client_reference_id,
            payment_intent_id,
            payment_intent_status,
        })
    }
}

/// What an off-session charge did.
pub enum Charge {
    Succeeded {
        payment_intent_id: String,
    },
    /// Accepted, settling later (bank debits): not money received yet.
    Processing {
        payment_intent_id: String,
    },
    /// The customer must act (3-D Secure and the like).
    RequiresAction {
        payment_intent_id: String,
    },
    Declined {
        code: Option<String>,
        decline_code: Option<String>,
        class: billing::topup::DeclineClass,
        payment_intent_id: Option<String>,
    },
}

impl Payments {
    /// Charges a saved payment method off-session (a PaymentIntent created and confirmed at
    /// once). The idempotency key names one attempt: a retried activity replays the same
    /// attempt instead of charging again.
    pub async fn charge_off_session(
        &self,
        idempotency_key: &str,
        amount: Money,
        customer: Option<&str>,
        payment_method: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<Charge, PaymentError> {
        use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
        let mut request = CreatePaymentIntent::new(amount.amount_minor, currency(amount.currency))
            .payment_method(payment_method)
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(
                metadata
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        if let Some(c) = customer {
            request = request.customer(c);
        }
        let charged = request
            .customize()
            .request_strategy(idempotent(idempotency_key)?)
            .send(&self.client)
            .await;
        match stripe_call("payment_intent.create", charged) {
            Ok(pi) => Ok(charge_of(pi.id.as_str(), pi.status.as_str())),
            Err(StripeError::Stripe(api, 402)) => {
                let code = api.code.as_ref().map(|c| c.as_str().to_string());
                let decline_code = api.decline_code.clone();
                Ok(Charge::Declined {
                    class: billing::topup::decline_class(code.as_deref(), decline_code.as_deref()),
                    code,
                    decline_code,
                    payment_intent_id: api.payment_intent.as_ref().map(|p| p.id.to_string()),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A PaymentIntent's status as a charge outcome: only `succeeded` is money received.
fn charge_of(id: &str, status: &str) -> Charge {
    let payment_intent_id = id.to_string();
    match status {
        "succeeded" => Charge::Succeeded { payment_intent_id },
        "processing" => Charge::Processing { payment_intent_id },
        "requires_action" | "requires_confirmation" => Charge::RequiresAction { payment_intent_id },
        // `requires_payment_method` after a confirm: the attempt failed; `canceled`: it ended.
        other => Charge::Declined {
            code: Some(format!("payment_intent_{other}")),
            decline_code: None,
            class: billing::topup::DeclineClass::Hard,
            payment_intent_id: Some(payment_intent_id),
        },
    }
}

impl Payments {
    /// What became of a PaymentIntent (a processing topup charge): its status as a charge,
    /// with the last payment error's codes when it failed.
    pub async fn payment_intent_charge(&self, id: &str) -> Result<Charge, PaymentError> {
        let pi = stripe_call(
            "payment_intent.retrieve",
            stripe_core::payment_intent::RetrievePaymentIntent::new(id)
                .send(&self.client)
                .await,
        )?;
        let mut charge = charge_of(pi.id.as_str(), pi.status.as_str());
        if let (
            Charge::Declined {
                code, decline_code, ..
            },
            Some(err),
        ) = (&mut charge, pi.last_payment_error.as_ref())
        {
            if let Some(c) = &err.code {
                *code = Some(c.as_str().to_string());
            }
            *decline_code = err.decline_code.clone();
        }
        Ok(charge)
    }
}

impl Payments {
    /// Creates the org's customer (once: the idempotency key is the org's id).
    pub async fn create_customer(&self, org_id: &str, name: &str) -> Result<String, PaymentError> {
        use stripe_core::customer::CreateCustomer;
        let c = CreateCustomer::new()
            .name(name)
            .metadata([("org_id".to_string(), org_id.to_string())])
            .customize()
            .request_strategy(idempotent(&format!("customer-{org_id}"))?)
            .send(&self.client)
            .await;
        let c = stripe_call("customer.create", c)?;
        Ok(c.id.to_string())
    }

    /// A setup-mode Checkout Session: the customer saves a card for off-session charges.
    pub async fn create_setup_session(
        &self,
        idempotency_key: &str,
        customer: &str,
        client_reference_id: &str,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<Session, PaymentError> {
        let session = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Setup)
            .currency(stripe_types::Currency::USD)
            .customer(customer)
            .client_reference_id(client_reference_id)
            .success_url(success_url)
            .cancel_url(cancel_url)
            .customize()
            .request_strategy(idempotent(idempotency_key)?)
            .send(&self.client)
            .await;
        let session = stripe_call("checkout_session.create", session)?;
        Ok(Session {
            id: session.id.to_string(),
            url: session.url.unwrap_or_default(),
        })
    }

    /// The payment method (and customer) a completed SetupIntent saved.
    pub async fn setup_intent_payment_method(
        &self,
        id: &str,
    ) -> Result<(String, Option<String>), PaymentError> {
        use stripe_core::setup_intent::RetrieveSetupIntent;
        let si = stripe_call(
            "setup_intent.retrieve",
            RetrieveSetupIntent::new(id).send(&self.client).await,
        )?;
        let pm = si
            .payment_method
            .as_ref()
            .map(|p| p.id().to_string())
            .ok_or_else(|| {
                PaymentError::Refused(format!("setup intent {id} has no payment method"))
            })?;
        Ok((pm, si.customer.as_ref().map(|c| c.id().to_string())))
    }
}

impl Payments {
    /// Refunds part or all of a payment; the idempotency key makes a retried call a replay.
    /// The refund carries our refund's id (`creditflow_refund_id`), so `charge.refunded` tells
    /// ours from refunds made at the processor.
    pub async fn refund(
        &self,
        idempotency_key: &str,
        refund_id: &str,
        payment_intent_id: &str,
        amount_minor: i64,
    ) -> Result<String, PaymentError> {
        use stripe_core::refund::CreateRefund;
        let r = CreateRefund::new()
            .payment_intent(payment_intent_id)
            .amount(amount_minor)
            .metadata(std::collections::HashMap::from([(
                OUR_REFUND.to_string(),
                refund_id.to_string(),
            )]))
            .customize()
            .request_strategy(idempotent(idempotency_key)?)
            .send(&self.client)
            .await;
        let r = stripe_call("refund.create", r)?;
        Ok(r.id.to_string())
    }
}

/// The metadata key our refunds carry at the processor: our refund's id.
pub const OUR_REFUND: &str = "creditflow_refund_id";

impl Payments {
    /// The PaymentIntent a topup attempt created, if any (found by its metadata among the
    /// customer's), as a charge: what a call whose answer was a 5xx may have made.
    pub async fn find_topup_charge(
        &self,
        customer: Option<&str>,
        topup_id: &str,
        attempt: u32,
    ) -> Result<Option<Charge>, PaymentError> {
        use stripe_core::payment_intent::ListPaymentIntent;
        let attempt = attempt.to_string();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListPaymentIntent::new().limit(100);
            if let Some(c) = customer {
                request = request.customer(c);
            }
            if let Some(a) = &after {
                request = request.starting_after(a.clone());
            }
            let page = stripe_call("payment_intent.list", request.send(&self.client).await)?;
            after = page.data.last().map(|pi| pi.id.to_string());
            let found = page.data.iter().find(|pi| {
                pi.metadata.get("topup_id").map(String::as_str) == Some(topup_id)
                    && pi.metadata.get("attempt") == Some(&attempt)
            });
            if let Some(pi) = found {
                return self.payment_intent_charge(pi.id.as_str()).await.map(Some);
            }
            if !page.has_more || after.is_none() {
                return Ok(None);
            }
        }
    }
}

/// A refund as the processor lists it.
#[derive(Debug, Clone)]
pub struct ListedRefund {
    pub id: String,
    pub amount_minor: i64,
    /// `succeeded`, `pending`, `failed`, `canceled`, `requires_action`.
    pub status: String,
    /// Our refund's id, when we made it.
    pub ours: Option<String>,
}

impl Payments {
    /// Every refund of a processor payment, all pages.
    pub async fn refunds_of(
        &self,
        payment_intent_id: &str,
    ) -> Result<Vec<ListedRefund>, PaymentError> {
        use stripe_core::refund::ListRefund;
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListRefund::new()
                .payment_intent(payment_intent_id)
                .limit(100);
            if let Some(a) = &after {
                request = request.starting_after(a.clone());
            }
            let page = stripe_call("refund.list", request.send(&self.client).await)?;
            after = page.data.last().map(|r| r.id.to_string());
            all.extend(page.data.into_iter().map(|r| ListedRefund {
                id: r.id.to_string(),
                amount_minor: r.amount,
                status: r.status.unwrap_or_default(),
                ours: r.metadata.and_then(|m| m.get(OUR_REFUND).cloned()),
            }));
            if !page.has_more || after.is_none() {
                return Ok(all);
            }
        }
    }
}
