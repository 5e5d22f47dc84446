//! Implicit-feedback ALS (Hu, Koren, Volinsky 2008) solved with a few warm-started
//! conjugate-gradient steps per row (Takacs, Pilaszy, Tikk 2011), so one iteration
//! costs O(nnz * d + rows * d^2) instead of a d^3 solve per row.

use rand::SeedableRng;
use rand_distr_free::normal_vec;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csr::Csr;
use crate::interactions::Interactions;
use crate::linalg::{axpy, dot, gram, symv};
use crate::{Error, Result};

/// How a purchase weight `w` becomes a confidence `c = 1 + alpha * f(w)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Confidence {
    /// `f(w) = w`: the paper's linear scaling.
    Linear,
    /// `f(w) = ln(1 + w / eps)`: damps heavy repeat buyers.
    Log {
        /// Scale of the weight.
        eps: f32,
    },
}

impl Confidence {
    /// `c - 1` for a stored weight, divided by alpha.
    #[inline]
    pub fn scaled(&self, w: f32) -> f32 {
        match *self {
            Confidence::Linear => w,
            Confidence::Log { eps } => (1.0 + w / eps).ln(),
        }
    }
}

/// Training parameters, recorded in every artifact manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlsParams {
    /// Embedding dimension.
    pub factors: usize,
    /// L2 regularisation added to the Gram matrix.
    pub regularization: f32,
    /// Confidence scale alpha.
    pub alpha: f32,
    /// Weight-to-confidence mapping.
    pub confidence: Confidence,
    /// Full alternations (users then items).
    pub iterations: usize,
    /// Frequency scaling of the regulariser (Rendle et al. 2021): a row whose total
    /// confidence is `W` gets `regularization * (W / n_cols)^reg_exponent`; 0 disables.
    #[serde(default)]
    pub reg_exponent: f32,
    /// Popularity weighting of "did not buy" (eALS, He et al. 2016): item `i`'s negative
    /// weight is proportional to `(buyers_i + 1)^neg_exponent`, mean 1; 0 is uniform iALS.
    /// A popular item a customer skipped says more than an obscure one.
    #[serde(default)]
    pub neg_exponent: f32,
    /// Conjugate-gradient steps per row and alternation.
    pub cg_steps: usize,
    /// Standard deviation of the initial factors.
    pub init_std: f32,
    /// Seed of the initial factors; same seed and data give the same model.
    pub seed: u64,
}

impl Default for AlsParams {
    fn default() -> Self {
        Self {
            factors: 64,
            // Strong, count-scaled regularisation with mildly popularity-weighted
            // negatives: what validation picks on MovieLens-100k (docs/BENCHMARKS.md);
            // retrains can tune it per shop.
            regularization: 30.0,
            alpha: 5.0,
            confidence: Confidence::Linear,
            iterations: 15,
            reg_exponent: 1.0,
            neg_exponent: 0.1,
            cg_steps: 3,
            init_std: 0.01,
            seed: 42,
        }
    }
}

impl AlsParams {
    /// Refuses parameters that cannot train a useful model.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidParameter {
                name,
                reason: reason.into(),
            })
        };
        if !(1..=1024).contains(&self.factors) {
            return bad("factors", "must be between 1 and 1024");
        }
        if !(self.regularization.is_finite() && self.regularization >= 0.0) {
            return bad("regularization", "must be a finite number >= 0");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad("alpha", "must be a finite number > 0");
        }
        if let Confidence::Log { eps } = self.confidence
            && !(eps.is_finite() && eps > 0.0)
        {
            return bad("confidence.eps", "must be a finite number > 0");
        }
        if !(self.reg_exponent.is_finite() && (0.0..=2.0).contains(&self.reg_exponent)) {
            return bad("reg_exponent", "must be between 0 and 2");
        }
        if !(self.neg_exponent.is_finite() && (0.0..=1.0).contains(&self.neg_exponent)) {
            return bad("neg_exponent", "must be between 0 and 1");
        }
        if !(1..=1000).contains(&self.iterations) {
            return bad("iterations", "must be between 1 and 1000");
        }
        if !(1..=256).contains(&self.cg_steps) {
            return bad("cg_steps", "must be between 1 and 256");
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return bad("init_std", "must be a finite number > 0");
        }
        Ok(())
    }
}

