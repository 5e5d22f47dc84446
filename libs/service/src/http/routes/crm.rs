//! The CRM routes, all answered from one model version and the CRM snapshot computed with
//! it: a customer's next best offers (`offers` scope), the same for
//! up to 1,000 customers at once, an item's audience, and a customer's profile
//! (`recommend` or `offers` scope).

use std::collections::HashMap;
use std::sync::Arc;

use affinity_model::crm::offers::{EngineConfig, OfferEngine, OfferRequest, ScoredOffer};
use affinity_model::model::Model;
use affinity_store::{Channel, CustomerId, RecommendationId, Scope};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::crm::{self, CrmSnapshot, DueKey};
use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{
    ApiJson, ApiPath, ApiQuery, ChannelName, Id, batch_len, item_id, store_reason,
};
use crate::http::ratelimit::Expensive;
use crate::http::state::AppState;
use crate::loader::Serving;

/// Most customers in one batch call.
pub const MAX_BATCH_CUSTOMERS: usize = 1000;
/// Most offers per customer.
pub const MAX_OFFERS: usize = 20;
/// Offers per customer when `limit` is not given.
pub const DEFAULT_OFFERS: usize = 3;
/// Most customers in an audience answer.
pub const MAX_AUDIENCE: usize = 1000;

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(customer_offers))
        .routes(routes!(batch_offers))
        .routes(routes!(item_audience))
        .routes(routes!(customer_profile))
}

/// The serving model and its CRM snapshot: one version for the whole request.
pub(crate) async fn crm_version(
    state: &AppState,
    caller: &Caller,
) -> Result<(Arc<Serving>, Arc<CrmSnapshot>), ApiError> {
    let serving = state.models.get(&caller.tenant).await?;
    let snapshot = state
        .models
        .crm(&caller.tenant, &serving)
        .await?
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "model version {} has no customer insight; retrain to compute it",
                serving.version.version.as_str()
            ))
        })?;
    Ok((serving, snapshot))
}

/// An offer decision's request from the query or body fields, checked: the single and the
/// batch route decide alike.
fn offer_request(
    channel: &str,
    most: Option<u32>,
    allow_same_category: Option<bool>,
) -> Result<OfferRequest, ApiError> {
    Ok(OfferRequest {
        channel: parse_channel(channel)?.as_str().to_owned(),
        now: Utc::now().timestamp(),
        k: limit(most, DEFAULT_OFFERS, MAX_OFFERS)?,
        allow_same_category: allow_same_category.unwrap_or(false),
    })
}

/// The offer engine over the tenant's live offers, for one model version and its insight.
async fn engine<'m>(
    state: &AppState,
    caller: &Caller,
    model: &'m Model,
    snapshot: &CrmSnapshot,
) -> Result<OfferEngine<'m>, ApiError> {
    let records = state.stores.records.as_ref();
    Ok(crm::offer_engine(
        records,
        &caller.tenant,
        model,
        snapshot,
        EngineConfig::default(),
    )
    .await?)
}

/// A channel name, checked.
pub(crate) fn parse_channel(raw: &str) -> Result<Channel, ApiError> {
    Channel::parse(raw).map_err(|e| ApiError::field("channel", store_reason(e)))
}

fn limit(raw: Option<u32>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(n) if (1..=max as u32).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::field(
            "limit",
            format!("{n} must be within 1..={max}"),
        )),
    }
}

