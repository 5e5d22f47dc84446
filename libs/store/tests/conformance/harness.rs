//! Per-test stores: a fresh temp dir for the embedded backend, a unique table prefix and
//! bucket on moto.

use std::sync::atomic::{AtomicU64, Ordering};

use affinity_store::{
    DynamoOptions, DynamoStore, LocalBlobStore, S3BlobStore, SqliteStore, Stores, TenantId,
};
use std::sync::Arc;

pub struct Harness {
    pub stores: Stores,
    pub tenant: TenantId,
    pub backend: &'static str,
    dynamo: Option<DynamoStore>,
    _dir: Option<tempfile::TempDir>,
}

/// The moto endpoint; failing (not skipping) when absent, as required.
pub fn moto_url() -> String {
    match std::env::var("AFFINITY_TEST_MOTO_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "AFFINITY_TEST_MOTO_URL is not set: the DynamoDB/S3 conformance tests need moto. \
             Run `bash scripts/test.sh` (it installs and starts moto), or start \
             `moto_server -H 127.0.0.1 -p 5055` and export AFFINITY_TEST_MOTO_URL=http://127.0.0.1:5055"
        ),
    }
}

/// A name unique across tests and runs sharing one moto process.
pub fn unique(kind: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "t{}-{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed),
        kind
    )
}

impl Harness {
    pub async fn embedded() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let records = SqliteStore::open(dir.path().join("affinity.db"))
            .await
            .unwrap();
        let blobs = LocalBlobStore::new(dir.path().join("blobs"));
        Harness {
            stores: Stores::new(Arc::new(records), Arc::new(blobs)),
            tenant: TenantId::default(),
            backend: "embedded",
            dynamo: None,
            _dir: Some(dir),
        }
    }

    pub async fn moto() -> Harness {
        let url = moto_url();
        let sdk = affinity_store::peer_sdk_config(&url, 3).await;
        let prefix = format!("{}-", unique("tbl"));
        let dynamo = DynamoStore::new(&sdk, DynamoOptions::new(prefix)).unwrap();
        dynamo.create_tables().await.unwrap();
        let bucket = unique("bkt");
        let blobs = S3BlobStore::new(&sdk, &bucket, "").unwrap();
        blobs.create_bucket().await.unwrap();
        Harness {
            stores: Stores::new(Arc::new(dynamo.clone()), Arc::new(blobs)),
            tenant: TenantId::default(),
            backend: "moto",
            dynamo: Some(dynamo),
            _dir: None,
        }
    }

    /// Drops the test's tables so moto stays small (its queries slow down with size).
    pub async fn teardown(self) {
        if let Some(d) = &self.dynamo {
            d.delete_tables().await.unwrap();
        }
    }
}
