//! The record traits on DynamoDB. See docs/data-model.md for the access patterns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, ReturnValue, WriteRequest,
};
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::codec::{self, n, s, tkey};

/// Attribute of a conditional write's random token, by which a retried call recognises
/// that its own earlier attempt succeeded.
const WRITE_TOKEN: &str = "write_token";
use super::schema::attr::{AT_KEY, CUSTOMER_KEY, KEY_ID, OFFER_KEY, PK, SK, TENANT};
use super::schema::{TableId, index};
use super::{BACKEND, DynamoStore, Inner, Item, svc_err};
use crate::error::{Conflict, Error, Result};
use crate::ids::{CustomerId, ItemId, JobId, KeyId, ModelVersionId, OfferId, OrderId, TenantId};
use crate::traits::{
    CatalogStore, CustomerStore, KeyStore, ModelRegistry, OfferStore, PurchaseStore, RetrainLock,
};
use crate::types::{
    ApiKeyRecord, CatalogItem, CustomerRecord, DeletionCounts, ErasureAudit, JobRecord, JobStart,
    KeyHash, LivePointer, LockLease, ModelStatus, ModelVersion, OfferEvent, OfferRecord, Purchase,
    PurchaseRow, PurchaseScan, PurchaseSink, UpsertOutcome, Watermark, WriteOutcome,
    normalize_time, to_millis,
};

/// A Query, described as data so the paging loop can rebuild it.
struct Query<'a> {
    table: TableId,
    index: Option<&'static str>,
    key_condition: &'a str,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    forward: bool,
    limit: Option<usize>,
    consistent: bool,
}

impl Inner {
    async fn query(&self, q: Query<'_>) -> Result<Vec<Item>> {
        let name = self.table(q.table).to_string();
        let mut out: Vec<Item> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let remaining = q.limit.map(|l| l.saturating_sub(out.len()));
            if remaining == Some(0) {
                break;
            }
            let page_limit = remaining.map(|r| i32::try_from(r.min(1000)).unwrap_or(1000));
            let res = self
                .send("Query", || {
                    self.client
                        .query()
                        .table_name(&name)
                        .set_index_name(q.index.map(str::to_string))
                        .key_condition_expression(q.key_condition)
                        .set_expression_attribute_names(Some(q.names.clone()))
                        .set_expression_attribute_values(Some(q.values.clone()))
                        .scan_index_forward(q.forward)
                        .set_limit(page_limit)
                        .set_consistent_read(q.index.is_none().then_some(q.consistent))
                        .set_exclusive_start_key(start.clone())
                        .send()
                })
                .await?
                .map_err(|e| svc_err("Query", e))?;
            out.extend(res.items().iter().cloned());
            match res.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        if let Some(l) = q.limit {
            out.truncate(l);
        }
        Ok(out)
    }

    /// Reads the whole partition `pk = value` of a table.
    async fn query_partition(&self, table: TableId, value: String) -> Result<Vec<Item>> {
        self.query(Query {
            table,
            index: None,
            key_condition: "#pk = :pk",
            names: HashMap::from([("#pk".to_string(), PK.to_string())]),
            values: HashMap::from([(":pk".to_string(), s(value))]),
            forward: true,
            limit: None,
            consistent: true,
        })
        .await
    }

    async fn get(&self, table: TableId, key: Item) -> Result<Option<Item>> {
        let name = self.table(table).to_string();
        let res = self
            .send("GetItem", || {
                self.client
                    .get_item()
                    .table_name(&name)
                    .set_key(Some(key.clone()))
                    .consistent_read(true)
                    .send()
            })
            .await?
            .map_err(|e| svc_err("GetItem", e))?;
        Ok(res.item().cloned())
    }

    /// A conditional put that recognises its own success: the item carries a fresh random
    /// `write_token`, and when the condition fails the stored item (under `key`) is read
    /// back. If it holds this call's token, an earlier attempt of this same call wrote it
    /// and only its response was lost (the SDK then retried, and the retry met its own
    /// write): the call succeeded. `Ok(false)` only when someone else's write stands.
    async fn put_if_tokened(
        &self,
        table: TableId,
        mut item: Item,
        key: Item,
        condition: &str,
        names: HashMap<String, String>,
        values: Option<HashMap<String, AttributeValue>>,
    ) -> Result<bool> {
        let token = {
            use rand::RngCore;
            let mut b = [0u8; 16];
            rand::rng().fill_bytes(&mut b);
            hex::encode(b)
        };
        item.insert(WRITE_TOKEN.into(), s(&token));
        if self
            .put_if(table, item, Some(condition), Some(names), values)
            .await?
        {
            return Ok(true);
        }
        let stored = self.get(table, key).await?;
        Ok(stored
            .as_ref()
            .and_then(|i| i.get(WRITE_TOKEN))
            .and_then(|v| v.as_s().ok())
            .is_some_and(|t| *t == token))
    }

