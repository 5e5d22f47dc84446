//! Customer insight and offers on top of the store: the glue between the store's records
//! and the pure engine in `affinity_model::crm`, so HTTP routes stay thin wrappers.
//!
//! - [`compute_snapshot`] (at retrain, next to the trained model): every customer's profile
//!   (RFM, tier, P(alive), churn risk, expected purchases, CLV) from the purchases in the
//!   store (amounts = quantity x unit price, in major currency units), the typical
//!   repurchase intervals, and each offer's calibration statistics.
//! - [`offer_engine`] prepares the live offers against a model and a snapshot;
//!   [`customer_offers`] answers one customer's next best offers from store data.
//!
//! Conversions from store records ([`offer_from_record`], [`past_event`]) live here so the
//! model crate never depends on the store.

mod customers;
mod offers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use affinity_model::crm::offers::{
    CustomerView, DryRun, EngineConfig, EventKind, Intervals, Offer, OfferEngine, OfferRequest,
    OfferStats, PastEvent, ScoredOffer,
};
use affinity_model::crm::profile::{CustomerProfile, ProfileConfig, Profiles, build_profiles};
use affinity_model::crm::repurchase;
use affinity_model::crm::summary::Transaction;
use affinity_model::model::{Model, Purchase as ModelPurchase};
use affinity_store::{
    BlobKey, Consent, CustomerId, OfferEvent, OfferEventKind, OfferRecord, OfferStatus, Purchase,
    PurchaseRow, RecordStore, Stores, TenantId,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::customer_data::CustomerHasher;
use crate::error::{Context, Error, Result};
use crate::training::SCAN_SEGMENTS;

pub use customers::*;
pub use offers::*;

/// Purchases read per customer at request time (newest first).
pub const HISTORY_LIMIT: usize = 500;

/// Offer events read per customer at request time (newest first; caps and cooldowns).
pub const EVENT_LIMIT: usize = 1000;

/// Offer events read per offer for calibration and budgets.
pub const OFFER_EVENT_LIMIT: usize = 20_000;

/// What retrain computes for customer insight, tied to one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmSnapshot {
    /// Model version the item and category indices refer to.
    pub model_version: String,
    /// Every customer's profile.
    pub profiles: Profiles<String>,
    /// Typical repurchase intervals by model item / category index.
    pub intervals: Intervals,
    /// Response of each offer so far (budgets, calibration), by offer id.
    pub offer_stats: BTreeMap<String, OfferStats>,
    /// Size of the stored blob this was read from (0 when computed): an instance that
    /// sees another size under the same key knows an erasure rewrote it.
    #[serde(skip)]
    pub stored_bytes: u64,
}

impl CrmSnapshot {
    /// The profile of a customer; a newcomer's when they bought nothing in the window.
    pub fn profile(&self, customer: &str) -> CustomerProfile {
        self.profiles
            .get(&customer.to_owned())
            .cloned()
            .unwrap_or_else(|| CustomerProfile::newcomer(&self.profiles.config))
    }

