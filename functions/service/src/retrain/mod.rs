//! The retrain pipeline: one function, [`run_once`], behind the scheduled retrain function,
//! `affinity train` and `POST /v1/models:retrain`.
//!
//! Steps ([`Step`]): take the tenant's lock (a lease, renewed in the background) -> stream
//! every purchase into an interactions builder -> build the interactions and carve the
//! holdout (each sampled customer's latest purchases) -> optionally tune on a validation
//! split carved from the training part only -> fit the candidate without the holdout ->
//! evaluate candidate, live model and popularity on that same holdout -> gate -> train the
//! final model on all the data (neighbours and index included) -> compute the customer
//! insight snapshot (profiles, tiers, P(alive), CLV, repurchase intervals; `crm`) and store
//! it beside the artifact, keyed by the version -> write the artifact under
//! its content address -> register the version with parameters, counts, metrics and the
//! gate's decision -> flip the live pointer by compare-and-set -> finish the job, release
//! the lock.
//!
//! Why the final model is trained again on all data: the holdout is each customer's most
//! recent purchases, exactly what a recommender must not forget. The gate judges the
//! configuration on data it was not fitted on; the served model then learns from
//! everything. It does so by continuing the candidate's ALS for
//! [`RetrainSettings::refit_iterations`] alternations on all the data rather than fitting
//! from random factors again: the candidate has converged on everything but the holdout,
//! and a fit from scratch was half of the run's CPU (docs/scaling.md). A rejected version
//! gets its artifact too, so the team can inspect it and force it live later without
//! retraining.
//!
//! Crash safety: nothing visible to shoppers changes before the pointer flip, the flip is a
//! compare-and-set against the version evaluated, and a job id makes retried invocations
//! safe: a finished job is answered from the registry, an unfinished one whose version is
//! already registered is completed without training again, and a flip already done is
//! never repeated. See [`faults`] for the failure injection the tests drive.

pub mod faults;
pub mod gate;
pub mod invocation;
mod lease;
pub mod trigger;
pub mod versions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use affinity_model::artifact::digest;
use affinity_model::eval::{self, Holdout, Metrics};
use affinity_model::interactions::Interactions;
use affinity_model::model::{self, Model, Stage, TrainConfig};
use affinity_model::tune;
use affinity_store::{
    BlobKey, DataCounts, JobId, JobRecord, JobStart, JobStatus, LivePointer, ModelStatus,
    ModelVersion, ModelVersionId, Stores, TenantId,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::crm;
use crate::error::{Context, Error, Result};
use crate::training;
pub use faults::{FailPoint, Faults};
pub use gate::{Evaluation, GateConfig, GateDecision, LiveEvaluation, Verdict};
use lease::Lease;

/// The pipeline's steps, in order: timings, progress and fail points name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Take the tenant's retrain lock and open the job record.
    Lock,
    /// Stream every purchase and the catalog.
    Scan,
    /// Build the interaction matrix and carve the holdout.
    Interactions,
    /// Optional hyperparameter search on a validation split of the training part.
    Tune,
    /// Fit the candidate without the holdout.
    Fit,
    /// Candidate, live model and popularity on the holdout.
    Evaluate,
    /// Decide promotion.
    Gate,
    /// Fit the final model on all data, with neighbour lists and index.
    Train,
    /// Customer insight for the new version: profiles, tiers, P(alive), CLV, repurchase
    /// intervals and offer statistics, stored beside the artifact (see `crm`).
    Insight,
    /// Serialise and store the artifact under its checksum.
    Artifact,
    /// Register the version in the registry.
    Register,
    /// Compare-and-set of the live pointer.
    Flip,
    /// Finish the job record and release the lock.
    Release,
}

impl Step {
    /// Every step, in pipeline order.
    pub const ALL: [Step; 13] = [
        Step::Lock,
        Step::Scan,
        Step::Interactions,
        Step::Tune,
        Step::Fit,
        Step::Evaluate,
        Step::Gate,
        Step::Train,
        Step::Insight,
        Step::Artifact,
        Step::Register,
        Step::Flip,
        Step::Release,
    ];

    /// Stable lowercase name (logs, JSON, error messages).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Lock => "lock",
            Step::Scan => "scan",
            Step::Interactions => "interactions",
            Step::Tune => "tune",
            Step::Fit => "fit",
            Step::Evaluate => "evaluate",
            Step::Gate => "gate",
            Step::Train => "train",
            Step::Insight => "insight",
            Step::Artifact => "artifact",
            Step::Register => "register",
            Step::Flip => "flip",
            Step::Release => "release",
        }
    }

    /// What the step is doing, for progress displays.
    pub fn doing(self) -> &'static str {
        match self {
            Step::Lock => "taking the retrain lock",
            Step::Scan => "reading purchases",
            Step::Interactions => "building interactions",
            Step::Tune => "tuning hyperparameters",
            Step::Fit => "fitting the candidate",
            Step::Evaluate => "evaluating on the holdout",
            Step::Gate => "applying the promotion gate",
            Step::Train => "training on all data",
            Step::Insight => "computing customer profiles",
            Step::Artifact => "writing the artifact",
            Step::Register => "registering the version",
            Step::Flip => "flipping the live pointer",
            Step::Release => "releasing the lock",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the holdout is carved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutConfig {
    /// Share of each sampled customer's items held out (their latest).
    pub fraction: f64,
    /// Customers evaluated at most (a seeded sample): scoring costs customers x items.
    pub max_customers: usize,
    /// Seed of the customer sample.
    pub seed: u64,
    /// Cut-off of the metrics the gate reads (recall@k, NDCG@k).
    pub k: usize,
}

impl Default for HoldoutConfig {
    fn default() -> Self {
        Self {
            fraction: 0.2,
            max_customers: 20_000,
            seed: 42,
            k: 10,
        }
    }
}

/// Everything about retraining that is configuration, not request.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrainSettings {
    /// Base training configuration (a request's parameters override parts of it).
    pub train: TrainConfig,
    /// The promotion gate.
    pub gate: GateConfig,
    /// The holdout.
    pub holdout: HoldoutConfig,
    /// Lease of the retrain lock; renewed every third of it while the run is alive.
    pub lease: Duration,
    /// Parallel readers of the purchase scan (DynamoDB segments).
    pub scan_segments: u32,
    /// ALS alternations of the final fit on all data, continued from the candidate's factors;
    /// 0 fits the final model from random factors with the full iteration count instead.
    pub refit_iterations: usize,
    /// Key of the keyed customer hash (`AFFINITY_LOG_HASH_KEY`, hex): the customer-insight
    /// step drops customers erased while it ran by matching erasure audit hashes, so it must
    /// be the API's key. None: random per process (then only the API's second pass catches
    /// such an erasure).
    pub hash_key: Option<Vec<u8>>,
    /// Where run outcomes and the live model's age are reported (EMF).
    pub metrics: crate::metrics::MetricsConfig,
}

