//! Ingestion: purchases (`POST /v1/purchases`, idempotent by order and line) and catalog
//! items (`POST /v1/items`, upsert), each a batch answered with one result per row.
//!
//! The envelope must be valid (a JSON object with the one list, 1..=max rows); each row is
//! then parsed on its own, so one bad row is reported and the others are written.

use std::num::NonZeroU32;

use affinity_store::{
    CatalogItem, Category, Currency, CustomerId, ItemId, OrderId, Purchase, Scope, UpsertOutcome,
    WriteOutcome,
};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::http::auth::Caller;
use crate::http::extract::{ApiJson, Id, batch_len, lenient_rows, store_reason};
use crate::http::state::AppState;
use crate::settings::Limits;

/// Routes of this group.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest_purchases))
        .routes(routes!(upsert_items))
}

/// One purchased order line.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseIn {
    /// Order number (1..=128 characters).
    #[schema(value_type = Id)]
    pub order_id: OrderId,
    /// Line within the order (default 1); (order_id, line) is the row's identity.
    #[serde(default = "one")]
    pub line: u32,
    /// Who bought.
    #[schema(value_type = Id)]
    pub customer_id: CustomerId,
    /// What was bought.
    #[schema(value_type = Id)]
    pub item_id: ItemId,
    /// Units (default 1, 1..=1,000,000).
    #[serde(default = "one_unit")]
    #[schema(value_type = u32, minimum = 1, maximum = 1_000_000)]
    pub quantity: NonZeroU32,
    /// Unit price in minor units (cents), 0..=10^12 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub unit_price_minor: i64,
    /// ISO 4217 code, e.g. `EUR`.
    #[schema(value_type = Option<String>, pattern = "^[A-Z]{3}$")]
    pub currency: Option<Currency>,
    /// When it was bought (RFC 3339, 1970..=9999, at most one day after the request).
    pub purchased_at: DateTime<Utc>,
}

fn purchase_rows() -> utoipa::openapi::schema::Array {
    lenient_rows::<PurchaseIn>(Limits::default().max_batch)
}

fn item_rows() -> utoipa::openapi::schema::Array {
    lenient_rows::<ItemIn>(Limits::default().max_batch)
}

fn one() -> u32 {
    1
}

fn one_unit() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// A batch of purchases.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBatch {
    /// The rows (1..=500): each a `PurchaseIn`; a row that is not one is answered `invalid`.
    #[schema(schema_with = purchase_rows)]
    pub purchases: Vec<serde_json::Value>,
}

/// One catalog item.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemIn {
    /// Item id (1..=128 characters).
    #[schema(value_type = Id)]
    pub item_id: ItemId,
    /// Display title (at most 2048 characters).
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub title: String,
    /// Category.
    #[schema(value_type = Option<Id>)]
    pub category: Option<Category>,
    /// Price in minor units, 0..=10^12 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price_minor: i64,
    /// ISO 4217 code.
    #[schema(value_type = Option<String>, pattern = "^[A-Z]{3}$")]
    pub currency: Option<Currency>,
    /// Whether it can be bought now (default true).
    #[serde(default = "yes")]
    pub in_stock: bool,
    /// When it was added (default: now).
    pub created_at: Option<DateTime<Utc>>,
    /// Whether customers buy it again and again (default false).
    #[serde(default)]
    pub repurchasable: bool,
    /// Free-form attributes (a JSON object, at most 64 KiB).
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// A batch of catalog items.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBatch {
    /// The rows (1..=500): each an `ItemIn`; a row that is not one is answered `invalid`.
    #[schema(schema_with = item_rows)]
    pub items: Vec<serde_json::Value>,
}

/// What happened to one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Stored (new purchase).
    Inserted,
    /// An identical row was already stored; nothing changed.
    Duplicate,
    /// A different row with the same identity is stored; not overwritten.
    Conflict,
    /// Stored (item created or replaced).
    Written,
    /// Refused; see `reason`.
    Invalid,
}

/// The result of one row, by its position in the batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RowResult {
    /// 0-based position in the request.
    pub index: usize,
    /// What happened.
    pub result: RowStatus,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Per-row results and their counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// Rows stored.
    pub written: usize,
    /// Rows already stored identically (purchases only).
    pub duplicates: usize,
    /// Rows refused because another row holds the identity (purchases only).
    pub conflicts: usize,
    /// Rows refused by validation.
    pub invalid: usize,
    /// One result per row, in request order.
    pub results: Vec<RowResult>,
}

impl RowResult {
    /// The result of a row the store was asked to write; `conflict` says which identity clashed.
    pub(crate) fn from_outcome(index: usize, outcome: WriteOutcome, conflict: &str) -> Self {
        let (result, reason) = match outcome {
            WriteOutcome::Inserted => (RowStatus::Inserted, None),
            WriteOutcome::Duplicate => (RowStatus::Duplicate, None),
            WriteOutcome::Conflict => (RowStatus::Conflict, Some(conflict.to_owned())),
            WriteOutcome::Invalid(r) => (RowStatus::Invalid, Some(r)),
        };
        Self {
            index,
            result,
            reason,
        }
    }
}