/// Trained factors, row-major.
#[derive(Clone, Debug)]
pub struct AlsFactors {
    /// Embedding dimension.
    pub factors: usize,
    /// Customers x factors.
    pub user: Vec<f32>,
    /// Items x factors.
    pub item: Vec<f32>,
    /// Per-item weight of "did not buy" (mean 1); fold-in needs it with the item factors.
    pub negative_weights: Vec<f32>,
}

/// Per-item weight of unobserved pairs, `(buyers + 1)^exponent` scaled to mean 1: all ones
/// when `exponent` is 0 (plain implicit ALS).
pub fn negative_weights(item_users: &Csr, exponent: f32) -> Vec<f32> {
    let n = item_users.nrows();
    if exponent == 0.0 || n == 0 {
        return vec![1.0; n];
    }
    let raw: Vec<f64> = (0..n)
        .map(|i| ((item_users.row_len(i) + 1) as f64).powf(f64::from(exponent)))
        .collect();
    let mean = raw.iter().sum::<f64>() / n as f64;
    raw.iter().map(|&w| (w / mean) as f32).collect()
}

/// `Y^T diag(w) Y`: the Gram matrix of the item side under per-item negative weights.
pub fn weighted_gram(y: &[f32], weights: &[f32], d: usize) -> Vec<f32> {
    if weights.iter().all(|&w| w == 1.0) {
        return gram(y, d);
    }
    let scaled: Vec<f32> = y
        .chunks(d)
        .zip(weights)
        .flat_map(|(row, &w)| {
            let s = w.sqrt();
            row.iter().map(move |v| v * s)
        })
        .collect();
    gram(&scaled, d)
}

/// Base confidence of a row's pairs: the weight every pair gets before purchases add theirs.
#[derive(Clone, Copy)]
pub(crate) enum Base<'a> {
    /// One weight for the whole row (an item row under eALS, or uniform iALS).
    Row(f32),
    /// A weight per column (a customer row under eALS: each item's own).
    PerColumn(&'a [f32]),
}

impl Base<'_> {
    #[inline]
    fn at(&self, col: u32) -> f32 {
        match *self {
            Base::Row(w) => w,
            Base::PerColumn(ws) => ws.get(col as usize).copied().unwrap_or(1.0),
        }
    }
}

/// Fits ALS on `data`; `on_iteration(i)` is called after each full alternation.
pub fn fit(
    data: &Interactions,
    params: &AlsParams,
    on_iteration: &(dyn Fn(usize) + Sync),
) -> Result<AlsFactors> {
    // Validated before the random factors are sized by it; `refit` checks the rest.
    params.validate()?;
    let d = params.factors;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
    let start = AlsFactors {
        factors: d,
        user: normal_vec(&mut rng, data.n_customers() * d, params.init_std),
        item: normal_vec(&mut rng, data.n_items() * d, params.init_std),
        negative_weights: Vec::new(),
    };
    refit(data, params, start, params.iterations, on_iteration)
}

/// Continues ALS on `data` from `start` for `iterations` alternations: a model already fitted
/// on nearly the same data (the gate's candidate, which lacks only the holdout) needs a few
/// alternations to take in the rest, not a fit from random factors. `start` must have
/// `data`'s shape (same customer and item index maps) and `params.factors` columns; its
/// negative weights are recomputed from `data`.
pub fn refit(
    data: &Interactions,
    params: &AlsParams,
    start: AlsFactors,
    iterations: usize,
    on_iteration: &(dyn Fn(usize) + Sync),
) -> Result<AlsFactors> {
    params.validate()?;
    if data.nnz() == 0 {
        return Err(Error::EmptyData("no customer bought any item".into()));
    }
    let d = params.factors;
    if start.factors != d
        || start.user.len() != data.n_customers() * d
        || start.item.len() != data.n_items() * d
    {
        return Err(Error::InvalidParameter {
            name: "start",
            reason: format!(
                "factors of shape {} x {} / {} x {} do not fit {} customers and {} items x {d}",
                start.user.len() / start.factors.max(1),
                start.factors,
                start.item.len() / start.factors.max(1),
                start.factors,
                data.n_customers(),
                data.n_items(),
            ),
        });
    }
    let AlsFactors {
        mut user, mut item, ..
    } = start;
    let neg = negative_weights(&data.item_users, params.neg_exponent);
    for it in 0..iterations {
        solve_users(&mut user, &item, &neg, &data.user_items, params);
        solve_items(&mut item, &user, &neg, &data.item_users, params);
        on_iteration(it + 1);
    }
    Ok(AlsFactors {
        factors: d,
        user,
        item,
        negative_weights: neg,
    })
}

