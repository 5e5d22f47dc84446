//! The one router: every `/v1` route, one module per route group, each registered with
//! its OpenAPI description (utoipa-axum) so the served document and the routes come from
//! the same declarations. Later route groups (offers, model admin) add a module and one
//! `.merge(...)` line in [`api`].

use std::sync::LazyLock;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub mod customer_data;
pub mod customers;
pub mod docs;
pub mod health;
pub mod ingest;
pub mod insight;
pub mod models;
pub mod offers;
pub mod similar;

/// Name of the bearer-key security scheme in the OpenAPI document.
pub const SECURITY: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Affinity",
        description = "Recommendations and next-best offers from purchase history. Every \
                       non-2xx answer is `{\"error\": {\"code\", \"message\"}}`; see docs/api.md.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerKey),
    components(schemas(ErrorBody)),
    tags(
        (name = "recommendations", description = "Similar items, baskets, customers"),
        (name = "ingestion", description = "Purchases and catalog items"),
        (name = "models", description = "The live model, versions with their metrics, retraining, promotion, rollback and jobs"),
        (name = "offers", description = "Customer insight and next best offers"),
        (name = "customers", description = "Customers' data rights: consent and erasure"),
        (name = "service", description = "Health and this document")
    )
)]
struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every route with its OpenAPI description, not yet bound to state.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .merge(docs::routes())
        .merge(similar::routes())
        .merge(customers::routes())
        .merge(customer_data::routes())
        .merge(ingest::routes())
        .merge(models::routes())
        .merge(offers::routes())
        .merge(insight::routes())
}

/// The OpenAPI document of exactly the routes [`router`] serves.
pub fn openapi() -> OpenApiDoc {
    api().split_for_parts().1
}

/// The OpenAPI document as pretty JSON (what `GET /v1/openapi.json` serves and
/// docs/openapi.json holds).
pub fn openapi_json() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    });
    &DOC
}

/// The application: routes, JSON fallbacks for unknown paths and methods, body limit,
/// panic guard and request logs.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    let max_body = state.limits.max_body_bytes;
    routes
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::telemetry::log_requests,
        ))
        .with_state(state)
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(crate::error::clip(uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}