    /// Drops one customer's profile (an erasure); true when there was one.
    pub fn remove_customer(&mut self, customer: &str) -> bool {
        match self
            .profiles
            .customers
            .binary_search_by(|(k, _)| k.as_str().cmp(customer))
        {
            Ok(i) => {
                self.profiles.customers.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

/// Profiles, intervals and offer statistics for a tenant, computed from the store with
/// `model` (the freshly trained one). Suitable for the retrain pipeline.
pub async fn compute_snapshot(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &Model,
    observation_end: DateTime<Utc>,
    profile_config: &ProfileConfig,
    engine_config: &EngineConfig,
) -> Result<CrmSnapshot> {
    // The purchases as compact rows (interned customer and item numbers): a large shop's
    // history held as store records was gigabytes.
    let shared = Arc::new(Mutex::new(Compact::default()));
    let sink = Arc::clone(&shared);
    store
        .stream_purchases(
            tenant,
            SCAN_SEGMENTS,
            Box::new(move |r: PurchaseRow<'_>| {
                // Uncontended: only the backend's reader thread takes it.
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(&r);
            }),
        )
        .await
        .step("scan purchases")?;
    let compact = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => {
            return Err(Error::Task {
                step: "scan purchases",
                message: "the store kept the row sink after the scan".into(),
            });
        }
    };
    // Offer statistics need the purchases of the customers each offer was shown to: the
    // events are read first so only those histories are kept.
    let offers = live_offers(store, tenant).await?;
    let mut offer_events = Vec::with_capacity(offers.len());
    for offer in &offers {
        let id = affinity_store::OfferId::parse(offer.id.clone()).step("offer id")?;
        let events = store
            .events_by_offer(tenant, &id, None, OFFER_EVENT_LIMIT)
            .await
            .step("read offer events")?;
        offer_events.push(events);
    }
    // Every purchase of the tenant goes through the sums below: CPU work for seconds at
    // scale, kept from stalling other tasks of a multi-threaded runtime (the local server
    // runs a retrain beside the HTTP API).
    let work = || {
        insight_from_purchases(
            model,
            &compact,
            &offers,
            &offer_events,
            observation_end,
            profile_config,
            engine_config,
        )
    };
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A tenant's purchases reduced to what customer insight needs, ids interned.
#[derive(Default)]
struct Compact {
    customers: Vec<String>,
    customer_numbers: HashMap<String, u32>,
    items: Vec<String>,
    item_numbers: HashMap<String, u32>,
    rows: Vec<CompactRow>,
}

/// One purchase line: customer and item numbers into [`Compact`]'s lists.
struct CompactRow {
    customer: u32,
    item: u32,
    quantity: u32,
    at: i64,
    amount: f64,
}

impl Compact {
    fn number(names: &mut Vec<String>, numbers: &mut HashMap<String, u32>, id: &str) -> u32 {
        if let Some(&n) = numbers.get(id) {
            return n;
        }
        let n = names.len() as u32;
        names.push(id.to_owned());
        numbers.insert(id.to_owned(), n);
        n
    }

    fn push(&mut self, r: &PurchaseRow<'_>) {
        let customer = Self::number(
            &mut self.customers,
            &mut self.customer_numbers,
            r.customer_id,
        );
        let item = Self::number(&mut self.items, &mut self.item_numbers, r.item_id);
        self.rows.push(CompactRow {
            customer,
            item,
            quantity: r.quantity,
            at: r.purchased_at_ms.div_euclid(1000),
            // Major currency units (the store keeps minor units).
            amount: f64::from(r.quantity) * r.unit_price_minor as f64 / 100.0,
        });
    }
}

/// The CPU side of [`compute_snapshot`]: profiles, intervals and offer statistics from the
/// scanned purchases and each live offer's events.
fn insight_from_purchases(
    model: &Model,
    compact: &Compact,
    offers: &[Offer],
    offer_events: &[Vec<OfferEvent>],
    observation_end: DateTime<Utc>,
    profile_config: &ProfileConfig,
    engine_config: &EngineConfig,
) -> Result<CrmSnapshot> {
    let tx: Vec<Transaction<u32>> = compact
        .rows
        .iter()
        .map(|r| Transaction {
            customer: r.customer,
            at: r.at,
            amount: r.amount,
        })
        .collect();
    let profiles = build_profiles(&tx, observation_end.timestamp(), profile_config)
        .step("customer profiles")?;
    drop(tx);
    for note in &profiles.notes {
        tracing::info!(
            model_version = model.version(),
            note = note.as_str(),
            "profiles"
        );
    }
    let profiles = profiles.with_keys(|c| compact.customers[c as usize].clone());
    // Histories of the customers offers were shown to, for calibration.
    let shown: HashSet<u32> = offer_events
        .iter()
        .flatten()
        .filter(|e| e.kind == OfferEventKind::Shown)
        .filter_map(|e| {
            compact
                .customer_numbers
                .get(e.customer_id.as_str())
                .copied()
        })
        .collect();
    let model_item: Vec<Option<u32>> = compact
        .items
        .iter()
        .map(|id| model.item_index(id))
        .collect();
    let mut histories: HashMap<u32, Vec<ModelPurchase>> = HashMap::new();
    let mut triples = Vec::with_capacity(compact.rows.len());
    for r in &compact.rows {
        let Some(item) = model_item[r.item as usize] else {
            continue;
        };
        if shown.contains(&r.customer) {
            histories
                .entry(r.customer)
                .or_default()
                .push(ModelPurchase {
                    item,
                    quantity: r.quantity as f32,
                    at: r.at,
                });
        }
        triples.push((r.customer, item, r.at));
    }
    let intervals = Intervals::compute(model, &triples, &engine_config.repurchase);
    drop(triples);

    // Offer statistics: contacts and acceptances, and the model's mean uncalibrated
    // propensity for the customers it was shown to (what calibration compares against).
    let mut offer_stats = BTreeMap::new();
    let engine = OfferEngine::new(
        model,
        offers
            .iter()
            .map(|o| (o.clone(), OfferStats::default()))
            .collect(),
        vec![true; model.items.len()],
        intervals.clone(),
        *engine_config,
    )
    .step("prepare offers")?;
    let now = observation_end.timestamp();
    for (idx, (offer, events)) in offers.iter().zip(offer_events).enumerate() {
        let mut stats = OfferStats::default();
        let mut predicted = Vec::new();
        for e in events {
            match e.kind {
                OfferEventKind::Shown => {
                    stats.shown += 1;
                    let profile = profiles
                        .get(&e.customer_id.as_str().to_owned())
                        .cloned()
                        .unwrap_or_else(|| CustomerProfile::newcomer(profile_config));
                    let purchases = compact
                        .customer_numbers
                        .get(e.customer_id.as_str())
                        .and_then(|c| histories.get(c))
                        .map_or(&[][..], Vec::as_slice);
                    let view = CustomerView {
                        profile: &profile,
                        purchases,
                        events: &[],
                    };
                    predicted.push(engine.uncalibrated_propensity(idx, &view, now));
                }
                OfferEventKind::Accepted => stats.accepted += 1,
                OfferEventKind::Declined => {}
            }
        }
        if !predicted.is_empty() {
            stats.mean_predicted = Some(predicted.iter().sum::<f64>() / predicted.len() as f64);
        }
        offer_stats.insert(offer.id.clone(), stats);
    }
    Ok(CrmSnapshot {
        model_version: model.version().to_owned(),
        profiles,
        intervals,
        offer_stats,
        stored_bytes: 0,
    })
}

/// Blob-key prefix under which every model version's CRM snapshot is stored.
pub const SNAPSHOT_PREFIX: &str = "crm/";

/// Blob key of a model version's CRM snapshot: `crm/<sha256 of the version id>.json`, so any
/// version id (they may hold characters a blob key may not) maps to a safe key.
pub fn snapshot_key(version: &str) -> Result<BlobKey> {
    let h = affinity_model::artifact::digest(version.as_bytes());
    BlobKey::parse(format!("{SNAPSHOT_PREFIX}{h}.json")).step("CRM snapshot key")
}

/// Computes the CRM snapshot for a freshly trained `model` (observed up to the model's
/// data watermark, so the figures are those of the data the model saw) and stores it
/// beside the artifact, keyed by the model version. Called before the version is
/// registered, so every registered version has its snapshot.
///
/// A customer erased while it ran may have been read before the erasure deleted their
/// purchases, and the erasure's rewrite of stored snapshots cannot see this one before it is
/// written. So after writing, the erasure audit records since the start are matched (keyed
/// hash under `hasher`, the API's key) against the snapshot's customers, and any match is
/// removed and the snapshot written again. The erasure's second pass over snapshots that
/// appeared meanwhile covers the other order.
pub async fn write_snapshot(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    hasher: &CustomerHasher,
) -> Result<CrmSnapshot> {
    // Audit records are written after the erasure deleted the rows: a margin covers clock
    // skew between the instance that erased and this one.
    let started = Utc::now() - chrono::Duration::minutes(5);
    let end = DateTime::<Utc>::from_timestamp(model.manifest.data_watermark, 0)
        .filter(|_| model.manifest.data_watermark > 0)
        .unwrap_or_else(Utc::now);
    let mut snapshot = compute_snapshot(
        stores.records.as_ref(),
        tenant,
        model,
        end,
        &ProfileConfig::default(),
        &EngineConfig::default(),
    )
    .await?;
    let key = snapshot_key(model.version())?;
    let mut dropped: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let bytes = serde_json::to_vec(&snapshot)
            .map_err(|e| Error::runtime("encode the CRM snapshot", e))?;
        stores
            .blobs
            .put(tenant, &key, bytes)
            .await
            .step("write the CRM snapshot")?;
        let erased: std::collections::HashSet<String> = stores
            .records
            .erasures_since(tenant, started)
            .await
            .step("read erasures made meanwhile")?
            .into_iter()
            .map(|a| a.customer_hash)
            .filter(|h| !dropped.contains(h))
            .collect();
        if erased.is_empty() {
            return Ok(snapshot);
        }
        let before = snapshot.profiles.customers.len();
        snapshot
            .profiles
            .customers
            .retain(|(id, _)| !erased.contains(&hasher.full(id)));
        let removed = before - snapshot.profiles.customers.len();
        dropped.extend(erased);
        if removed == 0 {
            return Ok(snapshot);
        }
        tracing::info!(tenant = %tenant, removed, "customers erased during the retrain left out of its insight");
    }
}

/// Reads a model version's CRM snapshot; None when the version has none (trained before
/// snapshots existed).
pub async fn read_snapshot(
    stores: &Stores,
    tenant: &TenantId,
    version: &str,
) -> Result<Option<CrmSnapshot>> {
    let key = snapshot_key(version)?;
    let bytes = match stores.blobs.get(tenant, &key).await {
        Ok(b) => b,
        Err(affinity_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e).step("read the CRM snapshot"),
    };
    let mut snapshot: CrmSnapshot =
        serde_json::from_slice(&bytes).map_err(|e| Error::runtime("decode the CRM snapshot", e))?;
    snapshot.stored_bytes = bytes.len() as u64;
    if snapshot.model_version != version {
        return Err(Error::Mismatch(format!(
            "CRM snapshot under {version} is for model {}",
            snapshot.model_version
        )));
    }
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo;
    use affinity_model::model::TrainConfig;
    use affinity_store::{Channel, EventId, OfferId, Stores};
    use chrono::TimeZone;
    use serde_json::json;

    #[tokio::test]
    async fn demo_shop_profiles_and_offers_from_the_store() {
        let stores = Stores::memory().unwrap();
        let store = stores.records.as_ref();
        let tenant = TenantId::default();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        demo::populate(store, &tenant, 400, 7, now).await.unwrap();
        // This test is about one offer: the demo shop's own offers step aside.
        let mut archived = store.list_offers(&tenant).await.unwrap();
        for o in &mut archived {
            o.status = OfferStatus::Archived;
        }
        store.upsert_offers(&tenant, &archived).await.unwrap();
        let model =
            crate::training::train_tenant(store, &tenant, &TrainConfig::default(), "v1", &|_| {})
                .await
                .unwrap();
        let category = model.categories[0].clone();
        let offer = OfferRecord {
            offer_id: OfferId::parse("spring").unwrap(),
            status: OfferStatus::Active,
            document: json!({"kind": "discount", "categories": [category], "value": 50, "cost": 0.01,
                             "caps": {"cooldown_days": 7}}),
            updated_at: now,
        };
        store.upsert_offers(&tenant, &[offer]).await.unwrap();
        let snap = compute_snapshot(
            store,
            &tenant,
            &model,
            now,
            &ProfileConfig::default(),
            &EngineConfig::default(),
        )
        .await
        .unwrap();
        assert!(snap.profiles.bgnbd.is_some(), "{:?}", snap.profiles.notes);
        assert!(!snap.profiles.customers.is_empty());
        let engine = offer_engine(store, &tenant, &model, &snap, EngineConfig::default())
            .await
            .unwrap();
        // A customer who bought in the category gets the offer, then not during the cooldown.
        let cat = model.category_index(&category).unwrap();
        let mut chosen = None;
        for (c, _) in &snap.profiles.customers {
            let id = CustomerId::parse(c.clone()).unwrap();
            let h = store.customer_history(&tenant, &id, 100).await.unwrap();
            let in_cat = h.iter().any(|p| {
                model
                    .item_index(p.item_id.as_str())
                    .and_then(|i| model.item_category[i as usize])
                    == Some(cat)
            });
            if in_cat {
                chosen = Some(id);
                break;
            }
        }
        let id = chosen.unwrap();
        let req = OfferRequest {
            channel: "web".into(),
            now: now.timestamp(),
            k: 3,
            allow_same_category: false,
        };
        let got = customer_offers(store, &tenant, &engine, &model, &snap, &id, &req)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].offer_id, "spring");
        assert!(got[0].reasons.matched_purchases.iter().any(|m| m.direct));
        let shown = OfferEvent {
            event_id: EventId::parse("e1").unwrap(),
            customer_id: id.clone(),
            offer_id: OfferId::parse("spring").unwrap(),
            kind: OfferEventKind::Shown,
            channel: Channel::parse("email").unwrap(),
            recommendation_id: None,
            at: now - chrono::Duration::days(1),
        };
        store.put_offer_events(&tenant, &[shown]).await.unwrap();
        let got = customer_offers(store, &tenant, &engine, &model, &snap, &id, &req)
            .await
            .unwrap();
        assert!(got.is_empty(), "cooldown applies across channels");
    }
}