/// Customer half-alternation: every customer re-solved against the fixed item factors.
fn solve_users(x: &mut [f32], y: &[f32], neg: &[f32], m: &Csr, params: &AlsParams) {
    let d = params.factors;
    let yty = weighted_gram(y, neg, d);
    x.par_chunks_mut(d).enumerate().for_each_init(
        || Scratch::new(d),
        |s, (r, xr)| {
            let (cols, vals) = m.row(r);
            let reg = row_regularization(params, vals, m.ncols, m.ncols as f32);
            let base = Base::PerColumn(neg);
            let eq = NormalEquations {
                y,
                yty: &yty,
                gscale: 1.0,
                base,
                reg,
                cols,
                vals,
                params,
            };
            cg_solve(xr, &eq, params.cg_steps, s);
        },
    );
}

/// Item half-alternation: item `i`'s unobserved pairs all carry its own negative weight.
fn solve_items(x: &mut [f32], y: &[f32], neg: &[f32], m: &Csr, params: &AlsParams) {
    let d = params.factors;
    let yty = gram(y, d);
    x.par_chunks_mut(d).enumerate().for_each_init(
        || Scratch::new(d),
        |s, (r, xr)| {
            let (cols, vals) = m.row(r);
            let w = neg.get(r).copied().unwrap_or(1.0);
            let reg = row_regularization(params, vals, m.ncols, w * m.ncols as f32);
            let eq = NormalEquations {
                y,
                yty: &yty,
                gscale: w,
                base: Base::Row(w),
                reg,
                cols,
                vals,
                params,
            };
            cg_solve(xr, &eq, params.cg_steps, s);
        },
    );
}

/// The regulariser of one row, scaled by its total confidence when asked for.
/// `base_mass` is the row's total weight on unobserved pairs (`ncols` under uniform iALS).
fn row_regularization(params: &AlsParams, vals: &[f32], ncols: usize, base_mass: f32) -> f32 {
    if params.reg_exponent == 0.0 || ncols == 0 {
        return params.regularization;
    }
    let extra: f32 = vals
        .iter()
        .map(|&w| params.alpha * params.confidence.scaled(w))
        .sum();
    let total = (base_mass + extra) / ncols as f32;
    params.regularization * total.powf(params.reg_exponent)
}

/// Per-thread work vectors of the CG solver.
pub(crate) struct Scratch {
    r: Vec<f32>,
    p: Vec<f32>,
    ap: Vec<f32>,
}

impl Scratch {
    pub(crate) fn new(d: usize) -> Self {
        Self {
            r: vec![0.0; d],
            p: vec![0.0; d],
            ap: vec![0.0; d],
        }
    }
}

/// One row's normal equations, `(g YtY + reg I + sum_i (c_i - b_i) y_i y_i^T) x =
/// sum_i c_i y_i`, where `b_i` is the base (unobserved) weight and `c_i = b_i + alpha f(w_i)`
/// the confidence of a purchased pair: what the trainer and fold-in both solve.
pub(crate) struct NormalEquations<'a> {
    /// The fixed side's factors, row-major.
    pub y: &'a [f32],
    /// Their Gram matrix `YtY`, `d x d`.
    pub yty: &'a [f32],
    /// `g`, the weight of the Gram term.
    pub gscale: f32,
    /// The unobserved weight of each fixed-side row.
    pub base: Base<'a>,
    /// `reg`, this row's regularisation.
    pub reg: f32,
    /// The row's purchases: columns and weights.
    pub cols: &'a [u32],
    /// Weights of `cols`.
    pub vals: &'a [f32],
    /// Confidence scaling.
    pub params: &'a AlsParams,
}

