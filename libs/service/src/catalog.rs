//! The catalog as serving sees it: stock flag, category and title per model item, plus
//! catalog items the model does not know yet (added since the last retrain), so filters
//! are array lookups and answers can be topped up with new items.

use std::collections::{BTreeSet, HashMap};

use affinity_model::model::Model;
use affinity_store::CatalogItem;

/// Marks "no category".
pub const NO_CATEGORY: u32 = u32::MAX;

/// Catalog facts about one item.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemFacts {
    /// Listed in the catalog.
    pub listed: bool,
    /// The catalog says it can be bought now.
    pub in_stock: bool,
    /// Index into [`CatalogView::categories`], or [`NO_CATEGORY`].
    pub category: u32,
    /// Display title ("" when unlisted).
    pub title: Box<str>,
}

/// A catalog item the model has no index for.
#[derive(Clone, Debug, PartialEq)]
pub struct NewItem {
    /// Item id.
    pub id: Box<str>,
    /// Its facts.
    pub facts: ItemFacts,
}

/// Catalog snapshot aligned with one model's item indices.
#[derive(Clone, Debug, Default)]
pub struct CatalogView {
    /// True when the tenant has a catalog at all; without one, stock is unknown and the
    /// in-stock filter lets everything through.
    pub has_catalog: bool,
    /// Category names, sorted: the model's and the catalog's.
    pub categories: Vec<String>,
    /// Facts per model item index.
    pub items: Vec<ItemFacts>,
    /// Listed items the model does not know, in catalog order (by id).
    pub new_items: Vec<NewItem>,
    /// Model category index to view category index.
    model_category: Vec<u32>,
}

impl CatalogView {
    /// Aligns `catalog` with `model`'s item indices.
    pub fn build(model: &Model, catalog: &[CatalogItem]) -> Self {
        // Distinct names first: a catalog has a handful of categories over 100k items, and
        // sorting one owned string per item cost tens of milliseconds of every cold start.
        let names: BTreeSet<&str> = model
            .categories
            .iter()
            .map(String::as_str)
            .chain(
                catalog
                    .iter()
                    .filter_map(|c| c.category.as_ref().map(|c| c.as_str())),
            )
            .collect();
        let categories: Vec<String> = names.into_iter().map(str::to_owned).collect();
        let find = |name: &str| {
            categories
                .binary_search_by(|c| c.as_str().cmp(name))
                .map_or(NO_CATEGORY, |i| i as u32)
        };
        let model_category: Vec<u32> = model.categories.iter().map(|c| find(c)).collect();
        let items = (0..model.items.len())
            .map(|i| ItemFacts {
                listed: false,
                in_stock: false,
                category: model.item_category[i]
                    .map_or(NO_CATEGORY, |c| model_category[c as usize]),
                title: "".into(),
            })
            .collect();
        let mut view = Self {
            has_catalog: false,
            categories,
            items,
            new_items: Vec::new(),
            model_category,
        };
        view.apply(model, catalog);
        view
    }

    /// A copy with `written` applied (new categories are added; indices are rebuilt).
    pub fn with_items(&self, model: &Model, written: &[CatalogItem]) -> Self {
        let known = |c: &CatalogItem| {
            c.category
                .as_ref()
                .is_none_or(|c| self.category_index(c.as_str()).is_some())
        };
        if !written.iter().all(known) {
            // A new category shifts indices: rebuild from the facts we hold plus the writes.
            let mut all: HashMap<String, CatalogItem> = HashMap::new();
            for c in self.as_catalog_items(model) {
                all.insert(c.item_id.as_str().to_owned(), c);
            }
            for c in written {
                all.insert(c.item_id.as_str().to_owned(), c.clone());
            }
            let mut list: Vec<CatalogItem> = all.into_values().collect();
            list.sort_by(|a, b| a.item_id.cmp(&b.item_id));
            return Self::build(model, &list);
        }
        let mut view = self.clone();
        view.apply(model, written);
        view
    }

    fn apply(&mut self, model: &Model, catalog: &[CatalogItem]) {
        let mut new_pos: HashMap<Box<str>, usize> = self
            .new_items
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        for c in catalog {
            self.has_catalog = true;
            let facts = ItemFacts {
                listed: true,
                in_stock: c.in_stock,
                category: c
                    .category
                    .as_ref()
                    .and_then(|c| self.category_index(c.as_str()))
                    .unwrap_or(NO_CATEGORY),
                title: c.title.as_str().into(),
            };
            match model.item_index(c.item_id.as_str()) {
                Some(i) => self.items[i as usize] = facts,
                None => {
                    let id: Box<str> = c.item_id.as_str().into();
                    match new_pos.get(&id) {
                        Some(&p) => self.new_items[p].facts = facts,
                        None => {
                            new_pos.insert(id.clone(), self.new_items.len());
                            self.new_items.push(NewItem { id, facts });
                        }
                    }
                }
            }
        }
    }

