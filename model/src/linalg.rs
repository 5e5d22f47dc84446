//! Small dense kernels written so LLVM vectorises them (fixed-width chunks with
//! independent accumulators); the big products go through ndarray's gemm.

/// Inner product of two equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

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
