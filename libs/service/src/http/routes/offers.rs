//! Offers: create, read, list and update offer documents; record offer events (shown,
//! accepted, declined; idempotent by event id); the response report of an offer by tier;
//! a dry run of an offer before it goes live. Scope `offers`.
//!
//! Offer documents are checked by the engine's parser (`affinity_model::crm::offers`), so
//! what the API accepts is exactly what the engine can serve; a refused document is a 400
//! whose message names the field (`eligibility.end`, `caps.cooldown_days`, ...).

use std::collections::{BTreeMap, BTreeSet};

use affinity_model::crm::offers::Offer;
use affinity_store::{
    Channel, CustomerId, EventId, OfferEvent, OfferEventKind, OfferId, OfferRecord, OfferStatus,
    RecommendationId, Scope,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::crm::{self, Response, response_by_tier};
use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{
    ApiJson, ApiPath, ChannelName, Id, batch_len, lenient_rows, store_reason, string_enum,
};
use crate::http::ratelimit::Expensive;
use crate::http::routes::crm::{crm_version, parse_channel};
use crate::http::routes::ingest::{BatchResult, RowResult, parse_rows};
use crate::http::state::AppState;
use crate::settings::Limits;

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_offer, list_offers))
        .routes(routes!(get_offer, update_offer))
        .routes(routes!(record_events))
        .routes(routes!(offer_report))
        .routes(routes!(dry_run))
}

/// Id a draft offer gets in a dry run (cannot collide: offer ids may not start with `~`
/// in documents created through this API).
const DRAFT_ID: &str = "~draft";

/// OpenAPI schema of an offer id chosen at creation: an [`Id`] not starting with `~`
/// (reserved for the dry run's draft).
pub struct NewOfferId;

impl utoipa::PartialSchema for NewOfferId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut schema = Id::schema();
        if let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o)) = &mut schema {
            o.pattern = o.pattern.as_ref().map(|p| p.replacen("^[^", "^[^~", 1));
            o.description = Some("An `Id` that does not start with `~`".to_owned());
        }
        schema
    }
}

impl ToSchema for NewOfferId {}

/// OpenAPI schema of an offer status: `active`, `paused` or `archived`.
pub struct OfferStatusName;

impl utoipa::PartialSchema for OfferStatusName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_enum(
            [
                OfferStatus::Active,
                OfferStatus::Paused,
                OfferStatus::Archived,
            ]
            .map(OfferStatus::as_str),
        )
    }
}

impl ToSchema for OfferStatusName {}

/// OpenAPI schema of an offer event kind: `shown`, `accepted` or `declined`.
pub struct EventKindName;

impl utoipa::PartialSchema for EventKindName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_enum(
            [
                OfferEventKind::Shown,
                OfferEventKind::Accepted,
                OfferEventKind::Declined,
            ]
            .map(OfferEventKind::as_str),
        )
    }
}

impl ToSchema for EventKindName {}

fn event_rows() -> utoipa::openapi::schema::Array {
    lenient_rows::<EventIn>(Limits::default().max_batch)
}

/// An offer as stored: its id, status and document.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OfferOut {
    /// Offer id.
    pub offer_id: String,
    /// `active` (served), `paused` or `archived`.
    pub status: String,
    /// The offer document (see docs/crm.md: kind, items, categories, value, cost,
    /// eligibility, caps).
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<OfferRecord> for OfferOut {
    fn from(r: OfferRecord) -> Self {
        Self {
            offer_id: r.offer_id.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            document: r.document,
            updated_at: r.updated_at,
        }
    }
}

/// A new offer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOffer {
    /// Offer id (1..=128 characters, not starting with `~`).
    #[schema(value_type = NewOfferId)]
    pub offer_id: String,
    /// `active` (default), `paused` or `archived`.
    #[schema(value_type = Option<OfferStatusName>)]
    pub status: Option<String>,
    /// The offer document.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
}

/// Changes to an offer: a new document, a new status, or both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferUpdate {
    /// New status.
    #[schema(value_type = Option<OfferStatusName>)]
    pub status: Option<String>,
    /// New document (replaces the old one whole).
    #[schema(value_type = Option<Object>)]
    pub document: Option<serde_json::Value>,
}

/// The tenant's offers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OfferList {
    /// Sorted by offer id.
    pub offers: Vec<OfferOut>,
}