/// Solves `eq` in place by conjugate gradients, warm-started from the current `x`.
pub(crate) fn cg_solve(x: &mut [f32], eq: &NormalEquations<'_>, steps: usize, s: &mut Scratch) {
    let NormalEquations {
        y,
        yty,
        gscale,
        base,
        reg,
        cols,
        vals,
        params,
    } = *eq;
    let d = x.len();
    let Scratch { r, p, ap } = s;
    // r = b - A x
    symv(yty, x, r);
    for (v, xv) in r.iter_mut().zip(x.iter()) {
        *v = -gscale * *v - reg * xv;
    }
    for (&i, &w) in cols.iter().zip(vals) {
        let yi = &y[i as usize * d..(i as usize + 1) * d];
        let cm1 = params.alpha * params.confidence.scaled(w);
        let c = base.at(i) + cm1;
        axpy(c - cm1 * dot(yi, x), yi, r);
    }
    p.copy_from_slice(r);
    let mut rsold = dot(r, r);
    for _ in 0..steps {
        if rsold < 1e-20 {
            break;
        }
        symv(yty, p, ap);
        if gscale != 1.0 {
            ap.iter_mut().for_each(|v| *v *= gscale);
        }
        axpy(reg, p, ap);
        for (&i, &w) in cols.iter().zip(vals) {
            let yi = &y[i as usize * d..(i as usize + 1) * d];
            let cm1 = params.alpha * params.confidence.scaled(w);
            axpy(cm1 * dot(yi, p), yi, ap);
        }
        let pap = dot(p, ap);
        if !(pap.is_finite() && pap > 0.0) {
            break;
        }
        let a = rsold / pap;
        axpy(a, p, x);
        axpy(-a, ap, r);
        let rsnew = dot(r, r);
        let beta = rsnew / rsold;
        for (pi, ri) in p.iter_mut().zip(r.iter()) {
            *pi = ri + beta * *pi;
        }
        rsold = rsnew;
    }
}

/// Computes a customer vector from a purchase list at request time, with the item
/// factors and their Gram matrix fixed: the same normal equations the trainer solves,
/// solved to convergence from zero.
pub fn fold_in(
    item_factors: &[f32],
    item_gram: &[f32],
    negative_weights: &[f32],
    params: &AlsParams,
    history: &[(u32, f32)],
) -> Vec<f32> {
    let d = params.factors;
    let mut merged: Vec<(u32, f32)> = history.to_vec();
    merged.sort_unstable_by_key(|&(i, _)| i);
    merged.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 += b.1;
            true
        } else {
            false
        }
    });
    let cols: Vec<u32> = merged.iter().map(|&(i, _)| i).collect();
    let vals: Vec<f32> = merged.iter().map(|&(_, w)| w).collect();
    let n_items = item_factors.len().checked_div(d).unwrap_or(0);
    let reg = row_regularization(params, &vals, n_items, n_items as f32);
    let mut x = vec![0.0; d];
    let mut s = Scratch::new(d);
    let base = if negative_weights.is_empty() {
        Base::Row(1.0)
    } else {
        Base::PerColumn(negative_weights)
    };
    // CG converges in at most d steps in exact arithmetic; a few more absorb rounding.
    let eq = NormalEquations {
        y: item_factors,
        yty: item_gram,
        gscale: 1.0,
        base,
        reg,
        cols: &cols,
        vals: &vals,
        params,
    };
    cg_solve(&mut x, &eq, d + 8, &mut s);
    x
}

/// Fold-in for many customers at once, each from its own `(item, weight)` history;
/// rows are returned concatenated (`histories.len() x factors`).
pub fn fold_in_many(
    item_factors: &[f32],
    item_gram: &[f32],
    negative_weights: &[f32],
    params: &AlsParams,
    histories: &[Vec<(u32, f32)>],
) -> Vec<f32> {
    let vecs: Vec<Vec<f32>> = histories
        .par_iter()
        .map(|h| fold_in(item_factors, item_gram, negative_weights, params, h))
        .collect();
    vecs.concat()
}

/// Seeded Gaussian initialisation without pulling in a distributions crate.
mod rand_distr_free {
    use rand::Rng;