    /// PutItem with an optional condition; `Ok(false)` when the condition failed.
    async fn put_if(
        &self,
        table: TableId,
        item: Item,
        condition: Option<&str>,
        names: Option<HashMap<String, String>>,
        values: Option<HashMap<String, AttributeValue>>,
    ) -> Result<bool> {
        let name = self.table(table).to_string();
        let res = self
            .send("PutItem", || {
                self.client
                    .put_item()
                    .table_name(&name)
                    .set_item(Some(item.clone()))
                    .set_condition_expression(condition.map(str::to_string))
                    .set_expression_attribute_names(names.clone())
                    .set_expression_attribute_values(values.clone())
                    .send()
            })
            .await?;
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(svc_err("PutItem", e)),
        }
    }

    /// Puts `item` (only if its key is free) and deletes `from` (only if it still exists),
    /// in one transaction: a move that cannot half-happen, so an erasure racing it never
    /// finds the row resurrected under its new key. `Ok(false)` when either condition
    /// failed and nothing was written.
    async fn move_item(&self, table: TableId, item: Item, from: Item) -> Result<bool> {
        use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
        let name = self.table(table).to_string();
        let put = Put::builder()
            .table_name(&name)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(|e| Error::backend(BACKEND, "TransactWriteItems", e))?;
        let delete = Delete::builder()
            .table_name(&name)
            .set_key(Some(from))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(|e| Error::backend(BACKEND, "TransactWriteItems", e))?;
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().delete(delete).build(),
        ];
        let res = self
            .send("TransactWriteItems", || {
                self.client
                    .transact_write_items()
                    .set_transact_items(Some(items.clone()))
                    .send()
            })
            .await?;
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.is_transaction_canceled_exception() => Ok(false),
            Err(e) => Err(svc_err("TransactWriteItems", e)),
        }
    }

    async fn delete(&self, table: TableId, key: Item) -> Result<bool> {
        let name = self.table(table).to_string();
        let res = self
            .send("DeleteItem", || {
                self.client
                    .delete_item()
                    .table_name(&name)
                    .set_key(Some(key.clone()))
                    .return_values(ReturnValue::AllOld)
                    .send()
            })
            .await?
            .map_err(|e| svc_err("DeleteItem", e))?;
        Ok(res.attributes().is_some_and(|a| !a.is_empty()))
    }
}

fn put_req(item: Item) -> Result<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| Error::backend(BACKEND, "PutRequest", e))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

fn delete_req(key: Item) -> Result<WriteRequest> {
    let del = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(|e| Error::backend(BACKEND, "DeleteRequest", e))?;
    Ok(WriteRequest::builder().delete_request(del).build())
}

impl DynamoStore {
    /// Whether the tenant's customer rows are all in the current layout (its marker in the
    /// control table); a yes is remembered for the life of this store.
    async fn customers_rekeyed(&self, tenant: &TenantId) -> Result<bool> {
        if self
            .inner
            .customers_rekeyed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tenant.as_str())
        {
            return Ok(true);
        }
        let marker = self
            .inner
            .get(
                TableId::Control,
                codec::control_key(tenant, codec::CUSTOMER_LAYOUT_SK),
            )
            .await?;
        let done = marker
            .as_ref()
            .and_then(|m| m.get("version"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v >= codec::CUSTOMER_LAYOUT);
        if done {
            self.remember_rekeyed(tenant);
        }
        Ok(done)
    }

    fn remember_rekeyed(&self, tenant: &TenantId) {
        self.inner
            .customers_rekeyed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.as_str().to_owned());
    }
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn values(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    pairs.into_iter().map(|(a, b)| (a.to_string(), b)).collect()
}