fn parse_offer_id(raw: &str) -> Result<OfferId, ApiError> {
    if raw.starts_with('~') {
        return Err(ApiError::field("offer_id", "must not start with `~`"));
    }
    OfferId::parse(raw).map_err(|e| ApiError::field("offer_id", store_reason(e)))
}

fn parse_status(raw: Option<&str>, default: OfferStatus) -> Result<OfferStatus, ApiError> {
    raw.map_or(Ok(default), |s| {
        s.parse()
            .map_err(|_| ApiError::field("status", "must be active, paused or archived"))
    })
}

/// Checks a document with the engine's parser; the error names the field.
fn check_document(id: &str, document: &serde_json::Value) -> Result<Offer, ApiError> {
    Offer::parse(id, document).map_err(|e| match e {
        affinity_model::Error::InvalidOffer { field, reason } => {
            ApiError::field(format!("document.{field}"), reason)
        }
        other => ApiError::field("document", other.to_string()),
    })
}

/// Creates an offer; 409 if the id is taken.
#[utoipa::path(
    post,
    path = "/v1/offers",
    tag = "offers",
    request_body = NewOffer,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = OfferOut),
        (status = 400, description = "Invalid offer; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 409, description = "An offer with this id exists", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody)
    )
)]
async fn create_offer(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewOffer>,
) -> Result<(StatusCode, Json<OfferOut>), ApiError> {
    caller.require(Scope::OffersManage)?;
    let id = parse_offer_id(&body.offer_id)?;
    let status = parse_status(body.status.as_deref(), OfferStatus::Active)?;
    check_document(id.as_str(), &body.document)?;
    let records = state.stores.records.as_ref();
    if records.get_offer(&caller.tenant, &id).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "offer {} exists; PUT /v1/offers/{{offer_id}} changes it",
            id.as_str()
        )));
    }
    let record = OfferRecord {
        offer_id: id,
        status,
        document: body.document,
        updated_at: affinity_store::normalize_time(Utc::now()),
    };
    write_offer(&state, &caller, &record).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

async fn write_offer(
    state: &AppState,
    caller: &Caller,
    record: &OfferRecord,
) -> Result<(), ApiError> {
    let out = state
        .stores
        .records
        .upsert_offers(&caller.tenant, std::slice::from_ref(record))
        .await?;
    match out.first() {
        Some(affinity_store::UpsertOutcome::Written) => Ok(()),
        Some(affinity_store::UpsertOutcome::Invalid(r)) => {
            Err(ApiError::field("document", r.clone()))
        }
        None => Err(ApiError::Internal("the store answered no outcome".into())),
    }
}

/// Every offer of the tenant.
#[utoipa::path(
    get,
    path = "/v1/offers",
    tag = "offers",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Offers sorted by id", body = OfferList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-manage scope, or is a storefront token", body = ErrorBody)
    )
)]
async fn list_offers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<OfferList>, ApiError> {
    caller.require(Scope::OffersManage)?;
    let offers = state.stores.records.list_offers(&caller.tenant).await?;
    Ok(Json(OfferList {
        offers: offers.into_iter().map(OfferOut::from).collect(),
    }))
}

async fn read_offer(state: &AppState, caller: &Caller, raw: &str) -> Result<OfferRecord, ApiError> {
    let id = OfferId::parse(raw).map_err(|e| ApiError::field("offer_id", store_reason(e)))?;
    state
        .stores
        .records
        .get_offer(&caller.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("offer", raw))
}

/// One offer.
#[utoipa::path(
    get,
    path = "/v1/offers/{offer_id}",
    tag = "offers",
    params(("offer_id" = Id, Path, description = "The offer")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The offer", body = OfferOut),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "Unknown offer", body = ErrorBody)
    )
)]
async fn get_offer(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<OfferOut>, ApiError> {
    caller.require(Scope::OffersManage)?;
    Ok(Json(read_offer(&state, &caller, &raw).await?.into()))
}

/// Replaces an offer's document and/or status (pause, archive, reactivate).
#[utoipa::path(
    put,
    path = "/v1/offers/{offer_id}",
    tag = "offers",
    params(("offer_id" = Id, Path, description = "The offer")),
    request_body = OfferUpdate,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The offer as stored", body = OfferOut),
        (status = 400, description = "Invalid offer; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "Unknown offer", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody)
    )
)]
async fn update_offer(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<OfferUpdate>,
) -> Result<Json<OfferOut>, ApiError> {
    caller.require(Scope::OffersManage)?;
    let current = read_offer(&state, &caller, &raw).await?;
    let status = parse_status(body.status.as_deref(), current.status)?;
    let document = body.document.unwrap_or(current.document);
    check_document(current.offer_id.as_str(), &document)?;
    let record = OfferRecord {
        offer_id: current.offer_id,
        status,
        document,
        updated_at: affinity_store::normalize_time(Utc::now()),
    };
    write_offer(&state, &caller, &record).await?;
    Ok(Json(record.into()))
}

