//! A customer as the CRM routes see them: purchases, consent, offer history and profile,
//! read one at a time or for many customers at once.

use super::*;

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
pub(crate) fn with_flags(
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
