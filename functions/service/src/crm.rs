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

use crate::error::{Context, Error, Result};
use crate::telemetry::CustomerHasher;
use crate::training::SCAN_SEGMENTS;

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

/// The store's offer record as an engine offer; a document that breaks a rule is an error
/// naming the field.
pub fn offer_from_record(r: &OfferRecord) -> affinity_model::Result<Offer> {
    Offer::parse(r.offer_id.as_str(), &r.document)
}

/// The store's offer event as the engine sees it.
pub fn past_event(e: &OfferEvent) -> PastEvent {
    PastEvent {
        offer: e.offer_id.as_str().to_owned(),
        kind: match e.kind {
            OfferEventKind::Shown => EventKind::Shown,
            OfferEventKind::Accepted => EventKind::Accepted,
            OfferEventKind::Declined => EventKind::Declined,
        },
        at: e.at.timestamp(),
    }
}

/// A customer's store purchases as model purchases (items the model does not know dropped).
pub fn model_purchases(model: &Model, purchases: &[Purchase]) -> Vec<ModelPurchase> {
    purchases
        .iter()
        .filter_map(|p| {
            model
                .item_index(p.item_id.as_str())
                .map(|item| ModelPurchase {
                    item,
                    quantity: p.quantity.get() as f32,
                    at: p.purchased_at.timestamp(),
                })
        })
        .collect()
}

/// Active offers whose documents parse; invalid stored documents are logged and skipped
/// (they were validated on the way in, so this only happens after a rule change).
pub async fn live_offers(store: &dyn RecordStore, tenant: &TenantId) -> Result<Vec<Offer>> {
    let records = store.list_offers(tenant).await.step("list offers")?;
    Ok(records
        .iter()
        .filter(|r| r.status == OfferStatus::Active)
        .filter_map(|r| match offer_from_record(r) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(offer = r.offer_id.as_str(), error = %e, "skipping invalid offer");
                None
            }
        })
        .collect())
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

/// The engine for the live offers, with their statistics from the snapshot and the
/// catalog's repurchasable flags.
pub async fn offer_engine<'m>(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &'m Model,
    snapshot: &CrmSnapshot,
    config: EngineConfig,
) -> Result<OfferEngine<'m>> {
    let offers = live_offers(store, tenant).await?;
    engine_for(store, tenant, model, snapshot, config, offers).await
}

/// The engine for the given offers (a dry run adds a draft to the live ones), with their
/// statistics from the snapshot and the catalog's repurchasable flags.
pub async fn engine_for<'m>(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &'m Model,
    snapshot: &CrmSnapshot,
    config: EngineConfig,
    offers: Vec<Offer>,
) -> Result<OfferEngine<'m>> {
    if snapshot.model_version != model.version() {
        return Err(Error::Mismatch(format!(
            "CRM snapshot is for model {}, serving model is {}",
            snapshot.model_version,
            model.version()
        )));
    }
    let repurchasable = repurchasable_flags(store, tenant, model).await?;
    let with_stats = offers
        .into_iter()
        .map(|o| {
            let s = snapshot.offer_stats.get(&o.id).copied().unwrap_or_default();
            (o, s)
        })
        .collect();
    OfferEngine::new(
        model,
        with_stats,
        repurchasable,
        snapshot.intervals.clone(),
        config,
    )
    .step("prepare offers")
}

/// Per model item index, whether the catalog says it is bought again and again. Items
/// missing from the catalog count as repurchasable: never hide what we know nothing of.
pub async fn repurchasable_flags(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &Model,
) -> Result<Vec<bool>> {
    let items = store.list_items(tenant).await.step("list catalog items")?;
    let mut repurchasable = vec![true; model.items.len()];
    for it in &items {
        if let Some(i) = model.item_index(it.item_id.as_str()) {
            repurchasable[i as usize] = it.repurchasable;
        }
    }
    Ok(repurchasable)
}

/// Store reads in flight at once when many customers are read (batch, dry run).
pub const READ_CONCURRENCY: usize = 16;

