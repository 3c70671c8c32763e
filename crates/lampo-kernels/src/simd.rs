//! f32 vector primitives, and the f32-by-f16 ones of attention over the f16
//! KV cache: a portable version of each and, on x86-64, an AVX2+FMA+F16C
//! one, which the kernel table ([`crate::kernels`]) hands out only on CPUs
//! that have them. Every version checks the shapes it is given.

use half::f16;

/// A run of `n` f16 vectors of `len` values, `stride` values apart (one
/// head's keys or values at consecutive positions of a KV block).
#[derive(Clone, Copy, Debug)]
pub struct F16Run<'a> {
    pub data: &'a [f16],
    pub stride: usize,
    pub len: usize,
    pub n: usize,
}

impl F16Run<'_> {
    fn check(&self) {
        assert!(
            self.n == 0 || (self.n - 1) * self.stride + self.len <= self.data.len(),
            "a run of {} vectors of {} every {} overruns {} values",
            self.n,
            self.len,
            self.stride,
            self.data.len()
        );
    }

    fn at(&self, j: usize) -> &[f16] {
        &self.data[j * self.stride..][..self.len]
    }
}

fn check_scores(queries: &[f32], keys: &F16Run, scores: &[f32]) {
    keys.check();
    let g = queries.len() / keys.len.max(1);
    assert_eq!(
        queries.len(),
        g * keys.len,
        "queries are not rows of the key's length"
    );
    assert_eq!(scores.len(), g * keys.n, "scores are not {} x {g}", keys.n);
}

fn check_sum(outs: &[f32], weights: &[f32], weight_stride: usize, values: &F16Run) {
    values.check();
    let g = outs.len() / values.len.max(1);
    assert_eq!(
        outs.len(),
        g * values.len,
        "outputs are not rows of the value's length"
    );
    assert!(
        g == 0 || values.n == 0 || (g - 1) * weight_stride + values.n <= weights.len(),
        "weights are not {g} rows of {} every {weight_stride}",
        values.n
    );
}

/// Attention scores of a group of query heads against a run of f16 keys:
/// `scores[j * g + i] = dot(queries[i], key j)` for the `g` rows of
/// `queries`. Each key is widened once for the whole group.
pub fn group_scores_f16_portable(queries: &[f32], keys: F16Run, scores: &mut [f32]) {
    check_scores(queries, &keys, scores);
    let hd = keys.len.max(1);
    let g = queries.len() / hd;
    for j in 0..keys.n {
        let key = keys.at(j);
        for (o, q) in scores[j * g..(j + 1) * g]
            .iter_mut()
            .zip(queries.chunks_exact(hd))
        {
            *o = q.iter().zip(key).map(|(a, b)| a * b.to_f32()).sum();
        }
    }
}

/// Attention output of a group of heads over a run of f16 values:
/// `outs[i] += sum_j weights[i * weight_stride + j] * value j`, `outs`
/// holding one row of `values.len` per head.
pub fn group_weighted_sum_f16_portable(
    outs: &mut [f32],
    weights: &[f32],
    weight_stride: usize,
    values: F16Run,
) {
    check_sum(outs, weights, weight_stride, &values);
    let hd = values.len.max(1);
    for j in 0..values.n {
        let value = values.at(j);
        for (i, o) in outs.chunks_exact_mut(hd).enumerate() {
            let w = weights[i * weight_stride + j];
            for (x, v) in o.iter_mut().zip(value) {
                *x += w * v.to_f32();
            }
        }
    }
}

/// Most query heads per KV head the SIMD group kernels keep in registers;
/// larger groups go through them in slices.
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 8;

/// Calls `$f::<G>` for the group size `$g` (1 to `GROUP`), so that each
/// size gets a kernel whose accumulators live in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! by_group {
    ($g:expr, $f:ident, $($arg:expr),*) => {
        match $g {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}

/// As [`group_scores_f16_portable`] (AVX2+FMA+F16C; only reachable
/// through a kernel table built after detecting them).
#[cfg(target_arch = "x86_64")]
pub(crate) fn group_scores_f16_avx2(queries: &[f32], keys: F16Run, scores: &mut [f32]) {
    check_scores(queries, &keys, scores);
    let hd = keys.len;
    let g_all = queries.len() / hd.max(1);
    for g0 in (0..g_all).step_by(GROUP) {
        let g = (g_all - g0).min(GROUP);
        let qs = &queries[g0 * hd..(g0 + g) * hd];
        // SAFETY: in a kernel table only after detecting AVX2, FMA and
        // F16C; the shapes were checked above.
        unsafe { by_group!(g, scores_avx2, qs, keys, scores, g_all, g0) }
    }
}

/// Scores of `G` query heads (rows `g0..g0 + G` of the `g_all`-head group).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn scores_avx2<const G: usize>(
    qs: &[f32],
    keys: F16Run,
    scores: &mut [f32],
    g_all: usize,
    g0: usize,
) {
    use std::arch::x86_64::*;
    let hd = keys.len;
    let full = hd / 8 * 8;
    for j in 0..keys.n {
        let key = keys.at(j);
        let mut acc = [_mm256_setzero_ps(); G];
        let mut c = 0;
        while c < full {
            // SAFETY: `c + 8 <= hd`, and each of the `G` rows of `qs` has `hd` values.
            unsafe {
                let k = _mm256_cvtph_ps(_mm_loadu_si128(key.as_ptr().add(c) as *const __m128i));
                for (i, a) in acc.iter_mut().enumerate() {
                    let q = _mm256_loadu_ps(qs.as_ptr().add(i * hd + c));
                    *a = _mm256_fmadd_ps(q, k, *a);
                }
            }
            c += 8;
        }
        finish_scores::<G>(&acc, qs, key, full, &mut scores[j * g_all + g0..]);
    }
}

