//! Purchases turned into a weighted customer x item matrix: ids interned, repeat
//! purchases summed, and old purchases decayed so a launch spike long ago does not
//! dominate today's model.

use serde::{Deserialize, Serialize};

use crate::csr::Csr;
use crate::ids::IdMap;
use crate::{Error, Result};

const SECONDS_PER_DAY: f64 = 86_400.0;

/// One purchase (or any positive interaction) as the trainer sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event<'a> {
    /// The retailer's customer id.
    pub customer: &'a str,
    /// The retailer's item id.
    pub item: &'a str,
    /// Units bought; more units mean more confidence.
    pub quantity: f32,
    /// Unix seconds, UTC.
    pub at: i64,
}

/// How purchases are weighted before they become ALS confidences.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Weighting {
    /// Half-life of a purchase's weight in days; `None` keeps every purchase at full weight.
    pub half_life_days: Option<f64>,
}

impl Default for Weighting {
    fn default() -> Self {
        Self {
            half_life_days: Some(180.0),
        }
    }
}

impl Weighting {
    /// Multiplier for a purchase made `age_seconds` before the reference time.
    pub fn decay(&self, age_seconds: i64) -> f32 {
        match self.half_life_days {
            Some(h) if h > 0.0 => {
                let age_days = (age_seconds.max(0) as f64) / SECONDS_PER_DAY;
                0.5f64.powf(age_days / h) as f32
            }
            _ => 1.0,
        }
    }
}

/// The customer x item matrix with everything the trainer and evaluator need.
#[derive(Clone, Debug)]
pub struct Interactions {
    /// Customer ids, row order of `user_items`.
    pub customers: IdMap,
    /// Item ids, column order of `user_items`.
    pub items: IdMap,
    /// Decayed, summed purchase weight per (customer, item).
    pub user_items: Csr,
    /// The same matrix, item-major: who bought each item.
    pub item_users: Csr,
    /// Latest purchase time per stored (customer, item) value, aligned with `user_items.data`.
    pub last_at: Vec<i64>,
    /// Newest purchase time seen (the data watermark), unix seconds.
    pub watermark: i64,
    /// Number of purchase events read.
    pub events: usize,
}

/// Accumulates events; `build` interns, decays and compresses them.
#[derive(Debug, Default)]
pub struct InteractionsBuilder {
    customers: IdMap,
    items: IdMap,
    raw: Vec<(u32, u32, f32, i64)>,
    watermark: i64,
}

impl InteractionsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            watermark: i64::MIN,
            ..Self::default()
        }
    }

    /// Pre-registers an item so it has an index even without purchases (catalog order).
    pub fn add_item(&mut self, item: &str) -> u32 {
        self.items.intern(item)
    }

    /// Adds one event; non-positive or non-finite quantities are refused.
    pub fn push(&mut self, e: Event<'_>) -> Result<()> {
        if !(e.quantity.is_finite() && e.quantity > 0.0) {
            return Err(Error::InvalidParameter {
                name: "quantity",
                reason: format!("must be a positive number, got {}", e.quantity),
            });
        }
        let u = self.customers.intern(e.customer);
        let i = self.items.intern(e.item);
        self.raw.push((u, i, e.quantity, e.at));
        self.watermark = self.watermark.max(e.at);
        Ok(())
    }

    /// Number of events pushed so far.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Decays weights relative to the newest event and builds both orientations.
    pub fn build(self, weighting: &Weighting) -> Result<Interactions> {
        if self.raw.is_empty() {
            return Err(Error::EmptyData("no purchases".into()));
        }
        let reference = self.watermark;
        Ok(assemble(
            self.customers,
            self.items,
            self.raw
                .iter()
                .map(|&(u, i, q, at)| (u, i, q * weighting.decay(reference - at), at)),
            reference,
            self.raw.len(),
        ))
    }
}

