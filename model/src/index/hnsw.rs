//! Approximate maximum-inner-product search with HNSW graphs. The only file that imports
//! `hnsw_rs`.
//!
//! # Method
//! MIPS is not a metric search, so items go through the standard reduction (Bachrach et al.
//! 2014): `x -> [x, sqrt(M^2 - |x|^2)] / M` with `M` the largest norm, the query
//! `q -> [q, 0] / |q|`; cosine order on those unit vectors equals inner-product order. With one
//! `M` for the whole catalog this fails on real factors: ALS item norms follow popularity, the
//! long tail of short vectors lands next to the extra axis, the graph is built mostly among
//! them and cannot navigate to the long vectors that win. On implicit-ALS factors of a
//! 30k-item shop (max norm 23 times the median) one graph gave recall@10 0.65 at ef 64 and
//! needed ef 1024 for 0.95, ten times slower than a scan. So the reduction is applied per norm
//! band ("norm-ranging", Yan et al., NeurIPS 2018): items are split into bands of norm ratio at
//! most 2 (up to 12 bands; the shortest vectors share the last), each band reduced with its own
//! `M`. A query visits the bands from the longest vectors down and skips every band whose best
//! possible score, `|q| * M_band` (Cauchy-Schwarz), cannot beat the k-th hit so far; usually
//! only the first few bands are searched. Bands smaller than [`HnswParams::scan_below`] are
//! scanned, which beats a graph walk there. On the same factors: recall@10 1.0 at ef 16.
//! Every candidate is re-scored with the exact dot product on the original vectors, so scores
//! and tie-breaks match [`ExactIndex`].
//!
//! # hnsw_rs quirks (read in the source of 0.3.5) and how they are handled
//! - `Hnsw::new` calls `std::process::exit` when `max_nb_connection > 256`, and the dump stores
//!   it in a `u8`; `max_nb_connection = 1` makes its level sampler divide by `ln 1 = 0`.
//!   [`HnswParams::validate`] runs before any call into the crate.
//! - Its dump refuses any `max_layer` other than 16 (`NB_LAYER_MAX`), so it is fixed at 16
//!   (a graph uses about `log_M(n)` of them anyway).
//! - Its `DistDot` wants unit vectors and `assert!`s `1 - dot >= 0`, which rounding breaks for
//!   duplicate items (a panic); it also panics on a NaN distance. We use our own distance,
//!   `1 - dot` clamped at 0, on vectors checked finite.
//! - Its filtered search never stops early and can return fewer than `k` hits (even none). We
//!   post-filter an unfiltered beam first, fall back to its filtered search, then to a scan of
//!   the band, so `k` hits come back whenever `k` items pass.
//! - Its dump writes files only, native-endian, about 900 bytes per item with a copy of every
//!   vector; its loader `assert!`s, calls `process::exit` and trusts lengths read from the file
//!   (an unchecked slice over a short buffer), and reads the stored level scale back as a
//!   factor of the default instead of as the scale it wrote. So the byte section is our own
//!   format: compact (4 bytes per link, no vectors: they are recomputed from the model's),
//!   little-endian, checksummed and fully validated. Loading converts it back into hnsw_rs's
//!   files in the temp directory, so hnsw_rs only ever reads files we just wrote from validated
//!   data; the load also runs under `catch_unwind` as a last line of defence. Graphs are not
//!   rebuilt.
//! - It has no accessor for a graph's entry point; the last 13 bytes of its dump hold it.
//! - A reloaded graph borrows its `HnswIo` loader for its whole life. Loads go through
//!   process-wide loaders kept in `static`s (one slot per band, so bands load in parallel),
//!   so graphs are `'static`: no unsafe code, no leak; two models loading at once take turns
//!   per slot.
//! - Parallel insertion makes a graph depend on thread timing: two builds over the same data
//!   can differ slightly (recall does not). Searches on one graph, and on its reload, are
//!   deterministic.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::{fmt, io};

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::{Hnsw, PointId};
use hnsw_rs::hnswio::HnswIo;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{ExactIndex, Hit, ItemVectors, VectorIndex, dot, into_hits};
use crate::error::{Error, Result};
use crate::topk::TopK;

/// Largest norm ratio inside one band: the shortest vector of a band is at least half the
/// longest, so its reduced vectors stay spread out enough for the graph to navigate.
const BAND_RATIO: f64 = 2.0;
/// Bands below `M / BAND_RATIO^(MAX_BANDS - 1)` share the last band: items that short rarely
/// reach a top-k, and every band costs a search when pruning fails.
const MAX_BANDS: usize = 12;
/// Cost of one node visited by hnsw_rs's filtered walk, in items scanned (measured at 64
/// dimensions on 100k ALS factors: a 1%-pass filter cost 92 ms/query walking, 4 ms scanning).
const WALK_COST: usize = 128;
/// Layers hnsw_rs allocates; its dump refuses any other value.
const NB_LAYERS: usize = 16;
/// Above this `k` a graph search costs as much as a scan, and hnsw_rs would allocate `k`-sized
/// heaps: the exact index answers instead.
const MAX_GRAPH_K: usize = 1024;

/// Graph-build and search knobs, checked before hnsw_rs sees them. The defaults give
/// recall@10 of 1.0 against [`ExactIndex`] on implicit-ALS factors of a 100k-item shop (0.997
/// with every band forced onto a graph), building in about 40 CPU-seconds at 64 dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per item and layer (`M`; twice that on the bottom layer): more means better recall,
    /// slower builds and more memory. 4..=128.
    pub max_nb_connection: usize,
    /// Beam width while inserting: more means a better graph and a slower build. 8..=4096.
    pub ef_construction: usize,
    /// Beam width while searching (raised to `k` when `k` is larger): more means better recall
    /// and slower queries. Can be changed after the build. 8..=4096.
    pub ef_search: usize,
    /// Norm bands with fewer items than this are scanned rather than given a graph: hnsw_rs's
    /// walk has a fixed cost that a scan of a few thousand vectors undercuts. 0..=2^24.
    pub scan_below: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            max_nb_connection: 16,
            ef_construction: 100,
            ef_search: 64,
            scan_below: 4096,
        }
    }
}

impl HnswParams {
    /// Refuses values hnsw_rs would exit, panic or misbehave on, before it ever sees them.
    pub fn validate(&self) -> Result<()> {
        check_range("max_nb_connection", self.max_nb_connection, 4, 128)?;
        check_range("ef_construction", self.ef_construction, 8, 4096)?;
        check_range("ef_search", self.ef_search, 8, 4096)?;
        check_range("scan_below", self.scan_below, 0, 1 << 24)
    }
}

fn check_range(name: &'static str, value: usize, min: usize, max: usize) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            reason: format!("{value} is outside {min}..={max}"),
        })
    }
}

/// The distance hnsw_rs sees: `1 - dot` on unit vectors, clamped at 0 because hnsw_rs asserts
/// distances are non-negative and rounding makes `1 - dot(x, x)` slightly negative. Its type
/// name is written into (and checked against) hnsw_rs's dump files.
#[derive(Debug, Default, Clone, Copy)]
struct MipsDist;