#[async_trait]
impl PurchaseStore for DynamoStore {
    /// Strategy: read existing rows with BatchGetItem (consistent), classify, then write only
    /// the new rows with BatchWriteItem. A put of an identical item is a no-op in effect, so a
    /// retried or timed-out write can never create a second row or change a count.
    async fn put_purchases(
        &self,
        tenant: &TenantId,
        rows: &[Purchase],
    ) -> Result<Vec<WriteOutcome>> {
        let mut out: Vec<Option<WriteOutcome>> = vec![None; rows.len()];
        // identity -> index of its first valid row in this call
        let mut first: HashMap<(String, u32), usize> = HashMap::new();
        let mut followers: Vec<(usize, usize)> = Vec::new();
        let mut normalized: Vec<Option<Purchase>> = vec![None; rows.len()];
        for (i, row) in rows.iter().enumerate() {
            if let Err(e) = row.validate() {
                out[i] = Some(WriteOutcome::Invalid(e.to_string()));
                continue;
            }
            let p = row.normalized();
            let id = (p.order_id.to_string(), p.line);
            match first.get(&id) {
                Some(&j) => followers.push((i, j)),
                None => {
                    first.insert(id, i);
                }
            }
            normalized[i] = Some(p);
        }
        let keys: Vec<Item> = first
            .values()
            .filter_map(|&i| normalized[i].as_ref())
            .map(|p| codec::purchase_key(tenant, &p.order_id, p.line))
            .collect();
        let found = self.inner.batch_get(TableId::Purchases, keys).await?;
        let mut existing: HashMap<(String, u32), Purchase> = HashMap::new();
        for item in &found {
            existing.insert(codec::purchase_identity(item)?, codec::purchase_from(item)?);
        }
        let mut to_write = Vec::new();
        let mut stored: HashMap<usize, Purchase> = HashMap::new();
        for (id, &i) in &first {
            let Some(p) = normalized[i].as_ref() else {
                continue;
            };
            match existing.get(id) {
                Some(e) if e == p => out[i] = Some(WriteOutcome::Duplicate),
                Some(_) => out[i] = Some(WriteOutcome::Conflict),
                None => {
                    to_write.push(put_req(codec::purchase_item(tenant, p))?);
                    out[i] = Some(WriteOutcome::Inserted);
                }
            }
            stored.insert(i, existing.get(id).cloned().unwrap_or_else(|| p.clone()));
        }
        for (i, j) in followers {
            let same =
                matches!((normalized[i].as_ref(), stored.get(&j)), (Some(a), Some(b)) if a == b);
            out[i] = Some(if same {
                WriteOutcome::Duplicate
            } else {
                WriteOutcome::Conflict
            });
        }
        self.inner.batch_write(TableId::Purchases, to_write).await?;
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(WriteOutcome::Invalid("not processed".into())))
            .collect())
    }

    async fn get_purchase(
        &self,
        tenant: &TenantId,
        order_id: &OrderId,
        line: u32,
    ) -> Result<Option<Purchase>> {
        self.inner
            .get(
                TableId::Purchases,
                codec::purchase_key(tenant, order_id, line),
            )
            .await?
            .map(|i| codec::purchase_from(&i))
            .transpose()
    }

    async fn customer_history(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        limit: usize,
    ) -> Result<Vec<Purchase>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items = self
            .inner
            .query(Query {
                table: TableId::Purchases,
                index: Some(index::BY_CUSTOMER),
                key_condition: "#c = :c",
                names: names(&[("#c", CUSTOMER_KEY)]),
                values: values(vec![(":c", s(tkey(tenant, customer.as_str())))]),
                forward: false,
                limit: Some(limit),
                consistent: false,
            })
            .await?;
        let mut v = items
            .iter()
            .map(codec::purchase_from)
            .collect::<Result<Vec<_>>>()?;
        // The index sorts by time then order id then line; make ties match the embedded store.
        v.sort_by(|a, b| {
            b.purchased_at
                .cmp(&a.purchased_at)
                .then(b.order_id.cmp(&a.order_id))
                .then(b.line.cmp(&a.line))
        });
        Ok(v)
    }

    async fn scan_purchases(&self, tenant: &TenantId, segments: u32) -> Result<PurchaseScan> {
        let mut scan = PurchaseScan::default();
        scan_pages(&self.inner, tenant, segments, |page| {
            for p in page {
                scan.watermark.observe(&p);
                scan.purchases.push(p);
            }
        })
        .await?;
        Ok(scan)
    }

    async fn stream_purchases(
        &self,
        tenant: &TenantId,
        segments: u32,
        mut sink: PurchaseSink,
    ) -> Result<Watermark> {
        let mut watermark = Watermark::default();
        scan_pages(&self.inner, tenant, segments, |page| {
            for p in &page {
                watermark.observe(p);
                sink(PurchaseRow::of(p));
            }
        })
        .await?;
        Ok(watermark)
    }
}

/// Pages of decoded purchases queued between the segment readers and the consumer: enough
/// to keep every reader busy, few enough that memory stays bounded by the consumer.
const SCAN_QUEUE_PAGES: usize = 16;

/// Parallel scan of a tenant's purchases: `segments` readers page through the table and
/// hand each decoded page to `consume` as it arrives, so memory holds a few pages, not the
/// whole history.
async fn scan_pages(
    inner: &Arc<Inner>,
    tenant: &TenantId,
    segments: u32,
    mut consume: impl FnMut(Vec<Purchase>),
) -> Result<()> {
    let total = i32::try_from(segments.clamp(1, 64)).unwrap_or(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Purchase>>(SCAN_QUEUE_PAGES);
    let mut set = JoinSet::new();
    for segment in 0..total {
        let inner = Arc::clone(inner);
        let tenant = tenant.clone();
        let tx = tx.clone();
        set.spawn(async move {
            let name = inner.table(TableId::Purchases).to_string();
            let mut start: Option<Item> = None;
            loop {
                let res = inner
                    .send("Scan", || {
                        inner
                            .client
                            .scan()
                            .table_name(&name)
                            .segment(segment)
                            .total_segments(total)
                            .filter_expression("#t = :t")
                            .expression_attribute_names("#t", TENANT)
                            .expression_attribute_values(":t", s(tenant.as_str()))
                            .set_exclusive_start_key(start.clone())
                            .send()
                    })
                    .await?
                    .map_err(|e| svc_err("Scan", e))?;
                let page = res
                    .items()
                    .iter()
                    .map(codec::purchase_from)
                    .collect::<Result<Vec<_>>>()?;
                if !page.is_empty() && tx.send(page).await.is_err() {
                    // The consumer stopped (an error elsewhere): nothing left to read for.
                    break;
                }
                match res.last_evaluated_key() {
                    Some(k) if !k.is_empty() => start = Some(k.clone()),
                    _ => break,
                }
            }
            Ok::<_, Error>(())
        });
    }
    drop(tx);
    while let Some(page) = rx.recv().await {
        consume(page);
    }
    // Every sender is gone, so every reader has finished: collect their results.
    while let Some(res) = set.join_next().await {
        res.map_err(|e| Error::backend(BACKEND, "Scan", e))??;
    }
    Ok(())
}

/// Upsert by BatchWriteItem: last row wins for repeated ids (a batch may not repeat a key).
async fn upsert_batch<T>(
    inner: &Arc<Inner>,
    table: TableId,
    rows: &[T],
    validate: impl Fn(&T) -> Result<()>,
    id: impl Fn(&T) -> String,
    to_item: impl Fn(&T) -> Result<Item>,
) -> Result<Vec<UpsertOutcome>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        match validate(r) {
            Ok(()) => {
                last.insert(id(r), i);
                out.push(UpsertOutcome::Written);
            }
            Err(e) => out.push(UpsertOutcome::Invalid(e.to_string())),
        }
    }
    let mut idx: Vec<usize> = last.into_values().collect();
    idx.sort_unstable();
    let reqs = idx
        .into_iter()
        .map(|i| to_item(&rows[i]).and_then(put_req))
        .collect::<Result<Vec<_>>>()?;
    inner.batch_write(table, reqs).await?;
    Ok(out)
}

