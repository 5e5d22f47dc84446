//! Service settings, read once from the environment at start-up (Lambda sets them in the
//! function's configuration; locally they come from the shell).

use std::net::SocketAddr;
use std::time::Duration;

use affinity_store::Backend;

use crate::error::{Error, Result};

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
    /// Reads the process environment (see [`Settings::from_lookup`] for the variables).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests need not touch the process environment.
    ///
    /// Variables: the backend's (`AFFINITY_BACKEND`, ...), `AFFINITY_ADDR` (default
    /// `127.0.0.1:8080`), `AFFINITY_MODEL_CHECK_SECS` (30), `AFFINITY_KEY_CACHE_SECS` (30),
    /// `AFFINITY_MAX_BODY_BYTES` (1048576), `AFFINITY_MAX_BATCH` (500), `AFFINITY_MAX_BASKET`
    /// (50), `AFFINITY_HISTORY` (500), `AFFINITY_LOG` (`info`), `AFFINITY_LOG_FORMAT`
    /// (`json` on Lambda, `pretty` elsewhere), `AFFINITY_LOG_HASH_KEY` (hex; random when
    /// unset), `AFFINITY_RATE_LIMIT_PER_MIN` (60; 0 = off), `AFFINITY_MAX_ARTIFACT_BYTES` (1 GiB), `AFFINITY_RETRAIN_FUNCTION` (unset: retrain in this process), the retrain
    /// pipeline's (see `RetrainSettings::from_lookup`) and `AWS_LAMBDA_RUNTIME_API` (set by
    /// Lambda).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let backend = Backend::from_lookup(&get).map_err(|source| Error::Store {
            step: "read backend settings",
            source,
        })?;
        let on_lambda = get("AWS_LAMBDA_RUNTIME_API").is_some_and(|v| !v.is_empty());
        let addr = match get("AFFINITY_ADDR") {
            Some(a) => a
                .parse()
                .map_err(|e| Error::setting("AFFINITY_ADDR", format!("{a:?}: {e}")))?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_body_bytes: number(&get, "AFFINITY_MAX_BODY_BYTES", defaults.max_body_bytes)?,
            max_batch: number(&get, "AFFINITY_MAX_BATCH", defaults.max_batch)?,
            max_basket: number(&get, "AFFINITY_MAX_BASKET", defaults.max_basket)?,
            max_exclude: number(&get, "AFFINITY_MAX_EXCLUDE", defaults.max_exclude)?,
            history: number(&get, "AFFINITY_HISTORY", defaults.history)?,
        };
        for (name, v) in [
            ("AFFINITY_MAX_BODY_BYTES", limits.max_body_bytes),
            ("AFFINITY_MAX_BATCH", limits.max_batch),
            ("AFFINITY_MAX_BASKET", limits.max_basket),
            ("AFFINITY_HISTORY", limits.history),
        ] {
            if v == 0 {
                return Err(Error::setting(name, "must be at least 1"));
            }
        }
        let log_format = match get("AFFINITY_LOG_FORMAT").as_deref() {
            None | Some("") => {
                if on_lambda {
                    LogFormat::Json
                } else {
                    LogFormat::Pretty
                }
            }
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(Error::setting(
                    "AFFINITY_LOG_FORMAT",
                    format!("{other:?} is not json or pretty"),
                ));
            }
        };
        // AFFINITY_LOG_HASH_KEY has one reader, the retrain settings; logs, erasure audit
        // records and the retrain's insight step all use `retrain.hash_key`.
        let retrain = crate::retrain::RetrainSettings::from_lookup(&get)?;
        Ok(Self {
            backend,
            addr,
            model_check: Duration::from_secs(number(&get, "AFFINITY_MODEL_CHECK_SECS", 30)?),
            key_cache: Duration::from_secs(number(&get, "AFFINITY_KEY_CACHE_SECS", 30)?),
            limits,
            log_format,
            log_filter: get("AFFINITY_LOG").unwrap_or_else(|| "info".into()),
            rate_limit_per_min: number(&get, "AFFINITY_RATE_LIMIT_PER_MIN", 60)?,
            max_artifact_bytes: number(
                &get,
                "AFFINITY_MAX_ARTIFACT_BYTES",
                crate::loader::DEFAULT_MAX_ARTIFACT_BYTES,
            )?,
            on_lambda,
            retrain_function: get("AFFINITY_RETRAIN_FUNCTION").filter(|f| !f.trim().is_empty()),
            retrain,
        })
    }

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

fn number<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| Error::setting(name, format!("{v:?}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_are_local_and_pretty() {
        let s = Settings::from_lookup(lookup(&[])).unwrap();
        assert!(!s.on_lambda);
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!(s.addr.port(), 8080);
        assert_eq!(s.model_check, Duration::from_secs(30));
        assert_eq!(s.limits, Limits::default());
    }

    #[test]
    fn lambda_means_json_logs() {
        let s = Settings::from_lookup(lookup(&[
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("AFFINITY_MODEL_CHECK_SECS", "5"),
            ("AFFINITY_MAX_BATCH", "10"),
        ]))
        .unwrap();
        assert!(s.on_lambda);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.model_check, Duration::from_secs(5));
        assert_eq!(s.limits.max_batch, 10);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("AFFINITY_ADDR", "nowhere"),
            ("AFFINITY_MODEL_CHECK_SECS", "-1"),
            ("AFFINITY_MAX_BATCH", "0"),
            ("AFFINITY_LOG_FORMAT", "xml"),
            ("AFFINITY_LOG_HASH_KEY", "zz"),
            ("AFFINITY_BACKEND", "cloud"),
        ] {
            let err = Settings::from_lookup(lookup(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(k) || k == "AFFINITY_BACKEND", "{k}: {err}");
        }
    }
}
