//! `GET /v1/health`: liveness for load balancers and the deploy smoke test (no key needed).

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::state::AppState;

/// Liveness answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Service name.
    pub service: String,
    /// Build version.
    pub version: String,
}

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The process is up and routing requests.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "service",
    responses((status = 200, description = "The service answers", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        service: "affinity".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
