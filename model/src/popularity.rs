//! Time-decayed popularity, overall and per category: the cold-start answer for new
//! customers and unknown items, so a storefront never shows an empty slot.

use serde::{Deserialize, Serialize};

use crate::csr::Csr;

/// Popularity scores and the items ranked by them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Popularity {
    /// Decayed purchase weight per item.
    pub score: Vec<f32>,
    /// Items with a positive score, most popular first.
    pub order: Vec<u32>,
    /// Per category (index into the model's category list), most popular first.
    pub by_category: Vec<Vec<u32>>,
}

impl Popularity {
    /// Sums each item's decayed weights; `item_category[i]` is a category index or `None`.
    pub fn build(item_users: &Csr, item_category: &[Option<u32>], n_categories: usize) -> Self {
        let n = item_users.nrows();
        let score: Vec<f32> = (0..n).map(|i| item_users.row(i).1.iter().sum()).collect();
        let mut order: Vec<u32> = (0..n as u32).filter(|&i| score[i as usize] > 0.0).collect();
        order.sort_by(|&a, &b| {
            score[b as usize]
                .total_cmp(&score[a as usize])
                .then(a.cmp(&b))
        });
        Self::from_order(score, order, item_category, n_categories)
    }

    /// Rebuilds the per-category lists from the overall order (what an artifact stores).
    pub fn from_order(
        score: Vec<f32>,
        order: Vec<u32>,
        item_category: &[Option<u32>],
        n_categories: usize,
    ) -> Self {
        let mut by_category = vec![Vec::new(); n_categories];
        for &i in &order {
            if let Some(list) = item_category
                .get(i as usize)
                .copied()
                .flatten()
                .and_then(|c| by_category.get_mut(c as usize))
            {
                list.push(i);
            }
        }
        Self {
            score,
            order,
            by_category,
        }
    }

    /// The most popular items of a category, or overall when `category` is `None`.
    pub fn ranked(&self, category: Option<u32>) -> &[u32] {
        match category {
            Some(c) => self
                .by_category
                .get(c as usize)
                .map_or(&[], |v| v.as_slice()),
            None => &self.order,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_overall_and_within_category() {
        // Rows are items, columns customers.
        let m = Csr::from_triplets(4, 3, &[(0, 0, 1.0), (0, 1, 2.0), (1, 2, 5.0), (3, 0, 0.5)]);
        let p = Popularity::build(&m, &[Some(0), Some(1), None, Some(1)], 2);
        assert_eq!(p.order, vec![1, 0, 3]);
        assert_eq!(p.ranked(Some(1)), &[1, 3]);
        assert_eq!(p.ranked(Some(0)), &[0]);
        assert!(p.ranked(Some(9)).is_empty());
    }
}
