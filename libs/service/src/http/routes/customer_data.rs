//! `DELETE /v1/customers/{customer_id}` (erasure) and `PUT /v1/customers/{customer_id}/consent`:
//! the customer's data rights, under the `customers-manage` scope.

use affinity_store::{CustomerId, Scope};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::customer_data::{self, Erasure};
use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{ApiJson, ApiPath, Id, store_reason};
use crate::http::routes::crm::ConsentOut;
use crate::http::state::AppState;

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(erase_customer))
        .routes(routes!(put_consent))
}

fn customer(raw: String) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::field("customer_id", store_reason(e)))
}

/// Erases a customer: purchases, offer events, consent and flags, and their entry in every
/// stored customer-insight snapshot. Idempotent: a repeat answers 200 with zero counts.
#[utoipa::path(
    delete,
    path = "/v1/customers/{customer_id}",
    tag = "customers",
    params(("customer_id" = Id, Path, description = "The customer")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "What was removed, per kind (all zero when nothing was left)", body = Erasure),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the customers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 503, description = "The store is unavailable; safe to retry", body = ErrorBody)
    )
)]
async fn erase_customer(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Erasure>, ApiError> {
    caller.require(Scope::CustomersManage)?;
    let customer = customer(raw)?;
    let erased = customer_data::erase_customer(
        &state.stores,
        &state.hasher,
        &caller.tenant,
        &customer,
        &caller.actor(),
        Utc::now(),
    )
    .await?;
    state.models.forget_insight(&caller.tenant);
    Ok(Json(erased))
}

/// A customer's consent as stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentAnswer {
    /// The customer.
    pub customer_id: String,
    /// What they consent to.
    pub consent: ConsentOut,
    /// When it was recorded.
    pub updated_at: DateTime<Utc>,
}

/// Records what a customer consents to. Without `personalization` their recommendations are
/// popular items (`"personalized": false, "fallback": "opted_out"`) and their history is not
/// read; without `marketing` they get no offer and are left out of audiences, batch offers
/// and dry-run counts. A customer never recorded has both.
#[utoipa::path(
    put,
    path = "/v1/customers/{customer_id}/consent",
    tag = "customers",
    params(("customer_id" = Id, Path, description = "The customer")),
    request_body = ConsentOut,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The consent as stored", body = ConsentAnswer),
        (status = 400, description = "Invalid id or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the customers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape (both fields are required)", body = ErrorBody),
        (status = 503, description = "The store is unavailable; safe to retry", body = ErrorBody)
    )
)]
async fn put_consent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<ConsentOut>,
) -> Result<Json<ConsentAnswer>, ApiError> {
    caller.require(Scope::CustomersManage)?;
    let customer = customer(raw)?;
    let record = customer_data::set_consent(
        &state.stores,
        &caller.tenant,
        &customer,
        body.into(),
        affinity_store::normalize_time(Utc::now()),
    )
    .await?;
    Ok(Json(ConsentAnswer {
        customer_id: record.customer_id.as_str().to_owned(),
        consent: record.consent.into(),
        updated_at: record.updated_at,
    }))
}