/// Sums each head's eight lanes (and the columns past the last eight)
/// into `out[i]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish_scores<const G: usize>(
    acc: &[std::arch::x86_64::__m256; G],
    qs: &[f32],
    key: &[f16],
    full: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = key.len();
    for (i, &v) in acc.iter().enumerate() {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        for x in full..hd {
            sum += qs[i * hd + x] * key[x].to_f32();
        }
        out[i] = sum;
    }
}

/// As [`group_weighted_sum_f16_portable`] (AVX2+FMA+F16C; only reachable
/// through a kernel table built after detecting them).
#[cfg(target_arch = "x86_64")]
pub(crate) fn group_weighted_sum_f16_avx2(
    outs: &mut [f32],
    weights: &[f32],
    weight_stride: usize,
    values: F16Run,
) {
    check_sum(outs, weights, weight_stride, &values);
    let hd = values.len;
    let g_all = outs.len() / hd.max(1);
    for g0 in (0..g_all).step_by(GROUP) {
        let g = (g_all - g0).min(GROUP);
        let os = &mut outs[g0 * hd..(g0 + g) * hd];
        let ws = &weights[g0 * weight_stride..];
        // SAFETY: in a kernel table only after detecting AVX2, FMA and
        // F16C; the shapes were checked above.
        unsafe { by_group!(g, weighted_sum_avx2, os, ws, weight_stride, values) }
    }
}

/// The weighted sum for `G` heads: eight columns of each head's output
/// stay in registers while the whole run of values passes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum_avx2<const G: usize>(
    outs: &mut [f32],
    weights: &[f32],
    weight_stride: usize,
    values: F16Run,
) {
    use std::arch::x86_64::*;
    let hd = values.len;
    let full = hd / 8 * 8;
    let mut c = 0;
    while c < full {
        // SAFETY: `c + 8 <= hd`; the `G` rows of `outs` have `hd` values;
        // value `j < n` has `hd` values at `j * stride`; the weights cover
        // `G` rows of `n` every `weight_stride` (checked by the caller).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); G];
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(outs.as_ptr().add(i * hd + c));
            }
            for j in 0..values.n {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(
                    values.data.as_ptr().add(j * values.stride + c) as *const __m128i,
                ));
                for (i, a) in acc.iter_mut().enumerate() {
                    let w = *weights.get_unchecked(i * weight_stride + j);
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(w), v, *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(outs.as_mut_ptr().add(i * hd + c), *a);
            }
        }
        c += 8;
    }
    for j in 0..values.n {
        let value = values.at(j);
        for i in 0..G {
            let w = weights[i * weight_stride + j];
            for x in full..hd {
                outs[i * hd + x] += w * value[x].to_f32();
            }
        }
    }
}

/// Eight independent accumulators let the compiler keep several vector
/// registers busy instead of serialising on one sum.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = x.mul_add(*y, tail);
    }
    let mut s = [0f32; 8];
    for i in 0..8 {
        s[i] = acc[i] + acc[i + 8];
    }
    (s[0] + s[4]) + (s[1] + s[5]) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}

/// The f32 value of the BF16 value in two little-endian bytes.
#[inline(always)]
fn widen_bf16(b: &[u8]) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
}

/// BF16 weights dotted with 1 to 4 activation rows at once (`x` holds
/// `out.len()` rows of `w`'s length), one result per row.
pub type Bf16Dot = fn(w: &[u8], x: &[f32], out: &mut [f32]);

/// BF16 weights (`w`, two bytes a value) dotted with f32 activations
/// (portable): the sums of [`dot_portable`] over the widened row (a BF16
/// value is the top half of an f32, so the widening is exact).
pub fn dot_bf16_portable(w: &[u8], x: &[f32]) -> f32 {
    let n = (w.len() / 2).min(x.len());
    let mut acc = [0f32; 8];
    let mut cw = w[..2 * n].chunks_exact(16);
    let mut cx = x[..n].chunks_exact(8);
    for (wb, xb) in (&mut cw).zip(&mut cx) {
        for i in 0..8 {
            acc[i] += widen_bf16(&wb[2 * i..2 * i + 2]) * xb[i];
        }
    }
    let tail: f32 = cw
        .remainder()
        .chunks_exact(2)
        .zip(cx.remainder())
        .map(|(wb, xv)| widen_bf16(wb) * xv)
        .sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`dot_bf16_portable`] once per activation row.
