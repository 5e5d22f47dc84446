//! BG/NBD "buy till you die" model (Fader, Hardie and Lee 2005, "Counting your customers
//! the easy way"), fitted by maximum likelihood.
//!
//! While alive a customer buys as a Poisson process with rate `lambda ~ Gamma(r, alpha)`;
//! after every purchase they drop out with probability `p ~ Beta(a, b)`. From a customer's
//! `(x = frequency, t_x = recency, T)` the model gives P(alive) and the expected number of
//! purchases in the next `t` time units. The likelihood, P(alive) and the conditional
//! expectation follow lifetimes 0.11.3 term by term (`BetaGeoFitter`), so fits agree with it.
//!
//! P(alive) is exactly 1 for `x = 0`: in the BG/NBD a customer can only drop out right after
//! a purchase, so someone who never came back has had no chance to leave. That is the
//! model's well-known weakness for one-time buyers; their low expected purchases (the
//! Gamma posterior of `lambda` shrinks as `T` grows) is what shows they are fading.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::optimize;
use super::special::{digamma, hyp2f1, ln_gamma};
use crate::error::{Error, Result};

/// Stationarity required of the fit: gradient norm of the mean log-likelihood per customer
/// in log-parameters. 1e-5 is far below the likelihood's own resolution (about 1/n per
/// customer for n customers), so tighter adds iterations, not information.
const GRAD_TOL: f64 = 1e-5;

/// A customer's repeat-purchase history in model time units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rft {
    /// Repeat purchase periods (`x`).
    pub frequency: u32,
    /// Time of the last purchase since the first (`t_x`).
    pub recency: f64,
    /// Time since the first purchase (`T`).
    pub t: f64,
}

impl Rft {
    fn check(&self) -> Result<()> {
        let ok = self.recency.is_finite()
            && self.t.is_finite()
            && self.recency >= 0.0
            && self.t >= self.recency
            && (self.frequency > 0 || self.recency == 0.0);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "rft",
                reason: format!(
                    "need 0 <= recency <= T and recency = 0 when frequency = 0, got {self:?}"
                ),
            })
        }
    }
}

/// Fitted BG/NBD parameters (`alpha` in the time unit of the data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdParams {
    /// Shape of the purchase-rate Gamma.
    pub r: f64,
    /// Scale (time) of the purchase-rate Gamma.
    pub alpha: f64,
    /// Dropout Beta, first shape.
    pub a: f64,
    /// Dropout Beta, second shape.
    pub b: f64,
}

/// A fit and how it went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdFit {
    /// The maximum-likelihood parameters.
    pub params: BgNbdParams,
    /// Mean log-likelihood per customer at the optimum.
    pub mean_log_likelihood: f64,
    /// Customers fitted on.
    pub customers: usize,
    /// Optimiser iterations.
    pub iterations: u64,
    /// Some parameter ran off to infinity (typically `a, b`: the data show no dropout, and
    /// the fit is the limiting model); predictions remain valid.
    pub at_boundary: bool,
}

/// The terms of the likelihood that depend on the parameters only.
struct ParamTerms {
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
    r_ln_alpha: f64,
    ln_alpha: f64,
    ln_a: f64,
    lg_r: f64,
    dg_r: f64,
    lg_ab: f64,
    dg_ab: f64,
    lg_b: f64,
    dg_b: f64,
}

/// The terms that depend on the parameters and the frequency `x` only: computed once per
/// distinct frequency per evaluation, not once per customer (log-gamma and digamma are
/// most of the likelihood's cost, and a million customers share a few hundred frequencies).
struct FrequencyTerms {
    frequency: u32,
    x: f64,
    lg_rx: f64,
    dg_rx: f64,
    lg_bx: f64,
    dg_bx: f64,
    lg_abx: f64,
    dg_abx: f64,
    bx: f64,
    ln_bx: f64,
}

