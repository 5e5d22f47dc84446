//! The storage traits. Every backend implements all of them; callers hold `Arc<dyn ...>`.
//!
//! All methods are tenant-scoped except API-key lookup by hash, which is how a request's
//! tenant is discovered in the first place.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::ids::{
    BlobKey, CustomerId, ItemId, JobId, KeyId, ModelVersionId, OfferId, OrderId, TenantId,
};
use crate::types::{
    ApiKeyRecord, BlobMeta, CatalogItem, CustomerRecord, DeletionCounts, ErasureAudit, JobRecord,
    JobStart, KeyHash, LivePointer, LockLease, ModelStatus, ModelVersion, OfferEvent, OfferRecord,
    Purchase, PurchaseRow, PurchaseScan, PurchaseSink, UpsertOutcome, Watermark, WriteOutcome,
};

/// Purchase history: the training data and the fold-in input.
#[async_trait]
pub trait PurchaseStore: Send + Sync {
    /// Inserts purchases idempotently; returns one outcome per input row, in input order.
    ///
    /// A row whose identity (order_id, line) is already stored with identical content is a
    /// `Duplicate`; with different content a `Conflict` (the stored row is kept). Two rows of
    /// the same call with one identity are treated as if written one after the other.
    async fn put_purchases(
        &self,
        tenant: &TenantId,
        rows: &[Purchase],
    ) -> Result<Vec<WriteOutcome>>;

    /// Reads one purchase by identity.
    async fn get_purchase(
        &self,
        tenant: &TenantId,
        order_id: &OrderId,
        line: u32,
    ) -> Result<Option<Purchase>>;

    /// A customer's purchases, newest first, at most `limit` (fold-in at request time).
    async fn customer_history(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        limit: usize,
    ) -> Result<Vec<Purchase>>;

    /// Every purchase of the tenant with a watermark; `segments` parallel readers where the
    /// backend supports it (DynamoDB parallel scan), ignored otherwise.
    async fn scan_purchases(&self, tenant: &TenantId, segments: u32) -> Result<PurchaseScan>;

    /// Every purchase of the tenant handed to `sink` row by row, without holding the whole
    /// history in memory (the retrain scan of a large shop); returns the watermark.
    /// `segments` as for `scan_purchases`. The default replays `scan_purchases`.
    async fn stream_purchases(
        &self,
        tenant: &TenantId,
        segments: u32,
        mut sink: PurchaseSink,
    ) -> Result<Watermark> {
        let scan = self.scan_purchases(tenant, segments).await?;
        for p in &scan.purchases {
            sink(PurchaseRow::of(p));
        }
        Ok(scan.watermark)
    }
}

/// Catalog items: filters (category, in stock) and new-arrival audiences need them.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Creates or replaces items; one outcome per input row.
    async fn upsert_items(
        &self,
        tenant: &TenantId,
        items: &[CatalogItem],
    ) -> Result<Vec<UpsertOutcome>>;

    /// The stored items among `ids`, in the order of `ids` (missing ids are skipped).
    async fn get_items(&self, tenant: &TenantId, ids: &[ItemId]) -> Result<Vec<CatalogItem>>;

    /// All items of the tenant, sorted by item id (retrain and serving build filters from it).
    async fn list_items(&self, tenant: &TenantId) -> Result<Vec<CatalogItem>>;
}