impl Distance<f32> for MipsDist {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        // `max` also turns a NaN into 0, so hnsw_rs's NaN panic is unreachable.
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// One norm band: its items, its own reduction scale, and a graph unless it is scanned.
struct Band {
    /// Global item ids, ascending.
    ids: Vec<u32>,
    /// Largest norm in the band: the reduction's `M` and the pruning bound.
    max_norm: f32,
    graph: Option<Hnsw<'static, f32, MipsDist>>,
}

impl Band {
    fn new(ids: Vec<u32>, vectors: &ItemVectors) -> Self {
        let max_norm = ids
            .iter()
            .filter_map(|&id| vectors.row(id))
            .map(|row| dot(row, row).sqrt())
            .fold(0.0, f32::max);
        Self {
            ids,
            max_norm,
            graph: None,
        }
    }

    /// Whether the band gets a graph (a band of zero vectors cannot be reduced: scanned).
    fn wants_graph(&self, params: &HnswParams) -> bool {
        self.ids.len() >= params.scan_below.max(1) && self.max_norm > 0.0
    }

    /// The band's reduced vectors, `dim + 1` columns, rows in `ids` order:
    /// `x -> [x, sqrt(M^2 - |x|^2)] / M`, renormalised. Computed in f64 and deterministic, so a
    /// reload reproduces the built vectors bit for bit.
    fn augmented(&self, vectors: &ItemVectors) -> Vec<f32> {
        let d = vectors.dim();
        let m = f64::from(self.max_norm);
        let mut out = Vec::with_capacity(self.ids.len() * (d + 1));
        let mut row64 = Vec::with_capacity(d + 1);
        for row in self.ids.iter().filter_map(|&id| vectors.row(id)) {
            row64.clear();
            row64.extend(row.iter().map(|&x| f64::from(x) / m));
            let sq: f64 = row64.iter().map(|x| x * x).sum();
            row64.push((1.0 - sq).max(0.0).sqrt());
            let norm = row64.iter().map(|x| x * x).sum::<f64>().sqrt();
            out.extend(row64.iter().map(|x| (x / norm) as f32));
        }
        out
    }
}

/// Splits items into norm bands of ratio at most `BAND_RATIO`, longest vectors first; empty
/// bands are dropped. Zero vectors go to the last band.
fn norm_bands(vectors: &ItemVectors, max_norm: f32) -> Vec<Vec<u32>> {
    let mut bands = vec![Vec::new(); MAX_BANDS];
    let top = f64::from(max_norm);
    for (id, row) in vectors.as_slice().chunks_exact(vectors.dim()).enumerate() {
        let norm = f64::from(dot(row, row).sqrt());
        let band = if norm > 0.0 {
            // Float-to-int `as` saturates: a huge ratio lands in the last band.
            ((top / norm).ln() / BAND_RATIO.ln()).floor().max(0.0) as usize
        } else {
            MAX_BANDS
        };
        bands[band.min(MAX_BANDS - 1)].push(id as u32);
    }
    bands.retain(|b| !b.is_empty());
    bands
}

/// Approximate top-k by inner product over norm-banded HNSW graphs, re-scored exactly; for
/// catalogs where a full scan ([`ExactIndex`]) is too slow.
pub struct HnswIndex {
    /// Longest vectors first.
    bands: Vec<Band>,
    exact: ExactIndex,
    params: HnswParams,
    /// Band of each item, for the sequential scan.
    band_of: Vec<u8>,
    /// `WALK_COST`; a field so tests can force the filtered walk on small graphs.
    walk_cost: usize,
}

impl fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bands: Vec<(usize, f32, bool)> = self
            .bands
            .iter()
            .map(|b| (b.ids.len(), b.max_norm, b.graph.is_some()))
            .collect();
        f.debug_struct("HnswIndex")
            .field("len", &self.exact.len())
            .field("dim", &self.exact.dim())
            .field("params", &self.params)
            .field("bands (items, max norm, graph)", &bands)
            .finish()
    }
}

impl HnswIndex {
    /// Builds the graphs over `vectors`, each with parallel insertion (all cores, via rayon).
    pub fn build(vectors: ItemVectors, params: HnswParams) -> Result<Self> {
        params.validate()?;
        if vectors.is_empty() {
            return Err(Error::Index("cannot build an index over zero items".into()));
        }
        let max_norm = vectors.max_norm();
        if !max_norm.is_finite() {
            return Err(Error::Index("item norms overflow f32".into()));
        }
        let mut bands = Vec::new();
        for ids in norm_bands(&vectors, max_norm) {
            let mut band = Band::new(ids, &vectors);
            if band.wants_graph(&params) {
                band.graph = Some(build_graph(&band, &vectors, &params)?);
            }
            bands.push(band);
        }
        Ok(Self::assemble(bands, vectors, params))
    }

    /// The index over `bands`, which partition the items (checked by the caller).
    fn assemble(bands: Vec<Band>, vectors: ItemVectors, params: HnswParams) -> Self {
        let mut band_of = vec![0u8; vectors.len()];
        for (b, band) in bands.iter().enumerate() {
            for &id in &band.ids {
                if let Some(slot) = band_of.get_mut(id as usize) {
                    *slot = b as u8; // at most MAX_BANDS bands
                }
            }
        }
        Self {
            bands,
            exact: ExactIndex::new(vectors),
            params,
            band_of,
            walk_cost: WALK_COST,
        }
    }

    /// The parameters in force (after a load: those the graphs were built with).
    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Changes the search beam width without rebuilding: the recall/latency dial.
    pub fn set_ef_search(&mut self, ef_search: usize) -> Result<()> {
        let params = HnswParams {
            ef_search,
            ..self.params
        };
        params.validate()?;
        self.params = params;
        Ok(())
    }

    /// The exact index over the same vectors (shared), for fallbacks and recall checks.
    pub fn exact(&self) -> &ExactIndex {
        &self.exact
    }

