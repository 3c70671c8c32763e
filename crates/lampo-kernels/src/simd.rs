//! f32 vector primitives, and the f32-by-f16 ones of attention over the f16
//! KV cache, with a portable path and, on x86-64, an AVX2+FMA(+F16C) path
//! chosen once at run time.

use std::sync::OnceLock;

use half::f16;

type GroupDotFn = fn(&[f32], &[f16], &mut [f32]);
type GroupAxpyFn = fn(&mut [f32], &[f32], &[f16]);

/// Attention scores of a group of query heads against one f16 key:
/// `out[g] = dot(queries[g], key)`, `queries` holding `out.len()` rows of
/// `key.len()` values. The key is widened once for the whole group.
#[inline]
pub fn group_dot_f16(queries: &[f32], key: &[f16], out: &mut [f32]) {
    assert_eq!(
        queries.len(),
        key.len() * out.len(),
        "queries are not rows of the key's length"
    );
    static DOT: OnceLock<GroupDotFn> = OnceLock::new();
    (DOT.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if f16c_available() {
            return group_dot_f16_avx2;
        }
        group_dot_f16_portable
    }))(queries, key, out)
}

/// Attention output of a group of heads for one f16 value:
/// `outs[g] += weights[g] * value`, `outs` holding `weights.len()` rows.
#[inline]
pub fn group_axpy_f16(outs: &mut [f32], weights: &[f32], value: &[f16]) {
    assert_eq!(
        outs.len(),
        value.len() * weights.len(),
        "outputs are not rows of the value's length"
    );
    static AXPY: OnceLock<GroupAxpyFn> = OnceLock::new();
    (AXPY.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if f16c_available() {
            return group_axpy_f16_avx2;
        }
        group_axpy_f16_portable
    }))(outs, weights, value)
}

#[cfg(target_arch = "x86_64")]
fn f16c_available() -> bool {
    avx2_fma() && is_x86_feature_detected!("f16c")
}

pub fn group_dot_f16_portable(queries: &[f32], key: &[f16], out: &mut [f32]) {
    let hd = key.len();
    for (o, q) in out.iter_mut().zip(queries.chunks_exact(hd.max(1))) {
        *o = q.iter().zip(key).map(|(a, b)| a * b.to_f32()).sum();
    }
}

pub fn group_axpy_f16_portable(outs: &mut [f32], weights: &[f32], value: &[f16]) {
    let hd = value.len();
    for (o, &w) in outs.chunks_exact_mut(hd.max(1)).zip(weights) {
        for (x, v) in o.iter_mut().zip(value) {
            *x += w * v.to_f32();
        }
    }
}

/// Most query heads per KV head the SIMD group kernels keep in registers;
/// larger groups go through them in slices.
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 8;

#[cfg(target_arch = "x86_64")]
fn group_dot_f16_avx2(queries: &[f32], key: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma,f16c")]
    fn inner(queries: &[f32], key: &[f16], out: &mut [f32]) {
        let hd = key.len();
        let full = hd / 8 * 8;
        for (qs, os) in queries.chunks(GROUP * hd).zip(out.chunks_mut(GROUP)) {
            let g = os.len();
            let mut acc = [_mm256_setzero_ps(); GROUP];
            let mut c = 0;
            while c < full {
                // SAFETY: `c + 8 <= hd`, and row `j < g` of `qs` has `hd` values.
                unsafe {
                    let k = _mm256_cvtph_ps(_mm_loadu_si128(key.as_ptr().add(c) as *const __m128i));
                    for (j, a) in acc[..g].iter_mut().enumerate() {
                        let q = _mm256_loadu_ps(qs.as_ptr().add(j * hd + c));
                        *a = _mm256_fmadd_ps(q, k, *a);
                    }
                }
                c += 8;
            }
            for (j, &v) in acc[..g].iter().enumerate() {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let mut sum = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
                for i in full..hd {
                    sum += qs[j * hd + i] * key[i].to_f32();
                }
                os[j] = sum;
            }
        }
    }
    // SAFETY: selected only after detecting AVX2, FMA and F16C.
    unsafe { inner(queries, key, out) }
}

