//! Credit packages: what a buyer can purchase, and how packages compare.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BillingError, Credits, Money};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub id: Uuid,
    pub name: String,
    pub price: Money,
    pub base_credits: Credits,
    pub bonus_credits: Credits,
    pub active: bool,
    /// Its version: changing what it sells (price, credits, bonus, expiry) makes a new one; a
    /// purchase's snapshot keeps the version it bought (1 for snapshots older than versions).
    #[serde(default = "first_version")]
    pub version: u32,
    /// Days after the purchase the base credits expire; never when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_days: Option<u32>,
    /// Days after the purchase the bonus credits expire; never when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonus_expires_after_days: Option<u32>,
    /// A package whose buyer chooses the amount: its price and base credits are those of the
    /// least amount; a purchase's snapshot is priced at the amount paid
    /// ([`Package::priced_at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_what_you_want: Option<PayWhatYouWant>,
}

/// The terms of a pay-what-you-want package: credits per major currency unit (a dollar), and
/// the least and most a purchase may pay, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PayWhatYouWant {
    pub credits_per_unit: Credits,
    pub min_minor: i64,
    pub max_minor: i64,
}

impl PayWhatYouWant {
    /// The credits `amount_minor` of `currency` buys: `amount × credits_per_unit`, rounded once
    /// to the credit scale.
    pub fn credits_for(&self, amount_minor: i64, currency: crate::Currency) -> Credits {
        let major = Decimal::new(amount_minor, currency.minor_digits());
        Credits::round_computed(major * self.credits_per_unit.as_decimal())
    }
}

/// Why an amount cannot buy a package: the field, a stable code and a message.
pub type PriceRefusal = (&'static str, &'static str, String);

fn first_version() -> u32 {
    1
}

/// The longest expiry a package may set, in days (ten years).
pub const EXPIRES_AFTER_DAYS_MAX: u32 = 3650;

impl Package {
    /// Whether `other` sells the same thing: same price, credits, bonus and expiries (the name
    /// and whether it is on sale aside). A package changed otherwise gets a new version.
    pub fn same_terms(&self, other: &Package) -> bool {
        self.price == other.price
            && self.base_credits == other.base_credits
            && self.bonus_credits == other.bonus_credits
            && self.expires_after_days == other.expires_after_days
            && self.bonus_expires_after_days == other.bonus_expires_after_days
            && self.pay_what_you_want == other.pay_what_you_want
    }

    /// The package a purchase of `amount_minor` buys: a pay-what-you-want package priced at
    /// that amount (`amount × credits_per_unit` base credits, rounded once to the credit scale,
    /// no bonus), a fixed one as it is (and then no amount may be given).
    pub fn priced_at(&self, amount_minor: Option<i64>) -> Result<Package, PriceRefusal> {
        let Some(pwyw) = self.pay_what_you_want else {
            return match amount_minor {
                None => Ok(self.clone()),
                Some(_) => Err((
                    "amount_minor",
                    "amount_not_allowed",
                    "this package has a fixed price: send no `amount_minor`".into(),
                )),
            };
        };
        let amount = amount_minor.ok_or((
            "amount_minor",
            "missing_field",
            "this package is pay-what-you-want: `amount_minor` is required".to_string(),
        ))?;
        if amount < pwyw.min_minor || amount > pwyw.max_minor {
            return Err((
                "amount_minor",
                "amount_out_of_range",
                format!(
                    "`amount_minor` must be between {} and {}",
                    pwyw.min_minor, pwyw.max_minor
                ),
            ));
        }
        let credits = pwyw.credits_for(amount, self.price.currency);
        if !credits.is_positive() {
            return Err((
                "amount_minor",
                "amount_out_of_range",
                "`amount_minor` buys no credit".into(),
            ));
        }
        Ok(Package {
            price: Money::new(amount, self.price.currency),
            base_credits: credits,
            bonus_credits: Credits::ZERO,
            ..self.clone()
        })
    }

    /// What one base credit cost, in minor units, to twelve decimals: the money a refund
    /// returns per credit it takes back.
    pub fn cost_basis_minor_per_credit(&self) -> Decimal {
        if !self.base_credits.is_positive() {
            return Decimal::ZERO;
        }
        (Decimal::from(self.price.amount_minor) / self.base_credits.as_decimal())
            .round_dp_with_strategy(12, RoundingStrategy::MidpointAwayFromZero)
    }

    /// The grants a purchase (or, with `topup`, an auto-topup) of this package made at `at`
    /// makes: base credits paid at the package's cost basis, bonus promotional; each expiring
    /// as the package says.
    pub fn grant_terms(
        &self,
        payment_id: Uuid,
        topup: bool,
        at: chrono::DateTime<chrono::Utc>,
    ) -> crate::PackageGrant {
        use crate::grants::{GrantSource, GrantTerms};
        let after = |days: Option<u32>| days.map(|d| at + chrono::Duration::days(i64::from(d)));
        let (purchase_id, topup_id) = if topup {
            (None, Some(payment_id))
        } else {
            (Some(payment_id), None)
        };
        let source = if topup {
            GrantSource::Topup
        } else {
            GrantSource::Purchase
        };
        crate::PackageGrant {
            base: GrantTerms {
                cost_basis_minor_per_credit: self.cost_basis_minor_per_credit(),
                expires_at: after(self.expires_after_days),
                purchase_id,
                topup_id,
                ..GrantTerms::plain(source)
            },
            bonus: GrantTerms {
                expires_at: after(self.bonus_expires_after_days),
                purchase_id,
                topup_id,
                ..GrantTerms::plain(GrantSource::Bonus)
            },
        }
    }