impl Default for RetrainSettings {
    fn default() -> Self {
        Self {
            train: TrainConfig::default(),
            gate: GateConfig::default(),
            holdout: HoldoutConfig::default(),
            lease: Duration::from_secs(120),
            scan_segments: training::SCAN_SEGMENTS,
            refit_iterations: 3,
            hash_key: None,
            metrics: crate::metrics::MetricsConfig::default(),
        }
    }
}

impl RetrainSettings {
    /// Defaults overridden by `AFFINITY_GATE_TOLERANCE`, `AFFINITY_GATE_MIN_CUSTOMERS`,
    /// `AFFINITY_HOLDOUT_CUSTOMERS`, `AFFINITY_RETRAIN_LEASE_SECONDS`,
    /// `AFFINITY_SCAN_SEGMENTS`, `AFFINITY_REFIT_ITERATIONS`, `AFFINITY_LOG_HASH_KEY`,
    /// `AFFINITY_METRICS_NAMESPACE` and `AFFINITY_STACK`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Same as `from_env` with an injectable lookup (tests must not mutate the process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn parse<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            key: &str,
        ) -> Result<Option<T>> {
            get(key)
                .map(|v| {
                    v.trim().parse::<T>().map_err(|_| Error::Invalid {
                        field: key.to_owned(),
                        reason: format!("{v:?} is not a valid value"),
                    })
                })
                .transpose()
        }
        let mut s = Self::default();
        if let Some(t) = parse(&get, "AFFINITY_GATE_TOLERANCE")? {
            s.gate.tolerance = t;
        }
        if let Some(n) = parse(&get, "AFFINITY_GATE_MIN_CUSTOMERS")? {
            s.gate.min_customers = n;
        }
        if let Some(n) = parse(&get, "AFFINITY_HOLDOUT_CUSTOMERS")? {
            s.holdout.max_customers = n;
        }
        if let Some(secs) = parse::<u64>(&get, "AFFINITY_RETRAIN_LEASE_SECONDS")? {
            s.lease = Duration::from_secs(secs);
        }
        if let Some(n) = parse(&get, "AFFINITY_SCAN_SEGMENTS")? {
            s.scan_segments = n;
        }
        if let Some(n) = parse(&get, "AFFINITY_REFIT_ITERATIONS")? {
            s.refit_iterations = n;
        }
        s.metrics = crate::metrics::MetricsConfig::from_lookup(&get);
        if let Some(k) = get("AFFINITY_LOG_HASH_KEY").filter(|k| !k.is_empty()) {
            s.hash_key = Some(hex::decode(k.trim()).map_err(|_| Error::Invalid {
                field: "AFFINITY_LOG_HASH_KEY".into(),
                reason: "must be hex (e.g. 32 random bytes)".into(),
            })?);
        }
        s.validate()?;
        Ok(s)
    }

    /// Refuses settings the pipeline cannot honour.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::Invalid {
                field: field.to_owned(),
                reason,
            })
        };
        if let Err(reason) = self.gate.validate() {
            return bad("gate", reason);
        }
        let h = &self.holdout;
        if !(h.fraction > 0.0 && h.fraction < 1.0) {
            return bad(
                "holdout.fraction",
                format!("must be in (0, 1), got {}", h.fraction),
            );
        }
        if h.max_customers == 0 || !(1..=100).contains(&h.k) {
            return bad(
                "holdout",
                "max_customers must be positive and k in 1..=100".into(),
            );
        }
        if self.lease < Duration::from_millis(300) || self.lease > Duration::from_secs(3600) {
            return bad(
                "lease",
                format!("must be between 0.3 s and 1 h, got {:?}", self.lease),
            );
        }
        if !(1..=64).contains(&self.scan_segments) {
            return bad(
                "scan_segments",
                format!("must be in 1..=64, got {}", self.scan_segments),
            );
        }
        if self.refit_iterations > 100 {
            return bad(
                "refit_iterations",
                format!("must be in 0..=100, got {}", self.refit_iterations),
            );
        }
        Ok(())
    }
}

/// Training parameters a request may override; anything absent keeps the settings' value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Embedding dimension (1..=1024).
    #[schema(minimum = 1, maximum = 1024)]
    pub factors: Option<usize>,
    /// ALS iterations (1..=1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub iterations: Option<usize>,
    /// L2 regularisation (finite, >= 0).
    #[schema(minimum = 0, maximum = 3.402_823_466_385_288_6e38)]
    pub regularization: Option<f32>,
    /// Confidence scale (finite, > 0).
    #[schema(exclusive_minimum = 0, maximum = 3.402_823_466_385_288_6e38)]
    pub alpha: Option<f32>,
    /// Frequency scaling exponent of the regulariser (0..=2).
    #[schema(minimum = 0, maximum = 2)]
    pub reg_exponent: Option<f32>,
    /// Half-life of a purchase's weight in days (> 0).
    #[schema(exclusive_minimum = 0)]
    pub half_life_days: Option<f64>,
    /// Neighbours precomputed per item (1..=500).
    #[schema(minimum = 1, maximum = 500)]
    pub neighbours: Option<usize>,
}

impl TrainParams {
    /// The base configuration with these overrides, validated.
    pub fn apply(&self, base: &TrainConfig) -> Result<TrainConfig> {
        let mut c = base.clone();
        if let Some(v) = self.factors {
            c.als.factors = v;
        }
        if let Some(v) = self.iterations {
            c.als.iterations = v;
        }
        if let Some(v) = self.regularization {
            c.als.regularization = v;
        }
        if let Some(v) = self.alpha {
            c.als.alpha = v;
        }
        if let Some(v) = self.reg_exponent {
            c.als.reg_exponent = v;
        }
        if let Some(v) = self.half_life_days {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Invalid {
                    field: "half_life_days".into(),
                    reason: format!("must be a positive number of days, got {v}"),
                });
            }
            c.weighting.half_life_days = Some(v);
        }
        if let Some(v) = self.neighbours {
            if !(1..=500).contains(&v) {
                return Err(Error::Invalid {
                    field: "neighbours".into(),
                    reason: format!("must be between 1 and 500, got {v}"),
                });
            }
            c.neighbours = v;
        }
        c.als.validate().map_err(|e| match e {
            affinity_model::Error::InvalidParameter { name, reason } => Error::Invalid {
                field: name.to_owned(),
                reason,
            },
            other => Error::Invalid {
                field: "params".into(),
                reason: other.to_string(),
            },
        })?;
        Ok(c)
    }
}

