//! `GET /v1/summaries` and `GET /v1/orgs/{org}/summaries/{YYYY-MM}`: stored monthly summaries,
//! or a live computation marked provisional for a month not generated yet (the current one).

use axum::{
    Json as AxumJson,
    body::Body,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use billing::summary::Month;
use chrono::Utc;
use futures::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use store::{Scope, Summary};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Path, Query},
};

/// Orgs in one page of an operator's listing of every org for a month: the default and the
/// most. A CSV export streams pages of this many orgs, so its memory stays bounded too.
const ORGS_PAGE_MAX: i64 = 1000;

const CSV_HEADER: &str = "org_id,month,revision,provisional,opening_credits,purchased_credits,bonus_credits,topup_credits,refunded_credits,adjusted_credits,reversed_credits,used_credits,closing_credits\n";

fn csv_row(s: &Summary) -> String {
    let m = &s.movements;
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
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
        s.closing
    )
}

fn summary_json(s: &Summary) -> Value {
    let m = &s.movements;
    json!({
        "org_id": s.org_id,
        "month": s.month.to_string(),
        "revision": if s.revision > 0 { Some(s.revision) } else { None },
        "provisional": s.revision == 0,
        "opening_credits": m.opening,
        "purchased_credits": m.purchased,
        "bonus_credits": m.bonus,
        "topup_credits": m.topup,
        "refunded_credits": m.refunded,
        "adjusted_credits": m.adjusted,
        "reversed_credits": m.reversed,
        "used_credits": m.used,
        "closing_credits": s.closing,
        "usage": s.lines,
        "users": s.users,
        "computed_at": s.computed_at,
    })
}

/// The stored summaries of these orgs for a month, computing the missing ones live.
async fn summaries_for(
    state: &AppState,
    orgs: &[Uuid],
    month: Month,
) -> Result<Vec<Summary>, ApiError> {
    let mut stored = state
        .store
        .summaries()
        .latest_summaries(orgs, month)
        .await?;
    let missing: Vec<Uuid> = orgs
        .iter()
        .filter(|o| !stored.contains_key(o))
        .copied()
        .collect();
    let live = if missing.is_empty() {
        vec![]
    } else {
        state
            .store
            .summaries()
            .compute_summaries(&missing, month)
            .await?
    };
    let mut live = live.into_iter();
    orgs.iter()
        .map(|o| {
            stored.remove(o).or_else(|| live.next()).ok_or_else(|| {
                ApiError::from(store::StoreError::Invariant(format!(
                    "no summary computed for org {o}"
                )))
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    org: Option<Uuid>,
    year: Option<i32>,
    month: Option<u32>,
    format: Option<String>,
    /// Orgs per page of the every-org listing.
    limit: Option<i64>,
    /// `next_cursor` of the previous page of the every-org listing.
    cursor: Option<String>,
}

/// Whose summaries a listing holds.
enum Listing {
    /// These orgs (one: the caller's own, or the one asked for), every month asked for.
    Orgs(Vec<Uuid>),
    /// Every org, one month, in org id order from after `after`: paged like the transaction
    /// history, `limit` orgs a page with a `next_cursor` while more follow.
    Every { month: Month, after: Option<Uuid> },
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    let months: Vec<Month> = match (p.year, p.month) {
        (Some(y), Some(m)) => vec![
            Month::new(y, m)
                .ok_or_else(|| ApiError::bad_request("invalid_month", "no such month"))?,
        ],
        (Some(y), None) => (1..=12)
            .filter_map(|m| Month::new(y, m))
            .filter(|m| m.start() <= Utc::now())
            .collect(),
        (None, None) => vec![Month::of(Utc::now())],
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_month",
                "`month` needs `year`",
            ));
        }
    };
    if let Some(limit) = p.limit
        && !(1..=ORGS_PAGE_MAX).contains(&limit)
    {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {ORGS_PAGE_MAX}"),
        ));
    }
    let after =
        match &p.cursor {
            None => None,
            Some(c) => Some(c.parse::<Uuid>().map_err(|_| {
                ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
            })?),
        };
    let listing = match (&caller, p.org) {
        (Caller::Org(k), None) => {
            caller.require_scope(Scope::HistoryRead)?;
            Listing::Orgs(vec![k.org_id])
        }
        (_, Some(org)) => {
            caller.authorize(org, Scope::HistoryRead)?;
            state.store.orgs().get_org(org).await?;
            Listing::Orgs(vec![org])
        }
        (Caller::Operator { .. }, None) => match months.as_slice() {
            [month] => Listing::Every {
                month: *month,
                after,
            },
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_month",
                    "all orgs are listed one month at a time",
                ));
            }
        },
    };
    if after.is_some() && matches!(listing, Listing::Orgs(_)) {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "a cursor pages the listing of every org for a month",
        ));
    }
    match p.format.as_deref() {
        None | Some("json") => {
            let (orgs, next) = match listing {
                Listing::Orgs(orgs) => (orgs, None),
                Listing::Every { after, .. } => {
                    state
                        .store
                        .summaries()
                        .org_ids_page(after, p.limit.unwrap_or(ORGS_PAGE_MAX))
                        .await?
                }
            };
            let mut all = Vec::new();
            for m in months {
                all.extend(summaries_for(&state, &orgs, m).await?);
            }
            Ok(AxumJson(json!({
                "data": all.iter().map(summary_json).collect::<Vec<_>>(),
                "next_cursor": next.map(|o| o.to_string()),
            }))
            .into_response())
        }
        Some("csv") => match listing {
            Listing::Orgs(orgs) => {
                let mut csv = String::from(CSV_HEADER);
                for m in months {
                    for s in summaries_for(&state, &orgs, m).await? {
                        csv.push_str(&csv_row(&s));
                    }
                }
                Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
            }
            Listing::Every { month, after } => Ok(csv_every_org(state, month, after, p.limit)),
        },
        Some(_) => Err(ApiError::bad_request(
            "invalid_format",
            "format is `json` or `csv`",
        )),
    }
}

/// Streams every org's summary of `month` as CSV, from after `after`, up to `total_limit` orgs
/// if one is given (as the transaction history's CSV export does), a page of orgs at a time.
fn csv_every_org(
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

pub async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path((org, month)): Path<(Uuid, String)>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize(org, Scope::HistoryRead)?;
    let month: Month = month
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_month", "months are YYYY-MM"))?;
    state.store.orgs().get_org(org).await?;
    let s = summaries_for(&state, &[org], month).await?;
    Ok(AxumJson(summary_json(&s[0])))
}
