//! Similar items: one item (`GET /v1/items/{item_id}/similar`) and a basket
//! (`POST /v1/baskets/similar`), "customers who bought these also bought".

use affinity_store::{Category, ItemId, Scope};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::answers::{Options, Recommendations};
use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{
    ApiJson, ApiPath, ApiQuery, ExcludedId, Id, K, batch_len, exclude_list, item_id,
};
use crate::http::state::AppState;
use crate::http::telemetry::ModelVersionTag;
use crate::settings::{DEFAULT_K, Limits};

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(similar_items))
        .routes(routes!(basket_similar))
}

/// Filters shared by the recommendation routes, as query parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
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
}

impl FilterQuery {
    /// The validated options.
    pub fn options(&self, limits: &Limits) -> Result<Options, ApiError> {
        Ok(Options {
            k: self.k.map_or(DEFAULT_K, K::get),
            category: self.category.clone(),
            in_stock: self.in_stock.unwrap_or(true),
            exclude: exclude_list(self.exclude.as_deref(), limits.max_exclude)?,
        })
    }
}

/// Items bought together with one item.
#[utoipa::path(
    get,
    path = "/v1/items/{item_id}/similar",
    tag = "recommendations",
    params(
        ("item_id" = Id, Path, description = "The item (an `Id`)"),
        FilterQuery
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Similar items, best first", body = Recommendations),
        (status = 400, description = "Invalid id, k or filter", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the recommend scope", body = ErrorBody),
        (status = 404, description = "Unknown item or category", body = ErrorBody),
        (status = 503, description = "No model trained yet", body = ErrorBody)
    )
)]
async fn similar_items(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<FilterQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Recommend)?;
    let item = item_id("item_id", &raw)?;
    let options = q.options(&state.limits)?;
    let serving = state.models.get(&caller.tenant).await?;
    let answer = serving.similar(&item, &options)?;
    Ok((
        Extension(ModelVersionTag(answer.model_version.clone())),
        Json(answer),
    ))
}

/// A basket: the cart's items and the same filters as the query form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasketRequest {
    /// Items in the basket (1..=50).
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 50)]
    pub items: Vec<ItemId>,
    /// How many items (1..=100, default 10).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub k: Option<K>,
    /// Only items of this category.
    #[schema(value_type = Option<Id>)]
    pub category: Option<Category>,
    /// Only items the catalog lists as in stock (default true).
    pub in_stock: Option<bool>,
    /// Item ids never to return (at most 100).
    #[schema(value_type = Option<Vec<Id>>, max_items = 100)]
    pub exclude: Option<Vec<ItemId>>,
}

/// Items bought together with a basket.
#[utoipa::path(
    post,
    path = "/v1/baskets/similar",
    tag = "recommendations",
    request_body = BasketRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Items for the basket, best first", body = Recommendations),
        (status = 400, description = "Empty or oversized basket, bad JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the recommend scope", body = ErrorBody),
        (status = 404, description = "Unknown category", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "No model trained yet", body = ErrorBody)
    )
)]
async fn basket_similar(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<BasketRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Recommend)?;
    batch_len("items", req.items.len(), state.limits.max_basket)?;
    let exclude = req.exclude.unwrap_or_default();
    if exclude.len() > state.limits.max_exclude {
        return Err(ApiError::BatchTooLarge {
            field: "exclude",
            got: exclude.len(),
            max: state.limits.max_exclude,
        });
    }
    let options = Options {
        k: req.k.map_or(DEFAULT_K, K::get),
        category: req.category,
        in_stock: req.in_stock.unwrap_or(true),
        exclude,
    };
    let serving = state.models.get(&caller.tenant).await?;
    let answer = serving.basket(&req.items, &options)?;
    Ok((
        Extension(ModelVersionTag(answer.model_version.clone())),
        Json(answer),
    ))
}
