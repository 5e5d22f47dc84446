//! Compressed sparse rows: the customer x item matrix in both orientations.

use serde::{Deserialize, Serialize};

/// A sparse matrix with sorted column indices per row and `f32` values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Csr {
    /// Row `r` occupies `indptr[r]..indptr[r + 1]`.
    pub indptr: Vec<usize>,
    /// Column of each stored value.
    pub indices: Vec<u32>,
    /// The stored values.
    pub data: Vec<f32>,
    /// Number of columns.
    pub ncols: usize,
}

impl Csr {
    /// Builds from `(row, col, value)` triplets, summing duplicates.
    pub fn from_triplets(nrows: usize, ncols: usize, triplets: &[(u32, u32, f32)]) -> Self {
        let mut counts = vec![0usize; nrows + 1];
        for &(r, _, _) in triplets {
            counts[r as usize + 1] += 1;
        }
        for r in 0..nrows {
            counts[r + 1] += counts[r];
        }
        let mut next = counts.clone();
        let mut cols = vec![0u32; triplets.len()];
        let mut vals = vec![0f32; triplets.len()];
        for &(r, c, v) in triplets {
            let slot = &mut next[r as usize];
            cols[*slot] = c;
            vals[*slot] = v;
            *slot += 1;
        }
        // Sort each row by column and merge duplicates.
        let mut indptr = Vec::with_capacity(nrows + 1);
        let mut indices = Vec::with_capacity(triplets.len());
        let mut data = Vec::with_capacity(triplets.len());
        indptr.push(0);
        let mut row: Vec<(u32, f32)> = Vec::new();
        for r in 0..nrows {
            row.clear();
            row.extend((counts[r]..counts[r + 1]).map(|k| (cols[k], vals[k])));
            row.sort_unstable_by_key(|&(c, _)| c);
            for &(c, v) in &row {
                if indices.len() > indptr[r] && indices.last() == Some(&c) {
                    if let Some(last) = data.last_mut() {
                        *last += v;
                    }
                } else {
                    indices.push(c);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Self {
            indptr,
            indices,
            data,
            ncols,
        }
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Columns and values of row `r`.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// Number of stored values in row `r`.
    pub fn row_len(&self, r: usize) -> usize {
        self.indptr[r + 1] - self.indptr[r]
    }

    /// The transpose (item x customer from customer x item).
    pub fn transpose(&self) -> Csr {
        let nrows = self.nrows();
        let mut counts = vec![0usize; self.ncols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for c in 0..self.ncols {
            counts[c + 1] += counts[c];
        }
        let mut next = counts.clone();
        let mut indices = vec![0u32; self.nnz()];
        let mut data = vec![0f32; self.nnz()];
        // Rows are visited in order, so each transposed row ends up sorted.
        for r in 0..nrows {
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                let slot = &mut next[c as usize];
                indices[*slot] = r as u32;
                data[*slot] = v;
                *slot += 1;
            }
        }
        Csr {
            indptr: counts,
            indices,
            data,
            ncols: nrows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplets_merge_and_sort() {
        let m = Csr::from_triplets(2, 3, &[(0, 2, 1.0), (0, 0, 1.0), (0, 2, 2.0), (1, 1, 5.0)]);
        assert_eq!(m.row(0), (&[0u32, 2][..], &[1.0f32, 3.0][..]));
        assert_eq!(m.row(1), (&[1u32][..], &[5.0f32][..]));
        let t = m.transpose();
        assert_eq!(t.nrows(), 3);
        assert_eq!(t.row(2), (&[0u32][..], &[3.0f32][..]));
        assert_eq!(t.transpose(), m);
    }

    #[test]
    fn empty_rows_are_kept() {
        let m = Csr::from_triplets(3, 2, &[(2, 1, 1.0)]);
        assert_eq!(m.row_len(0), 0);
        assert_eq!(m.row_len(1), 0);
        assert_eq!(m.row(2).0, &[1]);
    }
}
