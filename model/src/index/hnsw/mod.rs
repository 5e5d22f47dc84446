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
//! - Its dump and its loader (`AnnT::file_dump`, `HnswIo`) work on files only. The artifact
//!   section keeps the two files hnsw_rs wrote, verbatim (native-endian: artifacts move
//!   between x86_64 and arm64, both little-endian, 64-bit), inside our own checksummed
//!   framing; a load writes them to a private temporary directory and reads them back through
//!   `HnswIo`, which copies every point into memory, then removes the directory. About 900
//!   bytes per item at 64 dimensions (the dump carries a copy of each reduced vector).
//! - Its loader `assert!`s, calls `process::exit` and trusts lengths read from the files. It
//!   only ever reads bytes that hnsw_rs wrote and that passed our checksum, the artifact's
//!   digest and a check of the dump's description (its public `load_description`) against
//!   the band; the load also runs under `catch_unwind`.
//! - It reads the stored level scale back as a factor of the default instead of as the scale
//!   it wrote. That only matters for inserting into a reloaded graph, which we never do.
//! - A reloaded graph borrows its `HnswIo` loader for its whole life: the two share one
//!   `self_cell` ([`Reloaded`]).
//! - Parallel insertion makes a graph depend on thread timing: two builds over the same data
//!   can differ slightly (recall does not). Searches on one graph, and on its reload, are
//!   deterministic.

mod section;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use std::{fmt, fs, io};

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::{HnswIo, load_description};
use rayon::prelude::*;
use section::*;
use serde::{Deserialize, Serialize};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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

self_cell::self_cell!(
    /// A graph hnsw_rs reloaded: it borrows its `HnswIo` loader for its whole life, so the
    /// two live together.
    struct Reloaded {
        owner: HnswIo,
        #[not_covariant]
        dependent: HnswGraph,
    }
);

type HnswGraph<'a> = Hnsw<'a, f32, MipsDist>;

/// A band's graph, built in this process or reloaded from an artifact.
enum Graph {
    Built(HnswGraph<'static>),
    Reloaded(Reloaded),
}

impl Graph {
    fn with<R>(&self, f: impl for<'a> FnOnce(&HnswGraph<'a>) -> R) -> R {
        match self {
            Graph::Built(g) => f(g),
            Graph::Reloaded(r) => r.with_dependent(|_, g| f(g)),
        }
    }

    fn set_searching_mode(&mut self) {
        match self {
            Graph::Built(g) => g.set_searching_mode(true),
            Graph::Reloaded(r) => r.with_dependent_mut(|_, g| g.set_searching_mode(true)),
        }
    }
}

/// One norm band: its items, its own reduction scale, and a graph unless it is scanned.
struct Band {
    /// Global item ids, ascending.
    ids: Vec<u32>,
    /// Largest norm in the band: the reduction's `M` and the pruning bound.
    max_norm: f32,
    graph: Option<Graph>,
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

