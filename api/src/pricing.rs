//! The price catalog, cached in memory for rating on the hot path.
//!
//! Every process reloads it when the newest version number changes (checked every
//! `refresh_every`), and publishing requires `effective_from` to be at least `publish_lead` in
//! the future, longer than the refresh interval: so every process rates with a version before
//! it takes effect, and no event is ever rated with a version that was not yet known.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use billing::pricing::PriceCatalog;
use store::{Store, StoreError};

#[derive(Clone)]
pub struct PriceCache {
    catalog: Arc<RwLock<(i64, Arc<PriceCatalog>)>>,
}

impl PriceCache {
    pub async fn load(store: &Store) -> Result<PriceCache, StoreError> {
        let version = store.latest_price_version().await?;
        let catalog = store.price_catalog().await?;
        Ok(PriceCache {
            catalog: Arc::new(RwLock::new((version, Arc::new(catalog)))),
        })
    }

    pub fn current(&self) -> Arc<PriceCatalog> {
        self.catalog.read().expect("price cache lock").1.clone()
    }

    /// Reloads the catalog if a newer version exists.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let latest = store.latest_price_version().await?;
        let known = self.catalog.read().expect("price cache lock").0;
        if latest != known {
            let catalog = store.price_catalog().await?;
            *self.catalog.write().expect("price cache lock") = (latest, Arc::new(catalog));
            tracing::info!(version = latest, "price catalog reloaded");
        }
        Ok(())
    }

    /// Keeps the cache fresh until the process ends.
    pub fn spawn_refresher(&self, store: Store, every: Duration) {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = cache.refresh(&store).await {
                    tracing::warn!(error = %e, "price catalog refresh failed");
                }
            }
        });
    }
}
