//! Matrix multiplication of quantized weights with f32 activations.

use crate::parallel::for_each_range;
use crate::qdot::{dot_quantized, quantize_row_for};
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

/// How activations meet quantized weights in a matmul.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activations {
    /// Weights are dequantized and dotted with f32 activations: the most
    /// accurate choice.
    #[default]
    F32,
    /// Activations are quantized to 8-bit blocks once per matmul and dotted
    /// with integer arithmetic, as GGML does: its numerics, bit for bit in scheme.
    Q8,
}

/// Rows dequantized together, so each activation vector is read once per tile
/// rather than once per row.
const TILE_ROWS: usize = 8;

/// Raw output pointer shared by threads that write disjoint elements.
struct OutPtr(*mut f32);
unsafe impl Sync for OutPtr {}

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for `n = x.len() / cols` tokens.
/// `x` is `n × cols`, `out` is `n × rows`, both row-major.
pub fn matmul(w: &WeightRef, x: &[f32], out: &mut [f32], acts: Activations) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "activations are not whole rows of {cols}"
    );
    let n = x.len() / cols;
    assert_eq!(out.len(), n * rows, "output is not {n} x {rows}");
    assert_eq!(
        w.data.len(),
        rows * w.row_bytes(),
        "weight bytes do not match its shape"
    );
    let out_ptr = OutPtr(out.as_mut_ptr());
    if acts == Activations::Q8 && w.dtype.act_format().is_some() {
        // Quantize each activation row once; every weight row reuses it.
        let quantized: Vec<_> = x
            .chunks_exact(cols)
            .map(|xt| quantize_row_for(w.dtype, xt).expect("quantized format"))
            .collect();
        let min_rows = (4096 / (cols * n / 32).max(1)).max(4);
        for_each_range(rows, 1, min_rows, |range| {
            let out_ptr = &out_ptr;
            for r in range {
                let row = w.row(r);
                for (t, a) in quantized.iter().enumerate() {
                    let v = dot_quantized(w.dtype, row, a);
                    // SAFETY: as below: in bounds, and rows are disjoint per thread.
                    unsafe { *out_ptr.0.add(t * rows + r) = v };
                }
            }
        });
        return;
    }
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
    use crate::quant::tests::random_row;

    /// Both activation paths agree with a plain dequantize-and-dot reference.
    #[test]
    fn quantized_matmul_matches_reference_on_both_paths() {
        for dtype in [
            DType::Q4_0,
            DType::Q5_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q6_K,
        ] {
            let (rows, cols, n) = (37, 512, 3);
            let data = random_row(dtype, rows * cols, 5 + dtype.ggml_id() as u64);
            let w = WeightRef {
                dtype,
                rows,
                cols,
                data: &data,
            };
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 11 % 19) as f32 - 9.0) * 0.05)
                .collect();
            let mut wrow = vec![0f32; cols];
            for acts in [Activations::F32, Activations::Q8] {
                let mut out = vec![0f32; n * rows];
                matmul(&w, &x, &mut out, acts);
                for r in 0..rows {
                    w.dequantize_row_into(r, &mut wrow);
                    for t in 0..n {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let want: f32 = wrow.iter().zip(xt).map(|(a, b)| a * b).sum();
                        let scale: f32 = wrow.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                        let got = out[t * rows + r];
                        // 8-bit activations err by up to half a step per value.
                        let tol =
                            if acts == Activations::F32 { 1e-4 } else { 2e-2 } * scale.max(1.0);
                        assert!(
                            (got - want).abs() <= tol,
                            "{dtype} {acts:?} r={r} t={t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_matches_naive_f32() {
        for (rows, cols, n) in [(1, 4, 1), (13, 32, 3), (40, 64, 5), (300, 96, 2)] {
            let wv: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.01)
                .collect();
            let data: Vec<u8> = wv.iter().flat_map(|v| v.to_le_bytes()).collect();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 5 % 23) as f32 - 11.0) * 0.1)
                .collect();
            let w = WeightRef {
                dtype: DType::F32,
                rows,
                cols,
                data: &data,
            };
            let mut out = vec![0f32; n * rows];
            matmul(&w, &x, &mut out, Activations::F32);
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| wv[r * cols + c] * x[t * cols + c]).sum();
                    let got = out[t * rows + r];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "({rows},{cols},{n}) t={t} r={r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
