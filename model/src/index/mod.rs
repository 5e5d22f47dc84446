//! Maximum-inner-product search over item vectors: "which k items score highest for this
//! customer vector?"
//!
//! Main types: [`ItemVectors`] (the model's item factors, validated once and shared by `Arc`),
//! the [`VectorIndex`] trait, and its two implementations:
//!
//! - [`ExactIndex`]: a scan of every item. The oracle for tests and the right choice up to
//!   roughly 100k items; batches go through a SIMD matrix multiply.
//! - [`HnswIndex`]: HNSW graphs (via `hnsw_rs`, confined to `hnsw/mod.rs`) over norm bands of
//!   the items, each band reduced from inner product to cosine, candidates re-scored exactly;
//!   for catalogs where a scan is too slow. Its module docs say why one graph is not enough.
//!
//! Data flow: item factors -> [`ItemVectors`] -> index -> `search(query, k, filter)` -> [`Hit`]s,
//! best first. Both indexes score with the same dot product ([`dot`]) and break ties by the
//! lower id, so their results can be compared bit for bit, and a batch always equals the same
//! queries asked one at a time.
//!
//! Filters run inside the search: whenever at least `k` items pass the filter, `k` hits come
//! back. A filter must be a pure function of the id (it may be called any number of times, in
//! any order, from several threads).

mod exact;
mod hnsw;

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::topk::TopK;

pub use exact::ExactIndex;
pub use hnsw::{HnswIndex, HnswParams};

/// One search result: the item's row index and its exact inner product with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Item id, i.e. the row of the item matrix.
    pub id: u32,
    /// Exact dot product of query and item vector (the same value from every index).
    pub score: f32,
}

/// Top-k maximum-inner-product search, so the scorer does not care which index it has.
///
/// Results are sorted by descending score, ties broken by lower id; only ids for which `filter`
/// returns true are returned, and `min(k, number of passing items)` hits come back (approximate
/// indexes may miss a true neighbour, but never return fewer hits). Items whose score is NaN or
/// minus infinity are never returned.
pub trait VectorIndex: Send + Sync {
    /// Number of items indexed.
    fn len(&self) -> usize;

    /// True when the index holds no item (every search then returns nothing).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector dimension a query must have.
    fn dim(&self) -> usize;

    /// The best `k` items for one query.
    ///
    /// # Panics
    /// If `query.len() != self.dim()`: queries come from the model's own factors, so a mismatch
    /// is a programming error, like an out-of-bounds index.
    fn search(&self, query: &[f32], k: usize, filter: &(dyn Fn(u32) -> bool + Sync)) -> Vec<Hit>;

    /// The best `k` items for each row of `queries` (row-major, `m x dim`), in parallel; equal
    /// to calling [`VectorIndex::search`] on each row.
    ///
    /// # Panics
    /// If `queries.len()` is not a multiple of `self.dim()`.
    fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Vec<Hit>>;
}

/// The index a model searches with, named: a scan or HNSW graphs. One field on the model,
/// so nothing keeps a second handle on the graphs.
pub enum SearchIndex {
    /// A scan of every item.
    Exact(ExactIndex),
    /// HNSW graphs over norm bands, candidates re-scored exactly.
    Hnsw(HnswIndex),
}

impl SearchIndex {
    /// The graphs, when this is an HNSW index (the artifact stores them).
    pub fn hnsw(&self) -> Option<&HnswIndex> {
        match self {
            SearchIndex::Exact(_) => None,
            SearchIndex::Hnsw(h) => Some(h),
        }
    }

    fn inner(&self) -> &dyn VectorIndex {
        match self {
            SearchIndex::Exact(e) => e,
            SearchIndex::Hnsw(h) => h,
        }
    }
}

impl fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SearchIndex::Exact(e) => f.debug_tuple("Exact").field(&e.len()).finish(),
            SearchIndex::Hnsw(h) => f.debug_tuple("Hnsw").field(h).finish(),
        }
    }
}

impl VectorIndex for SearchIndex {
    fn len(&self) -> usize {
        self.inner().len()
    }

    fn dim(&self) -> usize {
        self.inner().dim()
    }

    fn search(&self, query: &[f32], k: usize, filter: &(dyn Fn(u32) -> bool + Sync)) -> Vec<Hit> {
        self.inner().search(query, k, filter)
    }

    fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Vec<Hit>> {
        self.inner().search_batch(queries, k, filter)
    }
}

/// A filter that lets every item through, for searches without business rules.
pub fn allow_all(_id: u32) -> bool {
    true
}

/// A set of ids to leave out of results (already bought, out of stock), sorted once so each
/// check is a binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclude {
    sorted: Vec<u32>,
}

impl Exclude {
    /// Builds the set from ids in any order, with or without duplicates.
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Self {
        let mut sorted: Vec<u32> = ids.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        Self { sorted }
    }

    /// True when `id` is not excluded.
    pub fn allows(&self, id: u32) -> bool {
        self.sorted.binary_search(&id).is_err()
    }

