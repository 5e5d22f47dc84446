//! Service settings, read once at start-up by [`crate::config::Config`] (Lambda sets them in
//! the function's configuration; locally they come from the shell or flags).

use std::net::SocketAddr;
use std::time::Duration;

use affinity_store::Backend;

/// Largest `k` any route accepts (documented in docs/api.md).
pub const MAX_K: usize = 100;
/// `k` when the request does not say.
pub const DEFAULT_K: usize = 10;

/// Size limits applied at the edge, before any work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most rows in one ingestion batch.
    pub max_batch: usize,
    /// Most items in one basket.
    pub max_basket: usize,
    /// Most ids in an exclude list.
    pub max_exclude: usize,
    /// Purchases of a customer read for fold-in (newest first).
    pub history: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch: 500,
            max_basket: 50,
            max_exclude: 100,
            history: 500,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (Lambda, CloudWatch).
    Json,
    /// Human-readable (a terminal).
    Pretty,
}

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where records and blobs live.
    pub backend: Backend,
    /// Address of the local TCP server (ignored on Lambda).
    pub addr: SocketAddr,
    /// How often the live-model pointer (and the catalog snapshot) is re-checked at most.
    pub model_check: Duration,
    /// How long a verified API key is trusted before it is looked up again.
    pub key_cache: Duration,
    /// Edge limits.
    pub limits: Limits,
    /// Log format.
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `affinity_service=debug`.
    pub log_filter: String,
    /// Requests a key may make per minute to each expensive route group on one instance
    /// (audience, dry run, reports, batch offers); 0 turns the limit off.
    pub rate_limit_per_min: u32,
    /// Largest model artifact an instance loads; a larger live one is served by an earlier
    /// version instead.
    pub max_artifact_bytes: u64,
    /// True when running inside AWS Lambda.
    pub on_lambda: bool,
    /// Retrain function `POST /v1/models:retrain` invokes (None: run in this process).
    pub retrain_function: Option<String>,
    /// Pipeline settings of a retrain run in this process.
    pub retrain: crate::retrain::RetrainSettings,
}

impl Settings {
    /// Settings for tests and embedding: memory store, model and keys re-checked on every
    /// request, default limits.
    pub fn for_tests() -> Self {
        Self {
            backend: Backend::Memory,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            model_check: Duration::ZERO,
            key_cache: Duration::ZERO,
            limits: Limits::default(),
            log_format: LogFormat::Pretty,
            log_filter: "warn".into(),
            rate_limit_per_min: 0,
            max_artifact_bytes: crate::loader::DEFAULT_MAX_ARTIFACT_BYTES,
            on_lambda: false,
            retrain_function: None,
            retrain: crate::retrain::RetrainSettings {
                hash_key: Some(vec![7; 32]),
                metrics: crate::metrics::MetricsConfig::default(),
                ..crate::retrain::RetrainSettings::default()
            },
        }
    }
}
