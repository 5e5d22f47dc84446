//! The trained model as the service holds it: item embeddings, Gram matrix, neighbour
//! lists, popularity and a vector index, with the three storefront queries (similar
//! items, basket, recommendations by fold-in) and their reasons.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::als::{self, AlsParams};
use crate::eval::{self, Metrics, Split};
use crate::ids::IdMap;
use crate::index::{ExactIndex, HnswIndex, HnswParams, ItemVectors, SearchIndex, VectorIndex};
use crate::interactions::Weighting;
use crate::linalg::{dot, norm};
use crate::neighbours::Neighbours;
use crate::popularity::Popularity;
use crate::{Error, Result};

pub use crate::train::{Candidate, Trainer};

/// Which vector index serves customer recommendations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IndexChoice {
    /// Scan every item: exact, and fast enough for catalogs up to ~100k items.
    Exact,
    /// HNSW graphs over the item vectors, for larger catalogs (fields left out of a
    /// configuration take [`HnswParams::default`]).
    Hnsw(HnswParams),
    /// Exact up to `hnsw_above` items, HNSW with default settings beyond.
    Auto {
        /// Catalog size from which a graph is built.
        hnsw_above: usize,
    },
}

impl Default for IndexChoice {
    fn default() -> Self {
        IndexChoice::Auto {
            hnsw_above: 150_000,
        }
    }
}

/// Everything that shapes a model; recorded in its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// ALS parameters.
    pub als: AlsParams,
    /// Purchase weighting (time decay).
    pub weighting: Weighting,
    /// Neighbours precomputed per item.
    pub neighbours: usize,
    /// Index for recommendations.
    pub index: IndexChoice,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            als: AlsParams::default(),
            weighting: Weighting::default(),
            neighbours: 30,
            index: IndexChoice::default(),
        }
    }
}

/// Sizes of the data a model was trained on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataCounts {
    /// Customers with at least one purchase.
    pub customers: usize,
    /// Items in the model (bought or in the catalog).
    pub items: usize,
    /// Purchase events read.
    pub purchases: usize,
    /// Distinct (customer, item) pairs.
    pub pairs: usize,
}

/// What a model says about itself; stored first in every artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of the byte layout.
    pub format_version: u32,
    /// The model's version id, assigned by whoever trains it.
    pub model_version: String,
    /// Unix seconds when training finished.
    pub trained_at: i64,
    /// Newest purchase included, unix seconds.
    pub data_watermark: i64,
    /// Training parameters.
    pub config: TrainConfig,
    /// Data sizes.
    pub counts: DataCounts,
    /// Offline metrics by name (e.g. `recall_at_10`).
    pub metrics: BTreeMap<String, f64>,
}

/// Why an item was returned; the service turns item indices into ids.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// A precomputed neighbour of `anchor`.
    AlsoBought {
        /// The item asked about (or the basket item it is closest to).
        anchor: u32,
        /// Customers who bought both.
        shared_buyers: u32,
        /// Cosine similarity of the embeddings.
        similarity: f32,
    },
    /// Close to `anchor` in embedding space, beyond the precomputed list.
    SimilarTaste {
        /// The item (or purchase) it is closest to.
        anchor: u32,
        /// Cosine similarity of the embeddings.
        similarity: f32,
    },
    /// Scored from the customer's folded-in vector.
    ForYou {
        /// The past purchase it is most similar to, if any.
        because_of: Option<u32>,
        /// Cosine similarity to that purchase.
        similarity: f32,
    },
    /// Fallback: popular overall or in a category.
    Popular {
        /// The category index, when the fallback was per category.
        category: Option<u32>,
    },
}

/// One result: item index, score (higher is better) and reason.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Item index.
    pub item: u32,
    /// Ranking score within this answer.
    pub score: f32,
    /// Why it is here.
    pub reason: Reason,
}

/// One past purchase as fold-in sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Purchase {
    /// Item index.
    pub item: u32,
    /// Units bought.
    pub quantity: f32,
    /// Unix seconds.
    pub at: i64,
}

