//! The one artifact format: a header, a manifest (what the model is, how it was trained,
//! its metrics) and checksummed binary sections. Loading verifies every byte before a
//! model is built from it, so a truncated, corrupted or foreign file is refused and the
//! caller keeps serving the model it has.
//!
//! Layout (little-endian):
//! `b"AFFNMODL"` | format version `u32` | header length `u32` | SHA-256 of the header (32
//! bytes) | header JSON ([`Header`]: manifest + section table) | section bytes.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::IdMap;
use crate::index::{HnswIndex, ItemVectors};
use crate::model::Parts;
use crate::model::{Manifest, Model};
use crate::neighbours::{NONE, Neighbours};
use crate::popularity::Popularity;
use crate::{Error, Result};

#[cfg(target_endian = "big")]
compile_error!("the artifact format stores native little-endian arrays");

/// Version of the byte layout this build writes.
pub const FORMAT_VERSION: u32 = 3;
/// Oldest layout this build still reads: version 2 stored a cosine and a `u32` count per
/// neighbour slot, version 3 derives the cosine from the item vectors and packs counts in
/// `u16` (28 % smaller for 100k items x 64: 46.2 MB, read on every cold start). Models
/// trained before the upgrade keep serving.
pub const OLDEST_READABLE: u32 = 2;
const MAGIC: &[u8; 8] = b"AFFNMODL";
const PREAMBLE: usize = 8 + 4 + 4 + 32;
/// Refuse absurd headers before allocating for them.
const MAX_HEADER: usize = 16 << 20;

/// One binary section: where it is and what it must hash to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// Section name.
    pub name: String,
    /// Offset from the end of the header.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// The JSON header: the manifest and the section table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// What the model is.
    pub manifest: Manifest,
    /// Where its parts are.
    pub sections: Vec<Section>,
}

/// Hex SHA-256 of a byte string: the artifact's content address.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::Artifact(msg.into())
}

