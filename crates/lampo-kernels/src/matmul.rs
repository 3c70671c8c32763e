//! Matrix multiplication of quantized weights with f32 activations.

use std::ops::Range;

use crate::kernels::Kernels;
use crate::parallel::ThreadPool;
use crate::qdot::{ActFormat, MAX_TOKENS, Q8Block, Q8KBlock};
use crate::quant::{DType, QK_K, dequantize_row};
use crate::repack::Rows8Format;

/// How a weight matrix's blocks are ordered in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Row after row, as in GGUF.
    #[default]
    Rows,
    /// Eight rows interleaved per block column ([`crate::repack`]).
    Rows8,
}

/// A weight matrix of `rows` × `cols` stored as `dtype` in `data`.
#[derive(Clone, Copy, Debug)]
pub struct WeightRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub layout: Layout,
}

impl<'a> WeightRef<'a> {
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_len() * self.dtype.block_bytes()
    }

    /// Bytes of the whole matrix in its layout.
    pub fn bytes(&self) -> usize {
        match (self.layout, Rows8Format::of(self.dtype)) {
            (Layout::Rows8, Some(f)) if self.rows.is_multiple_of(8) => {
                self.rows / 8 * (self.cols / f.block_len()) * f.group_bytes()
            }
            (Layout::Rows8, _) => panic!("{} cannot be interleaved", self.dtype),
            (Layout::Rows, _) => self.rows * self.row_bytes(),
        }
    }

    /// Row `r`'s blocks (row-major layout only).
    pub fn row(&self, r: usize) -> &'a [u8] {
        debug_assert_eq!(self.layout, Layout::Rows);
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
    /// accurate choice, and several times slower.
    F32,
    /// Activations are quantized to 8-bit blocks once per matmul and dotted
    /// with integer arithmetic, as GGML does (with f32 rather than f16 block
    /// scales, which loses less).
    #[default]
    Q8,
}

/// Rows dequantized together on the f32 path, so each activation vector is
/// read once per tile rather than once per row.
const TILE_ROWS: usize = 8;

/// Rows of quantized weights whose blocks stay in L1 while every group of
/// tokens passes over them.
const INT_TILE_ROWS: usize = 16;

/// The same for interleaved weights, in rows (multiples of eight): prompt
/// processing measured a few percent faster at 64 than at 16 or 128.
const INT8_TILE_ROWS: usize = 64;

/// Raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// How a matmul runs: on which threads, with which kernels, and how
/// activations meet the weights.
#[derive(Clone, Copy)]
pub struct MatmulCtx<'a> {
    pub pool: &'a ThreadPool,
    pub kernels: &'a Kernels,
    pub acts: Activations,
}

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for `n = x.len() / cols` tokens.
/// `x` is `n × cols`, `out` is `n × rows`, both row-major.
pub fn matmul(ctx: MatmulCtx, w: &WeightRef, x: &[f32], out: &mut [f32]) {
    matmul_many(ctx, x, &mut [(*w, out)]);
}