impl ParamTerms {
    fn new(r: f64, alpha: f64, a: f64, b: f64) -> Self {
        let ln_alpha = alpha.ln();
        Self {
            r,
            alpha,
            a,
            b,
            r_ln_alpha: r * ln_alpha,
            ln_alpha,
            ln_a: a.ln(),
            lg_r: ln_gamma(r),
            dg_r: digamma(r),
            lg_ab: ln_gamma(a + b),
            dg_ab: digamma(a + b),
            lg_b: ln_gamma(b),
            dg_b: digamma(b),
        }
    }

    fn at(&self, frequency: u32) -> FrequencyTerms {
        let x = frequency as f64;
        let bx = self.b + x.max(1.0) - 1.0;
        FrequencyTerms {
            frequency,
            x,
            lg_rx: ln_gamma(self.r + x),
            dg_rx: digamma(self.r + x),
            lg_bx: ln_gamma(self.b + x),
            dg_bx: digamma(self.b + x),
            lg_abx: ln_gamma(self.a + self.b + x),
            dg_abx: digamma(self.a + self.b + x),
            bx,
            ln_bx: bx.ln(),
        }
    }

    /// Log-likelihood of one customer and its gradient in (r, alpha, a, b), unscaled.
    fn ll_and_grad(&self, f: &FrequencyTerms, c: &Rft, grad: &mut [f64; 4]) -> f64 {
        let (r, alpha, x) = (self.r, self.alpha, f.x);
        let a1 = f.lg_rx - self.lg_r + self.r_ln_alpha;
        let a2 = self.lg_ab + f.lg_bx - self.lg_b - f.lg_abx;
        let ln_at = (alpha + c.t).ln();
        let ln_ar = (alpha + c.recency).ln();
        let a3 = -(r + x) * ln_at;
        let (w3, w4, lse) = if c.frequency > 0 {
            let a4 = self.ln_a - f.ln_bx - (r + x) * ln_ar;
            let m = a3.max(a4);
            let (e3, e4) = ((a3 - m).exp(), (a4 - m).exp());
            (e3 / (e3 + e4), e4 / (e3 + e4), m + (e3 + e4).ln())
        } else {
            (1.0, 0.0, a3)
        };
        grad[0] = f.dg_rx - self.dg_r + self.ln_alpha - w3 * ln_at - w4 * ln_ar;
        grad[1] = r / alpha - w3 * (r + x) / (alpha + c.t) - w4 * (r + x) / (alpha + c.recency);
        grad[2] = self.dg_ab - f.dg_abx + w4 / self.a;
        grad[3] = self.dg_ab + f.dg_bx - self.dg_b - f.dg_abx - w4 / f.bx;
        a1 + a2 + lse
    }
}

/// Log-likelihood of one customer and its gradient in (r, alpha, a, b), unscaled.
fn ll_and_grad(r: f64, alpha: f64, a: f64, b: f64, c: &Rft, grad: &mut [f64; 4]) -> f64 {
    let terms = ParamTerms::new(r, alpha, a, b);
    terms.ll_and_grad(&terms.at(c.frequency), c, grad)
}

/// Rows per parallel chunk of the fit's sums: fixed, so the sum's order (and the fit) is
/// the same on any number of threads.
const CHUNK: usize = 4096;

/// Sum of `w * log-likelihood` and of `w * gradient` over weighted rows sorted by
/// frequency, in fixed chunks on rayon's threads.
fn weighted_sum(terms: &ParamTerms, rows: &[(Rft, f64)]) -> (f64, [f64; 4]) {
    let parts: Vec<(f64, [f64; 4])> = rows
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut total = 0.0;
            let mut acc = [0.0; 4];
            let mut g = [0.0; 4];
            let mut at: Option<FrequencyTerms> = None;
            for (c, w) in chunk {
                let f = match at.take() {
                    Some(f) if f.frequency == c.frequency => f,
                    _ => terms.at(c.frequency),
                };
                total += w * terms.ll_and_grad(&f, c, &mut g);
                for k in 0..4 {
                    acc[k] += w * g[k];
                }
                at = Some(f);
            }
            (total, acc)
        })
        .collect();
    parts.iter().fold((0.0, [0.0; 4]), |(t, mut a), (pt, pa)| {
        for k in 0..4 {
            a[k] += pa[k];
        }
        (t + pt, a)
    })
}

