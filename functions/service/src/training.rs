//! Reads a tenant's purchases and catalog from the store and trains a model: the data
//! half of the retrain pipeline, shared by the CLI and (later) the retrain function.

use std::collections::HashMap;

use affinity_model::interactions::{Event, Interactions, InteractionsBuilder, Weighting};
use affinity_model::model::{Model, Stage, TrainConfig, train};
use affinity_store::{
    BlobKey, ModelStatus, ModelVersion, ModelVersionId, RecordStore, Stores, TenantId,
};

use crate::error::{Context, Result};

/// Segments of the parallel training scan.
pub const SCAN_SEGMENTS: u32 = 4;

/// Purchases as interactions, plus each catalog item's category.
pub struct TrainingData {
    /// The customer x item matrix.
    pub interactions: Interactions,
    /// Item id to category name, from the catalog.
    pub categories: HashMap<String, String>,
}

/// Scans every purchase of `tenant` and the catalog; catalog items nobody bought yet
/// still get an index so popularity and filters know them.
pub async fn load(
    store: &dyn RecordStore,
    tenant: &TenantId,
    weighting: &Weighting,
) -> Result<TrainingData> {
    let scan = store
        .scan_purchases(tenant, SCAN_SEGMENTS)
        .await
        .step("scan purchases")?;
    let items = store.list_items(tenant).await.step("list catalog items")?;
    let mut b = InteractionsBuilder::new();
    let mut categories = HashMap::with_capacity(items.len());
    for it in &items {
        b.add_item(it.item_id.as_str());
        if let Some(c) = &it.category {
            categories.insert(it.item_id.as_str().to_owned(), c.as_str().to_owned());
        }
    }
    for p in &scan.purchases {
        b.push(Event {
            customer: p.customer_id.as_str(),
            item: p.item_id.as_str(),
            quantity: p.quantity.get() as f32,
            at: p.purchased_at.timestamp(),
        })
        .step("build interactions")?;
    }
    let interactions = b.build(weighting).step("build interactions")?;
    Ok(TrainingData {
        interactions,
        categories,
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
    train(
        &data.interactions,
        &data.categories,
        config,
        version,
        now,
        progress,
    )
    .step("train")
}

/// Stores a trained model and makes it the tenant's live model, without an evaluation gate:
/// the artifact goes to a content-addressed blob key, the version is registered with its
/// checksum, and the live pointer moves by compare-and-set (the previous live version is
/// marked retired). Used by `affinity train` and the demo; the gated retrain pipeline
/// replaces it for scheduled retrains.
pub async fn publish(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    metrics: serde_json::Value,
) -> Result<ModelVersion> {
    let m = model.to_bytes().step("encode artifact")?;
    let checksum = affinity_model::artifact::digest(&m);
    let key = BlobKey::parse(format!("models/{}.afm", &checksum[..32])).step("artifact key")?;
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
