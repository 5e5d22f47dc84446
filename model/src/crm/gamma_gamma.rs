//! Gamma-Gamma spend model (Fader, Hardie and Lee 2005, "RFM and CLV"; Hardie's note 025)
//! and the discounted customer lifetime value built on it and the BG/NBD.
//!
//! A customer's transaction values are Gamma(p, nu) with `nu ~ Gamma(q, v)` across
//! customers; fitted on repeat buyers' mean repeat-period value and repeat count, it
//! shrinks each customer's observed mean towards the population mean `p v / (q - 1)`.
//! Likelihood and CLV follow lifetimes 0.11.3 (`GammaGammaFitter`,
//! `customer_lifetime_value`).

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

/// One customer's log-likelihood (lifetimes' form of note 025 eq. 1a) and its gradient.
fn ll_and_grad(p: f64, q: f64, v: f64, x: f64, m: f64, g: &mut [f64; 3]) -> f64 {
    let px = p * x;
    let lxmv = (x * m + v).ln();
    g[0] = x * (digamma(px + q) - digamma(px) + m.ln() + x.ln() - lxmv);
    g[1] = digamma(px + q) - digamma(q) + v.ln() - lxmv;
    g[2] = q / v - (px + q) / (x * m + v);
    ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q) + q * v.ln() + (px - 1.0) * m.ln() + px * x.ln()
        - (px + q) * lxmv
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
    let rows: Vec<(f64, f64)> = customers
        .iter()
        .filter(|(x, m)| *x > 0 && m.is_finite() && *m > 0.0)
        .map(|&(x, m)| (x as f64, m))
        .collect();
    if rows.len() < 2 {
        return Err(Error::EmptyData(format!(
            "Gamma-Gamma needs at least 2 repeat customers with a positive spend, got {}",
            rows.len()
        )));
    }
    let n = rows.len() as f64;
    let objective = |lp: &[f64], grad: &mut [f64]| -> f64 {
        let p = [lp[0].exp(), lp[1].exp(), lp[2].exp()];
        let (mut total, mut acc, mut g) = (0.0, [0.0; 3], [0.0; 3]);
        for &(x, m) in &rows {
            total += ll_and_grad(p[0], p[1], p[2], x, m, &mut g);
            for k in 0..3 {
                acc[k] += g[k];
            }
        }
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
