//! The storefront queries on a [`Serving`] model: filters from the catalog snapshot, the
//! model's ranking, fallbacks, and the JSON answer with a reason per item. Shared by the
//! HTTP handlers and the in-process benchmark, so both measure the same work.

use affinity_model::model::{Purchase as ModelPurchase, Reason, Scored};
use affinity_store::{Category, CustomerId, ItemId, Purchase, RecordStore, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::{CatalogView, ItemFacts, NO_CATEGORY};
use crate::error::ApiError;
use crate::loader::Serving;

/// Validated query options shared by every recommendation route.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many items to return (1..=[`crate::settings::MAX_K`]).
    pub k: usize,
    /// Only items of this category.
    pub category: Option<Category>,
    /// Only items the catalog lists as in stock.
    pub in_stock: bool,
    /// Never these items.
    pub exclude: Vec<ItemId>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            k: crate::settings::DEFAULT_K,
            category: None,
            in_stock: true,
            exclude: Vec::new(),
        }
    }
}

/// Why an item is in an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReasonOut {
    /// Customers who bought the anchor also bought this (precomputed neighbours).
    AlsoBought {
        /// The item asked about, or the basket item it is closest to.
        anchor_item: String,
        /// Customers who bought both.
        shared_buyers: u32,
        /// Cosine similarity of the item embeddings.
        similarity: f32,
    },
    /// Close to the anchor in the embedding space.
    SimilarTaste {
        /// The item it is closest to.
        anchor_item: String,
        /// Cosine similarity.
        similarity: f32,
    },
    /// Scored from the customer's purchase history (fold-in).
    ForYou {
        /// The past purchase it is most similar to.
        because_of: Option<String>,
        /// Cosine similarity to that purchase.
        similarity: f32,
    },
    /// Popular overall or in a category (fallback).
    Popular {
        /// The category, when popularity was per category.
        category: Option<String>,
    },
    /// Listed in the catalog after the model was trained; not ranked by the model yet.
    NewInCatalog {
        /// Its category.
        category: Option<String>,
    },
    /// Known to the model but never bought, so nothing ranks it yet (fills short answers).
    NoPurchasesYet {
        /// Its category.
        category: Option<String>,
    },
}

/// One item of an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecommendedItem {
    /// Item id.
    pub item_id: String,
    /// Catalog title, when listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Category, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Ranking score within this answer (higher is better; not comparable across answers).
    pub score: f32,
    /// Structured reason.
    pub reason: ReasonOut,
    /// The reason in words.
    pub explanation: String,
}

/// Why an answer is not the model's personal ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The customer has no purchases on record.
    UnknownCustomer,
    /// The customer has not consented to personalization (their history is not read).
    OptedOut,
    /// None of the customer's purchases is known to the model.
    NoKnownPurchases,
    /// The item (or every basket item) is newer than the model.
    ItemNotInModel,
    /// No model version could be loaded: the popularity kept beside the version answered
    /// (see `degraded`).
    ModelUnavailable,
}

/// The answer of every recommendation route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recommendations {
    /// Id of this answer; send it back with offer events and clicks.
    pub recommendation_id: String,
    /// Model version that produced it.
    pub model_version: String,
    /// When it was computed; purchases and stock up to then are taken into account.
    pub as_of: DateTime<Utc>,
    /// False when a fallback (popularity) answered instead of the personal ranking.
    pub personalized: bool,
    /// Which fallback answered, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Set when an earlier model version answers because the live one could not be loaded:
    /// why, and which version answers (`model_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Requested ids the service does not know (basket only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_items: Vec<String>,
    /// The items, best first.
    pub items: Vec<RecommendedItem>,
}

/// The filter every candidate passes: stock, category, exclusions.
struct Filter<'a> {
    view: &'a CatalogView,
    in_stock: bool,
    category: Option<u32>,
    /// Excluded model indices, sorted.
    exclude: Vec<u32>,
}

impl Filter<'_> {
    fn facts_ok(&self, f: &ItemFacts) -> bool {
        self.view.stock_ok(f, self.in_stock) && self.category.is_none_or(|c| f.category == c)
    }

    fn ok(&self, j: u32) -> bool {
        self.view
            .items
            .get(j as usize)
            .is_some_and(|f| self.facts_ok(f))
            && self.exclude.binary_search(&j).is_err()
    }
}

