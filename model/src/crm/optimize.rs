//! Unconstrained minimisation for the maximum-likelihood fits, confined to this file so
//! the rest of the crate never sees argmin's types.
//!
//! Method: BFGS with a More-Thuente line search on the analytic gradient (argmin), in
//! log-parameter space so positivity is free. BFGS with exact gradients converges to the
//! gradient tolerance in a few dozen iterations on these smooth, low-dimensional problems;
//! when it stops early (a line search failure on a far-off start, a non-finite step) the
//! derivative-free Nelder-Mead simplex (also argmin) walks closer and BFGS polishes from
//! there. The result is accepted only if the gradient norm is small.

use std::sync::Mutex;

use argmin::core::{CostFunction, Error as ArgminError, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::neldermead::NelderMead;
use argmin::solver::quasinewton::BFGS;

use crate::error::{Error, Result};

/// An objective: returns the value at `x` and writes the gradient into `grad`.
pub(crate) type Objective<'a> = dyn Fn(&[f64], &mut [f64]) -> f64 + Sync + 'a;

/// What the minimiser found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Minimum {
    /// Argument of the minimum.
    pub x: Vec<f64>,
    /// Objective value there.
    pub value: f64,
    /// Euclidean norm of the gradient there.
    pub grad_norm: f64,
    /// Iterations used (all stages).
    pub iterations: u64,
    /// The optimum lies at infinity in some parameter and `x` is far along the way.
    pub boundary: bool,
}

/// Gradient norm below which a far-out point is taken as a limit at infinity.
const BOUNDARY_GRAD: f64 = 1e-3;
/// |log-parameter| beyond which a point counts as far out (e^10 ~ 22,000).
const BOUNDARY_LOG: f64 = 10.0;

/// A point, its value and its gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);

struct Problem<'a> {
    f: &'a Objective<'a>,
    /// The last point evaluated with its value and gradient: argmin asks for the cost and
    /// the gradient of one point separately, and one evaluation gives both (over a million
    /// customers, each evaluation is the expensive part).
    last: Mutex<Option<Evaluated>>,
}

impl<'a> Problem<'a> {
    fn new(f: &'a Objective<'a>) -> Self {
        Self {
            f,
            last: Mutex::new(None),
        }
    }

    fn evaluate(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((lx, v, g)) = last.as_ref()
            && lx.as_slice() == x
        {
            return (*v, g.clone());
        }
        let mut g = vec![0.0; x.len()];
        let v = (self.f)(x, &mut g);
        *last = Some((x.to_vec(), v, g.clone()));
        (v, g)
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Self::Param) -> Result<f64, ArgminError> {
        let (v, _) = self.evaluate(x);
        // A non-finite value is treated as "very bad" so line searches back off.
        Ok(if v.is_finite() { v } else { f64::MAX / 4.0 })
    }
}

impl Gradient for Problem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, x: &Self::Param) -> Result<Vec<f64>, ArgminError> {
        let (_, g) = self.evaluate(x);
        if g.iter().all(|v| v.is_finite()) {
            Ok(g)
        } else {
            Err(ArgminError::msg("non-finite gradient"))
        }
    }
}

fn eval(f: &Objective<'_>, x: &[f64]) -> (f64, f64) {
    let mut g = vec![0.0; x.len()];
    let v = f(x, &mut g);
    (v, g.iter().map(|v| v * v).sum::<f64>().sqrt())
}

fn bfgs(f: &Objective<'_>, x0: &[f64], max_iters: u64) -> Option<(Vec<f64>, u64)> {
    let n = x0.len();
    let identity: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let solver = BFGS::new(MoreThuenteLineSearch::new())
        .with_tolerance_grad(1e-10)
        .ok()?
        .with_tolerance_cost(0.0)
        .ok()?;
    let res = Executor::new(Problem::new(f), solver)
        .configure(|s| {
            s.param(x0.to_vec())
                .inv_hessian(identity)
                .max_iters(max_iters)
        })
        .run()
        .ok()?;
    let state = res.state();
    let x = state.get_best_param()?.clone();
    Some((x, state.get_iter()))
}

fn nelder_mead(f: &Objective<'_>, x0: &[f64], max_iters: u64) -> Option<(Vec<f64>, u64)> {
    let mut simplex = vec![x0.to_vec()];
    for i in 0..x0.len() {
        let mut v = x0.to_vec();
        v[i] += 0.5;
        simplex.push(v);
    }
    let solver = NelderMead::new(simplex).with_sd_tolerance(1e-12).ok()?;
    let res = Executor::new(Problem::new(f), solver)
        .configure(|s| s.max_iters(max_iters))
        .run()
        .ok()?;
    let state = res.state();
    Some((state.get_best_param()?.clone(), state.get_iter()))
}