/// A request for a hyperparameter search before the fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TuneRequest {
    /// Wall-clock budget of the search (1..=3600 seconds); the trial running when it ends
    /// completes.
    #[schema(minimum = 1, maximum = 3600)]
    pub budget_seconds: u64,
}

impl TuneRequest {
    /// Largest budget accepted: the search must leave time for the rest of the run.
    pub const MAX_BUDGET_SECONDS: u64 = 3600;
}

/// One retrain request.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrainRequest {
    /// Tenant to retrain.
    pub tenant: TenantId,
    /// Idempotency key: a retried invocation passes the same id. None: a fresh id.
    pub job_id: Option<JobId>,
    /// Promote even if the gate rejects the candidate (recorded as such).
    pub force: bool,
    /// Training parameter overrides.
    pub params: TrainParams,
    /// Tune hyperparameters first, within a budget.
    pub tune: Option<TuneRequest>,
}

impl RetrainRequest {
    /// A plain scheduled-style request: no overrides, no force, fresh job id.
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            job_id: None,
            force: false,
            params: TrainParams::default(),
            tune: None,
        }
    }
}

/// Progress reports, for progress bars and logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// A step begins.
    Step(Step),
    /// An ALS iteration of the fit or the final training finished.
    Iteration {
        /// [`Step::Fit`], [`Step::Train`] or [`Step::Tune`].
        step: Step,
        /// Iterations done.
        n: usize,
        /// Iterations in total.
        of: usize,
    },
}

/// Receives [`Progress`] reports (from worker threads too).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What the pipeline works with: stores, settings, fail points and a progress sink.
#[derive(Clone)]
pub struct RetrainDeps {
    /// Records and blobs.
    pub stores: Stores,
    /// Configuration.
    pub settings: RetrainSettings,
    /// Armed fail points (none in production).
    pub faults: Faults,
    /// Progress sink.
    pub progress: ProgressFn,
    /// Run outcomes and the live model's age (EMF; off without a namespace).
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for RetrainDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrainDeps")
            .field("settings", &self.settings)
            .field("faults", &self.faults)
            .finish()
    }
}

impl RetrainDeps {
    /// Production wiring: no fail points, no progress output.
    pub fn new(stores: Stores, settings: RetrainSettings) -> Self {
        Self {
            stores,
            metrics: crate::metrics::Metrics::new(&settings.metrics),
            settings,
            faults: Faults::none(),
            progress: Arc::new(|_| {}),
        }
    }

    /// With fail points armed.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// With a progress sink.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = progress;
        self
    }
}

/// Wall time of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepTime {
    /// The step.
    pub step: Step,
    /// Seconds spent in it.
    pub seconds: f64,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// Tenant.
    pub tenant: String,
    /// The job (idempotency key).
    pub job_id: JobId,
    /// The version this job produced.
    pub version: ModelVersionId,
    /// The gate's verdict.
    pub verdict: Verdict,
    /// The gate's reason.
    pub reason: String,
    /// Whether `force` was asked for.
    pub forced: bool,
    /// The version live after the run.
    pub live: Option<ModelVersionId>,
    /// The version this run took out of service, if it flipped the pointer.
    pub replaced: Option<ModelVersionId>,
    /// Where the artifact is (tenant-relative blob key).
    pub artifact_key: BlobKey,
    /// SHA-256 of the artifact.
    pub checksum: String,
    /// Holdout metrics of candidate, live model and popularity.
    pub evaluation: Evaluation,
    /// Training data sizes.
    pub counts: DataCounts,
    /// Wall time per step (empty for a replayed job).
    pub timings: Vec<StepTime>,
    /// A retried job that had finished already: answered from the registry, nothing ran.
    pub replayed: bool,
    /// A retried job whose version was already registered: completed without training.
    pub resumed: bool,
}

/// The training side of a registry entry (`ModelVersion::params`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionParams {
    /// The configuration the model was trained with.
    pub config: TrainConfig,
    /// The job that produced it.
    pub job_id: String,
    /// How the gate's holdout was carved.
    pub holdout: HoldoutConfig,
    /// Distinct (customer, item) pairs trained on.
    pub pairs: u64,
    /// Newest purchase included.
    pub data_watermark: Option<DateTime<Utc>>,
    /// The hyperparameter search, if one ran.
    pub tuning: Option<TuningSummary>,
}

/// What a hyperparameter search tried and chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuningSummary {
    /// The budget it had.
    pub budget_seconds: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Trials run (at most [`MAX_RECORDED_TRIALS`] are kept).
    pub trials: Vec<tune::Trial>,
    /// Configurations tried in all.
    pub tried: usize,
}

/// Trials kept in a registry entry (the entry has a size limit).
pub const MAX_RECORDED_TRIALS: usize = 40;

/// The evaluation side of a registry entry (`ModelVersion::metrics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMetrics {
    /// Holdout metrics.
    pub evaluation: Evaluation,
    /// The gate's decision.
    pub gate: GateDecision,
    /// Recall of candidate and popularity at several cut-offs on the same holdout (the
    /// report's curve). Absent from entries registered before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<RecallCurve>,
}

/// Cut-offs of the recorded recall@k curve.
pub const CURVE_KS: [usize; 5] = [1, 5, 10, 20, 50];

/// Recall@k of the candidate against popularity for a few k, on the gate's holdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallCurve {
    /// One point per cut-off, ascending k.
    pub points: Vec<CurvePoint>,
}

/// One cut-off of a [`RecallCurve`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Cut-off.
    pub k: usize,
    /// The candidate's recall@k.
    pub candidate: f64,
    /// Popularity's recall@k.
    pub popularity: f64,
}

