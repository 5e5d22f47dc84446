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
//!
//! Where things are:
//! - this file: the requests, dependencies and outcome of a run, and its two entry points
//!   ([`run_once`] in line, [`start`] for a caller that answers before the run ends);
//! - `step`: the steps and the clock; every step starts in one place (timing, progress,
//!   fault point, lease check);
//! - `pipeline`: the run context and the steps themselves, in order, as small functions;
//!   the lock around them and the settling after;
//! - `jobs`: the job record's life, version ids, job ids and lock owners;
//! - `settings`: the deployment's retrain settings and a request's parameter overrides;
//! - `records`: what the registry keeps about a version (parameters, metrics, curve);
//! - [`gate`], [`versions`] (flip, promote, rollback), `lease`, [`faults`], [`trigger`]
//!   and [`invocation`] (how a retrain is asked for: API, schedule, Lambda event).

pub mod faults;
pub mod gate;
pub mod invocation;
mod jobs;
mod lease;
mod pipeline;
mod records;
mod settings;
mod step;
pub mod trigger;
pub mod versions;

use affinity_model::artifact::digest;
use affinity_model::eval::{self, Holdout, Metrics};
use affinity_model::interactions::Interactions;
use affinity_model::model::{self, Model, Stage, TrainConfig};
use affinity_model::tune;
use affinity_store::{
    BlobKey, DataCounts, JobId, JobRecord, JobStart, JobStatus, LivePointer, ModelStatus,
    ModelVersion, ModelVersionId, Stores, TenantId,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crm;
use crate::error::{Context, Error, Result};
use crate::training;
use chrono::{DateTime, Utc};
pub use faults::{FailPoint, Faults};
pub use gate::{Evaluation, GateConfig, GateDecision, LiveEvaluation, Verdict};
use jobs::*;
pub use jobs::{new_job_id, version_id};
use lease::Lease;
use pipeline::*;
use records::*;
pub use records::{
    CURVE_KS, CurvePoint, MAX_RECORDED_TRIALS, RecallCurve, TuningSummary, VersionMetrics,
    VersionParams,
};
use serde::{Deserialize, Serialize};
pub use settings::{HoldoutConfig, RetrainSettings, TrainParams};
use step::*;
pub use step::{Step, StepTime};
use tracing::Instrument;

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
                let run = Run::new(&deps, &request, &job_id, &lease, &mut clock, at);
                locked(run, config).await
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

/// Longest message stored in a job record or a version reason.
const MAX_MESSAGE_CHARS: usize = affinity_store::MAX_TEXT_CHARS;