/// A trained, queryable model.
pub struct Model {
    /// Self-description.
    pub manifest: Manifest,
    /// Item ids.
    pub items: IdMap,
    /// Category names, indexed by `item_category`.
    pub categories: Vec<String>,
    /// Category index per item.
    pub item_category: Vec<Option<u32>>,
    /// Item embeddings.
    pub vectors: ItemVectors,
    /// `V^T diag(w) V` of the item embeddings under the negative weights, for fold-in.
    pub gram: Vec<f32>,
    /// Per-item weight of "did not buy" the model was trained with (mean 1).
    pub negative_weights: Vec<f32>,
    /// Precomputed neighbours.
    pub neighbours: Neighbours,
    /// Fallback ranking.
    pub popularity: Popularity,
    /// Embedding norm per item (for cosine reasons).
    pub(crate) item_norms: Vec<f32>,
    /// The search structure.
    pub(crate) index: SearchIndex,
    /// Whether any item has an embedding: false for a popularity-only stand-in, whose
    /// answers must not pretend to be personal.
    pub(crate) personal: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("version", &self.manifest.model_version)
            .field("items", &self.items.len())
            .field("factors", &self.factors())
            .finish()
    }
}

/// Stages reported while training, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    /// ALS iteration `n` of `of` done.
    Iteration {
        /// Done so far.
        n: usize,
        /// Total.
        of: usize,
    },
    /// Neighbour lists being computed.
    Neighbours,
    /// Vector index being built.
    Index,
}

/// A model's parts before their shapes are checked: what training and the artifact decoder
/// produce, and what [`Model::assemble`] puts together.
pub(crate) struct Parts {
    pub manifest: Manifest,
    pub items: IdMap,
    pub categories: Vec<String>,
    pub item_category: Vec<Option<u32>>,
    pub vectors: ItemVectors,
    pub gram: Vec<f32>,
    pub negative_weights: Vec<f32>,
    pub neighbours: Neighbours,
    pub popularity: Popularity,
    /// The graphs, when built or stored; the exact index otherwise.
    pub hnsw: Option<HnswIndex>,
}

impl Model {
    /// Puts the parts together and checks that their shapes agree.
    pub(crate) fn assemble(parts: Parts) -> Result<Self> {
        let Parts {
            manifest,
            items,
            categories,
            item_category,
            vectors,
            gram,
            negative_weights,
            neighbours,
            popularity,
            hnsw,
        } = parts;
        let n = items.len();
        let d = vectors.dim();
        let shape = |what: &str| {
            Err(Error::Artifact(format!(
                "{what} does not match {n} items x {d} factors"
            )))
        };
        if vectors.len() != n {
            return shape("item vectors");
        }
        if gram.len() != d * d {
            return shape("gram matrix");
        }
        if negative_weights.len() != n || negative_weights.iter().any(|w| !w.is_finite()) {
            return shape("negative weights");
        }
        if item_category.len() != n {
            return shape("item categories");
        }
        if neighbours.n_items() != n
            || neighbours
                .ids
                .iter()
                .any(|&j| j != crate::neighbours::NONE && j as usize >= n)
        {
            return shape("neighbour lists");
        }
        if popularity.score.len() != n || popularity.order.iter().any(|&j| j as usize >= n) {
            return shape("popularity");
        }
        if item_category
            .iter()
            .flatten()
            .any(|&c| c as usize >= categories.len())
        {
            return shape("category index");
        }
        if manifest.config.als.factors != d {
            return shape("manifest factors");
        }
        let item_norms: Vec<f32> = vectors.as_slice().chunks(d).map(norm).collect();
        let personal = item_norms.iter().any(|&n| n > 0.0);
        let index = match hnsw {
            Some(h) => SearchIndex::Hnsw(h),
            None => SearchIndex::Exact(ExactIndex::new(vectors.clone())),
        };
        Ok(Self {
            manifest,
            items,
            categories,
            item_category,
            vectors,
            gram,
            negative_weights,
            neighbours,
            popularity,
            item_norms,
            index,
            personal,
        })
    }