fn recommendation_id() -> Result<RecommendationId, ApiError> {
    RecommendationId::parse(format!("rec_{}", uuid::Uuid::new_v4().simple()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A past purchase that made the offer relevant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MatchedOut {
    /// The item bought.
    pub item_id: String,
    /// Cosine between the purchase and the offer.
    pub similarity: f32,
    /// The item is itself promoted or in a promoted category.
    pub direct: bool,
}

/// Something the customer is due to buy again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DueOut {
    /// The item, when due for an item.
    pub item_id: Option<String>,
    /// The category, when due for a category.
    pub category: Option<String>,
    /// Days since the last purchase of it.
    pub days_since: f64,
    /// Its typical repurchase interval in days.
    pub typical_days: f64,
}

/// Why an offer was chosen.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReasonsOut {
    /// Offer kind.
    pub kind: String,
    /// The customer's tier.
    pub tier: String,
    /// Cosine affinity between the customer and the offer.
    pub affinity: f32,
    /// Contacts whose response calibrated the propensity (0: not yet).
    pub calibrated_on: u64,
    /// The customer's churn risk (1 - P(alive)).
    pub churn_risk: Option<f64>,
    /// The customer's CLV.
    pub clv: Option<f64>,
    /// Retention offers: churn risk x CLV if retained (CLV / P(alive)) counted in the value.
    pub retained_value: Option<f64>,
    /// Past purchases closest to the offer.
    pub matched_purchases: Vec<MatchedOut>,
    /// Promoted items or categories the customer is due to buy again.
    pub due: Vec<DueOut>,
    /// Promoted items left out because the customer owns them.
    pub excluded_items: Vec<String>,
}

/// One offer for a customer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OfferOffered {
    /// The offer.
    pub offer_id: String,
    /// Its title.
    pub title: Option<String>,
    /// propensity x value - cost (retention: plus propensity x churn risk x CLV if retained).
    pub expected_net_value: f64,
    /// Acceptance probability.
    pub propensity: f64,
    /// Why.
    pub reasons: ReasonsOut,
}

/// A customer's next best offers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CustomerOffers {
    /// The customer.
    pub customer_id: String,
    /// Send it back with offer events.
    pub recommendation_id: String,
    /// Best first; empty when nothing is eligible (or the customer opted out).
    pub offers: Vec<OfferOffered>,
}

/// Next best offers with the model version that chose them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OffersAnswer {
    /// Model version.
    pub model_version: String,
    /// Set when an earlier version answers because the live one could not be loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Channel asked for.
    pub channel: String,
    /// The customer's offers.
    #[serde(flatten)]
    pub customer: CustomerOffers,
}

fn due_out(
    model: &Model,
    item: Option<u32>,
    category: Option<u32>,
    days_since: f64,
    typical_days: f64,
) -> DueOut {
    DueOut {
        item_id: item.map(|i| model.items.id(i).to_owned()),
        category: category.and_then(|c| model.categories.get(c as usize).cloned()),
        days_since,
        typical_days,
    }
}

fn offered(
    model: &Model,
    titles: &HashMap<String, Option<String>>,
    o: ScoredOffer,
) -> OfferOffered {
    let item = |i: u32| model.items.id(i).to_owned();
    let r = o.reasons;
    OfferOffered {
        title: titles.get(&o.offer_id).cloned().flatten(),
        offer_id: o.offer_id,
        expected_net_value: o.expected_net_value,
        propensity: o.propensity,
        reasons: ReasonsOut {
            kind: serde_json::to_value(r.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            tier: r.tier,
            affinity: r.affinity,
            calibrated_on: r.calibrated_on,
            churn_risk: r.churn_risk,
            clv: r.clv,
            retained_value: r.retained_value,
            matched_purchases: r
                .matched_purchases
                .iter()
                .map(|m| MatchedOut {
                    item_id: item(m.item),
                    similarity: m.similarity,
                    direct: m.direct,
                })
                .collect(),
            due: r
                .due
                .iter()
                .map(|d| due_out(model, d.item, d.category, d.days_since, d.typical_days))
                .collect(),
            excluded_items: r.excluded_items.iter().map(|&i| item(i)).collect(),
        },
    }
}

fn titles(engine: &OfferEngine<'_>) -> HashMap<String, Option<String>> {
    engine
        .offers()
        .map(|o| (o.id.clone(), o.title.clone()))
        .collect()
}

/// Query of a customer's next best offers.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OffersQuery {
    /// The channel asking (email, web, app, ...; 1..=64 characters).
    #[param(value_type = ChannelName)]
    pub channel: String,
    /// Most offers (1..=20, default 3).
    #[param(minimum = 1, maximum = 20)]
    pub limit: Option<u32>,
    /// Allow two offers of the same category (default false).
    pub allow_same_category: Option<bool>,
}