impl BgNbdParams {
    fn check(&self) -> Result<()> {
        if [self.r, self.alpha, self.a, self.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
        {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "bgnbd",
                reason: format!("all parameters must be positive and finite, got {self:?}"),
            })
        }
    }

    /// Log-likelihood of one customer's history (FHL 2005, eq. 6, in lifetimes' form).
    pub fn log_likelihood(&self, c: &Rft) -> f64 {
        let mut g = [0.0; 4];
        ll_and_grad(self.r, self.alpha, self.a, self.b, c, &mut g)
    }

    /// Probability the customer is still alive (Fader, Hardie and Lee's note 021); 1 when
    /// `frequency` is 0 (see the module docs).
    pub fn p_alive(&self, c: &Rft) -> f64 {
        if c.frequency == 0 {
            return 1.0;
        }
        let x = c.frequency as f64;
        let log_div = (self.r + x) * ((self.alpha + c.t) / (self.alpha + c.recency)).ln()
            + (self.a / (self.b + x - 1.0)).ln();
        1.0 / (1.0 + log_div.exp())
    }

    /// Expected repeat purchases in the next `t` time units given the history (FHL 2005,
    /// eq. 10). Like lifetimes, the Gauss hypergeometric term is summed in its direct form
    /// `2F1(r+x, b+x; a+b+x-1; z)` and, when that overflows or does not settle, in the
    /// Euler-transformed `2F1(a+b-1-r, a-1; a+b+x-1; z) (1-z)^(a-1-r-x)`. `None` where the
    /// formula has no finite value this way (`a = 1` exactly, or `a + b + x <= 1`).
    pub fn expected_purchases(&self, t: f64, c: &Rft) -> Option<f64> {
        if t <= 0.0 {
            return Some(0.0);
        }
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let x = c.frequency as f64;
        let cc = a + b + x - 1.0;
        if (a - 1.0).abs() < 1e-12 || cc <= 0.0 {
            return None;
        }
        let z = t / (alpha + c.t + t);
        let ln1z = (1.0 - z).ln();
        // ln of 2F1(..) (1-z)^(r+x), the quantity both forms give.
        let ln_term = match hyp2f1(r + x, b + x, cc, z).filter(|f| *f > 0.0) {
            Some(f) => f.ln() + (r + x) * ln1z,
            None => {
                let f = hyp2f1(a + b - 1.0 - r, a - 1.0, cc, z).filter(|f| *f > 0.0)?;
                f.ln() + (a - 1.0) * ln1z
            }
        };
        let second = -ln_term.exp_m1();
        let first = cc / (a - 1.0);
        let denom = if c.frequency > 0 {
            1.0 + (a / (b + x - 1.0)) * ((alpha + c.t) / (alpha + c.recency)).powf(r + x)
        } else {
            1.0
        };
        let e = first * second / denom;
        e.is_finite().then_some(e.max(0.0))
    }

    /// Expected purchases of a new customer in their first `t` time units (FHL 2005, eq. 7).
    pub fn expected_purchases_new(&self, t: f64) -> Option<f64> {
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        if t <= 0.0 {
            return Some(0.0);
        }
        if (a - 1.0).abs() < 1e-12 || a + b - 1.0 <= 0.0 {
            return None;
        }
        let z = t / (alpha + t);
        // 2F1(r, b; a+b-1; z) = (1-z)^(a-1-r) 2F1(a+b-1-r, a-1; a+b-1; z)  (Euler)
        let f = hyp2f1(a + b - 1.0 - r, a - 1.0, a + b - 1.0, z)?;
        let pow = (alpha / (alpha + t)).powf(r) * (1.0 - z).powf(a - 1.0 - r);
        let e = (a + b - 1.0) / (a - 1.0) * (1.0 - pow * f);
        e.is_finite().then_some(e)
    }
}