/// The cut-offs to rank at: the curve's and the gate's `k`, ascending, once each.
fn evaluation_ks(k: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = CURVE_KS.iter().copied().chain([k]).collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Metrics at `k` out of metrics computed at `ks` (the gate's `k` is always among them).
fn at_k(ks: &[usize], metrics: &[Metrics], k: usize) -> Metrics {
    ks.iter()
        .position(|&x| x == k)
        .and_then(|i| metrics.get(i).cloned())
        .unwrap_or_default()
}

/// The curve's points out of metrics computed at `ks`.
fn recall_curve(ks: &[usize], candidate: &[Metrics], popularity: &[Metrics]) -> RecallCurve {
    RecallCurve {
        points: CURVE_KS
            .iter()
            .map(|&k| CurvePoint {
                k,
                candidate: at_k(ks, candidate, k).recall,
                popularity: at_k(ks, popularity, k).recall,
            })
            .collect(),
    }
}

impl VersionMetrics {
    /// Reads the metrics document of a registry entry written by this pipeline.
    pub fn of(entry: &ModelVersion) -> Result<Self> {
        serde_json::from_value(entry.metrics.clone()).map_err(|e| {
            Error::Conflict(format!(
                "the registry entry of {} has metrics this build cannot read: {e}",
                entry.version
            ))
        })
    }
}

/// Runs the pipeline once for `request.tenant`. See the module docs for the steps.
pub async fn run_once(deps: &RetrainDeps, request: RetrainRequest) -> Result<Outcome> {
    let (job_id, config) = prepare(&deps.settings, &request)?;
    let span = tracing::info_span!("retrain", tenant = %request.tenant, job = %job_id);
    run(deps, &request, job_id, config).instrument(span).await
}

/// A run that holds the tenant's lock and has its job record, ready to go on in the
/// background (what `POST /v1/models:retrain` spawns when no retrain function is set).
pub struct Started {
    /// The job, already recorded: its status can be read at once.
    pub job_id: JobId,
    /// The rest of the pipeline; spawn it. It releases the lock when it ends.
    pub run: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome>> + Send>>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("job_id", &self.job_id)
            .finish()
    }
}

/// Validates the request, takes the lock and opens the job record in line, and returns the
/// rest of the run to be spawned: a caller learns synchronously that another run holds
/// the lock (`RetrainRunning`) or that the request is invalid, and can point at the job
/// right away. A job id that already succeeded is answered by replaying it.
pub async fn start(deps: RetrainDeps, request: RetrainRequest) -> Result<Started> {
    let (job_id, config) = prepare(&deps.settings, &request)?;
    let span = tracing::info_span!("retrain", tenant = %request.tenant, job = %job_id);
    let tenant = request.tenant.clone();
    if let Some(job) = finished_job(&deps, &tenant, &job_id).await? {
        let run = async move { replay(&deps, &tenant, &job).await };
        return Ok(Started {
            job_id,
            run: Box::pin(run.instrument(span)),
        });
    }
    let mut clock = Clock::new(deps.progress.clone());
    let lease = take_lock(&deps, &tenant, &job_id, &mut clock)
        .instrument(span.clone())
        .await?;
    let opened = open_job(&deps, &tenant, &job_id)
        .instrument(span.clone())
        .await;
    let opened = match opened {
        Ok(o) => o,
        Err(e) => return Err(fail(&deps, &tenant, &job_id, lease, e).await),
    };
    let id = job_id.clone();
    let run = async move {
        let result = match opened {
            Opened::Finished(job) => replay(&deps, &tenant, &job).await,
            Opened::Started(at) => {
                locked(&deps, &request, &job_id, config, &lease, &mut clock, at).await
            }
        };
        settle(&deps, &tenant, &job_id, lease, &mut clock, result).await
    };
    Ok(Started {
        job_id: id,
        run: Box::pin(run.instrument(span)),
    })
}

/// Checks settings, parameters and budget; picks the job id.
pub(crate) fn prepare(
    settings: &RetrainSettings,
    request: &RetrainRequest,
) -> Result<(JobId, TrainConfig)> {
    settings.validate()?;
    let config = request.params.apply(&settings.train)?;
    if let Some(t) = &request.tune
        && !(1..=TuneRequest::MAX_BUDGET_SECONDS).contains(&t.budget_seconds)
    {
        return Err(Error::Invalid {
            field: "tune.budget_seconds".into(),
            reason: format!(
                "must be between 1 and {}, got {}",
                TuneRequest::MAX_BUDGET_SECONDS,
                t.budget_seconds
            ),
        });
    }
    let job_id = match &request.job_id {
        Some(j) => j.clone(),
        None => new_job_id("run")?,
    };
    Ok((job_id, config))
}

/// The job's record if it already succeeded (a retried delivery of a finished job).
async fn finished_job(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
) -> Result<Option<JobRecord>> {
    Ok(deps
        .stores
        .records
        .get_job(tenant, job_id)
        .await
        .step("read the job")?
        .filter(|job| job.status == JobStatus::Succeeded))
}

/// Takes the tenant's lock; a refusal is recorded in the job.
async fn take_lock(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    clock: &mut Clock,
) -> Result<Lease> {
    clock.enter(Step::Lock);
    deps.faults.check(Step::Lock)?;
    match Lease::acquire(
        Arc::clone(&deps.stores.records),
        tenant,
        owner_for(job_id),
        deps.settings.lease,
    )
    .await
    {
        Ok(l) => Ok(l),
        Err(e @ Error::RetrainRunning { .. }) => {
            record_refusal(deps, tenant, job_id, &e).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn run(
    deps: &RetrainDeps,
    request: &RetrainRequest,
    job_id: JobId,
    config: TrainConfig,
) -> Result<Outcome> {
    let tenant = &request.tenant;
    if let Some(job) = finished_job(deps, tenant, &job_id).await? {
        tracing::info!("job already finished: answering from the registry");
        return replay(deps, tenant, &job).await;
    }
    let mut clock = Clock::new(deps.progress.clone());
    let lease = take_lock(deps, tenant, &job_id, &mut clock).await?;
    let result = match open_job(deps, tenant, &job_id).await {
        Ok(Opened::Finished(job)) => replay(deps, tenant, &job).await,
        Ok(Opened::Started(at)) => {
            locked(deps, request, &job_id, config, &lease, &mut clock, at).await
        }
        Err(e) => Err(e),
    };
    settle(deps, tenant, &job_id, lease, &mut clock, result).await
}

/// After the locked part: release the lock and record the job's end (a simulated crash
/// does neither, as a killed process would not).
async fn settle(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    lease: Lease,
    clock: &mut Clock,
    result: Result<Outcome>,
) -> Result<Outcome> {
    match result {
        Ok(mut outcome) => {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not release the retrain lock; it will expire");
            }
            outcome.timings = clock.finish();
            tracing::info!(
                version = %outcome.version,
                verdict = outcome.verdict.as_str(),
                "retrain finished"
            );
            report_metrics(deps, tenant, true).await;
            Ok(outcome)
        }
        Err(e) => {
            let e = fail(deps, tenant, job_id, lease, e).await;
            if !e.is_crash() {
                report_metrics(deps, tenant, false).await;
            }
            Err(e)
        }
    }
}

/// The run's outcome and the live model's age (seconds since its registration), so the
/// model-age alarm has a figure after every scheduled run even when no request is served.
async fn report_metrics(deps: &RetrainDeps, tenant: &TenantId, succeeded: bool) {
    if !deps.metrics.enabled() {
        return;
    }
    deps.metrics.retrain(succeeded);
    let records = &deps.stores.records;
    let live = match records.live_pointer(tenant).await {
        Ok(Some(p)) => records.get_model(tenant, &p.version).await.ok().flatten(),
        _ => None,
    };
    if let Some(v) = live {
        let age = (Utc::now() - v.created_at).num_milliseconds() as f64 / 1e3;
        deps.metrics.model_age(age);
    }
}

/// A failed run: mark the job failed and release the lock (a simulated crash does
/// neither, as a killed process would not). Returns the error.
async fn fail(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    lease: Lease,
    e: Error,
) -> Error {
    match e {
        e if e.is_crash() => {
            // A killed process does nothing more: the lease lapses, the job stays running.
            drop(lease);
            e
        }
        e => {
            tracing::error!(error = %e, "retrain failed");
            let failed = JobRecord {
                job_id: job_id.clone(),
                status: JobStatus::Failed,
                started_at: Utc::now(),
                finished_at: Some(Utc::now()),
                message: Some(clip(&e.to_string())),
            };
            if let Err(u) = finish_job(deps, tenant, failed).await {
                tracing::warn!(error = %u, "could not mark the job failed");
            }
            if let Err(r) = lease.release().await {
                tracing::warn!(error = %r, "could not release the retrain lock; it will expire");
            }
            e
        }
    }
}

/// The job record once the lock is held: a new job starts now; an unfinished one is
/// resumed with its original start (its version id derives from it); a finished one is
/// replayed.
enum Opened {
    Started(DateTime<Utc>),
    Finished(JobRecord),
}

async fn open_job(deps: &RetrainDeps, tenant: &TenantId, job_id: &JobId) -> Result<Opened> {
    let records = &deps.stores.records;
    let now = Utc::now();
    let fresh = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Running,
        started_at: now,
        finished_at: None,
        message: None,
    };
    match records
        .create_job(tenant, &fresh)
        .await
        .step("create the job record")?
    {
        JobStart::Created => Ok(Opened::Started(now)),
        JobStart::Existing(job) if job.status == JobStatus::Succeeded => Ok(Opened::Finished(job)),
        JobStart::Existing(job) => {
            tracing::info!(status = job.status.as_str(), "resuming an unfinished job");
            let again = JobRecord {
                status: JobStatus::Running,
                finished_at: None,
                message: Some("retried".into()),
                ..job.clone()
            };
            records
                .update_job(tenant, &again)
                .await
                .step("update the job record")?;
            Ok(Opened::Started(job.started_at))
        }
    }
}

/// Everything done while holding the lock, after the job record is open.
async fn locked(
    deps: &RetrainDeps,
    request: &RetrainRequest,
    job_id: &JobId,
    config: TrainConfig,
    lease: &Lease,
    clock: &mut Clock,
    started_at: DateTime<Utc>,
) -> Result<Outcome> {
    let tenant = &request.tenant;
    let records = &deps.stores.records;
    let version = version_id(job_id, started_at)?;
    if let Some(entry) = records
        .get_model(tenant, &version)
        .await
        .step("read the model version")?
    {
        tracing::info!(version = %version, "version already registered: completing without training");
        let metrics = VersionMetrics::of(&entry)?;
        return conclude(deps, tenant, job_id, entry, metrics, lease, clock, true).await;
    }
    let stores = &deps.stores;
    let progress = deps.progress.clone();

    clock.enter(Step::Scan);
    deps.faults.check(Step::Scan)?;
    lease.check("scan")?;
    // Customer rows an older deployment wrote under the tenant's one partition move to
    // their own (DynamoDB; a marker makes this one read once done).
    let moved = records
        .rekey_customers(tenant)
        .await
        .step("move customer rows to their own partitions")?;
    if moved > 0 {
        tracing::info!(moved, "customer rows moved to one partition per customer");
    }
    let scanned = training::scan(records.as_ref(), tenant, deps.settings.scan_segments).await?;
    let watermark = scanned.watermark;
    let categories = scanned.categories;

    clock.enter(Step::Interactions);
    deps.faults.check(Step::Interactions)?;
    lease.check("interactions")?;
    // The live model decides the holdout: judged on purchases it never saw (those after
    // its data watermark), it is compared fairly; before the first model, each customer's
    // latest purchases.
    let pointer = records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let (live, live_note) = match &pointer {
        None => (None, None),
        Some(p) => match load_live_for_gate(stores, tenant, p).await {
            Ok(m) => (Some((p.version.to_string(), m)), None),
            Err(note) => {
                tracing::warn!(live = %p.version, note = %note, "live model not compared");
                (None, Some(note))
            }
        },
    };
    let holdout = deps.settings.holdout.clone();
    let cut = match &live {
        Some((_, m)) => Holdout::Since {
            at: m.manifest.data_watermark,
        },
        None => Holdout::Latest {
            fraction: holdout.fraction,
        },
    };
    let (data, split) = {
        let (builder, weighting, holdout) = (scanned.builder, config.weighting, holdout.clone());
        blocking("build interactions", move || {
            let data = builder.build(&weighting).step("build interactions")?;
            let split = eval::split_sample(&data, cut, holdout.max_customers, holdout.seed);
            Ok((Arc::new(data), Arc::new(split)))
        })
        .await?
    };

    clock.enter(Step::Tune);
    deps.faults.check(Step::Tune)?;
    lease.check("tune")?;
    let (config, tuning) = match &request.tune {
        None => (config, None),
        Some(t) => {
            let (split, budget, k) = (Arc::clone(&split), t.budget_seconds, holdout.k);
            blocking("tune", move || tune_config(&split.train, config, budget, k)).await?
        }
    };

    clock.enter(Step::Fit);
    deps.faults.check(Step::Fit)?;
    lease.check("fit")?;
    let candidate = {
        let (split, cfg, v, p) = (
            Arc::clone(&split),
            config.clone(),
            version.to_string(),
            progress.clone(),
        );
        blocking("fit the candidate", move || {
            let report = |s| report_stage(&p, Step::Fit, s);
            model::Trainer::new(&cfg)
                .version(&v)
                .progress(&report)
                .fit_candidate(&split.train)
                .step("fit the candidate")
        })
        .await?
    };

    clock.enter(Step::Evaluate);
    deps.faults.check(Step::Evaluate)?;
    lease.check("evaluate")?;
    let (candidate, evaluation, curve) = {
        let k = holdout.k;
        let live_pointer = pointer.as_ref().map(|p| p.version.to_string());
        blocking("evaluate", move || {
            // One ranking per scorer at the largest cut-off gives the gate's k and the curve.
            let ks = evaluation_ks(k);
            let cs = candidate.model.evaluate_at(&split, &ks);
            let ps = model::popularity_metrics_at(&split, &ks);
            let curve = recall_curve(&ks, &cs, &ps);
            let c = at_k(&ks, &cs, k);
            let live = live.map(|(version, m)| LiveEvaluation {
                version,
                metrics: m.evaluate(&split, k),
            });
            let evaluation = Evaluation {
                k,
                holdout: cut,
                customers: c.customers,
                candidate: c,
                popularity: at_k(&ks, &ps, k),
                live,
                live_pointer,
                live_note,
            };
            Ok((candidate, evaluation, curve))
        })
        .await?
    };

    clock.enter(Step::Gate);
    deps.faults.check(Step::Gate)?;
    let decision = gate::decide(&deps.settings.gate, &evaluation, request.force);
    tracing::info!(verdict = decision.verdict.as_str(), reason = %decision.reason, "gate");

    clock.enter(Step::Train);
    deps.faults.check(Step::Train)?;
    lease.check("train")?;
    let model: Model = {
        let (data, cfg, v, p, metrics) = (
            Arc::clone(&data),
            config.clone(),
            version.to_string(),
            progress.clone(),
            manifest_metrics(&evaluation),
        );
        let trained_at = Utc::now().timestamp();
        let refit = deps.settings.refit_iterations;
        blocking("train", move || {
            let report = |s| report_stage(&p, Step::Train, s);
            let trainer = model::Trainer::new(&cfg)
                .version(&v)
                .trained_at(trained_at)
                .progress(&report);
            let mut m = if refit > 0 {
                candidate.refit(&trainer, &data, &categories, refit)
            } else {
                drop(candidate);
                trainer.train(&data, &categories)
            }
            .step("train the final model")?;
            m.manifest.metrics = metrics;
            Ok(m)
        })
        .await?
    };
    let counts = DataCounts {
        purchases: watermark.count,
        customers: data.n_customers() as u64,
        items: data.n_items() as u64,
    };
    let pairs = data.nnz() as u64;
    drop(data);

    clock.enter(Step::Insight);
    deps.faults.check(Step::Insight)?;
    lease.check("insight")?;
    let hasher = crate::telemetry::CustomerHasher::new(deps.settings.hash_key.clone());
    crm::write_snapshot(stores, tenant, &model, &hasher).await?;
    crate::fallback::write(stores, tenant, &model).await?;

    clock.enter(Step::Artifact);
    deps.faults.check(Step::Artifact)?;
    lease.check("artifact")?;
    let (bytes, checksum) = blocking("serialise the artifact", move || {
        let bytes = model.to_bytes().step("serialise the artifact")?;
        let checksum = digest(&bytes);
        Ok((bytes, checksum))
    })
    .await?;
    let key = training::artifact_key(&checksum)?;
    stores
        .blobs
        .put(tenant, &key, bytes)
        .await
        .step("write the artifact")?;

    clock.enter(Step::Register);
    deps.faults.check(Step::Register)?;
    lease.check("register")?;
    let params = VersionParams {
        config,
        job_id: job_id.to_string(),
        holdout,
        pairs,
        data_watermark: watermark.max_purchased_at,
        tuning,
    };
    let metrics = VersionMetrics {
        evaluation,
        gate: decision,
        curve: Some(curve),
    };
    let entry = ModelVersion {
        version: version.clone(),
        created_at: affinity_store::normalize_time(Utc::now()),
        status: if metrics.gate.verdict.goes_live() {
            ModelStatus::Candidate
        } else {
            ModelStatus::Rejected
        },
        artifact_key: key,
        checksum,
        params: to_json("params", &params)?,
        metrics: to_json("metrics", &metrics)?,
        data_counts: counts,
        reason: Some(clip(&metrics.gate.reason)),
    };
    records
        .register_model(tenant, &entry)
        .await
        .step("register the version")?;
    conclude(deps, tenant, job_id, entry, metrics, lease, clock, false).await
}

/// Flip (if the gate says so and it has not happened yet) and finish the job. Shared by a
/// full run and a resumed one, so a retried job never flips twice.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    entry: ModelVersion,
    metrics: VersionMetrics,
    lease: &Lease,
    clock: &mut Clock,
    resumed: bool,
) -> Result<Outcome> {
    let records = &deps.stores.records;
    clock.enter(Step::Flip);
    deps.faults.check(Step::Flip)?;
    let mut pointer = records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let mut replaced = None;
    let already_live = pointer.as_ref().is_some_and(|p| p.version == entry.version);
    if already_live {
        if let Some(p) = &pointer {
            // An earlier attempt flipped and died before tidying up: only the statuses.
            versions::settle_statuses(&deps.stores, tenant, p, None).await?;
        }
    } else if metrics.gate.verdict.goes_live() && entry.status == ModelStatus::Candidate {
        lease.renew("flip").await?;
        let expected = metrics
            .evaluation
            .live_pointer
            .as_deref()
            .map(ModelVersionId::parse)
            .transpose()
            .step("live version id")?;
        let flipped = versions::flip(
            &deps.stores,
            tenant,
            expected.as_ref(),
            &entry.version,
            clip(&metrics.gate.reason),
        )
        .await?;
        replaced = flipped.previous.clone();
        pointer = Some(flipped);
    }

    clock.enter(Step::Release);
    deps.faults.check(Step::Release)?;
    let verdict = metrics.gate.verdict;
    let done = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Succeeded,
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        message: Some(clip(&format!(
            "{} {}: {}",
            verdict.as_str(),
            entry.version,
            metrics.gate.reason
        ))),
    };
    finish_job(deps, tenant, done).await?;
    let mut outcome = outcome_of(tenant, job_id, entry, metrics, pointer)?;
    outcome.replaced = replaced;
    outcome.resumed = resumed;
    Ok(outcome)
}

