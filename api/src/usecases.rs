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

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use serde_json::{Value, json};

    use super::new_version;

    fn body(models: Value, infra: Value, extra: Value) -> crate::prices::PublishBody {
        let mut b = json!({ "ai_models": models, "infra": infra });
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        serde_json::from_value(b).unwrap()
    }

    fn model(input: Value) -> Value {
        json!({"model": "m", "input_per_mtok_credits": input,
               "output_per_mtok_credits": "1", "cached_input_per_mtok_credits": "1"})
    }

    fn infra(first_price: Value) -> Vec<Value> {
        let mut all: Vec<Value> = billing::pricing::Resource::ALL
            .iter()
            .map(|r| json!({"resource": r.to_string(), "price_credits": "1"}))
            .collect();
        all[0]["price_credits"] = first_price;
        all
    }

    /// Every way a price version is refused, with the code it is refused with; then what is
    /// accepted (the rules behind `POST /v1/prices` and `creditflow prices publish`).
    #[test]
    fn a_price_version_is_refused_for_each_rule_it_breaks() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let lead = Duration::seconds(300);
        let ok_infra = json!(infra(json!("1")));
        let cases: Vec<(&str, crate::prices::PublishBody)> = vec![
            (
                "effective_too_soon",
                body(
                    json!([model(json!("1"))]),
                    ok_infra.clone(),
                    json!({"effective_from": (now + Duration::seconds(299)).to_rfc3339()}),
                ),
            ),
            (
                "missing_field",
                body(
                    json!([model(json!("1"))]),
                    json!(infra(json!("1"))[..4]),
                    json!({}),
                ),
            ),
            (
                "missing_field",
                body(json!([]), ok_infra.clone(), json!({})),
            ),
            (
                "negative_price",
                body(json!([model(json!("-1"))]), ok_infra.clone(), json!({})),
            ),
            (
                "too_many_decimals",
                body(
                    json!([model(json!("0.0000001"))]),
                    ok_infra.clone(),
                    json!({}),
                ),
            ),
            (
                "too_many_decimals",
                body(
                    json!([model(json!("1"))]),
                    json!(infra(json!("0.0000000001"))),
                    json!({}),
                ),
            ),
            (
                "invalid_price",
                body(json!([model(json!("abc"))]), ok_infra.clone(), json!({})),
            ),
            (
                "invalid_price",
                body(json!([model(json!(true))]), ok_infra.clone(), json!({})),
            ),
            (
                "amount_out_of_range",
                body(
                    json!([model(json!("1000000000000"))]),
                    ok_infra.clone(),
                    json!({}),
                ),
            ),
            (
                "duplicate_model",
                body(
                    json!([model(json!("1")), model(json!("2"))]),
                    ok_infra.clone(),
                    json!({}),
                ),
            ),
            (
                "unknown_resource",
                body(
                    json!([model(json!("1"))]),
                    json!([{"resource": "gpu", "price_credits": "1"}]),
                    json!({}),
                ),
            ),
            (
                "duplicate_resource",
                body(
                    json!([model(json!("1"))]),
                    json!([infra(json!("1")), vec![infra(json!("2"))[0].clone()]].concat()),
                    json!({}),
                ),
            ),
            (
                "invalid_field",
                body(
                    json!([{"model": "m\u{7}", "input_per_mtok_credits": "1",
                "output_per_mtok_credits": "1", "cached_input_per_mtok_credits": "1"}]),
                    ok_infra.clone(),
                    json!({}),
                ),
            ),
        ];
        for (code, b) in cases {
            let e = new_version(b, now, lead).expect_err(code);
            assert_eq!(e.code, code, "{}", e.detail);
            assert_eq!(e.status.as_u16(), 422);
        }

        let accepted = new_version(
            body(
                json!([model(json!(0.5))]),
                json!(infra(json!("0.000000001"))),
                json!({}),
            ),
            now,
            lead,
        )
        .unwrap();
        assert_eq!(accepted.effective_from, now + lead);
        assert_eq!(accepted.models["m"].input_per_mtok.to_string(), "0.5");
        assert_eq!(accepted.infra.len(), billing::pricing::Resource::ALL.len());
    }
}