/// Fits the BG/NBD by maximum likelihood. Like lifetimes, time is first rescaled so the
/// longest `T` is 1 (better conditioning), the optimiser works on log-parameters, and
/// `alpha` is scaled back at the end. Needs at least one customer with a repeat purchase.
pub fn fit(customers: &[Rft]) -> Result<BgNbdFit> {
    for c in customers {
        c.check()?;
    }
    if !customers.iter().any(|c| c.frequency > 0) {
        return Err(Error::EmptyData(
            "BG/NBD needs at least one customer with a repeat purchase".into(),
        ));
    }
    let max_t = customers.iter().map(|c| c.t).fold(0.0, f64::max);
    if max_t <= 0.0 {
        return Err(Error::EmptyData(
            "BG/NBD needs customers observed for some time (all T are 0)".into(),
        ));
    }
    let scale = 1.0 / max_t;
    // Identical histories collapse into weighted rows: fewer lgamma calls per evaluation.
    let mut rows: Vec<(Rft, f64)> = Vec::new();
    {
        let mut sorted: Vec<Rft> = customers
            .iter()
            .map(|c| Rft {
                frequency: c.frequency,
                recency: c.recency * scale,
                t: c.t * scale,
            })
            .collect();
        sorted.sort_by(|p, q| {
            p.frequency
                .cmp(&q.frequency)
                .then(p.recency.total_cmp(&q.recency))
                .then(p.t.total_cmp(&q.t))
        });
        for c in sorted {
            match rows.last_mut() {
                Some((last, w)) if *last == c => *w += 1.0,
                _ => rows.push((c, 1.0)),
            }
        }
    }
    let n = customers.len() as f64;
    let objective = |lp: &[f64], grad: &mut [f64]| -> f64 {
        let p = [lp[0].exp(), lp[1].exp(), lp[2].exp(), lp[3].exp()];
        let (total, acc) = weighted_sum(&ParamTerms::new(p[0], p[1], p[2], p[3]), &rows);
        // d/d(log theta) = theta * d/d(theta); minimise the mean negative log-likelihood.
        for k in 0..4 {
            grad[k] = -acc[k] * p[k] / n;
        }
        -total / n
    };
    let m = optimize::minimize("BG/NBD", &objective, &[0.1; 4], GRAD_TOL)?;
    let params = BgNbdParams {
        r: m.x[0].exp(),
        alpha: m.x[1].exp() / scale,
        a: m.x[2].exp(),
        b: m.x[3].exp(),
    };
    params.check()?;
    let unscaled: Vec<(Rft, f64)> = rows
        .iter()
        .map(|(c, w)| {
            let c = Rft {
                frequency: c.frequency,
                recency: c.recency / scale,
                t: c.t / scale,
            };
            (c, *w)
        })
        .collect();
    let terms = ParamTerms::new(params.r, params.alpha, params.a, params.b);
    let (ll, _) = weighted_sum(&terms, &unscaled);
    Ok(BgNbdFit {
        params,
        mean_log_likelihood: ll / n,
        customers: customers.len(),
        iterations: m.iterations,
        at_boundary: m.boundary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// lifetimes 0.11.3's fit on its CDNOW summary (weeks), as printed by
    /// `BetaGeoFitter().fit(...).params_` (published rounded: 0.243, 4.414, 0.793, 2.426).
    pub(crate) const CDNOW: BgNbdParams = BgNbdParams {
        r: 0.242_592_928_279_821_7,
        alpha: 4.413_532_265_271_817,
        a: 0.792_885_966_440_672_1,
        b: 2.425_752_382_625_799_6,
    };

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let cases = [
            Rft {
                frequency: 0,
                recency: 0.0,
                t: 30.0,
            },
            Rft {
                frequency: 3,
                recency: 20.5,
                t: 38.0,
            },
            Rft {
                frequency: 25,
                recency: 37.0,
                t: 38.0,
            },
        ];
        let p = [0.3, 5.0, 0.8, 2.5];
        for c in &cases {
            let mut g = [0.0; 4];
            ll_and_grad(p[0], p[1], p[2], p[3], c, &mut g);
            for k in 0..4 {
                let h = 1e-6 * p[k];
                let mut up = p;
                let mut dn = p;
                up[k] += h;
                dn[k] -= h;
                let mut tmp = [0.0; 4];
                let fd = (ll_and_grad(up[0], up[1], up[2], up[3], c, &mut tmp)
                    - ll_and_grad(dn[0], dn[1], dn[2], dn[3], c, &mut tmp))
                    / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{c:?} k={k} fd={fd} g={}",
                    g[k]
                );
            }
        }
    }

    #[test]
    fn p_alive_known_values_and_properties() {
        // P(alive) for x = 0 is 1 by construction of the model.
        assert_eq!(
            CDNOW.p_alive(&Rft {
                frequency: 0,
                recency: 0.0,
                t: 38.0
            }),
            1.0
        );
        // Customer 1 of CDNOW (x=2, t_x=30.43, T=38.86); lifetimes 0.11.3 gives 0.72660914.
        let p = CDNOW.p_alive(&Rft {
            frequency: 2,
            recency: 30.43,
            t: 38.86,
        });
        assert!(close(p, 0.726_609_14, 1e-7), "{p}");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..500 {
            let t: f64 = rng.random_range(1.0..80.0);
            let tx = rng.random_range(0.0..t);
            let x = rng.random_range(1..30u32);
            let c = Rft {
                frequency: x,
                recency: tx,
                t,
            };
            let p = CDNOW.p_alive(&c);
            assert!((0.0..=1.0).contains(&p));
            // More recent last purchase -> more likely alive.
            let later = Rft {
                recency: (tx + 0.5).min(t),
                ..c
            };
            assert!(CDNOW.p_alive(&later) >= p);
            // Longer silence since the last purchase -> less likely alive.
            let older = Rft { t: t + 1.0, ..c };
            assert!(CDNOW.p_alive(&older) <= p);
        }
    }

    #[test]
    fn expected_purchases_known_values_and_properties() {
        // lifetimes 0.11.3's conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        // and expected_number_of_purchases_up_to_time(t) with the CDNOW parameters.
        let cases = [
            (
                1.0,
                Rft {
                    frequency: 2,
                    recency: 30.43,
                    t: 38.86,
                },
                0.037_443_193_329_904_756,
            ),
            (
                10.0,
                Rft {
                    frequency: 0,
                    recency: 0.0,
                    t: 38.86,
                },
                0.054_210_097_331_347_56,
            ),
            (
                39.0,
                Rft {
                    frequency: 50,
                    recency: 38.0,
                    t: 38.86,
                },
                33.392_620_828_650_55,
            ),
        ];
        for (t, c, want) in cases {
            let e = CDNOW.expected_purchases(t, &c).unwrap();
            assert!(close(e, want, 1e-9), "{c:?} {e} {want}");
        }
        let e = CDNOW.expected_purchases_new(39.0).unwrap();
        assert!(close(e, 1.195_016_228_446_194_3, 1e-9), "{e}");
        // The unconditional form matches the conditional one for a brand-new customer.
        let new = Rft {
            frequency: 0,
            recency: 0.0,
            t: 0.0,
        };
        for t in [1.0, 10.0, 39.0, 200.0] {
            let a = CDNOW.expected_purchases(t, &new).unwrap();
            let b = CDNOW.expected_purchases_new(t).unwrap();
            assert!(close(a, b, 1e-9), "t={t} {a} {b}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..300 {
            let t: f64 = rng.random_range(1.0..80.0);
            let tx = rng.random_range(0.0..t);
            let x = rng.random_range(0..200u32);
            let c = Rft {
                frequency: x,
                recency: if x == 0 { 0.0 } else { tx },
                t,
            };
            let e1 = CDNOW.expected_purchases(10.0, &c).unwrap();
            let e2 = CDNOW.expected_purchases(20.0, &c).unwrap();
            assert!(e1 >= 0.0 && e2 >= e1, "{c:?} {e1} {e2}");
            // More purchases in the same window -> more expected (alive and recent).
            if x > 0 {
                let more = Rft {
                    frequency: x + 1,
                    recency: t,
                    ..c
                };
                let same = Rft { recency: t, ..c };
                assert!(
                    CDNOW.expected_purchases(10.0, &more).unwrap()
                        >= CDNOW.expected_purchases(10.0, &same).unwrap()
                );
            }
        }
    }

    /// Draws customers from the BG/NBD itself and checks the fit recovers the parameters.
    #[test]
    fn fit_recovers_simulated_parameters() {
        let truth = BgNbdParams {
            r: 0.5,
            alpha: 6.0,
            a: 0.7,
            b: 3.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let gamma = |rng: &mut ChaCha8Rng, shape: f64| -> f64 {
            // Marsaglia-Tsang with the shape < 1 boost.
            let (d_shape, boost) = if shape < 1.0 {
                (shape + 1.0, true)
            } else {
                (shape, false)
            };
            let d = d_shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            let g = loop {
                let (u1, u2): (f64, f64) = (rng.random(), rng.random());
                let n = (-2.0 * u1.max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = (1.0 + c * n).powi(3);
                if v > 0.0 && rng.random::<f64>().ln() < 0.5 * n * n + d - d * v + d * v.ln() {
                    break d * v;
                }
            };
            if boost {
                g * rng.random::<f64>().powf(1.0 / shape)
            } else {
                g
            }
        };
        let mut data = Vec::new();
        for _ in 0..8000 {
            let lambda = gamma(&mut rng, truth.r) / truth.alpha;
            let ga = gamma(&mut rng, truth.a);
            let p = ga / (ga + gamma(&mut rng, truth.b));
            let t_obs = rng.random_range(20.0..52.0);
            let (mut now, mut x, mut last) = (0.0, 0u32, 0.0);
            loop {
                now += -rng.random::<f64>().max(1e-300).ln() / lambda;
                if now > t_obs {
                    break;
                }
                x += 1;
                last = now;
                if rng.random::<f64>() < p {
                    break;
                }
            }
            data.push(Rft {
                frequency: x,
                recency: last,
                t: t_obs,
            });
        }
        let f = fit(&data).unwrap();
        let p = f.params;
        for (got, want) in [
            (p.r, truth.r),
            (p.alpha, truth.alpha),
            (p.a, truth.a),
            (p.b, truth.b),
        ] {
            assert!(close(got, want, 0.25), "{p:?} vs {truth:?}");
        }
        // The optimum is a maximum: nudging any parameter lowers the likelihood.
        let ll = |q: &BgNbdParams| data.iter().map(|c| q.log_likelihood(c)).sum::<f64>();
        let best = ll(&p);
        for k in 0..4 {
            let mut q = p;
            let v = match k {
                0 => &mut q.r,
                1 => &mut q.alpha,
                2 => &mut q.a,
                _ => &mut q.b,
            };
            *v *= 1.01;
            assert!(ll(&q) < best);
        }
    }

    #[test]
    fn fit_refuses_data_without_repeats() {
        let data = vec![
            Rft {
                frequency: 0,
                recency: 0.0,
                t: 5.0
            };
            10
        ];
        assert!(matches!(fit(&data), Err(Error::EmptyData(_))));
        assert!(
            fit(&[Rft {
                frequency: 1,
                recency: 6.0,
                t: 5.0
            }])
            .is_err()
        );
    }
}