/// One offer event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Idempotency key: a retried event with the same id is a duplicate.
    #[schema(value_type = Id)]
    pub event_id: EventId,
    /// The customer.
    #[schema(value_type = Id)]
    pub customer_id: CustomerId,
    /// The offer (must exist).
    #[schema(value_type = Id)]
    pub offer_id: OfferId,
    /// `shown`, `accepted` or `declined`.
    #[schema(value_type = EventKindName)]
    pub kind: OfferEventKind,
    /// Where (email, web, app, ...); caps and cooldowns count every channel.
    #[schema(value_type = ChannelName)]
    pub channel: Channel,
    /// The `recommendation_id` of the answer the offer came from.
    #[schema(value_type = Option<Id>)]
    pub recommendation_id: Option<RecommendationId>,
    /// When (RFC 3339; default now; at most one day after the request).
    pub at: Option<DateTime<Utc>>,
}

/// A batch of offer events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// The events (1..=500): each an `EventIn`; a row that is not one is answered `invalid`.
    #[schema(schema_with = event_rows)]
    pub events: Vec<serde_json::Value>,
}

/// Records offer events, idempotently by event id; they drive caps, cooldowns, budgets and
/// the response report.
#[utoipa::path(
    post,
    path = "/v1/offers/events",
    tag = "offers",
    request_body = EventBatch,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One result per event", body = BatchResult),
        (status = 400, description = "Empty or oversized batch, bad JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-decide scope, or is a storefront token", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody)
    )
)]
async fn record_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(batch): ApiJson<EventBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    caller.require(Scope::OffersDecide)?;
    batch_len("events", batch.events.len(), state.limits.max_batch)?;
    let now = Utc::now();
    let records = state.stores.records.as_ref();
    let known: BTreeSet<String> = records
        .list_offers(&caller.tenant)
        .await?
        .into_iter()
        .map(|o| o.offer_id.as_str().to_owned())
        .collect();
    let (rows, mut results) = parse_rows(batch.events, |e: &EventIn| {
        if !known.contains(e.offer_id.as_str()) {
            return Err(affinity_store::Error::invalid(
                "offer_id",
                format!("unknown offer {:?}", e.offer_id.as_str()),
            ));
        }
        to_event(e, now).validate_at(now)
    });
    let events: Vec<OfferEvent> = rows.iter().map(|(_, e)| to_event(e, now)).collect();
    if !events.is_empty() {
        let outcomes = records.put_offer_events(&caller.tenant, &events).await?;
        for ((index, _), outcome) in rows.iter().zip(outcomes) {
            results.push(RowResult::from_outcome(
                *index,
                outcome,
                "another event with this event_id is stored",
            ));
        }
    }
    results.sort_by_key(|r| r.index);
    Ok(Json(BatchResult::of(results)))
}

fn to_event(e: &EventIn, now: DateTime<Utc>) -> OfferEvent {
    OfferEvent {
        event_id: e.event_id.clone(),
        customer_id: e.customer_id.clone(),
        offer_id: e.offer_id.clone(),
        kind: e.kind,
        channel: e.channel.clone(),
        recommendation_id: e.recommendation_id.clone(),
        at: e.at.unwrap_or(now),
    }
}

/// How an offer has done, overall and by the customers' current tier.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OfferReport {
    /// The offer.
    pub offer_id: String,
    /// Model version whose profiles gave the tiers.
    pub model_version: String,
    /// All customers.
    pub total: Response,
    /// By tier name.
    pub by_tier: BTreeMap<String, Response>,
}

