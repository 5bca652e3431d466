//! Auto-topup rules: which card declines are worth retrying, the typed outcome of each charge
//! attempt, and the monthly cap.

use serde::{Deserialize, Serialize};

/// How a declined charge should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeclineClass {
    /// Temporary (insufficient funds, processing error …): retry later.
    Soft,
    /// Needs the customer (expired, stolen, authentication required …): stop.
    Hard,
}

/// Classifies a decline by Stripe's `decline_code` (or `code` when there is none).
pub fn decline_class(code: Option<&str>, decline_code: Option<&str>) -> DeclineClass {
    const HARD: &[&str] = &[
        "expired_card",
        "do_not_honor",
        "do_not_try_again",
        "authentication_required",
        "stolen_card",
        "lost_card",
        "pickup_card",
        "restricted_card",
        "fraudulent",
        "incorrect_cvc",
        "incorrect_number",
        "invalid_account",
        "card_not_supported",
        "currency_not_supported",
    ];
    let reason = decline_code.or(code).unwrap_or_default();
    if HARD.contains(&reason) || code.is_some_and(|c| HARD.contains(&c)) {
        DeclineClass::Hard
    } else {
        DeclineClass::Soft
    }
}

/// The typed outcome of one charge attempt, as recorded (`topup_attempts.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    SoftDecline,
    HardDecline,
    /// Accepted, settling later (bank debits): nothing is granted until it succeeds.
    Processing,
    /// The customer must authenticate: a hard stop for an off-session charge.
    RequiresAction,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::SoftDecline => "soft_decline",
            AttemptOutcome::HardDecline => "hard_decline",
            AttemptOutcome::Processing => "processing",
            AttemptOutcome::RequiresAction => "requires_action",
        }
    }

    pub fn declined(class: DeclineClass) -> AttemptOutcome {
        match class {
            DeclineClass::Soft => AttemptOutcome::SoftDecline,
            DeclineClass::Hard => AttemptOutcome::HardDecline,
        }
    }
}

/// Whether charging `amount_minor` keeps the month's auto-topup charges within `cap_minor`.
pub fn within_cap(charged_this_month_minor: i64, amount_minor: i64, cap_minor: i64) -> bool {
    charged_this_month_minor
        .checked_add(amount_minor)
        .is_some_and(|total| total <= cap_minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_and_hard_declines() {
        assert_eq!(
            decline_class(Some("card_declined"), Some("insufficient_funds")),
            DeclineClass::Soft
        );
        assert_eq!(
            decline_class(Some("processing_error"), Some("processing_error")),
            DeclineClass::Soft
        );
        assert_eq!(
            decline_class(Some("expired_card"), Some("expired_card")),
            DeclineClass::Hard
        );
        assert_eq!(
            decline_class(Some("card_declined"), Some("do_not_honor")),
            DeclineClass::Hard
        );
        assert_eq!(
            decline_class(Some("authentication_required"), None),
            DeclineClass::Hard
        );
    }

    #[test]
    fn attempt_outcomes_are_recorded_under_stable_names() {
        let names: Vec<&str> = [
            AttemptOutcome::Succeeded,
            AttemptOutcome::SoftDecline,
            AttemptOutcome::HardDecline,
        ]
        .into_iter()
        .map(AttemptOutcome::as_str)
        .collect();
        assert_eq!(names, ["succeeded", "soft_decline", "hard_decline"]);
        assert_eq!(
            AttemptOutcome::declined(DeclineClass::Soft),
            AttemptOutcome::SoftDecline
        );
        assert_eq!(
            AttemptOutcome::declined(DeclineClass::Hard),
            AttemptOutcome::HardDecline
        );
        assert_eq!(
            serde_json::to_value(AttemptOutcome::SoftDecline).unwrap(),
            "soft_decline"
        );
    }

    #[test]
    fn the_cap_is_inclusive() {
        assert!(within_cap(5000, 5000, 10000));
        assert!(!within_cap(5001, 5000, 10000));
        assert!(!within_cap(i64::MAX, 1, i64::MAX));
    }
}

crate::text_enum! {
    /// Where one auto-topup stands (`topups.state`).
    pub enum TopupState {
        /// Charging (or waiting to retry a soft decline).
        Running => "running",
        /// Charged and granted.
        Succeeded => "succeeded",
        /// Declined for good, or the charge could not be made.
        Failed => "failed",
        /// Not charged: the month's cap would be exceeded.
        Capped => "capped",
        /// Not charged: auto-topup was off, paused, or another topup was running.
        Skipped => "skipped",
    }
}

impl TopupState {
    /// A topup moves once, from `Running` to where it ends.
    pub fn can_become(self, next: TopupState) -> bool {
        self == next || self == TopupState::Running
    }
}
