//! Typical repurchase interval per item or category, and "due to buy again".
//!
//! For every customer and key (an item, or a category), the distinct purchase days are
//! sorted and the gaps between consecutive ones collected; the key's typical interval is
//! the median gap over all customers (the median, because a few lapsed customers' long
//! gaps would drag a mean far out). A key needs `min_gaps` gaps from at least
//! `min_customers` customers, otherwise it has no typical interval (one customer's habit is
//! not a pattern). A customer is *due* for a key when the time since their last purchase of
//! it is between `due_from` and `due_until` times the typical interval: early enough that
//! they have not bought elsewhere for good, late enough that a reminder is timely.

use std::collections::HashMap;
use std::hash::Hash;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

const DAY: i64 = 86_400;

/// Thresholds for intervals and due windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RepurchaseConfig {
    /// Gaps needed before a key gets a typical interval.
    pub min_gaps: u32,
    /// Distinct customers those gaps must come from.
    pub min_customers: u32,
    /// Due from this multiple of the typical interval (e.g. 0.8).
    pub due_from: f64,
    /// Due until this multiple (e.g. 3.0); later the customer has likely moved on.
    pub due_until: f64,
}

impl Default for RepurchaseConfig {
    fn default() -> Self {
        Self {
            min_gaps: 3,
            min_customers: 2,
            due_from: 0.8,
            due_until: 3.0,
        }
    }
}

/// A key's typical repurchase interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Median gap between repurchases, in days.
    pub median_days: f64,
    /// Number of gaps observed.
    pub gaps: u32,
    /// Customers who repurchased.
    pub customers: u32,
}

/// A customer being due for a key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Due {
    /// Days since their last purchase of the key.
    pub days_since: f64,
    /// The key's typical interval in days.
    pub typical_days: f64,
}

/// Typical intervals from `(customer, key, unix seconds)` triples.
pub fn intervals<C, K>(
    purchases: impl IntoIterator<Item = (C, K, i64)>,
    config: &RepurchaseConfig,
) -> HashMap<K, Interval>
where
    C: Ord + Copy + Send,
    K: Ord + Hash + Copy + Send,
{
    // One sorted list of (key, customer, day) instead of a list per (customer, key): the
    // retrain computes this over every purchase, tens of millions of them.
    let mut rows: Vec<(K, C, i64)> = purchases
        .into_iter()
        .map(|(c, k, at)| (k, c, at.div_euclid(DAY)))
        .collect();
    rows.par_sort_unstable();
    rows.dedup();
    let mut out = HashMap::new();
    for of_key in rows.chunk_by(|a, b| a.0 == b.0) {
        let mut gaps: Vec<f64> = Vec::new();
        let mut customers = 0u32;
        for days in of_key.chunk_by(|a, b| a.1 == b.1) {
            if days.len() < 2 {
                continue;
            }
            gaps.extend(days.windows(2).map(|w| (w[1].2 - w[0].2) as f64));
            customers += 1;
        }
        if (gaps.len() as u32) < config.min_gaps || customers < config.min_customers {
            continue;
        }
        gaps.sort_by(f64::total_cmp);
        let n = gaps.len();
        let median = if n % 2 == 1 {
            gaps[n / 2]
        } else {
            (gaps[n / 2 - 1] + gaps[n / 2]) / 2.0
        };
        out.insert(
            of_key[0].0,
            Interval {
                median_days: median,
                gaps: n as u32,
                customers,
            },
        );
    }
    out
}

/// Whether a customer whose last purchase of a key was at `last` is due at `now`.
pub fn due(last: i64, now: i64, interval: &Interval, config: &RepurchaseConfig) -> Option<Due> {
    let days_since = (now - last) as f64 / DAY as f64;
    let ratio = days_since / interval.median_days.max(1.0);
    (ratio >= config.due_from && ratio <= config.due_until).then_some(Due {
        days_since,
        typical_days: interval.median_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_gap_over_customers_and_same_day_counts_once() {
        let d = |n: i64| n * DAY;
        let p = vec![
            ("a", "coffee", d(0)),
            ("a", "coffee", d(0) + 100), // same day
            ("a", "coffee", d(10)),
            ("a", "coffee", d(20)),
            ("b", "coffee", d(5)),
            ("b", "coffee", d(17)),
            ("c", "coffee", d(3)), // single purchase: no gap
            ("a", "tv", d(1)),
            ("a", "tv", d(400)),
        ];
        let iv = intervals(p, &RepurchaseConfig::default());
        let c = iv["coffee"];
        assert_eq!((c.median_days, c.gaps, c.customers), (10.0, 3, 2));
        assert!(!iv.contains_key("tv"), "one customer, one gap: no pattern");
    }

    #[test]
    fn due_window() {
        let iv = Interval {
            median_days: 10.0,
            gaps: 5,
            customers: 3,
        };
        let cfg = RepurchaseConfig::default();
        assert!(due(0, 5 * DAY, &iv, &cfg).is_none());
        assert_eq!(due(0, 9 * DAY, &iv, &cfg).map(|d| d.days_since), Some(9.0));
        assert!(due(0, 30 * DAY, &iv, &cfg).is_some());
        assert!(due(0, 31 * DAY, &iv, &cfg).is_none());
    }
}
