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

/// Rows of `k` neighbours per item: id, cosine similarity, customers who bought both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Neighbours {
    /// Slots per item.
    pub k: usize,
    /// `n_items * k` neighbour ids, best first, padded with [`NONE`].
    pub ids: Vec<u32>,
    /// Cosine similarity of the item embeddings.
    pub scores: Vec<f32>,
    /// Customers who bought both items.
    pub shared: Vec<u32>,
}

/// One neighbour of an item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbour {
    /// Neighbour item index.
    pub id: u32,
    /// Cosine similarity of embeddings.
    pub similarity: f32,
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
        let mut scores = vec![0f32; n * k];
        let mut shared = vec![0u32; n * k];
        ids.par_chunks_mut(k.max(1))
            .zip(scores.par_chunks_mut(k.max(1)))
            .zip(shared.par_chunks_mut(k.max(1)))
            .enumerate()
            .for_each(|(i, ((ids, scores), shared))| {
                for (slot, &(j, s)) in lists[i].iter().enumerate() {
                    ids[slot] = j;
                    scores[slot] = s;
                    shared[slot] = intersection(item_users.row(i).0, item_users.row(j as usize).0);
                }
            });
        Self {
            k,
            ids,
            scores,
            shared,
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
                similarity: self.scores[s],
                shared_buyers: self.shared[s],
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
        assert!(first[0].similarity > 0.99);
        assert_eq!(first[1].id, 2);
        assert_eq!(n.of(3).count(), 0, "never-bought item gets no list");
        assert!(
            n.of(1).all(|x| x.id != 3),
            "never-bought item is never a neighbour"
        );
    }

    #[test]
    fn intersection_counts() {
        assert_eq!(intersection(&[1, 3, 5, 7], &[3, 4, 5]), 2);
        assert_eq!(intersection(&[], &[1]), 0);
    }
}
