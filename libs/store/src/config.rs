//! Choosing a backend from configuration and bundling the stores for the service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::dynamo::{DynamoOptions, DynamoStore};
use crate::error::{Error, Result};
use crate::ids::{BlobKey, TenantId};
use crate::local_blobs::LocalBlobStore;
use crate::s3::S3BlobStore;
use crate::sqlite::SqliteStore;
use crate::traits::{
    BlobStore, CatalogStore, CustomerStore, KeyStore, ModelRegistry, OfferStore, PurchaseStore,
    RecordStore, RetrainLock,
};
use crate::types::BlobMeta;

/// Where records and blobs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Local default: a SQLite file and a blob folder.
    Embedded {
        /// SQLite database file.
        db_path: PathBuf,
        /// Folder for blobs.
        blob_dir: PathBuf,
    },
    /// Everything in memory (SQLite `:memory:` and a map): for other crates' unit tests.
    Memory,
    /// DynamoDB tables and an S3 bucket; endpoint, region and credentials come from the
    /// standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...).
    Aws {
        /// Table name prefix.
        table_prefix: String,
        /// Artifact bucket.
        bucket: String,
        /// Object key prefix inside the bucket ("" for none).
        blob_prefix: String,
        /// Days offer events are kept before DynamoDB's TTL removes them; `None` keeps them.
        offer_event_retention_days: Option<u32>,
    },
}

/// Upper bound of the offer event retention (100 years): beyond it a typo, not a policy.
const MAX_RETENTION_DAYS: u32 = 36_500;

impl Backend {
    /// The embedded store kept in `dir`: `affinity.db` and `blobs/`.
    pub fn embedded(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Backend::Embedded {
            db_path: dir.join("affinity.db"),
            blob_dir: dir.join("blobs"),
        }
    }

    /// DynamoDB tables named `{table_prefix}{table}` and the artifact `bucket`, checked: the
    /// prefix must make valid table names and the bucket must be named.
    pub fn aws(
        table_prefix: String,
        bucket: String,
        blob_prefix: String,
        offer_event_retention_days: Option<u32>,
    ) -> Result<Self> {
        crate::dynamo::schema::validate_prefix(&table_prefix)?;
        if bucket.trim().is_empty() {
            return Err(Error::invalid("bucket", "must be named"));
        }
        Ok(Backend::Aws {
            table_prefix,
            bucket,
            blob_prefix,
            offer_event_retention_days,
        })
    }
}

/// Days offer events are kept, as configured: empty or 0 keeps them forever, else
/// 1..=36500 days.
pub fn parse_retention_days(raw: &str) -> Result<Option<u32>> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(d) if d <= MAX_RETENTION_DAYS => Ok(Some(d)),
        _ => Err(Error::invalid(
            "offer event retention",
            format!(
                "{raw:?} must be a whole number of days, 0..={MAX_RETENTION_DAYS} (0 keeps events forever)"
            ),
        )),
    }
}

/// The stores the service needs, as trait objects; cheap to clone into handlers.
#[derive(Clone)]
pub struct Stores {
    /// All record traits.
    pub records: Arc<dyn RecordStore>,
    /// Model artifacts.
    pub blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stores { .. }")
    }
}

impl Stores {
    /// Bundles existing stores (tests, custom wiring).
    pub fn new(records: Arc<dyn RecordStore>, blobs: Arc<dyn BlobStore>) -> Self {
        Self { records, blobs }
    }

    /// Opens the stores for a backend; for `Aws` the SDK config is loaded from the standard
    /// environment with `aws_config::defaults(BehaviorVersion::latest())`.
    pub async fn open(backend: &Backend) -> Result<Self> {
        match backend {
            Backend::Embedded { db_path, blob_dir } => Ok(Self::new(
                Arc::new(SqliteStore::open(db_path).await?),
                Arc::new(LocalBlobStore::new(blob_dir.clone())),
            )),
            Backend::Memory => Ok(Self::memory()?),
            Backend::Aws {
                table_prefix,
                bucket,
                blob_prefix,
                offer_event_retention_days,
            } => {
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                let options = DynamoOptions {
                    offer_event_retention: offer_event_retention_days
                        .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
                    ..DynamoOptions::new(table_prefix.clone())
                };
                Self::open_aws(&sdk, options, bucket, blob_prefix)
            }
        }
    }

    /// Opens DynamoDB + S3 stores from an explicit SDK config (tests point it at moto).
    pub fn open_aws(
        sdk: &aws_config::SdkConfig,
        options: DynamoOptions,
        bucket: &str,
        blob_prefix: &str,
    ) -> Result<Self> {
        Ok(Self::new(
            Arc::new(DynamoStore::new(sdk, options)?),
            Arc::new(S3BlobStore::new(sdk, bucket, blob_prefix)?),
        ))
    }

    /// In-memory stores.
    pub fn memory() -> Result<Self> {
        Ok(Self::new(
            Arc::new(SqliteStore::open_in_memory()?),
            Arc::new(MemoryBlobStore::default()),
        ))
    }

    /// The purchase store view.
    pub fn purchases(&self) -> Arc<dyn PurchaseStore> {
        self.records.clone()
    }

    /// The catalog view.
    pub fn catalog(&self) -> Arc<dyn CatalogStore> {
        self.records.clone()
    }

    /// The customer view.
    pub fn customers(&self) -> Arc<dyn CustomerStore> {
        self.records.clone()
    }

    /// The offer view.
    pub fn offers(&self) -> Arc<dyn OfferStore> {
        self.records.clone()
    }

    /// The API key view.
    pub fn keys(&self) -> Arc<dyn KeyStore> {
        self.records.clone()
    }

    /// The model registry view.
    pub fn models(&self) -> Arc<dyn ModelRegistry> {
        self.records.clone()
    }