    /// How many norm bands are searched through a graph (the others are scanned).
    pub fn graphs(&self) -> usize {
        self.bands.iter().filter(|b| b.graph.is_some()).count()
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

    /// Serialises the bands and, verbatim, hnsw_rs's own dump of each graph (not the model's
    /// vectors: the artifact stores those once) into a checksummed byte section.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let dumps = self
            .bands
            .iter()
            .map(|band| band.graph.as_ref().map(|g| g.with(dump_graph)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let sections: Vec<BandSection<'_>> = self
            .bands
            .iter()
            .zip(&dumps)
            .map(|(band, dump)| BandSection {
                ids: band.ids.clone(),
                dump: dump.as_ref().map(|(g, d)| (g.as_slice(), d.as_slice())),
            })
            .collect();
        write_section(self.exact.vectors(), &self.params, &sections)
    }

    /// Restores an index written by [`HnswIndex::to_bytes`] over the same `vectors`, each graph
    /// loaded by hnsw_rs's `HnswIo`, none rebuilt. Truncated, corrupted or mismatched input is
    /// an `Err`, never a panic or an exit; a section of the retired format 1 is
    /// [`Error::RetiredIndexFormat`].
    pub fn from_bytes(bytes: &[u8], vectors: ItemVectors) -> Result<Self> {
        let decoded = Decoded::decode(bytes, &vectors)?;
        let bands = decoded
            .bands
            .par_iter()
            .map(|section| {
                let mut band = Band::new(section.ids.clone(), &vectors);
                if let Some((graph_file, data_file)) = section.dump {
                    if band.max_norm == 0.0 {
                        return Err(corrupt("a graph over zero vectors"));
                    }
                    band.graph = Some(load_graph(&band, graph_file, data_file, vectors.dim())?);
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
        graph: &HnswGraph<'_>,
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

fn build_graph(band: &Band, vectors: &ItemVectors, params: &HnswParams) -> Result<Graph> {
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
        Graph::Built(graph)
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
                    hits = graph.with(|g| self.graph_beam(g, query, &q_aug, ef, filter, false));
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
                        hits = graph.with(|g| self.graph_beam(g, query, &q_aug, ef, filter, true));
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

/// The basename our graphs are dumped under, in a directory of their own.
const DUMP_NAME: &str = "band";

/// A private directory for hnsw_rs's files (it dumps to and loads from files only), removed
/// with everything in it when dropped.
struct DumpDir(PathBuf);

impl DumpDir {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let name = format!(
                "affinity-hnsw-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            let mut builder = fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(Self(path)),
                // Left by an earlier process with our pid: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn file(&self, basename: &str, suffix: &str) -> PathBuf {
        self.0.join(format!("{basename}{suffix}"))
    }
}

impl Drop for DumpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// hnsw_rs's names for the two files of a dump, from its documentation of `HnswIo`.
const GRAPH_SUFFIX: &str = ".hnsw.graph";

const DATA_SUFFIX: &str = ".hnsw.data";

fn io_error(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::Index(format!("{what}: {e}"))
}

/// hnsw_rs's own dump of one graph: its `.hnsw.graph` and `.hnsw.data` files, read back.
fn dump_graph(graph: &Hnsw<'_, f32, MipsDist>) -> Result<(Vec<u8>, Vec<u8>)> {
    let dir = DumpDir::new().map_err(io_error("cannot create a directory for a graph dump"))?;
    let basename = catch_unwind(AssertUnwindSafe(|| graph.file_dump(&dir.0, DUMP_NAME)))
        .map_err(|_| Error::Index("hnsw_rs panicked while dumping a graph".into()))?
        .map_err(|e| Error::Index(format!("hnsw_rs could not dump a graph: {e}")))?;
    let read = |suffix| fs::read(dir.file(&basename, suffix));
    Ok((
        read(GRAPH_SUFFIX).map_err(io_error("cannot read hnsw_rs's graph file"))?,
        read(DATA_SUFFIX).map_err(io_error("cannot read hnsw_rs's data file"))?,
    ))
}

/// Loads one band's graph through `HnswIo` from the files hnsw_rs dumped, after checking
/// their description (hnsw_rs's public `load_description`) against the band: hnsw_rs's
/// loader trusts the files and exits the process on some inconsistencies.
fn load_graph(band: &Band, graph_file: &[u8], data_file: &[u8], dim: usize) -> Result<Graph> {
    let description = load_description(&mut &graph_file[..])
        .map_err(|e| corrupt(&format!("hnsw_rs cannot read the graph's description: {e}")))?;
    let ours = std::any::type_name::<MipsDist>();
    let short = |name: &str| name.rsplit("::").next().unwrap_or_default().to_owned();
    if description.nb_point != band.ids.len()
        || description.dimension != dim + 1
        || short(&description.distname) != short(ours)
        || short(&description.t_name) != "f32"
    {
        return Err(corrupt(&format!(
            "the graph holds {} points of dimension {} ({}, {}); the band has {} of {}",
            description.nb_point,
            description.dimension,
            description.distname,
            description.t_name,
            band.ids.len(),
            dim + 1
        )));
    }
    let dir = DumpDir::new().map_err(io_error("cannot create a directory for a graph"))?;
    let write = |suffix, bytes: &[u8]| fs::write(dir.file(DUMP_NAME, suffix), bytes);
    write(GRAPH_SUFFIX, graph_file).map_err(io_error("cannot stage a graph file"))?;
    write(DATA_SUFFIX, data_file).map_err(io_error("cannot stage a graph file"))?;
    // Without mmap (the default) hnsw_rs copies every point into memory: the files can go
    // as soon as the load returns, while the graph keeps borrowing its loader.
    let reloaded = Reloaded::try_new(HnswIo::new(&dir.0, DUMP_NAME), |io| {
        catch_unwind(AssertUnwindSafe(|| {
            io.load_hnsw_with_dist::<f32, MipsDist>(MipsDist)
        }))
        .map_err(|_| Error::Index("hnsw_rs panicked while loading a graph".into()))?
        .map_err(|e| Error::Index(format!("hnsw_rs could not load a graph: {e}")))
    })?;
    let mut graph = Graph::Reloaded(reloaded);
    let loaded_ids = graph.with(|g| {
        let mut ids: Vec<usize> = g
            .get_point_indexation()
            .into_iter()
            .map(|p| p.get_origin_id())
            .collect();
        ids.sort_unstable();
        ids
    });
    if !loaded_ids
        .iter()
        .copied()
        .eq(band.ids.iter().map(|&id| id as usize))
    {
        return Err(Error::Index("hnsw_rs reloaded a different graph".into()));
    }
    graph.set_searching_mode();
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

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
    fn round_trip_gives_identical_results() {
        let (vectors, users, index) = fixture();
        let bytes = index.to_bytes().expect("serialises");
        let loaded = HnswIndex::from_bytes(&bytes, vectors.clone()).expect("loads");
        assert_eq!(loaded.params(), index.params());
        let excluded = Exclude::new((0..N as u32).step_by(5));
        let same = |a: &HnswIndex, b: &HnswIndex| {
            for k in [1, 10, 50] {
                assert!(
                    a.search_batch(users, k, &allow_all) == b.search_batch(users, k, &allow_all)
                );
                assert!(
                    a.search_batch(users, k, &excluded.filter())
                        == b.search_batch(users, k, &excluded.filter())
                );
            }
        };
        same(&loaded, index);
        // A reloaded graph dumps again (hnsw_rs rewrites its level scale, so the bytes may
        // differ) and that dump loads into the same graph.
        let again = loaded.to_bytes().expect("serialises again");
        same(
            &HnswIndex::from_bytes(&again, vectors.clone()).expect("loads again"),
            index,
        );
    }

    #[test]
    fn the_section_holds_hnsw_rs_dump_files_verbatim() {
        let (vectors, index) = single_graph(1500, 8, 77);
        let bytes = index.to_bytes().expect("serialises");
        let decoded = Decoded::decode(&bytes, &vectors).expect("decodes");
        let (graph_file, data_file) = decoded.bands[0].dump.expect("a graph band");
        let dumped = index.bands[0]
            .graph
            .as_ref()
            .expect("graph")
            .with(dump_graph);
        let (g, d) = dumped.expect("dumps");
        assert!(graph_file == g.as_slice() && data_file == d.as_slice());
        let description = load_description(&mut &graph_file[..]).expect("hnsw_rs reads it");
        assert_eq!((description.nb_point, description.dimension), (1500, 9));
        // The staging directory goes with everything in it, and two never share a path.
        let dir = DumpDir::new().expect("creates");
        let other = DumpDir::new().expect("creates");
        assert_ne!(dir.0, other.0);
        fs::write(dir.file(DUMP_NAME, GRAPH_SUFFIX), graph_file).expect("writes");
        let path = dir.0.clone();
        drop(dir);
        assert!(!path.exists());
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
        // Offsets: header, then band 0 = kind (72), count (73), ids (77..).
        let (kind, count, ids) = (72, 73, 77);
        assert_eq!(bytes[kind], BAND_GRAPH);
        assert!(
            matches!(load(patch(8, 1)), Err(Error::RetiredIndexFormat(1))),
            "format 1 is retired, and said so"
        );
        assert!(load(patch(8, 3)).is_err(), "unknown version");
        assert!(load(patch(20, 1000)).is_err(), "bad max_nb_connection");
        assert!(load(patch(68, 0)).is_err(), "no band");
        assert!(load(patch(68, 99)).is_err(), "too many bands");
        let mut scanned = bytes.clone();
        scanned[kind] = 7;
        assert!(load(scanned).is_err(), "unknown band kind");
        assert!(load(patch(count, 1499)).is_err(), "band size");
        assert!(load(patch(ids, 1500)).is_err(), "item id out of range");
        let first = u32::from_le_bytes(bytes[ids..ids + 4].try_into().expect("4 bytes"));
        assert!(load(patch(ids + 4, first)).is_err(), "ids not ascending");
        let mut longer = bytes.clone();
        longer.insert(bytes.len() - CHECKSUM_LEN, 0);
        assert!(load(longer).is_err(), "trailing byte");

        // hnsw_rs's files are checked against the band before its loader reads them.
        let decoded = Decoded::decode(&bytes, &vectors).expect("decodes");
        let (graph_file, data_file) = decoded.bands[0].dump.expect("a graph band");
        let with_dump = |graph: &[u8], data: &[u8]| {
            let band = BandSection {
                ids: decoded.bands[0].ids.clone(),
                dump: Some((graph, data)),
            };
            write_section(&vectors, &index.params, &[band]).expect("writes")
        };
        assert!(
            HnswIndex::from_bytes(&with_dump(graph_file, data_file), vectors.clone()).is_ok(),
            "rewriting the same files changes nothing"
        );
        let refused = |graph: &[u8], data: &[u8], why: &str| {
            let result = HnswIndex::from_bytes(&with_dump(graph, data), vectors.clone());
            assert!(result.is_err(), "{why}");
        };
        refused(data_file, graph_file, "files swapped");
        refused(
            &graph_file[..3],
            data_file,
            "a graph file cut inside its description",
        );
        refused(&[], data_file, "no graph file");
        let (other_vectors, other_index) = single_graph(1000, 8, 78);
        let other_bytes = other_index.to_bytes().expect("serialises");
        let other_decoded = Decoded::decode(&other_bytes, &other_vectors).expect("decodes");
        let (other_graph, other_data) = other_decoded.bands[0].dump.expect("a graph band");
        refused(
            other_graph,
            other_data,
            "another band's graph (1000 points, not 1500)",
        );
        let (wide_vectors, wide_index) = single_graph(1500, 16, 79);
        let wide_bytes = wide_index.to_bytes().expect("serialises");
        let wide = Decoded::decode(&wide_bytes, &wide_vectors).expect("decodes");
        let (wide_graph, wide_data) = wide.bands[0].dump.expect("a graph band");
        refused(wide_graph, wide_data, "a graph of another dimension");
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
