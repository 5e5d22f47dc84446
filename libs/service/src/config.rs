//! The one typed configuration loader of every binary (the api and retrain functions and the
//! CLI). Each setting is declared once, below, with its environment variable, its flag, its
//! default and its type, through clap's `env`; the binaries flatten [`Config`] into their
//! own arguments, so `--help` lists every setting with its variable and default. The values
//! are then turned into the store's [`Backend`], the retrain's [`RetrainSettings`] and the
//! service's [`Settings`], which check what one value alone cannot.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use affinity_store::Backend;
use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::error::{Error, Result};
use crate::metrics::MetricsConfig;
use crate::retrain::RetrainSettings;
use crate::settings::{Limits, LogFormat, Settings};

/// Which store the binary opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A SQLite file and a blob folder under `AFFINITY_DATA_DIR`.
    Embedded,
    /// DynamoDB tables and an S3 bucket (endpoint, region and credentials from the standard
    /// AWS environment).
    Aws,
    /// Everything in memory, gone when the process ends.
    Memory,
}

/// How logs are written, as configured (`auto`: JSON on Lambda, pretty elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatChoice {
    /// JSON on Lambda, pretty elsewhere.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Every setting of every binary, each with its variable, flag and default.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Settings (each flag also reads its environment variable)")]
pub struct Config {
    /// Where records and blobs live.
    #[arg(long, env = "AFFINITY_BACKEND", value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,
    /// Embedded store: the folder holding `affinity.db` and `blobs/`.
    #[arg(long, env = "AFFINITY_DATA_DIR", default_value = ".affinity")]
    pub data_dir: PathBuf,
    /// AWS store: prefix of every DynamoDB table name.
    #[arg(long, env = "AFFINITY_TABLE_PREFIX", default_value = "affinity-")]
    pub table_prefix: String,
    /// AWS store: the artifact bucket (required with `--backend aws`).
    #[arg(long, env = "AFFINITY_BUCKET")]
    pub bucket: Option<String>,
    /// AWS store: object key prefix inside the bucket.
    #[arg(long, env = "AFFINITY_BLOB_PREFIX", default_value = "")]
    pub blob_prefix: String,
    /// AWS store: days offer events are kept before DynamoDB's TTL removes them (empty or 0
    /// keeps them).
    #[arg(long, env = "AFFINITY_OFFER_EVENT_RETENTION_DAYS", default_value = "")]
    pub offer_event_retention_days: String,
    /// Address of the local HTTP server (not used on Lambda).
    #[arg(long, env = "AFFINITY_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Seconds between checks of the live-model pointer and the catalog snapshot.
    #[arg(long, env = "AFFINITY_MODEL_CHECK_SECS", default_value_t = 30)]
    pub model_check_secs: u64,
    /// Seconds a verified API key is trusted before it is looked up again.
    #[arg(long, env = "AFFINITY_KEY_CACHE_SECS", default_value_t = 30)]
    pub key_cache_secs: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "AFFINITY_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Most rows in one ingestion batch.
    #[arg(long, env = "AFFINITY_MAX_BATCH", default_value_t = Limits::default().max_batch)]
    pub max_batch: usize,
    /// Most items in one basket.
    #[arg(long, env = "AFFINITY_MAX_BASKET", default_value_t = Limits::default().max_basket)]
    pub max_basket: usize,
    /// Most ids in an exclude list.
    #[arg(long, env = "AFFINITY_MAX_EXCLUDE", default_value_t = Limits::default().max_exclude)]
    pub max_exclude: usize,
    /// Purchases of a customer read for fold-in, newest first.
    #[arg(long, env = "AFFINITY_HISTORY", default_value_t = Limits::default().history)]
    pub history: usize,
    /// Log filter, e.g. `info` or `affinity_service=debug`.
    #[arg(long, env = "AFFINITY_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, env = "AFFINITY_LOG_FORMAT", value_enum, default_value_t = LogFormatChoice::Auto)]
    pub log_format: LogFormatChoice,
    /// Key of the keyed customer hash in logs and erasure audit records (hex); random per
    /// process when unset. Every process of a deployment must share it.
    #[arg(long, env = "AFFINITY_LOG_HASH_KEY", hide_env_values = true)]
    pub log_hash_key: Option<String>,
    /// Requests a key may make per minute to each expensive route group on one instance
    /// (audience, dry run, reports, batch offers); 0 turns the limit off.
    #[arg(long, env = "AFFINITY_RATE_LIMIT_PER_MIN", default_value_t = 60)]
    pub rate_limit_per_min: u32,
    /// Largest model artifact an instance loads; a larger live one is served by an earlier
    /// version instead.
    #[arg(long, env = "AFFINITY_MAX_ARTIFACT_BYTES", default_value_t = crate::loader::DEFAULT_MAX_ARTIFACT_BYTES)]
    pub max_artifact_bytes: u64,
    /// Lambda function `POST /v1/models:retrain` invokes; unset retrains in this process.
    #[arg(long, env = "AFFINITY_RETRAIN_FUNCTION")]
    pub retrain_function: Option<String>,
    /// Promotion gate: how much worse than the live model a candidate may score.
    #[arg(long, env = "AFFINITY_GATE_TOLERANCE")]
    pub gate_tolerance: Option<f64>,
    /// Promotion gate: holdout customers needed before the gate trusts the comparison.
    #[arg(long, env = "AFFINITY_GATE_MIN_CUSTOMERS")]
    pub gate_min_customers: Option<usize>,
    /// Holdout customers evaluated at most (a seeded sample).
    #[arg(long, env = "AFFINITY_HOLDOUT_CUSTOMERS")]
    pub holdout_customers: Option<usize>,
    /// Lease of the retrain lock in seconds; renewed every third of it.
    #[arg(long, env = "AFFINITY_RETRAIN_LEASE_SECONDS")]
    pub retrain_lease_seconds: Option<u64>,
    /// Parallel readers of the purchase scan (DynamoDB segments).
    #[arg(long, env = "AFFINITY_SCAN_SEGMENTS")]
    pub scan_segments: Option<u32>,
    /// ALS alternations of the final fit, continued from the candidate (0: from scratch).
    #[arg(long, env = "AFFINITY_REFIT_ITERATIONS")]
    pub refit_iterations: Option<usize>,
    /// CloudWatch namespace of the EMF metrics; unset writes none.
    #[arg(long, env = "AFFINITY_METRICS_NAMESPACE")]
    pub metrics_namespace: Option<String>,
    /// Value of the metrics' `Stack` dimension.
    #[arg(long, env = "AFFINITY_STACK", default_value = "local")]
    pub stack: String,
    /// Set by Lambda: the runtime API this process polls for invocations.
    #[arg(long, env = "AWS_LAMBDA_RUNTIME_API", hide = true)]
    pub lambda_runtime_api: Option<String>,
}

