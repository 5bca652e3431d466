//! Use cases shared by the HTTP handlers and the operator CLI (`creditflow refunds create`,
//! `creditflow prices publish`): each checks its whole input and does the work, answering an
//! [`ApiError`] the CLI prints as the API would; the handlers only add HTTP around them.

use std::collections::BTreeMap;

use billing::pricing::{ModelPrice, Resource};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use store::NewPriceVersion;

use crate::{error::ApiError, prices::PublishBody, refunds::RefundBody};

/// Records an operator's refund request, checked before any money moves (it may not take the
/// balance below zero nor exceed what is left of the payment), and starts `refund-{id}`. The
/// same `idempotency_key` again returns the same refund and starts nothing new. Shared by the
/// API and the operator CLI.
pub async fn start_refund(
    store: &store::Store,
    temporal: &temporalio_client::Client,
    task_queue: &str,
    payment: store::RefundOf,
    body: RefundBody,
    actor: &str,
    key: &str,
) -> Result<store::Refund, ApiError> {
    let amount = body.amount_minor.ok_or_else(|| {
        ApiError::invalid(
            "amount_minor",
            "missing_field",
            "`amount_minor` is required",
        )
    })?;
    if amount <= 0 {
        return Err(ApiError::invalid(
            "amount_minor",
            "amount_not_positive",
            "`amount_minor` must be greater than zero",
        ));
    }
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    if reason.is_empty() || reason.chars().count() > 1000 {
        return Err(ApiError::invalid(
            "reason",
            "missing_field",
            "`reason` is required (at most 1,000 characters)",
        ));
    }
    let refund = store
        .refunds()
        .request_refund(payment, amount, &reason, actor, key)
        .await
        .map_err(|e| match e {
            e @ (store::StoreError::PaymentNotRefundable { .. }
            | store::StoreError::RefundExceedsPayment { .. }) => {
                ApiError::invalid("amount_minor", "refund_not_allowed", e.to_string())
            }
            other => other.into(),
        })?;
    // The refund is accepted and its credits reserved; its workflow is started here, or by
    // the dispatcher from the outbox row written with it when Temporal cannot be reached in
    // time. Either way the answer is the accepted refund.
    if let Err(e) = crate::starts::start_refund(
        temporal,
        task_queue,
        refund.id,
        refund.org_id,
        crate::starts::REQUEST_LIMIT,
    )
    .await
    {
        tracing::warn!(error = %e, refund = %refund.id, "refund workflow not started yet; the dispatcher will");
    }
    Ok(refund)
}

/// Checks a whole new price book version (the body of `POST /v1/prices`, or the operator CLI's
/// file), starting at least `lead` after `now`: every infra resource priced, at least one model,
/// each price a non-negative decimal within its scale.
pub fn new_version(
    body: PublishBody,
    now: DateTime<Utc>,
    lead: chrono::Duration,
) -> Result<NewPriceVersion, ApiError> {
    let earliest = now + lead;
    let effective_from = body.effective_from.unwrap_or(earliest);
    if effective_from < earliest {
        return Err(ApiError::invalid(
            "effective_from",
            "effective_too_soon",
            format!(
                "effective_from must be at least {} s from now, so every server knows the version before it applies",
                lead.num_seconds()
            ),
        ));
    }
    let mut models = BTreeMap::new();
    for m in &body.ai_models {
        billing::usage::check_name("model", &m.model, true)
            .map_err(|r| ApiError::invalid("ai_models", r.code, r.message))?;
        let p = ModelPrice {
            input_per_mtok: price(&m.input_per_mtok_credits, "input_per_mtok_credits", 6)?,
            output_per_mtok: price(&m.output_per_mtok_credits, "output_per_mtok_credits", 6)?,
            cached_input_per_mtok: price(
                &m.cached_input_per_mtok_credits,
                "cached_input_per_mtok_credits",
                6,
            )?,
        };
        if models.insert(m.model.clone(), p).is_some() {
            return Err(ApiError::invalid(
                "ai_models",
                "duplicate_model",
                format!("model `{}` is listed twice", m.model),
            ));
        }
    }
    if models.is_empty() {
        return Err(ApiError::invalid(
            "ai_models",
            "missing_field",
            "price at least one model",
        ));
    }
    let mut infra = BTreeMap::new();
    for i in &body.infra {
        let r: Resource = i.resource.parse().map_err(|_| {
            ApiError::invalid(
                "infra",
                "unknown_resource",
                format!("resource `{}` is not one we meter", i.resource),
            )
        })?;
        if infra
            .insert(r, price(&i.price_credits, "price_credits", 9)?)
            .is_some()
        {
            return Err(ApiError::invalid(
                "infra",
                "duplicate_resource",
                format!("resource `{r}` is listed twice"),
            ));
        }
    }
    if let Some(missing) = Resource::ALL.iter().find(|r| !infra.contains_key(r)) {
        return Err(ApiError::invalid(
            "infra",
            "missing_field",
            format!("resource `{missing}` has no price"),
        ));
    }
    Ok(NewPriceVersion {
        effective_from,
        note: body.note.chars().take(1000).collect(),
        models,
        infra,
    })
}

/// A price: a non-negative decimal with at most `scale` decimals, below 10^12.
fn price(v: &Value, field: &'static str, scale: u32) -> Result<Decimal, ApiError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => crate::extract::decimal_text(n),
        _ => {
            return Err(ApiError::invalid(
                field,
                "invalid_price",
                format!("{field} must be a decimal"),
            ));
        }
    };
    let d = Decimal::from_str_exact(&text).map_err(|_| {
        ApiError::invalid(field, "invalid_price", format!("{field} must be a decimal"))
    })?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(ApiError::invalid(
            field,
            "negative_price",
            format!("{field} must not be negative"),
        ));
    }
    if d.normalize().scale() > scale {
        return Err(ApiError::invalid(
            field,
            "too_many_decimals",
            format!("{field} has more than {scale} decimals"),
        ));
    }
    if d >= Decimal::from(1_000_000_000_000i64) {
        return Err(ApiError::invalid(
            field,
            "amount_out_of_range",
            format!("{field} is too large"),
        ));
    }
    Ok(d.abs())
}
