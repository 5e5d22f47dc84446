//! A seeded demo shop that looks like a real one: named items in related categories,
//! power-law popularity, items bought together, repeat purchases of consumables, and some
//! valuable customers who stopped buying. Used by `affinity demo` and the tests.

use std::num::NonZeroU32;

use affinity_store::{
    CatalogItem, Category, CustomerId, ItemId, OfferId, OfferRecord, OfferStatus, OrderId,
    Purchase, RecordStore, TenantId,
};
use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::error::{Context, Result};

/// Shopping styles: each customer follows one, so categories are bought together.
const STYLES: &[&[&str]] = &[
    &["Coffee", "Brewing gear", "Mugs"],
    &["Tea", "Mugs", "Snacks"],
    &["Running shoes", "Running apparel", "Snacks"],
    &["Yoga", "Running apparel"],
    &["Camping", "Brewing gear", "Snacks"],
    &["Baking", "Snacks"],
    &["Books", "Stationery"],
];

/// The demo categories bought together with `category` (itself included): those sharing a
/// shopping style with it, so a person (or a test) can tell whether "also bought" answers
/// make sense.
pub fn related_categories(category: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = STYLES
        .iter()
        .filter(|style| style.contains(&category))
        .flat_map(|style| style.iter().copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Category, whether its items are bought again and again, and item name parts.
const CATALOG: &[(&str, bool, &[&str], &[&str])] = &[
    (
        "Coffee",
        true,
        &[
            "Ethiopia", "Colombia", "Sumatra", "Kenya", "House", "Espresso",
        ],
        &["beans 250g", "beans 1kg", "decaf 250g"],
    ),
    (
        "Tea",
        true,
        &["Assam", "Darjeeling", "Sencha", "Earl Grey", "Rooibos"],
        &["loose 100g", "bags x40"],
    ),
    (
        "Brewing gear",
        false,
        &["Pour-over", "French press", "Burr", "Gooseneck", "Moka"],
        &["dripper", "kettle", "grinder", "scale"],
    ),
    (
        "Mugs",
        false,
        &["Stoneware", "Enamel", "Glass", "Travel"],
        &["mug", "cup set"],
    ),
    (
        "Snacks",
        true,
        &["Almond", "Oat", "Dark chocolate", "Sea salt"],
        &["bar", "cookies", "mix"],
    ),
    (
        "Baking",
        false,
        &["Sourdough", "Cast iron", "Silicone", "Proofing"],
        &["starter kit", "loaf pan", "mat", "basket"],
    ),
    (
        "Running shoes",
        false,
        &["Trail", "Road", "Racing", "Recovery"],
        &["shoe", "shoe wide fit"],
    ),
    (
        "Running apparel",
        false,
        &["Merino", "Reflective", "Lightweight"],
        &["tee", "tights", "jacket", "socks"],
    ),
    (
        "Yoga",
        false,
        &["Cork", "Travel", "Bamboo"],
        &["mat", "block", "strap"],
    ),
    (
        "Camping",
        false,
        &["Ultralight", "Insulated", "Folding"],
        &["stove", "mug", "chair", "lantern"],
    ),
    (
        "Books",
        false,
        &["Field guide", "Cookbook", "Novel", "Atlas"],
        &["vol. 1", "vol. 2", "paperback"],
    ),
    (
        "Stationery",
        true,
        &["Dot grid", "Fountain", "Recycled"],
        &["notebook", "pen", "ink"],
    ),
];

/// What the demo created, with ids worth querying.
#[derive(Debug, Clone)]
pub struct DemoShop {
    /// Catalog size.
    pub items: usize,
    /// Customers with purchases.
    pub customers: usize,
    /// Purchase rows written.
    pub purchases: usize,
    /// A popular item to ask "also bought" about.
    pub example_item: String,
    /// A second item in a related category, for a basket.
    pub example_basket: Vec<String>,
    /// A steady customer to recommend for.
    pub example_customer: String,
    /// A valuable customer who stopped buying.
    pub lapsed_customer: String,
    /// Offers written, by id.
    pub offers: Vec<String>,
}

/// The demo's offers, one of each kind: a coffee discount, a brewing bundle, double points
/// for the best tiers, new arrivals, a win-back offer for valuable customers at risk, and
/// a coffee restock reminder. Every one is a valid document for the offer engine.
pub fn offers(items: &[CatalogItem], now: DateTime<Utc>) -> Result<Vec<OfferRecord>> {
    let in_cat = |name: &str| -> Vec<String> {
        items
            .iter()
            .filter(|it| it.category.as_ref().is_some_and(|c| c.as_str() == name))
            .map(|it| it.item_id.as_str().to_owned())
            .collect()
    };
    let gear = in_cat("Brewing gear");
    // The newest catalog entries are the "new arrivals".
    let mut newest: Vec<&CatalogItem> = items.iter().collect();
    newest.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.item_id.cmp(&b.item_id))
    });
    let arrivals: Vec<String> = newest
        .iter()
        .take(4)
        .map(|it| it.item_id.as_str().to_owned())
        .collect();
    let docs = [
        (
            "coffee-10",
            json!({"kind": "discount", "title": "10% off coffee beans", "categories": ["Coffee"],
                   "value": 4.0, "cost": 0.05,
                   "eligibility": {"channels": ["email", "web", "app"]},
                   "caps": {"max_per_customer": 3, "cooldown_days": 7}}),
        ),
        (
            "brew-bundle",
            json!({"kind": "bundle", "title": "Pour-over starter bundle",
                   "items": gear.iter().take(2).collect::<Vec<_>>(),
                   "value": 9.0, "cost": 0.05, "caps": {"cooldown_days": 14}}),
        ),
        (
            "double-points",
            json!({"kind": "points_multiplier", "title": "Double points this month",
                   "value": 1.5, "cost": 0.02,
                   "eligibility": {"tiers": ["gold", "silver"], "channels": ["web", "app"]},
                   "caps": {"cooldown_days": 30}}),
        ),
        (
            "new-in",
            json!({"kind": "new_arrival", "title": "Just in", "items": arrivals,
                   "value": 3.0, "cost": 0.05, "caps": {"cooldown_days": 14}}),
        ),
        (
            "win-back",
            json!({"kind": "retention", "title": "We miss you: 25% off your next order",
                   "value": 6.0, "cost": 0.5,
                   "eligibility": {"tiers": ["gold", "silver"], "churn_risk": {"min": 0.5}},
                   "caps": {"max_per_customer": 2, "cooldown_days": 30}}),
        ),
        (
            "coffee-restock",
            json!({"kind": "replenishment", "title": "Time for fresh beans?",
                   "categories": ["Coffee", "Tea"], "value": 3.0, "cost": 0.02,
                   "caps": {"cooldown_days": 10}}),
        ),
    ];
    docs.into_iter()
        .map(|(id, document)| {
            Ok(OfferRecord {
                offer_id: OfferId::parse(id).step("demo offer id")?,
                status: OfferStatus::Active,
                document,
                updated_at: affinity_store::normalize_time(now),
            })
        })
        .collect()
}