impl Model {
    /// Serialises the model with its manifest and checksums.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode(FORMAT_VERSION)
    }

    fn encode(&self, version: u32) -> Result<Vec<u8>> {
        let json = |v: &dyn erased::Json| v.to_json();
        let nb = &self.neighbours;
        let neighbour_parts: Vec<(&str, Vec<u8>)> = if version >= 3 {
            let wide: Vec<u32> = nb.wide.iter().flat_map(|&(s, c)| [s, c]).collect();
            vec![
                ("neighbours.ids", cast_u32(&nb.ids)),
                (
                    "neighbours.shared",
                    bytemuck::cast_slice(&nb.shared).to_vec(),
                ),
                ("neighbours.wide", cast_u32(&wide)),
            ]
        } else {
            // The version 2 layout, kept writable so the reading path has a real input.
            let (mut scores, mut shared) = (Vec::new(), Vec::new());
            for i in 0..nb.n_items() as u32 {
                let listed: Vec<_> = nb.of(i).collect();
                for slot in 0..nb.k {
                    let n = listed.get(slot);
                    scores.push(n.map_or(0.0, |n| self.cosine(i, n.id)));
                    shared.push(n.map_or(0, |n| n.shared_buyers));
                }
            }
            vec![
                ("neighbours.ids", cast_u32(&nb.ids)),
                ("neighbours.scores", bytemuck::cast_slice(&scores).to_vec()),
                ("neighbours.shared", cast_u32(&shared)),
            ]
        };
        let mut parts: Vec<(&str, Vec<u8>)> = vec![
            ("items", json(&self.items)?),
            ("categories", json(&self.categories)?),
            (
                "item_category",
                cast_u32(
                    &self
                        .item_category
                        .iter()
                        .map(|c| c.unwrap_or(NONE))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "item_factors",
                bytemuck::cast_slice(self.vectors.as_slice()).to_vec(),
            ),
            ("gram", bytemuck::cast_slice(&self.gram).to_vec()),
            (
                "negative_weights",
                bytemuck::cast_slice(&self.negative_weights).to_vec(),
            ),
        ];
        parts.extend(neighbour_parts);
        parts.extend([
            (
                "popularity.score",
                bytemuck::cast_slice(&self.popularity.score).to_vec(),
            ),
            ("popularity.order", cast_u32(&self.popularity.order)),
        ]);
        if let Some(h) = self.index.hnsw() {
            parts.push(("hnsw", h.to_bytes()?));
        }
        let mut sections = Vec::with_capacity(parts.len());
        let mut offset = 0u64;
        for (name, bytes) in &parts {
            sections.push(Section {
                name: (*name).to_owned(),
                offset,
                len: bytes.len() as u64,
                sha256: digest(bytes),
            });
            offset += bytes.len() as u64;
        }
        let mut manifest = self.manifest.clone();
        manifest.format_version = version;
        let header = Header { manifest, sections };
        let header =
            serde_json::to_vec(&header).map_err(|e| refuse(format!("encode header: {e}")))?;
        let mut out = Vec::with_capacity(PREAMBLE + header.len() + offset as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&header));
        out.extend_from_slice(&header);
        for (_, bytes) in parts {
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Reads only the header, verified: what a registry or `models show` needs.
    pub fn read_header(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < PREAMBLE {
            return Err(refuse(format!(
                "{} bytes is too short to be a model artifact",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(refuse("not an Affinity model artifact (bad magic bytes)"));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
            return Err(refuse(format!(
                "artifact format version {version} is not supported by this build (reads {OLDEST_READABLE} to {FORMAT_VERSION})"
            )));
        }
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if len > MAX_HEADER || PREAMBLE + len > bytes.len() {
            return Err(refuse(
                "truncated artifact: header runs past the end of the file",
            ));
        }
        let header = &bytes[PREAMBLE..PREAMBLE + len];
        if Sha256::digest(header).as_slice() != &bytes[16..48] {
            return Err(refuse(
                "header checksum mismatch: the artifact is corrupted",
            ));
        }
        let header: Header =
            serde_json::from_slice(header).map_err(|e| refuse(format!("header: {e}")))?;
        if header.manifest.format_version != version {
            return Err(refuse(
                "manifest format version disagrees with the file header",
            ));
        }
        Ok(header)
    }

    /// Verifies and decodes an artifact.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Model::decode(bytes, true)
    }

    /// Verifies an artifact against the whole-file SHA-256 a registry recorded for it, then
    /// decodes it: one hashing pass instead of two on a serving cold start, since a matching
    /// whole-file digest already vouches for every section.
    pub fn from_bytes_with_digest(bytes: &[u8], expected_sha256: &str) -> Result<Model> {
        let actual = digest(bytes);
        if !actual.eq_ignore_ascii_case(expected_sha256) {
            return Err(refuse(format!(
                "artifact checksum {actual} does not match the registry's {expected_sha256}"
            )));
        }
        Model::decode(bytes, false)
    }

    /// Structural checks always; section checksums unless the caller verified the whole file.
    fn decode(bytes: &[u8], verify_sections: bool) -> Result<Model> {
        let header = Model::read_header(bytes)?;
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let body = &bytes[PREAMBLE + len..];
        let mut expected_end = 0u64;
        for s in &header.sections {
            if s.offset != expected_end {
                return Err(refuse(format!(
                    "section `{}` is not where the table says",
                    s.name
                )));
            }
            expected_end = s.offset.saturating_add(s.len);
        }
        if expected_end as usize != body.len() {
            return Err(refuse(format!(
                "truncated or padded artifact: sections need {expected_end} bytes, file has {}",
                body.len()
            )));
        }
        if verify_sections {
            header.sections.par_iter().try_for_each(|s| {
                let part = &body[s.offset as usize..(s.offset + s.len) as usize];
                if digest(part) == s.sha256 {
                    Ok(())
                } else {
                    Err(refuse(format!(
                        "section `{}` checksum mismatch: the artifact is corrupted",
                        s.name
                    )))
                }
            })?;
        }
        let get = |name: &str| -> Result<&[u8]> {
            header
                .sections
                .iter()
                .find(|s| s.name == name)
                .map(|s| &body[s.offset as usize..(s.offset + s.len) as usize])
                .ok_or_else(|| refuse(format!("missing section `{name}`")))
        };
        let m = header.manifest;
        let d = m.config.als.factors;
        let items: IdMap = IdMap::from_ids(
            serde_json::from_slice(get("items")?).map_err(|e| refuse(format!("items: {e}")))?,
        )?;
        let categories: Vec<String> = serde_json::from_slice(get("categories")?)
            .map_err(|e| refuse(format!("categories: {e}")))?;
        let item_category = read_u32(get("item_category")?, "item_category")?
            .into_iter()
            .map(|c| (c != NONE).then_some(c))
            .collect();
        let factors = read_f32(get("item_factors")?, "item_factors")?;
        let vectors = ItemVectors::new(factors.into(), d)?;
        let gram = read_f32(get("gram")?, "gram")?;
        let negative_weights = read_f32(get("negative_weights")?, "negative_weights")?;
        let ids = read_u32(get("neighbours.ids")?, "neighbours.ids")?;
        let neighbours = if m.format_version >= 3 {
            let shared = get("neighbours.shared")?;
            if !shared.len().is_multiple_of(2) {
                return Err(refuse(
                    "section `neighbours.shared` is not a whole number of u16 values",
                ));
            }
            let wide = read_u32(get("neighbours.wide")?, "neighbours.wide")?;
            if !wide.len().is_multiple_of(2) {
                return Err(refuse("section `neighbours.wide` holds an unpaired value"));
            }
            Neighbours {
                k: m.config.neighbours,
                ids,
                shared: bytemuck::pod_collect_to_vec(shared),
                wide: wide.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
            }
        } else {
            let shared = read_u32(get("neighbours.shared")?, "neighbours.shared")?;
            if shared.len() != ids.len() {
                return Err(refuse("neighbour sections disagree in length"));
            }
            Neighbours::from_counts(m.config.neighbours, ids, &shared)
        };
        neighbours.validate().map_err(refuse)?;
        let score = read_f32(get("popularity.score")?, "popularity.score")?;
        let order = read_u32(get("popularity.order")?, "popularity.order")?;
        let item_category: Vec<Option<u32>> = item_category;
        let popularity = Popularity::from_order(score, order, &item_category, categories.len());
        let hnsw = match header.sections.iter().any(|s| s.name == "hnsw") {
            true => match HnswIndex::from_bytes(get("hnsw")?, vectors.clone()) {
                Ok(index) => Some(index),
                // Same answers from the exact index, slower on big catalogs.
                Err(Error::RetiredIndexFormat(_)) => None,
                Err(e) => return Err(e),
            },
            false => None,
        };
        Model::assemble(Parts {
            manifest: m,
            items,
            categories,
            item_category,
            vectors,
            gram,
            negative_weights,
            neighbours,
            popularity,
            hnsw,
        })
    }

    /// Writes the artifact atomically (temp file, then rename) and returns its digest.
    pub fn save(&self, path: &Path) -> Result<String> {
        let bytes = self.to_bytes()?;
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(digest(&bytes))
    }

    /// Reads and verifies an artifact file.
    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Model::from_bytes(&bytes)
    }
}

fn cast_u32(v: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn read_f32(b: &[u8], name: &str) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(refuse(format!(
            "section `{name}` is not a whole number of f32 values"
        )));
    }
    let v: Vec<f32> = bytemuck::pod_collect_to_vec(b);
    if v.iter().any(|x| !x.is_finite()) {
        return Err(refuse(format!("section `{name}` holds non-finite values")));
    }
    Ok(v)
}

fn read_u32(b: &[u8], name: &str) -> Result<Vec<u32>> {
    if !b.len().is_multiple_of(4) {
        return Err(refuse(format!(
            "section `{name}` is not a whole number of u32 values"
        )));
    }
    Ok(bytemuck::pod_collect_to_vec(b))
}

/// JSON encoding of the structured sections, behind one error mapping.
mod erased {
    use crate::{Error, Result};

    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>> {
            serde_json::to_vec(self).map_err(|e| Error::Artifact(format!("encode: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::AlsParams;
    use crate::model::{IndexChoice, Purchase, TrainConfig, Trainer};
    use crate::testdata::shop;

    fn model(index: IndexChoice) -> Model {
        let (data, cats) = shop(300, 4, 15, 9);
        let cfg = TrainConfig {
            als: AlsParams {
                factors: 8,
                iterations: 4,
                ..AlsParams::default()
            },
            neighbours: 5,
            index,
            ..TrainConfig::default()
        };
        let mut m = Trainer::new(&cfg)
            .version("v42")
            .trained_at(1_800_000_000)
            .train(&data, &cats)
            .unwrap();
        m.manifest.metrics.insert("recall_at_10".into(), 0.25);
        m
    }

    fn same_answers(a: &Model, b: &Model) {
        for i in 0..a.items.len() as u32 {
            assert_eq!(a.similar(i, 5, &|_| true), b.similar(i, 5, &|_| true));
        }
        let h = [Purchase {
            item: 1,
            quantity: 2.0,
            at: 1_700_000_000,
        }];
        assert_eq!(a.recommend(&h, 7, &|_| true), b.recommend(&h, 7, &|_| true));
    }

    /// The artifact with its `hnsw` section's format version set to `version` (section and
    /// header re-signed): what an earlier build wrote, as far as the version tells.
    fn with_hnsw_section_version(bytes: &[u8], version: u32) -> Vec<u8> {
        let mut header = Model::read_header(bytes).unwrap();
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut body = bytes[PREAMBLE + len..].to_vec();
        let section = header
            .sections
            .iter_mut()
            .find(|s| s.name == "hnsw")
            .unwrap();
        let (start, end) = (
            section.offset as usize,
            (section.offset + section.len) as usize,
        );
        let hnsw = &mut body[start..end];
        hnsw[8..12].copy_from_slice(&version.to_le_bytes());
        let signed = hnsw.len() - 32;
        let sum = Sha256::digest(&hnsw[..signed]);
        hnsw[signed..].copy_from_slice(&sum);
        section.sha256 = digest(hnsw);
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = bytes[..12].to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&header));
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_retired_hnsw_section_loads_with_the_exact_index() {
        let m = model(IndexChoice::Auto { hnsw_above: 0 });
        let bytes = m.to_bytes().unwrap();
        let old = with_hnsw_section_version(&bytes, 1);
        let back = Model::from_bytes(&old).expect("an artifact of the earlier format loads");
        assert!(
            back.index().hnsw().is_none(),
            "its graph format is retired: exact search"
        );
        same_answers(&m, &back);
        // Any other version is not ours: refused, as corruption is.
        assert!(Model::from_bytes(&with_hnsw_section_version(&bytes, 9)).is_err());
    }

    #[test]
    fn round_trip_keeps_manifest_and_answers() {
        for index in [IndexChoice::Exact, IndexChoice::Auto { hnsw_above: 0 }] {
            let m = model(index);
            let bytes = m.to_bytes().unwrap();
            let back = Model::from_bytes(&bytes).unwrap();
            assert_eq!(back.manifest, m.manifest);
            assert_eq!(back.index().hnsw().is_some(), m.index().hnsw().is_some());
            assert_eq!(back.items.ids(), m.items.ids());
            same_answers(&m, &back);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.afm");
            let d = m.save(&path).unwrap();
            assert_eq!(d, digest(&bytes));
            same_answers(&m, &Model::load(&path).unwrap());
        }
    }

    #[test]
    fn corruption_truncation_and_foreign_versions_are_refused() {
        let bytes = model(IndexChoice::Exact).to_bytes().unwrap();
        let expect = |b: &[u8], needle: &str| match Model::from_bytes(b) {
            Err(Error::Artifact(msg)) => assert!(msg.contains(needle), "`{msg}` lacks `{needle}`"),
            other => panic!("expected refusal containing `{needle}`, got {other:?}"),
        };
        // A flipped byte anywhere: in the header, then in each section.
        let mut b = bytes.clone();
        b[PREAMBLE + 5] ^= 0x40;
        expect(&b, "header checksum");
        let header = Model::read_header(&bytes).unwrap();
        let body_start = bytes.len()
            - header
                .sections
                .iter()
                .map(|s| s.len as usize)
                .sum::<usize>();
        for s in &header.sections {
            if s.len == 0 {
                continue;
            }
            let mut b = bytes.clone();
            b[body_start + s.offset as usize + s.len as usize / 2] ^= 0x01;
            expect(&b, &format!("section `{}` checksum", s.name));
        }
        // Truncated at several points.
        for cut in [0, 10, PREAMBLE + 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(Model::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        expect(&bytes[..bytes.len() - 1], "truncated");
        let mut b = bytes.clone();
        b.push(0);
        expect(&b, "padded");
        let mut b = bytes.clone();
        // A layout older than the oldest readable (no negative weights) and a future one
        // are both refused.
        for foreign in [OLDEST_READABLE - 1, FORMAT_VERSION + 1] {
            b[8..12].copy_from_slice(&foreign.to_le_bytes());
            expect(&b, &format!("format version {foreign} is not supported"));
        }
        let mut b = bytes.clone();
        b[0] = b'X';
        expect(&b, "bad magic");
        expect(b"hello", "too short");
    }

    #[test]
    fn the_registry_digest_path_refuses_any_changed_byte_and_decodes_the_same_model() {
        let m = model(IndexChoice::Exact);
        let bytes = m.to_bytes().unwrap();
        let registered = digest(&bytes);
        let back = Model::from_bytes_with_digest(&bytes, &registered.to_uppercase()).unwrap();
        assert_eq!(back.manifest, m.manifest);
        same_answers(&m, &back);
        // A flipped byte in a section (which this path does not hash on its own) is caught
        // by the whole-file digest.
        let mut b = bytes.clone();
        let last = b.len() - 3;
        b[last] ^= 0x01;
        match Model::from_bytes_with_digest(&b, &registered) {
            Err(Error::Artifact(msg)) => assert!(msg.contains("does not match"), "{msg}"),
            other => panic!("expected a checksum refusal, got {other:?}"),
        }
        // A consistent artifact that is not the registered one is refused too.
        let other = model(IndexChoice::Auto { hnsw_above: 0 })
            .to_bytes()
            .unwrap();
        assert!(Model::from_bytes_with_digest(&other, &registered).is_err());
    }

    #[test]
    fn a_version_2_artifact_still_loads_and_answers_the_same() {
        let m = model(IndexChoice::Exact);
        let v2 = m.encode(2).unwrap();
        assert_eq!(Model::read_header(&v2).unwrap().manifest.format_version, 2);
        let back = Model::from_bytes_with_digest(&v2, &digest(&v2)).unwrap();
        same_answers(&m, &back);
        assert_eq!(back.neighbours, m.neighbours);
        // Version 3 is smaller: no cosine per slot, counts in half the bytes.
        assert!(m.to_bytes().unwrap().len() < v2.len());
    }
}