    /// A stand-in that answers from popularity alone, for when no trained model can be
    /// loaded: `ranked` is (item id, popularity score, category) most popular first. Every
    /// answer carries a `Popular` reason; `is_personal` is false.
    pub fn popularity_only(
        model_version: &str,
        ranked: &[(String, f32, Option<String>)],
    ) -> Result<Self> {
        let items = IdMap::from_ids(ranked.iter().map(|(id, _, _)| id.clone()).collect())?;
        let mut categories: Vec<String> = Vec::new();
        let item_category: Vec<Option<u32>> = ranked
            .iter()
            .map(|(_, _, c)| {
                c.as_ref()
                    .map(|c| match categories.iter().position(|x| x == c) {
                        Some(i) => i as u32,
                        None => {
                            categories.push(c.clone());
                            (categories.len() - 1) as u32
                        }
                    })
            })
            .collect();
        let n = ranked.len();
        let score: Vec<f32> = ranked
            .iter()
            .map(|(_, s, _)| s.max(f32::MIN_POSITIVE))
            .collect();
        let popularity = Popularity::from_order(
            score,
            (0..n as u32).collect(),
            &item_category,
            categories.len(),
        );
        let mut config = TrainConfig::default();
        config.als.factors = 1;
        let manifest = Manifest {
            format_version: crate::artifact::FORMAT_VERSION,
            model_version: model_version.to_owned(),
            trained_at: 0,
            data_watermark: 0,
            config,
            counts: DataCounts {
                items: n,
                ..DataCounts::default()
            },
            metrics: BTreeMap::new(),
        };
        Self::assemble(Parts {
            manifest,
            items,
            categories,
            item_category,
            vectors: ItemVectors::new(vec![0.0; n].into(), 1)?,
            gram: vec![0.0],
            negative_weights: vec![1.0; n],
            neighbours: Neighbours::empty(n),
            popularity,
            hnsw: None,
        })
    }

    /// Which index answers searches: operators and tests need to know whether graphs serve.
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// False for a popularity-only stand-in (`popularity_only`).
    pub fn is_personal(&self) -> bool {
        self.personal
    }

    /// Embedding dimension.
    pub fn factors(&self) -> usize {
        self.vectors.dim()
    }

    /// The model's version id.
    pub fn version(&self) -> &str {
        &self.manifest.model_version
    }

    /// Index of an item id, if the model knows it.
    pub fn item_index(&self, id: &str) -> Option<u32> {
        self.items.get(id)
    }

    /// Category index of a category name.
    pub fn category_index(&self, name: &str) -> Option<u32> {
        self.categories
            .binary_search_by(|c| c.as_str().cmp(name))
            .ok()
            .map(|c| c as u32)
    }

    /// Turns purchases into fold-in weights with the model's own time decay, relative to
    /// the newest of the purchases and the training watermark.
    pub fn weigh(&self, purchases: &[Purchase]) -> Vec<(u32, f32)> {
        let reference = purchases
            .iter()
            .map(|p| p.at)
            .max()
            .unwrap_or(i64::MIN)
            .max(self.manifest.data_watermark);
        let w = &self.manifest.config.weighting;
        purchases
            .iter()
            .filter(|p| {
                (p.item as usize) < self.items.len() && p.quantity > 0.0 && p.quantity.is_finite()
            })
            .map(|p| (p.item, p.quantity * w.decay(reference - p.at)))
            .collect()
    }

    /// A customer vector from purchases made up to now (fold-in).
    pub fn fold_in(&self, weights: &[(u32, f32)]) -> Vec<f32> {
        als::fold_in(
            self.vectors.as_slice(),
            &self.gram,
            &self.negative_weights,
            &self.manifest.config.als,
            weights,
        )
    }

    pub(crate) fn cosine(&self, a: u32, b: u32) -> f32 {
        let (na, nb) = (self.item_norms[a as usize], self.item_norms[b as usize]);
        if na == 0.0 || nb == 0.0 {
            return 0.0;
        }
        dot(self.row(a), self.row(b)) / (na * nb)
    }

