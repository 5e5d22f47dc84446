//! Precomputed top-K neighbour lists per item ("customers who bought X also bought"),
//! built once at train time with blocked matrix products so the storefront's most
//! common query is a lookup.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csr::Csr;
use crate::eval::dot_block;
use crate::linalg::norm;
use crate::topk::TopK;

/// Marks an empty slot in a neighbour list.
pub const NONE: u32 = u32::MAX;

/// Rows of `k` neighbours per item: id and customers who bought both. The similarity is
/// not stored: it is the cosine of the two item vectors the model already holds, so the
/// artifact (read on every cold start) carries no second copy of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Neighbours {
    /// Slots per item.
    pub k: usize,
    /// `n_items * k` neighbour ids, best first, padded with [`NONE`].
    pub ids: Vec<u32>,
    /// Customers who bought both, per slot; a count that does not fit reads `u16::MAX`
    /// here and is kept exactly in `wide`.
    pub shared: Vec<u16>,
    /// `(slot, count)` of every saturated slot of `shared`, sorted by slot.
    pub wide: Vec<(u32, u32)>,
}

/// One neighbour of an item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbour {
    /// Neighbour item index.
    pub id: u32,
    /// Customers who bought both.
    pub shared_buyers: u32,
}

const BLOCK: usize = 512;

impl Neighbours {
    /// Computes the lists from item factors (`n x d`) and who bought what (`item_users`).
    /// Items nobody bought are neither given nor used as neighbours.
    pub fn build(item_factors: &[f32], d: usize, item_users: &Csr, k: usize) -> Self {
        let n = item_users.nrows();
        let mut unit = item_factors.to_vec();
        let live: Vec<bool> = (0..n).map(|i| item_users.row_len(i) > 0).collect();
        for (i, row) in unit.chunks_mut(d).enumerate() {
            let nr = norm(row);
            if nr > 0.0 && live[i] {
                row.iter_mut().for_each(|v| *v /= nr);
            } else {
                row.fill(0.0);
            }
        }
        let lists: Vec<Vec<(u32, f32)>> = (0..n)
            .collect::<Vec<_>>()
            .par_chunks(BLOCK)
            .flat_map_iter(|rows| {
                let start = rows[0];
                let block = &unit[start * d..(start + rows.len()) * d];
                let mut sims = vec![0f32; rows.len() * n];
                dot_block(block, &unit, d, &mut sims);
                let mut out = Vec::with_capacity(rows.len());
                for (r, &i) in rows.iter().enumerate() {
                    let mut top = TopK::new(k);
                    if live[i] {
                        for (j, &s) in sims[r * n..(r + 1) * n].iter().enumerate() {
                            if j != i && live[j] && s >= top.threshold() {
                                top.push(j as u32, s);
                            }
                        }
                    }
                    out.push(top.into_sorted());
                }
                out.into_iter()
            })
            .collect();
        let mut ids = vec![NONE; n * k];
        let mut counts = vec![0u32; n * k];
        ids.par_chunks_mut(k.max(1))
            .zip(counts.par_chunks_mut(k.max(1)))
            .enumerate()
            .for_each(|(i, (ids, counts))| {
                for (slot, &(j, _)) in lists[i].iter().enumerate() {
                    ids[slot] = j;
                    counts[slot] = intersection(item_users.row(i).0, item_users.row(j as usize).0);
                }
            });
        Self::from_counts(k, ids, &counts)
    }

