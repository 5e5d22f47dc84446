//! DynamoDB backend. The only module that imports `aws_sdk_dynamodb`.
//!
//! Layers: `send` wraps every request with our retry (throttling and transient transport
//! errors, backoff with full jitter) on top of the SDK's own retry; `batch_write` and
//! `batch_get` enforce the 25/100 item limits and retry `UnprocessedItems`/`UnprocessedKeys`;
//! `records.rs` maps the record traits onto the tables of `schema.rs`.

mod codec;
mod records;
pub mod schema;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, KeysAndAttributes, Projection, ProjectionType, ScalarAttributeType,
    TimeToLiveSpecification, WriteRequest,
};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::retry::{BATCH_GET_LIMIT, BATCH_WRITE_LIMIT, RetryPolicy, chunked};
use schema::{AttrType, TableId, TableSpec};

pub(crate) const BACKEND: &str = "dynamodb";

/// A DynamoDB item.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// Error codes DynamoDB uses for throttling; all are retried with backoff.
const THROTTLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "Throttling",
    "TooManyRequestsException",
];

/// Server-side transient errors, also retried.
const TRANSIENT_CODES: &[&str] = &[
    "InternalServerError",
    "ServiceUnavailable",
    "InternalFailure",
];

/// Tuning of the DynamoDB backend.
#[derive(Debug, Clone)]
pub struct DynamoOptions {
    /// Table name prefix, e.g. `affinity-prod-` (from `AFFINITY_TABLE_PREFIX`).
    pub table_prefix: String,
    /// Our retry policy, applied on top of the SDK's.
    pub retry: RetryPolicy,
    /// Batch requests in flight at once per call.
    pub concurrency: usize,
    /// How long offer events are kept: each event row gets a TTL attribute (`expires_at`) at
    /// its `at` plus this, and DynamoDB deletes it (lazily) after that. `None` keeps them.
    pub offer_event_retention: Option<std::time::Duration>,
}

impl DynamoOptions {
    /// Defaults for a prefix: 10 attempts, 25 ms..5 s full-jitter backoff, 8 requests in
    /// flight, offer events kept forever.
    pub fn new(table_prefix: impl Into<String>) -> Self {
        Self {
            table_prefix: table_prefix.into(),
            retry: RetryPolicy::default(),
            concurrency: 8,
            offer_event_retention: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) names: HashMap<TableId, String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) concurrency: usize,
    /// Offer-event retention in whole seconds (TTL offset from the event's time).
    pub(crate) offer_event_ttl_secs: Option<i64>,
    /// Tenants whose customer rows are known to be in the per-customer key layout (their
    /// layout marker was read), so a missing row needs no look at the old layout.
    pub(crate) customers_rekeyed: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The DynamoDB record store; cheap to clone.
#[derive(Clone)]
pub struct DynamoStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("tables", &self.inner.names)
            .finish()
    }
}

enum Class {
    Throttle,
    Transient,
    Fatal,
}

fn classify<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Class {
    match e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or_default();
            if THROTTLE_CODES.contains(&code) {
                Class::Throttle
            } else if TRANSIENT_CODES.contains(&code) {
                Class::Transient
            } else {
                Class::Fatal
            }
        }
        // Timeouts, connection resets, truncated responses: the request may or may not have
        // been applied. Every write we retry is idempotent, so retrying is safe.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Class::Transient
        }
        _ => Class::Fatal,
    }
}

