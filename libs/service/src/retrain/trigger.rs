//! How `POST /v1/models:retrain` starts a run. On Lambda (`AFFINITY_RETRAIN_FUNCTION`
//! set) the API function invokes the retrain function asynchronously (`InvocationType
//! Event`) with the payload [`super::invocation`] parses; elsewhere the run goes on in a
//! background task of this process, after the lock was taken in line so a second request
//! learns at once that one is running.

use std::sync::Arc;

use affinity_store::{JobId, JobRecord, JobStart, JobStatus, Stores, TenantId};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use chrono::Utc;
use serde::Serialize;

use super::{RetrainDeps, RetrainRequest, RetrainSettings, TrainParams, TuneRequest, prepare};
use crate::error::{Context, Error, Result};
use crate::loader::ModelCache;

/// Where a requested retrain runs.
#[derive(Clone, Debug)]
pub enum Retrainer {
    /// In a background task of this process, with these settings.
    Local(RetrainSettings),
    /// In the retrain function, invoked asynchronously.
    Lambda {
        /// Lambda client (region and credentials of the API function).
        client: aws_sdk_lambda::Client,
        /// Function name or ARN.
        function: String,
        /// Settings used only to validate requests before invoking.
        settings: RetrainSettings,
    },
}

/// What the retrain function receives: the fields of
/// [`super::invocation::DirectInvocation`].
#[derive(Debug, Serialize)]
pub struct InvokePayload<'a> {
    /// Tenant to retrain.
    pub tenant: &'a str,
    /// The job id the API answered with.
    pub job_id: &'a str,
    /// Promote even if the gate rejects.
    pub force: bool,
    /// Training parameter overrides.
    pub params: &'a TrainParams,
    /// Hyperparameter search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tune: Option<&'a TuneRequest>,
    /// Always `api`.
    pub trigger: &'static str,
}

/// How a request was taken on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Running in this process.
    Local,
    /// Handed to the retrain function.
    Lambda,
}

impl Retrainer {
    /// The retrain function named by `function` (config from the environment, as the
    /// stores'), or a local background run.
    pub async fn from_settings(function: Option<&str>, settings: RetrainSettings) -> Self {
        match function {
            Some(f) if !f.is_empty() => {
                let conf = aws_config::load_from_env().await;
                Retrainer::Lambda {
                    client: aws_sdk_lambda::Client::new(&conf),
                    function: f.to_owned(),
                    settings,
                }
            }
            _ => Retrainer::Local(settings),
        }
    }

    /// Starts a retrain and returns its job id once it is accepted. Locally the lock is
    /// taken first (`RetrainRunning` if another run holds it) and the loader is told to
    /// re-check the pointer when the run ends; on Lambda the job is recorded as queued and
    /// the function invoked (an invocation failure is `Unavailable` and fails the job).
    pub async fn trigger(
        &self,
        stores: &Stores,
        models: Arc<ModelCache>,
        request: RetrainRequest,
    ) -> Result<(JobId, Mode)> {
        match self {
            Retrainer::Local(settings) => {
                let tenant = request.tenant.clone();
                let deps = RetrainDeps::new(stores.clone(), settings.clone());
                let started = super::start(deps, request).await?;
                let job_id = started.job_id.clone();
                tokio::spawn(async move {
                    match started.run.await {
                        Ok(outcome) => {
                            tracing::info!(
                                version = %outcome.version,
                                verdict = outcome.verdict.as_str(),
                                "background retrain finished"
                            );
                        }
                        Err(e) => tracing::error!(error = %e, "background retrain failed"),
                    }
                    models.invalidate(&tenant);
                });
                Ok((job_id, Mode::Local))
            }
            Retrainer::Lambda {
                client,
                function,
                settings,
            } => {
                let (job_id, _) = prepare(settings, &request)?;
                if queue_job(stores, &request.tenant, &job_id).await? {
                    let payload = InvokePayload {
                        tenant: request.tenant.as_str(),
                        job_id: job_id.as_str(),
                        force: request.force,
                        params: &request.params,
                        tune: request.tune.as_ref(),
                        trigger: "api",
                    };
                    if let Err(e) = invoke(client, function, &payload).await {
                        fail_queued(stores, &request.tenant, &job_id, &e).await;
                        return Err(e);
                    }
                }
                Ok((job_id, Mode::Lambda))
            }
        }
    }
}

/// Records the job as queued so its status can be read before the function starts.
/// False when the job already succeeded (a repeated request: nothing to invoke).
async fn queue_job(stores: &Stores, tenant: &TenantId, job_id: &JobId) -> Result<bool> {
    let now = Utc::now();
    let queued = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Running,
        started_at: now,
        finished_at: None,
        message: Some("queued: the retrain function was invoked".into()),
    };
    match stores
        .records
        .create_job(tenant, &queued)
        .await
        .step("create the job record")?
    {
        JobStart::Created => Ok(true),
        JobStart::Existing(job) => Ok(job.status != JobStatus::Succeeded),
    }
}

async fn fail_queued(stores: &Stores, tenant: &TenantId, job_id: &JobId, e: &Error) {
    let now = Utc::now();
    let failed = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Failed,
        started_at: now,
        finished_at: Some(now),
        message: Some(crate::error::clip(&format!("not started: {e}"))),
    };
    if let Err(u) = stores.records.update_job(tenant, &failed).await {
        tracing::warn!(error = %u, "could not mark the job failed");
    }
}

async fn invoke(
    client: &aws_sdk_lambda::Client,
    function: &str,
    payload: &InvokePayload<'_>,
) -> Result<()> {
    let body = serde_json::to_vec(payload).map_err(|e| Error::Task {
        step: "encode the invocation",
        message: e.to_string(),
    })?;
    let out = client
        .invoke()
        .function_name(function)
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(body))
        .send()
        .await
        .map_err(|e| Error::Unavailable {
            step: "invoke the retrain function",
            message: aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
        })?;
    if let Some(f) = out.function_error() {
        return Err(Error::Unavailable {
            step: "invoke the retrain function",
            message: f.to_owned(),
        });
    }
    tracing::info!(
        function,
        job = payload.job_id,
        status = out.status_code(),
        "retrain function invoked"
    );
    Ok(())
}
