//! The price catalog, cached in memory for rating on the hot path.
//!
//! Every process reloads it when the newest version number changes (checked every
//! `refresh_every`), and publishing requires `effective_from` to be at least `publish_lead` in
//! the future, longer than the refresh interval: so every process rates with a version before
//! it takes effect, and no event is ever rated with a version that was not yet known. The cache
//! also remembers when it last checked: a version it does not know was published after that,
//! so it starts no earlier than that check plus the lead, which bounds how far ahead usage may
//! be stamped (see the usage handler) even when a refresh is late.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use billing::pricing::PriceCatalog;
use chrono::{DateTime, Utc};
use store::{Store, StoreError};

#[derive(Clone)]
pub struct PriceCache {
    cached: Arc<RwLock<Cached>>,
}

struct Cached {
    version: i64,
    catalog: Arc<PriceCatalog>,
    /// When the last successful check began: every version published before it is known.
    checked_at: DateTime<Utc>,
}

impl PriceCache {
    pub async fn load(store: &Store) -> Result<PriceCache, StoreError> {
        let checked_at = Utc::now();
        let version = store.prices().latest_price_version().await?;
        let catalog = store.prices().price_catalog().await?;
        Ok(PriceCache {
            cached: Arc::new(RwLock::new(Cached {
                version,
                catalog: Arc::new(catalog),
                checked_at,
            })),
        })
    }

    pub fn current(&self) -> Arc<PriceCatalog> {
        self.cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .catalog
            .clone()
    }

    /// The catalog with the time its last check began.
    pub fn current_checked(&self) -> (Arc<PriceCatalog>, DateTime<Utc>) {
        let c = self
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (c.catalog.clone(), c.checked_at)
    }

    /// Reloads the catalog if a newer version exists.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let checked_at = Utc::now();
        let latest = store.prices().latest_price_version().await?;
        let known = self
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .version;
        let catalog = if latest != known {
            let catalog = Arc::new(store.prices().price_catalog().await?);
            tracing::info!(version = latest, "price catalog reloaded");
            Some(catalog)
        } else {
            None
        };
        let mut c = self
            .cached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(catalog) = catalog {
            c.version = latest;
            c.catalog = catalog;
        }
        c.checked_at = checked_at;
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
