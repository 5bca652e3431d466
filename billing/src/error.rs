use thiserror::Error;

/// Errors of the billing domain. Each variant has a stable `code` that the HTTP API shows.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BillingError {
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    #[error("amount has more than {max} decimal places")]
    TooManyDecimals { max: u32 },
    #[error("amount is outside the allowed range (magnitude at most {max})")]
    OutOfRange { max: String },
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount must not be zero")]
    Zero,
    #[error("arithmetic overflow")]
    Overflow,
    #[error("`{0}` is not a known currency code")]
    UnknownCurrency(String),
    #[error("`{0}` is not a known transfer kind")]
    UnknownKind(String),
    #[error("`{name}` is not a known {what}")]
    UnknownName { what: &'static str, name: String },
}

impl BillingError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            BillingError::NotANumber(_) => "invalid_amount",
            BillingError::TooManyDecimals { .. } => "too_many_decimals",
            BillingError::OutOfRange { .. } => "amount_out_of_range",
            BillingError::NotPositive => "amount_not_positive",
            BillingError::Zero => "amount_zero",
            BillingError::Overflow => "overflow",
            BillingError::UnknownCurrency(_) => "unknown_currency",
            BillingError::UnknownKind(_) => "unknown_kind",
            BillingError::UnknownName { .. } => "unknown_name",
        }
    }
}