    /// Serialises the bands and graphs (not the vectors: the artifact stores those once) into a
    /// compact, checksummed byte section for the artifact.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let vectors = self.exact.vectors();
        let n = vectors.len();
        let mut out = Vec::with_capacity(HEADER_LEN + n * (6 + 8 * self.params.max_nb_connection));
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, FORMAT_VERSION);
        put_u32(&mut out, to_u32(n)?);
        put_u32(&mut out, to_u32(vectors.dim())?);
        put_u32(&mut out, to_u32(self.params.max_nb_connection)?);
        put_u32(&mut out, to_u32(self.params.ef_construction)?);
        put_u32(&mut out, to_u32(self.params.ef_search)?);
        put_u32(&mut out, to_u32(self.params.scan_below)?);
        out.extend_from_slice(&vectors_digest(vectors));
        put_u32(&mut out, to_u32(self.bands.len())?);
        for band in &self.bands {
            match &band.graph {
                None => {
                    out.push(BAND_SCANNED);
                    put_u32(&mut out, to_u32(band.ids.len())?);
                    for &id in &band.ids {
                        put_u32(&mut out, id);
                    }
                }
                Some(graph) => {
                    out.push(BAND_GRAPH);
                    put_u32(&mut out, to_u32(band.ids.len())?);
                    encode_graph(graph, n, self.params.max_nb_connection, &mut out)?;
                }
            }
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        Ok(out)
    }

    /// Restores an index written by [`HnswIndex::to_bytes`] over the same `vectors`, without
    /// rebuilding any graph. Truncated, corrupted or mismatched input is an `Err`, never a panic
    /// or an exit.
    pub fn from_bytes(bytes: &[u8], vectors: ItemVectors) -> Result<Self> {
        let decoded = Decoded::decode(bytes, &vectors)?;
        // Bands load in parallel, each through its own loader slot.
        let bands = decoded
            .bands
            .par_iter()
            .enumerate()
            .map(|(slot, section)| {
                let mut band = Band::new(section.ids.clone(), &vectors);
                if let Some(graph) = &section.graph {
                    if band.max_norm == 0.0 {
                        return Err(corrupt("a graph over zero vectors"));
                    }
                    let files = HnswRsFiles {
                        graph,
                        position: &decoded.position,
                        augmented: &band.augmented(&vectors),
                        dim: vectors.dim() + 1,
                        max_nb_connection: decoded.params.max_nb_connection,
                        ef_construction: decoded.params.ef_construction,
                    };
                    let mut loaded = load_through_hnsw_rs(slot, &files)?;
                    if loaded.get_nb_point() != band.ids.len()
                        || usize::from(loaded.get_max_level_observed()) != graph.top_layer
                    {
                        return Err(Error::Index("hnsw_rs reloaded a different graph".into()));
                    }
                    loaded.set_searching_mode(true);
                    band.graph = Some(loaded);
                }
                Ok(band)
            })
            .collect::<Result<Vec<Band>>>()?;
        Ok(Self::assemble(bands, vectors, decoded.params))
    }

    /// One beam through a band's graph, its candidates re-scored exactly and filtered;
    /// `walk` lets hnsw_rs filter while it walks instead.
    fn graph_beam(
        &self,
        graph: &Hnsw<'static, f32, MipsDist>,
        query: &[f32],
        q_aug: &[f32],
        ef: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
        walk: bool,
    ) -> Vec<(f32, u32)> {
        let vectors = self.exact.vectors();
        let beam = if walk {
            let pass = |id: &usize| u32::try_from(*id).is_ok_and(filter);
            graph.search_filter(q_aug, ef, ef, Some(&pass))
        } else {
            graph.search(q_aug, ef, ef)
        };
        beam.iter()
            .filter_map(|n| {
                let id = u32::try_from(n.d_id).ok()?;
                let row = vectors.row(id)?;
                filter(id).then(|| (dot(query, row), id))
            })
            .collect()
    }

    /// Offers every item of one band that can still make the cut. Score first: the filter only
    /// runs for those (`>=`: an equal score may win on a lower id).
    fn scan_band(
        &self,
        band: &Band,
        query: &[f32],
        top: &mut TopK,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) {
        let vectors = self.exact.vectors();
        let mut threshold = top.threshold();
        for &id in &band.ids {
            if let Some(row) = vectors.row(id) {
                let score = dot(query, row);
                if score >= threshold && filter(id) {
                    top.push(id, score);
                    threshold = top.threshold();
                }
            }
        }
    }

    /// Offers, in one sequential pass over all rows, every item of bands `first..` that can
    /// still make the cut: reading rows in storage order is 2.5 times faster than visiting the
    /// bands' scattered rows one band after another.
    fn scan_rows_from(
        &self,
        first: usize,
        bounds: &[f64],
        query: &[f32],
        top: &mut TopK,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) {
        let vectors = self.exact.vectors();
        let mut threshold = top.threshold();
        for (id, row) in vectors.as_slice().chunks_exact(vectors.dim()).enumerate() {
            let band = usize::from(self.band_of[id]);
            if band < first || (top.is_full() && f64::from(threshold) > bounds[band]) {
                continue;
            }
            let score = dot(query, row);
            if score >= threshold && filter(id as u32) {
                top.push(id as u32, score);
                threshold = top.threshold();
            }
        }
    }
}

fn build_graph(
    band: &Band,
    vectors: &ItemVectors,
    params: &HnswParams,
) -> Result<Hnsw<'static, f32, MipsDist>> {
    let augmented = band.augmented(vectors);
    catch_unwind(AssertUnwindSafe(|| {
        let mut graph = Hnsw::new(
            params.max_nb_connection,
            band.ids.len(),
            NB_LAYERS,
            params.ef_construction,
            MipsDist,
        );
        let rows: Vec<(&[f32], usize)> = augmented
            .chunks_exact(vectors.dim() + 1)
            .zip(&band.ids)
            .map(|(row, &id)| (row, id as usize))
            .collect();
        graph.parallel_insert_slice(&rows);
        graph.set_searching_mode(true);
        graph
    }))
    .map_err(|_| Error::Index("hnsw_rs panicked while building a graph".into()))
}

impl VectorIndex for HnswIndex {
    fn len(&self) -> usize {
        self.exact.len()
    }

    fn dim(&self) -> usize {
        self.exact.dim()
    }

    fn search(&self, query: &[f32], k: usize, filter: &(dyn Fn(u32) -> bool + Sync)) -> Vec<Hit> {
        assert_eq!(
            query.len(),
            self.dim(),
            "query dimension must equal the index dimension"
        );
        let k = k.min(self.len());
        if k == 0 {
            return Vec::new();
        }
        // A zero query ties every item at 0 (answer: the lowest allowed ids), a non-finite one
        // has no direction: the graphs cannot answer either, the scan does so cheaply.
        let q_norm = query
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if !(q_norm > 0.0 && q_norm.is_finite()) || k > MAX_GRAPH_K {
            return self.exact.search(query, k, filter);
        }
        let mut q_aug: Vec<f32> = query
            .iter()
            .map(|&x| (f64::from(x) / q_norm) as f32)
            .collect();
        q_aug.push(0.0);
        // Float slack on the Cauchy-Schwarz bound, so rounding never prunes a real hit.
        let slack = 1.0 + 4.0 * (self.dim() as f64 + 2.0) * f64::from(f32::EPSILON);
        let mut top = TopK::new(k);
        let bounds: Vec<f64> = self
            .bands
            .iter()
            .map(|band| q_norm * f64::from(band.max_norm) * slack)
            .collect();
        let pruned =
            |top: &TopK, band: usize| top.is_full() && f64::from(top.threshold()) > bounds[band];
        let ef = self.params.ef_search.max(k);
        // Passing candidates in the last short beam: set once the filter proves selective,
        // after which beams are not worth trying (they would come back short too).
        let mut selective: Option<usize> = None;
        for (b, band) in self.bands.iter().enumerate() {
            if pruned(&top, b) {
                continue;
            }
            if let Some(graph) = &band.graph {
                let want = k.min(band.ids.len());
                let mut hits = Vec::new();
                if selective.is_none() {
                    // Business filters usually exclude few items: post-filtering one
                    // ordinary beam is the cheapest way to k hits.
                    hits = self.graph_beam(graph, query, &q_aug, ef, filter, false);
                    if hits.len() < want {
                        selective = Some(hits.len());
                    }
                }
                if let Some(passed) = selective {
                    // hnsw_rs's filtered walk never stops early: it visits about
                    // `ef / pass rate` nodes, each far dearer than scanning one item. Walk
                    // only when that still beats scanning the band (huge bands).
                    let visits = (ef * ef).checked_div(passed).unwrap_or(usize::MAX);
                    if visits.saturating_mul(self.walk_cost) < band.ids.len() {
                        hits = self.graph_beam(graph, query, &q_aug, ef, filter, true);
                    }
                }
                if hits.len() >= want {
                    for (score, id) in hits {
                        top.push(id, score);
                    }
                    continue;
                }
                // Scan from here on. Reading scattered rows band by band costs 2.5 times a
                // sequential pass: past 40% of the catalog, one pass over all rows is faster.
                let left: usize = (b..self.bands.len())
                    .filter(|&rest| !pruned(&top, rest))
                    .map(|rest| self.bands[rest].ids.len())
                    .sum();
                if 5 * left > 2 * self.len() {
                    self.scan_rows_from(b, &bounds, query, &mut top, filter);
                    break;
                }
            }
            self.scan_band(band, query, &mut top, filter);
        }
        into_hits(top)
    }

    fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        filter: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Vec<Hit>> {
        let d = self.dim();
        assert!(
            queries.len().is_multiple_of(d),
            "queries must be a row-major matrix with the index dimension"
        );
        queries
            .par_chunks_exact(d)
            .map(|q| self.search(q, k, filter))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Our byte format (all little-endian):
//   magic "AFFHNSW\0", version u32, n u32, dim u32, max_nb_connection u32, ef_construction u32,
//   ef_search u32, scan_below u32, sha256 of the vectors (32 bytes), band count u32,
//   per band, longest vectors first:
//     kind u8 (0 scanned, 1 graph), item count u32, then
//     scanned: item ids u32 x count, ascending;
//     graph: entry point id u32, points per layer u32 x 16, then per layer, per point in rank
//       order: id u32, list count u8 (<= 16), and per list (one per layer): length u16,
//       neighbour ids u32 x length;
//   sha256 of everything before it (32 bytes).
// ---------------------------------------------------------------------------------------------

const MAGIC: &[u8; 8] = b"AFFHNSW\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 * 7 + 32 + 4;
const CHECKSUM_LEN: usize = 32;
const BAND_SCANNED: u8 = 0;
const BAND_GRAPH: u8 = 1;
const USIZE: usize = std::mem::size_of::<usize>();

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn to_u32(value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::Index(format!("{value} does not fit the format")))
}

fn id_below(id: usize, n: usize) -> Result<u32> {
    if id < n {
        to_u32(id)
    } else {
        Err(Error::Index(format!("graph refers to item {id} of {n}")))
    }
}

fn corrupt(what: &str) -> Error {
    Error::Index(format!("graph bytes refused: {what}"))
}

/// Binds graphs to the exact vectors they were built on, so they are never paired with the
/// factors of another model.
fn vectors_digest(vectors: &ItemVectors) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((vectors.len() as u64).to_le_bytes());
    hasher.update((vectors.dim() as u64).to_le_bytes());
    if cfg!(target_endian = "little") {
        hasher.update(bytemuck::cast_slice::<f32, u8>(vectors.as_slice()));
    } else {
        for x in vectors.as_slice() {
            hasher.update(x.to_le_bytes());
        }
    }
    hasher.finalize().into()
}

/// Appends one graph: entry point, layer sizes, then every point's links, read through
/// hnsw_rs's public accessors.
fn encode_graph(
    graph: &Hnsw<'static, f32, MipsDist>,
    n: usize,
    max_nb_connection: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let default_scale = 1.0 / (max_nb_connection as f64).ln();
    let points = graph.get_point_indexation();
    if points.get_level_scale() != default_scale {
        // Never happens (we never change it); the format has no room for another scale.
        return Err(Error::Index("graph uses a non-default level scale".into()));
    }
    put_u32(out, entry_point(graph, n)?);
    for layer in 0..NB_LAYERS {
        put_u32(out, to_u32(points.get_layer_nb_point(layer))?);
    }
    for layer in 0..NB_LAYERS {
        for (rank, point) in points.get_layer_iterator(layer).enumerate() {
            if point.get_point_id() != PointId(layer as u8, rank as i32) {
                return Err(Error::Index("graph layers are not in rank order".into()));
            }
            put_u32(out, id_below(point.get_origin_id(), n)?);
            let lists = point.get_neighborhood_id();
            let used = lists
                .iter()
                .rposition(|l| !l.is_empty())
                .map_or(0, |i| i + 1);
            out.push(used as u8);
            for list in &lists[..used] {
                let len = u16::try_from(list.len())
                    .map_err(|_| Error::Index("neighbour list too long".into()))?;
                out.extend_from_slice(&len.to_le_bytes());
                for neighbour in list {
                    put_u32(out, id_below(neighbour.get_origin_id(), n)?);
                }
            }
        }
    }
    Ok(())
}

/// A graph's entry point. hnsw_rs has no accessor for it, but its dump ends with it: dump to a
/// temporary directory and read the last 13 bytes (`usize` id, `u8` layer, `i32` rank).
fn entry_point(graph: &Hnsw<'static, f32, MipsDist>, n: usize) -> Result<u32> {
    let dir = tempfile::tempdir()
        .map_err(|e| Error::Index(format!("cannot create a temporary directory: {e}")))?;
    let dumped = catch_unwind(AssertUnwindSafe(|| graph.file_dump(dir.path(), "graph")))
        .map_err(|_| Error::Index("hnsw_rs panicked while dumping a graph".into()))?
        .map_err(|e| Error::Index(format!("hnsw_rs could not dump a graph: {e}")))?;
    let path = dir.path().join(format!("{dumped}.hnsw.graph"));
    let mut tail = [0u8; USIZE + 1 + 4];
    File::open(&path)
        .and_then(|mut f| {
            f.seek(SeekFrom::End(-(tail.len() as i64)))?;
            f.read_exact(&mut tail)
        })
        .map_err(|e| Error::Index(format!("cannot read back a graph dump: {e}")))?;
    let mut id = [0u8; USIZE];
    id.copy_from_slice(&tail[..USIZE]);
    let id = usize::from_ne_bytes(id);
    let layer = usize::from(tail[USIZE]);
    let rank = i32::from_ne_bytes([
        tail[USIZE + 1],
        tail[USIZE + 2],
        tail[USIZE + 3],
        tail[USIZE + 4],
    ]);
    let points = graph.get_point_indexation();
    let consistent = layer == usize::from(points.get_max_level_observed())
        && usize::try_from(rank).is_ok_and(|rank| {
            points
                .get_layer_iterator(layer)
                .nth(rank)
                .is_some_and(|p| p.get_origin_id() == id)
        });
    if !consistent {
        return Err(Error::Index(
            "hnsw_rs dump ends with an unexpected entry point".into(),
        ));
    }
    id_below(id, n)
}

/// Bounds-checked reader: every read is an `Err` past the end, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < len {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| corrupt("truncated"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn usize(&mut self) -> Result<usize> {
        Ok(self.u32()? as usize)
    }
}

/// A decoded and fully validated byte section: every item in exactly one band, every id in
/// range, links only within a band and within hnsw_rs's own bounds, entry points on their
/// graph's top layer.
struct Decoded {
    params: HnswParams,
    bands: Vec<BandSection>,
    /// For each item id: (layer, rank) in its band's graph (unused for scanned bands).
    position: Vec<(u8, u32)>,
}

struct BandSection {
    /// Ascending.
    ids: Vec<u32>,
    graph: Option<GraphSection>,
}

struct GraphSection {
    entry: u32,
    top_layer: usize,
    layer_sizes: [usize; NB_LAYERS],
    /// Item ids in hnsw_rs's storage order: layer by layer, rank by rank.
    order: Vec<u32>,
    /// `lists[list_start[i]..list_start[i + 1]]` are the list lengths of `order[i]`.
    list_start: Vec<usize>,
    lists: Vec<u16>,
    /// All neighbour ids, list after list.
    neighbours: Vec<u32>,
}

const UNOWNED: u32 = u32::MAX;