/// The outcome of a job that finished earlier, rebuilt from the registry.
async fn replay(deps: &RetrainDeps, tenant: &TenantId, job: &JobRecord) -> Result<Outcome> {
    let records = &deps.stores.records;
    let version = version_id(&job.job_id, job.started_at)?;
    let entry = records
        .get_model(tenant, &version)
        .await
        .step("read the model version")?
        .ok_or_else(|| Error::NotFound {
            what: "model version of a finished job",
            key: version.to_string(),
        })?;
    let metrics = VersionMetrics::of(&entry)?;
    let pointer = records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let mut outcome = outcome_of(tenant, &job.job_id, entry, metrics, pointer)?;
    outcome.replayed = true;
    Ok(outcome)
}

fn outcome_of(
    tenant: &TenantId,
    job_id: &JobId,
    entry: ModelVersion,
    metrics: VersionMetrics,
    pointer: Option<LivePointer>,
) -> Result<Outcome> {
    Ok(Outcome {
        tenant: tenant.to_string(),
        job_id: job_id.clone(),
        version: entry.version,
        verdict: metrics.gate.verdict,
        reason: metrics.gate.reason,
        forced: metrics.gate.forced,
        live: pointer.map(|p| p.version),
        replaced: None,
        artifact_key: entry.artifact_key,
        checksum: entry.checksum,
        evaluation: metrics.evaluation,
        counts: entry.data_counts,
        timings: Vec::new(),
        replayed: false,
        resumed: false,
    })
}

