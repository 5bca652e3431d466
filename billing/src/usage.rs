//! Usage events: what a platform service reports, validated into exact, typed values.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rust_decimal::Decimal;

use crate::pricing::Resource;

/// Bounds on what one event may carry.
pub mod limits {
    /// Client event ids: 1 to this many printable ASCII characters.
    pub const ID_MAX_CHARS: usize = 255;
    /// Tokens of one class in one event.
    pub const TOKENS_MAX: u64 = 1_000_000_000_000;
    /// Decimal places of an infrastructure quantity.
    pub const QUANTITY_SCALE: u32 = 6;
    /// The largest infrastructure quantity in one event.
    pub const QUANTITY_MAX: u64 = 1_000_000_000_000;
    pub const LABELS_MAX: usize = 32;
    pub const LABEL_KEY_MAX_CHARS: usize = 64;
    pub const LABEL_VALUE_MAX_CHARS: usize = 256;
    /// User ids, models and operations.
    pub const NAME_MAX_CHARS: usize = 255;
    /// Events in one batch.
    pub const BATCH_MAX: usize = 1000;
    /// Sources (CloudEvents' `source`, a URI-reference): 1 to this many printable ASCII
    /// characters, not blank.
    pub const SOURCE_MAX_CHARS: usize = 255;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiTokens {
    pub model: String,
    pub operation: String,
    /// Input tokens not served from cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfraUsage {
    pub resource: Resource,
    /// In the resource's unit ([`Resource::unit`]).
    pub quantity: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    AiTokens(AiTokens),
    Infra(InfraUsage),
}

impl Usage {
    pub fn type_name(&self) -> &'static str {
        match self {
            Usage::AiTokens(_) => "ai_tokens",
            Usage::Infra(_) => "infra",
        }
    }
}

/// A validated usage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Who produced it (CloudEvents' `source`); the id is unique per org and source.
    pub source: String,
    /// The client's id, unique per organization and source.
    pub id: String,
    pub occurred_at: DateTime<Utc>,
    pub user: Option<String>,
    /// The platform's own API key the usage was made through (not ours), for budgets.
    pub api_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub usage: Usage,
}

impl UsageEvent {
    /// A canonical text of everything the event says, for detecting "same id, other payload".
    pub fn canonical_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.id,
            self.occurred_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            self.user.as_deref().unwrap_or("\u{0}")
        );
        for (k, v) in &self.labels {
            s.push_str(&format!("{}={}\u{1}{}\u{1}", k.len(), k, v));
        }
        s.push('\n');
        match &self.usage {
            Usage::AiTokens(a) => s.push_str(&format!(
                "ai\n{}\n{}\n{}\n{}\n{}",
                a.model, a.operation, a.input_tokens, a.output_tokens, a.cached_input_tokens
            )),
            Usage::Infra(i) => s.push_str(&format!(
                "infra\n{}\n{}",
                i.resource,
                i.quantity.normalize()
            )),
        }
        // Only when given, so the text of every event from before it existed is unchanged.
        if let Some(k) = &self.api_key {
            s.push_str(&format!("\napi_key\n{k}"));
        }
        s
    }

    /// What budgets' scopes see of it.
    pub fn dimensions(&self) -> crate::holds::Dimensions {
        crate::holds::Dimensions {
            user: self.user.clone(),
            api_key: self.api_key.clone(),
            model: match &self.usage {
                Usage::AiTokens(a) => Some(a.model.clone()),
                Usage::Infra(_) => None,
            },
            labels: self.labels.clone(),
        }
    }
}

/// Why one event was refused. `code` is stable and part of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    /// The field refused, when it is one field (`user`, `labels.team`, `data.model`).
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The same refusal, naming the field it is about.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// Whether a text has a control character (C0, DEL or C1: NUL, tab, newline, escape …), which
/// no name, label or id of an event may hold. Postgres refuses NUL in text and jsonb, and the
/// others make logs, CSV exports and e-mails ambiguous.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

pub fn check_event_id(id: &str) -> Result<(), Rejection> {
    let ok = !id.is_empty()
        && id.len() <= limits::ID_MAX_CHARS
        && id.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            "invalid_id",
            format!(
                "id must be 1 to {} printable ASCII characters",
                limits::ID_MAX_CHARS
            ),
        ))
    }
}

/// A source an event may come from (and a key may be limited to).
pub fn check_source(source: &str) -> Result<(), Rejection> {
    let ok = !source.trim().is_empty()
        && source.len() <= limits::SOURCE_MAX_CHARS
        && source.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            "invalid_field",
            format!(
                "source must be 1 to {} printable ASCII characters",
                limits::SOURCE_MAX_CHARS
            ),
        )
        .at("source"))
    }
}

/// Refuses an event stamped more than `max_ahead` after the server's clock.
///
/// `max_ahead` is not a constant: a price version only has to be published its publish lead
/// ahead, so an event accepted further in the future than that could be rated with a version
/// that a later publication supersedes at its `occurred_at`. The API derives `max_ahead` from
/// the publish lead (less the price refresh interval), so that cannot happen.
///
/// It also refuses one stamped more than `max_late` before it (Stripe's bound for meter events
/// is 35 days): usage that late is for a month long summarised, and a client that holds events
/// that long has lost track of them.
pub fn check_occurred_at(
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    max_ahead: Duration,
    max_late: Duration,
) -> Result<(), Rejection> {
    if at < now - max_late {
        return Err(Rejection::new(
            "occurred_too_long_ago",
            format!(
                "occurred_at is more than {} days before the server's clock",
                max_late.num_days()
            ),
        )
        .at("occurred_at"));
    }
    if at > now + max_ahead {
        return Err(Rejection::new(
            "occurred_in_future",
            format!(
                "occurred_at is more than {} ms ahead of the server's clock",
                max_ahead.num_milliseconds()
            ),
        ));
    }
    Ok(())
}

