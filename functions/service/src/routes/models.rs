//! `GET /v1/models/live`: which model answers this tenant's requests, when it was trained,
//! up to which purchase, and its offline metrics. (Version listing, promotion and retrain
//! routes join this group with the retrain pipeline.)

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::telemetry::ModelVersionTag;

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(live_model))
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

/// The model serving this tenant (any valid key may ask).
#[utoipa::path(
    get,
    path = "/v1/models/live",
    tag = "models",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The live model", body = ModelInfo),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 503, description = "No model trained yet", body = ErrorBody)
    )
)]
async fn live_model(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
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
