//! Special functions the customer-value models need: log-gamma and digamma come from
//! `statrs`; the Gauss hypergeometric function is summed here because no small, well-kept
//! pure-Rust crate provides it (GSL bindings need a C library, `mathru` pulls in BLAS).

pub use statrs::function::gamma::{digamma, ln_gamma};

/// Most series terms summed before giving up; at `z = 0.9999` the Euler-transformed BG/NBD
/// series needs well under this.
const MAX_TERMS: usize = 200_000;

/// `2F1(a, b; c; z)` for `0 <= z < 1` and `c > 0` by its power series, summing until a term
/// no longer changes the sum. Returns `None` when the series does not settle within
/// [`MAX_TERMS`] terms or produces a non-finite value, so callers can fall back or refuse.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(0.0..1.0).contains(&z) || c <= 0.0 || !a.is_finite() || !b.is_finite() {
        return None;
    }
    let mut term = 1.0_f64;
    let mut sum = 1.0_f64;
    for n in 0..MAX_TERMS {
        let nf = n as f64;
        term *= (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0)) * z;
        sum += term;
        if !sum.is_finite() {
            return None;
        }
        if term == 0.0 {
            return Some(sum);
        }
        // Bound the tail by a geometric series with the larger of the next term ratio and
        // its limit z (the ratio tends to z from one side), and stop once it is negligible.
        let next = ((a + nf + 1.0) * (b + nf + 1.0) / ((c + nf + 1.0) * (nf + 2.0)) * z).abs();
        let ratio = next.max(z);
        if ratio < 1.0 && term.abs() * ratio / (1.0 - ratio) <= f64::EPSILON * sum.abs() {
            return Some(sum);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn hyp2f1_matches_closed_forms() {
        for &z in &[0.0_f64, 0.1, 0.5, 0.9, 0.99] {
            // 2F1(1, 1; 2; z) = -ln(1 - z) / z
            let want = if z == 0.0 { 1.0 } else { -(1.0 - z).ln() / z };
            assert!(
                close(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), want, 1e-12),
                "z={z}"
            );
            // 2F1(a, b; b; z) = (1 - z)^-a
            let want = (1.0 - z).powf(-0.7);
            assert!(
                close(hyp2f1(0.7, 2.3, 2.3, z).unwrap(), want, 1e-12),
                "z={z}"
            );
            // 2F1(1/2, 1; 3/2; z^2) = atanh(z) / z
            let w = z.sqrt();
            let want = if z == 0.0 { 1.0 } else { w.atanh() / w };
            assert!(
                close(hyp2f1(0.5, 1.0, 1.5, z).unwrap(), want, 1e-12),
                "z={z}"
            );
        }
    }

    #[test]
    fn hyp2f1_terminates_for_negative_integer_parameter() {
        // 2F1(-2, b; c; z) is a polynomial: 1 - 2bz/c + b(b+1)z^2/(c(c+1)).
        let (b, c, z) = (1.5, 2.5, 0.4);
        let want = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
        assert!(close(hyp2f1(-2.0, b, c, z).unwrap(), want, 1e-14));
    }

    #[test]
    fn hyp2f1_refuses_outside_its_domain() {
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.0).is_none());
        assert!(hyp2f1(1.0, 1.0, 2.0, -0.1).is_none());
        assert!(hyp2f1(1.0, 1.0, 0.0, 0.5).is_none());
    }

    #[test]
    fn statrs_special_functions_are_what_we_expect() {
        assert!(close(ln_gamma(5.0), 24.0_f64.ln(), 1e-14));
        // digamma(1) = -Euler-Mascheroni
        assert!(close(digamma(1.0), -0.577_215_664_901_532_9, 1e-12));
    }
}