/// Writes a finished job record, keeping the original start time.
async fn finish_job(deps: &RetrainDeps, tenant: &TenantId, mut job: JobRecord) -> Result<()> {
    let records = &deps.stores.records;
    if let Some(existing) = records
        .get_job(tenant, &job.job_id)
        .await
        .step("read the job")?
    {
        job.started_at = existing.started_at;
    }
    records
        .update_job(tenant, &job)
        .await
        .step("finish the job record")
}

/// A refused run leaves a trace in its job record, unless the lock holder is this very
/// job (a duplicate delivery while the first is still running: its record is live).
async fn record_refusal(deps: &RetrainDeps, tenant: &TenantId, job_id: &JobId, e: &Error) {
    if let Error::RetrainRunning { holder, .. } = e
        && holder.starts_with(&format!("{}#", owner_prefix(job_id)))
    {
        return;
    }
    let now = Utc::now();
    let refused = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Failed,
        started_at: now,
        finished_at: Some(now),
        message: Some(clip(&format!("refused: {e}"))),
    };
    let records = &deps.stores.records;
    let res = match records.create_job(tenant, &refused).await {
        Ok(JobStart::Created) => Ok(()),
        Ok(JobStart::Existing(job)) if job.status == JobStatus::Running => {
            records.update_job(tenant, &refused).await
        }
        Ok(JobStart::Existing(_)) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not record the refused job");
    }
}

