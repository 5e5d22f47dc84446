//! Offers from the store into the engine: documents, past events, the engine for a model
//! version, dry runs, audiences, due items, and the response counts reports show.

use utoipa::ToSchema;

use super::*;

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

/// Response counts of one group of customers.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
pub struct Response {
    /// Contacts.
    pub shown: u64,
    /// Acceptances.
    pub accepted: u64,
    /// Refusals.
    pub declined: u64,
    /// accepted / shown (None before the first contact).
    pub acceptance_rate: Option<f64>,
}

impl Response {
    pub(crate) fn add(&mut self, kind: OfferEventKind) {
        match kind {
            OfferEventKind::Shown => self.shown += 1,
            OfferEventKind::Accepted => self.accepted += 1,
            OfferEventKind::Declined => self.declined += 1,
        }
        self.acceptance_rate = (self.shown > 0).then(|| self.accepted as f64 / self.shown as f64);
    }
}

/// Response counts of `events`, overall and by each customer's tier in `snapshot` (a
/// customer the snapshot does not know counts in the newcomers' tier): the figures of the
/// offer report, and of the model report's offer response plot.
pub fn response_by_tier(
    events: &[OfferEvent],
    snapshot: &CrmSnapshot,
) -> (Response, BTreeMap<String, Response>) {
    let mut total = Response::default();
    let mut by_tier: BTreeMap<String, Response> = BTreeMap::new();
    for e in events {
        total.add(e.kind);
        let tier = snapshot.profile(e.customer_id.as_str()).tier;
        by_tier.entry(tier).or_default().add(e.kind);
    }
    (total, by_tier)
}
