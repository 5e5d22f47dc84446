//! Offline evaluation: per-customer holdouts (random or latest purchases), full
//! ranking over every item, and the usual top-k metrics, so model versions and
//! baselines are compared on the same footing.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::interactions::Interactions;
use crate::topk::TopK;

/// Which of a customer's purchases are held out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Holdout {
    /// A seeded random fraction of each customer's items (at least one).
    Random {
        /// Share held out.
        fraction: f64,
        /// Shuffle seed.
        seed: u64,
    },
    /// Each customer's most recently bought items (at least one).
    Latest {
        /// Share held out.
        fraction: f64,
    },
    /// Every item a customer bought after `at` (Unix seconds), all but one at most: a
    /// model trained on data up to `at` is then judged only on purchases it never saw.
    Since {
        /// The cut, e.g. the serving model's data watermark.
        at: i64,
    },
}

/// Training data with the held-out items removed, and those items per customer.
#[derive(Clone, Debug)]
pub struct Split {
    /// What the model may learn from (same id maps as the full data).
    pub train: Interactions,
    /// Held-out item indices per customer row (empty when none).
    pub test: Vec<Vec<u32>>,
}

/// Splits `data` per customer; customers with a single item keep it in train.
pub fn split(data: &Interactions, holdout: Holdout) -> Split {
    split_selected(data, holdout, &|_| true)
}

/// Like [`split`], but holds out items of at most `max_customers` customers (a seeded
/// sample of those with two or more items); the others keep everything in train. Full
/// ranking costs customers x items, so a large shop's promotion gate scores a sample.
pub fn split_sample(
    data: &Interactions,
    holdout: Holdout,
    max_customers: usize,
    seed: u64,
) -> Split {
    let m = &data.user_items;
    let mut eligible: Vec<usize> = (0..data.n_customers())
        .filter(|&u| {
            let (a, b) = (m.indptr[u], m.indptr[u + 1]);
            b - a >= 2
                && match holdout {
                    Holdout::Since { at } => data.last_at[a..b].iter().any(|&t| t > at),
                    _ => true,
                }
        })
        .collect();
    if eligible.len() <= max_customers {
        return split(data, holdout);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (chosen, _) = eligible.partial_shuffle(&mut rng, max_customers);
    let mut selected = vec![false; data.n_customers()];
    for &u in chosen.iter() {
        selected[u] = true;
    }
    split_selected(data, holdout, &|u| selected[u])
}

fn split_selected(
    data: &Interactions,
    holdout: Holdout,
    selected: &dyn Fn(usize) -> bool,
) -> Split {
    let n = data.n_customers();
    let m = &data.user_items;
    let mut held = vec![false; m.nnz()];
    let mut test = vec![Vec::new(); n];
    let mut rng = match holdout {
        Holdout::Random { seed, .. } => Some(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        Holdout::Latest { .. } | Holdout::Since { .. } => None,
    };
    for (u, t) in test.iter_mut().enumerate() {
        let (a, b) = (m.indptr[u], m.indptr[u + 1]);
        let len = b - a;
        if len < 2 || !selected(u) {
            continue;
        }
        let count = match holdout {
            Holdout::Random { fraction, .. } | Holdout::Latest { fraction } => {
                ((fraction * len as f64).round() as usize).clamp(1, len - 1)
            }
            Holdout::Since { at } => data.last_at[a..b]
                .iter()
                .filter(|&&t| t > at)
                .count()
                .min(len - 1),
        };
        if count == 0 {
            continue;
        }
        let mut pos: Vec<usize> = (a..b).collect();
        match rng.as_mut() {
            Some(r) => pos.shuffle(r),
            None => pos.sort_by_key(|&k| (std::cmp::Reverse(data.last_at[k]), m.indices[k])),
        }
        for &k in &pos[..count] {
            held[k] = true;
            t.push(m.indices[k]);
        }
        t.sort_unstable();
    }
    let train = data.filter_pairs(|_, k| !held[k]);
    Split { train, test }
}

/// How the rows of a caller's test file mapped onto a training set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalTest {
    /// Rows given.
    pub rows: usize,
    /// Distinct (customer, item) pairs held out for scoring.
    pub pairs: usize,
    /// Customers with at least one held-out pair.
    pub customers: usize,
    /// Rows whose customer never appears in train: no history to fold in, not scored.
    pub unknown_customer_rows: usize,
    /// Rows whose item never appears in train: kept, and always a miss (no model can rank
    /// an item it has never seen), so recall is not flattered.
    pub unknown_item_rows: usize,
    /// Rows the customer also has in train: excluded from ranking, so dropped.
    pub in_train_rows: usize,
    /// Repeated (customer, item) rows beyond the first.
    pub duplicate_rows: usize,
}

/// A split from the caller's own train and test data (`affinity eval`): `train` as is, and
/// the test pairs mapped onto its ids. Unseen items get ids past the catalogue, so they
/// count in the recall denominator and can never be hit.
pub fn split_from_pairs<'a>(
    train: &Interactions,
    test: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (Split, ExternalTest) {
    let n = train.n_items() as u32;
    let mut unknown_items: std::collections::HashMap<&'a str, u32> = Default::default();
    let mut held = vec![Vec::new(); train.n_customers()];
    let mut stats = ExternalTest::default();
    for (customer, item) in test {
        stats.rows += 1;
        let Some(u) = train.customers.get(customer) else {
            stats.unknown_customer_rows += 1;
            continue;
        };
        let i = match train.items.get(item) {
            Some(i) => {
                if train.user_items.row(u as usize).0.binary_search(&i).is_ok() {
                    stats.in_train_rows += 1;
                    continue;
                }
                i
            }
            None => {
                stats.unknown_item_rows += 1;
                let next = n.saturating_add(unknown_items.len() as u32);
                *unknown_items.entry(item).or_insert(next)
            }
        };
        held[u as usize].push(i);
    }
    for t in &mut held {
        let before = t.len();
        t.sort_unstable();
        t.dedup();
        stats.duplicate_rows += before - t.len();
        stats.pairs += t.len();
        stats.customers += usize::from(!t.is_empty());
    }
    (
        Split {
            train: train.clone(),
            test: held,
        },
        stats,
    )
}

/// Top-k metrics averaged over customers with at least one held-out item.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Cut-off.
    pub k: usize,
    /// Hits / held-out items, averaged over customers.
    pub recall: f64,
    /// Binary NDCG@k.
    pub ndcg: f64,
    /// Share of customers with at least one hit.
    pub hit_rate: f64,
    /// Hits / k, averaged.
    pub precision: f64,
    /// Distinct recommended items / items that could be recommended.
    pub coverage: f64,
    /// Customers evaluated.
    pub customers: usize,
}

