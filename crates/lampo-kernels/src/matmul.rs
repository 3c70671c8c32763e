//! Matrix multiplication of quantized weights with f32 activations.

use crate::parallel::for_each_range;
use crate::quant::{DType, dequantize_row};
use crate::simd::dot_f32;

/// A weight matrix of `rows` × `cols` stored row-major as `dtype` in `data`.
#[derive(Clone, Copy, Debug)]
pub struct WeightRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> WeightRef<'a> {
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_len() * self.dtype.block_bytes()
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let b = self.row_bytes();
        &self.data[r * b..(r + 1) * b]
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(r), out);
    }
}

/// Rows dequantized together, so each activation vector is read once per tile
/// rather than once per row.
const TILE_ROWS: usize = 8;

/// Raw output pointer shared by threads that write disjoint elements.
struct OutPtr(*mut f32);
unsafe impl Sync for OutPtr {}

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for `n = x.len() / cols` tokens.
/// `x` is `n × cols`, `out` is `n × rows`, both row-major.
pub fn matmul(w: &WeightRef, x: &[f32], out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(cols > 0 && x.len() % cols == 0, "activations are not whole rows of {cols}");
    let n = x.len() / cols;
    assert_eq!(out.len(), n * rows, "output is not {n} x {rows}");
    assert_eq!(w.data.len(), rows * w.row_bytes(), "weight bytes do not match its shape");
    let out_ptr = OutPtr(out.as_mut_ptr());
    // Below a few rows per thread the spawn costs more than the work.
    let min_rows = (16384 / (cols * n).max(1)).max(TILE_ROWS);
    for_each_range(rows, TILE_ROWS, min_rows, |range| {
        let out_ptr = &out_ptr;
        let mut tile = vec![0f32; TILE_ROWS * cols];
        let mut r0 = range.start;
        while r0 < range.end {
            let r1 = (r0 + TILE_ROWS).min(range.end);
            for r in r0..r1 {
                w.dequantize_row_into(r, &mut tile[(r - r0) * cols..(r - r0 + 1) * cols]);
            }
            for (t, xt) in x.chunks_exact(cols).enumerate() {
                for r in r0..r1 {
                    let v = dot_f32(&tile[(r - r0) * cols..(r - r0 + 1) * cols], xt);
                    // SAFETY: `t < n` and `r < rows`, so the index is in bounds, and
                    // each thread owns a disjoint range of rows, so no two threads
                    // write the same element.
                    unsafe { *out_ptr.0.add(t * rows + r) = v };
                }
            }
            r0 = r1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive_f32() {
        for (rows, cols, n) in [(1, 4, 1), (13, 32, 3), (40, 64, 5), (300, 96, 2)] {
            let wv: Vec<f32> = (0..rows * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.01).collect();
            let data: Vec<u8> = wv.iter().flat_map(|v| v.to_le_bytes()).collect();
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 5 % 23) as f32 - 11.0) * 0.1).collect();
            let w = WeightRef { dtype: DType::F32, rows, cols, data: &data };
            let mut out = vec![0f32; n * rows];
            matmul(&w, &x, &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| wv[r * cols + c] * x[t * cols + c]).sum();
                    let got = out[t * rows + r];
                    assert!((got - want).abs() < 1e-4, "({rows},{cols},{n}) t={t} r={r}: {got} vs {want}");
                }
            }
        }
    }
}
