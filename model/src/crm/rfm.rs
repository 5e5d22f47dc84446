//! RFM quintile scores: each of recency, frequency and monetary value scored 1 (worst
//! fifth of the customers) to 5 (best fifth).
//!
//! A customer's score is `1 + floor(5 * worse / n)`, where `worse` counts the customers with
//! a strictly worse value. Ties therefore always share a score (a plain rank cut would
//! split equal customers arbitrarily), and a value shared by most customers (one-time
//! buyers' frequency) lands in the lowest score rather than being spread over several.

use serde::{Deserialize, Serialize};

/// The three scores, 1..=5 each (5 best: most recent, most frequent, highest spend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RfmScore {
    /// Recency score: 5 for the customers who bought most recently.
    pub r: u8,
    /// Frequency score: 5 for the customers with the most purchase periods.
    pub f: u8,
    /// Monetary score: 5 for the customers who spent most.
    pub m: u8,
}

impl RfmScore {
    /// The usual three-digit segment code, e.g. "545".
    pub fn code(&self) -> String {
        format!("{}{}{}", self.r, self.f, self.m)
    }
}

/// Quintile score (1..=5) of every value; `higher_is_better` says which way is good.
/// Non-finite values are scored 1.
pub fn quintile_scores(values: &[f64], higher_is_better: bool) -> Vec<u8> {
    let n = values.len();
    let key = |v: f64| if higher_is_better { v } else { -v };
    let mut sorted: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| key(v))
        .collect();
    sorted.sort_by(f64::total_cmp);
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return 1;
            }
            let worse = sorted.partition_point(|&s| s < key(v));
            (1 + (5 * worse) / n.max(1)).min(5) as u8
        })
        .collect()
}

/// RFM scores of customers given days since their last purchase, purchase count and spend.
pub fn rfm_scores(days_since_last: &[f64], frequency: &[f64], monetary: &[f64]) -> Vec<RfmScore> {
    let r = quintile_scores(days_since_last, false);
    let f = quintile_scores(frequency, true);
    let m = quintile_scores(monetary, true);
    r.into_iter()
        .zip(f)
        .zip(m)
        .map(|((r, f), m)| RfmScore { r, f, m })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn distinct_values_fall_into_equal_fifths() {
        let v: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let s = quintile_scores(&v, true);
        for k in 1..=5u8 {
            assert_eq!(s.iter().filter(|&&x| x == k).count(), 20);
        }
        assert_eq!(s[0], 1);
        assert_eq!(s[99], 5);
        let s = quintile_scores(&v, false);
        assert_eq!((s[0], s[99]), (5, 1));
    }

    #[test]
    fn ties_share_a_score_and_scores_are_monotone() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let v: Vec<f64> = (0..1000).map(|_| rng.random_range(0..12) as f64).collect();
        let s = quintile_scores(&v, true);
        for i in 0..v.len() {
            for j in 0..v.len() {
                if v[i] == v[j] {
                    assert_eq!(s[i], s[j]);
                }
                if v[i] < v[j] {
                    assert!(s[i] <= s[j]);
                }
            }
        }
        assert!(s.iter().all(|&x| (1..=5).contains(&x)));
        // Mostly-equal values (one-time buyers) all get the lowest score.
        let mut v = vec![1.0; 90];
        v.extend((2..12).map(|i| i as f64));
        let s = quintile_scores(&v, true);
        assert!(s[..90].iter().all(|&x| x == 1));
        assert_eq!(s[99], 5);
    }

    #[test]
    fn code_reads_r_f_m() {
        let days = [1.0, 50.0, 10.0, 20.0, 30.0];
        let freq = [9.0, 1.0, 2.0, 3.0, 4.0];
        let spend = [500.0, 5.0, 50.0, 60.0, 70.0];
        let s = rfm_scores(&days, &freq, &spend);
        assert_eq!(s[0].code(), "555");
        assert_eq!(s[1].code(), "111");
        assert_eq!(s[2].code(), "422");
    }
}
