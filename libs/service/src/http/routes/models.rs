//! The model routes. `GET /v1/models/live` (any key): which model answers this tenant's
//! requests, when it was trained, up to which purchase, and its offline metrics. With the
//! `models-admin` scope: `POST /v1/models:retrain` (on Lambda it invokes the retrain
//! function asynchronously, elsewhere it runs in the background), `GET /v1/models`,
//! `GET /v1/models/{version}`, `GET /v1/models/{version}/report` (the HTML model report,
//! see [`crate::report`]), `POST /v1/models/{version}/promote`, `POST /v1/models:rollback`
//! and `GET /v1/jobs/{job_id}`.
//!
//! Why `/{version}/promote` and not Google-style `/{version}:promote`: axum 0.8's router
//! (matchit 0.8.4) needs a parameter to end its segment, so a literal suffix after
//! `{version}` cannot be routed; the two routes without a parameter keep the `:verb` form.
//! Every pointer change made here is served by this process at once: the loader is told to
//! re-check the pointer (other instances notice within `AFFINITY_MODEL_CHECK_SECS`).

use std::collections::BTreeMap;

use affinity_store::{
    DataCounts, JobId, JobRecord, JobStatus, LivePointer, ModelVersionId, Scope, TenantId,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, Id, store_reason};
use crate::http::ratelimit::Expensive;
use crate::http::state::AppState;
use crate::http::telemetry::ModelVersionTag;
use crate::retrain::trigger::Mode;
use crate::retrain::versions::{self, VersionView};
use crate::retrain::{RetrainRequest, TrainParams, TuneRequest, new_job_id};

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live_model))
        .routes(routes!(retrain))
        .routes(routes!(list_models))
        .routes(routes!(show_model))
        .routes(routes!(model_report))
        .routes(routes!(promote_model))
        .routes(routes!(rollback_model))
        .routes(routes!(job_status))
}

/// Sizes of the training data.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrainingCounts {
    /// Customers with purchases.
    pub customers: u64,
    /// Items in the model.
    pub items: u64,
    /// Purchases read.
    pub purchases: u64,
}

/// The live model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// Version id.
    pub model_version: String,
    /// Registry status (`live` once promoted).
    pub status: String,
    /// When training finished.
    pub trained_at: DateTime<Utc>,
    /// Newest purchase the model was trained on.
    pub data_watermark: DateTime<Utc>,
    /// When the version was registered.
    pub registered_at: DateTime<Utc>,
    /// When this instance loaded it.
    pub loaded_at: DateTime<Utc>,
    /// Set when an earlier version answers because the live one could not be loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Blob key of the artifact.
    pub artifact_key: String,
    /// SHA-256 of the artifact, verified at load.
    pub checksum: String,
    /// Embedding dimension.
    pub factors: usize,
    /// Training data sizes.
    pub counts: TrainingCounts,
    /// Offline metrics by name (e.g. `recall_at_10`); empty until an evaluation recorded them.
    pub metrics: BTreeMap<String, f64>,
    /// Training parameters.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

/// The model serving this tenant (any server key may ask; storefront tokens may not).
#[utoipa::path(
    get,
    path = "/v1/models/live",
    tag = "models",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The live model", body = ModelInfo),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "A storefront token (server keys only)", body = ErrorBody),
        (status = 503, description = "No model trained yet", body = ErrorBody)
    )
)]
async fn live_model(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server_key()?;
    let serving = state.models.get(&caller.tenant).await?;
    let m = &serving.model.manifest;
    let v = &serving.version;
    let at = |secs: i64| Utc.timestamp_opt(secs, 0).single().unwrap_or_default();
    let mut metrics: BTreeMap<String, f64> = m.metrics.clone();
    if let Some(obj) = v.metrics.as_object() {
        for (name, value) in obj {
            if let Some(x) = value.as_f64() {
                metrics.insert(name.clone(), x);
            }
        }
    }
    let info = ModelInfo {
        model_version: v.version.as_str().to_owned(),
        status: v.status.as_str().to_owned(),
        trained_at: at(m.trained_at),
        data_watermark: at(m.data_watermark),
        registered_at: v.created_at,
        loaded_at: serving.loaded_at,
        degraded: serving.degraded.clone(),
        artifact_key: v.artifact_key.as_str().to_owned(),
        checksum: v.checksum.clone(),
        factors: serving.model.factors(),
        counts: TrainingCounts {
            customers: m.counts.customers as u64,
            items: m.counts.items as u64,
            purchases: m.counts.purchases as u64,
        },
        metrics,
        params: serde_json::to_value(&m.config).unwrap_or_default(),
    };
    Ok((
        Extension(ModelVersionTag(info.model_version.clone())),
        Json(info),
    ))
}

