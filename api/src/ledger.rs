//! Balances, transaction history (JSON pages or streamed CSV) and operator adjustments.

use axum::{
    Json as AxumJson,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use billing::{Credits, TransferKind};
use chrono::{DateTime, Utc};
use futures::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use store::{Scope, Transfer, TransferQuery};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Json, Path, Query},
};

/// The most rows one JSON page may hold.
pub const PAGE_LIMIT_MAX: i64 = 1000;
const PAGE_LIMIT_DEFAULT: i64 = 100;
/// Rows fetched per database round trip while streaming CSV.
const CSV_CHUNK_ROWS: i64 = 1000;

pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
) -> Result<AxumJson<Value>, ApiError> {
    let _timer = crate::metrics::BALANCE_READ_SECONDS.start_timer();
    caller.authorize(org_id, Scope::BalanceRead)?;
    let b = state.store.ledger().balance(org_id).await?;
    Ok(AxumJson(json!({
        "org_id": b.org_id,
        "balance_credits": b.balance,
        "negative": b.balance.is_negative(),
        "totals": b.totals()?,
        "identity": store::Totals::IDENTITY,
        "transfer_count": b.transfer_count,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    limit: Option<i64>,
    cursor: Option<String>,
    /// One kind or several, comma-separated.
    kind: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    format: Option<String>,
}

fn history_query(
    org_id: Uuid,
    p: &HistoryParams,
    default_limit: i64,
) -> Result<TransferQuery, ApiError> {
    let limit = p.limit.unwrap_or(default_limit);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {PAGE_LIMIT_MAX}"),
        ));
    }
    let before_seq = match &p.cursor {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
        })?),
    };
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

pub fn transfer_json(t: &Transfer) -> Value {
    json!({
        "id": t.id,
        "seq": t.seq,
        "kind": t.kind,
        "amount_credits": t.org_amount,
        "balance_after_credits": t.balance_after,
        "counterparty": t.counterparty,
        "actor": t.actor,
        "reason": t.reason,
        "refs": t.refs,
        "created_at": t.created_at,
    })
}

/// `GET /v1/orgs/{org}/transactions`: newest first. JSON pages with a cursor, or with
/// `?format=csv` every matching row streamed as CSV (up to `limit` if one is given).
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
            Ok(AxumJson(json!({
                "data": page.transfers.iter().map(transfer_json).collect::<Vec<_>>(),
                "next_cursor": page.next_before_seq.map(|s| s.to_string()),
            }))
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

const CSV_HEADER: &str =
    "id,seq,created_at,kind,amount_credits,balance_after_credits,counterparty,actor,reason,refs\n";

/// One CSV cell. A text that a spreadsheet would take for a formula (it starts with `=`, `+`,
/// `-`, `@`, a tab or a CR: reasons come from operators and package names) is prefixed with `'`
/// so it stays text (audit L1); then quoted when it holds a separator, quote or line break.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod csv_tests {
    use super::csv_field;

    #[test]
    fn cells_a_spreadsheet_would_run_are_text() {
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+100 welcome"), "'+100 welcome");
        assert_eq!(csv_field("-5"), "'-5");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("\rx"), "\"'\rx\"");
        assert_eq!(csv_field("plain, text"), "\"plain, text\"");
        assert_eq!(csv_field("user:ana"), "user:ana");
    }
}

fn csv_row(t: &Transfer) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{}\n",
        t.id,
        t.seq,
        t.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        t.kind,
        t.org_amount,
        t.balance_after,
        csv_field(&t.counterparty),
        csv_field(&t.actor),
        csv_field(&t.reason),
        csv_field(&serde_json::to_string(&t.refs).unwrap_or_default()),
    )
}

/// Streams pages of `CSV_CHUNK_ROWS` rows so memory stays bounded whatever the history's size.
fn csv_response(state: AppState, first: TransferQuery, total_limit: Option<i64>) -> Response {
    struct Cursor {
        query: Option<TransferQuery>,
        remaining: Option<i64>,
        header_sent: bool,
    }
    let start = Cursor {
        query: Some(TransferQuery {
            limit: CSV_CHUNK_ROWS.min(total_limit.unwrap_or(CSV_CHUNK_ROWS)),
            ..first
        }),
        remaining: total_limit,
        header_sent: false,
    };
    let body = stream::unfold((state, start), |(state, mut cur)| async move {
        if !cur.header_sent {
            cur.header_sent = true;
            return Some((Ok(CSV_HEADER.to_string()), (state, cur)));
        }
        let mut q = cur.query.take()?;
        match state.store.ledger().transfers(&q).await {
            Err(e) => {
                tracing::error!(error = %e, "CSV export failed mid-stream");
                Some((Err(std::io::Error::other("export failed")), (state, cur)))
            }
            Ok(page) => {
                let chunk: String = page.transfers.iter().map(csv_row).collect();
                let remaining = cur.remaining.map(|r| r - page.transfers.len() as i64);
                if let Some(next) = page.next_before_seq
                    && remaining.is_none_or(|r| r > 0)
                {
                    q.before_seq = Some(next);
                    q.limit = CSV_CHUNK_ROWS.min(remaining.unwrap_or(CSV_CHUNK_ROWS));
                    cur.query = Some(q);
                }
                cur.remaining = remaining;
                Some((Ok(chunk), (state, cur)))
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"transactions.csv\"",
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    amount_credits: Option<Value>,
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

/// `POST /v1/orgs/{org}/adjustments` (operator): a signed manual correction with a reason.
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<AdjustmentBody>,
) -> Result<(StatusCode, AxumJson<Value>), ApiError> {
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
    Ok((StatusCode::CREATED, AxumJson(transfer_json(&transfer))))
}
