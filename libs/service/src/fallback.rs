//! The popularity of each model version, kept as a small blob of its own beside the
//! artifact (`popular/<sha256 of the version id>.json`, the most popular items with their
//! scores and categories), so that a cold start that can load no artifact at all (deleted,
//! truncated, over the size limit, and no earlier version that verifies) still answers,
//! flagged, instead of failing every request.

use affinity_model::model::Model;
use affinity_store::{BlobKey, Stores, TenantId};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};

/// Items kept: enough for any page of answers after filters (stock, category, bought).
pub const KEPT: usize = 1000;

/// Blob key of a version's popularity list.
pub fn key(version: &str) -> Result<BlobKey> {
    let h = affinity_model::artifact::digest(version.as_bytes());
    BlobKey::parse(format!("popular/{h}.json")).step("popularity key")
}

/// One ranked item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopularItem {
    /// Item id.
    pub item_id: String,
    /// The model's (time-decayed) popularity score.
    pub score: f32,
    /// Category, if the item had one.
    pub category: Option<String>,
}

/// The stored list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopularList {
    /// The version it was computed for.
    pub model_version: String,
    /// Most popular first.
    pub items: Vec<PopularItem>,
}

/// The list of `model`, most popular first, at most [`KEPT`] items.
pub fn of(model: &Model) -> PopularList {
    let items = model
        .popularity
        .ranked(None)
        .iter()
        .take(KEPT)
        .map(|&j| PopularItem {
            item_id: model.items.id(j).to_owned(),
            score: model.popularity.score[j as usize],
            category: model.item_category[j as usize]
                .and_then(|c| model.categories.get(c as usize).cloned()),
        })
        .collect();
    PopularList {
        model_version: model.version().to_owned(),
        items,
    }
}

/// Stores `model`'s list (before the version is registered, like the CRM snapshot).
pub async fn write(stores: &Stores, tenant: &TenantId, model: &Model) -> Result<()> {
    let list = of(model);
    let bytes = serde_json::to_vec(&list)
        .map_err(|e| crate::Error::runtime("encode the popularity list", e))?;
    stores
        .blobs
        .put(tenant, &key(model.version())?, bytes)
        .await
        .step("write the popularity list")
}

/// A popularity-only stand-in model from `version`'s stored list.
pub async fn read(stores: &Stores, tenant: &TenantId, version: &str) -> Result<Model> {
    let bytes = stores
        .blobs
        .get(tenant, &key(version)?)
        .await
        .step("read the popularity list")?;
    let list: PopularList = serde_json::from_slice(&bytes)
        .map_err(|e| crate::Error::runtime("decode the popularity list", e))?;
    if list.items.is_empty() {
        return Err(crate::Error::runtime(
            "decode the popularity list",
            format!("the list of {version} is empty"),
        ));
    }
    let ranked: Vec<(String, f32, Option<String>)> = list
        .items
        .into_iter()
        .map(|i| (i.item_id, i.score, i.category))
        .collect();
    Model::popularity_only(version, &ranked).step("build the popularity stand-in")
}
