//! Small dense kernels written so LLVM vectorises them (fixed-width chunks with
//! independent accumulators); the big products go through ndarray's gemm.

/// Inner product: the index's kernel, so training, fold-in and search score alike.
pub use crate::index::dot;

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out = m * x` for a symmetric row-major `d x d` matrix `m`, accumulated as a sum of
/// scaled rows (column form) so no horizontal reductions are needed.
#[inline]
pub fn symv(m: &[f32], x: &[f32], out: &mut [f32]) {
    let d = x.len();
    out.fill(0.0);
    for (j, &xj) in x.iter().enumerate() {
        axpy(xj, &m[j * d..(j + 1) * d], out);
    }
}

/// Euclidean norm.
#[inline]
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// `X^T X` for a row-major `n x d` matrix, as a row-major `d x d` matrix.
pub fn gram(x: &[f32], d: usize) -> Vec<f32> {
    let n = x.len().checked_div(d).unwrap_or(0);
    match ndarray::ArrayView2::from_shape((n, d), x) {
        Ok(view) => {
            let g = view.t().dot(&view);
            g.iter().copied().collect()
        }
        Err(_) => vec![0.0; d * d],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        for n in [0usize, 1, 7, 8, 9, 17, 64, 65] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-3, "n={n}");
        }
    }

    #[test]
    fn gram_is_xtx() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 x 2
        let g = gram(&x, 2);
        assert_eq!(g, vec![35.0, 44.0, 44.0, 56.0]);
        let mut out = [0.0; 2];
        symv(&g, &[1.0, 1.0], &mut out);
        assert_eq!(out, [79.0, 100.0]);
    }
}