/// A customer's next best offers on a channel, with structured reasons and a
/// recommendation id to send back with offer events.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/offers",
    tag = "offers",
    params(("customer_id" = Id, Path, description = "The customer"), OffersQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Best offers first", body = OffersAnswer),
        (status = 400, description = "Invalid id, channel or limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-decide scope, or is a storefront token", body = ErrorBody),
        (status = 503, description = "No model or customer insight yet", body = ErrorBody)
    )
)]
async fn customer_offers(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<OffersQuery>,
) -> Result<Json<OffersAnswer>, ApiError> {
    caller.require(Scope::OffersDecide)?;
    let customer =
        CustomerId::parse(raw).map_err(|e| ApiError::field("customer_id", store_reason(e)))?;
    let request = offer_request(&q.channel, q.limit, q.allow_same_category)?;
    let (serving, snapshot) = crm_version(&state, &caller).await?;
    let records = state.stores.records.as_ref();
    let model = &serving.model;
    let engine = engine(&state, &caller, model, &snapshot).await?;
    let data = crm::read_customer(records, &caller.tenant, model, &snapshot, &customer).await?;
    let titles = titles(&engine);
    let offers = crm::offers_for(&engine, &data, &request)
        .into_iter()
        .map(|o| offered(model, &titles, o))
        .collect();
    Ok(Json(OffersAnswer {
        degraded: serving.degraded.clone(),
        model_version: serving.version.version.as_str().to_owned(),
        channel: request.channel,
        customer: CustomerOffers {
            customer_id: customer.as_str().to_owned(),
            recommendation_id: recommendation_id()?.as_str().to_owned(),
            offers,
        },
    }))
}

/// Next best offers for many customers (an email send).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// The customers (1..=1000).
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 1000)]
    pub customer_ids: Vec<String>,
    /// The channel.
    #[schema(value_type = ChannelName)]
    pub channel: String,
    /// Most offers per customer (1..=20, default 3).
    #[schema(minimum = 1, maximum = 20)]
    pub limit: Option<u32>,
    /// Allow two offers of the same category (default false).
    pub allow_same_category: Option<bool>,
}

/// Next best offers of many customers, all from one model version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchOut {
    /// Model version every answer comes from.
    pub model_version: String,
    /// Set when an earlier version answers because the live one could not be loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Channel asked for.
    pub channel: String,
    /// One answer per customer, in request order.
    pub results: Vec<CustomerOffers>,
}

/// Next best offers for up to 1,000 customers in one call, all answered from one model
/// version; the same answers as one call per customer.
#[utoipa::path(
    post,
    path = "/v1/offers/batch",
    tag = "offers",
    request_body = BatchIn,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One answer per customer", body = BatchOut),
        (status = 400, description = "Empty batch, more than 1,000 customers, invalid id, channel or limit", body = ErrorBody),
        (status = 429, description = "Rate limit of this key reached; see Retry-After", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-decide scope, or is a storefront token", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "No model or customer insight yet", body = ErrorBody)
    )
)]
async fn batch_offers(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchIn>,
) -> Result<Json<BatchOut>, ApiError> {
    caller.require(Scope::OffersDecide)?;
    state.rate_limits.check(&caller, Expensive::BatchOffers)?;
    batch_len("customer_ids", body.customer_ids.len(), MAX_BATCH_CUSTOMERS)?;
    let ids: Vec<CustomerId> = body
        .customer_ids
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            CustomerId::parse(raw)
                .map_err(|e| ApiError::field(format!("customer_ids[{i}]"), store_reason(e)))
        })
        .collect::<Result<_, _>>()?;
    let request = offer_request(&body.channel, body.limit, body.allow_same_category)?;
    let (serving, snapshot) = crm_version(&state, &caller).await?;
    let records = state.stores.records.as_ref();
    let model = &serving.model;
    let engine = engine(&state, &caller, model, &snapshot).await?;
    let data = crm::read_customers(records, &caller.tenant, model, &snapshot, &ids).await?;
    // Customers without marketing consent get nothing; the others are scored in parallel
    // in one pass.
    let views: Vec<_> = data
        .iter()
        .filter(|d| d.consent.marketing)
        .map(|d| d.view())
        .collect();
    let mut scored = engine.batch(&views, &request).into_iter();
    let titles = titles(&engine);
    let mut results = Vec::with_capacity(ids.len());
    for (id, d) in ids.iter().zip(&data) {
        let offers = if !d.consent.marketing {
            Vec::new()
        } else {
            scored.next().unwrap_or_default()
        };
        results.push(CustomerOffers {
            customer_id: id.as_str().to_owned(),
            recommendation_id: recommendation_id()?.as_str().to_owned(),
            offers: offers
                .into_iter()
                .map(|o| offered(model, &titles, o))
                .collect(),
        });
    }
    Ok(Json(BatchOut {
        degraded: serving.degraded.clone(),
        model_version: serving.version.version.as_str().to_owned(),
        channel: request.channel,
        results,
    }))
}