/// A binary whose only arguments are the settings.
#[derive(Debug, Parser)]
#[command(name = "affinity")]
struct SettingsOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The settings as `get` gives them, ignoring the process environment: tests, and checks
    /// of the deployment template's environment. An empty value counts as set, as it does
    /// in the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let command = SettingsOnly::command();
        let mut argv = vec![OsString::from("affinity")];
        for arg in command.get_arguments() {
            let (Some(name), Some(long)) = (arg.get_env().and_then(|e| e.to_str()), arg.get_long())
            else {
                continue;
            };
            if let Some(value) = get(name) {
                argv.push(format!("--{long}={value}").into());
            }
        }
        let command = command.mut_args(|a| a.env(clap::builder::Resettable::Reset));
        command
            .try_get_matches_from(argv)
            .and_then(|m| SettingsOnly::from_arg_matches(&m))
            .map(|s| s.config)
            .map_err(|e| clap_error(&e))
    }

    /// Every environment variable a setting reads: the docs and the deployment template are
    /// checked against this list.
    pub fn variables() -> Vec<String> {
        SettingsOnly::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    /// True inside AWS Lambda.
    pub fn on_lambda(&self) -> bool {
        self.lambda_runtime_api
            .as_deref()
            .is_some_and(|v| !v.is_empty())
    }

    /// The store to open.
    pub fn backend(&self) -> Result<Backend> {
        let store = |step, source| Error::Store { step, source };
        match self.backend {
            BackendKind::Embedded => Ok(Backend::embedded(&self.data_dir)),
            BackendKind::Memory => Ok(Backend::Memory),
            BackendKind::Aws => {
                let bucket = self
                    .bucket
                    .clone()
                    .filter(|b| !b.trim().is_empty())
                    .ok_or_else(|| {
                        Error::setting("AFFINITY_BUCKET", "must be set when AFFINITY_BACKEND=aws")
                    })?;
                let retention =
                    affinity_store::parse_retention_days(&self.offer_event_retention_days)
                        .map_err(|e| {
                            Error::setting("AFFINITY_OFFER_EVENT_RETENTION_DAYS", e.to_string())
                        })?;
                Backend::aws(
                    self.table_prefix.clone(),
                    bucket,
                    self.blob_prefix.clone(),
                    retention,
                )
                .map_err(|e| store("read backend settings", e))
            }
        }
    }

    /// Where run outcomes and the live model's age are reported.
    pub fn metrics(&self) -> MetricsConfig {
        MetricsConfig {
            namespace: self
                .metrics_namespace
                .clone()
                .filter(|n| !n.trim().is_empty()),
            stack: Some(self.stack.clone())
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "local".into()),
        }
    }

    /// The retrain pipeline's settings: defaults, overridden by what is set, validated.
    pub fn retrain(&self) -> Result<RetrainSettings> {
        let mut s = RetrainSettings::default();
        if let Some(t) = self.gate_tolerance {
            s.gate.tolerance = t;
        }
        if let Some(n) = self.gate_min_customers {
            s.gate.min_customers = n;
        }
        if let Some(n) = self.holdout_customers {
            s.holdout.max_customers = n;
        }
        if let Some(secs) = self.retrain_lease_seconds {
            s.lease = Duration::from_secs(secs);
        }
        if let Some(n) = self.scan_segments {
            s.scan_segments = n;
        }
        if let Some(n) = self.refit_iterations {
            s.refit_iterations = n;
        }
        s.metrics = self.metrics();
        s.hash_key = self.hash_key()?;
        s.validate()?;
        Ok(s)
    }

    /// The keyed customer hash's key, if one is configured.
    pub fn hash_key(&self) -> Result<Option<Vec<u8>>> {
        match self.log_hash_key.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(k) => hex::decode(k).map(Some).map_err(|_| {
                Error::setting(
                    "AFFINITY_LOG_HASH_KEY",
                    "must be hex (e.g. 32 random bytes)",
                )
            }),
        }
    }

    /// Everything the api reads, checked together.
    pub fn settings(&self) -> Result<Settings> {
        let limits = Limits {
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
            max_basket: self.max_basket,
            max_exclude: self.max_exclude,
            history: self.history,
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
        let on_lambda = self.on_lambda();
        let log_format = match self.log_format {
            LogFormatChoice::Json => LogFormat::Json,
            LogFormatChoice::Pretty => LogFormat::Pretty,
            LogFormatChoice::Auto if on_lambda => LogFormat::Json,
            LogFormatChoice::Auto => LogFormat::Pretty,
        };
        Ok(Settings {
            backend: self.backend()?,
            addr: self.addr,
            model_check: Duration::from_secs(self.model_check_secs),
            key_cache: Duration::from_secs(self.key_cache_secs),
            limits,
            log_format,
            log_filter: self.log.clone(),
            rate_limit_per_min: self.rate_limit_per_min,
            max_artifact_bytes: self.max_artifact_bytes,
            on_lambda,
            retrain_function: self
                .retrain_function
                .clone()
                .filter(|f| !f.trim().is_empty()),
            retrain: self.retrain()?,
        })
    }
}