impl Metrics {
    /// Mean of several folds' metrics (customers summed); `None` for no folds.
    pub fn mean(folds: &[Metrics]) -> Option<Metrics> {
        let first = folds.first()?;
        let n = folds.len() as f64;
        let avg = |f: fn(&Metrics) -> f64| folds.iter().map(f).sum::<f64>() / n;
        Some(Metrics {
            k: first.k,
            recall: avg(|m| m.recall),
            ndcg: avg(|m| m.ndcg),
            hit_rate: avg(|m| m.hit_rate),
            precision: avg(|m| m.precision),
            coverage: avg(|m| m.coverage),
            customers: folds.iter().map(|m| m.customers).sum(),
        })
    }
}

/// Scores `recommended[u]` (best first) against `test[u]` (sorted) for every customer
/// with held-out items. `n_candidates` is the size of the rankable catalogue.
pub fn metrics(
    recommended: &[Vec<u32>],
    test: &[Vec<u32>],
    k: usize,
    n_candidates: usize,
) -> Metrics {
    let mut out = Metrics {
        k,
        ..Metrics::default()
    };
    let mut seen = vec![false; n_candidates.max(1)];
    let mut distinct = 0usize;
    for (recs, truth) in recommended.iter().zip(test) {
        if truth.is_empty() {
            continue;
        }
        out.customers += 1;
        let mut hits = 0usize;
        let mut dcg = 0.0f64;
        for (rank, &i) in recs.iter().take(k).enumerate() {
            if let Some(s) = seen.get_mut(i as usize)
                && !*s
            {
                *s = true;
                distinct += 1;
            }
            if truth.binary_search(&i).is_ok() {
                hits += 1;
                dcg += 1.0 / ((rank + 2) as f64).log2();
            }
        }
        let idcg: f64 = (0..truth.len().min(k))
            .map(|r| 1.0 / ((r + 2) as f64).log2())
            .sum();
        out.recall += hits as f64 / truth.len() as f64;
        out.ndcg += dcg / idcg;
        out.precision += hits as f64 / k as f64;
        out.hit_rate += if hits > 0 { 1.0 } else { 0.0 };
    }
    if out.customers > 0 {
        let n = out.customers as f64;
        out.recall /= n;
        out.ndcg /= n;
        out.precision /= n;
        out.hit_rate /= n;
    }
    out.coverage = distinct as f64 / n_candidates.max(1) as f64;
    out
}

/// Customers scored together in one dense block (one gemm per block).
const RANK_BLOCK: usize = 256;