#[async_trait]
impl CatalogStore for DynamoStore {
    async fn upsert_items(
        &self,
        tenant: &TenantId,
        items: &[CatalogItem],
    ) -> Result<Vec<UpsertOutcome>> {
        upsert_batch(
            &self.inner,
            TableId::Items,
            items,
            CatalogItem::validate,
            |c| c.item_id.to_string(),
            |c| codec::catalog_item(tenant, &c.normalized()),
        )
        .await
    }

    async fn get_items(&self, tenant: &TenantId, ids: &[ItemId]) -> Result<Vec<CatalogItem>> {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&ItemId> = ids.iter().filter(|i| seen.insert(*i)).collect();
        let keys = unique.iter().map(|i| codec::item_key(tenant, i)).collect();
        let found = self.inner.batch_get(TableId::Items, keys).await?;
        let mut by_id: HashMap<ItemId, CatalogItem> = HashMap::new();
        for item in &found {
            let c = codec::catalog_from(item)?;
            by_id.insert(c.item_id.clone(), c);
        }
        Ok(unique.into_iter().filter_map(|i| by_id.remove(i)).collect())
    }

    async fn list_items(&self, tenant: &TenantId) -> Result<Vec<CatalogItem>> {
        let items = self
            .inner
            .query_partition(TableId::Items, tenant.to_string())
            .await?;
        items.iter().map(codec::catalog_from).collect()
    }
}

#[async_trait]
impl CustomerStore for DynamoStore {
    async fn get_customer(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<CustomerRecord>> {
        let found = match self
            .inner
            .get(TableId::Customers, codec::customer_key(tenant, customer))
            .await?
        {
            Some(item) => Some(item),
            // Not moved yet? The row may still be under the tenant's one partition.
            None if !self.customers_rekeyed(tenant).await? => {
                self.inner
                    .get(
                        TableId::Customers,
                        codec::legacy_customer_key(tenant, customer),
                    )
                    .await?
            }
            None => None,
        };
        found.map(|i| codec::customer_from(&i)).transpose()
    }

    async fn put_customer(&self, tenant: &TenantId, record: &CustomerRecord) -> Result<()> {
        record.validate()?;
        let mut r = record.clone();
        r.updated_at = normalize_time(r.updated_at);
        self.inner
            .put_if(
                TableId::Customers,
                codec::customer_item(tenant, &r),
                None,
                None,
                None,
            )
            .await?;
        // An older row in the old layout must not outlive this one (it would resurface
        // after an erasure of the new row).
        if !self.customers_rekeyed(tenant).await? {
            self.inner
                .delete(
                    TableId::Customers,
                    codec::legacy_customer_key(tenant, &r.customer_id),
                )
                .await?;
        }
        Ok(())
    }

    /// Finds the customer's rows through the by_customer indexes and deletes them by primary
    /// key in batches. Index reads are eventually consistent on AWS: run it after ingestion of
    /// that customer stopped; a second call is idempotent and sweeps stragglers.
    async fn delete_customer_data(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<DeletionCounts> {
        let by_customer = |table| Query {
            table,
            index: Some(index::BY_CUSTOMER),
            key_condition: "#c = :c",
            names: names(&[("#c", CUSTOMER_KEY)]),
            values: values(vec![(":c", s(tkey(tenant, customer.as_str())))]),
            forward: true,
            limit: None,
            consistent: false,
        };
        let purchases = self.inner.query(by_customer(TableId::Purchases)).await?;
        let keep_key = |item: &Item, with_sk: bool| -> Item {
            let mut k = Item::new();
            for a in [PK, SK] {
                if a == SK && !with_sk {
                    continue;
                }
                if let Some(v) = item.get(a) {
                    k.insert(a.to_string(), v.clone());
                }
            }
            k
        };
        let reqs = purchases
            .iter()
            .map(|i| delete_req(keep_key(i, true)))
            .collect::<Result<Vec<_>>>()?;
        self.inner.batch_write(TableId::Purchases, reqs).await?;
        let events = self.inner.query(by_customer(TableId::OfferEvents)).await?;
        let reqs = events
            .iter()
            .map(|i| delete_req(keep_key(i, false)))
            .collect::<Result<Vec<_>>>()?;
        self.inner.batch_write(TableId::OfferEvents, reqs).await?;
        let mut customer_deleted = self
            .inner
            .delete(TableId::Customers, codec::customer_key(tenant, customer))
            .await?;
        if !self.customers_rekeyed(tenant).await? {
            customer_deleted |= self
                .inner
                .delete(
                    TableId::Customers,
                    codec::legacy_customer_key(tenant, customer),
                )
                .await?;
        }
        Ok(DeletionCounts {
            purchases: purchases.len() as u64,
            customers: u64::from(customer_deleted),
            offer_events: events.len() as u64,
        })
    }

    async fn put_erasure_audit(&self, tenant: &TenantId, audit: &ErasureAudit) -> Result<()> {
        audit.validate()?;
        self.inner
            .put_if(
                TableId::Control,
                codec::erasure_item(tenant, &audit.normalized())?,
                None,
                None,
                None,
            )
            .await?;
        Ok(())
    }

    async fn erasures_since(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
    ) -> Result<Vec<ErasureAudit>> {
        let items = self
            .inner
            .query(Query {
                table: TableId::Control,
                index: None,
                key_condition: "#pk = :pk AND #sk BETWEEN :from AND :to",
                names: names(&[("#pk", PK), ("#sk", SK)]),
                values: values(vec![
                    (":pk", s(tenant.as_str())),
                    (":from", s(codec::erasure_sk_at(since))),
                    // '$' sorts right after '#', so this bounds every erasure row.
                    (
                        ":to",
                        s(format!(
                            "{}$",
                            codec::ERASURE_SK_PREFIX.trim_end_matches('#')
                        )),
                    ),
                ]),
                forward: true,
                limit: None,
                consistent: true,
            })
            .await?;
        items.iter().map(codec::erasure_from).collect()
    }

    async fn rekey_customers(&self, tenant: &TenantId) -> Result<u64> {
        if self.customers_rekeyed(tenant).await? {
            return Ok(0);
        }
        // Layout 1 kept every customer of the tenant under pk = tenant: one Query finds them.
        let old = self
            .inner
            .query_partition(TableId::Customers, tenant.to_string())
            .await?;
        let mut moved = 0u64;
        for item in old {
            let record = codec::customer_from(&item)?;
            // A row already written in the new layout is newer: it stays.
            let mut fresh = codec::customer_item(tenant, &record);
            fresh.extend(
                item.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "pk" | "sk"))
                    .filter(|(k, _)| !fresh.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>(),
            );
            let legacy = codec::legacy_customer_key(tenant, &record.customer_id);
            if self
                .inner
                .move_item(TableId::Customers, fresh, legacy.clone())
                .await?
            {
                moved += 1;
            } else {
                // A newer row stands in the new layout, or an erasure removed the old one
                // meanwhile: the old row (if any) goes, nothing is resurrected.
                self.inner.delete(TableId::Customers, legacy).await?;
            }
        }
        let mut marker = codec::control_key(tenant, codec::CUSTOMER_LAYOUT_SK);
        marker.insert("version".into(), codec::n(codec::CUSTOMER_LAYOUT));
        self.inner
            .put_if(TableId::Control, marker, None, None, None)
            .await?;
        self.remember_rekeyed(tenant);
        Ok(moved)
    }
}

impl DynamoStore {
    async fn events_query(
        &self,
        idx: &'static str,
        attr: &'static str,
        key: String,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut vals = vec![(":k", s(key))];
        let mut nm = vec![("#k", attr)];
        let cond = match since {
            Some(t) => {
                vals.push((":since", s(codec::at_prefix(t))));
                nm.push(("#at", AT_KEY));
                "#k = :k AND #at >= :since"
            }
            None => "#k = :k",
        };
        let items = self
            .inner
            .query(Query {
                table: TableId::OfferEvents,
                index: Some(idx),
                key_condition: cond,
                names: names(&nm),
                values: values(vals),
                forward: false,
                limit: Some(limit),
                consistent: false,
            })
            .await?;
        let mut v = items
            .iter()
            .map(codec::event_from)
            .collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| b.at.cmp(&a.at).then(b.event_id.cmp(&a.event_id)));
        Ok(v)
    }
}