impl BatchResult {
    pub(crate) fn of(results: Vec<RowResult>) -> Self {
        let count = |s: &[RowStatus]| results.iter().filter(|r| s.contains(&r.result)).count();
        Self {
            written: count(&[RowStatus::Inserted, RowStatus::Written]),
            duplicates: count(&[RowStatus::Duplicate]),
            conflicts: count(&[RowStatus::Conflict]),
            invalid: count(&[RowStatus::Invalid]),
            results,
        }
    }
}

/// Parses each row on its own; bad rows become `Invalid` results.
pub(crate) fn parse_rows<T: DeserializeOwned>(
    rows: Vec<serde_json::Value>,
    check: impl Fn(&T) -> affinity_store::Result<()>,
) -> (Vec<(usize, T)>, Vec<RowResult>) {
    let mut ok = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for (index, v) in rows.into_iter().enumerate() {
        let parsed = serde_json::from_value::<T>(v)
            .map_err(|e| crate::error::clip(&e.to_string()))
            .and_then(|row| check(&row).map(|()| row).map_err(store_reason));
        match parsed {
            Ok(row) => ok.push((index, row)),
            Err(reason) => bad.push(RowResult {
                index,
                result: RowStatus::Invalid,
                reason: Some(reason),
            }),
        }
    }
    (ok, bad)
}

/// Records purchases; retries of the same rows are reported as duplicates.
#[utoipa::path(
    post,
    path = "/v1/purchases",
    tag = "ingestion",
    request_body = PurchaseBatch,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One result per row", body = BatchResult),
        (status = 400, description = "Empty or oversized batch, bad JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the ingest scope", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody)
    )
)]
async fn ingest_purchases(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(batch): ApiJson<PurchaseBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    caller.require(Scope::Ingest)?;
    batch_len("purchases", batch.purchases.len(), state.limits.max_batch)?;
    let now = Utc::now();
    let (rows, mut results) = parse_rows(batch.purchases, |p: &PurchaseIn| {
        to_purchase(p).validate_at(now)
    });
    let purchases: Vec<Purchase> = rows.iter().map(|(_, p)| to_purchase(p)).collect();
    if !purchases.is_empty() {
        let outcomes = state
            .stores
            .records
            .put_purchases(&caller.tenant, &purchases)
            .await?;
        for ((index, _), outcome) in rows.iter().zip(outcomes) {
            results.push(RowResult::from_outcome(
                *index,
                outcome,
                "another purchase with this order_id and line is stored",
            ));
        }
    }
    results.sort_by_key(|r| r.index);
    let summary = BatchResult::of(results);
    tracing::info!(
        written = summary.written,
        duplicates = summary.duplicates,
        conflicts = summary.conflicts,
        invalid = summary.invalid,
        "purchases ingested"
    );
    Ok(Json(summary))
}

fn to_purchase(p: &PurchaseIn) -> Purchase {
    Purchase {
        order_id: p.order_id.clone(),
        line: p.line,
        customer_id: p.customer_id.clone(),
        item_id: p.item_id.clone(),
        quantity: p.quantity,
        unit_price_minor: p.unit_price_minor,
        currency: p.currency,
        purchased_at: p.purchased_at,
    }
}

/// Creates or replaces catalog items; stock changes apply to this instance's answers at once.
#[utoipa::path(
    post,
    path = "/v1/items",
    tag = "ingestion",
    request_body = ItemBatch,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One result per row", body = BatchResult),
        (status = 400, description = "Empty or oversized batch, bad JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Key lacks the ingest scope", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape", body = ErrorBody)
    )
)]
async fn upsert_items(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(batch): ApiJson<ItemBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    caller.require(Scope::Ingest)?;
    batch_len("items", batch.items.len(), state.limits.max_batch)?;
    let now = Utc::now();
    let (rows, mut results) = parse_rows(batch.items, |i: &ItemIn| to_item(i, now).validate());
    let items: Vec<CatalogItem> = rows.iter().map(|(_, i)| to_item(i, now)).collect();
    if !items.is_empty() {
        let outcomes = state
            .stores
            .records
            .upsert_items(&caller.tenant, &items)
            .await?;
        let mut written = Vec::with_capacity(items.len());
        for (((index, _), item), outcome) in rows.iter().zip(&items).zip(outcomes) {
            let (result, reason) = match outcome {
                UpsertOutcome::Written => {
                    written.push(item.clone());
                    (RowStatus::Written, None)
                }
                UpsertOutcome::Invalid(r) => (RowStatus::Invalid, Some(r)),
            };
            results.push(RowResult {
                index: *index,
                result,
                reason,
            });
        }
        state.models.catalog_written(&caller.tenant, &written);
    }
    results.sort_by_key(|r| r.index);
    Ok(Json(BatchResult::of(results)))
}

fn to_item(i: &ItemIn, now: DateTime<Utc>) -> CatalogItem {
    CatalogItem {
        item_id: i.item_id.clone(),
        title: i.title.clone(),
        category: i.category.clone(),
        price_minor: i.price_minor,
        currency: i.currency,
        in_stock: i.in_stock,
        created_at: i.created_at.unwrap_or(now),
        repurchasable: i.repurchasable,
        attributes: i.attributes.clone(),
    }
}