/// Full ranking: for each customer row with held-out items, scores every item with
/// `score_block(rows, out)` (dense `rows.len() x n_items`, row-major), skips the
/// customer's training items and non-candidates, and keeps the top `k`.
pub fn rank_all(
    train: &Interactions,
    test: &[Vec<u32>],
    candidates: &[bool],
    k: usize,
    score_block: &(dyn Fn(&[usize], &mut [f32]) + Sync),
) -> Vec<Vec<u32>> {
    let n_items = train.n_items();
    let rows: Vec<usize> = (0..train.n_customers())
        .filter(|&u| test.get(u).is_some_and(|t| !t.is_empty()))
        .collect();
    let mut out = vec![Vec::new(); train.n_customers()];
    let ranked: Vec<Vec<Vec<u32>>> = rows
        .par_chunks(RANK_BLOCK)
        .map(|block| {
            let mut scores = vec![0f32; block.len() * n_items];
            score_block(block, &mut scores);
            block
                .iter()
                .zip(scores.chunks_mut(n_items.max(1)))
                .map(|(&u, row)| {
                    for &i in train.user_items.row(u).0 {
                        row[i as usize] = f32::NEG_INFINITY;
                    }
                    let mut top = TopK::new(k);
                    for (i, &s) in row.iter().enumerate() {
                        if candidates[i] && s > f32::NEG_INFINITY && s >= top.threshold() {
                            top.push(i as u32, s);
                        }
                    }
                    top.into_sorted().into_iter().map(|(i, _)| i).collect()
                })
                .collect()
        })
        .collect();
    for (block, lists) in rows.chunks(RANK_BLOCK).zip(ranked) {
        for (&u, list) in block.iter().zip(lists) {
            out[u] = list;
        }
    }
    out
}

/// Dense scores `users (b x d) . items^T` into `out` (b x n), through ndarray's gemm.
pub fn dot_block(users: &[f32], items: &[f32], d: usize, out: &mut [f32]) {
    let b = users.len() / d.max(1);
    let n = items.len() / d.max(1);
    let (Ok(u), Ok(it), Ok(mut o)) = (
        ndarray::ArrayView2::from_shape((b, d), users),
        ndarray::ArrayView2::from_shape((n, d), items),
        ndarray::ArrayViewMut2::from_shape((b, n), out),
    ) else {
        return;
    };
    ndarray::linalg::general_mat_mul(1.0, &u, &it.t(), 0.0, &mut o);
}