    /// "Customers who bought this also bought": neighbour list first, then embedding
    /// search, then popularity in the item's category, then overall, so the answer is
    /// never short while enough items pass `filter`.
    pub fn similar(
        &self,
        item: u32,
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Scored> {
        let mut out: Vec<Scored> = Vec::with_capacity(k);
        if (item as usize) >= self.items.len() {
            return out;
        }
        for nb in self.neighbours.of(item) {
            if out.len() == k {
                return out;
            }
            if filter(nb.id) {
                let similarity = self.cosine(item, nb.id);
                out.push(Scored {
                    item: nb.id,
                    score: similarity,
                    reason: Reason::AlsoBought {
                        anchor: item,
                        shared_buyers: nb.shared_buyers,
                        similarity,
                    },
                });
            }
        }
        if self.item_norms[item as usize] > 0.0 && self.popularity.score[item as usize] > 0.0 {
            let taken: Vec<u32> = out.iter().map(|s| s.item).collect();
            let hits = self.index.search(self.row(item), k + 1, &|j| {
                j != item
                    && filter(j)
                    && !taken.contains(&j)
                    && self.popularity.score[j as usize] > 0.0
            });
            for h in hits.into_iter().take(k - out.len()) {
                let similarity = self.cosine(item, h.id);
                out.push(Scored {
                    item: h.id,
                    score: similarity,
                    reason: Reason::SimilarTaste {
                        anchor: item,
                        similarity,
                    },
                });
            }
        }
        self.fill_popular(&mut out, k, self.item_category[item as usize], &|j| {
            j != item && filter(j)
        });
        out
    }

    /// "Customers who bought these also bought": neighbour lists of the basket summed, then
    /// fold-in of the basket as a session, then popularity.
    pub fn basket(
        &self,
        items: &[u32],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Scored> {
        let basket: Vec<u32> = items
            .iter()
            .copied()
            .filter(|&i| (i as usize) < self.items.len())
            .collect();
        let in_basket = |j: u32| basket.contains(&j);
        let mut acc: HashMap<u32, (f32, u32, u32, f32)> = HashMap::new();
        for &b in &basket {
            for nb in self.neighbours.of(b) {
                if in_basket(nb.id) || !filter(nb.id) {
                    continue;
                }
                let similarity = self.cosine(b, nb.id);
                let e = acc
                    .entry(nb.id)
                    .or_insert((0.0, b, nb.shared_buyers, similarity));
                e.0 += similarity;
                if similarity > e.3 {
                    (e.1, e.2, e.3) = (b, nb.shared_buyers, similarity);
                }
            }
        }
        let mut ranked: Vec<(u32, (f32, u32, u32, f32))> = acc.into_iter().collect();
        ranked.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(a.0.cmp(&b.0)));
        let mut out: Vec<Scored> = ranked
            .into_iter()
            .take(k)
            .map(|(j, (score, anchor, shared_buyers, similarity))| Scored {
                item: j,
                score,
                reason: Reason::AlsoBought {
                    anchor,
                    shared_buyers,
                    similarity,
                },
            })
            .collect();
        if out.len() < k && !basket.is_empty() && self.personal {
            let weights: Vec<(u32, f32)> = basket.iter().map(|&b| (b, 1.0)).collect();
            let x = self.fold_in(&weights);
            let taken: Vec<u32> = out.iter().map(|s| s.item).collect();
            for h in self.index.search(&x, k - out.len(), &|j| {
                !in_basket(j)
                    && filter(j)
                    && !taken.contains(&j)
                    && self.popularity.score[j as usize] > 0.0
            }) {
                let (anchor, similarity) = self.closest(&basket, h.id);
                out.push(Scored {
                    item: h.id,
                    score: h.score,
                    reason: Reason::SimilarTaste {
                        anchor: anchor.unwrap_or(h.id),
                        similarity,
                    },
                });
            }
        }
        let category = basket.first().and_then(|&b| self.item_category[b as usize]);
        self.fill_popular(&mut out, k, category, &|j| !in_basket(j) && filter(j));
        out
    }

    /// Items for a customer from their purchases (fold-in, so purchases since the last
    /// retrain count); popularity when they have none the model knows.
    pub fn recommend(
        &self,
        purchases: &[Purchase],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Scored> {
        let weights = self.weigh(purchases);
        let mut out = Vec::with_capacity(k);
        if !weights.is_empty() && self.personal {
            let x = self.fold_in(&weights);
            let history: Vec<u32> = {
                // Reasons look at the most recent distinct purchases only: bounded work.
                let mut recent: Vec<&Purchase> = purchases.iter().collect();
                recent.sort_by_key(|p| std::cmp::Reverse(p.at));
                let mut h: Vec<u32> = Vec::new();
                for p in recent {
                    if (p.item as usize) < self.items.len() && !h.contains(&p.item) {
                        h.push(p.item);
                        if h.len() == 50 {
                            break;
                        }
                    }
                }
                h
            };
            for hit in self.index.search(&x, k, &|j| {
                filter(j) && self.popularity.score[j as usize] > 0.0
            }) {
                let (because_of, similarity) = self.closest(&history, hit.id);
                out.push(Scored {
                    item: hit.id,
                    score: hit.score,
                    reason: Reason::ForYou {
                        because_of,
                        similarity,
                    },
                });
            }
        }
        self.fill_popular(&mut out, k, None, filter);
        out
    }

    /// The past item most similar to `item`, with its cosine.
    fn closest(&self, history: &[u32], item: u32) -> (Option<u32>, f32) {
        history
            .iter()
            .map(|&h| (h, self.cosine(h, item)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map_or((None, 0.0), |(h, s)| (Some(h), s))
    }

    /// Tops `out` up to `k` with popular items: the category's first, then overall.
    fn fill_popular(
        &self,
        out: &mut Vec<Scored>,
        k: usize,
        category: Option<u32>,
        filter: &dyn Fn(u32) -> bool,
    ) {
        let order = category.map(Some).into_iter().chain([None]);
        for cat in order {
            for &j in self.popularity.ranked(cat) {
                if out.len() >= k {
                    return;
                }
                if filter(j) && !out.iter().any(|s| s.item == j) {
                    out.push(Scored {
                        item: j,
                        score: self.popularity.score[j as usize],
                        reason: Reason::Popular { category: cat },
                    });
                }
            }
        }
    }

    /// Embedding of item `i` (an index the model issued).
    fn row(&self, i: u32) -> &[f32] {
        let d = self.factors();
        &self.vectors.as_slice()[i as usize * d..(i as usize + 1) * d]
    }

    /// Offline metrics of this model on a split, scoring each held-out customer by
    /// fold-in of their training purchases (exactly what serving does).
    pub fn evaluate(&self, split: &Split, k: usize) -> Metrics {
        self.evaluate_at(split, &[k]).pop().unwrap_or_default()
    }

    /// [`Model::evaluate`] at several cut-offs (one [`Metrics`] per entry of `ks`, in order)
    /// for the price of one ranking at the largest: ties break by item index, so the top
    /// `k` of a longer list is exactly the top-`k` list.
    pub fn evaluate_at(&self, split: &Split, ks: &[usize]) -> Vec<Metrics> {
        let Some(&k) = ks.iter().max() else {
            return Vec::new();
        };
        let d = self.factors();
        let cands = eval::trained_items(&split.train);
        // Items the model never saw cannot be scored; they are not candidates.
        let cands: Vec<bool> = cands
            .iter()
            .enumerate()
            .map(|(i, &c)| c && self.items.get(split.train.items.id(i as u32)).is_some())
            .collect();
        let map: Vec<Option<u32>> = split
            .train
            .items
            .ids()
            .iter()
            .map(|id| self.items.get(id))
            .collect();
        let n_split = split.train.n_items();
        let recs = eval::rank_all(&split.train, &split.test, &cands, k, &|rows, out| {
            let hists: Vec<Vec<(u32, f32)>> = rows
                .iter()
                .map(|&u| {
                    let (c, v) = split.train.user_items.row(u);
                    c.iter()
                        .zip(v)
                        .filter_map(|(&i, &w)| map[i as usize].map(|m| (m, w)))
                        .collect()
                })
                .collect();
            let users = als::fold_in_many(
                self.vectors.as_slice(),
                &self.gram,
                &self.negative_weights,
                &self.manifest.config.als,
                &hists,
            );
            let mut own = vec![0f32; rows.len() * self.items.len()];
            eval::dot_block(&users, self.vectors.as_slice(), d, &mut own);
            for r in 0..rows.len() {
                for (i, m) in map.iter().enumerate() {
                    out[r * n_split + i] = m.map_or(f32::NEG_INFINITY, |m| {
                        own[r * self.items.len() + m as usize]
                    });
                }
            }
        });
        let n_cands = cands.iter().filter(|&&c| c).count();
        ks.iter()
            .map(|&k| eval::metrics(&recs, &split.test, k, n_cands))
            .collect()
    }
}

/// Popularity baseline on the same split: what a model must beat to be worth serving.
pub fn popularity_metrics(split: &Split, k: usize) -> Metrics {
    popularity_metrics_at(split, &[k]).pop().unwrap_or_default()
}

/// [`popularity_metrics`] at several cut-offs from one ranking at the largest (see
/// [`Model::evaluate_at`]).
pub fn popularity_metrics_at(split: &Split, ks: &[usize]) -> Vec<Metrics> {
    let Some(&k) = ks.iter().max() else {
        return Vec::new();
    };
    let cands = eval::trained_items(&split.train);
    let n = split.train.n_items();
    let pop: Vec<f32> = (0..n)
        .map(|i| split.train.item_users.row(i).1.iter().sum())
        .collect();
    let recs = eval::rank_all(&split.train, &split.test, &cands, k, &|rows, out| {
        for r in 0..rows.len() {
            out[r * n..(r + 1) * n].copy_from_slice(&pop);
        }
    });
    let n_cands = cands.iter().filter(|&&c| c).count();
    ks.iter()
        .map(|&k| eval::metrics(&recs, &split.test, k, n_cands))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Holdout;
    use crate::interactions::Interactions;
    use crate::testdata::shop;

    fn small_config() -> TrainConfig {
        TrainConfig {
            als: AlsParams {
                factors: 16,
                iterations: 8,
                regularization: 1.0,
                alpha: 5.0,
                ..AlsParams::default()
            },
            neighbours: 10,
            index: IndexChoice::Exact,
            ..TrainConfig::default()
        }
    }

    fn trained() -> (Model, Interactions) {
        let (data, cats) = shop(600, 6, 20, 1);
        let m = Trainer::new(&small_config())
            .version("v1")
            .trained_at(1_800_000_000)
            .train(&data, &cats)
            .unwrap();
        (m, data)
    }

    #[test]
    fn a_final_fit_continued_from_the_candidate_scores_like_one_from_scratch() {
        // The pipeline's shape: the gate's candidate lacks each sampled customer's latest
        // purchases; the served model is fitted on everything. Both final models are scored
        // on an outer holdout that neither saw.
        let (data, cats) = shop(1500, 6, 30, 7);
        let outer = eval::split(&data, eval::Holdout::Latest { fraction: 0.2 });
        let inner = eval::split(&outer.train, eval::Holdout::Latest { fraction: 0.2 });
        let cfg = small_config();
        let candidate = Trainer::new(&cfg)
            .version("c")
            .fit_candidate(&inner.train)
            .unwrap();
        let from_candidate = candidate.model.evaluate(&outer, 10);
        let iterations = std::sync::Mutex::new(Vec::new());
        let progress = |s| {
            if let Stage::Iteration { n, of } = s {
                iterations.lock().unwrap().push((n, of));
            }
        };
        let trainer = Trainer::new(&cfg).version("w").progress(&progress);
        let warm = candidate.refit(&trainer, &outer.train, &cats, 3).unwrap();
        let scratch = Trainer::new(&cfg)
            .version("s")
            .train(&outer.train, &cats)
            .unwrap();
        assert_eq!(*iterations.lock().unwrap(), vec![(1, 3), (2, 3), (3, 3)]);
        let (w, f) = (warm.evaluate(&outer, 10), scratch.evaluate(&outer, 10));
        assert!(w.customers > 100, "{w:?}");
        assert!(
            w.recall >= f.recall - 0.01 && w.ndcg >= f.ndcg - 0.01,
            "warm {w:?} vs scratch {f:?}"
        );
        // The continued fit took in the inner holdout: it is a served model (neighbours) and
        // at least as good as the candidate it started from.
        assert!(
            w.recall >= from_candidate.recall - 0.005,
            "{w:?} vs {from_candidate:?}"
        );
        assert!(warm.similar(0, 5, &|_| true).len() == 5);
    }

    #[test]
    fn a_continued_fit_refuses_factors_of_another_shape() {
        let (data, _) = shop(200, 4, 10, 3);
        let (other, _) = shop(300, 4, 10, 3);
        let cfg = small_config();
        let candidate = Trainer::new(&cfg)
            .version("c")
            .fit_candidate(&other)
            .unwrap();
        let err = candidate
            .refit(&Trainer::new(&cfg), &data, &HashMap::new(), 2)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("do not fit"), "{err}");
    }

    #[test]
    fn similar_items_come_from_the_same_group_with_reasons() {
        let (m, _) = trained();
        let anchor = m.item_index("g2-0").unwrap();
        let res = m.similar(anchor, 5, &|_| true);
        assert_eq!(res.len(), 5);
        let same = res
            .iter()
            .filter(|s| m.items.id(s.item).starts_with("g2-"))
            .count();
        assert!(same >= 4, "{same} of 5 from the anchor's group");
        assert!(res.iter().all(|s| s.item != anchor));
        assert!(
            matches!(res[0].reason, Reason::AlsoBought { anchor: a, shared_buyers, .. } if a == anchor && shared_buyers > 0)
        );
    }

    #[test]
    fn answers_are_never_short_and_respect_filters() {
        let (m, _) = trained();
        let anchor = m.item_index("g0-0").unwrap();
        let cat0 = m.category_index("cat0").unwrap();
        // Only items outside the anchor's category pass: lists and search run dry, popularity fills.
        let filter = |j: u32| m.item_category[j as usize] != Some(cat0);
        let res = m.similar(anchor, 40, &filter);
        assert_eq!(res.len(), 40);
        assert!(res.iter().all(|s| filter(s.item)));
        let mut ids: Vec<u32> = res.iter().map(|s| s.item).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40, "no duplicates");
        // Unknown customer: popularity, flagged as such.
        let cold = m.recommend(&[], 5, &|_| true);
        assert_eq!(cold.len(), 5);
        assert!(
            cold.iter()
                .all(|s| matches!(s.reason, Reason::Popular { category: None }))
        );
        assert_eq!(cold[0].item, m.popularity.order[0]);
    }

    #[test]
    fn basket_and_recommend_follow_the_customer() {
        let (m, _) = trained();
        let basket = [m.item_index("g3-0").unwrap(), m.item_index("g3-1").unwrap()];
        let res = m.basket(&basket, 5, &|_| true);
        assert_eq!(res.len(), 5);
        assert!(res.iter().all(|s| !basket.contains(&s.item)));
        assert!(
            res.iter()
                .filter(|s| m.items.id(s.item).starts_with("g3-"))
                .count()
                >= 4
        );
        let history: Vec<Purchase> = basket
            .iter()
            .map(|&item| Purchase {
                item,
                quantity: 1.0,
                at: 1_700_000_000,
            })
            .collect();
        let recs = m.recommend(&history, 5, &|j| !basket.contains(&j));
        assert_eq!(recs.len(), 5);
        assert!(
            recs.iter()
                .filter(|s| m.items.id(s.item).starts_with("g3-"))
                .count()
                >= 4
        );
        assert!(
            matches!(recs[0].reason, Reason::ForYou { because_of: Some(b), .. } if basket.contains(&b))
        );
    }

    #[test]
    fn fold_in_of_a_training_customer_matches_its_trained_ranking() {
        let (data, cats) = shop(400, 5, 16, 2);
        let mut cfg = small_config();
        cfg.als.iterations = 25;
        cfg.als.cg_steps = 6;
        cfg.weighting = Weighting {
            half_life_days: None,
        };
        let f = als::fit(&data, &cfg.als, &|_| {}).unwrap();
        let m = Trainer::new(&cfg).version("v").train(&data, &cats).unwrap();
        let d = cfg.als.factors;
        for u in [0usize, 7, 123] {
            let (c, v) = data.user_items.row(u);
            let w: Vec<(u32, f32)> = c.iter().copied().zip(v.iter().copied()).collect();
            let x = m.fold_in(&w);
            let t = &f.user[u * d..(u + 1) * d];
            let cos = dot(&x, t) / (norm(&x) * norm(t));
            assert!(cos > 0.999, "customer {u}: cosine {cos}");
        }
    }

    #[test]
    fn model_beats_popularity_offline() {
        let (data, cats) = shop(800, 8, 20, 3);
        let split = eval::split(
            &data,
            Holdout::Random {
                fraction: 0.2,
                seed: 42,
            },
        );
        let m = Trainer::new(&small_config())
            .version("v")
            .train(&split.train, &cats)
            .unwrap();
        let mine = m.evaluate(&split, 10);
        let pop = popularity_metrics(&split, 10);
        assert!(mine.customers > 0 && mine.customers == pop.customers);
        assert!(
            mine.recall > pop.recall * 1.2,
            "model {mine:?} vs popularity {pop:?}"
        );
        assert!(mine.ndcg > pop.ndcg);
    }

    #[test]
    fn metrics_at_several_cutoffs_equal_one_ranking_per_cutoff() {
        let (data, cats) = shop(500, 6, 20, 5);
        let split = eval::split(&data, Holdout::Latest { fraction: 0.2 });
        let m = Trainer::new(&small_config())
            .version("v")
            .train(&split.train, &cats)
            .unwrap();
        let ks = [1, 5, 10, 20, 50];
        let curve = m.evaluate_at(&split, &ks);
        let pop = popularity_metrics_at(&split, &ks);
        assert_eq!(curve.len(), ks.len());
        for (i, &k) in ks.iter().enumerate() {
            assert_eq!(curve[i], m.evaluate(&split, k), "model at k={k}");
            assert_eq!(pop[i], popularity_metrics(&split, k), "popularity at k={k}");
        }
        assert!(curve.windows(2).all(|w| w[0].recall <= w[1].recall));
        assert!(curve[4].recall > curve[0].recall);
        assert!(m.evaluate_at(&split, &[]).is_empty());
    }

    #[test]
    fn evaluation_model_scores_like_the_served_one() {
        let (data, cats) = shop(500, 6, 20, 5);
        let split = eval::split(&data, Holdout::Latest { fraction: 0.2 });
        let full = Trainer::new(&small_config())
            .version("v")
            .train(&split.train, &cats)
            .unwrap();
        let lean = Trainer::new(&small_config())
            .version("v")
            .fit_for_evaluation(&split.train)
            .unwrap();
        assert_eq!(full.evaluate(&split, 10), lean.evaluate(&split, 10));
        assert_eq!(lean.neighbours.of(0).count(), 0);
    }

    #[test]
    fn index_choices_written_before_scan_below_still_parse() {
        let old = r#"{"kind":"hnsw","max_nb_connection":8,"ef_construction":50,"ef_search":32}"#;
        let choice: IndexChoice = serde_json::from_str(old).unwrap();
        assert_eq!(
            choice,
            IndexChoice::Hnsw(HnswParams {
                max_nb_connection: 8,
                ef_construction: 50,
                ef_search: 32,
                ..HnswParams::default()
            })
        );
        let back = serde_json::to_value(choice).unwrap();
        assert_eq!(back["kind"], "hnsw");
        assert_eq!(back["scan_below"], HnswParams::default().scan_below);
    }

    #[test]
    fn hnsw_recall_on_real_factors_is_at_least_95_percent() {
        let (data, cats) = shop(3000, 40, 100, 4);
        let mut cfg = small_config();
        cfg.als.factors = 32;
        let m = Trainer::new(&cfg).version("v").train(&data, &cats).unwrap();
        // Graphs only (no band is small enough to be scanned), default search settings.
        let params = HnswParams {
            scan_below: 0,
            ..HnswParams::default()
        };
        let hnsw = HnswIndex::build(m.vectors.clone(), params).unwrap();
        let exact = ExactIndex::new(m.vectors.clone());
        let (mut found, mut total) = (0usize, 0usize);
        for u in (0..data.n_customers()).step_by(10) {
            let (c, v) = data.user_items.row(u);
            let w: Vec<(u32, f32)> = c.iter().copied().zip(v.iter().copied()).collect();
            let x = m.fold_in(&w);
            let truth: Vec<u32> = exact
                .search(&x, 10, &|_| true)
                .iter()
                .map(|h| h.id)
                .collect();
            let got: Vec<u32> = hnsw
                .search(&x, 10, &|_| true)
                .iter()
                .map(|h| h.id)
                .collect();
            found += got.iter().filter(|g| truth.contains(g)).count();
            total += truth.len();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "HNSW recall@10 {recall}");
    }
}

#[cfg(test)]
mod popularity_only_tests {
    use super::*;

    #[test]
    fn a_popularity_only_model_answers_popular_items_never_personal_ones() {
        let ranked = vec![
            ("mug".to_owned(), 9.0, Some("Mugs".to_owned())),
            ("beans".to_owned(), 7.0, Some("Coffee".to_owned())),
            ("cup".to_owned(), 3.0, Some("Mugs".to_owned())),
            ("tea".to_owned(), 1.0, None),
        ];
        let m = Model::popularity_only("v9", &ranked).unwrap();
        assert!(!m.is_personal());
        assert_eq!(m.version(), "v9");
        let all = |_: u32| true;
        let cup = m.item_index("cup").unwrap();
        let mug = m.item_index("mug").unwrap();
        // Similar items: the item's category first, then overall, never the item itself.
        let sim = m.similar(cup, 3, &all);
        let ids: Vec<&str> = sim.iter().map(|s| m.items.id(s.item)).collect();
        assert_eq!(ids, ["mug", "beans", "tea"]);
        assert!(
            sim.iter()
                .all(|s| matches!(s.reason, Reason::Popular { .. }))
        );
        // A customer with purchases still gets the popular ranking, marked as such.
        let bought = [Purchase {
            item: mug,
            quantity: 1.0,
            at: 0,
        }];
        let rec = m.recommend(&bought, 2, &|j| j != mug);
        let ids: Vec<&str> = rec.iter().map(|s| m.items.id(s.item)).collect();
        assert_eq!(ids, ["beans", "cup"]);
        assert!(
            rec.iter()
                .all(|s| matches!(s.reason, Reason::Popular { category: None }))
        );
        let basket = m.basket(&[mug], 2, &all);
        assert!(
            basket
                .iter()
                .all(|s| matches!(s.reason, Reason::Popular { .. }))
        );
        assert!(basket.iter().all(|s| s.item != mug));
    }
}