/// Several matmuls of the same input (a layer's Q, K and V, or its gate and
/// up projections) in one parallel region: the input is quantized once and
/// threads split the rows of all of them, so there is one sync, not three.
pub fn matmul_many(ctx: MatmulCtx, x: &[f32], jobs: &mut [(WeightRef, &mut [f32])]) {
    let (pool, kernels, acts) = (ctx.pool, ctx.kernels, ctx.acts);
    let Some(cols) = jobs.first().map(|(w, _)| w.cols) else {
        return;
    };
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "activations are not whole rows of {cols}"
    );
    let n = x.len() / cols;
    for (w, out) in jobs.iter() {
        assert_eq!(w.cols, cols, "matmuls of one input differ in width");
        assert_eq!(out.len(), n * w.rows, "output is not {n} x {}", w.rows);
        assert_eq!(
            w.data.len(),
            w.bytes(),
            "weight bytes do not match its shape"
        );
    }
    let integer = |w: &WeightRef| acts == Activations::Q8 && w.dtype.act_format().is_some();
    let wants = |f: ActFormat| {
        jobs.iter()
            .any(|(w, _)| integer(w) && w.dtype.act_format() == Some(f))
    };
    let dots = &kernels.dots;
    let q8 = if wants(ActFormat::Q8) {
        quantize_rows(pool, x, cols, 32, Q8Block::ZERO, dots.quantize_q8)
    } else {
        Vec::new()
    };
    let q8k = if wants(ActFormat::Q8K) {
        quantize_rows(pool, x, cols, QK_K, Q8KBlock::ZERO, dots.quantize_q8k)
    } else {
        Vec::new()
    };
    let parts: Vec<(WeightRef, OutPtr)> = jobs
        .iter_mut()
        .map(|(w, out)| (*w, OutPtr(out.as_mut_ptr())))
        .collect();
    let total: usize = parts.iter().map(|(w, _)| w.rows).sum();
    // Below this many rows per thread, the sync costs more than the work.
    let min_rows = (32768 / (cols * n)).max(INT_TILE_ROWS);
    pool.for_each_range(total, INT_TILE_ROWS, min_rows, |range| {
        let mut base = 0;
        for (w, out) in &parts {
            let (lo, hi) = (range.start.max(base), range.end.min(base + w.rows));
            if lo < hi {
                let rows = lo - base..hi - base;
                match (integer(w), w.layout) {
                    (true, Layout::Rows8) => {
                        let k = dots
                            .rows8
                            .expect("interleaved weights without their kernels");
                        match (k.dots.q8(w.dtype), k.dots.q8k(w.dtype)) {
                            (Some(k), _) => integer_rows8(w, &q8, k, n, rows, *out),
                            (_, Some(k)) => integer_rows8(w, &q8k, k, n, rows, *out),
                            _ => unreachable!("interleaved weights of a format without kernels"),
                        }
                    }
                    (false, Layout::Rows8) => {
                        panic!("interleaved weights need 8-bit activations")
                    }
                    (true, Layout::Rows) => match (dots.rows.q8(w.dtype), dots.rows.q8k(w.dtype)) {
                        (Some(k), _) => integer_rows(w, &q8, k, n, rows, *out),
                        (_, Some(k)) => integer_rows(w, &q8k, k, n, rows, *out),
                        _ => unreachable!("a format with 8-bit activations has a kernel"),
                    },
                    (false, Layout::Rows) if w.dtype == DType::BF16 => {
                        bf16_rows(kernels.dot_bf16, w, x, rows, *out)
                    }
                    (false, Layout::Rows) => float_rows(kernels.dot_f32, w, x, rows, *out),
                }
            }
            base += w.rows;
        }
    });
}

/// Each row of `x` quantized to blocks of `block` values, in parallel for
/// prompts long enough to pay for it.
fn quantize_rows<B: Copy + Send>(
    pool: &ThreadPool,
    x: &[f32],
    cols: usize,
    block: usize,
    zero: B,
    quantize: fn(&[f32], &mut [B]),
) -> Vec<B> {
    let per_row = cols / block;
    let mut blocks = vec![zero; x.len() / block];
    let n = x.len() / cols;
    if n < 16 {
        for (xt, bt) in x.chunks_exact(cols).zip(blocks.chunks_exact_mut(per_row)) {
            quantize(xt, bt);
        }
    } else {
        pool.for_each_chunk_mut(&mut blocks, per_row, |t, bt| {
            quantize(&x[t * cols..(t + 1) * cols], bt)
        });
    }
    blocks
}

/// Rows `rows` of `w` against all `n` quantized activation rows, a tile of
/// weight rows at a time and up to `MAX_TOKENS` tokens per kernel call.
fn integer_rows<B>(
    w: &WeightRef,
    acts: &[B],
    kernel: fn(&[u8], &[B], &mut [f32]),
    n: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    let per_row = acts.len() / n;
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + INT_TILE_ROWS).min(rows.end);
        let mut t0 = 0;
        while t0 < n {
            let nt = (n - t0).min(MAX_TOKENS);
            let a = &acts[t0 * per_row..(t0 + nt) * per_row];
            for r in r0..r1 {
                let mut res = [0f32; MAX_TOKENS];
                kernel(w.row(r), a, &mut res[..nt]);
                for (t, v) in res[..nt].iter().enumerate() {
                    // SAFETY: `t0 + t < n` and `r < rows`, so the index is in
                    // bounds, and each thread owns a disjoint range of rows.
                    unsafe { *out.0.add((t0 + t) * w.rows + r) = *v };
                }
            }
            t0 += nt;
        }
        r0 = r1;
    }
}