/// Items with at least one training purchase: the only ones a model can rank honestly.
pub fn trained_items(train: &Interactions) -> Vec<bool> {
    (0..train.n_items())
        .map(|i| train.item_users.row_len(i) > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactions::{Event, InteractionsBuilder, Weighting};

    #[test]
    fn external_test_pairs_map_onto_train_and_unseen_items_are_misses() {
        let train = split(
            &data(),
            Holdout::Random {
                fraction: 0.5,
                seed: 1,
            },
        )
        .train;
        let c0 = train.customers.id(0).to_owned();
        let (bought, _) = train.user_items.row(0);
        let owned = train.items.id(bought[0]).to_owned();
        let other = (0..train.n_items() as u32)
            .find(|i| bought.binary_search(i).is_err())
            .unwrap();
        let other = train.items.id(other).to_owned();
        let rows = vec![
            (c0.as_str(), other.as_str()),
            (c0.as_str(), other.as_str()),
            (c0.as_str(), owned.as_str()),
            (c0.as_str(), "never-sold"),
            ("stranger", other.as_str()),
        ];
        let (split, stats) = split_from_pairs(&train, rows);
        assert_eq!(
            stats,
            ExternalTest {
                rows: 5,
                pairs: 2,
                customers: 1,
                unknown_customer_rows: 1,
                unknown_item_rows: 1,
                in_train_rows: 1,
                duplicate_rows: 1,
            }
        );
        let n = train.n_items() as u32;
        assert_eq!(split.test[0].len(), 2);
        assert!(
            split.test[0].contains(&n),
            "unseen item gets an id past the catalogue"
        );
        // Recommending everything in the catalogue still cannot hit the unseen item.
        let all: Vec<u32> = (0..n).collect();
        let recs: Vec<Vec<u32>> = (0..train.n_customers()).map(|_| all.clone()).collect();
        let m = metrics(&recs, &split.test, all.len(), n as usize);
        assert!((m.recall - 0.5).abs() < 1e-12, "recall {}", m.recall);
    }

    #[test]
    fn mean_of_folds_averages_rates_and_sums_customers() {
        let m = |recall, customers| Metrics {
            k: 10,
            recall,
            ndcg: recall / 2.0,
            hit_rate: 1.0,
            precision: 0.5,
            coverage: 0.25,
            customers,
        };
        let avg = Metrics::mean(&[m(0.2, 10), m(0.4, 30)]).unwrap();
        assert!((avg.recall - 0.3).abs() < 1e-12);
        assert!((avg.ndcg - 0.15).abs() < 1e-12);
        assert_eq!(avg.customers, 40);
        assert_eq!(avg.k, 10);
        assert!(Metrics::mean(&[]).is_none());
    }

    fn data() -> Interactions {
        let mut b = InteractionsBuilder::new();
        for c in 0..10 {
            for i in 0..10 {
                b.push(Event {
                    customer: &format!("c{c}"),
                    item: &format!("i{i}"),
                    quantity: 1.0,
                    at: (c * 100 + i) as i64,
                })
                .unwrap();
            }
        }
        b.build(&Weighting {
            half_life_days: None,
        })
        .unwrap()
    }

    #[test]
    fn random_split_holds_out_a_fifth_and_is_seeded() {
        let d = data();
        let s = split(
            &d,
            Holdout::Random {
                fraction: 0.2,
                seed: 42,
            },
        );
        assert!(s.test.iter().all(|t| t.len() == 2));
        assert_eq!(s.train.nnz(), 80);
        let again = split(
            &d,
            Holdout::Random {
                fraction: 0.2,
                seed: 42,
            },
        );
        assert_eq!(s.test, again.test);
        for (u, t) in s.test.iter().enumerate() {
            for i in t {
                assert!(!s.train.user_items.row(u).0.contains(i));
            }
        }
    }

    #[test]
    fn latest_split_takes_newest() {
        let d = data();
        let s = split(&d, Holdout::Latest { fraction: 0.1 });
        assert!(
            s.test
                .iter()
                .all(|t| t == &vec![d.items.get("i9").unwrap()])
        );
    }

    #[test]
    fn since_split_holds_out_what_came_after_the_cut() {
        let d = data();
        // Customer c bought item i at c * 100 + i: after 505, customer 5 bought i6..i9,
        // customers 6..9 bought everything (all but their oldest item are held out).
        let s = split(&d, Holdout::Since { at: 505 });
        for (u, t) in s.test.iter().enumerate() {
            let c: i64 = d.customers.id(u as u32)[1..].parse().unwrap();
            let expected = match c {
                0..=4 => 0,
                5 => 4,
                _ => 9,
            };
            assert_eq!(t.len(), expected, "customer {c}");
        }
        let sampled = split_sample(&d, Holdout::Since { at: 505 }, 2, 1);
        assert_eq!(sampled.test.iter().filter(|t| !t.is_empty()).count(), 2);
    }

    #[test]
    fn sampled_split_holds_out_only_for_the_sample() {
        let d = data();
        let s = split_sample(&d, Holdout::Latest { fraction: 0.1 }, 4, 3);
        assert_eq!(s.test.iter().filter(|t| !t.is_empty()).count(), 4);
        assert_eq!(s.train.nnz(), 96);
        assert_eq!(
            s.test,
            split_sample(&d, Holdout::Latest { fraction: 0.1 }, 4, 3).test
        );
        let all = split_sample(&d, Holdout::Latest { fraction: 0.1 }, 100, 3);
        assert_eq!(all.test, split(&d, Holdout::Latest { fraction: 0.1 }).test);
    }

    #[test]
    fn dot_block_is_a_matrix_product() {
        let users = [1.0, 0.0, 0.0, 2.0]; // 2 x 2
        let items = [1.0, 1.0, 3.0, -1.0, 0.5, 0.5]; // 3 x 2
        let mut out = [0.0; 6];
        dot_block(&users, &items, 2, &mut out);
        assert_eq!(out, [1.0, 3.0, 0.5, 2.0, -2.0, 1.0]);
    }

    #[test]
    fn metrics_follow_their_definitions() {
        // Customer 0: test {1, 2, 3}, recommended [1, 9, 3] at k = 3.
        let m = metrics(&[vec![1, 9, 3], vec![]], &[vec![1, 2, 3], vec![]], 3, 10);
        assert_eq!(m.customers, 1);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((m.ndcg - dcg / idcg).abs() < 1e-12);
        assert_eq!(m.hit_rate, 1.0);
        assert!((m.coverage - 0.3).abs() < 1e-12);
    }

    #[test]
    fn rank_all_excludes_training_items() {
        let d = data();
        let s = split(
            &d,
            Holdout::Random {
                fraction: 0.2,
                seed: 1,
            },
        );
        let cands = trained_items(&s.train);
        let n = s.train.n_items();
        let recs = rank_all(&s.train, &s.test, &cands, 5, &|rows, out| {
            for (k, o) in out.iter_mut().enumerate() {
                *o = (k % n) as f32;
            }
            assert_eq!(out.len(), rows.len() * n);
        });
        for (u, r) in recs.iter().enumerate() {
            assert_eq!(r.len(), 2, "only the two held-out items are left to rank");
            assert_eq!(r, &s.test[u].iter().rev().copied().collect::<Vec<_>>());
        }
    }
}
