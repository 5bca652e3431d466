//! The billing domain: credits, money, ledger posting rules and domain errors.
//!
//! Pure code: no I/O, no async, no database or HTTP types. Everything that moves credits is
//! described here first and stored by the `store` crate.

pub mod booking;
pub mod budgets;
pub mod credits;
pub mod email;
pub mod error;
pub mod grants;
pub mod holds;
pub mod ledger;
pub mod money;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod packages;
pub mod pricing;
pub mod purchase;
pub mod refund;
pub mod summary;
mod text;
pub mod topup;
pub mod usage;

pub use booking::{Batch, BookError, ThresholdPurpose};
pub use credits::Credits;
pub use error::BillingError;
pub use grants::{Flow, GrantCategory, GrantMove, GrantSource, GrantTerms, Wallet};
pub use ledger::{Account, Entry, PackageGrant, Posting, Refs, SystemAccount, TransferKind};
pub use money::{Currency, Money};
pub use purchase::PurchaseState;
pub use refund::RefundState;