    /// Number of distinct excluded ids.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// True when nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The set as a search filter.
    pub fn filter(&self) -> impl Fn(u32) -> bool + Sync + '_ {
        move |id| self.allows(id)
    }

    /// The set combined with another rule (e.g. a catalog flag): an id passes when it is not
    /// excluded and `predicate` accepts it.
    pub fn and<'a, P>(&'a self, predicate: P) -> impl Fn(u32) -> bool + Sync + 'a
    where
        P: Fn(u32) -> bool + Sync + 'a,
    {
        move |id| self.allows(id) && predicate(id)
    }
}

/// The model's item vectors, row-major `len x dim`, checked once (shape, finite values, ids fit
/// in `u32`) and shared with the indexes by `Arc`, so no index copies them.
#[derive(Clone)]
pub struct ItemVectors {
    data: Arc<[f32]>,
    dim: usize,
}

impl ItemVectors {
    /// Wraps a row-major matrix of `data.len() / dim` items; refuses ragged, non-finite or
    /// oversized input so no search ever sees it.
    pub fn new(data: Arc<[f32]>, dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(invalid("dim", "must be at least 1".into()));
        }
        if !data.len().is_multiple_of(dim) {
            return Err(invalid(
                "dim",
                format!("{} values do not split into rows of {dim}", data.len()),
            ));
        }
        let n = data.len() / dim;
        if n > u32::MAX as usize {
            return Err(invalid("vectors", format!("{n} items do not fit u32 ids")));
        }
        if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
            return Err(invalid(
                "vectors",
                format!("item {} has a non-finite value", pos / dim),
            ));
        }
        Ok(Self { data, dim })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    /// True when there is no item.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The shared buffer, for handing the same vectors to another owner without a copy.
    pub fn shared(&self) -> &Arc<[f32]> {
        &self.data
    }

    /// One item's vector, or `None` for an unknown id.
    pub fn row(&self, id: u32) -> Option<&[f32]> {
        let start = (id as usize).checked_mul(self.dim)?;
        self.data.get(start..start.checked_add(self.dim)?)
    }

    /// Largest item norm: the scale of the MIPS reduction and of float error bounds.
    pub(crate) fn max_norm(&self) -> f32 {
        self.data
            .chunks_exact(self.dim)
            .map(|row| dot(row, row).sqrt())
            .fold(0.0, f32::max)
    }
}

impl fmt::Debug for ItemVectors {
    // The values themselves are megabytes; the shape is what a log needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemVectors")
            .field("len", &self.len())
            .field("dim", &self.dim)
            .finish()
    }
}

fn invalid(name: &'static str, reason: String) -> Error {
    Error::InvalidParameter { name, reason }
}

/// Dot product written so LLVM vectorises it without fast-math: 16 independent accumulators
/// (four SSE or two AVX registers), reduced in a fixed order. Every score in this module comes
/// from here, which is what makes exact, batched and HNSW results agree bit for bit.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    const LANES: usize = 16;
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_rest.iter().zip(b_rest) {
        tail += x * y;
    }
    // Pairwise reduction: fixed order, so the result is deterministic.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// Hits, best first, from the crate's one top-k collector.
fn into_hits(top: TopK) -> Vec<Hit> {
    top.into_sorted()
        .into_iter()
        .map(|(id, score)| Hit { id, score })
        .collect()
}

/// Shared fixtures: seeded data that looks like implicit-ALS factors.
#[cfg(test)]
pub(crate) mod testdata {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{Hit, ItemVectors};

    fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
        // Box-Muller; rand_distr is not a dependency of the crate.
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn normalized(mut v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
        v
    }

    /// Item and user factors with the structure ALS produces: items grouped around a few
    /// dozen taste directions of Zipf-distributed popularity, item norms following a power law
    /// (popular items have long vectors), about 1% exact duplicates (items bought by the same
    /// customers), users mixing one to three tastes.
    pub(crate) fn als_like(
        n_items: usize,
        n_users: usize,
        dim: usize,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_clusters = 48;
        let centroids: Vec<Vec<f32>> = (0..n_clusters)
            .map(|_| normalized((0..dim).map(|_| gaussian(&mut rng)).collect()))
            .collect();
        let weights: Vec<f64> = (0..n_clusters)
            .map(|c| 1.0 / (c as f64 + 1.0).powf(0.8))
            .collect();
        let total: f64 = weights.iter().sum();
        let pick_cluster = |rng: &mut ChaCha8Rng| {
            let mut u = rng.random::<f64>() * total;
            for (c, w) in weights.iter().enumerate() {
                if u < *w {
                    return c;
                }
                u -= w;
            }
            n_clusters - 1
        };
        let noise = 1.0 / (dim as f32).sqrt();
        let mut items = Vec::with_capacity(n_items * dim);
        for i in 0..n_items {
            if i > 10 && rng.random_bool(0.01) {
                let j = rng.random_range(0..i);
                let copy = items[j * dim..(j + 1) * dim].to_vec();
                items.extend(copy);
                continue;
            }
            let c = &centroids[pick_cluster(&mut rng)];
            let dir = normalized(c.iter().map(|x| x + noise * gaussian(&mut rng)).collect());
            // Pareto(alpha = 2) norms, capped: a long tail of popular items.
            let u: f32 = rng.random_range(1e-6..1.0);
            let norm = (0.2 / u.sqrt()).min(5.0);
            items.extend(dir.iter().map(|x| x * norm));
        }
        let mut users = Vec::with_capacity(n_users * dim);
        for _ in 0..n_users {
            let tastes = rng.random_range(1..=3);
            let mut v = vec![0.0f32; dim];
            for _ in 0..tastes {
                let c = &centroids[pick_cluster(&mut rng)];
                let w: f32 = rng.random_range(0.3..1.0);
                v.iter_mut().zip(c).for_each(|(x, y)| *x += w * y);
            }
            let dir = normalized(
                v.iter()
                    .map(|x| x + 0.5 * noise * gaussian(&mut rng))
                    .collect(),
            );
            let norm = (0.4 * gaussian(&mut rng)).exp();
            users.extend(dir.iter().map(|x| x * norm));
        }
        (items, users)
    }

