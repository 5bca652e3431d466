//! Monthly summaries as CSV: one org's months, or every org's month streamed a page of orgs at
//! a time.

use axum::{
    body::Body,
    http::header,
    response::{IntoResponse, Response},
};
use billing::summary::Month;
use futures::stream;
use store::Summary;
use uuid::Uuid;

use super::{ORGS_PAGE_MAX, summaries_for};
use crate::{AppState, error::ApiError};

pub(super) const CSV_HEADER: &str = "org_id,month,revision,provisional,opening_credits,purchased_credits,bonus_credits,topup_credits,refunded_credits,adjusted_credits,reversed_credits,used_credits,closing_credits,promo_credits,expired_credits\n";

pub(super) fn csv_row(s: &Summary) -> String {
    let m = &s.movements;
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        s.org_id,
        s.month,
        s.revision,
        s.revision == 0,
        m.opening,
        m.purchased,
        m.bonus,
        m.topup,
        m.refunded,
        m.adjusted,
        m.reversed,
        m.used,
        s.closing,
        m.promo,
        m.expired
    )
}

/// Streams every org's summary of `month` as CSV, from after `after`, up to `total_limit` orgs
/// if one is given (as the transaction history's CSV export does), a page of orgs at a time.
pub(super) fn csv_every_org(
    state: AppState,
    month: Month,
    after: Option<Uuid>,
    total_limit: Option<i64>,
) -> Response {
    struct Cursor {
        after: Option<Uuid>,
        remaining: Option<i64>,
        header_sent: bool,
        done: bool,
    }
    let start = Cursor {
        after,
        remaining: total_limit,
        header_sent: false,
        done: false,
    };
    let body = stream::unfold((state, start), move |(state, mut cur)| async move {
        if !cur.header_sent {
            cur.header_sent = true;
            return Some((Ok(CSV_HEADER.to_string()), (state, cur)));
        }
        if cur.done {
            return None;
        }
        let page_limit = ORGS_PAGE_MAX.min(cur.remaining.unwrap_or(ORGS_PAGE_MAX));
        let page = match state
            .store
            .summaries()
            .org_ids_page(cur.after, page_limit)
            .await
        {
            Ok((orgs, next)) => summaries_for(&state, &orgs, month)
                .await
                .map(|summaries| (summaries, next)),
            Err(e) => Err(ApiError::from(e)),
        };
        match page {
            Err(e) => {
                tracing::error!(error = ?e, "summaries CSV export failed mid-stream");
                cur.done = true;
                Some((Err(std::io::Error::other("export failed")), (state, cur)))
            }
            Ok((summaries, next)) => {
                let chunk: String = summaries.iter().map(csv_row).collect();
                let remaining = cur.remaining.map(|r| r - summaries.len() as i64);
                match next {
                    Some(n) if remaining.is_none_or(|r| r > 0) => cur.after = Some(n),
                    _ => cur.done = true,
                }
                cur.remaining = remaining;
                Some((Ok(chunk), (state, cur)))
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}
