//! `GET /v1/customers/{customer_id}/recommendations`: items for a customer, computed by
//! fold-in from the purchase history read from the store at request time, so purchases
//! ingested a moment ago count.

use affinity_store::{Category, CustomerId, Scope};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::answers::{Options, Recommendations};
use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{ApiPath, ApiQuery, ExcludedId, Id, K, exclude_list, store_reason};
use crate::http::state::AppState;
use crate::http::telemetry::{CustomerTag, ModelVersionTag};
use crate::settings::DEFAULT_K;

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(customer_recommendations))
}

/// Query parameters of customer recommendations.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerQuery {
    /// How many items (1..=100, default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub k: Option<K>,
    /// Only items of this category.
    #[param(value_type = Option<Id>)]
    pub category: Option<Category>,
    /// Only items the catalog lists as in stock (default true).
    pub in_stock: Option<bool>,
    /// Comma-separated item ids never to return (at most 100).
    #[param(value_type = Option<Vec<ExcludedId>>, max_items = 100, style = Form, explode = false)]
    pub exclude: Option<String>,
    /// Also return items the customer already bought (default false).
    pub include_purchased: Option<bool>,
}

/// Recommendations for one customer.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/recommendations",
    tag = "recommendations",
    params(
        ("customer_id" = Id, Path, description = "The customer (an `Id`)"),
        CustomerQuery
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Items for the customer, best first; `personalized` is false when popularity answered (unknown or opted-out customer)", body = Recommendations),
        (status = 400, description = "Invalid id, k or filter", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the recommend scope, or a storefront token names another customer", body = ErrorBody),
        (status = 404, description = "Unknown category", body = ErrorBody),
        (status = 503, description = "No model trained yet", body = ErrorBody)
    )
)]
async fn customer_recommendations(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<CustomerQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let customer =
        CustomerId::parse(raw).map_err(|e| ApiError::field("customer_id", store_reason(e)))?;
    caller.require_for(Scope::Recommend, &customer)?;
    let options = Options {
        k: q.k.map_or(DEFAULT_K, K::get),
        category: q.category,
        in_stock: q.in_stock.unwrap_or(true),
        exclude: exclude_list(q.exclude.as_deref(), state.limits.max_exclude)?,
    };
    let serving = state.models.get(&caller.tenant).await?;
    let answer = serving
        .for_customer(
            state.stores.records.as_ref(),
            &caller.tenant,
            &customer,
            &options,
            q.include_purchased.unwrap_or(false),
            state.limits.history,
        )
        .await?;
    Ok((
        Extension(ModelVersionTag(answer.model_version.clone())),
        Extension(CustomerTag(state.hasher.tag(customer.as_str()))),
        Json::<Recommendations>(answer),
    ))
}