/// Sorts `(customer, item, weight, at)` rows into CSR form, summing weights and keeping
/// the newest time per pair.
pub(crate) fn assemble(
    customers: IdMap,
    items: IdMap,
    rows: impl Iterator<Item = (u32, u32, f32, i64)>,
    watermark: i64,
    events: usize,
) -> Interactions {
    let mut rows: Vec<(u32, u32, f32, i64)> = rows.collect();
    rows.sort_unstable_by_key(|&(u, i, _, _)| (u, i));
    let nrows = customers.len();
    let mut indptr = vec![0usize; nrows + 1];
    let mut indices = Vec::with_capacity(rows.len());
    let mut data: Vec<f32> = Vec::with_capacity(rows.len());
    let mut last_at: Vec<i64> = Vec::with_capacity(rows.len());
    let mut prev: Option<(u32, u32)> = None;
    for (u, i, w, at) in rows {
        if prev == Some((u, i)) {
            if let (Some(d), Some(t)) = (data.last_mut(), last_at.last_mut()) {
                *d += w;
                *t = (*t).max(at);
            }
            continue;
        }
        prev = Some((u, i));
        indices.push(i);
        data.push(w);
        last_at.push(at);
        indptr[u as usize + 1] = indices.len();
    }
    // Rows without entries inherit the previous end.
    for r in 0..nrows {
        indptr[r + 1] = indptr[r + 1].max(indptr[r]);
    }
    let user_items = Csr {
        indptr,
        indices,
        data,
        ncols: items.len(),
    };
    let item_users = user_items.transpose();
    Interactions {
        customers,
        items,
        user_items,
        item_users,
        last_at,
        watermark,
        events,
    }
}

impl Interactions {
    /// Number of customers (rows).
    pub fn n_customers(&self) -> usize {
        self.customers.len()
    }

    /// Number of items (columns).
    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// Number of distinct (customer, item) pairs.
    pub fn nnz(&self) -> usize {
        self.user_items.nnz()
    }

    /// Keeps only the stored pairs for which `keep(row, position in row data)` is true,
    /// with the same id maps: the basis of holdout splits.
    pub fn filter_pairs(&self, mut keep: impl FnMut(usize, usize) -> bool) -> Interactions {
        let mut rows = Vec::with_capacity(self.nnz());
        for u in 0..self.n_customers() {
            let (a, b) = (self.user_items.indptr[u], self.user_items.indptr[u + 1]);
            for k in a..b {
                if keep(u, k) {
                    rows.push((
                        u as u32,
                        self.user_items.indices[k],
                        self.user_items.data[k],
                        self.last_at[k],
                    ));
                }
            }
        }
        let events = rows.len();
        assemble(
            self.customers.clone(),
            self.items.clone(),
            rows.into_iter(),
            self.watermark,
            events,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(c: &'a str, i: &'a str, q: f32, at: i64) -> Event<'a> {
        Event {
            customer: c,
            item: i,
            quantity: q,
            at,
        }
    }

    #[test]
    fn repeat_purchases_sum_and_decay() {
        let day = 86_400;
        let mut b = InteractionsBuilder::new();
        b.push(ev("c1", "i1", 1.0, 0)).unwrap();
        b.push(ev("c1", "i1", 2.0, 10 * day)).unwrap();
        b.push(ev("c2", "i2", 1.0, 20 * day)).unwrap();
        let m = b
            .build(&Weighting {
                half_life_days: Some(10.0),
            })
            .unwrap();
        assert_eq!(m.watermark, 20 * day);
        let (cols, vals) = m.user_items.row(0);
        assert_eq!(cols, &[0]);
        // 1 unit two half-lives old + 2 units one half-life old = 0.25 + 1.0.
        assert!((vals[0] - 1.25).abs() < 1e-5, "{}", vals[0]);
        assert_eq!(m.last_at[0], 10 * day);
        assert_eq!(m.item_users.row(1).0, &[1]);
    }

    #[test]
    fn bad_quantities_are_refused() {
        let mut b = InteractionsBuilder::new();
        assert!(b.push(ev("c", "i", 0.0, 0)).is_err());
        assert!(b.push(ev("c", "i", f32::NAN, 0)).is_err());
        assert!(b.build(&Weighting::default()).is_err());
    }

    #[test]
    fn filter_keeps_ids_and_drops_pairs() {
        let mut b = InteractionsBuilder::new();
        for (c, i) in [("a", "x"), ("a", "y"), ("b", "y")] {
            b.push(ev(c, i, 1.0, 0)).unwrap();
        }
        let m = b
            .build(&Weighting {
                half_life_days: None,
            })
            .unwrap();
        let f = m.filter_pairs(|u, _| u == 1);
        assert_eq!(f.n_items(), 2);
        assert_eq!(f.nnz(), 1);
        assert_eq!(f.user_items.row_len(0), 0);
    }
}