/// The response report of an offer: shown, accepted, declined and the acceptance rate, by
/// tier.
#[utoipa::path(
    get,
    path = "/v1/offers/{offer_id}/report",
    tag = "offers",
    params(("offer_id" = Id, Path, description = "The offer")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Response counts", body = OfferReport),
        (status = 429, description = "Rate limit of this key reached; see Retry-After", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "Unknown offer", body = ErrorBody),
        (status = 503, description = "No model or customer insight yet", body = ErrorBody)
    )
)]
async fn offer_report(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<OfferReport>, ApiError> {
    caller.require(Scope::OffersManage)?;
    state.rate_limits.check(&caller, Expensive::Reports)?;
    let record = read_offer(&state, &caller, &raw).await?;
    let (serving, snapshot) = crm_version(&state, &caller).await?;
    let events = state
        .stores
        .records
        .events_by_offer(&caller.tenant, &record.offer_id, None, usize::MAX >> 1)
        .await?;
    let (total, by_tier) = response_by_tier(&events, &snapshot);
    Ok(Json(OfferReport {
        offer_id: record.offer_id.as_str().to_owned(),
        model_version: serving.version.version.as_str().to_owned(),
        total,
        by_tier,
    }))
}

/// A dry run: an existing offer (by id, whatever its status) or a draft document.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunIn {
    /// An existing offer (give this or `document`).
    #[schema(value_type = Option<Id>)]
    pub offer_id: Option<String>,
    /// A draft offer document (give this or `offer_id`).
    #[schema(value_type = Option<Object>)]
    pub document: Option<serde_json::Value>,
    /// The channel to evaluate for (default `email`).
    #[schema(value_type = Option<ChannelName>)]
    pub channel: Option<String>,
    /// The instant to evaluate at (default now): try an offer that starts next week.
    pub at: Option<DateTime<Utc>>,
}

/// How many customers an offer would reach.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRunOut {
    /// The offer (absent for a draft).
    pub offer_id: Option<String>,
    /// Model version every figure comes from.
    pub model_version: String,
    /// Channel evaluated.
    pub channel: String,
    /// Instant evaluated.
    pub at: DateTime<Utc>,
    /// Customers examined (every customer of the model's profiles).
    pub customers: u64,
    /// Customers eligible for the offer.
    pub eligible: u64,
    /// Customers whose best offer (among the live ones and this one) it would be.
    pub first: u64,
    /// Eligible customers by tier.
    pub eligible_by_tier: BTreeMap<String, u64>,
    /// First-offer customers by tier.
    pub first_by_tier: BTreeMap<String, u64>,
}

/// Dry run of an offer before it goes live: eligible customers and those who would get it
/// as their first offer, overall and by tier, against the live offers.
#[utoipa::path(
    post,
    path = "/v1/offers/dry-run",
    tag = "offers",
    request_body = DryRunIn,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Counts", body = DryRunOut),
        (status = 400, description = "Neither or both of offer_id and document, invalid document", body = ErrorBody),
        (status = 429, description = "Rate limit of this key reached; see Retry-After", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the offers-manage scope, or is a storefront token", body = ErrorBody),
        (status = 404, description = "Unknown offer", body = ErrorBody),
        (status = 503, description = "No model or customer insight yet", body = ErrorBody)
    )
)]
async fn dry_run(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<DryRunIn>,
) -> Result<Json<DryRunOut>, ApiError> {
    caller.require(Scope::OffersManage)?;
    state.rate_limits.check(&caller, Expensive::DryRun)?;
    let channel = parse_channel(body.channel.as_deref().unwrap_or("email"))?;
    let at = body.at.unwrap_or_else(Utc::now);
    let offer = match (&body.offer_id, &body.document) {
        (Some(raw), None) => {
            let record = read_offer(&state, &caller, raw).await?;
            crm::offer_from_record(&record)
                .map_err(|e| ApiError::field("document", e.to_string()))?
        }
        (None, Some(doc)) => check_document(DRAFT_ID, doc)?,
        _ => {
            return Err(ApiError::field(
                "offer_id",
                "give either offer_id or document, not both or neither",
            ));
        }
    };
    let (serving, snapshot) = crm_version(&state, &caller).await?;
    let d = crm::dry_run(
        state.stores.records.as_ref(),
        &caller.tenant,
        &serving.model,
        &snapshot,
        offer,
        channel.as_str(),
        at.timestamp(),
    )
    .await?;
    Ok(Json(DryRunOut {
        offer_id: body.offer_id,
        model_version: serving.version.version.as_str().to_owned(),
        channel: channel.as_str().to_owned(),
        at,
        customers: d.customers,
        eligible: d.eligible,
        first: d.first,
        eligible_by_tier: d.eligible_by_tier,
        first_by_tier: d.first_by_tier,
    }))
}