#[async_trait]
impl OfferStore for DynamoStore {
    async fn upsert_offers(
        &self,
        tenant: &TenantId,
        offers: &[OfferRecord],
    ) -> Result<Vec<UpsertOutcome>> {
        upsert_batch(
            &self.inner,
            TableId::Offers,
            offers,
            OfferRecord::validate,
            |o| o.offer_id.to_string(),
            |o| codec::offer_item(tenant, &o.normalized()),
        )
        .await
    }

    async fn get_offer(&self, tenant: &TenantId, offer: &OfferId) -> Result<Option<OfferRecord>> {
        self.inner
            .get(TableId::Offers, codec::offer_key(tenant, offer))
            .await?
            .map(|i| codec::offer_from(&i))
            .transpose()
    }

    async fn list_offers(&self, tenant: &TenantId) -> Result<Vec<OfferRecord>> {
        let items = self
            .inner
            .query_partition(TableId::Offers, tenant.to_string())
            .await?;
        items.iter().map(codec::offer_from).collect()
    }

    /// Strategy: one conditional PutItem per event (attribute_not_exists), bounded concurrency.
    /// Each row carries a random write token; if a timed-out attempt actually landed, the retry
    /// fails its condition, finds its own token and still reports `Inserted`, so counts are exact.
    async fn put_offer_events(
        &self,
        tenant: &TenantId,
        events: &[OfferEvent],
    ) -> Result<Vec<WriteOutcome>> {
        let mut out: Vec<Option<WriteOutcome>> = vec![None; events.len()];
        let mut set = JoinSet::new();
        let mut queue = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match e.validate() {
                Ok(()) => queue.push((i, e.normalized())),
                Err(err) => out[i] = Some(WriteOutcome::Invalid(err.to_string())),
            }
        }
        // Rows sharing an event id run one after another so the second sees the first.
        let mut groups: HashMap<String, Vec<(usize, OfferEvent)>> = HashMap::new();
        for (i, e) in queue {
            groups
                .entry(e.event_id.to_string())
                .or_default()
                .push((i, e));
        }
        let mut groups = groups.into_values();
        loop {
            while set.len() < self.inner.concurrency {
                let Some(group) = groups.next() else { break };
                let inner = Arc::clone(&self.inner);
                let tenant = tenant.clone();
                set.spawn(async move {
                    let mut res = Vec::new();
                    for (i, e) in group {
                        res.push((i, put_event(&inner, &tenant, &e).await?));
                    }
                    Ok::<_, Error>(res)
                });
            }
            let Some(r) = set.join_next().await else {
                break;
            };
            for (i, o) in r.map_err(|e| Error::backend(BACKEND, "PutItem", e))?? {
                out[i] = Some(o);
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(WriteOutcome::Invalid("not processed".into())))
            .collect())
    }

    async fn events_by_customer(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>> {
        self.events_query(
            index::BY_CUSTOMER,
            CUSTOMER_KEY,
            tkey(tenant, customer.as_str()),
            since,
            limit,
        )
        .await
    }

    async fn events_by_offer(
        &self,
        tenant: &TenantId,
        offer: &OfferId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>> {
        self.events_query(
            index::BY_OFFER,
            OFFER_KEY,
            tkey(tenant, offer.as_str()),
            since,
            limit,
        )
        .await
    }
}

async fn put_event(inner: &Inner, tenant: &TenantId, e: &OfferEvent) -> Result<WriteOutcome> {
    let token = format!("{:032x}", rand::random::<u128>());
    let item = codec::event_item(tenant, e, &token, inner.offer_event_ttl_secs);
    if inner
        .put_if(
            TableId::OfferEvents,
            item,
            Some("attribute_not_exists(#pk)"),
            Some(names(&[("#pk", PK)])),
            None,
        )
        .await?
    {
        return Ok(WriteOutcome::Inserted);
    }
    let Some(existing) = inner
        .get(TableId::OfferEvents, codec::event_key(tenant, &e.event_id))
        .await?
    else {
        // Deleted between our write and read (privacy deletion): nothing stored, report as conflict.
        return Ok(WriteOutcome::Conflict);
    };
    if codec::get_s(&existing, "write_token").ok() == Some(token.as_str()) {
        return Ok(WriteOutcome::Inserted);
    }
    Ok(if codec::event_from(&existing)? == *e {
        WriteOutcome::Duplicate
    } else {
        WriteOutcome::Conflict
    })
}

#[async_trait]
impl KeyStore for DynamoStore {
    async fn create_key(&self, record: &ApiKeyRecord) -> Result<()> {
        record.validate()?;
        // Key ids are random (48 bits) so a by_tenant collision is practically impossible;
        // the index check still catches a caller reusing an id.
        let dup = self
            .inner
            .query(Query {
                table: TableId::ApiKeys,
                index: Some(index::BY_TENANT),
                key_condition: "#t = :t AND #k = :k",
                names: names(&[("#t", TENANT), ("#k", KEY_ID)]),
                values: values(vec![
                    (":t", s(record.tenant.as_str())),
                    (":k", s(record.key_id.as_str())),
                ]),
                forward: true,
                limit: Some(1),
                consistent: false,
            })
            .await?;
        let mut r = record.clone();
        r.created_at = normalize_time(r.created_at);
        let created = dup.is_empty()
            && self
                .inner
                .put_if(
                    TableId::ApiKeys,
                    codec::api_key_item(&r)?,
                    Some("attribute_not_exists(#pk)"),
                    Some(names(&[("#pk", PK)])),
                    None,
                )
                .await?;
        if created {
            Ok(())
        } else {
            Err(Error::Conflict(Conflict::AlreadyExists {
                what: "api key",
                key: record.key_id.to_string(),
            }))
        }
    }

    async fn find_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>> {
        let key = Item::from([(PK.to_string(), s(hash.to_hex()))]);
        self.inner
            .get(TableId::ApiKeys, key)
            .await?
            .map(|i| codec::api_key_from(&i))
            .transpose()
    }

    async fn revoke_key(&self, tenant: &TenantId, key_id: &KeyId) -> Result<()> {
        let found = self
            .inner
            .query(Query {
                table: TableId::ApiKeys,
                index: Some(index::BY_TENANT),
                key_condition: "#t = :t AND #k = :k",
                names: names(&[("#t", TENANT), ("#k", KEY_ID)]),
                values: values(vec![(":t", s(tenant.as_str())), (":k", s(key_id.as_str()))]),
                forward: true,
                limit: Some(1),
                consistent: false,
            })
            .await?;
        let Some(hash) = found.first().and_then(|i| i.get(PK)).cloned() else {
            return Err(Error::not_found("api key", key_id.to_string()));
        };
        let name = self.inner.table(TableId::ApiKeys).to_string();
        let res = self
            .inner
            .send("UpdateItem", || {
                self.inner
                    .client
                    .update_item()
                    .table_name(&name)
                    .key(PK, hash.clone())
                    .update_expression("SET #r = :true")
                    .condition_expression("attribute_exists(#pk)")
                    .expression_attribute_names("#r", "revoked")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_values(":true", AttributeValue::Bool(true))
                    .send()
            })
            .await?;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.is_conditional_check_failed_exception() => {
                Err(Error::not_found("api key", key_id.to_string()))
            }
            Err(e) => Err(svc_err("UpdateItem", e)),
        }
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>> {
        let items = self
            .inner
            .query(Query {
                table: TableId::ApiKeys,
                index: Some(index::BY_TENANT),
                key_condition: "#t = :t",
                names: names(&[("#t", TENANT)]),
                values: values(vec![(":t", s(tenant.as_str()))]),
                forward: true,
                limit: None,
                consistent: false,
            })
            .await?;
        let mut v = items
            .iter()
            .map(codec::api_key_from)
            .collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.key_id.cmp(&b.key_id))
        });
        Ok(v)
    }
}