    /// Lists from ids and exact shared-buyer counts, packed.
    pub fn from_counts(k: usize, ids: Vec<u32>, counts: &[u32]) -> Self {
        let wide = counts
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c >= u32::from(u16::MAX))
            .map(|(s, &c)| (s as u32, c))
            .collect();
        let shared = counts
            .iter()
            .map(|&c| u16::try_from(c).unwrap_or(u16::MAX))
            .collect();
        Self {
            k,
            ids,
            shared,
            wide,
        }
    }

    /// Lists with no neighbours: the shape a model needs when it serves none.
    pub fn empty(n_items: usize) -> Self {
        Self::from_counts(1, vec![NONE; n_items], &vec![0; n_items])
    }

    /// Checks the packed counts agree with each other and with the id lists.
    pub fn validate(&self) -> Result<(), String> {
        if self.shared.len() != self.ids.len() {
            return Err("neighbour ids and shared-buyer counts disagree in length".into());
        }
        let saturated = self.shared.iter().filter(|&&c| c == u16::MAX).count();
        let sorted = self.wide.windows(2).all(|w| w[0].0 < w[1].0);
        let placed = self.wide.iter().all(|&(s, c)| {
            self.shared.get(s as usize) == Some(&u16::MAX) && c >= u32::from(u16::MAX)
        });
        if saturated != self.wide.len() || !sorted || !placed {
            return Err("wide shared-buyer counts do not match their slots".into());
        }
        Ok(())
    }

    fn shared_at(&self, slot: usize) -> u32 {
        match self.shared[slot] {
            u16::MAX => self
                .wide
                .binary_search_by_key(&(slot as u32), |&(s, _)| s)
                .map_or(u32::from(u16::MAX), |p| self.wide[p].1),
            c => u32::from(c),
        }
    }

    /// The neighbours of item `i`, best first.
    pub fn of(&self, i: u32) -> impl Iterator<Item = Neighbour> + '_ {
        let a = i as usize * self.k;
        let b = (a + self.k).min(self.ids.len());
        let a = a.min(b);
        (a..b)
            .filter(|&s| self.ids[s] != NONE)
            .map(move |s| Neighbour {
                id: self.ids[s],
                shared_buyers: self.shared_at(s),
            })
    }

    /// Number of items covered.
    pub fn n_items(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }
}

/// Size of the intersection of two sorted id lists.
pub fn intersection(a: &[u32], b: &[u32]) -> u32 {
    let (mut x, mut y, mut n) = (0, 0, 0u32);
    while x < a.len() && y < b.len() {
        match a[x].cmp(&b[y]) {
            std::cmp::Ordering::Less => x += 1,
            std::cmp::Ordering::Greater => y += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                x += 1;
                y += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follow_cosine_and_count_shared_buyers() {
        // Items 0 and 1 point the same way, 2 is orthogonal, 3 was never bought.
        let f = [1.0, 0.0, 2.0, 0.1, 0.0, 1.0, 1.0, 0.0];
        // Rows are items, columns customers: item 0 bought by {0, 1, 2}, item 1 by {0, 1}.
        let users = Csr::from_triplets(
            4,
            3,
            &[
                (0, 0, 1.0),
                (0, 1, 1.0),
                (0, 2, 1.0),
                (1, 0, 1.0),
                (1, 1, 1.0),
                (2, 2, 1.0),
            ],
        );
        let n = Neighbours::build(&f, 2, &users, 2);
        let first: Vec<Neighbour> = n.of(0).collect();
        assert_eq!(first[0].id, 1);
        assert_eq!(first[0].shared_buyers, 2);
        assert_eq!(first[1].id, 2);
        assert_eq!(n.of(3).count(), 0, "never-bought item gets no list");
        assert!(
            n.of(1).all(|x| x.id != 3),
            "never-bought item is never a neighbour"
        );
    }

    #[test]
    fn counts_past_u16_are_kept_exactly() {
        let counts = [3, 65_534, 65_535, 70_000, 0, 4_000_000_000];
        let n = Neighbours::from_counts(3, vec![1, 2, 3, 0, NONE, 2], &counts);
        assert_eq!(n.wide, vec![(2, 65_535), (3, 70_000), (5, 4_000_000_000)]);
        n.validate().unwrap();
        let got: Vec<u32> = (0..2)
            .flat_map(|i| n.of(i))
            .map(|x| x.shared_buyers)
            .collect();
        assert_eq!(got, vec![3, 65_534, 65_535, 70_000, 4_000_000_000]);
        let mut broken = n.clone();
        broken.wide.pop();
        assert!(broken.validate().is_err());
        let mut broken = n;
        broken.wide[0].0 = 0;
        assert!(broken.validate().is_err());
    }

    #[test]
    fn intersection_counts() {
        assert_eq!(intersection(&[1, 3, 5, 7], &[3, 4, 5]), 2);
        assert_eq!(intersection(&[], &[1]), 0);
    }
}