/// As `integer_rows`, for weights interleaved eight rows at a time: each
/// thread takes the groups whose first row falls in its range.
fn integer_rows8<B>(
    w: &WeightRef,
    acts: &[B],
    kernel: fn(&[u8], &[B], &mut [f32]),
    n: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    let per_row = acts.len() / n;
    let group_bytes = w.data.len() / (w.rows / 8);
    let (g_start, g_end) = (rows.start.div_ceil(8), rows.end.div_ceil(8));
    let tile = INT8_TILE_ROWS / 8;
    let mut g0 = g_start;
    while g0 < g_end {
        let g1 = (g0 + tile).min(g_end);
        let mut t0 = 0;
        while t0 < n {
            let nt = (n - t0).min(MAX_TOKENS);
            let a = &acts[t0 * per_row..(t0 + nt) * per_row];
            for g in g0..g1 {
                let mut res = [0f32; 8 * MAX_TOKENS];
                kernel(
                    &w.data[g * group_bytes..(g + 1) * group_bytes],
                    a,
                    &mut res[..8 * nt],
                );
                for t in 0..nt {
                    for i in 0..8 {
                        // SAFETY: as in `integer_rows`; group `g`'s rows belong
                        // to this thread alone.
                        unsafe { *out.0.add((t0 + t) * w.rows + 8 * g + i) = res[8 * t + i] };
                    }
                }
            }
            t0 += nt;
        }
        g0 = g1;
    }
}

/// Rows `rows` of `w` dequantized to f32 and dotted with f32 activations.
/// BF16 weights read in place, widened in registers by the dot itself,
/// for up to [`MAX_TOKENS`] tokens per pass over a row.
fn bf16_rows(
    dot_bf16: crate::simd::Bf16Dot,
    w: &WeightRef,
    x: &[f32],
    rows: Range<usize>,
    out: OutPtr,
) {
    let cols = w.cols;
    let n = x.len() / cols;
    let mut res = [0f32; MAX_TOKENS];
    for t0 in (0..n).step_by(MAX_TOKENS) {
        let t1 = (t0 + MAX_TOKENS).min(n);
        for r in rows.clone() {
            dot_bf16(w.row(r), &x[t0 * cols..t1 * cols], &mut res[..t1 - t0]);
            for (t, &v) in (t0..t1).zip(&res) {
                // SAFETY: as in `integer_rows`.
                unsafe { *out.0.add(t * w.rows + r) = v };
            }
        }
    }
}

fn float_rows(
    dot_f32: fn(&[f32], &[f32]) -> f32,
    w: &WeightRef,
    x: &[f32],
    rows: Range<usize>,
    out: OutPtr,
) {
    let cols = w.cols;
    let mut tile = vec![0f32; TILE_ROWS * cols];
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + TILE_ROWS).min(rows.end);
        for r in r0..r1 {
            w.dequantize_row_into(r, &mut tile[(r - r0) * cols..(r - r0 + 1) * cols]);
        }
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            for r in r0..r1 {
                let v = dot_f32(&tile[(r - r0) * cols..(r - r0 + 1) * cols], xt);
                // SAFETY: as in `integer_rows`.
                unsafe { *out.0.add(t * w.rows + r) = v };
            }
        }
        r0 = r1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::random_row;

    fn ctx(pool: &ThreadPool, acts: Activations) -> MatmulCtx<'_> {
        MatmulCtx {
            pool,
            kernels: &Kernels::PORTABLE,
            acts,
        }
    }

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
                layout: Layout::Rows,
            };
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 11 % 19) as f32 - 9.0) * 0.05)
                .collect();
            let mut wrow = vec![0f32; cols];
            let pool = ThreadPool::new(2);
            for acts in [Activations::F32, Activations::Q8] {
                let mut out = vec![0f32; n * rows];
                matmul(ctx(&pool, acts), &w, &x, &mut out);
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
                layout: Layout::Rows,
            };
            let mut out = vec![0f32; n * rows];
            matmul(ctx(&ThreadPool::new(2), Activations::F32), &w, &x, &mut out);
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
