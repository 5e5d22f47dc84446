//! Gamma-Gamma spend model (Fader, Hardie and Lee 2005, "RFM and CLV"; Hardie's note 025)
//! and the discounted customer lifetime value built on it and the BG/NBD.
//!
//! A customer's transaction values are Gamma(p, nu) with `nu ~ Gamma(q, v)` across
//! customers; fitted on repeat buyers' mean repeat-period value and repeat count, it
//! shrinks each customer's observed mean towards the population mean `p v / (q - 1)`.
//! Likelihood and CLV follow lifetimes 0.11.3 (`GammaGammaFitter`,
//! `customer_lifetime_value`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::bgnbd::{BgNbdParams, Rft};
use super::optimize;
use super::special::{digamma, ln_gamma};
use crate::error::{Error, Result};

/// Stationarity required of the fit: gradient norm of the mean log-likelihood per customer
/// in log-parameters. 1e-5 is far below the likelihood's own resolution (about 1/n per
/// customer for n customers), so tighter adds iterations, not information.
const GRAD_TOL: f64 = 1e-5;

/// Fitted Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaParams {
    /// Shape of a customer's transaction-value Gamma.
    pub p: f64,
    /// Shape of the Gamma of the customers' rate parameter.
    pub q: f64,
    /// Scale of the Gamma of the customers' rate parameter.
    pub v: f64,
}

/// A fit and how it went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaFit {
    /// Maximum-likelihood parameters.
    pub params: GammaGammaParams,
    /// Mean log-likelihood per repeat customer.
    pub mean_log_likelihood: f64,
    /// Repeat customers with a positive mean value fitted on.
    pub customers: usize,
    /// Optimiser iterations.
    pub iterations: u64,
    /// Some parameter ran off to infinity; the fit is the limiting model.
    pub at_boundary: bool,
}

/// One repeat customer as the fit sees it: `x`, `m`, and the logs that stay fixed.
#[derive(Clone, Copy)]
struct Row {
    x: f64,
    m: f64,
    ln_x: f64,
    ln_m: f64,
}

impl Row {
    fn new(x: f64, m: f64) -> Self {
        Self {
            x,
            m,
            ln_x: x.ln(),
            ln_m: m.ln(),
        }
    }
}

/// The terms that depend on the parameters only.
struct ParamTerms {
    p: f64,
    q: f64,
    v: f64,
    lg_q: f64,
    dg_q: f64,
    ln_v: f64,
}

/// The log-gamma and digamma terms, which depend on the parameters and `x` only: computed
/// once per run of equal `x` in the fit (a million customers share a few hundred counts).
struct CountTerms {
    x: f64,
    lg: f64,
    dg_pxq: f64,
    dg_px: f64,
}

impl ParamTerms {
    fn new(p: f64, q: f64, v: f64) -> Self {
        Self {
            p,
            q,
            v,
            lg_q: ln_gamma(q),
            dg_q: digamma(q),
            ln_v: v.ln(),
        }
    }

    fn at(&self, x: f64) -> CountTerms {
        let px = self.p * x;
        CountTerms {
            x,
            lg: ln_gamma(px + self.q) - ln_gamma(px) - self.lg_q,
            dg_pxq: digamma(px + self.q),
            dg_px: digamma(px),
        }
    }

    /// One customer's log-likelihood (lifetimes' form of note 025 eq. 1a) and its gradient.
    fn ll_and_grad(&self, t: &CountTerms, r: &Row, g: &mut [f64; 3]) -> f64 {
        let (q, v) = (self.q, self.v);
        let px = self.p * r.x;
        let lxmv = (r.x * r.m + v).ln();
        g[0] = r.x * (t.dg_pxq - t.dg_px + r.ln_m + r.ln_x - lxmv);
        g[1] = t.dg_pxq - self.dg_q + self.ln_v - lxmv;
        g[2] = q / v - (px + q) / (r.x * r.m + v);
        t.lg + q * self.ln_v + (px - 1.0) * r.ln_m + px * r.ln_x - (px + q) * lxmv
    }
}

/// One customer's log-likelihood and its gradient in (p, q, v).
fn ll_and_grad(p: f64, q: f64, v: f64, x: f64, m: f64, g: &mut [f64; 3]) -> f64 {
    let terms = ParamTerms::new(p, q, v);
    terms.ll_and_grad(&terms.at(x), &Row::new(x, m), g)
}

/// Rows per parallel chunk of the fit's sums: fixed, so the sum's order (and the fit) is
/// the same on any number of threads.
const CHUNK: usize = 4096;