/// Parses a binary's arguments, and with them every setting: prints the help or the version
/// and exits when asked for them, and reports a refused value under its variable.
pub fn parse_args<P: Parser>() -> Result<P> {
    use clap::error::ErrorKind;
    P::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => error_of(&P::command(), &e),
    })
}

/// A value clap refused, reported under the environment variable it belongs to.
fn clap_error(e: &clap::Error) -> Error {
    error_of(&SettingsOnly::command(), e)
}

fn error_of(command: &clap::Command, e: &clap::Error) -> Error {
    use clap::error::{ContextKind, ContextValue};
    let reason = e
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let long = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s
            .trim_start_matches("--")
            .split([' ', '='])
            .next()
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()));
    let name = match arg {
        Some(a) => a
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("--{long}")),
        None => "arguments".into(),
    };
    Error::setting(name, reason)
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

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings> {
        Config::from_lookup(lookup(pairs))?.settings()
    }

    #[test]
    fn defaults_are_local_and_pretty() {
        let s = settings(&[]).unwrap();
        assert!(!s.on_lambda);
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!(s.addr.port(), 8080);
        assert_eq!(s.model_check, Duration::from_secs(30));
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.retrain, RetrainSettings::default());
    }

    #[test]
    fn lambda_means_json_logs() {
        let s = settings(&[
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("AFFINITY_MODEL_CHECK_SECS", "5"),
            ("AFFINITY_MAX_BATCH", "10"),
        ])
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
            ("AFFINITY_MAX_BASKET", ""),
            ("AFFINITY_LOG_FORMAT", "xml"),
            ("AFFINITY_LOG_HASH_KEY", "zz"),
            ("AFFINITY_BACKEND", "cloud"),
            ("AFFINITY_GATE_TOLERANCE", "lots"),
            ("AFFINITY_OFFER_EVENT_RETENTION_DAYS", "forever"),
        ] {
            let mut pairs = vec![(k, v)];
            if k == "AFFINITY_OFFER_EVENT_RETENTION_DAYS" {
                pairs.extend([("AFFINITY_BACKEND", "aws"), ("AFFINITY_BUCKET", "b")]);
            }
            let err = settings(&pairs).unwrap_err().to_string();
            assert!(err.contains(k), "{k}: {err}");
        }
    }

    #[test]
    fn the_process_environment_is_not_read_by_a_lookup() {
        // A lookup that sets nothing gives the defaults, whatever the test process has set.
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.backend, BackendKind::Embedded);
        assert_eq!(c.lambda_runtime_api, None);
    }

    #[test]
    fn every_setting_has_one_variable_and_a_flag() {
        let vars = Config::variables();
        let mut unique = vars.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), vars.len(), "{vars:?}");
        for arg in SettingsOnly::command().get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "{} reads no variable",
                arg.get_id()
            );
            assert!(arg.get_long().is_some(), "{} has no flag", arg.get_id());
        }
        assert!(vars.iter().any(|v| v == "AFFINITY_BACKEND"));
    }

    #[test]
    fn backend_defaults_to_embedded() {
        let b = Config::from_lookup(lookup(&[])).unwrap().backend().unwrap();
        assert_eq!(
            b,
            Backend::Embedded {
                db_path: ".affinity/affinity.db".into(),
                blob_dir: ".affinity/blobs".into()
            }
        );
    }

    #[test]
    fn aws_backend_needs_a_bucket() {
        let backend = |pairs: &[(&str, &str)]| Config::from_lookup(lookup(pairs))?.backend();
        assert!(backend(&[("AFFINITY_BACKEND", "aws")]).is_err());
        assert!(backend(&[("AFFINITY_BACKEND", "aws"), ("AFFINITY_BUCKET", "")]).is_err());
        let b = backend(&[
            ("AFFINITY_BACKEND", "aws"),
            ("AFFINITY_BUCKET", "artifacts"),
            ("AFFINITY_TABLE_PREFIX", "shop-"),
        ])
        .unwrap();
        assert_eq!(
            b,
            Backend::Aws {
                table_prefix: "shop-".into(),
                bucket: "artifacts".into(),
                blob_prefix: String::new(),
                offer_event_retention_days: None,
            }
        );
        assert!(backend(&[("AFFINITY_BACKEND", "cloud")]).is_err());
        assert!(
            backend(&[
                ("AFFINITY_BACKEND", "aws"),
                ("AFFINITY_BUCKET", "artifacts"),
                ("AFFINITY_TABLE_PREFIX", "no spaces please"),
            ])
            .is_err()
        );
    }

    #[test]
    fn offer_event_retention_is_opt_in_and_validated() {
        let with = |days: &str| {
            Config::from_lookup(lookup(&[
                ("AFFINITY_BACKEND", "aws"),
                ("AFFINITY_BUCKET", "artifacts"),
                ("AFFINITY_OFFER_EVENT_RETENTION_DAYS", days),
            ]))?
            .backend()
        };
        let days = |b: Backend| match b {
            Backend::Aws {
                offer_event_retention_days,
                ..
            } => offer_event_retention_days,
            other => panic!("not aws: {other:?}"),
        };
        assert_eq!(days(with("400").unwrap()), Some(400));
        assert_eq!(days(with(" 730 ").unwrap()), Some(730));
        assert_eq!(days(with("0").unwrap()), None);
        assert_eq!(days(with("").unwrap()), None);
        for bad in ["-1", "1.5", "forever", "36501"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("AFFINITY_OFFER_EVENT_RETENTION_DAYS"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn retrain_settings_come_from_the_environment() {
        let retrain = |pairs: &[(&str, &str)]| Config::from_lookup(lookup(pairs))?.retrain();
        let s = retrain(&[
            ("AFFINITY_GATE_TOLERANCE", "0.05"),
            ("AFFINITY_RETRAIN_LEASE_SECONDS", "60"),
            ("AFFINITY_REFIT_ITERATIONS", "0"),
            ("AFFINITY_METRICS_NAMESPACE", "Affinity"),
            ("AFFINITY_LOG_HASH_KEY", "0a0b"),
        ])
        .unwrap();
        assert_eq!(s.gate.tolerance, 0.05);
        assert_eq!(s.lease, Duration::from_secs(60));
        assert_eq!(s.refit_iterations, 0, "0 asks for a final fit from scratch");
        assert_eq!(s.metrics.namespace.as_deref(), Some("Affinity"));
        assert_eq!(s.metrics.stack, "local");
        assert_eq!(s.hash_key, Some(vec![10, 11]));
        assert_eq!(RetrainSettings::default().refit_iterations, 3);
        assert!(retrain(&[("AFFINITY_REFIT_ITERATIONS", "1000")]).is_err());
        assert!(retrain(&[("AFFINITY_GATE_TOLERANCE", "lots")]).is_err());
        assert!(retrain(&[("AFFINITY_GATE_TOLERANCE", "2")]).is_err());
        let off = retrain(&[("AFFINITY_METRICS_NAMESPACE", " ")]).unwrap();
        assert_eq!(off.metrics.namespace, None, "blank turns metrics off");
    }
}