impl Decoded {
    fn decode(bytes: &[u8], vectors: &ItemVectors) -> Result<Self> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(corrupt("truncated"));
        }
        let (payload, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Sha256::digest(payload).as_slice() != checksum {
            return Err(corrupt("checksum mismatch (truncated or corrupted)"));
        }
        let mut r = Reader { bytes: payload };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(corrupt("not an HNSW section"));
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(corrupt(&format!(
                "format version {version} is not supported"
            )));
        }
        let n = r.usize()?;
        let dim = r.usize()?;
        if n != vectors.len() || dim != vectors.dim() {
            return Err(corrupt(&format!(
                "index is for {n} x {dim} vectors, the model has {} x {}",
                vectors.len(),
                vectors.dim()
            )));
        }
        let params = HnswParams {
            max_nb_connection: r.usize()?,
            ef_construction: r.usize()?,
            ef_search: r.usize()?,
            scan_below: r.usize()?,
        };
        params
            .validate()
            .map_err(|e| corrupt(&format!("parameters: {e}")))?;
        if r.array::<32>()? != vectors_digest(vectors) {
            return Err(corrupt("index was built on different vectors"));
        }
        let band_count = r.usize()?;
        if band_count == 0 || band_count > MAX_BANDS {
            return Err(corrupt("band count"));
        }
        // Band of each item, to check that bands partition the items and links stay inside.
        let mut owner = vec![UNOWNED; n];
        let mut position = vec![(0u8, 0u32); n];
        let mut bands = Vec::with_capacity(band_count);
        let mut seen = 0usize;
        for band in 0..band_count as u32 {
            let kind = r.u8()?;
            let count = r.usize()?;
            if count == 0 || count > n - seen {
                return Err(corrupt("band size"));
            }
            seen += count;
            let mut claim = |id: u32| -> Result<()> {
                let slot = owner
                    .get_mut(id as usize)
                    .ok_or_else(|| corrupt("item id out of range"))?;
                if *slot != UNOWNED {
                    return Err(corrupt("item stored twice"));
                }
                *slot = band;
                Ok(())
            };
            let section = match kind {
                BAND_SCANNED => {
                    let mut ids = Vec::with_capacity(count);
                    for _ in 0..count {
                        let id = r.u32()?;
                        claim(id)?;
                        ids.push(id);
                    }
                    BandSection { ids, graph: None }
                }
                BAND_GRAPH => {
                    let graph = decode_graph(&mut r, count, &params, &mut claim, &mut position)?;
                    let mut ids = graph.order.clone();
                    ids.sort_unstable();
                    BandSection {
                        ids,
                        graph: Some(graph),
                    }
                }
                _ => return Err(corrupt("unknown band kind")),
            };
            if !section.ids.is_sorted() {
                return Err(corrupt("band ids not ascending"));
            }
            bands.push(section);
        }
        if seen != n {
            return Err(corrupt("bands do not cover every item"));
        }
        if !r.bytes.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        // Links may point forward, so they are checked once every owner is known.
        for (band, section) in bands.iter().enumerate() {
            if let Some(graph) = &section.graph
                && graph
                    .neighbours
                    .iter()
                    .chain([&graph.entry])
                    .any(|&id| owner[id as usize] != band as u32)
            {
                return Err(corrupt("link or entry point leaves its band"));
            }
        }
        Ok(Self {
            params,
            bands,
            position,
        })
    }
}

fn decode_graph(
    r: &mut Reader<'_>,
    count: usize,
    params: &HnswParams,
    claim: &mut dyn FnMut(u32) -> Result<()>,
    position: &mut [(u8, u32)],
) -> Result<GraphSection> {
    let n = position.len();
    let entry = r.u32()?;
    if entry as usize >= n {
        return Err(corrupt("entry point out of range"));
    }
    let mut layer_sizes = [0usize; NB_LAYERS];
    let mut total = 0usize;
    for size in &mut layer_sizes {
        *size = r.usize()?;
        total = total.saturating_add(*size);
    }
    if total != count {
        return Err(corrupt("layer sizes do not add up to the band size"));
    }
    let top_layer = layer_sizes
        .iter()
        .rposition(|&s| s > 0)
        .ok_or_else(|| corrupt("empty graph"))?;
    let max_list = 2 * params.max_nb_connection;
    let mut order = Vec::with_capacity(count);
    let mut list_start = Vec::with_capacity(count + 1);
    let mut lists = Vec::with_capacity(count);
    let mut neighbours = Vec::with_capacity(count * params.max_nb_connection);
    for (layer, &size) in layer_sizes.iter().enumerate() {
        for rank in 0..size {
            let id = r.u32()?;
            claim(id)?;
            position[id as usize] = (layer as u8, rank as u32);
            order.push(id);
            list_start.push(lists.len());
            let used = usize::from(r.u8()?);
            if used > NB_LAYERS {
                return Err(corrupt("too many neighbour lists"));
            }
            for _ in 0..used {
                let len = r.u16()?;
                if usize::from(len) > max_list {
                    return Err(corrupt("neighbour list too long"));
                }
                lists.push(len);
                for _ in 0..len {
                    let neighbour = r.u32()?;
                    if neighbour as usize >= n {
                        return Err(corrupt("neighbour id out of range"));
                    }
                    neighbours.push(neighbour);
                }
            }
        }
    }
    list_start.push(lists.len());
    // `claim` above put the entry point's position in place if it is in this graph; the band
    // check in `decode` refuses it otherwise.
    if usize::from(position[entry as usize].0) != top_layer {
        return Err(corrupt("entry point is not on the top layer"));
    }
    Ok(GraphSection {
        entry,
        top_layer,
        layer_sizes,
        order,
        list_start,
        lists,
        neighbours,
    })
}

// hnsw_rs 0.3.5's private file-format constants (src/hnswio.rs). A change in a later version
// makes the round-trip tests fail rather than load garbage.
const HNSW_MAGIC_DESCR_4: u32 = 0x002a_6779;
const HNSW_MAGIC_LAYER: u32 = 0x000a_676f;
const HNSW_MAGIC_POINT: u32 = 0x000a_678f;
const HNSW_MAGIC_DATA: u32 = 0xa67f_0000;

/// A loader slot. hnsw_rs ties a reloaded graph's lifetime to its `HnswIo`; with the loader
/// in a `static` the graph is `'static`. Each band index has its own slot, so bands load in
/// parallel; file names are unique to the process and slot, and the lock keeps two
/// concurrent loads from sharing them.
struct Loader {
    io: HnswIo,
    graph_path: PathBuf,
    data_path: PathBuf,
    lock: Mutex<()>,
}

static LOADERS: [OnceLock<Loader>; MAX_BANDS] = [const { OnceLock::new() }; MAX_BANDS];

fn loader(slot: usize) -> Result<&'static Loader> {
    let cell = LOADERS.get(slot).ok_or_else(|| corrupt("band count"))?;
    Ok(cell.get_or_init(|| {
        let dir = std::env::temp_dir();
        let basename = format!(
            "affinity-hnsw-{}-{:016x}-{slot}",
            std::process::id(),
            rand::random::<u64>()
        );
        Loader {
            io: HnswIo::new(&dir, &basename),
            graph_path: dir.join(format!("{basename}.hnsw.graph")),
            data_path: dir.join(format!("{basename}.hnsw.data")),
            lock: Mutex::new(()),
        }
    }))
}