    /// Rescales every row to a lognormal norm `exp(sigma * N(0, 1))`: a milder spread than
    /// `als_like`'s power law, where most items share a few wide norm bands.
    pub(crate) fn lognormal_norms(
        mut data: Vec<f32>,
        dim: usize,
        sigma: f32,
        seed: u64,
    ) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for row in data.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            let target = (sigma * gaussian(&mut rng)).exp();
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x *= target / norm);
            }
        }
        data
    }

    /// Plain uniform noise, for tests that only need arbitrary numbers.
    pub(crate) fn uniform(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    pub(crate) fn vectors(data: Vec<f32>, dim: usize) -> ItemVectors {
        ItemVectors::new(data.into(), dim).expect("test vectors are valid")
    }

    /// Mean fraction of the exact top-k ids that the approximate result found.
    pub(crate) fn recall(exact: &[Vec<Hit>], approx: &[Vec<Hit>]) -> f64 {
        assert_eq!(exact.len(), approx.len());
        let mut found = 0usize;
        let mut wanted = 0usize;
        for (e, a) in exact.iter().zip(approx) {
            wanted += e.len();
            found += e.iter().filter(|h| a.iter().any(|x| x.id == h.id)).count();
        }
        if wanted == 0 {
            1.0
        } else {
            found as f64 / wanted as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_f64_reference_for_all_tail_lengths() {
        for len in 0..70 {
            let a = testdata::uniform(len, 1);
            let b = testdata::uniform(len, 2);
            let reference: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - reference).abs() < 1e-4, "len {len}");
            assert_eq!(dot(&a, &b), dot(&b, &a), "dot must be symmetric");
        }
    }

    #[test]
    fn item_vectors_refuse_bad_shapes_and_values() {
        assert!(ItemVectors::new(vec![1.0; 6].into(), 0).is_err());
        assert!(ItemVectors::new(vec![1.0; 7].into(), 2).is_err());
        assert!(ItemVectors::new(vec![1.0, f32::NAN].into(), 2).is_err());
        assert!(ItemVectors::new(vec![1.0, f32::INFINITY].into(), 1).is_err());
        let v = ItemVectors::new(vec![1.0, 2.0, 3.0, 4.0].into(), 2).expect("valid");
        assert_eq!((v.len(), v.dim()), (2, 2));
        assert_eq!(v.row(1), Some(&[3.0, 4.0][..]));
        assert_eq!(v.row(2), None);
        assert_eq!(v.row(u32::MAX), None);
        assert!(
            ItemVectors::new(Vec::new().into(), 3)
                .expect("empty ok")
                .is_empty()
        );
    }

    #[test]
    fn exclude_sorts_dedups_and_combines() {
        let ex = Exclude::new([9, 3, 3, 7]);
        assert_eq!(ex.len(), 3);
        assert!(!ex.allows(3) && !ex.allows(7) && !ex.allows(9));
        assert!(ex.allows(4));
        let even_and_not_excluded = ex.and(|id| id % 2 == 0);
        assert!(even_and_not_excluded(4));
        assert!(!even_and_not_excluded(5));
        let f = ex.filter();
        assert!(f(1) && !f(7));
        assert!(allow_all(u32::MAX));
    }

    #[test]
    fn top_k_keeps_best_and_breaks_ties_by_lower_id() {
        let mut top = TopK::new(3);
        for (score, id) in [
            (1.0, 5),
            (2.0, 9),
            (1.0, 2),
            (f32::NAN, 0),
            (2.0, 1),
            (0.5, 3),
        ] {
            top.push(id, score);
        }
        top.push(4, f32::NEG_INFINITY);
        let hits = into_hits(top);
        let ids: Vec<u32> = hits.iter().map(|h| h.id).collect();
        assert_eq!(ids, vec![1, 9, 2]);
    }
}