/// Sum of the log-likelihood and its gradient over rows sorted by `x`, in fixed chunks on
/// rayon's threads.
fn sum_ll_and_grad(terms: &ParamTerms, rows: &[Row]) -> (f64, [f64; 3]) {
    let parts: Vec<(f64, [f64; 3])> = rows
        .par_chunks(CHUNK)
        .map(|chunk| {
            let (mut total, mut acc, mut g) = (0.0, [0.0; 3], [0.0; 3]);
            let mut at: Option<CountTerms> = None;
            for r in chunk {
                let t = match at.take() {
                    Some(t) if t.x == r.x => t,
                    _ => terms.at(r.x),
                };
                total += terms.ll_and_grad(&t, r, &mut g);
                for k in 0..3 {
                    acc[k] += g[k];
                }
                at = Some(t);
            }
            (total, acc)
        })
        .collect();
    parts.iter().fold((0.0, [0.0; 3]), |(t, mut a), (pt, pa)| {
        for k in 0..3 {
            a[k] += pa[k];
        }
        (t + pt, a)
    })
}

impl GammaGammaParams {
    /// Mean spend per transaction the model expects from a customer with `frequency`
    /// repeats of mean value `monetary_value` (shrunk towards the population mean).
    /// `None` when `q <= 1` (the population mean does not exist).
    pub fn expected_average_value(&self, frequency: u32, monetary_value: f64) -> Option<f64> {
        if self.q <= 1.0 {
            return None;
        }
        let x = frequency as f64;
        let w = self.p * x / (self.p * x + self.q - 1.0);
        let population = self.v * self.p / (self.q - 1.0);
        Some((1.0 - w) * population + w * monetary_value)
    }

    /// Log-likelihood of one repeat customer.
    pub fn log_likelihood(&self, frequency: u32, monetary_value: f64) -> f64 {
        let mut g = [0.0; 3];
        ll_and_grad(
            self.p,
            self.q,
            self.v,
            frequency as f64,
            monetary_value,
            &mut g,
        )
    }
}

/// Fits the Gamma-Gamma on `(frequency, mean repeat value)` pairs; customers without
/// repeats or with a non-positive mean are skipped, as the model is defined for repeat
/// buyers only. Optimises log-parameters from lifetimes' start (all 0.1).
pub fn fit(customers: &[(u32, f64)]) -> Result<GammaGammaFit> {
    let mut rows: Vec<Row> = customers
        .iter()
        .filter(|(x, m)| *x > 0 && m.is_finite() && *m > 0.0)
        .map(|&(x, m)| Row::new(x as f64, m))
        .collect();
    rows.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.m.total_cmp(&b.m)));
    if rows.len() < 2 {
        return Err(Error::EmptyData(format!(
            "Gamma-Gamma needs at least 2 repeat customers with a positive spend, got {}",
            rows.len()
        )));
    }
    let n = rows.len() as f64;
    let objective = |lp: &[f64], grad: &mut [f64]| -> f64 {
        let p = [lp[0].exp(), lp[1].exp(), lp[2].exp()];
        let (total, acc) = sum_ll_and_grad(&ParamTerms::new(p[0], p[1], p[2]), &rows);
        for k in 0..3 {
            grad[k] = -acc[k] * p[k] / n;
        }
        -total / n
    };
    let m = optimize::minimize("Gamma-Gamma", &objective, &[0.1; 3], GRAD_TOL)?;
    let params = GammaGammaParams {
        p: m.x[0].exp(),
        q: m.x[1].exp(),
        v: m.x[2].exp(),
    };
    if ![params.p, params.q, params.v]
        .iter()
        .all(|v| v.is_finite() && *v > 0.0)
    {
        return Err(Error::NotConverged {
            model: "Gamma-Gamma",
            reason: format!("parameters left the positive reals: {params:?}"),
        });
    }
    Ok(GammaGammaFit {
        params,
        mean_log_likelihood: -m.value,
        customers: rows.len(),
        iterations: m.iterations,
        at_boundary: m.boundary,
    })
}

/// How CLV is discounted and over what horizon (lifetimes' defaults: 12 months, 1% a month).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClvOptions {
    /// Horizon in months.
    pub months: u32,
    /// Discount rate per month (0.01 = 1%).
    pub monthly_discount: f64,
    /// Model time units per month (30 for days, 4.345 for weeks: see
    /// [`super::summary::TimeUnit::periods_per_month`]).
    pub periods_per_month: f64,
}

