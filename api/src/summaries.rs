//! `GET /v1/summaries` and `GET /v1/orgs/{org}/summaries/{YYYY-MM}`: stored monthly summaries,
//! or a live computation marked provisional for a month not generated yet (the current one).

use axum::{
    Json as AxumJson,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use billing::summary::Month;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use store::Summary;
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Path, Query},
};

/// Orgs in one operator listing of a month, at most.
const ORGS_MAX: i64 = 1000;

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
    let mut stored = state.store.latest_summaries(orgs, month).await?;
    let missing: Vec<Uuid> = orgs
        .iter()
        .filter(|o| !stored.contains_key(o))
        .copied()
        .collect();
    let live = if missing.is_empty() {
        vec![]
    } else {
        state.store.compute_summaries(&missing, month).await?
    };
    let mut live = live.into_iter();
    Ok(orgs
        .iter()
        .map(|o| {
            stored
                .remove(o)
                .or_else(|| live.next())
                .expect("one summary per org")
        })
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    org: Option<Uuid>,
    year: Option<i32>,
    month: Option<u32>,
    format: Option<String>,
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
    let orgs = match (&caller, p.org) {
        (Caller::Org(k), None) => vec![k.org_id],
        (_, Some(org)) => {
            caller.authorize_org(org)?;
            state.store.get_org(org).await?;
            vec![org]
        }
        (Caller::Operator { .. }, None) => {
            if months.len() != 1 {
                return Err(ApiError::bad_request(
                    "invalid_month",
                    "all orgs are listed one month at a time",
                ));
            }
            state.store.org_ids(ORGS_MAX).await?
        }
    };
    let mut all = Vec::new();
    for m in months {
        all.extend(summaries_for(&state, &orgs, m).await?);
    }
    match p.format.as_deref() {
        None | Some("json") => Ok(AxumJson(
            json!({ "data": all.iter().map(summary_json).collect::<Vec<_>>() }),
        )
        .into_response()),
        Some("csv") => {
            let mut csv = String::from(
                "org_id,month,revision,provisional,opening_credits,purchased_credits,bonus_credits,topup_credits,refunded_credits,adjusted_credits,reversed_credits,used_credits,closing_credits\n",
            );
            for s in &all {
                let m = &s.movements;
                csv.push_str(&format!(
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
                ));
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_format",
            "format is `json` or `csv`",
        )),
    }
}

pub async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path((org, month)): Path<(Uuid, String)>,
) -> Result<AxumJson<Value>, ApiError> {
    caller.authorize_org(org)?;
    let month: Month = month
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_month", "months are YYYY-MM"))?;
    state.store.get_org(org).await?;
    let s = summaries_for(&state, &[org], month).await?;
    Ok(AxumJson(summary_json(&s[0])))
}
