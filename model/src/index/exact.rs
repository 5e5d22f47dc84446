//! Exact search: score every item. The oracle the approximate index is tested against, and the
//! right index up to roughly 100k items (about a millisecond per query there).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;

use super::{Hit, ItemVectors, VectorIndex, dot, into_hits};
use crate::topk::TopK;

/// Queries per matrix-multiply block in batch search: enough rows for the SIMD kernel to run at
/// full speed while the score block (`QUERY_BLOCK x ITEM_BLOCK`) stays in L2.
const QUERY_BLOCK: usize = 64;
/// Items per matrix-multiply block in batch search.
const ITEM_BLOCK: usize = 2048;

/// Exact top-k by scanning all items; shares the model's vectors (no copy).
#[derive(Debug, Clone)]
pub struct ExactIndex {
    vectors: ItemVectors,
    max_norm: f32,
}

impl ExactIndex {
    /// Indexes `vectors` (only a norm scan: there is nothing to build).
    pub fn new(vectors: ItemVectors) -> Self {
        let max_norm = vectors.max_norm();
        Self { vectors, max_norm }
    }

    /// The vectors searched, e.g. to hand them to another index without a copy.
    pub fn vectors(&self) -> &ItemVectors {
        &self.vectors
    }

    /// One blocked pass for a few queries: matrix multiply to find candidates, then the same
    /// `dot` as the single-query path to rank them, so the answer equals `search` exactly.
    fn search_block(
        &self,
        items: &ArrayView2<'_, f32>,
        queries: &[f32],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Vec<Hit>> {
        let d = self.vectors.dim();
        let n = self.vectors.len();
        let rows = queries.len() / d;
        let mut states: Vec<Option<Candidates>> = queries
            .chunks_exact(d)
            .map(|q| Candidates::new(q, k, d, self.max_norm))
            .collect();
        // Rows whose error bound cannot be computed (non-finite query) take the plain path.
        if states.iter().any(Option::is_some) {
            let Ok(qv) = ArrayView2::from_shape((rows, d), queries) else {
                return queries
                    .chunks_exact(d)
                    .map(|q| self.search(q, k, filter))
                    .collect();
            };
            let mut scores = Array2::<f32>::zeros((rows, ITEM_BLOCK.min(n)));
            for start in (0..n).step_by(ITEM_BLOCK) {
                let end = (start + ITEM_BLOCK).min(n);
                let block = items.slice(s![start..end, ..]);
                let mut out = scores.slice_mut(s![.., 0..end - start]);
                general_mat_mul(1.0, &qv, &block.t(), 0.0, &mut out);
                for (row, state) in out.rows().into_iter().zip(states.iter_mut()) {
                    if let Some(state) = state {
                        // Rows of a standard-layout array are contiguous.
                        match row.as_slice() {
                            Some(row) => state.absorb(row, start as u32, filter),
                            None => row.iter().enumerate().for_each(|(j, &s)| {
                                state.absorb_one(s, (start + j) as u32, filter)
                            }),
                        }
                    }
                }
            }
        }
        queries
            .chunks_exact(d)
            .zip(states)
            .map(|(q, state)| match state {
                Some(state) => state.finish(q, &self.vectors),
                None => self.search(q, k, filter),
            })
            .collect()
    }
}

impl VectorIndex for ExactIndex {
    fn len(&self) -> usize {
        self.vectors.len()
    }

    fn dim(&self) -> usize {
        self.vectors.dim()
    }

    fn search(&self, query: &[f32], k: usize, filter: &(dyn Fn(u32) -> bool + Sync)) -> Vec<Hit> {
        let d = self.vectors.dim();
        assert_eq!(
            query.len(),
            d,
            "query dimension must equal the index dimension"
        );
        let k = k.min(self.vectors.len());
        if k == 0 {
            return Vec::new();
        }
        let mut top = TopK::new(k);
        let mut threshold = f32::NEG_INFINITY;
        for (id, row) in self.vectors.as_slice().chunks_exact(d).enumerate() {
            let score = dot(query, row);
            // Strict `>`: ids ascend, so an equal score loses the tie to the id already kept.
            // The filter runs only for items that would make the cut.
            if score > threshold && filter(id as u32) {
                top.push(id as u32, score);
                threshold = top.threshold();
            }
        }
        into_hits(top)
    }

    fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Vec<Hit>> {
        let d = self.vectors.dim();
        assert!(
            queries.len().is_multiple_of(d),
            "queries must be a row-major matrix with the index dimension"
        );
        let m = queries.len() / d;
        let n = self.vectors.len();
        let k = k.min(n);
        if k == 0 {
            return vec![Vec::new(); m];
        }
        let Ok(items) = ArrayView2::from_shape((n, d), self.vectors.as_slice()) else {
            // Unreachable (ItemVectors checked the shape); degrade to the plain path.
            return queries
                .par_chunks_exact(d)
                .map(|q| self.search(q, k, filter))
                .collect();
        };
        // Enough blocks to keep every core busy, never more rows than the kernel likes.
        let threads = rayon::current_num_threads().max(1);
        let rows_per_block = m.div_ceil(threads).clamp(1, QUERY_BLOCK);
        let blocks: Vec<Vec<Vec<Hit>>> = queries
            .par_chunks(rows_per_block * d)
            .map(|block| self.search_block(&items, block, k, filter))
            .collect();
        blocks.into_iter().flatten().collect()
    }
}

/// Per-query state of the blocked batch search.
///
/// The matrix multiply sums in a different order than [`dot`], so its scores can differ by a
/// few ulps. Both are within `delta = (d + 2) * 2^-23 * |q| * max_norm` of the true value
/// (the classic bound for any summation order, doubled for safety), hence within `2 * delta` of
/// each other. Keeping every item whose multiply score is within `margin = 2 * (2 * delta)` of
/// the running k-th best provably keeps the true top-k under `dot` scoring; the few candidates
/// are then re-scored with `dot` and ranked, which makes the batch equal the single query.
struct Candidates {
    k: usize,
    margin: f32,
    /// Min-heap of the best `k` multiply scores: its top is the running k-th best.
    best: BinaryHeap<Reverse<OrderedScore>>,
    /// Everything not yet provably out: (multiply score, id).
    kept: Vec<(f32, u32)>,
    cut: f32,
    prune_at: usize,
}

impl Candidates {
    /// `None` when the error bound is not finite (non-finite query or overflow).
    fn new(query: &[f32], k: usize, dim: usize, max_norm: f32) -> Option<Self> {
        let q_norm = query
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let delta = (dim as f64 + 2.0) * f64::from(f32::EPSILON) * q_norm * f64::from(max_norm);
        let margin = (4.0 * delta) as f32;
        if !margin.is_finite() {
            return None;
        }
        Some(Self {
            k,
            margin,
            best: BinaryHeap::with_capacity(k + 1),
            kept: Vec::with_capacity(2 * k + 16),
            cut: f32::NEG_INFINITY,
            prune_at: 4 * k + 64,
        })
    }

    #[inline]
    fn absorb(&mut self, scores: &[f32], base: u32, filter: &(dyn Fn(u32) -> bool + Sync)) {
        for (j, &score) in scores.iter().enumerate() {
            // Almost every score fails this test; NaN fails it too.
            if score >= self.cut {
                self.absorb_one(score, base + j as u32, filter);
            }
        }
    }

    #[inline]
    fn absorb_one(&mut self, score: f32, id: u32, filter: &(dyn Fn(u32) -> bool + Sync)) {
        if score.is_nan() || score < self.cut || !filter(id) {
            return;
        }
        self.kept.push((score, id));
        if self.best.len() < self.k {
            self.best.push(Reverse(OrderedScore(score)));
        } else if let Some(mut worst) = self.best.peek_mut()
            && score > worst.0.0
        {
            *worst = Reverse(OrderedScore(score));
        }
        if self.best.len() >= self.k
            && let Some(worst) = self.best.peek()
        {
            self.cut = worst.0.0 - self.margin;
        }
        if self.kept.len() > self.prune_at {
            let cut = self.cut;
            self.kept.retain(|&(s, _)| s >= cut);
            self.prune_at = (2 * self.kept.len()).max(4 * self.k + 64);
        }
    }

    fn finish(self, query: &[f32], vectors: &ItemVectors) -> Vec<Hit> {
        let mut top = TopK::new(self.k);
        for (score, id) in self.kept {
            if score >= self.cut
                && let Some(row) = vectors.row(id)
            {
                top.push(id, dot(query, row));
            }
        }
        into_hits(top)
    }
}

/// f32 with a total order, for the threshold heap (NaN never gets in: see `absorb`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedScore(f32);

impl Eq for OrderedScore {}

impl PartialOrd for OrderedScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata;
    use super::super::{Exclude, allow_all};
    use super::*;

    /// Brute force with a full sort, independent of the heap logic under test.
    fn brute_force(
        data: &[f32],
        d: usize,
        q: &[f32],
        k: usize,
        filter: &dyn Fn(u32) -> bool,
    ) -> Vec<Hit> {
        let mut all: Vec<Hit> = data
            .chunks_exact(d)
            .enumerate()
            .filter(|(id, _)| filter(*id as u32))
            .map(|(id, row)| Hit {
                id: id as u32,
                score: dot(q, row),
            })
            .collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        all.truncate(k);
        all
    }

