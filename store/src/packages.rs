//! Credit packages: what an org can buy, at which price, with which bonus.
use billing::{Credits, Currency, Money, packages::Package};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::StoreError;

struct PackageRow {
    id: Uuid,
    name: String,
    price_minor: i64,
    currency: String,
    base_credits: rust_decimal::Decimal,
    bonus_credits: rust_decimal::Decimal,
    active: bool,
    version: i32,
    expires_after_days: Option<i32>,
    bonus_expires_after_days: Option<i32>,
    pwyw_credits_per_unit: Option<rust_decimal::Decimal>,
    pwyw_min_minor: Option<i64>,
    pwyw_max_minor: Option<i64>,
}

/// One version of a package: what it sold from `created_at` until the next version.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageVersion {
    pub package: Package,
    pub created_at: DateTime<Utc>,
}

struct VersionRow {
    package_id: Uuid,
    version: i32,
    name: String,
    price_minor: i64,
    currency: String,
    base_credits: rust_decimal::Decimal,
    bonus_credits: rust_decimal::Decimal,
    expires_after_days: Option<i32>,
    bonus_expires_after_days: Option<i32>,
    pwyw_credits_per_unit: Option<rust_decimal::Decimal>,
    pwyw_min_minor: Option<i64>,
    pwyw_max_minor: Option<i64>,
    created_at: DateTime<Utc>,
}

impl PackageRow {
    fn into_package(self) -> Result<Package, StoreError> {
        let currency: Currency = self.currency.parse()?;
        Ok(Package {
            id: self.id,
            name: self.name,
            price: Money::new(self.price_minor, currency),
            base_credits: Credits::from_stored(self.base_credits),
            bonus_credits: Credits::from_stored(self.bonus_credits),
            active: self.active,
            version: u32::try_from(self.version)
                .map_err(|_| StoreError::Decode("package version".into()))?,
            expires_after_days: self.expires_after_days.and_then(|d| u32::try_from(d).ok()),
            bonus_expires_after_days: self
                .bonus_expires_after_days
                .and_then(|d| u32::try_from(d).ok()),
            pay_what_you_want: match (
                self.pwyw_credits_per_unit,
                self.pwyw_min_minor,
                self.pwyw_max_minor,
            ) {
                (Some(c), Some(min_minor), Some(max_minor)) => {
                    Some(billing::packages::PayWhatYouWant {
                        credits_per_unit: Credits::from_stored(c),
                        min_minor,
                        max_minor,
                    })
                }
                _ => None,
            },
        })
    }
}

handle! {
    /// Credit packages (the catalog).
    Packages
}

