//! What every handler shares: stores, live models, verified keys, settings.

use std::sync::Arc;

use affinity_store::Stores;

use crate::customer_data::CustomerHasher;
use crate::http::auth::KeyCache;
use crate::http::ratelimit::RateLimits;
use crate::loader::ModelCache;
use crate::metrics::Metrics;
use crate::retrain::trigger::Retrainer;
use crate::settings::{Limits, Settings};

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
    /// Where `POST /v1/models:retrain` runs a retrain.
    pub retrainer: Arc<Retrainer>,
    /// Per-key limits of the expensive routes.
    pub rate_limits: Arc<RateLimits>,
    /// Request latency, errors and model age (EMF; off without a namespace).
    pub metrics: Metrics,
}

impl AppState {
    /// Builds the state from opened stores and settings; retrains run in this process
    /// (see [`AppState::open`] and [`AppState::with_retrainer`] for the retrain function).
    pub fn new(stores: Stores, settings: &Settings) -> Self {
        let metrics = Metrics::new(&settings.retrain.metrics);
        Self::with_metrics(stores, settings, metrics)
    }

    /// As [`AppState::new`], with metrics written to `metrics` (tests capture them).
    pub fn with_metrics(stores: Stores, settings: &Settings, metrics: Metrics) -> Self {
        Self {
            models: Arc::new(
                ModelCache::new(stores.clone(), settings.model_check)
                    .with_metrics(metrics.clone())
                    .with_max_artifact_bytes(settings.max_artifact_bytes),
            ),
            metrics,
            keys: Arc::new(KeyCache::new(settings.key_cache)),
            limits: settings.limits,
            hasher: CustomerHasher::new(settings.retrain.hash_key.clone()),
            retrainer: Arc::new(Retrainer::Local(settings.retrain.clone())),
            rate_limits: Arc::new(RateLimits::new(settings.rate_limit_per_min)),
            stores,
        }
    }

    /// The same state with retrains going to `retrainer`.
    pub fn with_retrainer(mut self, retrainer: Retrainer) -> Self {
        self.retrainer = Arc::new(retrainer);
        self
    }

    /// Opens the configured backend and builds the state; with `AFFINITY_RETRAIN_FUNCTION`
    /// set, retrain requests invoke that function.
    pub async fn open(settings: &Settings) -> crate::Result<Self> {
        let stores =
            Stores::open(&settings.backend)
                .await
                .map_err(|source| crate::Error::Store {
                    step: "open stores",
                    source,
                })?;
        let retrainer = Retrainer::from_settings(
            settings.retrain_function.as_deref(),
            settings.retrain.clone(),
        )
        .await;
        Ok(Self::new(stores, settings).with_retrainer(retrainer))
    }
}