    #[test]
    fn exact_equals_brute_force_with_and_without_filters() {
        for (n, d, seed) in [(1, 1, 1), (37, 3, 2), (500, 17, 3), (3000, 64, 4)] {
            let data = testdata::uniform(n * d, seed);
            let index = ExactIndex::new(testdata::vectors(data.clone(), d));
            let queries = testdata::uniform(20 * d, seed + 100);
            let excluded = Exclude::new((0..n as u32).filter(|i| i % 3 == 0));
            let odd_and_not_excluded = excluded.and(|id| id % 2 == 1);
            for q in queries.chunks_exact(d) {
                for k in [0, 1, 5, 10, n, n + 7] {
                    assert_eq!(
                        index.search(q, k, &allow_all),
                        brute_force(&data, d, q, k, &allow_all),
                        "n={n} d={d} k={k}"
                    );
                    let filtered = index.search(q, k, &odd_and_not_excluded);
                    assert_eq!(filtered, brute_force(&data, d, q, k, &odd_and_not_excluded));
                    assert!(filtered.iter().all(|h| h.id % 2 == 1 && h.id % 3 != 0));
                }
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        // Rows 0..6 repeat two vectors, so every score is tied with another one.
        let data = vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        let index = ExactIndex::new(testdata::vectors(data.clone(), 2));
        let ids = |hits: Vec<Hit>| hits.into_iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(
            ids(index.search(&[1.0, 0.5], 4, &allow_all)),
            vec![0, 2, 4, 1]
        );
        assert_eq!(
            ids(index.search_batch(&[1.0, 0.5], 4, &allow_all).remove(0)),
            vec![0, 2, 4, 1]
        );
        // A zero query ties everything at 0: the lowest ids win.
        assert_eq!(ids(index.search(&[0.0, 0.0], 3, &allow_all)), vec![0, 1, 2]);
    }

    #[test]
    fn batch_equals_one_at_a_time() {
        for (n, d, m) in [(5000, 64, 150), (2049, 13, 7), (10, 4, 1), (3, 2, 0)] {
            // Low-precision-looking data with many near-ties stresses the error margin.
            let data: Vec<f32> = testdata::uniform(n * d, 7)
                .into_iter()
                .map(|x| (x * 8.0).round() / 8.0)
                .collect();
            let index = ExactIndex::new(testdata::vectors(data, d));
            let queries = testdata::uniform(m * d, 8);
            let excluded = Exclude::new((0..n as u32).step_by(4));
            for k in [1, 10, 100] {
                let filter = excluded.filter();
                let batch = index.search_batch(&queries, k, &filter);
                let single: Vec<Vec<Hit>> = queries
                    .chunks_exact(d)
                    .map(|q| index.search(q, k, &filter))
                    .collect();
                assert_eq!(batch, single, "n={n} d={d} m={m} k={k}");
            }
        }
    }

    #[test]
    fn batch_handles_non_finite_queries_like_single() {
        let d = 8;
        let index = ExactIndex::new(testdata::vectors(testdata::uniform(300 * d, 9), d));
        let mut queries = testdata::uniform(3 * d, 10);
        queries[d] = f32::NAN;
        queries[2 * d] = f32::INFINITY;
        let batch = index.search_batch(&queries, 5, &allow_all);
        let single: Vec<Vec<Hit>> = queries
            .chunks_exact(d)
            .map(|q| index.search(q, 5, &allow_all))
            .collect();
        assert_eq!(batch, single);
        assert!(batch[1].is_empty(), "NaN scores are never returned");
    }

    #[test]
    fn filters_that_pass_few_items_still_fill_k() {
        let d = 16;
        let index = ExactIndex::new(testdata::vectors(testdata::uniform(2000 * d, 11), d));
        let only = |id: u32| id == 1999 || id == 3;
        let q = testdata::uniform(d, 12);
        let hits = index.search(&q, 10, &only);
        assert_eq!(hits.len(), 2);
        assert_eq!(index.search_batch(&q, 10, &only), vec![hits]);
        assert!(index.search(&q, 10, &|_| false).is_empty());
    }

    #[test]
    fn empty_index_returns_nothing() {
        let index = ExactIndex::new(testdata::vectors(Vec::new(), 4));
        assert!(index.is_empty());
        assert!(index.search(&[0.0; 4], 10, &allow_all).is_empty());
        assert_eq!(
            index.search_batch(&[0.0; 8], 10, &allow_all),
            vec![vec![], vec![]]
        );
    }

    #[test]
    #[should_panic(expected = "query dimension")]
    fn wrong_query_dimension_is_a_bug() {
        let index = ExactIndex::new(testdata::vectors(vec![0.0; 8], 4));
        let _ = index.search(&[0.0; 3], 1, &allow_all);
    }
}
