//! String ids interned to dense `u32` indices, so the math works on arrays and the
//! artifact can map answers back to the retailer's own ids.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A bijection between external string ids and dense indices `0..len`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct IdMap {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from ids that must be unique (as stored in an artifact).
    pub fn from_ids(ids: Vec<String>) -> Result<Self> {
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(Error::Artifact(format!("duplicate id `{id}` in id map")));
            }
        }
        Ok(Self { ids, index })
    }

    /// Returns the index of `id`, assigning the next free one if it is new.
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.to_owned());
        self.index.insert(id.to_owned(), i);
        i
    }

    /// The index of `id`, if known.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The external id of index `i`; panics only on an index the map never issued.
    pub fn id(&self, i: u32) -> &str {
        &self.ids[i as usize]
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no id is known.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// All ids in index order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

impl From<Vec<String>> for IdMap {
    fn from(ids: Vec<String>) -> Self {
        // Deserialisation path: duplicates keep their first index, which cannot happen
        // for maps we wrote; artifacts are additionally checksummed.
        let mut map = IdMap::new();
        for id in ids {
            map.intern(&id);
        }
        map
    }
}

impl From<IdMap> for Vec<String> {
    fn from(map: IdMap) -> Self {
        map.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_dense() {
        let mut m = IdMap::new();
        assert_eq!(m.intern("b"), 0);
        assert_eq!(m.intern("a"), 1);
        assert_eq!(m.intern("b"), 0);
        assert_eq!(m.len(), 2);
        assert_eq!(m.id(1), "a");
        assert_eq!(m.get("zz"), None);
    }

    #[test]
    fn duplicate_ids_are_refused() {
        assert!(IdMap::from_ids(vec!["x".into(), "x".into()]).is_err());
    }
}