/// One customer as read from the store: flags, profile, history and offer events.
#[derive(Debug, Clone)]
pub struct CustomerData {
    /// What the customer consented to: without marketing they get no offer and are in no
    /// audience or count; without personalization their history is not read.
    pub consent: Consent,
    /// Profile from the snapshot (newcomer's when unknown), tier override applied.
    pub profile: CustomerProfile,
    /// Purchases with model item indices, newest first.
    pub purchases: Vec<ModelPurchase>,
    /// Offer events over all channels, newest first.
    pub events: Vec<PastEvent>,
}

impl CustomerData {
    /// The engine's view of this customer.
    pub fn view(&self) -> CustomerView<'_> {
        CustomerView {
            profile: &self.profile,
            purchases: &self.purchases,
            events: &self.events,
        }
    }
}

/// A customer's profile from the snapshot with the shop's tier override applied, and their
/// consent (both uses when no record was ever written).
fn with_flags(
    snapshot: &CrmSnapshot,
    customer: &str,
    flags: Option<affinity_store::CustomerRecord>,
) -> (CustomerProfile, Consent) {
    let mut profile = snapshot.profile(customer);
    let consent = flags.as_ref().map(|f| f.consent).unwrap_or_default();
    if let Some(t) = flags.and_then(|f| f.tier_override) {
        profile.tier = t;
    }
    (profile, consent)
}

/// Reads one customer: flags, history (newest [`HISTORY_LIMIT`]) and offer events over all
/// channels (newest [`EVENT_LIMIT`]).
pub async fn read_customer(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &Model,
    snapshot: &CrmSnapshot,
    customer: &CustomerId,
) -> Result<CustomerData> {
    let flags = store
        .get_customer(tenant, customer)
        .await
        .step("read customer flags")?;
    let (profile, consent) = with_flags(snapshot, customer.as_str(), flags);
    if !consent.marketing {
        return Ok(CustomerData {
            consent,
            profile,
            purchases: Vec::new(),
            events: Vec::new(),
        });
    }
    let history = if consent.personalization {
        store
            .customer_history(tenant, customer, HISTORY_LIMIT)
            .await
            .step("read customer history")?
    } else {
        Vec::new()
    };
    let events = store
        .events_by_customer(tenant, customer, None, EVENT_LIMIT)
        .await
        .step("read offer events")?;
    Ok(CustomerData {
        consent,
        profile,
        purchases: model_purchases(model, &history),
        events: events.iter().map(past_event).collect(),
    })
}

/// Reads many customers, [`READ_CONCURRENCY`] at a time, in input order.
pub async fn read_customers(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &Model,
    snapshot: &CrmSnapshot,
    customers: &[CustomerId],
) -> Result<Vec<CustomerData>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    // The futures are built first: a stream holding the closure trips the compiler's
    // higher-ranked Send check in axum handlers.
    let reads: Vec<_> = customers
        .iter()
        .map(|c| read_customer(store, tenant, model, snapshot, c))
        .collect();
    stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await
}

