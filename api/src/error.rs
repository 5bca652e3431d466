//! Errors as `application/problem+json` (RFC 9457) with a stable `code`.

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use billing::BillingError;
use serde::{Deserialize, Serialize};
use store::StoreError;

/// `Retry-After` of a `database_unavailable` answer.
pub const DATABASE_RETRY_AFTER_SECS: u32 = 2;

/// An error answer. `code` is stable and in the catalog ([`crate::codes`]); `detail` is for
/// people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// The request field the error is about, when there is one.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for 503s and 429s.
    pub retry_after_secs: Option<u32>,
    /// What went wrong inside, for the log (never shown): logged once, when the answer is made.
    pub cause: Option<String>,
    /// Members a client can act on (`refundable_minor` …), shown beside the standard ones
    /// (boxed: most errors have none, and every `Result` carries the error's size).
    pub extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

/// The body of an error answer (RFC 9457 problem details, with a stable `code`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    #[schema(value_type = crate::codes::ErrorCode)]
    pub code: String,
    /// What went wrong, for people.
    pub detail: String,
    /// The request field the problem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Members particular to the code (e.g. `refundable_minor` for
    /// `refund_exceeds_unspent`).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        debug_assert!(
            crate::codes::lookup(code).is_some(),
            "`{code}` is not in the error-code catalog"
        );
        ApiError {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after_secs: None,
            cause: None,
            extra: None,
        }
    }

    /// The same answer with a member a client can act on.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.get_or_insert_default().insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or_default(),
        );
        self
    }

    /// The same answer, with what went wrong inside for the log.
    pub fn caused_by(self, cause: impl std::fmt::Display) -> Self {
        ApiError {
            cause: Some(cause.to_string()),
            ..self
        }
    }

    /// A dependency (Temporal) did not answer in time: 503 with `Retry-After`.
    pub fn unavailable(
        code: &'static str,
        detail: impl Into<String>,
        retry_after_secs: u32,
    ) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// 429: over a per-org request limit; try again after `retry_after_secs`.
    pub fn rate_limited(detail: impl Into<String>, retry_after_secs: u32) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        }
    }

    pub fn invalid(
        field: impl Into<String>,
        code: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    /// A billing error about one request field.
    pub fn billing(field: &'static str, e: BillingError) -> Self {
        ApiError::invalid(field, e.code(), format!("{field}: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The one place errors are logged: server-side failures with their cause.
        if self.status.is_server_error() {
            let cause = self.cause.as_deref().unwrap_or("");
            if self.status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(code = self.code, cause, "request failed");
            } else {
                tracing::warn!(code = self.code, detail = %self.detail, cause, "request refused");
            }
        }
        let body = Problem {
            kind: format!("/problems/{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            code: self.code.to_string(),
            detail: self.detail,
            field: self.field,
            extra: self.extra.map(|m| *m).unwrap_or_default(),
        };
        let mut res = (self.status, Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OrgNotFound => ApiError::not_found("org_not_found", "no such organization"),
            StoreError::NotFound(what) => {
                ApiError::not_found("not_found", format!("{what} not found"))
            }
            StoreError::InsufficientBalance { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "insufficient_balance",
                e.to_string(),
            ),
            StoreError::PaymentNotRefundable { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "payment_not_refundable",
                e.to_string(),
            ),
            StoreError::RefundExceedsPayment { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "refund_exceeds_payment",
                e.to_string(),
            ),
            StoreError::RefundExceedsUnspent {
                refundable_minor,
                refundable_credits,
                ..
            } => ApiError::new(
                StatusCode::CONFLICT,
                "refund_exceeds_unspent",
                e.to_string(),
            )
            .with("refundable_minor", refundable_minor)
            .with("refundable_credits", refundable_credits),
            StoreError::ExpiryNotInFuture => {
                ApiError::invalid("expires_at", "invalid_expiry", e.to_string())
            }
            StoreError::PriceVersionNotAfterNewest => ApiError::new(
                StatusCode::CONFLICT,
                "price_version_not_after_newest",
                e.to_string(),
            ),
            StoreError::TooMany(what) => {
                ApiError::new(StatusCode::CONFLICT, "too_many", format!("too many {what}"))
            }
            StoreError::IdempotencyConflict => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string())
            }
            StoreError::Billing(b) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, b.code(), b.to_string())
            }
            e if e.is_unavailable() => ApiError::unavailable(
                "database_unavailable",
                "the database is not answering; nothing of this request was recorded, try again",
                DATABASE_RETRY_AFTER_SECS,
            )
            .caused_by(e),
            StoreError::Schema(_)
            | StoreError::Decode(_)
            | StoreError::Invariant(_)
            | StoreError::WriterUnavailable(_)
            | StoreError::Db(_) => ApiError::internal().caused_by(e),
        }
    }
}

impl From<billing::BillingError> for ApiError {
    fn from(e: billing::BillingError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
    }
}
