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
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as OpenApiDoc, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, ErrorBody};
use crate::http::state::AppState;

pub mod crm;
pub mod customer_data;
pub mod customers;
pub mod docs;
pub mod health;
pub mod ingest;
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
    components(schemas(
        ErrorBody,
        crate::http::extract::Id,
        crate::http::extract::ExcludedId,
        ingest::PurchaseIn,
        ingest::ItemIn,
        offers::EventIn
    )),
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

/// The error answers every operation of a kind can give, whatever its handler: a JSON body
/// can be malformed (400), too large (413), not JSON (415) or of the wrong shape (422); a
/// path or query parameter can be invalid (400). Added to each operation that does not
/// already describe them, after all route groups are merged, so a new route gets them
/// without copying lines (and the document stays true to what the extractors answer).
struct CommonResponses;

impl CommonResponses {
    const BODY: &[(&str, &str)] = &[
        ("400", "Malformed JSON, or an invalid value"),
        ("413", "Body too large"),
        (
            "415",
            "Body is not JSON (send `Content-Type: application/json`)",
        ),
        (
            "422",
            "JSON of the wrong shape (a missing, mistyped or unknown field)",
        ),
    ];
    const PARAMS: &[(&str, &str)] = &[("400", "Invalid path or query parameter")];
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let json_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add = |codes: &[(&str, &str)]| {
                    for (code, description) in codes {
                        op.responses
                            .responses
                            .entry((*code).to_owned())
                            .or_insert_with(|| error_response(description));
                    }
                };
                if json_body {
                    add(Self::BODY);
                }
                if has_params {
                    add(Self::PARAMS);
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
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
        .merge(crm::routes())
}

/// The OpenAPI document of exactly the routes [`router`] serves.
pub fn openapi() -> OpenApiDoc {
    let mut doc = api().split_for_parts().1;
    CommonResponses.modify(&mut doc);
    doc
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
            crate::http::telemetry::log_requests,
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