/// Every customer of the snapshot, read in bulk: one purchase scan (each history cut to
/// the newest [`HISTORY_LIMIT`], as one customer's read is), the events of `offers` read
/// by offer (only events of engine offers matter to it), flags [`READ_CONCURRENCY`] at a
/// time. Sorted by customer id.
pub async fn all_customers(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &Model,
    snapshot: &CrmSnapshot,
    offers: &[String],
) -> Result<Vec<(CustomerId, CustomerData)>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let scan = store
        .scan_purchases(tenant, SCAN_SEGMENTS)
        .await
        .step("scan purchases")?;
    let mut histories: BTreeMap<String, Vec<Purchase>> = BTreeMap::new();
    for (id, _) in &snapshot.profiles.customers {
        histories.entry(id.clone()).or_default();
    }
    for p in scan.purchases {
        histories
            .entry(p.customer_id.as_str().to_owned())
            .or_default()
            .push(p);
    }
    let mut events: HashMap<String, Vec<OfferEvent>> = HashMap::new();
    for o in offers {
        let id = affinity_store::OfferId::parse(o.clone()).step("offer id")?;
        for e in store
            .events_by_offer(tenant, &id, None, usize::MAX >> 1)
            .await
            .step("read offer events")?
        {
            events
                .entry(e.customer_id.as_str().to_owned())
                .or_default()
                .push(e);
        }
    }
    let ids: Vec<CustomerId> = histories
        .keys()
        .map(|k| CustomerId::parse(k.clone()).step("customer id"))
        .collect::<Result<_>>()?;
    let reads: Vec<_> = ids.iter().map(|c| store.get_customer(tenant, c)).collect();
    let flags: Vec<Option<affinity_store::CustomerRecord>> = stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .map(|r| r.step("read customer flags"))
        .try_collect()
        .await?;
    let mut out = Vec::with_capacity(ids.len());
    for ((id, flags), (_, mut history)) in ids.into_iter().zip(flags).zip(histories) {
        let (profile, consent) = with_flags(snapshot, id.as_str(), flags);
        if !consent.marketing {
            out.push((
                id,
                CustomerData {
                    consent,
                    profile,
                    purchases: Vec::new(),
                    events: Vec::new(),
                },
            ));
            continue;
        }
        if !consent.personalization {
            history.clear();
        }
        // Newest first, ties as the store orders them (order id, line).
        history.sort_by(|a, b| {
            b.purchased_at
                .cmp(&a.purchased_at)
                .then_with(|| b.order_id.as_str().cmp(a.order_id.as_str()))
                .then_with(|| b.line.cmp(&a.line))
        });
        history.truncate(HISTORY_LIMIT);
        let mut ev = events.remove(id.as_str()).unwrap_or_default();
        ev.sort_by_key(|e| std::cmp::Reverse(e.at));
        ev.truncate(EVENT_LIMIT);
        out.push((
            id,
            CustomerData {
                consent,
                profile,
                purchases: model_purchases(model, &history),
                events: ev.iter().map(past_event).collect(),
            },
        ));
    }
    Ok(out)
}

/// Dry run of `offer` (a draft, or a stored offer whatever its status) against the live
/// offers at `now` on `channel`: eligible customers and those whose first offer it would
/// be, overall and by tier, over every customer of the snapshot with marketing consent (the
/// others are not counted at all). The offer replaces a live offer with the same id.
pub async fn dry_run(
    store: &dyn RecordStore,
    tenant: &TenantId,
    model: &Model,
    snapshot: &CrmSnapshot,
    offer: Offer,
    channel: &str,
    now: i64,
) -> Result<DryRun> {
    let mut offers: Vec<Offer> = live_offers(store, tenant)
        .await?
        .into_iter()
        .filter(|o| o.id != offer.id)
        .collect();
    let id = offer.id.clone();
    offers.push(offer);
    let ids: Vec<String> = offers.iter().map(|o| o.id.clone()).collect();
    let engine = engine_for(
        store,
        tenant,
        model,
        snapshot,
        EngineConfig::default(),
        offers,
    )
    .await?;
    let customers = all_customers(store, tenant, model, snapshot, &ids).await?;
    let idx = engine
        .offer_index(&id)
        .ok_or_else(|| Error::Mismatch("dry-run offer missing from the engine".into()))?;
    let views: Vec<CustomerView<'_>> = customers
        .iter()
        .filter(|(_, c)| c.consent.marketing)
        .map(|(_, c)| c.view())
        .collect();
    let request = OfferRequest {
        channel: channel.to_owned(),
        now,
        k: 1,
        allow_same_category: false,
    };
    let mut d = engine.dry_run(idx, &views, &request);
    d.customers = views.len() as u64;
    Ok(d)
}

