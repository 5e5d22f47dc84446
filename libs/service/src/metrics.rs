//! CloudWatch metrics in the embedded metric format (EMF): one JSON line per observation on
//! standard output, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics.
//! No API call and no IAM permission are needed. The alarms of infra/template.yaml watch
//! these names; a test checks every alarm on this namespace against what is emitted here.
//!
//! Emitted (namespace `AFFINITY_METRICS_NAMESPACE`, dimension `Stack` = `AFFINITY_STACK`):
//! - [`MODEL_AGE`] (seconds since the live version was registered): by the API at most once a
//!   minute per tenant while it serves, and by every retrain run when it ends;
//! - [`REQUEST_LATENCY`] (milliseconds) and [`REQUEST_ERRORS`] (count of 5xx), per request,
//!   also with dimension `Route` (the route template);
//! - [`RETRAIN_SUCCEEDED`] and [`RETRAIN_FAILED`] (count), per retrain run.
//!
//! Without a namespace (local runs) nothing is written.

use std::sync::Arc;

use serde_json::{Map, Value, json};

/// Age of the live model, in seconds.
pub const MODEL_AGE: &str = "ModelAgeSeconds";
/// Server time of one request, in milliseconds.
pub const REQUEST_LATENCY: &str = "RequestLatency";
/// 1 for a request answered with a 5xx, else 0.
pub const REQUEST_ERRORS: &str = "RequestErrors";
/// 1 per retrain run that ended without error (promoted or not).
pub const RETRAIN_SUCCEEDED: &str = "RetrainSucceeded";
/// 1 per retrain run that failed.
pub const RETRAIN_FAILED: &str = "RetrainFailed";
/// The dimension every metric carries: which stack emitted it.
pub const STACK_DIMENSION: &str = "Stack";
/// The extra dimension of the request metrics.
pub const ROUTE_DIMENSION: &str = "Route";

/// Where the metrics go (see [`crate::config::Config::metrics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// CloudWatch namespace (`AFFINITY_METRICS_NAMESPACE`); None turns metrics off.
    pub namespace: Option<String>,
    /// Value of the `Stack` dimension (`AFFINITY_STACK`, default `local`).
    pub stack: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            stack: "local".into(),
        }
    }
}

/// Receives each EMF line (standard output in production, a buffer in tests).
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// The metric writer handlers and the retrain pipeline share; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    namespace: String,
    stack: String,
    sink: Sink,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field(
                "namespace",
                &self.inner.as_ref().map(|i| i.namespace.as_str()),
            )
            .finish()
    }
}

impl Metrics {
    /// Metrics to standard output when `config` names a namespace, else none.
    pub fn new(config: &MetricsConfig) -> Self {
        Self::with_sink(
            config,
            Arc::new(|line: &str| {
                use std::io::Write;
                // One write of the whole line, so log lines written meanwhile cannot split it.
                let _ = std::io::stdout()
                    .lock()
                    .write_all(format!("{line}\n").as_bytes());
            }),
        )
    }

    /// Metrics to `sink` when `config` names a namespace, else none.
    pub fn with_sink(config: &MetricsConfig, sink: Sink) -> Self {
        Self {
            inner: config.namespace.as_ref().map(|namespace| {
                Arc::new(Inner {
                    namespace: namespace.clone(),
                    stack: config.stack.clone(),
                    sink,
                })
            }),
        }
    }

    /// True when lines are written.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// One answered request.
    pub fn request(&self, route: &str, latency_ms: f64, server_error: bool) {
        self.emit(
            &[(ROUTE_DIMENSION, route)],
            &[
                (REQUEST_LATENCY, latency_ms, "Milliseconds"),
                (REQUEST_ERRORS, f64::from(u8::from(server_error)), "Count"),
            ],
        );
    }

    /// The live model's age.
    pub fn model_age(&self, seconds: f64) {
        self.emit(&[], &[(MODEL_AGE, seconds.max(0.0), "Seconds")]);
    }

    /// The end of one retrain run.
    pub fn retrain(&self, succeeded: bool) {
        self.emit(
            &[],
            &[
                (RETRAIN_SUCCEEDED, f64::from(u8::from(succeeded)), "Count"),
                (RETRAIN_FAILED, f64::from(u8::from(!succeeded)), "Count"),
            ],
        );
    }

    fn emit(&self, extra: &[(&str, &str)], values: &[(&str, f64, &str)]) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut dims = vec![STACK_DIMENSION];
        dims.extend(extra.iter().map(|(k, _)| *k));
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": chrono::Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": inner.namespace,
                    "Dimensions": [dims],
                    "Metrics": values.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
                }],
            }),
        );
        doc.insert(STACK_DIMENSION.into(), Value::from(inner.stack.as_str()));
        for (k, v) in extra {
            doc.insert((*k).into(), Value::from(*v));
        }
        for (name, v, _) in values {
            doc.insert((*name).into(), Value::from(*v));
        }
        (inner.sink)(&Value::Object(doc).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn capture() -> (Metrics, Arc<Mutex<Vec<Value>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let config = MetricsConfig {
            namespace: Some("Affinity".into()),
            stack: "prod".into(),
        };
        let m = Metrics::with_sink(
            &config,
            Arc::new(move |l: &str| {
                sink_lines
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(l).unwrap())
            }),
        );
        (m, lines)
    }

    #[test]
    fn lines_follow_the_embedded_metric_format() {
        let (m, lines) = capture();
        m.request("/v1/items/{item_id}/similar", 1.5, false);
        m.model_age(3600.0);
        m.retrain(false);
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 3);
        let req = &lines[0];
        let meta = &req["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(meta["Namespace"], "Affinity");
        assert_eq!(meta["Dimensions"], json!([["Stack", "Route"]]));
        assert_eq!(req["Stack"], "prod");
        assert_eq!(req["Route"], "/v1/items/{item_id}/similar");
        assert_eq!(req[REQUEST_LATENCY], 1.5);
        assert_eq!(req[REQUEST_ERRORS], 0.0);
        assert!(req["_aws"]["Timestamp"].as_i64().unwrap() > 0);
        assert_eq!(lines[1][MODEL_AGE], 3600.0);
        assert_eq!(
            lines[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Stack"]])
        );
        assert_eq!(lines[2][RETRAIN_FAILED], 1.0);
        assert_eq!(lines[2][RETRAIN_SUCCEEDED], 0.0);
    }

    #[test]
    fn without_a_namespace_nothing_is_written() {
        let config = MetricsConfig::default();
        assert_eq!(config.stack, "local");
        let m = Metrics::with_sink(&config, Arc::new(|_: &str| panic!("written")));
        assert!(!m.enabled());
        m.request("/v1/health", 1.0, true);
    }
}