#[async_trait]
impl ModelRegistry for DynamoStore {
    async fn register_model(&self, tenant: &TenantId, model: &ModelVersion) -> Result<()> {
        model.validate()?;
        let item = codec::model_item(tenant, &model.normalized())?;
        if self
            .inner
            .put_if_tokened(
                TableId::Models,
                item,
                codec::model_key(tenant, &model.version),
                "attribute_not_exists(#pk)",
                names(&[("#pk", PK)]),
                None,
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::Conflict(Conflict::AlreadyExists {
                what: "model version",
                key: model.version.to_string(),
            }))
        }
    }

    async fn get_model(
        &self,
        tenant: &TenantId,
        version: &ModelVersionId,
    ) -> Result<Option<ModelVersion>> {
        self.inner
            .get(TableId::Models, codec::model_key(tenant, version))
            .await?
            .map(|i| codec::model_from(&i))
            .transpose()
    }

    /// Reads the tenant's partition and sorts in memory: registries hold tens to hundreds of
    /// versions, and sorting here keeps the newest-first order independent of id format.
    async fn list_models(&self, tenant: &TenantId, limit: usize) -> Result<Vec<ModelVersion>> {
        let items = self
            .inner
            .query_partition(TableId::Models, tenant.to_string())
            .await?;
        let mut v = items
            .iter()
            .map(codec::model_from)
            .collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(b.version.cmp(&a.version))
        });
        v.truncate(limit);
        Ok(v)
    }

    async fn set_model_status(
        &self,
        tenant: &TenantId,
        version: &ModelVersionId,
        status: ModelStatus,
        reason: Option<String>,
    ) -> Result<()> {
        if let Some(r) = &reason {
            ModelVersion::validate_reason(r)?;
        }
        let name = self.inner.table(TableId::Models).to_string();
        let key = codec::model_key(tenant, version);
        let (expr, vals) = match &reason {
            Some(r) => (
                "SET #s = :s, #r = :r",
                values(vec![(":s", s(status.as_str())), (":r", s(r))]),
            ),
            None => (
                "SET #s = :s REMOVE #r",
                values(vec![(":s", s(status.as_str()))]),
            ),
        };
        let res = self
            .inner
            .send("UpdateItem", || {
                self.inner
                    .client
                    .update_item()
                    .table_name(&name)
                    .set_key(Some(key.clone()))
                    .update_expression(expr)
                    .condition_expression("attribute_exists(#pk)")
                    .set_expression_attribute_names(Some(names(&[
                        ("#s", "status"),
                        ("#r", "reason"),
                        ("#pk", PK),
                    ])))
                    .set_expression_attribute_values(Some(vals.clone()))
                    .send()
            })
            .await?;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.is_conditional_check_failed_exception() => {
                Err(Error::not_found("model version", version.to_string()))
            }
            Err(e) => Err(svc_err("UpdateItem", e)),
        }
    }

    async fn live_pointer(&self, tenant: &TenantId) -> Result<Option<LivePointer>> {
        self.inner
            .get(TableId::Control, codec::control_key(tenant, codec::LIVE_SK))
            .await?
            .map(|i| codec::pointer_from(&i))
            .transpose()
    }

    async fn swap_live_pointer(
        &self,
        tenant: &TenantId,
        expected: Option<&ModelVersionId>,
        new: &ModelVersionId,
    ) -> Result<LivePointer> {
        if self.get_model(tenant, new).await?.is_none() {
            return Err(Error::not_found("model version", new.to_string()));
        }
        let pointer = LivePointer {
            version: new.clone(),
            previous: expected.cloned(),
            updated_at: normalize_time(Utc::now()),
        };
        let (cond, nm, vals) = match expected {
            None => ("attribute_not_exists(#pk)", names(&[("#pk", PK)]), None),
            Some(v) => (
                "#v = :v",
                names(&[("#v", "version")]),
                Some(values(vec![(":v", s(v.as_str()))])),
            ),
        };
        if self
            .inner
            .put_if_tokened(
                TableId::Control,
                codec::pointer_item(tenant, &pointer),
                codec::control_key(tenant, codec::LIVE_SK),
                cond,
                nm,
                vals,
            )
            .await?
        {
            return Ok(pointer);
        }
        let actual = self
            .live_pointer(tenant)
            .await?
            .map(|p| p.version.to_string());
        Err(Error::Conflict(Conflict::LiveModel {
            expected: expected.map(|v| v.to_string()),
            actual,
        }))
    }
}

