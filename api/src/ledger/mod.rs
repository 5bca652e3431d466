//! Balances, transaction history (JSON pages or streamed CSV) and operator adjustments.

mod csv;

use axum::{
    Json as AxumJson,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use billing::{Credits, Refs, TransferKind, openapi::CreditsInput};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{Scope, Totals, TransferQuery};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path, Query},
};
use csv::csv_response;

/// The most rows one JSON page may hold.
pub const PAGE_LIMIT_MAX: i64 = 1000;
const PAGE_LIMIT_DEFAULT: i64 = 100;
/// Rows fetched per database round trip while streaming CSV.
const CSV_CHUNK_ROWS: i64 = 1000;

/// An org's balance and what moved it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    pub org_id: Uuid,
    /// `available + held`: every credit the org has.
    pub balance_credits: Credits,
    /// What may be spent or held now.
    pub available_credits: Credits,
    /// What active holds set aside (a hold at or past its expiry is not counted, booked or not).
    pub held_credits: Credits,
    /// Whether usage took the balance below zero.
    pub negative: bool,
    pub totals: Totals,
    /// How `totals` add up to the balance.
    pub identity: String,
    pub transfer_count: i64,
    /// Credits that expire in the next 30 days, by day (UTC), soonest first.
    pub expiring: Vec<store::Expiring>,
}

/// One credit movement, from the org's side.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    pub id: Uuid,
    /// Position in the org's history (1, 2, …).
    pub seq: i64,
    pub kind: TransferKind,
    /// Signed: positive when credits came in.
    pub amount_credits: Credits,
    pub balance_after_credits: Credits,
    /// The system account on the other side.
    pub counterparty: String,
    pub actor: String,
    pub reason: String,
    /// What it books: the purchase, topup, refund, dispute or usage event.
    pub refs: Refs,
    /// The grants it moved, each signed from the grant's side (a credit makes one; a debit
    /// takes from them in the burn-down order); `grant_id: null` is the org's overdraft. They
    /// add up to `amount_credits`. Empty for transfers booked before grants.
    pub grants: Vec<billing::GrantMove>,
    pub created_at: DateTime<Utc>,
}

impl From<&store::Transfer> for Transfer {
    fn from(t: &store::Transfer) -> Self {
        Transfer {
            id: t.id,
            seq: t.seq,
            kind: t.kind,
            amount_credits: t.org_amount,
            balance_after_credits: t.balance_after,
            counterparty: t.counterparty.clone(),
            actor: t.actor.clone(),
            reason: t.reason.clone(),
            refs: t.refs.clone(),
            grants: t.grants.clone(),
            created_at: t.created_at,
        }
    }
}