/// Discounted CLV over `months`: for each month, the BG/NBD's expected purchases in that
/// month times the Gamma-Gamma expected value per purchase, discounted by
/// `(1 + rate)^month` (lifetimes' `_customer_lifetime_value`). `None` when either model has
/// no finite answer for this customer.
pub fn clv(
    bg: &BgNbdParams,
    gg: &GammaGammaParams,
    c: &Rft,
    monetary_value: f64,
    opts: &ClvOptions,
) -> Option<f64> {
    let value = gg.expected_average_value(c.frequency, monetary_value)?;
    let f = opts.periods_per_month;
    let mut total = 0.0;
    let mut prev = 0.0;
    for month in 1..=opts.months {
        let cum = bg.expected_purchases(month as f64 * f, c)?;
        total += value * (cum - prev) / (1.0 + opts.monthly_discount).powi(month as i32);
        prev = cum;
    }
    total.is_finite().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lifetimes 0.11.3's Gamma-Gamma fit on CDNOW repeat buyers (published: 6.25, 3.74, 15.44).
    const CDNOW_GG: GammaGammaParams = GammaGammaParams {
        p: 6.248_802_496_072_247,
        q: 3.744_588_460_923_599,
        v: 15.447_748_064_939_473,
    };
    const CDNOW_BG: BgNbdParams = BgNbdParams {
        r: 0.242_592_928_279_821_7,
        alpha: 4.413_532_265_271_817,
        a: 0.792_885_966_440_672_1,
        b: 2.425_752_382_625_799_6,
    };

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    #[test]
    fn known_values_from_lifetimes() {
        // conditional_expected_average_profit(2, 22.35) and (0, 0)
        let e = CDNOW_GG.expected_average_value(2, 22.35).unwrap();
        assert!(close(e, 24.658_616_189_237_748, 1e-9), "{e}");
        let e = CDNOW_GG.expected_average_value(0, 0.0).unwrap();
        assert!(close(e, 35.171_002_152_506_716, 1e-9), "{e}");
        // customer_lifetime_value(bgf, ..., time=12, discount_rate=0.01, freq="W"), customer 1
        let c = Rft {
            frequency: 2,
            recency: 30.43,
            t: 38.86,
        };
        let opts = ClvOptions {
            months: 12,
            monthly_discount: 0.01,
            periods_per_month: 4.345,
        };
        let v = clv(&CDNOW_BG, &CDNOW_GG, &c, 22.35, &opts).unwrap();
        assert!(close(v, 36.278_495_763_627_29, 1e-7), "{v}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let p = [6.0, 3.5, 15.0];
        for &(x, m) in &[(1.0, 10.0), (5.0, 42.5), (30.0, 3.0)] {
            let mut g = [0.0; 3];
            ll_and_grad(p[0], p[1], p[2], x, m, &mut g);
            for k in 0..3 {
                let h = 1e-6 * p[k];
                let (mut up, mut dn) = (p, p);
                up[k] += h;
                dn[k] -= h;
                let mut t = [0.0; 3];
                let fd = (ll_and_grad(up[0], up[1], up[2], x, m, &mut t)
                    - ll_and_grad(dn[0], dn[1], dn[2], x, m, &mut t))
                    / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "k={k} {fd} {}",
                    g[k]
                );
            }
        }
    }

    #[test]
    fn shrinkage_and_clv_properties() {
        let pop = CDNOW_GG.expected_average_value(0, 0.0).unwrap();
        // More repeats -> closer to the customer's own mean.
        let few = CDNOW_GG.expected_average_value(1, 100.0).unwrap();
        let many = CDNOW_GG.expected_average_value(20, 100.0).unwrap();
        assert!(pop < few && few < many && many < 100.0);
        // CLV grows with the horizon and falls with the discount rate.
        let c = Rft {
            frequency: 4,
            recency: 30.0,
            t: 38.0,
        };
        let o = ClvOptions {
            months: 12,
            monthly_discount: 0.01,
            periods_per_month: 4.345,
        };
        let base = clv(&CDNOW_BG, &CDNOW_GG, &c, 30.0, &o).unwrap();
        let longer = clv(
            &CDNOW_BG,
            &CDNOW_GG,
            &c,
            30.0,
            &ClvOptions { months: 24, ..o },
        )
        .unwrap();
        let dearer = clv(
            &CDNOW_BG,
            &CDNOW_GG,
            &c,
            30.0,
            &ClvOptions {
                monthly_discount: 0.05,
                ..o
            },
        )
        .unwrap();
        assert!(longer > base && dearer < base && base > 0.0);
        // q <= 1: no population mean, no CLV.
        let bad = GammaGammaParams { q: 0.9, ..CDNOW_GG };
        assert!(bad.expected_average_value(3, 10.0).is_none());
    }

    #[test]
    fn fit_refuses_too_little_data() {
        assert!(fit(&[(0, 10.0), (3, 0.0), (2, 5.0)]).is_err());
    }
}