/// Customer flags and privacy deletion.
#[async_trait]
pub trait CustomerStore: Send + Sync {
    /// Reads a customer's flags; None when never set (meaning: not opted out).
    async fn get_customer(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<CustomerRecord>>;

    /// Creates or replaces a customer's flags.
    async fn put_customer(&self, tenant: &TenantId, record: &CustomerRecord) -> Result<()>;

    /// Deletes every record of one customer (purchases, flags, offer events) for a privacy
    /// request; returns what was removed. Idempotent: a second call returns zero counts.
    async fn delete_customer_data(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<DeletionCounts>;

    /// Stores the audit record of an erasure (idempotent by `audit_id`).
    async fn put_erasure_audit(&self, tenant: &TenantId, audit: &ErasureAudit) -> Result<()>;

    /// Erasure audit records at or after `since`, oldest first: what a job that read the
    /// store before them must still drop.
    async fn erasures_since(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
    ) -> Result<Vec<ErasureAudit>>;

    /// Moves the tenant's customer rows from an older key layout to the current one and
    /// records that it is done; returns how many rows moved. Idempotent and safe beside
    /// live traffic. Only DynamoDB has an older layout (one partition per tenant, changed
    /// to one per customer); elsewhere there is nothing to move.
    async fn rekey_customers(&self, _tenant: &TenantId) -> Result<u64> {
        Ok(0)
    }
}

/// Offers and the events that measure their response.
#[async_trait]
pub trait OfferStore: Send + Sync {
    /// Creates or replaces offers; one outcome per input row.
    async fn upsert_offers(
        &self,
        tenant: &TenantId,
        offers: &[OfferRecord],
    ) -> Result<Vec<UpsertOutcome>>;

    /// Reads one offer.
    async fn get_offer(&self, tenant: &TenantId, offer: &OfferId) -> Result<Option<OfferRecord>>;

    /// All offers of the tenant, sorted by offer id.
    async fn list_offers(&self, tenant: &TenantId) -> Result<Vec<OfferRecord>>;

    /// Inserts events idempotently by event id; same outcome semantics as purchases.
    async fn put_offer_events(
        &self,
        tenant: &TenantId,
        events: &[OfferEvent],
    ) -> Result<Vec<WriteOutcome>>;

    /// A customer's events newest first, optionally only those at or after `since` (caps, cooldowns).
    async fn events_by_customer(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>>;

    /// An offer's events newest first, optionally since an instant (response reports).
    async fn events_by_offer(
        &self,
        tenant: &TenantId,
        offer: &OfferId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>>;
}

/// Hashed API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key; `Conflict::AlreadyExists` if its hash or key id is taken.
    async fn create_key(&self, record: &ApiKeyRecord) -> Result<()>;

    /// Finds a key by the hash of a presented secret (revoked keys are returned too, flagged).
    async fn find_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>>;

    /// Marks a key revoked; `NotFound` if the tenant has no such key id.
    async fn revoke_key(&self, tenant: &TenantId, key_id: &KeyId) -> Result<()>;

    /// The tenant's keys sorted by creation time.
    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>>;
}

/// Model versions and the live pointer.
#[async_trait]
pub trait ModelRegistry: Send + Sync {
    /// Registers a version; `Conflict::AlreadyExists` if the version id is taken.
    async fn register_model(&self, tenant: &TenantId, model: &ModelVersion) -> Result<()>;

    /// Reads one version.
    async fn get_model(
        &self,
        tenant: &TenantId,
        version: &ModelVersionId,
    ) -> Result<Option<ModelVersion>>;

    /// Versions newest first (by created_at, then version id), at most `limit`.
    async fn list_models(&self, tenant: &TenantId, limit: usize) -> Result<Vec<ModelVersion>>;

    /// Changes a version's status and reason; `NotFound` if it does not exist.
    async fn set_model_status(
        &self,
        tenant: &TenantId,
        version: &ModelVersionId,
        status: ModelStatus,
        reason: Option<String>,
    ) -> Result<()>;

    /// The live pointer, None before the first promotion.
    async fn live_pointer(&self, tenant: &TenantId) -> Result<Option<LivePointer>>;

    /// Compare-and-set of the live pointer: succeeds only if it currently names `expected`
    /// (None = no pointer yet). The old version becomes `previous`. `NotFound` if `new` is
    /// not registered, `Conflict::LiveModel` if the pointer moved meanwhile.
    async fn swap_live_pointer(
        &self,
        tenant: &TenantId,
        expected: Option<&ModelVersionId>,
        new: &ModelVersionId,
    ) -> Result<LivePointer>;
}

/// Single-flight retraining: a leased lock plus job records for retried invocations.
#[async_trait]
pub trait RetrainLock: Send + Sync {
    /// Takes the lock if free or expired; `Conflict::LockHeld` (owner, until) otherwise.
    /// Re-acquiring by the current owner extends the lease.
    async fn acquire_lock(
        &self,
        tenant: &TenantId,
        owner: &str,
        lease: Duration,
    ) -> Result<LockLease>;

    /// Extends the lease; `Conflict::LockNotOwned` if `owner` does not hold an unexpired lock.
    async fn renew_lock(
        &self,
        tenant: &TenantId,
        owner: &str,
        lease: Duration,
    ) -> Result<LockLease>;

    /// Releases the lock; only the owner may (`Conflict::LockNotOwned` otherwise).
    /// Releasing an absent or expired lock of one's own is not an error.
    async fn release_lock(&self, tenant: &TenantId, owner: &str) -> Result<()>;

    /// Creates a job record if the id is new, else returns the existing record.
    async fn create_job(&self, tenant: &TenantId, job: &JobRecord) -> Result<JobStart>;

    /// Reads a job record.
    async fn get_job(&self, tenant: &TenantId, job_id: &JobId) -> Result<Option<JobRecord>>;

    /// Replaces an existing job record (status, finish time, message); `NotFound` if absent.
    async fn update_job(&self, tenant: &TenantId, job: &JobRecord) -> Result<()>;
}

/// Everything record-shaped, as one object: what `Stores` holds.
pub trait RecordStore:
    PurchaseStore + CatalogStore + CustomerStore + OfferStore + KeyStore + ModelRegistry + RetrainLock
{
}

impl<T> RecordStore for T where
    T: PurchaseStore
        + CatalogStore
        + CustomerStore
        + OfferStore
        + KeyStore
        + ModelRegistry
        + RetrainLock
{
}

/// Byte blobs (model artifacts), namespaced by tenant.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes (or replaces) a blob atomically: readers see the old or the new bytes, never a mix.
    async fn put(&self, tenant: &TenantId, key: &BlobKey, bytes: Vec<u8>) -> Result<()>;

    /// Reads a blob; `NotFound` if absent.
    async fn get(&self, tenant: &TenantId, key: &BlobKey) -> Result<Vec<u8>>;

    /// Size of a blob, None if absent.
    async fn head(&self, tenant: &TenantId, key: &BlobKey) -> Result<Option<BlobMeta>>;

    /// Deletes a blob; deleting an absent blob succeeds.
    async fn delete(&self, tenant: &TenantId, key: &BlobKey) -> Result<()>;

    /// Blobs whose key starts with `prefix` (validated by `BlobKey::parse_prefix`), sorted by key.
    async fn list(&self, tenant: &TenantId, prefix: &str) -> Result<Vec<BlobMeta>>;
}
