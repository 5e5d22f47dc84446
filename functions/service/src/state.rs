//! What every handler shares: stores, live models, verified keys, settings.

use std::sync::Arc;

use affinity_store::Stores;

use crate::auth::KeyCache;
use crate::loader::ModelCache;
use crate::settings::{Limits, Settings};
use crate::telemetry::CustomerHasher;

/// Application state, cheap to clone into each request.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Record and blob stores.
    pub stores: Stores,
    /// Live model per tenant.
    pub models: Arc<ModelCache>,
    /// Verified API keys.
    pub keys: Arc<KeyCache>,
    /// Edge limits.
    pub limits: Limits,
    /// Customer ids to log-safe tags.
    pub hasher: CustomerHasher,
}

impl AppState {
    /// Builds the state from opened stores and settings.
    pub fn new(stores: Stores, settings: &Settings) -> Self {
        Self {
            models: Arc::new(ModelCache::new(stores.clone(), settings.model_check)),
            keys: Arc::new(KeyCache::new(settings.key_cache)),
            limits: settings.limits,
            hasher: CustomerHasher::new(settings.log_hash_key.clone()),
            stores,
        }
    }

    /// Opens the configured backend and builds the state.
    pub async fn open(settings: &Settings) -> crate::Result<Self> {
        let stores =
            Stores::open(&settings.backend)
                .await
                .map_err(|source| crate::Error::Store {
                    step: "open stores",
                    source,
                })?;
        Ok(Self::new(stores, settings))
    }
}
