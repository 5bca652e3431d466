//! `GET /v1/summaries` and `GET /v1/orgs/{org}/summaries/{YYYY-MM}`: stored monthly summaries,
//! or a live computation marked provisional for a month not generated yet (the current one).

mod csv;

use axum::{
    Json as AxumJson,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use billing::Credits;
use billing::summary::Month;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{Scope, Summary};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Caller,
    error::ApiError,
    extract::{Path, Query},
};
use csv::{CSV_HEADER, csv_every_org, csv_row};

/// Orgs in one page of an operator's listing of every org for a month: the default and the
/// most. A CSV export streams pages of this many orgs, so its memory stays bounded too.
const ORGS_PAGE_MAX: i64 = 1000;

/// An org's month: what moved its balance, and its usage by line and by user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MonthlySummary {
    pub org_id: Uuid,
    /// `YYYY-MM`.
    #[schema(pattern = r"^[0-9]{4}-[0-9]{2}$")]
    pub month: String,
    /// The stored revision (1, 2, … as late usage revises a closed month); `null` when live.
    pub revision: Option<i32>,
    /// True for a month not closed yet (computed live).
    pub provisional: bool,
    pub opening_credits: Credits,
    pub purchased_credits: Credits,
    pub bonus_credits: Credits,
    pub topup_credits: Credits,
    pub refunded_credits: Credits,
    pub adjusted_credits: Credits,
    pub reversed_credits: Credits,
    pub used_credits: Credits,
    /// Promotional credits operators granted.
    pub promo_credits: Credits,
    /// Unspent credits that left at their grant's expiry.
    pub expired_credits: Credits,
    /// `opening + purchased + bonus + topup + adjusted + promo - refunded - reversed - expired
    /// - used`.
    pub closing_credits: Credits,
    /// Usage by type, model and operation (AI tokens) or resource (infrastructure).
    #[schema(value_type = Vec<UsageLine>)]
    pub usage: Value,
    /// Usage cost and events per user.
    #[schema(value_type = Vec<UserUsage>)]
    pub users: Value,
    pub computed_at: DateTime<Utc>,
}

/// One line of a month's usage (the longest lists end in one `other` line).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    /// `ai_tokens`, `infra` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    pub model: Option<String>,
    pub operation: Option<String>,
    pub resource: Option<String>,
    pub unit: Option<String>,
    pub events: Option<i64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cached_input_tokens: Option<i64>,
    /// Decimal text.
    pub quantity: Option<String>,
    pub cost_credits: Option<Credits>,
}

/// One user's usage in a month.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserUsage {
    pub user: Option<String>,
    pub events: Option<i64>,
    pub cost_credits: Option<Credits>,
}

impl From<&Summary> for MonthlySummary {
    fn from(s: &Summary) -> Self {
        let m = &s.movements;
        MonthlySummary {
            org_id: s.org_id,
            month: s.month.to_string(),
            revision: (s.revision > 0).then_some(s.revision),
            provisional: s.revision == 0,
            opening_credits: m.opening,
            purchased_credits: m.purchased,
            bonus_credits: m.bonus,
            topup_credits: m.topup,
            refunded_credits: m.refunded,
            adjusted_credits: m.adjusted,
            reversed_credits: m.reversed,
            used_credits: m.used,
            promo_credits: m.promo,
            expired_credits: m.expired,
            closing_credits: s.closing,
            usage: s.lines.clone(),
            users: s.users.clone(),
            computed_at: s.computed_at,
        }
    }
}

/// A page of summaries.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SummaryPage {
    pub data: Vec<MonthlySummary>,
    /// For an operator's listing of every org: pass as `cursor` for the next page of orgs.
    pub next_cursor: Option<String>,
}

/// The stored summaries of these orgs for a month, computing the missing ones live.
pub(super) async fn summaries_for(
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// One org (an operator's choice; an org key's own by default).
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

/// Monthly summaries: an org key's own (or `org`'s), for one month (`year`, `month`), every
/// month of a `year`, or this month; an operator without `org` lists every org for one month,
/// paged. `format=csv` answers CSV (`history:read`).
#[utoipa::path(get, path = "/v1/summaries", tag = "summaries",
    params(Params),
    responses(
        (status = 200, description = "Summaries", content(
            (SummaryPage = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "`invalid_month`, `invalid_limit`, `invalid_cursor`, `invalid_format`"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
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
            Ok(AxumJson(SummaryPage {
                data: all.iter().map(MonthlySummary::from).collect(),
                next_cursor: next.map(|o| o.to_string()),
            })
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

/// One org's summary of one month (`history:read`).
#[utoipa::path(get, path = "/v1/orgs/{org}/summaries/{month}", tag = "summaries",
    params(
        ("org" = Uuid, Path, description = "The organization"),
        ("month" = String, Path, description = "`YYYY-MM`"),
    ),
    responses(
        (status = 200, description = "The summary", body = MonthlySummary),
        (status = 400, description = "`invalid_month`"),
        (status = 403, description = "`wrong_org`, `missing_scope`"),
        (status = 404, description = "`org_not_found`"),
    ))]
pub async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path((org, month)): Path<(Uuid, String)>,
) -> Result<AxumJson<MonthlySummary>, ApiError> {
    caller.authorize(org, Scope::HistoryRead)?;
    let month: Month = month
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_month", "months are YYYY-MM"))?;
    state.store.orgs().get_org(org).await?;
    let s = summaries_for(&state, &[org], month).await?;
    let first = s.first().ok_or_else(|| {
        ApiError::internal().caused_by(format!("no summary computed for org {org}"))
    })?;
    Ok(AxumJson(MonthlySummary::from(first)))
}