/// Deletes the loader's files however the load ends.
struct RemoveOnDrop<'a>(&'a [&'a Path]);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        for path in self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn load_through_hnsw_rs(
    slot: usize,
    files: &HnswRsFiles<'_>,
) -> Result<Hnsw<'static, f32, MipsDist>> {
    let loader = loader(slot)?;
    // A panic during an earlier load leaves nothing behind that matters: ignore poisoning.
    let _guard = loader.lock.lock().unwrap_or_else(PoisonError::into_inner);
    let paths = [loader.graph_path.as_path(), loader.data_path.as_path()];
    let _cleanup = RemoveOnDrop(&paths);
    files
        .write(&loader.graph_path, &loader.data_path)
        .map_err(|e| Error::Index(format!("cannot stage a graph in the temp directory: {e}")))?;
    catch_unwind(AssertUnwindSafe(|| {
        loader.io.load_hnsw_with_dist::<f32, MipsDist>(MipsDist)
    }))
    .map_err(|_| Error::Index("hnsw_rs panicked while loading a graph".into()))?
    .map_err(|e| Error::Index(format!("hnsw_rs could not load a graph: {e}")))
}

/// One graph about to be written in hnsw_rs 0.3.5's dump format.
struct HnswRsFiles<'a> {
    graph: &'a GraphSection,
    position: &'a [(u8, u32)],
    /// The band's reduced vectors, rows in ascending id order.
    augmented: &'a [f32],
    dim: usize,
    max_nb_connection: usize,
    ef_construction: usize,
}