#[cfg(target_arch = "x86_64")]
fn group_axpy_f16_avx2(outs: &mut [f32], weights: &[f32], value: &[f16]) {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma,f16c")]
    fn inner(outs: &mut [f32], weights: &[f32], value: &[f16]) {
        let hd = value.len();
        let full = hd / 8 * 8;
        let mut c = 0;
        while c < full {
            // SAFETY: `c + 8 <= hd`, and row `j` of `outs` has `hd` values.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(value.as_ptr().add(c) as *const __m128i));
                for (j, &w) in weights.iter().enumerate() {
                    let o = outs.as_mut_ptr().add(j * hd + c);
                    _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_set1_ps(w), v, _mm256_loadu_ps(o)));
                }
            }
            c += 8;
        }
        for (j, &w) in weights.iter().enumerate() {
            for i in full..hd {
                outs[j * hd + i] += w * value[i].to_f32();
            }
        }
    }
    // SAFETY: selected only after detecting AVX2, FMA and F16C.
    unsafe { inner(outs, weights, value) }
}

type DotFn = fn(&[f32], &[f32]) -> f32;

/// Dot product of two equally long f32 slices.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    static DOT: OnceLock<DotFn> = OnceLock::new();
    (DOT.get_or_init(select_dot))(a, b)
}

fn select_dot() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if !portable_forced() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return dot_avx2;
    }
    dot_portable
}

/// Whether the AVX2+FMA builds of the elementwise ops may run here.
#[cfg(target_arch = "x86_64")]
pub fn avx2_fma() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        !portable_forced() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    })
}

/// `LAMPO_PORTABLE=1` forces the portable kernels, so CI can test both paths.
pub fn portable_forced() -> bool {
    std::env::var_os("LAMPO_PORTABLE").is_some_and(|v| v != "0")
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

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn inner(a: &[f32], b: &[f32]) -> f32 {
        dot_lanes(a, b)
    }
    // SAFETY: only selected after runtime detection of AVX2 and FMA.
    unsafe { inner(a, b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_kernels_match_portable_on_odd_sizes() {
        for (groups, hd) in [
            (1usize, 8usize),
            (3, 64),
            (6, 128),
            (7, 64),
            (12, 72),
            (2, 13),
        ] {
            let q: Vec<f32> = (0..groups * hd)
                .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.25)
                .collect();
            let k: Vec<f16> = (0..hd)
                .map(|i| f16::from_f32(((i * 7 % 11) as f32 - 5.0) * 0.5))
                .collect();
            let (mut fast, mut slow) = (vec![0f32; groups], vec![0f32; groups]);
            group_dot_f16(&q, &k, &mut fast);
            group_dot_f16_portable(&q, &k, &mut slow);
            for g in 0..groups {
                let exact: f64 = (0..hd).map(|i| q[g * hd + i] as f64 * k[i].to_f64()).sum();
                assert!(
                    (fast[g] as f64 - exact).abs() < 1e-3,
                    "dot {groups}x{hd} g={g}"
                );
                assert!(
                    (slow[g] as f64 - exact).abs() < 1e-3,
                    "portable dot {groups}x{hd}"
                );
            }
            let w: Vec<f32> = (0..groups).map(|g| 0.1 + g as f32 * 0.05).collect();
            let (mut fast, mut slow) = (q.clone(), q.clone());
            group_axpy_f16(&mut fast, &w, &k);
            group_axpy_f16_portable(&mut slow, &w, &k);
            for i in 0..groups * hd {
                let want = q[i] + w[i / hd] * k[i % hd].to_f32();
                assert!((fast[i] - want).abs() < 1e-5, "axpy {groups}x{hd} at {i}");
                assert!((slow[i] - want).abs() < 1e-5, "portable axpy {groups}x{hd}");
            }
        }
    }

    #[test]
    fn dispatched_dot_matches_portable_on_odd_sizes() {
        for n in [0usize, 1, 7, 15, 16, 17, 31, 64, 100, 577, 1536] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.25)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.5).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for (name, got) in [
                ("dispatched", dot_f32(&a, &b)),
                ("portable", dot_portable(&a, &b)),
            ] {
                assert!(
                    (got as f64 - exact).abs() < 1e-3,
                    "{name} n={n}: {got} vs {exact}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                assert!((dot_avx2(&a, &b) as f64 - exact).abs() < 1e-3, "avx2 n={n}");
            }
        }
    }
}