/// A JSON body whose fields are all optional: a request without any body (no
/// `Content-Type`, no length, as `curl -X POST` sends) means the defaults; a body that is
/// sent must be valid JSON of the schema.
fn or_default<T: Default>(
    headers: &HeaderMap,
    body: Result<ApiJson<T>, ApiError>,
) -> Result<T, ApiError> {
    match body {
        Ok(ApiJson(b)) => Ok(b),
        Err(ApiError::UnsupportedMediaType(_))
            if !headers.contains_key(header::CONTENT_TYPE)
                && !headers.contains_key(header::TRANSFER_ENCODING)
                && headers
                    .get(header::CONTENT_LENGTH)
                    .is_none_or(|v| v.as_bytes() == b"0") =>
        {
            Ok(T::default())
        }
        Err(e) => Err(e),
    }
}

/// Most versions one listing returns.
pub const MAX_LIST_LIMIT: usize = 200;

/// `POST /v1/models:retrain`: the same request `affinity train` builds. No body (or `{}`)
/// for a plain run.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrainBody {
    /// Promote even if the gate rejects the candidate (recorded as forced).
    #[serde(default)]
    pub force: bool,
    /// Idempotency key (1..=128 characters): a repeated request with the id of a finished
    /// job starts nothing. Default: a fresh id.
    #[schema(value_type = Option<Id>)]
    pub job_id: Option<String>,
    /// Training parameter overrides; absent ones keep the configured values.
    #[serde(default)]
    pub params: TrainParams,
    /// Hyperparameter search within a time budget, before the fit.
    pub tune: Option<TuneRequest>,
}

/// A retrain taken on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetrainAccepted {
    /// The job; follow `location` for its status.
    pub job_id: String,
    /// `local` (running in this process) or `lambda` (handed to the retrain function).
    pub mode: String,
    /// Path of the job's status.
    pub location: String,
}

/// Starts a retrain of the caller's tenant: scan, fit, evaluate on a time holdout, gate,
/// and promote only if the gate passes (or `force`).
#[utoipa::path(
    post,
    path = "/v1/models:retrain",
    tag = "models",
    request_body = RetrainBody,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Retrain started; `Location` is the job's status", body = RetrainAccepted,
            headers(("Location" = String, description = "/v1/jobs/{job_id}"))),
        (status = 400, description = "Invalid parameters, budget or job id", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody),
        (status = 409, description = "A retrain of this tenant is already running (known at once when it runs in this process)", body = ErrorBody),
        (status = 422, description = "Body does not fit the schema", body = ErrorBody),
        (status = 503, description = "The retrain function could not be invoked", body = ErrorBody)
    )
)]
async fn retrain(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<RetrainBody>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    let body = or_default(&headers, body)?;
    let job_id = match body.job_id {
        Some(j) => JobId::parse(j).map_err(|e| ApiError::field("job_id", store_reason(e)))?,
        None => new_job_id("api")?,
    };
    let request = RetrainRequest {
        tenant: caller.tenant.clone(),
        job_id: Some(job_id),
        force: body.force,
        params: body.params,
        tune: body.tune,
    };
    let (job_id, mode) = state
        .retrainer
        .trigger(&state.stores, state.models.clone(), request)
        .await?;
    let location = format!("/v1/jobs/{job_id}");
    let accepted = RetrainAccepted {
        job_id: job_id.to_string(),
        mode: match mode {
            Mode::Local => "local",
            Mode::Lambda => "lambda",
        }
        .to_owned(),
        location: location.clone(),
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(accepted),
    ))
}

