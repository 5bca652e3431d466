//! The price book's storage: versions are inserted whole and never changed.

use std::collections::BTreeMap;

use billing::pricing::{ModelPrice, PriceBook, PriceCatalog, Resource};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::StoreError;

/// A new version as an operator submits it.
#[derive(Debug, Clone)]
pub struct NewPriceVersion {
    pub effective_from: DateTime<Utc>,
    pub note: String,
    pub models: BTreeMap<String, ModelPrice>,
    pub infra: BTreeMap<Resource, Decimal>,
}

handle! {
    /// The versioned price book.
    Prices
}

impl Prices<'_> {
    /// Every price version, for rating.
    pub async fn price_catalog(&self) -> Result<PriceCatalog, StoreError> {
        let versions = sqlx::query!("SELECT id, effective_from FROM price_versions ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let models = sqlx::query!(
            "SELECT version_id, model, input_per_mtok, output_per_mtok, cached_input_per_mtok
               FROM ai_model_prices"
        )
        .fetch_all(&self.pool)
        .await?;
        let infra = sqlx::query!("SELECT version_id, resource, price_per_unit FROM infra_prices")
            .fetch_all(&self.pool)
            .await?;
        let mut books: BTreeMap<i64, PriceBook> = versions
            .into_iter()
            .map(|v| {
                let book = PriceBook {
                    version: v.id,
                    effective_from: v.effective_from,
                    models: BTreeMap::new(),
                    infra: BTreeMap::new(),
                };
                (v.id, book)
            })
            .collect();
        for m in models {
            if let Some(b) = books.get_mut(&m.version_id) {
                b.models.insert(
                    m.model,
                    ModelPrice {
                        input_per_mtok: m.input_per_mtok,
                        output_per_mtok: m.output_per_mtok,
                        cached_input_per_mtok: m.cached_input_per_mtok,
                    },
                );
            }
        }
        for i in infra {
            let resource = i
                .resource
                .parse()
                .map_err(|_| StoreError::Decode(format!("resource {}", i.resource)))?;
            if let Some(b) = books.get_mut(&i.version_id) {
                b.infra.insert(resource, i.price_per_unit);
            }
        }
        Ok(PriceCatalog::new(books.into_values().collect()))
    }

    /// The newest version's number, to tell whether a cached catalog is stale.
    pub async fn latest_price_version(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar!("SELECT max(id) FROM price_versions")
            .fetch_one(&self.pool)
            .await?
            .unwrap_or(0))
    }

    /// Publishes a whole new version. It must start after the newest existing version, so a
    /// version never rewrites a period an earlier one already covered.
    pub async fn publish_prices(
        &self,
        v: &NewPriceVersion,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One publisher at a time: the check below and the insert must not interleave.
        sqlx::query!("LOCK TABLE price_versions IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let newest = sqlx::query_scalar!("SELECT max(effective_from) FROM price_versions")
            .fetch_one(&mut *tx)
            .await?;
        if newest.is_some_and(|n| v.effective_from <= n) {
            return Err(StoreError::PriceVersionNotAfterNewest);
        }
        let id = sqlx::query_scalar!(
            "INSERT INTO price_versions (effective_from, note, created_by) VALUES ($1, $2, $3)
             RETURNING id",
            v.effective_from,
            v.note,
            actor
        )
        .fetch_one(&mut *tx)
        .await?;
        let (mut names, mut inputs, mut outputs, mut cached) = (vec![], vec![], vec![], vec![]);
        for (name, p) in &v.models {
            names.push(name.clone());
            inputs.push(p.input_per_mtok);
            outputs.push(p.output_per_mtok);
            cached.push(p.cached_input_per_mtok);
        }
        sqlx::query!(
            "INSERT INTO ai_model_prices
                    (version_id, model, input_per_mtok, output_per_mtok, cached_input_per_mtok)
             SELECT $1, * FROM UNNEST($2::text[], $3::numeric[], $4::numeric[], $5::numeric[])",
            id,
            &names,
            &inputs,
            &outputs,
            &cached
        )
        .execute(&mut *tx)
        .await?;
        let (mut resources, mut units, mut prices) = (vec![], vec![], vec![]);
        for (r, p) in &v.infra {
            resources.push(r.as_str().to_string());
            units.push(r.unit().to_string());
            prices.push(*p);
        }
        sqlx::query!(
            "INSERT INTO infra_prices (version_id, resource, unit, price_per_unit)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::numeric[])",
            id,
            &resources,
            &units,
            &prices
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }
}