/// Loads the live model for the gate. Errors that mean "this artifact is unusable" become
/// a note (the candidate is then compared with popularity only, and the note is
/// recorded); a store outage fails the run instead of weakening the gate.
async fn load_live_for_gate(
    stores: &Stores,
    tenant: &TenantId,
    pointer: &LivePointer,
) -> std::result::Result<Model, String> {
    let entry = match stores.records.get_model(tenant, &pointer.version).await {
        Ok(Some(e)) => e,
        Ok(None) => return Err(format!("version {} is not registered", pointer.version)),
        Err(e) => return Err(format!("registry unreadable: {e}")),
    };
    versions::load(stores, tenant, &entry)
        .await
        .map_err(|e| e.to_string())
}

/// Metrics stored in the artifact's own manifest.
fn manifest_metrics(e: &Evaluation) -> BTreeMap<String, f64> {
    let k = e.k;
    let mut m = BTreeMap::new();
    let mut put = |prefix: &str, x: &Metrics| {
        m.insert(format!("{prefix}recall_at_{k}"), x.recall);
        m.insert(format!("{prefix}ndcg_at_{k}"), x.ndcg);
        m.insert(format!("{prefix}hit_rate_at_{k}"), x.hit_rate);
        m.insert(format!("{prefix}precision_at_{k}"), x.precision);
        m.insert(format!("{prefix}coverage_at_{k}"), x.coverage);
    };
    put("", &e.candidate);
    put("popularity_", &e.popularity);
    m.insert("holdout_customers".into(), e.customers as f64);
    m
}

/// A small grid around the base configuration (base first, so it is always measured),
/// searched on validation splits of the training part until the budget runs out.
fn tune_config(
    train: &Interactions,
    mut config: TrainConfig,
    budget_seconds: u64,
    k: usize,
) -> Result<(TrainConfig, Option<TuningSummary>)> {
    let a = config.als.clone();
    let mut factors = vec![a.factors, (a.factors * 2).min(256)];
    factors.dedup();
    let mut grid = tune::grid(
        &a,
        &factors,
        &[
            a.regularization,
            a.regularization / 2.0,
            a.regularization * 2.0,
        ],
        &[a.alpha, a.alpha / 2.0, a.alpha * 2.0],
        &[a.reg_exponent],
        &[a.neg_exponent],
    );
    grid.sort_by_key(|p| p != &a);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(budget_seconds);
    let (mut trials, best) = tune::search(train, &config, &grid, &[7, 8], k, &|| {
        Instant::now() < deadline
    })
    .step("tune")?;
    if let Some(best) = best {
        config.als = best;
    }
    let tried = trials.len();
    trials.truncate(MAX_RECORDED_TRIALS);
    Ok((
        config,
        Some(TuningSummary {
            budget_seconds,
            seconds: start.elapsed().as_secs_f64(),
            trials,
            tried,
        }),
    ))
}

fn report_stage(p: &ProgressFn, step: Step, stage: Stage) {
    if let Stage::Iteration { n, of } = stage {
        p(Progress::Iteration { step, n, of });
    }
}

/// Runs CPU-bound work off the async threads, so lease renewals keep going meanwhile.
async fn blocking<T, F>(step: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task {
            step,
            message: e.to_string(),
        })?
}

fn to_json(what: &'static str, v: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Task {
        step: what,
        message: format!("encode {what}: {e}"),
    })
}

/// Times steps and reports each start.
struct Clock {
    progress: ProgressFn,
    current: Option<(Step, Instant)>,
    done: Vec<StepTime>,
}

impl Clock {
    fn new(progress: ProgressFn) -> Self {
        Self {
            progress,
            current: None,
            done: Vec::new(),
        }
    }

    fn enter(&mut self, step: Step) {
        self.close();
        (self.progress)(Progress::Step(step));
        self.current = Some((step, Instant::now()));
    }