impl Packages<'_> {
    /// Packages, all or only the active ones, cheapest first.
    pub async fn packages(&self, only_active: bool) -> Result<Vec<Package>, StoreError> {
        sqlx::query_as!(
            PackageRow,
            "SELECT id, name, price_minor, currency, base_credits, bonus_credits, active, version,
                    expires_after_days, bonus_expires_after_days, pwyw_credits_per_unit,
                    pwyw_min_minor, pwyw_max_minor
               FROM credit_packages WHERE active OR NOT $1 ORDER BY price_minor, id",
            only_active
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(PackageRow::into_package)
        .collect()
    }

    pub async fn package(&self, id: Uuid) -> Result<Package, StoreError> {
        sqlx::query_as!(
            PackageRow,
            "SELECT id, name, price_minor, currency, base_credits, bonus_credits, active, version,
                    expires_after_days, bonus_expires_after_days, pwyw_credits_per_unit,
                    pwyw_min_minor, pwyw_max_minor
               FROM credit_packages WHERE id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("package"))?
        .into_package()
    }

    /// Creates or changes a package (`p.version` is ignored). A change of what it sells
    /// ([`Package::same_terms`]) makes the next version, recorded in `credit_package_versions`;
    /// a new name or `active` alone keeps the version. Changes of one package are serialised by
    /// its row lock, so concurrent ones each get their own version. Purchases keep their own
    /// snapshot, version included.
    pub async fn put_package(&self, p: &Package) -> Result<Package, StoreError> {
        let mut tx = self.pool.begin().await?;
        let current = sqlx::query_as!(
            PackageRow,
            "SELECT id, name, price_minor, currency, base_credits, bonus_credits, active, version,
                    expires_after_days, bonus_expires_after_days, pwyw_credits_per_unit,
                    pwyw_min_minor, pwyw_max_minor
               FROM credit_packages WHERE id = $1 FOR UPDATE",
            p.id
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(PackageRow::into_package)
        .transpose()?;
        let version = match &current {
            None => 1,
            Some(c) if c.same_terms(p) => c.version,
            Some(c) => c.version + 1,
        };
        let saved = sqlx::query_as!(
            PackageRow,
            "INSERT INTO credit_packages (id, name, price_minor, currency, base_credits,
                                          bonus_credits, active, version, expires_after_days,
                                          bonus_expires_after_days, pwyw_credits_per_unit,
                                          pwyw_min_minor, pwyw_max_minor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET name = $2, price_minor = $3, currency = $4,
                 base_credits = $5, bonus_credits = $6, active = $7, version = $8,
                 expires_after_days = $9, bonus_expires_after_days = $10,
                 pwyw_credits_per_unit = $11, pwyw_min_minor = $12, pwyw_max_minor = $13,
                 updated_at = now()
             RETURNING id, name, price_minor, currency, base_credits, bonus_credits, active,
                       version, expires_after_days, bonus_expires_after_days,
                       pwyw_credits_per_unit, pwyw_min_minor, pwyw_max_minor",
            p.id,
            p.name,
            p.price.amount_minor,
            p.price.currency.code(),
            p.base_credits.as_decimal(),
            p.bonus_credits.as_decimal(),
            p.active,
            version as i32,
            p.expires_after_days.map(|d| d as i32),
            p.bonus_expires_after_days.map(|d| d as i32),
            p.pay_what_you_want.map(|w| w.credits_per_unit.as_decimal()),
            p.pay_what_you_want.map(|w| w.min_minor),
            p.pay_what_you_want.map(|w| w.max_minor)
        )
        .fetch_one(&mut *tx)
        .await?
        .into_package()?;
        if current.as_ref().is_none_or(|c| c.version != version) {
            sqlx::query!(
                "INSERT INTO credit_package_versions (package_id, version, name, price_minor,
                                                      currency, base_credits, bonus_credits,
                                                      expires_after_days, bonus_expires_after_days,
                                                      pwyw_credits_per_unit, pwyw_min_minor,
                                                      pwyw_max_minor)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                saved.id,
                version as i32,
                saved.name,
                saved.price.amount_minor,
                saved.price.currency.code(),
                saved.base_credits.as_decimal(),
                saved.bonus_credits.as_decimal(),
                saved.expires_after_days.map(|d| d as i32),
                saved.bonus_expires_after_days.map(|d| d as i32),
                saved
                    .pay_what_you_want
                    .map(|w| w.credits_per_unit.as_decimal()),
                saved.pay_what_you_want.map(|w| w.min_minor),
                saved.pay_what_you_want.map(|w| w.max_minor)
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(saved)
    }

    /// Every version of a package, oldest first (`active` is the package's, on its current
    /// version only).
    pub async fn versions(&self, id: Uuid) -> Result<Vec<PackageVersion>, StoreError> {
        let current = self.package(id).await?;
        sqlx::query_as!(
            VersionRow,
            "SELECT package_id, version, name, price_minor, currency, base_credits, bonus_credits,
                    expires_after_days, bonus_expires_after_days, pwyw_credits_per_unit,
                    pwyw_min_minor, pwyw_max_minor, created_at
               FROM credit_package_versions WHERE package_id = $1 ORDER BY version",
            id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|v| {
            let created_at = v.created_at;
            let package = PackageRow {
                id: v.package_id,
                name: v.name,
                price_minor: v.price_minor,
                currency: v.currency,
                base_credits: v.base_credits,
                bonus_credits: v.bonus_credits,
                active: current.active && v.version as u32 == current.version,
                version: v.version,
                expires_after_days: v.expires_after_days,
                bonus_expires_after_days: v.bonus_expires_after_days,
                pwyw_credits_per_unit: v.pwyw_credits_per_unit,
                pwyw_min_minor: v.pwyw_min_minor,
                pwyw_max_minor: v.pwyw_max_minor,
            }
            .into_package()?;
            Ok(PackageVersion {
                package,
                created_at,
            })
        })
        .collect()
    }
}