/// Query of an item's audience.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AudienceQuery {
    /// Most customers (1..=1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One customer of an audience.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AudienceMember {
    /// The customer.
    pub customer_id: String,
    /// Affinity of the customer's folded-in vector for the item (higher: likelier).
    pub score: f32,
    /// Value tier.
    pub tier: String,
    /// Churn risk (1 - P(alive)).
    pub churn_risk: Option<f64>,
}

/// The customers most likely to buy an item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Audience {
    /// The item.
    pub item_id: String,
    /// Model version.
    pub model_version: String,
    /// Customers who may be told about it: not opted out, not owning it already (unless
    /// it is bought again and again).
    pub eligible: u64,
    /// The likeliest buyers, best first.
    pub customers: Vec<AudienceMember>,
}

/// The customers most likely to buy an item (a new-arrival email), with the count of
/// customers eligible.
#[utoipa::path(
    get,
    path = "/v1/items/{item_id}/audience",
    tag = "offers",
    params(("item_id" = Id, Path, description = "The item"), AudienceQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Likeliest buyers first", body = Audience),
        (status = 400, description = "Invalid id or limit", body = ErrorBody),
        (status = 429, description = "Rate limit of this key reached; see Retry-After", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-decide scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "Item unknown to the live model", body = ErrorBody),
        (status = 503, description = "No model or customer insight yet", body = ErrorBody)
    )
)]
async fn item_audience(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<AudienceQuery>,
) -> Result<Json<Audience>, ApiError> {
    caller.require(Scope::OffersDecide)?;
    state.rate_limits.check(&caller, Expensive::Audience)?;
    let item = item_id("item_id", &raw)?;
    let n = limit(q.limit, 100, MAX_AUDIENCE)?;
    let (serving, snapshot) = crm_version(&state, &caller).await?;
    let model = &serving.model;
    let idx = model
        .item_index(item.as_str())
        .ok_or_else(|| ApiError::not_found("item", item.as_str()))?;
    let records = state.stores.records.as_ref();
    let repurchasable = crm::repurchasable_flags(records, &caller.tenant, model).await?;
    let customers = crm::all_customers(records, &caller.tenant, model, &snapshot, &[]).await?;
    let (eligible, ranked) = {
        let (model, customers) = (Arc::clone(model), customers);
        let again = repurchasable.get(idx as usize).copied().unwrap_or(true);
        tokio::task::spawn_blocking(move || crm::audience(&model, idx, again, &customers, n))
            .await
            .map_err(|e| ApiError::Internal(format!("audience: {e}")))?
    };
    let customers = ranked
        .into_iter()
        .map(|(id, score)| {
            let p = snapshot.profile(id.as_str());
            AudienceMember {
                customer_id: id.as_str().to_owned(),
                score,
                tier: p.tier,
                churn_risk: p.churn_risk,
            }
        })
        .collect();
    Ok(Json(Audience {
        item_id: item.as_str().to_owned(),
        model_version: serving.version.version.as_str().to_owned(),
        eligible: eligible as u64,
        customers,
    }))
}

/// RFM quintile scores (5 = best).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RfmOut {
    /// Recency score.
    pub recency: u8,
    /// Frequency score.
    pub frequency: u8,
    /// Monetary score.
    pub monetary: u8,
    /// The three as one code, e.g. `545`.
    pub code: String,
}

/// A customer's consent per use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentOut {
    /// Recommendations from their purchase history (without it: popular items).
    pub personalization: bool,
    /// Offers, audiences and batch sends (without it: none).
    pub marketing: bool,
}