    fn close(&mut self) {
        if let Some((step, t)) = self.current.take() {
            self.done.push(StepTime {
                step,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }

    fn finish(&mut self) -> Vec<StepTime> {
        self.close();
        std::mem::take(&mut self.done)
    }
}

/// Longest message stored in a job record or a version reason.
const MAX_MESSAGE_CHARS: usize = affinity_store::MAX_TEXT_CHARS;

fn clip(s: &str) -> String {
    crate::error::clip_to(s, MAX_MESSAGE_CHARS)
}

/// A version id derived from the job, so every attempt of one job names the same version:
/// `v<start time>-<hash of the job id>`.
pub fn version_id(job_id: &JobId, started_at: DateTime<Utc>) -> Result<ModelVersionId> {
    let h = digest(job_id.as_str().as_bytes());
    ModelVersionId::parse(format!(
        "v{}-{}",
        started_at.format("%Y%m%d-%H%M%S"),
        &h[..6]
    ))
    .step("version id")
}

/// A fresh job id: `<prefix>-<UTC time>-<8 hex>`.
pub fn new_job_id(prefix: &str) -> Result<JobId> {
    JobId::parse(format!(
        "{prefix}-{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S"),
        nonce()
    ))
    .step("job id")
}

/// Unique enough to tell two processes (or two calls) apart; not a secret.
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    digest(seed.as_bytes())[..8].to_owned()
}

/// The job id as it appears in lock owners (bounded so owners stay valid ids).
fn owner_prefix(job_id: &JobId) -> String {
    job_id.as_str().chars().take(100).collect()
}

/// Lock owner: the job and this attempt, so a duplicate delivery running at the same time
/// is refused while a retry after a crash can take over once the lease lapses.
fn owner_for(job_id: &JobId) -> String {
    format!("{}#{}", owner_prefix(job_id), nonce())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_and_the_gate_share_one_set_of_cutoffs() {
        assert_eq!(evaluation_ks(10), vec![1, 5, 10, 20, 50]);
        assert_eq!(evaluation_ks(15), vec![1, 5, 10, 15, 20, 50]);
        let ks = evaluation_ks(15);
        let m = |r: f64| Metrics {
            recall: r,
            ..Metrics::default()
        };
        let cand: Vec<Metrics> = ks.iter().map(|&k| m(k as f64 / 100.0)).collect();
        let pop: Vec<Metrics> = ks.iter().map(|&k| m(k as f64 / 1000.0)).collect();
        assert_eq!(at_k(&ks, &cand, 15).recall, 0.15);
        let curve = recall_curve(&ks, &cand, &pop);
        let got: Vec<(usize, f64, f64)> = curve
            .points
            .iter()
            .map(|p| (p.k, p.candidate, p.popularity))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 0.01, 0.001),
                (5, 0.05, 0.005),
                (10, 0.1, 0.01),
                (20, 0.2, 0.02),
                (50, 0.5, 0.05)
            ]
        );
    }

    #[test]
    fn metrics_registered_before_the_curve_still_read() {
        let m = |r: f64| Metrics {
            k: 10,
            recall: r,
            ..Metrics::default()
        };
        let with = VersionMetrics {
            evaluation: Evaluation {
                k: 10,
                holdout: Holdout::Latest { fraction: 0.2 },
                customers: 3,
                candidate: m(0.3),
                popularity: m(0.1),
                live: None,
                live_pointer: None,
                live_note: None,
            },
            gate: GateDecision {
                verdict: Verdict::Promoted,
                reason: "beats popularity".into(),
                tolerance: 0.02,
                forced: false,
            },
            curve: None,
        };
        let mut json = serde_json::to_value(&with).unwrap();
        assert!(json.get("curve").is_none());
        json.as_object_mut().unwrap().remove("curve");
        let back: VersionMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn version_ids_follow_the_job() {
        let j = JobId::parse("job-1").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = version_id(&j, t).unwrap();
        assert!(v.as_str().starts_with("v20261123-100000-"));
        assert_eq!(v, version_id(&j, t).unwrap());
        assert_ne!(v, version_id(&JobId::parse("job-2").unwrap(), t).unwrap());
        let a = new_job_id("run").unwrap();
        let b = new_job_id("run").unwrap();
        assert_ne!(a, b);
        let owner = owner_for(&JobId::parse("x".repeat(128)).unwrap());
        assert!(owner.chars().count() <= 128);
    }

    #[test]
    fn params_override_and_validate() {
        let base = TrainConfig::default();
        let p = TrainParams {
            factors: Some(8),
            half_life_days: Some(30.0),
            ..TrainParams::default()
        };
        let c = p.apply(&base).unwrap();
        assert_eq!(c.als.factors, 8);
        assert_eq!(c.weighting.half_life_days, Some(30.0));
        assert_eq!(c.als.iterations, base.als.iterations);
        let bad = TrainParams {
            factors: Some(0),
            ..TrainParams::default()
        };
        assert!(
            matches!(bad.apply(&base), Err(Error::Invalid { field, .. }) if field == "factors")
        );
        let bad = TrainParams {
            neighbours: Some(0),
            ..TrainParams::default()
        };
        assert!(bad.apply(&base).is_err());
        let json: std::result::Result<TrainParams, _> =
            serde_json::from_str(r#"{"factors": 8, "bogus": 1}"#);
        assert!(json.is_err(), "unknown fields are refused");
    }

    #[test]
    fn settings_come_from_the_environment() {
        let env = |k: &str| match k {
            "AFFINITY_GATE_TOLERANCE" => Some("0.05".to_owned()),
            "AFFINITY_RETRAIN_LEASE_SECONDS" => Some("60".to_owned()),
            "AFFINITY_REFIT_ITERATIONS" => Some("0".to_owned()),
            _ => None,
        };
        let s = RetrainSettings::from_lookup(env).unwrap();
        assert_eq!(s.gate.tolerance, 0.05);
        assert_eq!(s.lease, Duration::from_secs(60));
        assert_eq!(s.refit_iterations, 0, "0 asks for a final fit from scratch");
        assert_eq!(RetrainSettings::default().refit_iterations, 3);
        let bad = RetrainSettings::from_lookup(|k| {
            (k == "AFFINITY_REFIT_ITERATIONS").then(|| "1000".to_owned())
        });
        assert!(bad.is_err());
        let bad = RetrainSettings::from_lookup(|k| {
            (k == "AFFINITY_GATE_TOLERANCE").then(|| "lots".to_owned())
        });
        assert!(bad.is_err());
        let bad = RetrainSettings::from_lookup(|k| {
            (k == "AFFINITY_GATE_TOLERANCE").then(|| "2".to_owned())
        });
        assert!(bad.is_err());
    }

    #[test]
    fn long_messages_are_clipped() {
        let s = "x".repeat(5000);
        assert_eq!(clip(&s).chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(clip("short"), "short");
    }
}
