//! Reads a tenant's purchases and catalog from the store and trains a model: the data
//! half of the retrain pipeline, shared by the CLI and (later) the retrain function.

use std::collections::HashMap;

use affinity_model::interactions::{Event, Interactions, InteractionsBuilder, Weighting};
use affinity_model::model::{Model, Stage, TrainConfig, train};
use affinity_store::{RecordStore, TenantId};

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
