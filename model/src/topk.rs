//! Bounded top-k selection shared by the scorers: keeps the k best `(score, id)` pairs
//! with ties broken towards the lower id, so every ranking is deterministic.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A scored id ordered so that the heap's top is the *worst* kept entry.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    score: f32,
    id: u32,
}

impl Eq for Entry {}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reverse score (min-heap on score); among equal scores the higher id is worse.
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Collects the best `k` ids by score.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    /// An empty collector for `k` results.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The score an id must beat to enter, once full.
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |e| e.score)
        }
    }

    /// Offers one candidate; NaN scores are ignored.
    #[inline]
    pub fn push(&mut self, id: u32, score: f32) {
        if self.k == 0 || score.is_nan() {
            return;
        }
        let e = Entry { score, id };
        if self.heap.len() < self.k {
            self.heap.push(e);
        } else if let Some(worst) = self.heap.peek()
            && e.cmp(worst) == Ordering::Less
        {
            self.heap.pop();
            self.heap.push(e);
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<(u32, f32)> {
        let mut v: Vec<Entry> = self.heap.into_vec();
        v.sort_unstable();
        v.into_iter().map(|e| (e.id, e.score)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_with_deterministic_ties() {
        let mut t = TopK::new(3);
        for (id, s) in [
            (5, 1.0),
            (1, 3.0),
            (2, 1.0),
            (9, 2.0),
            (0, 1.0),
            (7, f32::NAN),
        ] {
            t.push(id, s);
        }
        assert_eq!(t.into_sorted(), vec![(1, 3.0), (9, 2.0), (0, 1.0)]);
    }

    #[test]
    fn zero_k_is_empty() {
        let mut t = TopK::new(0);
        t.push(1, 1.0);
        assert!(t.into_sorted().is_empty());
    }
}