impl From<affinity_store::Consent> for ConsentOut {
    fn from(c: affinity_store::Consent) -> Self {
        Self {
            personalization: c.personalization,
            marketing: c.marketing,
        }
    }
}

impl From<ConsentOut> for affinity_store::Consent {
    fn from(c: ConsentOut) -> Self {
        Self {
            personalization: c.personalization,
            marketing: c.marketing,
        }
    }
}

/// What the shop knows about one customer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileOut {
    /// The customer.
    pub customer_id: String,
    /// Model version the profile was computed with.
    pub model_version: String,
    /// End of the observation window (the model's data watermark).
    pub observation_end: Option<DateTime<Utc>>,
    /// False for a customer with no purchase in the window (newcomer figures).
    pub known: bool,
    /// What the customer consented to (`PUT /v1/customers/{customer_id}/consent`).
    pub consent: ConsentOut,
    /// Days since the last purchase at observation end.
    pub days_since_last: f64,
    /// Repeat purchase periods (BG/NBD frequency).
    pub frequency: u32,
    /// Total spend in the window.
    pub total_spend: f64,
    /// Mean spend of the repeat periods.
    pub monetary_value: f64,
    /// RFM quintile scores.
    pub rfm: RfmOut,
    /// Value tier.
    pub tier: String,
    /// BG/NBD probability of being alive.
    pub p_alive: Option<f64>,
    /// 1 - P(alive).
    pub churn_risk: Option<f64>,
    /// Expected purchases in the next `horizon_days`.
    pub expected_purchases: Option<f64>,
    /// Horizon of `expected_purchases`, in days.
    pub horizon_days: f64,
    /// Discounted customer lifetime value over `clv_months`.
    pub clv: Option<f64>,
    /// CLV horizon in months.
    pub clv_months: u32,
    /// Items and categories the customer is due to buy again now.
    pub due: Vec<DueOut>,
}

/// A customer's profile: RFM with quintile scores, tier, P(alive), expected purchases,
/// CLV and what they are due to buy again.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/profile",
    tag = "offers",
    params(("customer_id" = Id, Path, description = "The customer")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The profile", body = ProfileOut),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the profiles-read scope, or is a storefront token", body = ErrorBody),
        (status = 503, description = "No model or customer insight yet", body = ErrorBody)
    )
)]
async fn customer_profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ProfileOut>, ApiError> {
    caller.require(Scope::ProfilesRead)?;
    let customer =
        CustomerId::parse(raw).map_err(|e| ApiError::field("customer_id", store_reason(e)))?;
    let (serving, snapshot) = crm_version(&state, &caller).await?;
    let model = &serving.model;
    let data = crm::read_customer(
        state.stores.records.as_ref(),
        &caller.tenant,
        model,
        &snapshot,
        &customer,
    )
    .await?;
    let known = snapshot
        .profiles
        .get(&customer.as_str().to_owned())
        .is_some();
    let due: Vec<DueKey> = crm::due_items(
        model,
        &snapshot,
        &data.purchases,
        Utc::now().timestamp(),
        &EngineConfig::default(),
    );
    let p = &data.profile;
    let config = &snapshot.profiles.config;
    Ok(Json(ProfileOut {
        customer_id: customer.as_str().to_owned(),
        model_version: serving.version.version.as_str().to_owned(),
        observation_end: DateTime::from_timestamp(snapshot.profiles.observation_end, 0),
        known,
        consent: data.consent.into(),
        days_since_last: p.days_since_last,
        frequency: p.frequency,
        total_spend: p.total_spend,
        monetary_value: p.monetary_value,
        rfm: RfmOut {
            recency: p.rfm.r,
            frequency: p.rfm.f,
            monetary: p.rfm.m,
            code: p.rfm.code(),
        },
        tier: p.tier.clone(),
        p_alive: p.p_alive,
        churn_risk: p.churn_risk,
        expected_purchases: p.expected_purchases,
        horizon_days: config.horizon_days,
        clv: p.clv,
        clv_months: config.clv_months,
        due: due
            .iter()
            .map(|d| due_out(model, d.item, d.category, d.days_since, d.typical_days))
            .collect(),
    }))
}