impl HnswRsFiles<'_> {
    /// Writes the description and layers to the `.hnsw.graph` file and the reduced vectors to
    /// the `.hnsw.data` file (native-endian, `usize` lengths, as hnsw_rs reads them). Link
    /// distances are recomputed with the same [`MipsDist`] on the same vectors, so they are
    /// bit-identical to the built graph's and its neighbour order is kept.
    fn write(&self, graph_path: &Path, data_path: &Path) -> io::Result<()> {
        // `create_new`: never follow or reuse a file someone else put there.
        let create = |path: &Path| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
        };
        let mut g = create(graph_path)?;
        let mut d = create(data_path)?;
        let graph = self.graph;
        let dim = self.dim;
        // Ascending ids of the band, to find a row of `augmented` by id.
        let mut ids = graph.order.clone();
        ids.sort_unstable();
        let row = |id: u32| -> io::Result<&[f32]> {
            let slot = ids
                .binary_search(&id)
                .map_err(|_| io::Error::other("link leaves its band"))?;
            self.augmented
                .get(slot * dim..(slot + 1) * dim)
                .ok_or_else(|| io::Error::other("missing vector"))
        };

        g.write_all(&HNSW_MAGIC_DESCR_4.to_ne_bytes())?;
        g.write_all(&[1u8])?; // dump mode: full
        g.write_all(&[self.max_nb_connection as u8])?; // validated <= 128
        // hnsw_rs reads this as a factor of its default level scale (its own dump writes the
        // scale itself); 1.0 reproduces the default every graph here was built with.
        g.write_all(&1.0f64.to_ne_bytes())?;
        g.write_all(&[NB_LAYERS as u8])?;
        g.write_all(&self.ef_construction.to_ne_bytes())?;
        g.write_all(&graph.order.len().to_ne_bytes())?;
        g.write_all(&dim.to_ne_bytes())?;
        for name in [
            std::any::type_name::<MipsDist>(),
            std::any::type_name::<f32>(),
        ] {
            g.write_all(&name.len().to_ne_bytes())?;
            g.write_all(name.as_bytes())?;
        }
        d.write_all(&HNSW_MAGIC_DATA.to_ne_bytes())?;
        d.write_all(&dim.to_ne_bytes())?;

        g.write_all(&[NB_LAYERS as u8])?;
        let mut index = 0usize;
        let mut next_neighbour = 0usize;
        for (layer, &size) in graph.layer_sizes.iter().enumerate() {
            g.write_all(&HNSW_MAGIC_LAYER.to_ne_bytes())?;
            g.write_all(&size.to_ne_bytes())?;
            for rank in 0..size {
                let id = graph.order[index];
                let own = row(id)?;
                g.write_all(&HNSW_MAGIC_POINT.to_ne_bytes())?;
                g.write_all(&(id as usize).to_ne_bytes())?;
                g.write_all(&[layer as u8])?;
                g.write_all(&(rank as i32).to_ne_bytes())?;
                let lists = &graph.lists[graph.list_start[index]..graph.list_start[index + 1]];
                for l in 0..NB_LAYERS {
                    let len = lists.get(l).map_or(0, |&len| usize::from(len));
                    g.write_all(&len.to_ne_bytes())?;
                    for &neighbour in &graph.neighbours[next_neighbour..next_neighbour + len] {
                        let (n_layer, n_rank) = self.position[neighbour as usize];
                        g.write_all(&(neighbour as usize).to_ne_bytes())?;
                        g.write_all(&[n_layer])?;
                        g.write_all(&(n_rank as i32).to_ne_bytes())?;
                        g.write_all(&MipsDist.eval(own, row(neighbour)?).to_ne_bytes())?;
                    }
                    next_neighbour += len;
                }
                d.write_all(&HNSW_MAGIC_DATA.to_ne_bytes())?;
                d.write_all(&u64::from(id).to_ne_bytes())?;
                d.write_all(&((dim * 4) as u64).to_ne_bytes())?;
                d.write_all(bytemuck::cast_slice::<f32, u8>(own))?;
                index += 1;
            }
        }
        let (entry_layer, entry_rank) = self.position[graph.entry as usize];
        g.write_all(&(graph.entry as usize).to_ne_bytes())?;
        g.write_all(&[entry_layer])?;
        g.write_all(&(entry_rank as i32).to_ne_bytes())?;
        g.flush()?;
        d.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Exclude, allow_all, testdata};
    use super::*;

    const N: usize = 20_000;
    const D: usize = 32;

    /// 20k ALS-like items (power-law norms, clusters, duplicates) and 300 users, built once.
    fn fixture() -> &'static (ItemVectors, Vec<f32>, HnswIndex) {
        static FIXTURE: OnceLock<(ItemVectors, Vec<f32>, HnswIndex)> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let (items, users) = testdata::als_like(N, 300, D, 42);
            let vectors = testdata::vectors(items, D);
            let index = HnswIndex::build(vectors.clone(), HnswParams::default()).expect("builds");
            (vectors, users, index)
        })
    }

    /// The same tastes with milder, lognormal norms, and every band a graph: the case where
    /// the graphs alone must find the answers (with power-law norms the few long vectors in
    /// the scanned top bands win most queries).
    fn graph_fixture() -> &'static (ItemVectors, Vec<f32>, HnswIndex) {
        static FIXTURE: OnceLock<(ItemVectors, Vec<f32>, HnswIndex)> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let (items, users) = testdata::als_like(N, 300, D, 44);
            let items = testdata::lognormal_norms(items, D, 0.5, 45);
            let vectors = testdata::vectors(items, D);
            let params = HnswParams {
                scan_below: 0,
                ..HnswParams::default()
            };
            let index = HnswIndex::build(vectors.clone(), params).expect("builds");
            (vectors, users, index)
        })
    }

    /// Unit vectors: one band, one graph, so byte offsets are known.
    fn single_graph(n: usize, d: usize, seed: u64) -> (ItemVectors, HnswIndex) {
        let mut data = testdata::uniform(n * d, seed);
        for row in data.chunks_exact_mut(d) {
            let norm = dot(row, row).sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let vectors = testdata::vectors(data, d);
        let params = HnswParams {
            scan_below: 0,
            ..HnswParams::default()
        };
        let index = HnswIndex::build(vectors.clone(), params).expect("builds");
        assert_eq!(index.bands.len(), 1);
        (vectors, index)
    }

    #[test]
    fn recall_at_10_against_exact_at_default_settings() {
        let (_, users, index) = fixture();
        assert!(index.bands.iter().filter(|b| b.graph.is_some()).count() >= 2);
        let exact = index.exact().search_batch(users, 10, &allow_all);
        let approx = index.search_batch(users, 10, &allow_all);
        let recall = testdata::recall(&exact, &approx);
        assert!(recall >= 0.95, "recall@10 = {recall}");
        // Re-scored exactly: every hit carries the exact index's score for that id.
        for (hits, q) in approx.iter().zip(users.chunks_exact(D)) {
            assert_eq!(hits.len(), 10);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
            for h in hits {
                let row = index.exact().vectors().row(h.id).expect("valid id");
                assert_eq!(h.score, dot(q, row));
            }
        }
    }

    #[test]
    fn graphs_alone_reach_recall_at_10_with_and_without_exclusions() {
        let (_, users, index) = graph_fixture();
        assert!(index.bands.iter().all(|b| b.graph.is_some()));
        assert!(index.bands.iter().filter(|b| b.ids.len() > 1000).count() >= 2);
        let excluded = Exclude::new((0..N as u32).filter(|i| (i * 7919) % 10 < 3));
        for filter in [
            &allow_all as &(dyn Fn(u32) -> bool + Sync),
            &excluded.filter(),
        ] {
            let exact = index.exact().search_batch(users, 10, filter);
            let approx = index.search_batch(users, 10, filter);
            assert!(approx.iter().flatten().all(|h| filter(h.id)));
            assert!(approx.iter().all(|hits| hits.len() == 10));
            let recall = testdata::recall(&exact, &approx);
            assert!(recall >= 0.95, "recall@10 of the graphs = {recall}");
        }
    }

    #[test]
    fn selective_filters_on_graphs_keep_recall() {
        let (_, users, index) = graph_fixture();
        // 10% pass: big bands walk with hnsw_rs's filter, small ones are scanned.
        let tenth = |id: u32| (id * 7919) % 10 == 4;
        let exact = index.exact().search_batch(users, 10, &tenth);
        let approx = index.search_batch(users, 10, &tenth);
        assert!(approx.iter().flatten().all(|h| tenth(h.id)));
        assert!(approx.iter().all(|hits| hits.len() == 10));
        let recall = testdata::recall(&exact, &approx);
        assert!(recall >= 0.9, "recall@10 with 10% passing = {recall}");
    }

    #[test]
    fn hnsw_rs_filtered_walk_returns_allowed_hits() {
        // The walk only pays off on huge bands; force it on a small one.
        let (vectors, mut index) = single_graph(3000, 16, 78);
        index.walk_cost = 0;
        let users = testdata::uniform(50 * 16, 79);
        let tenth = |id: u32| (id * 7919) % 10 == 4;
        let exact = index.exact().search_batch(&users, 10, &tenth);
        let approx = index.search_batch(&users, 10, &tenth);
        assert!(approx.iter().flatten().all(|h| tenth(h.id)));
        assert!(approx.iter().all(|hits| hits.len() == 10));
        let recall = testdata::recall(&exact, &approx);
        assert!(recall >= 0.9, "recall@10 of the filtered walk = {recall}");
        // Fewer passing items than k: the band scan completes the answer.
        let three = |id: u32| id == 7 || id == 1500 || id == 2999;
        let q = &users[..16];
        assert_eq!(
            index.search(q, 10, &three),
            index.exact().search(q, 10, &three)
        );
        assert_eq!(vectors.len(), 3000);
    }

    #[test]
    fn bands_partition_the_catalog_by_norm() {
        let (vectors, _, index) = fixture();
        let mut seen = vec![false; N];
        let norm = |id: u32| {
            let row = vectors.row(id).expect("valid id");
            dot(row, row).sqrt()
        };
        for (i, band) in index.bands.iter().enumerate() {
            assert!(band.ids.is_sorted());
            for &id in &band.ids {
                assert!(!std::mem::replace(&mut seen[id as usize], true));
                assert!(norm(id) <= band.max_norm);
                if i + 1 < MAX_BANDS && i + 1 < index.bands.len() {
                    assert!(f64::from(norm(id)) * BAND_RATIO >= f64::from(band.max_norm) * 0.999);
                }
            }
            if let Some(next) = index.bands.get(i + 1) {
                assert!(next.max_norm < band.max_norm);
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn filtered_search_returns_only_allowed_ids_and_keeps_recall() {
        let (_, users, index) = fixture();
        // 30% of the catalog excluded, spread over every cluster and norm.
        let excluded = Exclude::new((0..N as u32).filter(|i| (i * 7919) % 10 < 3));
        let filter = excluded.filter();
        let exact = index.exact().search_batch(users, 10, &filter);
        let approx = index.search_batch(users, 10, &filter);
        assert!(approx.iter().flatten().all(|h| excluded.allows(h.id)));
        assert!(approx.iter().all(|hits| hits.len() == 10));
        let recall = testdata::recall(&exact, &approx);
        assert!(recall >= 0.95, "filtered recall@10 = {recall}");
    }

    #[test]
    fn selective_filters_still_return_k_hits() {
        let (_, users, index) = fixture();
        for q in users.chunks_exact(D).take(20) {
            // Once a beam shows the filter is selective, the bands are scanned: exact answers.
            let rare = |id: u32| id.is_multiple_of(100);
            let hits = index.search(q, 10, &rare);
            assert_eq!(hits.len(), 10);
            assert_eq!(hits, index.exact().search(q, 10, &rare));
            // Only 3 pass: exactly those come back, best first.
            let three = |id: u32| id == 5 || id == 17_000 || id == 9_999;
            assert_eq!(
                index.search(q, 10, &three),
                index.exact().search(q, 10, &three)
            );
            assert!(index.search(q, 10, &|_| false).is_empty());
        }
    }

    #[test]
    fn batch_equals_one_at_a_time() {
        let (_, users, index) = fixture();
        let excluded = Exclude::new((0..N as u32).step_by(3));
        let filter = excluded.filter();
        for k in [1, 20] {
            let batch = index.search_batch(users, k, &filter);
            let single: Vec<Vec<Hit>> = users
                .chunks_exact(D)
                .map(|q| index.search(q, k, &filter))
                .collect();
            assert_eq!(batch, single);
        }
    }

    #[test]
    fn degenerate_queries_and_large_k_fall_back_to_exact() {
        let (_, users, index) = fixture();
        let zero = [0.0f32; D];
        let ids: Vec<u32> = index
            .search(&zero, 3, &allow_all)
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
        let q = &users[..D];
        assert_eq!(
            index.search(q, 2000, &allow_all),
            index.exact().search(q, 2000, &allow_all)
        );
        assert!(index.search(q, 0, &allow_all).is_empty());
        let mut nan = q.to_vec();
        nan[0] = f32::NAN;
        assert!(index.search(&nan, 10, &allow_all).is_empty());
    }

    #[test]
    fn round_trip_gives_identical_results_and_bytes() {
        let (vectors, users, index) = fixture();
        let bytes = index.to_bytes().expect("serialises");
        let loaded = HnswIndex::from_bytes(&bytes, vectors.clone()).expect("loads");
        assert_eq!(loaded.params(), index.params());
        let excluded = Exclude::new((0..N as u32).step_by(5));
        for k in [1, 10, 50] {
            assert!(
                loaded.search_batch(users, k, &allow_all)
                    == index.search_batch(users, k, &allow_all)
            );
            assert!(
                loaded.search_batch(users, k, &excluded.filter())
                    == index.search_batch(users, k, &excluded.filter())
            );
        }
        let again = loaded.to_bytes().expect("serialises again");
        assert!(again == bytes, "a reload serialises to the same bytes");
    }

    #[test]
    fn corrupted_bytes_are_refused() {
        let (vectors, _, index) = fixture();
        let bytes = index.to_bytes().expect("serialises");
        let load = |b: &[u8]| HnswIndex::from_bytes(b, vectors.clone());
        for cut in [0, 1, 7, HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
            assert!(load(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        for pos in [0, 9, 40, HEADER_LEN + 3, bytes.len() / 3, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x10;
            assert!(load(&bad).is_err(), "flipped byte {pos}");
        }
        let garbage: Vec<u8> = testdata::uniform(bytes.len() / 4, 5)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert!(load(&garbage).is_err());
        // The right graphs over other vectors of the same shape, or another shape.
        let (other, _) = testdata::als_like(N, 0, D, 43);
        assert!(HnswIndex::from_bytes(&bytes, testdata::vectors(other, D)).is_err());
        let (small, _) = testdata::als_like(100, 0, D, 42);
        assert!(HnswIndex::from_bytes(&bytes, testdata::vectors(small, D)).is_err());
    }

    /// Re-signs tampered bytes, so the structural checks (not the checksum) must catch them.
    fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
        let len = bytes.len() - CHECKSUM_LEN;
        let sum = Sha256::digest(&bytes[..len]);
        bytes[len..].copy_from_slice(&sum);
        bytes
    }

    #[test]
    fn well_signed_but_inconsistent_sections_are_refused() {
        let (vectors, index) = single_graph(1500, 8, 77);
        let bytes = index.to_bytes().expect("serialises");
        let load = |b: Vec<u8>| HnswIndex::from_bytes(&resign(b), vectors.clone());
        assert!(
            load(bytes.clone()).is_ok(),
            "re-signing alone changes nothing"
        );
        let patch = |at: usize, value: u32| {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
            b
        };
        // Offsets: header, then band 0 = kind (72), count (73), entry (77), layer sizes (81..),
        // first point (145): id, list count, first list length, first neighbour.
        let (kind, count, entry, sizes, first) = (72, 73, 77, 81, 145);
        assert_eq!(bytes[kind], BAND_GRAPH);
        assert!(load(patch(8, 2)).is_err(), "unknown version");
        assert!(load(patch(20, 1000)).is_err(), "bad max_nb_connection");
        assert!(load(patch(68, 0)).is_err(), "no band");
        assert!(load(patch(68, 99)).is_err(), "too many bands");
        let mut scanned = bytes.clone();
        scanned[kind] = 7;
        assert!(load(scanned).is_err(), "unknown band kind");
        assert!(load(patch(count, 1499)).is_err(), "band size");
        assert!(load(patch(entry, 1500)).is_err(), "entry out of range");
        let layer0 = u32::from_le_bytes(bytes[sizes..sizes + 4].try_into().expect("4 bytes"));
        assert!(load(patch(sizes, layer0 + 1)).is_err(), "layer sizes");
        assert!(load(patch(first, 1500)).is_err(), "item id out of range");
        let first_id = u32::from_le_bytes(bytes[first..first + 4].try_into().expect("4 bytes"));
        // The second point of layer 0 claims the first one's id.
        let mut at = first + 5;
        for _ in 0..bytes[first + 4] {
            let len = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
            at += 2 + 4 * len;
        }
        assert!(load(patch(at, first_id)).is_err(), "item stored twice");
        assert!(
            load(patch(first + 7, 1500)).is_err(),
            "neighbour out of range"
        );
        let mut too_long = bytes.clone();
        too_long[first + 5..first + 7].copy_from_slice(&1000u16.to_le_bytes());
        assert!(load(too_long).is_err(), "list longer than 2M");
        let mut lists = bytes.clone();
        lists[first + 4] = 17;
        assert!(load(lists).is_err(), "more lists than layers");
        let mut longer = bytes.clone();
        longer.insert(bytes.len() - CHECKSUM_LEN, 0);
        assert!(load(longer).is_err(), "trailing byte");
    }

    #[test]
    fn parameters_are_validated_before_hnsw_rs_sees_them() {
        let (items, _) = testdata::als_like(200, 0, 8, 1);
        let vectors = testdata::vectors(items, 8);
        let defaults = HnswParams::default();
        for bad in [
            HnswParams {
                max_nb_connection: 300,
                ..defaults
            },
            HnswParams {
                max_nb_connection: 1,
                ..defaults
            },
            HnswParams {
                ef_construction: 0,
                ..defaults
            },
            HnswParams {
                ef_search: 100_000,
                ..defaults
            },
            HnswParams {
                scan_below: usize::MAX,
                ..defaults
            },
        ] {
            assert!(matches!(
                HnswIndex::build(vectors.clone(), bad),
                Err(Error::InvalidParameter { .. })
            ));
        }
        let empty = testdata::vectors(Vec::new(), 8);
        assert!(HnswIndex::build(empty, defaults).is_err());
        let mut index = HnswIndex::build(vectors, defaults).expect("builds");
        assert!(index.set_ef_search(2).is_err());
        index.set_ef_search(200).expect("valid");
        assert_eq!(index.params().ef_search, 200);
    }

    #[test]
    fn tiny_and_degenerate_catalogs_work() {
        let forced_graphs = HnswParams {
            scan_below: 0,
            ..HnswParams::default()
        };
        let mut cases: Vec<Vec<f32>> = [1usize, 2, 5, 40, 300]
            .iter()
            .map(|&n| testdata::uniform(n * 4, n as u64))
            .collect();
        cases.push(vec![0.0; 40]); // all zero
        cases.push([vec![0.0; 20], testdata::uniform(20, 3)].concat()); // some zero
        cases.push([1.0, 0.0, 0.0, 0.0].repeat(30)); // all duplicates
        for data in cases {
            let vectors = testdata::vectors(data, 4);
            let index = HnswIndex::build(vectors.clone(), forced_graphs).expect("builds");
            let bytes = index.to_bytes().expect("serialises");
            let loaded = HnswIndex::from_bytes(&bytes, vectors.clone()).expect("loads");
            for q in testdata::uniform(40, 99).chunks_exact(4) {
                let exact = index.exact().search(q, 10, &allow_all);
                assert_eq!(index.search(q, 10, &allow_all), exact, "{index:?}");
                assert_eq!(loaded.search(q, 10, &allow_all), exact);
            }
        }
    }

    #[test]
    fn index_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HnswIndex>();
        assert_send_sync::<ExactIndex>();
        let boxed: Box<dyn VectorIndex> = Box::new(fixture().2.exact().clone());
        assert_eq!(boxed.len(), N);
    }
}
