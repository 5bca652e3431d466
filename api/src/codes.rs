//! The error-code catalog: every `code` the API answers, in a problem (`application/problem+json`)
//! or in a usage event's result, with what it means. The OpenAPI document lists these as the
//! values of `Problem.code` and `UsageResult.code`; an answer with a code missing here is a bug
//! (debug builds assert it when the problem is made).

/// One code and what it means to the caller.
pub struct Code {
    pub code: &'static str,
    pub meaning: &'static str,
}

macro_rules! catalog {
    ($( $code:literal => $meaning:literal, )+) => {
        /// Every code, sorted by name.
        pub const CATALOG: &[Code] = &[ $( Code { code: $code, meaning: $meaning } ),+ ];
    };
}

catalog! {
    "amount_not_allowed" => "This package has a fixed price: a purchase of it names no amount.",
    "amount_not_positive" => "The amount must be greater than zero.",
    "amount_or_estimate" => "Give exactly one of `amount_credits` and `estimate`.",
    "amount_out_of_range" => "The amount (or a cost computed from it) is outside the range credits can hold.",
    "amount_zero" => "The amount must not be zero.",
    "body_too_large" => "The request body is larger than this route accepts.",
    "budget_exhausted" => "A hard budget whose scope matches has less left than this needs; `budget` names it (id, scope, limit, spent, held, remaining, resets_at).",
    "budget_not_found" => "No such budget.",
    "database_unavailable" => "The database did not answer; nothing of the request was recorded. Retry after `Retry-After` seconds.",
    "duplicate_model" => "A model is listed twice in one price version.",
    "duplicate_resource" => "A resource is listed twice in one price version.",
    "effective_too_soon" => "A price version must start far enough ahead for every server to know it first.",
    "event_cost_too_high" => "The event's cost is above the largest one event may have.",
    "events_or_amount" => "A settle gives exactly one of `events` and `amount_credits`.",
    "field_too_long" => "A text field is longer than allowed.",
    "hold_id_conflict" => "This `hold_id` was used for a hold with a different request.",
    "hold_not_active" => "The hold is settled (by another settle), voided or expired; `state` says which.",
    "hold_not_found" => "No such hold.",
    "id_conflict" => "This event id was already recorded with a different payload.",
    "idempotency_conflict" => "This Idempotency-Key was used with a different request body.",
    "insufficient_balance" => "The balance does not cover the movement.",
    "insufficient_credits" => "The org's available credits do not cover this; `available_credits` says what they are.",
    "internal" => "An internal error; it has been logged. Retrying may help.",
    "invalid_alerts" => "`alert_at_percent` holds up to 10 percents, 1 to 1000.",
    "invalid_amount" => "The amount is not a decimal.",
    "invalid_api_key" => "The API key is unknown or revoked.",
    "invalid_applies_to" => "`applies_to` names no usage type, model or resource, an unknown usage type, or too many names.",
    "invalid_batch" => "The usage batch is not a list of 1 to 1,000 events.",
    "invalid_body" => "The body is JSON but not of the expected shape (unknown or mistyped field).",
    "invalid_budget_id" => "A budget's id is 1 to 64 of `A-Z a-z 0-9 _ - .`.",
    "invalid_cap" => "The monthly cap must be positive.",
    "invalid_characters" => "A text holds control characters.",
    "invalid_cloudevent" => "A CloudEvent lacks a required attribute or has one of the wrong type.",
    "invalid_cursor" => "The cursor is not one this API issued for this listing.",
    "invalid_customer" => "The customer id is not a processor customer id.",
    "invalid_email" => "The value is not an e-mail address.",
    "invalid_enforcement" => "`enforcement` is `hard` or `soft`.",
    "invalid_event" => "The event is not an object with the attributes it needs.",
    "invalid_expiry" => "`expires_at` is not in the future.",
    "invalid_extension" => "`by_ms` is between 1 and 86,400,000.",
    "invalid_field" => "A field has the wrong type or form.",
    "invalid_format" => "`format` is `json` or `csv`.",
    "invalid_hold_id" => "`hold_id` is 1 to 255 printable ASCII characters.",
    "invalid_id" => "The event id is not a string of allowed characters.",
    "invalid_idempotency_key" => "The Idempotency-Key is not 1 to 255 printable ASCII characters.",
    "invalid_kind" => "A transfer kind filter names no kind.",
    "invalid_labels" => "Labels must be an object of at most 20 short string values.",
    "invalid_limit" => "`limit` is outside the allowed range.",
    "invalid_month" => "No such month, or a month without a year.",
    "invalid_overage" => "`overage` is `reject`, `cap_to_available` or `allow`.",
    "invalid_package" => "The package's name, price or credits are not valid.",
    "invalid_payment_method" => "The payment method id is not a processor payment method id.",
    "invalid_period" => "`period` is `day`, `week`, `month` or `total`.",
    "invalid_price" => "A price is not a decimal.",
    "invalid_priority" => "`priority` is not between 0 and 100.",
    "invalid_quantity" => "A quantity is not a non-negative number.",
    "invalid_query" => "A query parameter is unknown, mistyped or holds control characters.",
    "invalid_range" => "`from` is after `to`.",
    "invalid_scope" => "A budget's scope is one of user, api_key, model or label, with names of 1 to 255 characters.",
    "invalid_scopes" => "A key needs at least one scope.",
    "invalid_settle_id" => "`settle_id` is 1 to 255 printable ASCII characters.",
    "invalid_signature" => "The webhook signature is missing, stale or wrong.",
    "invalid_source" => "The grant source filter names no source.",
    "invalid_sources" => "Sources are 1 to 32 valid source names.",
    "invalid_state" => "A state filter names no state of the listing (grants: `active`, `expired`, `depleted`; holds: `active`, `settled`, `voided`, `expired`).",
    "invalid_time" => "The time is not RFC 3339.",
    "invalid_timezone" => "`timezone` is not an IANA time zone.",
    "invalid_ttl" => "`ttl_ms` is between 1,000 and 86,400,000.",
    "malformed_body" => "The body could not be read.",
    "malformed_json" => "The body is not JSON.",
    "method_not_allowed" => "This route does not accept that method.",
    "missing_api_key" => "No `Authorization: Bearer <key>` header.",
    "missing_field" => "A required field is absent.",
    "missing_idempotency_key" => "This money write needs an `Idempotency-Key` header.",
    "missing_scope" => "The key lacks the scope this needs (or cannot grant a scope it lacks).",
    "negative_limit" => "The overdraft limit must be zero or more.",
    "negative_price" => "A price must not be negative.",
    "negative_quantity" => "A quantity must not be negative.",
    "negative_threshold" => "A threshold must be zero or more.",
    "no_price" => "No price version is effective at that time.",
    "no_route" => "No such route.",
    "not_found" => "No such object (or a path parameter of the wrong form).",
    "not_ready" => "A dependency (Postgres, Temporal or the usage writers) is not answering.",
    "occurred_in_future" => "The event is stamped further ahead than the clock allows.",
    "occurred_too_long_ago" => "The event is stamped before the late-usage window.",
    "operator_only" => "Only an operator key may do this.",
    "org_key_required" => "This is done with the organization's own key, not an operator key.",
    "org_not_found" => "No such organization.",
    "overdraft_limit" => "The event would take the balance below the org's overdraft limit; nothing was recorded.",
    "overflow" => "A computed amount is out of range.",
    "package_inactive" => "The package is no longer sold.",
    "payment_method_required" => "Auto-topup needs a saved payment method first.",
    "payment_not_refundable" => "The payment is not in a state that can be refunded.",
    "price_version_not_after_newest" => "A new price version must start after the newest one.",
    "quantity_out_of_range" => "The quantity is out of range.",
    "rate_limited" => "Over the org's per-minute limit for this action; retry after `Retry-After` seconds.",
    "refund_exceeds_payment" => "The refund is more than what remains of the payment.",
    "refund_exceeds_unspent" => "The refund is worth more than the payment's unspent credits; the problem says what is refundable (`refundable_minor`, `refundable_credits`).",
    "refund_not_allowed" => "The payment cannot be refunded by this amount.",
    "settle_event_rejected" => "An event of the settle was refused (`index`, `event_code` say which and why); nothing was recorded.",
    "source_not_allowed" => "The key may not report for (or grant) this source.",
    "too_many" => "More thresholds or recipients than allowed.",
    "too_many_budgets" => "An org has at most 100 budgets.",
    "too_many_decimals" => "More decimals than the amount may have; nothing is rounded.",
    "unit_mismatch" => "The quantity's unit is not the resource's.",
    "unknown_currency" => "A currency the product does not sell in.",
    "unknown_field" => "A field the event type does not have.",
    "unknown_kind" => "No such transfer kind.",
    "unknown_model" => "The model has no price.",
    "unknown_name" => "A name that is not one of the allowed values.",
    "unknown_package" => "No such (active) package.",
    "unknown_resource" => "A resource that is not metered.",
    "unknown_scope" => "No such scope.",
    "unknown_type" => "An event type that is not metered.",
    "unsupported_media_type" => "The body's Content-Type is not one this route reads.",
    "usage_overloaded" => "Too much usage is being recorded at once; retry after `Retry-After` seconds.",
    "workflow_unavailable" => "Temporal did not take the workflow; retry (with the same Idempotency-Key).",
    "wrong_org" => "The key belongs to another organization.",
}

/// The catalog entry of `code`.
pub fn lookup(code: &str) -> Option<&'static Code> {
    CATALOG.iter().find(|c| c.code == code)
}

/// The schema of a `code` field: one of the catalog's codes.
pub struct ErrorCode;

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(CATALOG.iter().map(|c| c.code)))
            .description(Some(
                CATALOG
                    .iter()
                    .map(|c| format!("- `{}`: {}", c.code, c.meaning))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ErrorCode")
    }
}

#[cfg(test)]
mod tests {
    use super::CATALOG;

    #[test]
    fn the_catalog_is_sorted_and_has_each_code_once() {
        for pair in CATALOG.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} before {}",
                pair[0].code,
                pair[1].code
            );
        }
    }

    #[test]
    fn billing_codes_are_in_the_catalog() {
        for e in [
            billing::BillingError::Zero,
            billing::BillingError::NotPositive,
            billing::BillingError::Overflow,
        ] {
            assert!(super::lookup(e.code()).is_some(), "{}", e.code());
        }
    }
}