    /// `n` samples of N(0, std^2) via Box-Muller.
    pub fn normal_vec(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            out.push((r * t.cos()) as f32 * std);
            out.push((r * t.sin()) as f32 * std);
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactions::{Event, InteractionsBuilder, Weighting};

    /// Two disjoint groups of customers buying two disjoint groups of items.
    fn two_blocks() -> Interactions {
        let mut b = InteractionsBuilder::new();
        let mut names = Vec::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for c in 0..40 {
            for i in 0..10 {
                if rand::Rng::random::<f32>(&mut rng) < 0.6 {
                    let item = if c < 20 { i } else { i + 10 };
                    names.push((format!("c{c}"), format!("i{item}")));
                }
            }
        }
        for (c, i) in &names {
            b.push(Event {
                customer: c,
                item: i,
                quantity: 1.0,
                at: 0,
            })
            .unwrap();
        }
        b.build(&Weighting {
            half_life_days: None,
        })
        .unwrap()
    }

    /// Mechanics tests pin their parameters: the tiny fixture needs a light regulariser.
    fn params() -> AlsParams {
        AlsParams {
            factors: 8,
            iterations: 10,
            regularization: 10.0,
            alpha: 2.0,
            neg_exponent: 0.0,
            ..AlsParams::default()
        }
    }

    #[test]
    fn learns_block_structure() {
        let data = two_blocks();
        let f = fit(&data, &params(), &|_| {}).unwrap();
        let d = 8;
        let u0 = &f.user[0..d];
        let score = |i: &str| {
            let ix = data.items.get(i).unwrap() as usize;
            dot(u0, &f.item[ix * d..(ix + 1) * d])
        };
        // Customer c0 is in the first block: unseen first-block items beat second-block ones.
        assert!(
            score("i0") > score("i15") + 0.1,
            "{} vs {}",
            score("i0"),
            score("i15")
        );
    }

    #[test]
    fn same_seed_same_factors() {
        let data = two_blocks();
        let a = fit(&data, &params(), &|_| {}).unwrap();
        let b = fit(&data, &params(), &|_| {}).unwrap();
        assert_eq!(a.item, b.item);
        let c = fit(
            &data,
            &AlsParams {
                seed: 7,
                ..params()
            },
            &|_| {},
        )
        .unwrap();
        assert_ne!(a.item, c.item);
    }

    #[test]
    fn fold_in_matches_trained_customer() {
        // Uniform iALS and popularity-weighted negatives (eALS) alike.
        for neg_exponent in [0.0, 0.5] {
            let data = two_blocks();
            let p = AlsParams {
                iterations: 30,
                cg_steps: 8,
                neg_exponent,
                ..params()
            };
            let f = fit(&data, &p, &|_| {}).unwrap();
            let g = weighted_gram(&f.item, &f.negative_weights, p.factors);
            for u in [0usize, 25] {
                let (cols, vals) = data.user_items.row(u);
                let hist: Vec<(u32, f32)> =
                    cols.iter().copied().zip(vals.iter().copied()).collect();
                let x = fold_in(&f.item, &g, &f.negative_weights, &p, &hist);
                let t = &f.user[u * 8..(u + 1) * 8];
                let cos = dot(&x, t) / (dot(&x, &x).sqrt() * dot(t, t).sqrt());
                assert!(cos > 0.999, "neg {neg_exponent}: cosine {cos}");
                let rel = x
                    .iter()
                    .zip(t)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f32>()
                    .sqrt()
                    / dot(t, t).sqrt();
                assert!(rel < 0.02, "neg {neg_exponent}: relative error {rel}");
            }
        }
    }

    #[test]
    fn negative_weights_have_mean_one_and_follow_popularity() {
        let data = two_blocks();
        let uniform = negative_weights(&data.item_users, 0.0);
        assert!(uniform.iter().all(|&w| w == 1.0));
        let w = negative_weights(&data.item_users, 0.5);
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        assert!((mean - 1.0).abs() < 1e-5, "mean {mean}");
        for i in 0..w.len() {
            for j in 0..w.len() {
                if data.item_users.row_len(i) > data.item_users.row_len(j) {
                    assert!(w[i] > w[j]);
                }
            }
        }
        // A uniform weighting leaves the Gram matrix unweighted.
        let f = fit(&data, &params(), &|_| {}).unwrap();
        assert_eq!(weighted_gram(&f.item, &uniform, 8), gram(&f.item, 8));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let data = two_blocks();
        for p in [
            AlsParams {
                factors: 0,
                ..params()
            },
            AlsParams {
                alpha: -1.0,
                ..params()
            },
            AlsParams {
                regularization: f32::NAN,
                ..params()
            },
            AlsParams {
                iterations: 0,
                ..params()
            },
        ] {
            assert!(matches!(
                fit(&data, &p, &|_| {}),
                Err(Error::InvalidParameter { .. })
            ));
        }
    }
}
