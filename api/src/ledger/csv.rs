//! The transaction history as CSV: streamed a page at a time, cells a spreadsheet cannot run.

use axum::{
    body::Body,
    http::header,
    response::{IntoResponse, Response},
};
use futures::stream;
use store::TransferQuery;

use super::CSV_CHUNK_ROWS;
use crate::AppState;

const CSV_HEADER: &str = "id,seq,created_at,kind,amount_credits,balance_after_credits,counterparty,actor,reason,refs,grants\n";

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

pub(super) fn csv_row(t: &store::Transfer) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{}\n",
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
        csv_field(&serde_json::to_string(&t.grants).unwrap_or_default()),
    )
}

/// Streams pages of `CSV_CHUNK_ROWS` rows so memory stays bounded whatever the history's size.
pub(super) fn csv_response(
    state: AppState,
    first: TransferQuery,
    total_limit: Option<i64>,
) -> Response {
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

#[cfg(test)]
mod tests {
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
