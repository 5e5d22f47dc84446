//! Bounded top-k selection shared by the scorers: keeps the k best `(score, id)` pairs
//! with ties broken towards the lower id, so every ranking is deterministic.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A scored id ordered so that "greater" means "worse": higher score wins, then lower id.
/// `BinaryHeap<Entry>` therefore keeps the worst kept entry on top, ready to be evicted.
#[derive(Clone, Copy, Debug)]
struct Entry {
    score: f32,
    id: u32,
}

impl Entry {
    #[inline]
    fn better_than(&self, other: &Entry) -> bool {
        self.score > other.score || (self.score == other.score && self.id < other.id)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl Ord for Entry {
    // Total because NaN scores never get in (see `TopK::push`).
    fn cmp(&self, other: &Self) -> Ordering {
        if self.better_than(other) {
            Ordering::Less
        } else if other.better_than(self) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Collects the best `k` ids by score: one heap for ALS scoring, neighbours, evaluation and
/// both vector indexes, so every ranking in the crate breaks ties the same way.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    /// An empty collector; callers clamp `k` to the candidate count so the allocation is bounded.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1)),
        }
    }

    /// The score an id must beat to enter once full; `-inf` while still filling.
    /// Valid as a strict `>` cut only for scans in ascending id order (ties go to lower ids).
    #[inline]
    pub fn threshold(&self) -> f32 {
        match self.heap.peek() {
            Some(worst) if self.heap.len() >= self.k => worst.score,
            _ => f32::NEG_INFINITY,
        }
    }

    /// True once `k` entries are held, i.e. [`TopK::threshold`] is a real score.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.heap.len() >= self.k
    }

    /// Offers one candidate; NaN and `-inf` (the "excluded" score) are refused.
    #[inline]
    pub fn push(&mut self, id: u32, score: f32) {
        if self.k == 0 || score.is_nan() || score == f32::NEG_INFINITY {
            return;
        }
        let candidate = Entry { score, id };
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && candidate.better_than(&worst)
        {
            *worst = candidate;
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<(u32, f32)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|e| (e.id, e.score))
            .collect()
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
            (3, f32::NEG_INFINITY),
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
