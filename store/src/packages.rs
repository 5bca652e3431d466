//! Credit packages: what an org can buy, at which price, with which bonus.
use billing::{Credits, Currency, Money, packages::Package};
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
    expires_after_days: Option<i32>,
    bonus_expires_after_days: Option<i32>,
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
            expires_after_days: self.expires_after_days.and_then(|d| u32::try_from(d).ok()),
            bonus_expires_after_days: self
                .bonus_expires_after_days
                .and_then(|d| u32::try_from(d).ok()),
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
            "SELECT id, name, price_minor, currency, base_credits, bonus_credits, active, expires_after_days, bonus_expires_after_days
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
            "SELECT id, name, price_minor, currency, base_credits, bonus_credits, active, expires_after_days, bonus_expires_after_days
               FROM credit_packages WHERE id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("package"))?
        .into_package()
    }

    /// Creates or replaces a package (purchases keep their own snapshot).
    pub async fn put_package(&self, p: &Package) -> Result<Package, StoreError> {
        sqlx::query_as!(
            PackageRow,
            "INSERT INTO credit_packages (id, name, price_minor, currency, base_credits,
                                          bonus_credits, active, expires_after_days,
                                          bonus_expires_after_days)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET name = $2, price_minor = $3, currency = $4,
                 base_credits = $5, bonus_credits = $6, active = $7, expires_after_days = $8,
                 bonus_expires_after_days = $9, updated_at = now()
             RETURNING id, name, price_minor, currency, base_credits, bonus_credits, active,
                       expires_after_days, bonus_expires_after_days",
            p.id,
            p.name,
            p.price.amount_minor,
            p.price.currency.code(),
            p.base_credits.as_decimal(),
            p.bonus_credits.as_decimal(),
            p.active,
            p.expires_after_days.map(|d| d as i32),
            p.bonus_expires_after_days.map(|d| d as i32)
        )
        .fetch_one(&self.pool)
        .await?
        .into_package()
    }
}