    /// Credits the buyer receives: base plus bonus.
    pub fn effective_credits(&self) -> Result<Credits, BillingError> {
        self.base_credits.checked_add(self.bonus_credits)
    }

    /// What one effective credit costs, in the currency's major unit (e.g. dollars), to six
    /// decimals.
    pub fn cost_per_credit(&self) -> Result<Decimal, BillingError> {
        let credits = self.effective_credits()?.as_decimal();
        if credits.is_zero() {
            return Err(BillingError::NotPositive);
        }
        let major = Decimal::new(self.price.amount_minor, self.price.currency.minor_digits());
        major
            .checked_div(credits)
            .map(|d| d.round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero))
            .ok_or(BillingError::Overflow)
    }

    /// How much cheaper per credit this package is than `reference`, in percent (one decimal).
    pub fn saving_percent(&self, reference: &Package) -> Result<Decimal, BillingError> {
        let mine = self.cost_per_credit()?;
        let theirs = reference.cost_per_credit()?;
        if theirs.is_zero() {
            return Ok(Decimal::ZERO);
        }
        let mut saving = ((Decimal::ONE - mine / theirs) * Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero);
        saving.rescale(1);
        Ok(saving)
    }
}

/// Checks what an operator may set on a package.
pub fn check_package(
    name: &str,
    price_minor: i64,
    base: Credits,
    bonus: Credits,
) -> Result<(), (&'static str, &'static str)> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(("name", "name must be 1 to 100 characters"));
    }
    if price_minor <= 0 || price_minor > 100_000_000 {
        return Err((
            "price_minor",
            "price_minor must be between 1 and 100,000,000",
        ));
    }
    if !base.is_positive() {
        return Err(("base_credits", "base_credits must be greater than zero"));
    }
    if bonus.is_negative() {
        return Err(("bonus_credits", "bonus_credits must not be negative"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;

    fn pkg(price_minor: i64, base: i64, bonus: i64) -> Package {
        Package {
            id: Uuid::nil(),
            name: "p".into(),
            price: Money::new(price_minor, Currency::Usd),
            base_credits: Credits::whole(base),
            bonus_credits: Credits::whole(bonus),
            active: true,
            version: 1,
            expires_after_days: None,
            bonus_expires_after_days: None,
            pay_what_you_want: None,
        }
    }

    #[test]
    fn pay_what_you_want_is_priced_at_the_amount_paid() {
        let mut p = pkg(500, 600, 0);
        p.pay_what_you_want = Some(PayWhatYouWant {
            credits_per_unit: Credits::whole(120),
            min_minor: 500,
            max_minor: 50_000,
        });
        let bought = p.priced_at(Some(2_501)).unwrap();
        assert_eq!(bought.price.amount_minor, 2_501);
        assert_eq!(bought.base_credits.to_string(), "3001.200000");
        assert_eq!(bought.bonus_credits, Credits::ZERO);
        assert_eq!(p.priced_at(None).unwrap_err().1, "missing_field");
        assert_eq!(p.priced_at(Some(499)).unwrap_err().1, "amount_out_of_range");
        assert_eq!(
            p.priced_at(Some(50_001)).unwrap_err().1,
            "amount_out_of_range"
        );
        let fixed = pkg(500, 600, 0);
        assert_eq!(fixed.priced_at(None).unwrap(), fixed);
        assert_eq!(
            fixed.priced_at(Some(500)).unwrap_err().1,
            "amount_not_allowed"
        );
    }

    #[test]
    fn a_new_name_keeps_the_terms_a_new_price_does_not() {
        let a = pkg(5000, 5000, 250);
        let renamed = Package {
            name: "other".into(),
            active: false,
            ..a.clone()
        };
        assert!(a.same_terms(&renamed));
        assert!(!a.same_terms(&pkg(5100, 5000, 250)));
        assert!(!a.same_terms(&pkg(5000, 5000, 251)));
        let expiring = Package {
            bonus_expires_after_days: Some(90),
            ..a.clone()
        };
        assert!(!a.same_terms(&expiring));
    }

    #[test]
    fn effective_credits_and_cost_per_credit() {
        let growth = pkg(5000, 5000, 250);
        assert_eq!(growth.effective_credits().unwrap(), Credits::whole(5250));
        // $50 / 5,250 credits = 0.0095238… → 0.009524
        assert_eq!(growth.cost_per_credit().unwrap().to_string(), "0.009524");
    }

    #[test]
    fn saving_is_measured_against_a_reference_package() {
        let starter = pkg(1000, 1000, 0);
        let scale = pkg(20000, 20000, 2000);
        // 0.01 vs 0.009091 per credit → 9.1 % cheaper
        assert_eq!(scale.saving_percent(&starter).unwrap().to_string(), "9.1");
        assert_eq!(starter.saving_percent(&starter).unwrap().to_string(), "0.0");
    }
}
