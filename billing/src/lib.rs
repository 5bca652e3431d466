//! The billing domain: credits, money, ledger posting rules and domain errors.
//!
//! Pure code: no I/O, no async, no database or HTTP types. Everything that moves credits is
//! described here first and stored by the `store` crate.

pub mod credits;
pub mod email;
pub mod error;
pub mod ledger;
pub mod money;
pub mod packages;
pub mod pricing;
pub mod summary;
pub mod topup;
pub mod usage;

pub use credits::Credits;
pub use error::BillingError;
pub use ledger::{Account, Posting, SystemAccount, TransferKind};
pub use money::{Currency, Money};