    /// The retrain lock view.
    pub fn lock(&self) -> Arc<dyn RetrainLock> {
        self.records.clone()
    }
}

/// An SDK config for a loopback peer such as moto: explicit endpoint, region `us-east-1`,
/// static `test`/`test` credentials and `sdk_max_attempts` SDK-level attempts (1 disables the
/// SDK's retry). Tests and benchmarks use it instead of mutating the process environment.
pub async fn peer_sdk_config(endpoint: &str, sdk_max_attempts: u32) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let creds = aws_credential_types::Credentials::new("test", "test", None, None, "affinity-peer");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(sdk_max_attempts.max(1))
                // A loopback peer answers in milliseconds; AWS's 1 s initial backoff would
                // only slow tests down.
                .with_initial_backoff(std::time::Duration::from_millis(20)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .operation_attempt_timeout(std::time::Duration::from_secs(60))
                .build(),
        )
        .load()
        .await
}

/// Blobs in a map, for unit tests of other crates.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryBlobStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<u8>>> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, tenant: &TenantId, key: &BlobKey, bytes: Vec<u8>) -> Result<()> {
        self.map()
            .insert((tenant.to_string(), key.to_string()), bytes);
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, key: &BlobKey) -> Result<Vec<u8>> {
        self.map()
            .get(&(tenant.to_string(), key.to_string()))
            .cloned()
            .ok_or_else(|| Error::not_found("blob", key.to_string()))
    }

    async fn head(&self, tenant: &TenantId, key: &BlobKey) -> Result<Option<BlobMeta>> {
        Ok(self
            .map()
            .get(&(tenant.to_string(), key.to_string()))
            .map(|b| BlobMeta {
                key: key.clone(),
                size: b.len() as u64,
            }))
    }

    async fn delete(&self, tenant: &TenantId, key: &BlobKey) -> Result<()> {
        self.map().remove(&(tenant.to_string(), key.to_string()));
        Ok(())
    }

    async fn list(&self, tenant: &TenantId, prefix: &str) -> Result<Vec<BlobMeta>> {
        let prefix = BlobKey::parse_prefix(prefix)?;
        let t = tenant.to_string();
        let mut out = Vec::new();
        for ((bt, k), v) in self.map().iter() {
            if *bt == t && k.starts_with(&prefix) {
                out.push(BlobMeta {
                    key: BlobKey::parse(k.clone())?,
                    size: v.len() as u64,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn stores_work_as_shared_trait_objects_across_tasks() {
        // What an axum handler needs: Clone + Send + Sync + 'static stores, Send futures.
        fn assert_handler_state<T: Clone + Send + Sync + 'static>() {}
        assert_handler_state::<Stores>();
        let s = Stores::memory().unwrap();
        let t = TenantId::default();
        let fut = async move { s.catalog().list_items(&t).await };
        assert_send(&fut);
    }

    #[tokio::test]
    async fn embedded_backend_opens_from_config_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::embedded(dir.path());
        let t = TenantId::default();
        let key = BlobKey::parse("models/v1/a.bin").unwrap();
        {
            let stores = Stores::open(&backend).await.unwrap();
            stores.blobs.put(&t, &key, vec![1, 2]).await.unwrap();
            let c = crate::types::CustomerRecord {
                customer_id: crate::ids::CustomerId::parse("c").unwrap(),
                consent: crate::types::Consent::NONE,
                tier_override: None,
                updated_at: chrono::Utc::now(),
            };
            stores.customers().put_customer(&t, &c).await.unwrap();
        }
        let stores = Stores::open(&backend).await.unwrap();
        assert_eq!(stores.blobs.get(&t, &key).await.unwrap(), vec![1, 2]);
        let c = crate::ids::CustomerId::parse("c").unwrap();
        assert!(
            stores
                .customers()
                .get_customer(&t, &c)
                .await
                .unwrap()
                .unwrap()
                .consent
                == crate::types::Consent::NONE
        );
        assert!(dir.path().join("affinity.db").exists());
    }

    #[tokio::test]
    async fn memory_backend_round_trips_blobs() {
        let stores = Stores::open(&Backend::Memory).await.unwrap();
        let t = TenantId::default();
        let key = BlobKey::parse("a/b").unwrap();
        stores.blobs.put(&t, &key, vec![3]).await.unwrap();
        assert_eq!(stores.blobs.list(&t, "a/").await.unwrap().len(), 1);
        assert_eq!(stores.blobs.head(&t, &key).await.unwrap().unwrap().size, 1);
        stores.blobs.delete(&t, &key).await.unwrap();
        assert!(stores.blobs.get(&t, &key).await.unwrap_err().is_not_found());
    }

    #[test]
    fn offer_event_retention_is_opt_in_and_bounded() {
        assert_eq!(parse_retention_days("400").unwrap(), Some(400));
        assert_eq!(parse_retention_days(" 730 ").unwrap(), Some(730));
        assert_eq!(parse_retention_days("0").unwrap(), None);
        assert_eq!(parse_retention_days("").unwrap(), None);
        for bad in ["-1", "1.5", "forever", "36501"] {
            assert!(parse_retention_days(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_aws_backend_needs_a_valid_prefix_and_a_bucket() {
        assert!(Backend::aws("shop-".into(), "artifacts".into(), String::new(), None).is_ok());
        assert!(Backend::aws("shop-".into(), " ".into(), String::new(), None).is_err());
        assert!(Backend::aws("no spaces".into(), "a".into(), String::new(), None).is_err());
        assert_eq!(
            Backend::embedded("d"),
            Backend::Embedded {
                db_path: "d/affinity.db".into(),
                blob_dir: "d/blobs".into()
            }
        );
    }
}