fn lease_until(lease: Duration) -> Result<DateTime<Utc>> {
    let lease =
        chrono::Duration::from_std(lease).map_err(|_| Error::invalid("lease", "too long"))?;
    Ok(normalize_time(Utc::now() + lease))
}

impl DynamoStore {
    async fn current_lock(&self, tenant: &TenantId) -> Result<Option<LockLease>> {
        let Some(item) = self
            .inner
            .get(TableId::Control, codec::control_key(tenant, codec::LOCK_SK))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(LockLease {
            owner: codec::get_s(&item, "owner")?.to_string(),
            until: codec::get_time(&item, "until")?,
        }))
    }
}

#[async_trait]
impl RetrainLock for DynamoStore {
    async fn acquire_lock(
        &self,
        tenant: &TenantId,
        owner: &str,
        lease: Duration,
    ) -> Result<LockLease> {
        crate::ids::validate_id("owner", owner, crate::ids::MAX_ID_CHARS)?;
        let until = lease_until(lease)?;
        let now = to_millis(Utc::now());
        let ok = self
            .inner
            .put_if(
                TableId::Control,
                codec::lock_item(tenant, owner, until),
                Some("attribute_not_exists(#pk) OR #u <= :now OR #o = :o"),
                Some(names(&[("#pk", PK), ("#u", "until"), ("#o", "owner")])),
                Some(values(vec![(":now", n(now)), (":o", s(owner))])),
            )
            .await?;
        if ok {
            return Ok(LockLease {
                owner: owner.to_string(),
                until,
            });
        }
        match self.current_lock(tenant).await? {
            Some(held) => Err(Error::Conflict(Conflict::LockHeld {
                owner: held.owner,
                until: held.until,
            })),
            // Released between our attempt and the read: report as held by nobody-in-particular
            // would be confusing, so try once more.
            None => Box::pin(self.acquire_lock(tenant, owner, lease)).await,
        }
    }