/// Minimises `f` from `x0`; `what` names the model in errors. The answer must have a
/// gradient norm below `grad_tol`, else the fit is refused (rather than returning a
/// point that merely stopped moving).
pub(crate) fn minimize(
    what: &'static str,
    f: &Objective<'_>,
    x0: &[f64],
    grad_tol: f64,
) -> Result<Minimum> {
    let mut iterations = 0;
    let mut best: Option<(Vec<f64>, f64, f64)> = None;
    let consider = |best: &mut Option<(Vec<f64>, f64, f64)>, x: Vec<f64>| {
        let (v, gn) = eval(f, &x);
        if v.is_finite() && best.as_ref().is_none_or(|b| v < b.1) {
            *best = Some((x, v, gn));
        }
    };
    if let Some((x, it)) = bfgs(f, x0, 500) {
        iterations += it;
        consider(&mut best, x);
    }
    if best.as_ref().is_none_or(|b| b.2 > grad_tol) {
        let start = best.as_ref().map_or_else(|| x0.to_vec(), |b| b.0.clone());
        if let Some((x, it)) = nelder_mead(f, &start, 5_000) {
            iterations += it;
            if let Some((x, it2)) = bfgs(f, &x, 500) {
                iterations += it2;
                consider(&mut best, x);
            } else {
                consider(&mut best, x);
            }
        }
    }
    // Not yet stationary: one more BFGS round from the best point. If it cannot lower the
    // objective any further, the optimum is a flat ridge (a parameter weakly determined,
    // running off slowly); with a small gradient that is accepted and flagged.
    // BFGS restarts (a fresh inverse Hessian) recover from line-search stalls on
    // ill-conditioned surfaces; stop once a round no longer helps.
    let mut flat = false;
    for _ in 0..4 {
        let Some((x0b, v0, g0)) = best.clone() else {
            break;
        };
        if g0 <= grad_tol {
            break;
        }
        let Some((x, it)) = bfgs(f, &x0b, 500) else {
            break;
        };
        iterations += it;
        consider(&mut best, x);
        if let Some(b) = &best {
            flat = v0 - b.1 <= 1e-10 * v0.abs().max(1.0);
        }
        if flat {
            break;
        }
    }
    match best {
        Some((x, value, grad_norm)) if grad_norm <= grad_tol => Ok(Minimum {
            boundary: x.iter().any(|v| v.abs() > BOUNDARY_LOG),
            x,
            value,
            grad_norm,
            iterations,
        }),
        // The supremum lies at infinity (e.g. BG/NBD dropout shapes a, b -> inf when the data
        // show no dropout): the gradient only fades as the parameters run off. Far out in
        // log space with a nearly flat objective, the point is the limiting model.
        Some((x, value, grad_norm))
            if grad_norm <= BOUNDARY_GRAD && (flat || x.iter().any(|v| v.abs() > BOUNDARY_LOG)) =>
        {
            Ok(Minimum {
                x,
                value,
                grad_norm,
                iterations,
                boundary: true,
            })
        }
        Some((_, value, grad_norm)) => Err(Error::NotConverged {
            model: what,
            reason: format!(
                "stopped at objective {value:.6} with gradient norm {grad_norm:.3e} (> {grad_tol:.0e})"
            ),
        }),
        None => Err(Error::NotConverged {
            model: what,
            reason: "no finite objective value was reached".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_the_rosenbrock_function() {
        let f = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let m = minimize("rosenbrock", &f, &[-1.2, 1.0], 1e-6).unwrap();
        assert!(
            (m.x[0] - 1.0).abs() < 1e-5 && (m.x[1] - 1.0).abs() < 1e-5,
            "{m:?}"
        );
    }

    #[test]
    fn accepts_a_limit_at_infinity() {
        // f(x) = exp(-x): infimum 0 as x -> inf.
        let f = |x: &[f64], g: &mut [f64]| {
            g[0] = -(-x[0]).exp();
            (-x[0]).exp()
        };
        let m = minimize("decay", &f, &[0.0], 1e-9).unwrap();
        assert!(m.boundary && m.x[0] > BOUNDARY_LOG, "{m:?}");
    }

    #[test]
    fn refuses_an_unbounded_objective() {
        let f = |x: &[f64], g: &mut [f64]| {
            g[0] = -1.0;
            -x[0]
        };
        assert!(matches!(
            minimize("line", &f, &[0.0], 1e-6),
            Err(Error::NotConverged { .. })
        ));
    }
}