/// Builds the catalog: one entry per (category, prefix, suffix), prices by category.
pub fn catalog(now: DateTime<Utc>) -> Result<Vec<CatalogItem>> {
    let mut out = Vec::new();
    for (c, (cat, repurchasable, prefixes, suffixes)) in CATALOG.iter().enumerate() {
        for (p, prefix) in prefixes.iter().enumerate() {
            for (s, suffix) in suffixes.iter().enumerate() {
                let n = out.len();
                out.push(CatalogItem {
                    item_id: ItemId::parse(format!("sku-{c:02}{p}{s}")).step("demo item id")?,
                    title: format!("{prefix} {suffix}"),
                    category: Some(Category::parse(*cat).step("demo category")?),
                    price_minor: 400 + ((c * 997 + p * 131 + s * 59) % 60) as i64 * 100,
                    currency: None,
                    in_stock: n % 17 != 5,
                    created_at: now - Duration::days(400 - (n as i64 % 300)),
                    repurchasable: *repurchasable,
                    attributes: None,
                });
            }
        }
    }
    Ok(out)
}

/// Writes the catalog and seeded purchase histories for `customers` shoppers.
pub async fn populate(
    store: &dyn RecordStore,
    tenant: &TenantId,
    customers: usize,
    seed: u64,
    now: DateTime<Utc>,
) -> Result<DemoShop> {
    let items = catalog(now)?;
    store
        .upsert_items(tenant, &items)
        .await
        .step("write demo catalog")?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let by_cat = |name: &str| -> Vec<usize> {
        items
            .iter()
            .enumerate()
            .filter(|(_, it)| it.category.as_ref().is_some_and(|c| c.as_str() == name))
            .map(|(i, _)| i)
            .collect()
    };
    let mut rows = Vec::new();
    let mut written = 0usize;
    let mut lapsed_customer = String::new();
    for c in 0..customers {
        let style = STYLES[c % STYLES.len()];
        // Roughly one customer in twelve was valuable and has not bought for half a year.
        let lapsed = c % 12 == 5;
        let orders = if lapsed {
            14
        } else {
            1 + (8.0 * rng.random::<f64>().powi(2)) as usize
        };
        let customer = CustomerId::parse(format!("cust-{c:05}")).step("demo customer id")?;
        if lapsed && lapsed_customer.is_empty() {
            lapsed_customer = customer.as_str().to_owned();
        }
        for o in 0..orders {
            let days_ago = if lapsed {
                200 + rng.random_range(0..160)
            } else {
                rng.random_range(0..360)
            };
            let at = now - Duration::days(days_ago) - Duration::minutes(rng.random_range(0..1440));
            let lines = 1 + rng.random_range(0..3usize);
            for line in 0..lines {
                let cat = if rng.random::<f64>() < 0.85 {
                    style[rng.random_range(0..style.len())]
                } else {
                    CATALOG[rng.random_range(0..CATALOG.len())].0
                };
                let pool = by_cat(cat);
                // Power law inside a category: the first items are the bestsellers.
                let pick = ((rng.random::<f64>().powi(3)) * pool.len() as f64) as usize;
                let item = &items[pool[pick.min(pool.len() - 1)]];
                let quantity = if item.repurchasable {
                    1 + rng.random_range(0..3u32)
                } else {
                    1
                };
                rows.push(Purchase {
                    order_id: OrderId::parse(format!("ord-{c:05}-{o:03}")).step("demo order id")?,
                    line: line as u32 + 1,
                    customer_id: customer.clone(),
                    item_id: item.item_id.clone(),
                    quantity: NonZeroU32::new(quantity).unwrap_or(NonZeroU32::MIN),
                    unit_price_minor: item.price_minor * if lapsed { 3 } else { 1 },
                    currency: None,
                    purchased_at: at,
                });
            }
        }
        if rows.len() >= 2000 {
            store
                .put_purchases(tenant, &rows)
                .await
                .step("write demo purchases")?;
            written += rows.len();
            rows.clear();
        }
    }
    if !rows.is_empty() {
        store
            .put_purchases(tenant, &rows)
            .await
            .step("write demo purchases")?;
        written += rows.len();
    }
    let offers = offers(&items, now)?;
    store
        .upsert_offers(tenant, &offers)
        .await
        .step("write demo offers")?;
    let coffee = by_cat("Coffee");
    let gear = by_cat("Brewing gear");
    Ok(DemoShop {
        offers: offers
            .iter()
            .map(|o| o.offer_id.as_str().to_owned())
            .collect(),
        items: items.len(),
        customers,
        purchases: written,
        example_item: items[coffee[0]].item_id.as_str().to_owned(),
        example_basket: vec![
            items[coffee[0]].item_id.as_str().to_owned(),
            items[gear[0]].item_id.as_str().to_owned(),
        ],
        example_customer: "cust-00000".into(),
        lapsed_customer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn related_categories_follow_the_shopping_styles() {
        assert_eq!(
            related_categories("Coffee"),
            ["Brewing gear", "Coffee", "Mugs"]
        );
        assert!(related_categories("Mugs").contains(&"Tea"));
        assert!(!related_categories("Coffee").contains(&"Books"));
        assert!(related_categories("Unknown").is_empty());
    }
    use affinity_model::model::TrainConfig;
    use affinity_store::Stores;

    #[tokio::test]
    async fn demo_shop_trains_and_related_categories_come_back() {
        let stores = Stores::memory().unwrap();
        let tenant = TenantId::default();
        let now = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let shop = populate(stores.records.as_ref(), &tenant, 700, 7, now)
            .await
            .unwrap();
        assert!(shop.purchases > 1000);
        let model = crate::training::train_tenant(
            stores.records.as_ref(),
            &tenant,
            &TrainConfig::default(),
            "demo",
            &|_| {},
        )
        .await
        .unwrap();
        let anchor = model.item_index(&shop.example_item).unwrap();
        let res = model.similar(anchor, 5, &|_| true);
        assert_eq!(res.len(), 5);
        let related = ["Coffee", "Brewing gear", "Mugs"];
        let hits = res
            .iter()
            .filter(|s| {
                model.item_category[s.item as usize]
                    .is_some_and(|c| related.contains(&model.categories[c as usize].as_str()))
            })
            .count();
        assert!(
            hits >= 4,
            "{hits} of 5 similar items in coffee-related categories"
        );
    }
}
