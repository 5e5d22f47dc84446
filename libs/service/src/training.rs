//! Reads a tenant's purchases and catalog from the store and trains a model: the data
//! half of the retrain pipeline (`retrain::run_once` uses [`scan`]), plus the ungated
//! [`publish`] that tests and benchmarks use to put a fixture model live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use affinity_model::interactions::{Event, Interactions, InteractionsBuilder, Weighting};
use affinity_model::model::{Model, Stage, TrainConfig, Trainer};
use affinity_store::{
    BlobKey, ModelStatus, ModelVersion, ModelVersionId, PurchaseRow, RecordStore, Stores, TenantId,
    Watermark,
};

use crate::error::{Context, Error, Result};

/// Segments of the parallel training scan.
pub const SCAN_SEGMENTS: u32 = 4;

/// Purchases as interactions, plus each catalog item's category.
pub struct TrainingData {
    /// The customer x item matrix.
    pub interactions: Interactions,
    /// Item id to category name, from the catalog.
    pub categories: HashMap<String, String>,
}

/// Purchases read but not yet compressed: the scan step's result.
pub struct Scanned {
    /// Every purchase as an event, plus every catalog item pre-registered.
    pub builder: InteractionsBuilder,
    /// Item id to category name, from the catalog.
    pub categories: HashMap<String, String>,
    /// Count and newest time of the purchases read.
    pub watermark: Watermark,
}

/// Streams every purchase of `tenant` into an interactions builder (never holding the raw
/// rows: a large shop's history does not fit in memory as records) and reads the catalog;
/// catalog items nobody bought yet still get an index so popularity and filters know them.
pub async fn scan(store: &dyn RecordStore, tenant: &TenantId, segments: u32) -> Result<Scanned> {
    let items = store.list_items(tenant).await.step("list catalog items")?;
    let mut b = InteractionsBuilder::new();
    let mut categories = HashMap::with_capacity(items.len());
    for it in &items {
        b.add_item(it.item_id.as_str());
        if let Some(c) = &it.category {
            categories.insert(it.item_id.as_str().to_owned(), c.as_str().to_owned());
        }
    }
    drop(items);
    let shared = Arc::new(Mutex::new((b, None::<affinity_model::Error>)));
    let sink = Arc::clone(&shared);
    let watermark = store
        .stream_purchases(
            tenant,
            segments,
            Box::new(move |r: PurchaseRow<'_>| {
                // Uncontended: only the backend's reader thread takes it.
                let mut guard = sink.lock().unwrap_or_else(|p| p.into_inner());
                let (b, failed) = &mut *guard;
                if failed.is_some() {
                    return;
                }
                if let Err(e) = b.push(Event {
                    customer: r.customer_id,
                    item: r.item_id,
                    quantity: r.quantity as f32,
                    at: r.purchased_at_ms.div_euclid(1000),
                }) {
                    *failed = Some(e);
                }
            }),
        )
        .await
        .step("scan purchases")?;
    let (builder, failed) = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => {
            return Err(Error::Task {
                step: "scan purchases",
                message: "the store kept the row sink after the scan".into(),
            });
        }
    };
    if let Some(e) = failed {
        return Err(e).step("build interactions");
    }
    Ok(Scanned {
        builder,
        categories,
        watermark,
    })
}

/// Scans every purchase of `tenant` and the catalog and builds the interactions.
pub async fn load(
    store: &dyn RecordStore,
    tenant: &TenantId,
    weighting: &Weighting,
) -> Result<TrainingData> {
    let scanned = scan(store, tenant, SCAN_SEGMENTS).await?;
    let interactions = scanned
        .builder
        .build(weighting)
        .step("build interactions")?;
    Ok(TrainingData {
        interactions,
        categories: scanned.categories,
    })
}

/// Loads and trains in one call.
pub async fn train_tenant(
    store: &dyn RecordStore,
    tenant: &TenantId,
    config: &TrainConfig,
    version: &str,
    progress: &(dyn Fn(Stage) + Sync),
) -> Result<Model> {
    let data = load(store, tenant, &config.weighting).await?;
    let now = chrono::Utc::now().timestamp();
    Trainer::new(config)
        .version(version)
        .trained_at(now)
        .progress(progress)
        .train(&data.interactions, &data.categories)
        .step("train")
}

/// The blob key of a model artifact: its content address (`models/<sha256 hex>.afm`), the
/// one constructor for the retrain and `publish` alike.
pub fn artifact_key(checksum: &str) -> Result<BlobKey> {
    BlobKey::parse(format!("models/{checksum}.afm")).step("artifact key")
}

/// Stores a trained model and makes it the tenant's live model, without an evaluation gate:
/// the artifact goes to a content-addressed blob key, the version is registered with its
/// checksum (its CRM snapshot beside it), and the live pointer moves by compare-and-set (the
/// previous live version is marked retired). A helper for tests, fixtures and benchmarks only
/// (the router tests, the Lambda smoke test, `bench/serve`): every production path (`affinity
/// train`, the retrain function, `POST /v1/models:retrain`, `affinity serve --demo`) goes
/// through `retrain::run_once`, which evaluates and gates the candidate before any flip.
pub async fn publish(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    metrics: serde_json::Value,
) -> Result<ModelVersion> {
    // A test helper: no erasure audit to match, any key will do.
    let hasher = crate::customer_data::CustomerHasher::new(None);
    crate::crm::write_snapshot(stores, tenant, model, &hasher).await?;
    crate::fallback::write(stores, tenant, model).await?;
    let m = model.to_bytes().step("encode artifact")?;
    let checksum = affinity_model::artifact::digest(&m);
    let key = artifact_key(&checksum)?;
    stores
        .blobs
        .put(tenant, &key, m)
        .await
        .step("write artifact")?;
    let manifest = &model.manifest;
    let version = ModelVersion {
        version: ModelVersionId::parse(manifest.model_version.as_str()).step("model version id")?,
        created_at: chrono::Utc::now(),
        status: ModelStatus::Candidate,
        artifact_key: key,
        checksum,
        params: serde_json::to_value(&manifest.config).unwrap_or_default(),
        metrics,
        data_counts: affinity_store::DataCounts {
            purchases: manifest.counts.purchases as u64,
            customers: manifest.counts.customers as u64,
            items: manifest.counts.items as u64,
        },
        reason: Some("published without a gate".into()),
    };
    let records = stores.records.as_ref();
    records
        .register_model(tenant, &version)
        .await
        .step("register model version")?;
    let expected = records
        .live_pointer(tenant)
        .await
        .step("read live pointer")?
        .map(|p| p.version);
    records
        .swap_live_pointer(tenant, expected.as_ref(), &version.version)
        .await
        .step("swap live pointer")?;
    records
        .set_model_status(tenant, &version.version, ModelStatus::Live, None)
        .await
        .step("mark version live")?;
    if let Some(old) = expected {
        records
            .set_model_status(
                tenant,
                &old,
                ModelStatus::Retired,
                Some(format!("replaced by {}", version.version)),
            )
            .await
            .step("retire previous version")?;
    }
    Ok(ModelVersion {
        status: ModelStatus::Live,
        reason: None,
        ..version
    })
}
