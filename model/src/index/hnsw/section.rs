//! The HNSW section of an artifact: our framing around hnsw_rs's own dump files, written
//! and read here without touching hnsw_rs (which `mod.rs` alone imports).
//!
//! Little-endian: magic "AFFHNSW\0", version u32 (2), n u32, dim u32, max_nb_connection
//! u32, ef_construction u32, ef_search u32, scan_below u32, sha256 of the vectors (32 bytes),
//! band count u32, then per band, longest vectors first: kind u8 (0 scanned, 1 graph), item
//! count u32, item ids u32 x count (ascending); graph bands then hold the `.hnsw.graph` file
//! (length u64, bytes) and the `.hnsw.data` file (length u64, bytes) exactly as
//! `AnnT::file_dump` wrote them; last, the sha256 of everything before it (32 bytes).
//! Version 1 (until December 2026) kept the links in a layout of our own; see
//! [`Error::RetiredIndexFormat`].

use super::*;

pub(super) const MAGIC: &[u8; 8] = b"AFFHNSW\0";

pub(super) const FORMAT_VERSION: u32 = 2;

pub(super) const HEADER_LEN: usize = 8 + 4 * 7 + 32 + 4;

pub(super) const CHECKSUM_LEN: usize = 32;

pub(super) const BAND_SCANNED: u8 = 0;

pub(super) const BAND_GRAPH: u8 = 1;

pub(super) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

pub(super) fn to_u32(value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::Index(format!("{value} does not fit the format")))
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::Index(format!("graph bytes refused: {what}"))
}

/// Binds graphs to the exact vectors they were built on, so they are never paired with the
/// factors of another model.
pub(super) fn vectors_digest(vectors: &ItemVectors) -> [u8; 32] {
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

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < len {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| corrupt("truncated"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn usize(&mut self) -> Result<usize> {
        Ok(self.u32()? as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(u64::from_le_bytes(self.array()?))
            .map_err(|_| corrupt("a length beyond memory"))?;
        self.take(len)
    }
}

/// The section over `bands` (in order) for the model's `vectors`.
pub(super) fn write_section(
    vectors: &ItemVectors,
    params: &HnswParams,
    bands: &[BandSection<'_>],
) -> Result<Vec<u8>> {
    let n = vectors.len();
    let dumped: usize = bands
        .iter()
        .filter_map(|b| b.dump)
        .map(|(g, d)| g.len() + d.len() + 16)
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + n * 4 + bands.len() * 5 + dumped);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, FORMAT_VERSION);
    put_u32(&mut out, to_u32(n)?);
    put_u32(&mut out, to_u32(vectors.dim())?);
    put_u32(&mut out, to_u32(params.max_nb_connection)?);
    put_u32(&mut out, to_u32(params.ef_construction)?);
    put_u32(&mut out, to_u32(params.ef_search)?);
    put_u32(&mut out, to_u32(params.scan_below)?);
    out.extend_from_slice(&vectors_digest(vectors));
    put_u32(&mut out, to_u32(bands.len())?);
    for band in bands {
        out.push(match band.dump {
            None => BAND_SCANNED,
            Some(_) => BAND_GRAPH,
        });
        put_u32(&mut out, to_u32(band.ids.len())?);
        for &id in &band.ids {
            put_u32(&mut out, id);
        }
        if let Some((graph_file, data_file)) = band.dump {
            put_bytes(&mut out, graph_file);
            put_bytes(&mut out, data_file);
        }
    }
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    Ok(out)
}

/// One band of the section: written from an index, or read before hnsw_rs sees any of it.
pub(super) struct BandSection<'a> {
    pub(super) ids: Vec<u32>,
    /// hnsw_rs's `.hnsw.graph` and `.hnsw.data` files, verbatim.
    pub(super) dump: Option<(&'a [u8], &'a [u8])>,
}

/// Everything the section says, checked against itself and the model's vectors.
pub(super) struct Decoded<'a> {
    pub(super) params: HnswParams,
    pub(super) bands: Vec<BandSection<'a>>,
}

impl<'a> Decoded<'a> {
    pub(super) fn decode(bytes: &'a [u8], vectors: &ItemVectors) -> Result<Self> {
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not an HNSW section"));
        }
        let body_len = bytes
            .len()
            .checked_sub(CHECKSUM_LEN)
            .ok_or_else(|| corrupt("truncated"))?;
        let (body, checksum) = bytes.split_at(body_len);
        if Sha256::digest(body).as_slice() != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader { bytes: body };
        r.take(MAGIC.len())?;
        match r.u32()? {
            FORMAT_VERSION => {}
            1 => return Err(Error::RetiredIndexFormat(1)),
            v => return Err(corrupt(&format!("unknown format version {v}"))),
        }
        let n = r.usize()?;
        let dim = r.usize()?;
        if n != vectors.len() || dim != vectors.dim() {
            return Err(corrupt(&format!(
                "built over {n} items x {dim}, the model has {} x {}",
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
        params.validate()?;
        if r.array::<32>()? != vectors_digest(vectors) {
            return Err(corrupt("built over other vectors"));
        }
        let band_count = r.usize()?;
        if band_count == 0 || band_count > MAX_BANDS {
            return Err(corrupt("band count"));
        }
        let mut seen = vec![false; n];
        let mut bands = Vec::with_capacity(band_count);
        for _ in 0..band_count {
            let kind = r.u8()?;
            let count = r.usize()?;
            if count == 0 || count > n {
                return Err(corrupt("band size"));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let id = r.u32()?;
                if ids.last().is_some_and(|&last| last >= id) {
                    return Err(corrupt("band ids not ascending"));
                }
                match seen.get_mut(id as usize) {
                    Some(slot) if !*slot => *slot = true,
                    Some(_) => return Err(corrupt("item in two bands")),
                    None => return Err(corrupt("item id out of range")),
                }
                ids.push(id);
            }
            let dump = match kind {
                BAND_SCANNED => None,
                BAND_GRAPH => Some((r.bytes()?, r.bytes()?)),
                _ => return Err(corrupt("unknown band kind")),
            };
            bands.push(BandSection { ids, dump });
        }
        if !r.bytes.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        if seen.iter().any(|s| !s) {
            return Err(corrupt("bands miss items"));
        }
        Ok(Self { params, bands })
    }
}