    /// Reconstructs minimal catalog records from the view (for rebuilds after a write).
    fn as_catalog_items(&self, model: &Model) -> Vec<CatalogItem> {
        let now = chrono::Utc::now();
        let mk = |id: &str, f: &ItemFacts| -> Option<CatalogItem> {
            Some(CatalogItem {
                item_id: affinity_store::ItemId::parse(id).ok()?,
                title: f.title.to_string(),
                category: self
                    .categories
                    .get(f.category as usize)
                    .and_then(|c| affinity_store::Category::parse(c.as_str()).ok()),
                price_minor: 0,
                currency: None,
                in_stock: f.in_stock,
                created_at: now,
                repurchasable: false,
                attributes: None,
            })
        };
        let listed = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, f)| f.listed)
            .filter_map(|(i, f)| mk(model.items.id(i as u32), f));
        let new = self.new_items.iter().filter_map(|n| mk(&n.id, &n.facts));
        listed.chain(new).collect()
    }

    /// Index of a category name.
    pub fn category_index(&self, name: &str) -> Option<u32> {
        self.categories
            .binary_search_by(|c| c.as_str().cmp(name))
            .ok()
            .map(|i| i as u32)
    }

    /// Name of a category index.
    pub fn category_name(&self, c: u32) -> Option<&str> {
        self.categories.get(c as usize).map(String::as_str)
    }

    /// View category of a model category index.
    pub fn from_model_category(&self, c: u32) -> u32 {
        self.model_category
            .get(c as usize)
            .copied()
            .unwrap_or(NO_CATEGORY)
    }

    /// True when the item may be shown under the stock rule.
    pub fn stock_ok(&self, facts: &ItemFacts, in_stock_only: bool) -> bool {
        !in_stock_only || !self.has_catalog || (facts.listed && facts.in_stock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use affinity_model::interactions::{Event, InteractionsBuilder, Weighting};
    use affinity_model::model::{TrainConfig, Trainer};
    use affinity_store::{Category, ItemId};

    fn item(id: &str, cat: &str, in_stock: bool) -> CatalogItem {
        CatalogItem {
            item_id: ItemId::parse(id).unwrap(),
            title: format!("title {id}"),
            category: Some(Category::parse(cat).unwrap()),
            price_minor: 100,
            currency: None,
            in_stock,
            created_at: chrono::Utc::now(),
            repurchasable: false,
            attributes: None,
        }
    }

    #[test]
    fn view_aligns_with_model_and_tracks_new_items() {
        let mut b = InteractionsBuilder::new();
        let mut cats = HashMap::new();
        for c in 0..60usize {
            for n in 0..4usize {
                let (g, j) = (c % 3, (c + n) % 5);
                cats.insert(format!("g{g}-{j}"), format!("cat{g}"));
                b.push(Event {
                    customer: &format!("c{c}"),
                    item: &format!("g{g}-{j}"),
                    quantity: 1.0,
                    at: 1_700_000_000 + (c * 10 + n) as i64,
                })
                .unwrap();
            }
        }
        let data = b.build(&Weighting::default()).unwrap();
        let mut config = TrainConfig::default();
        config.als.factors = 4;
        config.als.iterations = 2;
        config.neighbours = 3;
        let model = Trainer::new(&config)
            .version("t")
            .train(&data, &cats)
            .unwrap();
        let view = CatalogView::build(
            &model,
            &[item("g0-1", "cat0", false), item("new-1", "fresh", true)],
        );
        assert!(view.has_catalog);
        let i = model.item_index("g0-1").unwrap() as usize;
        assert!(view.items[i].listed && !view.items[i].in_stock);
        assert!(!view.stock_ok(&view.items[i], true));
        assert!(view.stock_ok(&view.items[i], false));
        assert_eq!(view.new_items.len(), 1);
        assert!(view.category_index("fresh").is_some());
        // Unlisted items are not in stock when a catalog exists.
        let j = model.item_index("g1-1").unwrap() as usize;
        assert!(!view.stock_ok(&view.items[j], true));
        // A write flips stock and can add a category.
        let v2 = view.with_items(
            &model,
            &[item("g0-1", "cat0", true), item("new-2", "other", true)],
        );
        assert!(v2.items[i].in_stock);
        assert_eq!(v2.new_items.len(), 2);
        assert!(v2.category_index("other").is_some());
        let c = v2.items[i].category;
        assert_eq!(v2.category_name(c), Some("cat0"));
    }
}