/// One model version in the registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// Version id.
    pub model_version: String,
    /// `candidate`, `live`, `rejected` or `retired`.
    pub status: String,
    /// True if the live pointer names it.
    pub live: bool,
    /// When it was registered.
    pub registered_at: DateTime<Utc>,
    /// Why the status is what it is (the gate's reason, an operator's note).
    pub reason: Option<String>,
    /// Blob key of the artifact.
    pub artifact_key: String,
    /// SHA-256 of the artifact.
    pub checksum: String,
    /// Training data sizes.
    pub counts: TrainingCounts,
    /// The evaluation: candidate, live model and popularity on the same holdout
    /// (recall@k, NDCG@k, ...), and the gate's decision.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// Training parameters, job id, holdout and tuning.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

impl From<VersionView> for VersionInfo {
    fn from(v: VersionView) -> Self {
        let e = v.entry;
        Self {
            model_version: e.version.to_string(),
            status: e.status.as_str().to_owned(),
            live: v.live,
            registered_at: e.created_at,
            reason: e.reason,
            artifact_key: e.artifact_key.as_str().to_owned(),
            checksum: e.checksum,
            counts: counts(&e.data_counts),
            metrics: e.metrics,
            params: e.params,
        }
    }
}

fn counts(c: &DataCounts) -> TrainingCounts {
    TrainingCounts {
        customers: c.customers,
        items: c.items,
        purchases: c.purchases,
    }
}

/// The registry: the live pointer and the newest versions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    /// Version serving now (null before the first promotion).
    pub live: Option<String>,
    /// Version that served before it (what a rollback restores).
    pub previous: Option<String>,
    /// Versions, newest first.
    pub versions: Vec<VersionInfo>,
}

/// Listing options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most versions to return (1..=200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

/// The tenant's model versions, newest first, with their metrics.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    params(ListQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The registry", body = VersionList),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody)
    )
)]
async fn list_models(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<VersionList>, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    let limit = q.limit.unwrap_or(versions::DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_LIST_LIMIT}, got {limit}"),
        ));
    }
    let registry = versions::list(&state.stores, &caller.tenant, limit).await?;
    Ok(Json(VersionList {
        live: registry.pointer.as_ref().map(|p| p.version.to_string()),
        previous: registry
            .pointer
            .and_then(|p| p.previous)
            .map(|v| v.to_string()),
        versions: registry.versions.into_iter().map(Into::into).collect(),
    }))
}

fn version_id(raw: String) -> Result<ModelVersionId, ApiError> {
    ModelVersionId::parse(raw).map_err(|e| ApiError::field("version", store_reason(e)))
}

/// One version with its metrics, parameters and gate decision.
#[utoipa::path(
    get,
    path = "/v1/models/{version}",
    tag = "models",
    params(("version" = Id, Path, description = "Model version id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The version", body = VersionInfo),
        (status = 400, description = "Invalid version id", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody)
    )
)]
async fn show_model(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<VersionInfo>, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    let version = version_id(raw)?;
    let view = versions::show(&state.stores, &caller.tenant, &version).await?;
    Ok(Json(view.into()))
}

/// A version's model report, as one self-contained HTML page.
///
/// Inline CSS and SVG plots, no script, nothing loaded from the network: the version's
/// parameters, data and gate decision, the metric history across versions, recall@k
/// against popularity, the value-tier distribution and offer response by tier.
/// `affinity report` writes the same page to a file.
#[utoipa::path(
    get,
    path = "/v1/models/{version}/report",
    tag = "models",
    params(("version" = Id, Path, description = "Model version id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The report page", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, description = "Invalid version id", body = ErrorBody),
        (status = 429, description = "Rate limit of this key reached; see Retry-After", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody)
    )
)]
async fn model_report(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    state.rate_limits.check(&caller, Expensive::Reports)?;
    let version = version_id(raw)?;
    let report = crate::report::build(&state.stores, &caller.tenant, Some(&version)).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        report.html,
    ))
}