/// A page of transfers, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransferPage {
    pub data: Vec<Transfer>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// The balance, with the totals by kind that add up to it (`balance:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/balance", tag = "ledger",
    params(("org" = Uuid, Path, description = "The organization")),
    responses(
        (status = 200, description = "The balance", body = Balance),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Balance>, ApiError> {
    let _timer = crate::metrics::BALANCE_READ_SECONDS.start_timer();
    caller.authorize(org_id, Scope::BalanceRead)?;
    let b = state.store.ledger().balance(org_id).await?;
    Ok(AxumJson(Balance {
        org_id: b.org_id,
        balance_credits: b.balance,
        available_credits: b.available,
        held_credits: b.held,
        negative: b.balance.is_negative(),
        totals: b.totals()?,
        identity: Totals::IDENTITY.to_string(),
        transfer_count: b.transfer_count,
        expiring: b.expiring,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Rows per page, 1 to 1000 (default 100); with `format=csv`, the most rows exported.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// One kind or several, comma-separated (`usage,purchase`).
    kind: Option<String>,
    /// Transfers at or after this time.
    from: Option<DateTime<Utc>>,
    /// Transfers at or before this time.
    to: Option<DateTime<Utc>>,
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// A listing's `limit`: 1 to [`PAGE_LIMIT_MAX`], `default` when absent.
pub fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {PAGE_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

/// A listing's `cursor`, when given: one this API issued (`T` is what it was made of).
pub fn page_cursor<T: std::str::FromStr>(
    cursor: Option<&str>,
    valid: impl Fn(&T) -> bool,
) -> Result<Option<T>, ApiError> {
    cursor
        .map(|c| {
            c.parse::<T>().ok().filter(|v| valid(v)).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
            })
        })
        .transpose()
}

fn history_query(
    org_id: Uuid,
    p: &HistoryParams,
    default_limit: i64,
) -> Result<TransferQuery, ApiError> {
    let limit = page_limit(p.limit, default_limit)?;
    let before_seq = page_cursor::<i64>(p.cursor.as_deref(), |n| *n > 0)?;
    let kinds = match &p.kind {
        None => None,
        Some(k) => Some(
            k.split(',')
                .map(|s| s.trim().parse::<TransferKind>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::bad_request("invalid_kind", e.to_string()))?,
        ),
    };
    if let (Some(from), Some(to)) = (p.from, p.to)
        && from > to
    {
        return Err(ApiError::bad_request(
            "invalid_range",
            "`from` is after `to`",
        ));
    }
    Ok(TransferQuery {
        org_id,
        kinds,
        from: p.from,
        to: p.to,
        before_seq,
        limit,
    })
}

/// The org's transfers, newest first: JSON pages with a cursor, or with `?format=csv` every
/// matching row streamed as CSV (up to `limit` if one is given) (`history:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/transactions", tag = "ledger",
    params(("org" = Uuid, Path, description = "The organization"), HistoryParams),
    responses(
        (status = 200, description = "A page of transfers, or all of them as CSV", content(
            (TransferPage = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "`invalid_limit`, `invalid_cursor`, `invalid_kind`, `invalid_range`, `invalid_format`"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn transactions(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    caller.authorize(org_id, Scope::HistoryRead)?;
    state.store.orgs().get_org(org_id).await?;
    match params.format.as_deref() {
        None | Some("json") => {
            let q = history_query(org_id, &params, PAGE_LIMIT_DEFAULT)?;
            let page = state.store.ledger().transfers(&q).await?;
            Ok(AxumJson(TransferPage {
                data: page.transfers.iter().map(Transfer::from).collect(),
                next_cursor: page.next_before_seq.map(|s| s.to_string()),
            })
            .into_response())
        }
        Some("csv") => {
            let q = history_query(org_id, &params, CSV_CHUNK_ROWS)?;
            Ok(csv_response(state, q, params.limit))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_format",
            "format is `json` or `csv`",
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    /// Signed, not zero: positive adds credits.
    #[schema(value_type = CreditsInput, required)]
    amount_credits: Option<Value>,
    /// Why, 1 to 1000 characters.
    #[schema(required)]
    reason: Option<String>,
}

/// Reads a credits amount from a JSON string (`"12.5"`) or number (`12.5`), never rounding:
/// more than six decimals, out-of-range or non-numeric values are refused.
pub fn credits_field(value: Option<&Value>, field: &'static str) -> Result<Credits, ApiError> {
    let text = match value {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                field,
                "missing_field",
                format!("`{field}` is required"),
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => crate::extract::decimal_text(n),
        Some(_) => {
            return Err(ApiError::invalid(
                field,
                "invalid_amount",
                format!("`{field}` must be a decimal string such as \"12.5\""),
            ));
        }
    };
    text.parse::<Credits>()
        .map_err(|e| ApiError::billing(field, e))
}

/// The `Idempotency-Key` header: required on money writes, 1–255 printable ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "send an `Idempotency-Key` header so a retried request moves credits once",
            )
        })?
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..=0x7e).contains(&b))
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "`Idempotency-Key` must be 1 to 255 printable ASCII characters",
            )
        })?;
    Ok(key.to_string())
}

/// A signed manual correction with a reason (operator). The same `Idempotency-Key` books it once.
#[utoipa::path(post, path = "/v1/orgs/{org}/adjustments", tag = "ledger",
    params(
        ("org" = Uuid, Path, description = "The organization"),
        ("Idempotency-Key" = String, Header, description = "1 to 255 printable ASCII characters"),
    ),
    request_body = AdjustmentBody,
    responses(
        (status = 201, description = "The adjustment's transfer (the first one, on a retry)", body = Transfer),
        (status = 400, description = "`missing_idempotency_key`, `invalid_idempotency_key`"),
        (status = 403, description = "`operator_only`"),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`idempotency_conflict`: the key was used with another body"),
        (status = 422, description = "`missing_field`, `amount_zero`, `invalid_amount`, `too_many_decimals`, `amount_out_of_range`, `field_too_long`, `insufficient_balance`"),
    ))]
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<AdjustmentBody>,
) -> Result<(StatusCode, AxumJson<Transfer>), ApiError> {
    caller.require_operator()?;
    let key = idempotency_key(&headers)?;
    let amount = credits_field(body.amount_credits.as_ref(), "amount_credits")?;
    if amount.is_zero() {
        return Err(ApiError::invalid(
            "amount_credits",
            "amount_zero",
            "`amount_credits` must not be zero",
        ));
    }
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "missing_field",
            "`reason` is required",
        ));
    }
    if reason.chars().count() > 1000 {
        return Err(ApiError::invalid(
            "reason",
            "field_too_long",
            "`reason` is longer than 1000 characters",
        ));
    }
    let transfer = state
        .store
        .ledger()
        .post_adjustment(org_id, amount, &reason, &caller.actor(), &key)
        .await?;
    Ok((StatusCode::CREATED, AxumJson(Transfer::from(&transfer))))
}