/// The answer under construction.
struct Draft {
    scored: Vec<Scored>,
    /// Model items nobody bought yet, topping up a short answer.
    unbought: Vec<u32>,
    /// Indices into the catalog's new items, topping up a short answer.
    new: Vec<usize>,
    fallback: Option<Fallback>,
    unknown: Vec<String>,
}

impl Serving {
    fn filter<'a>(&'a self, o: &Options, extra_exclude: &[u32]) -> Result<Filter<'a>, ApiError> {
        let category = match &o.category {
            Some(c) => Some(
                self.catalog
                    .category_index(c.as_str())
                    .ok_or_else(|| ApiError::not_found("category", c.as_str()))?,
            ),
            None => None,
        };
        let mut exclude: Vec<u32> = o
            .exclude
            .iter()
            .filter_map(|id| self.model.item_index(id.as_str()))
            .chain(extra_exclude.iter().copied())
            .collect();
        exclude.sort_unstable();
        exclude.dedup();
        Ok(Filter {
            view: &self.catalog,
            in_stock: o.in_stock,
            category,
            exclude,
        })
    }

    /// "Customers who bought this also bought"; 404 when neither model nor catalog know it.
    pub fn similar(&self, item: &ItemId, o: &Options) -> Result<Recommendations, ApiError> {
        let filter = self.filter(o, &[])?;
        let k = o.k;
        let draft = match self.model.item_index(item.as_str()) {
            Some(i) => Draft {
                scored: self.model.similar(i, k, &|j| filter.ok(j)),
                unbought: Vec::new(),
                new: Vec::new(),
                fallback: None,
                unknown: Vec::new(),
            },
            None => {
                let Some(n) = self
                    .catalog
                    .new_items
                    .iter()
                    .find(|n| &*n.id == item.as_str())
                else {
                    return Err(ApiError::not_found("item", item.as_str()));
                };
                let cat = self
                    .catalog
                    .category_name(n.facts.category)
                    .and_then(|c| self.model.category_index(c));
                let mut scored = Vec::with_capacity(k);
                self.popular(&mut scored, k, cat, &|j| filter.ok(j));
                Draft {
                    scored,
                    unbought: Vec::new(),
                    new: Vec::new(),
                    fallback: Some(Fallback::ItemNotInModel),
                    unknown: Vec::new(),
                }
            }
        };
        Ok(self.finish(draft, o, &filter, &[item.as_str()]))
    }

    /// "Customers who bought these also bought"; ids unknown to the model are reported.
    pub fn basket(&self, items: &[ItemId], o: &Options) -> Result<Recommendations, ApiError> {
        let mut known = Vec::with_capacity(items.len());
        let mut unknown = Vec::new();
        for id in items {
            match self.model.item_index(id.as_str()) {
                Some(i) => known.push(i),
                None => unknown.push(id.as_str().to_owned()),
            }
        }
        let filter = self.filter(o, &known)?;
        let k = o.k;
        let (scored, fallback) = if known.is_empty() {
            let cat = items
                .iter()
                .find_map(|id| {
                    self.catalog
                        .new_items
                        .iter()
                        .find(|n| &*n.id == id.as_str())
                })
                .and_then(|n| self.catalog.category_name(n.facts.category))
                .and_then(|c| self.model.category_index(c));
            let mut scored = Vec::with_capacity(k);
            self.popular(&mut scored, k, cat, &|j| filter.ok(j));
            (scored, Some(Fallback::ItemNotInModel))
        } else {
            (self.model.basket(&known, k, &|j| filter.ok(j)), None)
        };
        let basket_ids: Vec<&str> = items.iter().map(|i| i.as_str()).collect();
        let draft = Draft {
            scored,
            unbought: Vec::new(),
            new: Vec::new(),
            fallback,
            unknown,
        };
        Ok(self.finish(draft, o, &filter, &basket_ids))
    }

    /// Recommendations for a stored customer, as `GET /v1/customers/{id}/recommendations`
    /// answers them: the consent flags and the newest `history_limit` purchases are read
    /// from the store now (no history without personalization consent), then [`Serving::recommend`] folds them in. Shared by the route and
    /// `affinity recommend`, so both give the same answer.
    pub async fn for_customer(
        &self,
        records: &dyn RecordStore,
        tenant: &TenantId,
        customer: &CustomerId,
        o: &Options,
        include_purchased: bool,
        history_limit: usize,
    ) -> Result<Recommendations, ApiError> {
        let personalization = records
            .get_customer(tenant, customer)
            .await?
            .is_none_or(|c| c.consent.personalization);
        let history = if !personalization {
            None
        } else {
            Some(
                records
                    .customer_history(tenant, customer, history_limit)
                    .await?,
            )
        };
        self.recommend(history.as_deref(), o, include_purchased)
    }

    /// Recommendations for a customer from `history` (newest first, read from the store at
    /// request time), by fold-in; `None` history means no personalization consent. Already-bought items are
    /// left out unless `include_purchased`.
    pub fn recommend(
        &self,
        history: Option<&[Purchase]>,
        o: &Options,
        include_purchased: bool,
    ) -> Result<Recommendations, ApiError> {
        let purchases: Vec<ModelPurchase> = history
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                self.model
                    .item_index(p.item_id.as_str())
                    .map(|item| ModelPurchase {
                        item,
                        quantity: p.quantity.get() as f32,
                        at: p.purchased_at.timestamp(),
                    })
            })
            .collect();
        let bought: Vec<u32> = if include_purchased {
            Vec::new()
        } else {
            purchases.iter().map(|p| p.item).collect()
        };
        let filter = self.filter(o, &bought)?;
        let fallback = match history {
            None => Some(Fallback::OptedOut),
            Some([]) => Some(Fallback::UnknownCustomer),
            Some(_) if purchases.is_empty() => Some(Fallback::NoKnownPurchases),
            Some(_) => None,
        };
        let scored = self.model.recommend(&purchases, o.k, &|j| filter.ok(j));
        let bought_ids: Vec<&str> = if include_purchased {
            Vec::new()
        } else {
            history
                .unwrap_or_default()
                .iter()
                .map(|p| p.item_id.as_str())
                .collect()
        };
        let draft = Draft {
            scored,
            unbought: Vec::new(),
            new: Vec::new(),
            fallback,
            unknown: Vec::new(),
        };
        Ok(self.finish(draft, o, &filter, &bought_ids))
    }

    /// Popular items of a model category first, then overall (the model's own fallback).
    fn popular(
        &self,
        out: &mut Vec<Scored>,
        k: usize,
        category: Option<u32>,
        ok: &dyn Fn(u32) -> bool,
    ) {
        let pop = &self.model.popularity;
        for cat in category.map(Some).into_iter().chain([None]) {
            for &j in pop.ranked(cat) {
                if out.len() >= k {
                    return;
                }
                if ok(j) && !out.iter().any(|s| s.item == j) {
                    out.push(Scored {
                        item: j,
                        score: pop.score[j as usize],
                        reason: Reason::Popular { category: cat },
                    });
                }
            }
        }
    }

    /// Tops a short answer up with items nothing ranks (never bought, or newer than the
    /// model), so an answer is only short when fewer items pass the filters; then renders it.
    fn finish(
        &self,
        mut d: Draft,
        o: &Options,
        filter: &Filter<'_>,
        not_these: &[&str],
    ) -> Recommendations {
        // A popularity-only stand-in never personalises: say why popularity answered.
        let fallback = d
            .fallback
            .or((!self.model.is_personal()).then_some(Fallback::ModelUnavailable));
        if d.scored.len() < o.k {
            let pop = &self.model.popularity.score;
            for j in 0..pop.len() as u32 {
                if d.scored.len() + d.unbought.len() >= o.k {
                    break;
                }
                if pop[j as usize] <= 0.0
                    && filter.ok(j)
                    && !not_these.contains(&self.model.items.id(j))
                    && !d.scored.iter().any(|s| s.item == j)
                {
                    d.unbought.push(j);
                }
            }
        }
        let have = |d: &Draft| d.scored.len() + d.unbought.len() + d.new.len();
        if have(&d) < o.k {
            for (p, n) in self.catalog.new_items.iter().enumerate() {
                if have(&d) >= o.k {
                    break;
                }
                let excluded =
                    o.exclude.iter().any(|e| e.as_str() == &*n.id) || not_these.contains(&&*n.id);
                if filter.facts_ok(&n.facts) && !excluded {
                    d.new.push(p);
                }
            }
        }
        let mut items: Vec<RecommendedItem> = d.scored.iter().map(|s| self.render(s)).collect();
        for &j in &d.unbought {
            let category = self.category_of(j);
            items.push(RecommendedItem {
                item_id: self.id(j),
                title: self.title(j).map(str::to_owned),
                explanation: "in the catalog; nobody has bought it yet".into(),
                reason: ReasonOut::NoPurchasesYet {
                    category: category.clone(),
                },
                category,
                score: 0.0,
            });
        }
        for &p in &d.new {
            let n = &self.catalog.new_items[p];
            let category = self
                .catalog
                .category_name(n.facts.category)
                .map(str::to_owned);
            items.push(RecommendedItem {
                item_id: n.id.to_string(),
                title: Some(n.facts.title.to_string()).filter(|t| !t.is_empty()),
                explanation: "new in the catalog; the next model will rank it".into(),
                reason: ReasonOut::NewInCatalog {
                    category: category.clone(),
                },
                category,
                score: 0.0,
            });
        }
        Recommendations {
            recommendation_id: format!("rec_{}", uuid::Uuid::new_v4().simple()),
            model_version: self.version.version.as_str().to_owned(),
            as_of: Utc::now(),
            personalized: fallback.is_none(),
            fallback,
            degraded: self.degraded.clone(),
            unknown_items: d.unknown,
            items,
        }
    }

    fn id(&self, i: u32) -> String {
        self.model.items.id(i).to_owned()
    }

    fn title(&self, i: u32) -> Option<&str> {
        self.catalog
            .items
            .get(i as usize)
            .map(|f| &*f.title)
            .filter(|t| !t.is_empty())
    }

    fn label(&self, i: u32) -> String {
        self.title(i)
            .map_or_else(|| self.model.items.id(i).to_owned(), str::to_owned)
    }

    fn category_of(&self, i: u32) -> Option<String> {
        let facts = &self.catalog.items[i as usize];
        (facts.category != NO_CATEGORY)
            .then(|| self.catalog.category_name(facts.category))
            .flatten()
            .map(str::to_owned)
    }

    fn render(&self, s: &Scored) -> RecommendedItem {
        let category = self.category_of(s.item);
        let (reason, explanation) = match s.reason {
            Reason::AlsoBought {
                anchor,
                shared_buyers,
                similarity,
            } => (
                ReasonOut::AlsoBought {
                    anchor_item: self.id(anchor),
                    shared_buyers,
                    similarity,
                },
                format!(
                    "{shared_buyers} customers who bought {} also bought it",
                    self.label(anchor)
                ),
            ),
            Reason::SimilarTaste { anchor, similarity } => (
                ReasonOut::SimilarTaste {
                    anchor_item: self.id(anchor),
                    similarity,
                },
                format!(
                    "bought by customers with tastes like {}",
                    self.label(anchor)
                ),
            ),
            Reason::ForYou {
                because_of,
                similarity,
            } => (
                ReasonOut::ForYou {
                    because_of: because_of.map(|b| self.id(b)),
                    similarity,
                },
                match because_of {
                    Some(b) => format!("because you bought {}", self.label(b)),
                    None => "matches your purchase history".into(),
                },
            ),
            Reason::Popular { category: c } => {
                let name = c
                    .map(|c| self.catalog.from_model_category(c))
                    .and_then(|c| self.catalog.category_name(c))
                    .map(str::to_owned);
                let text = match &name {
                    Some(n) => format!("popular in {n}"),
                    None => "popular with all customers".into(),
                };
                (ReasonOut::Popular { category: name }, text)
            }
        };
        RecommendedItem {
            item_id: self.id(s.item),
            title: self.title(s.item).map(str::to_owned),
            category,
            score: s.score,
            reason,
            explanation,
        }
    }
}