impl DynamoStore {
    /// Builds the store from an SDK config (endpoint, region, credentials from the environment
    /// or set explicitly by tests).
    pub fn new(sdk: &aws_config::SdkConfig, options: DynamoOptions) -> Result<Self> {
        schema::validate_prefix(&options.table_prefix)?;
        let names = schema::tables()
            .iter()
            .map(|t| (t.id, t.name(&options.table_prefix)))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                client: Client::new(sdk),
                names,
                retry: options.retry,
                concurrency: options.concurrency.max(1),
                offer_event_ttl_secs: options
                    .offer_event_retention
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                customers_rekeyed: Default::default(),
            }),
        })
    }

    /// Creates every table of the schema (on-demand, GSIs, TTL), waiting until active.
    /// Existing tables are left alone, so this is safe to run repeatedly (local setup, tests).
    pub async fn create_tables(&self) -> Result<()> {
        for spec in schema::tables() {
            self.create_table(&spec).await?;
        }
        Ok(())
    }

    /// Deletes every table of the schema (tests clean up with it). Missing tables are ignored.
    pub async fn delete_tables(&self) -> Result<()> {
        for spec in schema::tables() {
            let name = self.inner.table(spec.id);
            match self
                .inner
                .client
                .delete_table()
                .table_name(name)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) => {}
                Err(e) => return Err(sdk_err("DeleteTable", e)),
            }
        }
        Ok(())
    }

    async fn create_table(&self, spec: &TableSpec) -> Result<()> {
        let name = self.inner.table(spec.id).to_string();
        let key = |a: &schema::KeyAttr, kt: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(a.name)
                .key_type(kt)
                .build()
                .map_err(|e| Error::backend(BACKEND, "CreateTable", e))
        };
        let mut req = self
            .inner
            .client
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest);
        for a in spec.key_attributes() {
            let t = match a.attr_type {
                AttrType::S => ScalarAttributeType::S,
                AttrType::N => ScalarAttributeType::N,
            };
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(a.name)
                    .attribute_type(t)
                    .build()
                    .map_err(|e| Error::backend(BACKEND, "CreateTable", e))?,
            );
        }
        req = req.key_schema(key(&spec.partition_key, KeyType::Hash)?);
        if let Some(sk) = &spec.sort_key {
            req = req.key_schema(key(sk, KeyType::Range)?);
        }
        for g in &spec.gsis {
            let mut b = GlobalSecondaryIndex::builder()
                .index_name(g.name)
                .key_schema(key(&g.partition_key, KeyType::Hash)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                );
            if let Some(sk) = &g.sort_key {
                b = b.key_schema(key(sk, KeyType::Range)?);
            }
            req = req.global_secondary_indexes(
                b.build()
                    .map_err(|e| Error::backend(BACKEND, "CreateTable", e))?,
            );
        }
        match req.send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                return Ok(());
            }
            Err(e) => return Err(sdk_err("CreateTable", e)),
        }
        // Wait until ACTIVE (immediate on moto, seconds on AWS).
        for _ in 0..120 {
            let d = self
                .inner
                .client
                .describe_table()
                .table_name(&name)
                .send()
                .await
                .map_err(|e| sdk_err("DescribeTable", e))?;
            let active = d
                .table()
                .and_then(|t| t.table_status())
                .is_some_and(|s| *s == aws_sdk_dynamodb::types::TableStatus::Active);
            if active {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        if let Some(ttl) = spec.ttl_attribute {
            let spec = TimeToLiveSpecification::builder()
                .attribute_name(ttl)
                .enabled(true)
                .build()
                .map_err(|e| Error::backend(BACKEND, "UpdateTimeToLive", e))?;
            self.inner
                .client
                .update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(|e| sdk_err("UpdateTimeToLive", e))?;
        }
        Ok(())
    }

    /// Full name of a table, for diagnostics and tests.
    pub fn table_name(&self, id: TableId) -> &str {
        self.inner.table(id)
    }
}

pub(crate) fn sdk_err<E, R>(op: &str, e: SdkError<E, R>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = DisplayErrorContext(&e).to_string();
    Error::Backend {
        backend: BACKEND,
        operation: op.to_string(),
        message,
        source: Some(Box::new(e)),
    }
}

pub(crate) fn svc_err<E: std::error::Error + Send + Sync + 'static>(op: &str, e: E) -> Error {
    Error::backend(BACKEND, op, e)
}