pub fn check_tokens(field: &str, n: i128) -> Result<u64, Rejection> {
    if n < 0 {
        return Err(Rejection::new(
            "negative_quantity",
            format!("{field} must not be negative"),
        ));
    }
    if n > limits::TOKENS_MAX as i128 {
        return Err(Rejection::new(
            "quantity_out_of_range",
            format!("{field} is larger than {}", limits::TOKENS_MAX),
        ));
    }
    Ok(n as u64)
}

pub fn check_quantity(q: Decimal) -> Result<Decimal, Rejection> {
    if q.is_sign_negative() && !q.is_zero() {
        return Err(Rejection::new(
            "negative_quantity",
            "quantity must not be negative",
        ));
    }
    if q.normalize().scale() > limits::QUANTITY_SCALE {
        return Err(Rejection::new(
            "too_many_decimals",
            format!(
                "quantity has more than {} decimal places",
                limits::QUANTITY_SCALE
            ),
        ));
    }
    if q > Decimal::from(limits::QUANTITY_MAX) {
        return Err(Rejection::new(
            "quantity_out_of_range",
            format!("quantity is larger than {}", limits::QUANTITY_MAX),
        ));
    }
    Ok(q.abs())
}

/// A short name (model, operation, user): bounded, no control characters.
pub fn check_name(field: &str, s: &str, required: bool) -> Result<(), Rejection> {
    if required && s.is_empty() {
        return Err(Rejection::new("missing_field", format!("{field} is required")).at(field));
    }
    if s.chars().count() > limits::NAME_MAX_CHARS || has_control(s) {
        return Err(Rejection::new(
            "invalid_field",
            format!(
                "{field} must be at most {} characters, without control characters",
                limits::NAME_MAX_CHARS
            ),
        )
        .at(field));
    }
    Ok(())
}

pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Rejection> {
    if let Some((k, _)) = labels
        .iter()
        .find(|(k, v)| has_control(k) || has_control(v))
    {
        let shown: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
        return Err(Rejection::new(
            "invalid_field",
            format!("label `{shown}` has a control character in its key or value"),
        )
        .at(format!("labels.{shown}")));
    }
    let ok = labels.len() <= limits::LABELS_MAX
        && labels.iter().all(|(k, v)| {
            !k.is_empty()
                && k.chars().count() <= limits::LABEL_KEY_MAX_CHARS
                && v.chars().count() <= limits::LABEL_VALUE_MAX_CHARS
        });
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            "invalid_labels",
            format!(
                "labels: at most {} string values, keys 1–{} and values up to {} characters",
                limits::LABELS_MAX,
                limits::LABEL_KEY_MAX_CHARS,
                limits::LABEL_VALUE_MAX_CHARS
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_printable_ascii_up_to_255() {
        assert!(check_event_id("evt-1 ok").is_ok());
        assert!(check_event_id(&"a".repeat(255)).is_ok());
        assert_eq!(check_event_id("").unwrap_err().code, "invalid_id");
        assert_eq!(
            check_event_id(&"a".repeat(256)).unwrap_err().code,
            "invalid_id"
        );
        assert_eq!(check_event_id("tab\there").unwrap_err().code, "invalid_id");
        assert_eq!(check_event_id("é").unwrap_err().code, "invalid_id");
    }

    #[test]
    fn control_characters_are_refused_in_names_and_labels_naming_the_field() {
        for bad in [
            "a\u{0}b",
            "tab\there",
            "nl\n",
            "esc\u{1b}",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            let e = check_name("user", bad, false).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                ("invalid_field", Some("user"))
            );
            let labels = BTreeMap::from([("team".to_string(), bad.to_string())]);
            let e = check_labels(&labels).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                ("invalid_field", Some("labels.team"))
            );
            let labels = BTreeMap::from([(bad.to_string(), "v".to_string())]);
            assert_eq!(check_labels(&labels).unwrap_err().code, "invalid_field");
        }
        assert!(check_name("user", "ana ü 名", false).is_ok());
    }

    #[test]
    fn quantities_are_checked() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        assert_eq!(
            check_quantity(d("-1")).unwrap_err().code,
            "negative_quantity"
        );
        assert_eq!(
            check_quantity(d("0.0000001")).unwrap_err().code,
            "too_many_decimals"
        );
        assert_eq!(
            check_quantity(d("1000000000001")).unwrap_err().code,
            "quantity_out_of_range"
        );
        assert_eq!(check_quantity(d("12.5")).unwrap(), d("12.5"));
        assert_eq!(
            check_tokens("input_tokens", -1).unwrap_err().code,
            "negative_quantity"
        );
    }

    #[test]
    fn the_future_is_bounded_by_the_allowed_skew() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let max_ahead = Duration::seconds(299);
        let late = Duration::days(35);
        assert!(check_occurred_at(now + max_ahead, now, max_ahead, late).is_ok());
        assert!(check_occurred_at(now - late, now, max_ahead, late).is_ok());
        assert_eq!(
            check_occurred_at(now - late - Duration::microseconds(1), now, max_ahead, late)
                .unwrap_err()
                .code,
            "occurred_too_long_ago"
        );
        assert_eq!(
            check_occurred_at(now + Duration::milliseconds(299_001), now, max_ahead, late)
                .unwrap_err()
                .code,
            "occurred_in_future"
        );
        assert_eq!(
            check_occurred_at(now + Duration::milliseconds(1), now, Duration::zero(), late)
                .unwrap_err()
                .code,
            "occurred_in_future"
        );
    }
}