/// `POST /v1/models/{version}/promote` (no body means `force: false`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// Promote a version the gate rejected (recorded as forced).
    #[serde(default)]
    pub force: bool,
}

/// The live pointer after a change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PointerInfo {
    /// Version serving now.
    pub live: String,
    /// Version that served before.
    pub previous: Option<String>,
    /// When the pointer changed.
    pub updated_at: DateTime<Utc>,
}

impl From<LivePointer> for PointerInfo {
    fn from(p: LivePointer) -> Self {
        Self {
            live: p.version.to_string(),
            previous: p.previous.map(|v| v.to_string()),
            updated_at: p.updated_at,
        }
    }
}

fn served_now(state: &AppState, tenant: &TenantId) {
    state.models.invalidate(tenant);
}

/// Makes a version live after verifying its artifact (compare-and-set of the pointer).
/// A version the gate rejected needs `force`; promoting the live one changes nothing.
#[utoipa::path(
    post,
    path = "/v1/models/{version}/promote",
    tag = "models",
    params(("version" = Id, Path, description = "Model version id")),
    request_body = PromoteBody,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The new live pointer", body = PointerInfo),
        (status = 400, description = "Invalid version id", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 409, description = "Rejected by the gate (use force), or the pointer moved meanwhile", body = ErrorBody),
        (status = 422, description = "Body does not fit the schema", body = ErrorBody)
    )
)]
async fn promote_model(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    headers: HeaderMap,
    body: Result<ApiJson<PromoteBody>, ApiError>,
) -> Result<Json<PointerInfo>, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    let body = or_default(&headers, body)?;
    let version = version_id(raw)?;
    let pointer = versions::promote(&state.stores, &caller.tenant, &version, body.force).await?;
    served_now(&state, &caller.tenant);
    Ok(Json(pointer.into()))
}

/// Puts the previous live version back, after verifying its artifact.
#[utoipa::path(
    post,
    path = "/v1/models:rollback",
    tag = "models",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The new live pointer", body = PointerInfo),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody),
        (status = 409, description = "Nothing to roll back to, or the pointer moved meanwhile", body = ErrorBody)
    )
)]
async fn rollback_model(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PointerInfo>, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    let pointer = versions::rollback(&state.stores, &caller.tenant).await?;
    served_now(&state, &caller.tenant);
    Ok(Json(pointer.into()))
}

/// A retrain job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    /// Job id.
    pub job_id: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// True once it ended (succeeded or failed).
    pub done: bool,
    /// When it started (or was queued).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The outcome (verdict and version) or the error.
    pub message: Option<String>,
}

impl From<JobRecord> for JobInfo {
    fn from(j: JobRecord) -> Self {
        Self {
            job_id: j.job_id.to_string(),
            status: j.status.as_str().to_owned(),
            done: j.status != JobStatus::Running,
            started_at: j.started_at,
            finished_at: j.finished_at,
            message: j.message,
        }
    }
}

/// A retrain job's status.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "models",
    params(("job_id" = Id, Path, description = "Job id (from `POST /v1/models:retrain`)")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The job", body = JobInfo),
        (status = 400, description = "Invalid job id", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the models-admin scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)
    )
)]
async fn job_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobInfo>, ApiError> {
    caller.require(Scope::ModelsAdmin)?;
    let job_id = JobId::parse(raw).map_err(|e| ApiError::field("job_id", store_reason(e)))?;
    let job = versions::job(&state.stores, &caller.tenant, &job_id).await?;
    Ok(Json(job.into()))
}