pub fn dot_bf16_rows_portable(w: &[u8], x: &[f32], out: &mut [f32]) {
    let n = w.len() / 2;
    for (t, o) in out.iter_mut().enumerate() {
        *o = dot_bf16_portable(w, &x[t * n..(t + 1) * n]);
    }
}

/// BF16 weights dotted with `N` activation rows, each 16 weights widened
/// once (two 8-lane vectors) for all rows; per row exactly the sums of
/// [`dot_lanes`] over the widened weights.
///
/// # Safety
/// AVX2 and FMA are present; `w` holds `n` values and `x` `N × n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_bf16_rows_n<const N: usize>(w: &[u8], x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = w.len() / 2;
    let full = n / 16 * 16;
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
    let widen8 = |p: *const u8| {
        // SAFETY: 16 readable bytes at `p` (within `w`'s `full` values).
        let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    };
    for c in (0..full).step_by(16) {
        let wp = w[2 * c..2 * c + 32].as_ptr();
        let (w_lo, w_hi) = (widen8(wp), widen8(wp.wrapping_add(16)));
        for t in 0..N {
            let xp = x[t * n + c..t * n + c + 16].as_ptr();
            // SAFETY: `xp` points at 16 values of row `t`.
            unsafe {
                lo[t] = _mm256_fmadd_ps(w_lo, _mm256_loadu_ps(xp), lo[t]);
                hi[t] = _mm256_fmadd_ps(w_hi, _mm256_loadu_ps(xp.add(8)), hi[t]);
            }
        }
    }
    for t in 0..N {
        let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
        // SAFETY: eight writable floats each.
        unsafe {
            _mm256_storeu_ps(a.as_mut_ptr(), lo[t]);
            _mm256_storeu_ps(b.as_mut_ptr(), hi[t]);
        }
        let mut tail = 0f32;
        for j in full..n {
            tail = widen_bf16(&w[2 * j..2 * j + 2]).mul_add(x[t * n + j], tail);
        }
        let s: [f32; 8] = std::array::from_fn(|i| a[i] + b[i]);
        out[t] = (s[0] + s[4]) + (s[1] + s[5]) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
    }
}

/// As [`dot_bf16_rows_portable`] on AVX2+FMA, each weight widened once for
/// every row (only reachable through a kernel table built after detecting
/// them).
#[cfg(target_arch = "x86_64")]
pub(crate) fn dot_bf16_rows_avx2(w: &[u8], x: &[f32], out: &mut [f32]) {
    assert!(
        (1..=4).contains(&out.len()) && x.len() == out.len() * (w.len() / 2),
        "{} activation values for {} rows of {} weights",
        x.len(),
        out.len(),
        w.len() / 2
    );
    // SAFETY: in a kernel table only after detecting AVX2 and FMA; the
    // lengths were checked.
    unsafe {
        match out.len() {
            1 => dot_bf16_rows_n::<1>(w, x, out),
            2 => dot_bf16_rows_n::<2>(w, x, out),
            3 => dot_bf16_rows_n::<3>(w, x, out),
            _ => dot_bf16_rows_n::<4>(w, x, out),
        }
    }
}

/// Dot product of two equally long f32 slices.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Without FMA hardware `mul_add` is a slow library call: multiply and add instead.
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let mut ca = a[..n].chunks_exact(8);
    let mut cb = b[..n].chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// As [`dot_portable`] (AVX2+FMA; only reachable through a kernel table
/// built after detecting them).
#[cfg(target_arch = "x86_64")]
pub(crate) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn inner(a: &[f32], b: &[f32]) -> f32 {
        dot_lanes(a, b)
    }
    // SAFETY: in a kernel table only after detecting AVX2 and FMA.
    unsafe { inner(a, b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_group_kernels_are_dots_and_weighted_sums() {
        let (hd, n) = (4, 3);
        let q = [1.0f32, 2.0, 0.0, -1.0, 0.5, 0.5, 0.5, 0.5];
        let data: Vec<f16> = (0..n * hd).map(|i| f16::from_f32(i as f32)).collect();
        let run = F16Run {
            data: &data,
            stride: hd,
            len: hd,
            n,
        };
        let mut scores = vec![0f32; 2 * n];
        group_scores_f16_portable(&q, run, &mut scores);
        // Key j is [4j, 4j+1, 4j+2, 4j+3].
        for j in 0..n {
            let k: Vec<f32> = (0..hd).map(|x| (4 * j + x) as f32).collect();
            assert_eq!(scores[2 * j], k[0] + 2.0 * k[1] - k[3]);
            assert_eq!(scores[2 * j + 1], 0.5 * k.iter().sum::<f32>());
        }
        let mut out = vec![0f32; 2 * hd];
        let w = [1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0];
        group_weighted_sum_f16_portable(&mut out, &w, 3, run);
        assert_eq!(&out[..hd], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(&out[hd..], &[8.0, 9.0, 10.0, 11.0]);
        assert_eq!(dot_portable(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
    }
}