impl Inner {
    pub(crate) fn table(&self, id: TableId) -> &str {
        self.names.get(&id).map(String::as_str).unwrap_or("")
    }

    /// Sends a request with our retry loop. Returns `Ok(Err(e))` for a modeled service error
    /// that is not retryable (e.g. ConditionalCheckFailed), for the caller to interpret.
    pub(crate) async fn send<T, E, R, F, Fut>(
        &self,
        op: &'static str,
        mut f: F,
    ) -> Result<std::result::Result<T, E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match f().await {
                Ok(v) => return Ok(Ok(v)),
                Err(e) => e,
            };
            let class = classify(&e);
            match class {
                Class::Fatal => {
                    return match e {
                        SdkError::ServiceError(se) => Ok(Err(se.into_err())),
                        other => Err(sdk_err(op, other)),
                    };
                }
                Class::Throttle | Class::Transient => {
                    if attempt >= self.retry.max_attempts {
                        return Err(match class {
                            Class::Throttle => Error::Throttled {
                                operation: op.to_string(),
                                attempts: attempt,
                            },
                            _ => sdk_err(op, e),
                        });
                    }
                    tracing::debug!(
                        operation = op,
                        attempt,
                        code = e.code().unwrap_or("transport"),
                        "retrying"
                    );
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                }
            }
        }
    }

    /// Writes (puts/deletes) in chunks of 25 with bounded concurrency, retrying unprocessed
    /// items until every one is acknowledged. Requests must not repeat a key within a chunk.
    pub(crate) async fn batch_write(
        self: &Arc<Self>,
        table: TableId,
        requests: Vec<WriteRequest>,
    ) -> Result<()> {
        let chunks = chunked(requests, BATCH_WRITE_LIMIT);
        let mut set = JoinSet::new();
        let mut chunks = chunks.into_iter();
        let mut first_err = None;
        loop {
            while set.len() < self.concurrency {
                let Some(chunk) = chunks.next() else { break };
                let me = Arc::clone(self);
                set.spawn(async move { me.write_chunk(table, chunk).await });
            }
            let Some(res) = set.join_next().await else {
                break;
            };
            let res = res
                .map_err(|e| Error::backend(BACKEND, "BatchWriteItem", e))
                .and_then(|r| r);
            if let Err(e) = res {
                // Stop scheduling more work; let in-flight chunks finish so nothing is torn.
                first_err.get_or_insert(e);
                chunks = Vec::new().into_iter();
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn write_chunk(&self, table: TableId, pending: Vec<WriteRequest>) -> Result<()> {
        let name = &self.table(table).to_string();
        let round = move |pending: Vec<WriteRequest>| async move {
            let out = self
                .send("BatchWriteItem", || {
                    self.client
                        .batch_write_item()
                        .request_items(name.clone(), pending.clone())
                        .send()
                })
                .await?
                .map_err(|e| svc_err("BatchWriteItem", e))?;
            let left = out
                .unprocessed_items()
                .and_then(|m| m.get(name))
                .cloned()
                .unwrap_or_default();
            Ok(((), left))
        };
        self.in_rounds("BatchWriteItem (unprocessed items)", pending, round)
            .await?;
        Ok(())
    }

    /// Runs batch rounds until nothing is left: each round returns its result and what the
    /// service left unprocessed (throttling), which the next round sends again after a
    /// backoff.
    async fn in_rounds<T, O, Fut>(
        &self,
        operation: &str,
        mut pending: Vec<T>,
        mut round: impl FnMut(Vec<T>) -> Fut,
    ) -> Result<Vec<O>>
    where
        Fut: std::future::Future<Output = Result<(O, Vec<T>)>>,
    {
        let mut out = Vec::new();
        let mut stalled = 0u32;
        while !pending.is_empty() {
            let before = pending.len();
            let (done, left) = round(pending).await?;
            out.push(done);
            pending = left;
            if pending.is_empty() {
                break;
            }
            tracing::debug!(
                operation,
                unprocessed = pending.len(),
                "retrying unprocessed requests"
            );
            stalled = self
                .unprocessed_round(operation, stalled, before, &pending)
                .await?;
        }
        Ok(out)
    }

    /// After a batch round left `left` of `before` requests unprocessed: the next round's
    /// stall count, after the backoff. Progress resets the budget; only rounds that get
    /// nothing through count against it, and exhausting it is `Throttled`.
    async fn unprocessed_round<T>(
        &self,
        operation: &str,
        stalled: u32,
        before: usize,
        left: &[T],
    ) -> Result<u32> {
        let stalled = if left.len() < before { 1 } else { stalled + 1 };
        if stalled >= self.retry.max_attempts {
            return Err(Error::Throttled {
                operation: operation.into(),
                attempts: stalled,
            });
        }
        tokio::time::sleep(self.retry.delay(stalled)).await;
        Ok(stalled)
    }

    /// Reads keys in chunks of 100 (consistent reads), retrying unprocessed keys.
    /// Keys must be distinct. Returns the found items in no particular order.
    pub(crate) async fn batch_get(
        self: &Arc<Self>,
        table: TableId,
        keys: Vec<Item>,
    ) -> Result<Vec<Item>> {
        let mut set = JoinSet::new();
        let mut chunks = chunked(keys, BATCH_GET_LIMIT).into_iter();
        let mut out = Vec::new();
        loop {
            while set.len() < self.concurrency {
                let Some(chunk) = chunks.next() else { break };
                let me = Arc::clone(self);
                set.spawn(async move { me.get_chunk(table, chunk).await });
            }
            let Some(res) = set.join_next().await else {
                break;
            };
            out.extend(res.map_err(|e| Error::backend(BACKEND, "BatchGetItem", e))??);
        }
        Ok(out)
    }

    async fn get_chunk(&self, table: TableId, pending: Vec<Item>) -> Result<Vec<Item>> {
        let name = &self.table(table).to_string();
        let round = move |pending: Vec<Item>| async move {
            let ka = KeysAndAttributes::builder()
                .set_keys(Some(pending))
                .consistent_read(true)
                .build()
                .map_err(|e| Error::backend(BACKEND, "BatchGetItem", e))?;
            let out = self
                .send("BatchGetItem", || {
                    self.client
                        .batch_get_item()
                        .request_items(name.clone(), ka.clone())
                        .send()
                })
                .await?
                .map_err(|e| svc_err("BatchGetItem", e))?;
            let found = out
                .responses()
                .and_then(|m| m.get(name))
                .cloned()
                .unwrap_or_default();
            let left = out
                .unprocessed_keys()
                .and_then(|m| m.get(name))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            Ok((found, left))
        };
        let rounds = self
            .in_rounds("BatchGetItem (unprocessed keys)", pending, round)
            .await?;
        Ok(rounds.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;

    #[test]
    fn throttling_is_classified_as_retryable() {
        let err = PutItemError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder()
                .message("slow down")
                .meta(
                    aws_sdk_dynamodb::error::ErrorMetadata::builder()
                        .code("ProvisionedThroughputExceededException")
                        .build(),
                )
                .build(),
        );
        let sdk: SdkError<PutItemError, ()> = SdkError::service_error(err, ());
        assert!(matches!(classify(&sdk), Class::Throttle));
    }

    #[test]
    fn conditional_failure_is_fatal_for_the_retry_loop() {
        let err = PutItemError::ConditionalCheckFailedException(
            aws_sdk_dynamodb::types::error::ConditionalCheckFailedException::builder()
                .meta(
                    aws_sdk_dynamodb::error::ErrorMetadata::builder()
                        .code("ConditionalCheckFailedException")
                        .build(),
                )
                .build(),
        );
        let sdk: SdkError<PutItemError, ()> = SdkError::service_error(err, ());
        assert!(matches!(classify(&sdk), Class::Fatal));
    }
}