/// One customer's due-to-repurchase items and categories at `now`: those bought before
/// whose typical interval says it is time again.
pub fn due_items(
    model: &Model,
    snapshot: &CrmSnapshot,
    purchases: &[ModelPurchase],
    now: i64,
    config: &EngineConfig,
) -> Vec<DueKey> {
    let mut last_item: BTreeMap<u32, i64> = BTreeMap::new();
    let mut last_cat: BTreeMap<u32, i64> = BTreeMap::new();
    for p in purchases {
        let e = last_item.entry(p.item).or_insert(p.at);
        *e = (*e).max(p.at);
        if let Some(Some(c)) = model.item_category.get(p.item as usize) {
            let e = last_cat.entry(*c).or_insert(p.at);
            *e = (*e).max(p.at);
        }
    }
    let mut out = Vec::new();
    for (i, at) in last_item {
        if let Some(iv) = snapshot.intervals.by_item.get(&i)
            && let Some(d) = repurchase::due(at, now, iv, &config.repurchase)
        {
            out.push(DueKey {
                item: Some(i),
                category: None,
                days_since: d.days_since,
                typical_days: d.typical_days,
            });
        }
    }
    for (c, at) in last_cat {
        if let Some(iv) = snapshot.intervals.by_category.get(&c)
            && let Some(d) = repurchase::due(at, now, iv, &config.repurchase)
        {
            out.push(DueKey {
                item: None,
                category: Some(c),
                days_since: d.days_since,
                typical_days: d.typical_days,
            });
        }
    }
    out
}

/// An item or category a customer is due to buy again (model indices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DueKey {
    /// Model item index, when due for an item.
    pub item: Option<u32>,
    /// Model category index, when due for a category.
    pub category: Option<u32>,
    /// Days since the last purchase of it.
    pub days_since: f64,
    /// Its typical repurchase interval in days.
    pub typical_days: f64,
}

/// The customers most likely to buy `item`: each customer's folded-in vector scored
/// against the item's vector. Eligible = marketing consent and, unless the item is
/// repurchasable, not owning it already. Returns the eligible count and the best `limit`
/// (score, then customer id), customers without a known purchase left out of the ranking.
pub fn audience(
    model: &Model,
    item: u32,
    repurchasable: bool,
    customers: &[(CustomerId, CustomerData)],
    limit: usize,
) -> (usize, Vec<(CustomerId, f32)>) {
    use rayon::prelude::*;
    let Some(target) = model.vectors.row(item) else {
        return (0, Vec::new());
    };
    let scored: Vec<Option<Option<f32>>> = customers
        .par_iter()
        .map(|(_, c)| {
            if !c.consent.marketing
                || (!repurchasable && c.purchases.iter().any(|p| p.item == item))
            {
                return None;
            }
            if c.purchases.is_empty() {
                return Some(None);
            }
            let v = model.fold_in(&model.weigh(&c.purchases));
            Some(Some(v.iter().zip(target).map(|(a, b)| a * b).sum::<f32>()))
        })
        .collect();
    let eligible = scored.iter().filter(|s| s.is_some()).count();
    let mut ranked: Vec<(CustomerId, f32)> = customers
        .iter()
        .zip(scored)
        .filter_map(|((id, _), s)| s.flatten().map(|s| (id.clone(), s)))
        .collect();
    ranked.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| a.0.as_str().cmp(b.0.as_str()))
    });
    ranked.truncate(limit);
    (eligible, ranked)
}

/// One customer's next best offers from store data: history, offer events over all
/// channels, flags (no history without personalization consent, nothing without marketing consent; a tier override replaces the tier).
pub async fn customer_offers(
    store: &dyn RecordStore,
    tenant: &TenantId,
    engine: &OfferEngine<'_>,
    model: &Model,
    snapshot: &CrmSnapshot,
    customer: &CustomerId,
    request: &OfferRequest,
) -> Result<Vec<ScoredOffer>> {
    let data = read_customer(store, tenant, model, snapshot, customer).await?;
    Ok(offers_for(engine, &data, request))
}

/// The next best offers of a customer already read; none without marketing consent.
pub fn offers_for(
    engine: &OfferEngine<'_>,
    data: &CustomerData,
    request: &OfferRequest,
) -> Vec<ScoredOffer> {
    if !data.consent.marketing {
        Vec::new()
    } else {
        engine.next_best_offers(&data.view(), request)
    }
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