    async fn renew_lock(
        &self,
        tenant: &TenantId,
        owner: &str,
        lease: Duration,
    ) -> Result<LockLease> {
        crate::ids::validate_id("owner", owner, crate::ids::MAX_ID_CHARS)?;
        let until = lease_until(lease)?;
        let now = to_millis(Utc::now());
        let ok = self
            .inner
            .put_if(
                TableId::Control,
                codec::lock_item(tenant, owner, until),
                Some("#o = :o AND #u > :now"),
                Some(names(&[("#u", "until"), ("#o", "owner")])),
                Some(values(vec![(":now", n(now)), (":o", s(owner))])),
            )
            .await?;
        if ok {
            return Ok(LockLease {
                owner: owner.to_string(),
                until,
            });
        }
        let holder = self
            .current_lock(tenant)
            .await?
            .filter(|l| to_millis(l.until) > now)
            .map(|l| l.owner);
        Err(Error::Conflict(Conflict::LockNotOwned {
            owner: owner.to_string(),
            holder,
        }))
    }

    async fn release_lock(&self, tenant: &TenantId, owner: &str) -> Result<()> {
        crate::ids::validate_id("owner", owner, crate::ids::MAX_ID_CHARS)?;
        let name = self.inner.table(TableId::Control).to_string();
        let key = codec::control_key(tenant, codec::LOCK_SK);
        let now = to_millis(Utc::now());
        let res = self
            .inner
            .send("DeleteItem", || {
                self.inner
                    .client
                    .delete_item()
                    .table_name(&name)
                    .set_key(Some(key.clone()))
                    .condition_expression("attribute_not_exists(#pk) OR #o = :o OR #u <= :now")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_names("#o", "owner")
                    .expression_attribute_names("#u", "until")
                    .expression_attribute_values(":o", s(owner))
                    .expression_attribute_values(":now", n(now))
                    .send()
            })
            .await?;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.is_conditional_check_failed_exception() => {
                let holder = self.current_lock(tenant).await?.map(|l| l.owner);
                Err(Error::Conflict(Conflict::LockNotOwned {
                    owner: owner.to_string(),
                    holder,
                }))
            }
            Err(e) => Err(svc_err("DeleteItem", e)),
        }
    }

    async fn create_job(&self, tenant: &TenantId, job: &JobRecord) -> Result<JobStart> {
        job.validate()?;
        let j = job.normalized();
        // Tokened: a retry whose first attempt wrote the row (response lost) is Created,
        // not mistaken for an earlier run of the job.
        if self
            .inner
            .put_if_tokened(
                TableId::Control,
                codec::job_item(tenant, &j),
                codec::control_key(tenant, &codec::job_sk(&j.job_id)),
                "attribute_not_exists(#pk)",
                names(&[("#pk", PK)]),
                None,
            )
            .await?
        {
            return Ok(JobStart::Created);
        }
        match self.get_job(tenant, &j.job_id).await? {
            Some(existing) => Ok(JobStart::Existing(existing)),
            None => Err(Error::backend_msg(
                BACKEND,
                "create_job",
                "job record vanished after a conditional failure",
            )),
        }
    }

    async fn get_job(&self, tenant: &TenantId, job_id: &JobId) -> Result<Option<JobRecord>> {
        self.inner
            .get(
                TableId::Control,
                codec::control_key(tenant, &codec::job_sk(job_id)),
            )
            .await?
            .map(|i| codec::job_from(&i))
            .transpose()
    }

    async fn update_job(&self, tenant: &TenantId, job: &JobRecord) -> Result<()> {
        job.validate()?;
        let j = job.normalized();
        if self
            .inner
            .put_if(
                TableId::Control,
                codec::job_item(tenant, &j),
                Some("attribute_exists(#pk)"),
                Some(names(&[("#pk", PK)])),
                None,
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found("job", j.job_id.to_string()))
        }
    }
}
