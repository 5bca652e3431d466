//! The pages a buyer returns to from the processor's hosted checkout: what was bought, the
//! credits, where the purchase stands, and a way back. The processor puts the session id in the
//! return URL (`?session_id={CHECKOUT_SESSION_ID}`), so the page needs no key; it shows no more
//! than the buyer saw on the checkout page.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;

use crate::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Return {
    /// The Checkout Session (`{CHECKOUT_SESSION_ID}` in the return URL).
    session_id: Option<String>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, title: &str, body: &str, refresh: bool) -> Response {
    let meta = if refresh {
        r#"<meta http-equiv="refresh" content="3">"#
    } else {
        ""
    };
    (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}\
             <title>{t}</title></head><body><main><h1>{t}</h1>{body}</main></body></html>",
            t = escape(title)
        )),
    )
        .into_response()
}

/// `GET /checkout/success` and `/checkout/cancel`.
async fn returned(state: AppState, q: Return, cancelled: bool) -> Response {
    // A session id is printable ASCII (`cs_…`); anything else names no checkout of ours (and a
    // NUL would not even reach the database).
    let named = q.session_id.filter(|s| !s.is_empty());
    if named
        .as_deref()
        .is_some_and(|s| s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return page(
            StatusCode::NOT_FOUND,
            "Checkout not found",
            "<p>No purchase has this checkout.</p>",
            false,
        );
    }
    let Some(session) = named else {
        if cancelled {
            return page(
                StatusCode::OK,
                "Checkout cancelled",
                "<p>Nothing was charged. Start a new purchase whenever you like.</p>",
                false,
            );
        }
        return page(
            StatusCode::BAD_REQUEST,
            "No checkout named",
            "<p>This page is reached from a checkout.</p>",
            false,
        );
    };
    let p = match state.store.purchases().purchase_by_session(&session).await {
        Ok(p) => p,
        Err(store::StoreError::NotFound(_)) => {
            return page(
                StatusCode::NOT_FOUND,
                "Checkout not found",
                "<p>No purchase has this checkout. A card saved for auto-topup is confirmed by e-mail to your billing contacts.</p>",
                false,
            );
        }
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    use billing::money::display::{credits, money};
    let what = format!(
        "<p><strong>{}</strong>: {} and {} bonus, for {}.</p>",
        escape(&p.package.name),
        credits(p.package.base_credits),
        credits(p.package.bonus_credits),
        money(p.package.price)
    );
    use billing::PurchaseState as S;
    let (title, status_line, refresh) = match (p.state, cancelled) {
        (S::Credited, _) => (
            "Thank you: your credits are added",
            "The credits are in your balance; a receipt is on its way.",
            false,
        ),
        (S::Paid, _) => (
            "Payment received",
            "Your payment is received; the credits are being added.",
            true,
        ),
        (S::AwaitingFunds, _) => (
            "Payment pending",
            "Your bank payment is on its way. The credits are added when it arrives (bank debits take a few days); you will get a receipt.",
            false,
        ),
        (S::Expired, _) => (
            "Checkout expired",
            "Nothing was charged. Start a new purchase to buy credits.",
            false,
        ),
        (S::Failed, _) => (
            "Payment failed",
            "Nothing was charged and no credits were added.",
            false,
        ),
        (_, true) => ("Checkout cancelled", "Nothing was charged.", false),
        _ => (
            "Confirming your payment",
            "We are confirming your payment with the processor; this page updates by itself.",
            true,
        ),
    };
    let back = match (&p.checkout_url, p.state) {
        (Some(url), S::AwaitingPayment) => format!(
            "<p><a href=\"{}\">Return to the checkout</a></p>",
            escape(url)
        ),
        _ => String::new(),
    };
    let body = format!(
        "{what}<p>{}</p><p>State: <code>{}</code> · Purchase <code>{}</code></p>{back}",
        escape(status_line),
        p.state,
        p.id
    );
    page(StatusCode::OK, title, &body, refresh)
}

/// Where Checkout returns the buyer after paying: what became of the purchase.
#[utoipa::path(get, path = "/checkout/success", tag = "purchases",
    params(Return),
    responses(
        (status = 200, description = "The purchase's state, for the buyer", content_type = "text/html", body = String),
        (status = 400, description = "No checkout named", content_type = "text/html", body = String),
        (status = 404, description = "No purchase has this checkout", content_type = "text/html", body = String),
    ))]
pub async fn success(State(state): State<AppState>, Query(q): Query<Return>) -> Response {
    returned(state, q, false).await
}

/// Where Checkout returns a buyer who cancelled.
#[utoipa::path(get, path = "/checkout/cancel", tag = "purchases",
    params(Return),
    responses(
        (status = 200, description = "The purchase's state, for the buyer", content_type = "text/html", body = String),
        (status = 400, description = "No checkout named", content_type = "text/html", body = String),
        (status = 404, description = "No purchase has this checkout", content_type = "text/html", body = String),
    ))]
pub async fn cancel(State(state): State<AppState>, Query(q): Query<Return>) -> Response {
    returned(state, q, true).await
}
