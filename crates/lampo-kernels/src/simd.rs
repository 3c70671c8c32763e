//! f32 vector primitives (and f32 against f16, for attention over the f16
//! KV cache) with a portable path and, on x86-64, an AVX2+FMA(+F16C) path
//! chosen once at run time.

use std::sync::OnceLock;

use half::f16;

type DotF16Fn = fn(&[f32], &[f16]) -> f32;
type AxpyF16Fn = fn(&mut [f32], f32, &[f16]);

/// Dot product of f32 `a` with f16 `b`, widened as it goes.
#[inline]
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    static DOT: OnceLock<DotF16Fn> = OnceLock::new();
    (DOT.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if f16c_available() {
            return dot_f16_avx2;
        }
        dot_f16_portable
    }))(a, b)
}

/// `out += w * v` for f16 `v`.
#[inline]
pub fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
    debug_assert_eq!(out.len(), v.len());
    static AXPY: OnceLock<AxpyF16Fn> = OnceLock::new();
    (AXPY.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if f16c_available() {
            return axpy_f16_avx2;
        }
        axpy_f16_portable
    }))(out, w, v)
}

#[cfg(target_arch = "x86_64")]
fn f16c_available() -> bool {
    !portable_forced()
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub fn dot_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y.to_f32())
        .sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

pub fn axpy_f16_portable(out: &mut [f32], w: f32, v: &[f16]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o += w * x.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma,f16c")]
    fn inner(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` keeps both 8-value loads in bounds.
            unsafe {
                let x = _mm256_loadu_ps(a.as_ptr().add(i));
                let y = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                acc = _mm256_fmadd_ps(x, y, acc);
            }
            i += 8;
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        for j in i..n {
            sum += a[j] * b[j].to_f32();
        }
        sum
    }
    // SAFETY: selected only after detecting AVX2, FMA and F16C.
    unsafe { inner(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn axpy_f16_avx2(out: &mut [f32], w: f32, v: &[f16]) {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma,f16c")]
    fn inner(out: &mut [f32], w: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` keeps the loads and the store in bounds.
            unsafe {
                let o = out.as_mut_ptr().add(i);
                let y = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
                _mm256_storeu_ps(o, _mm256_fmadd_ps(wv, y, _mm256_loadu_ps(o)));
            }
            i += 8;
        }
        for j in i..n {
            out[j] += w * v[j].to_f32();
        }
    }
    // SAFETY: selected only after detecting AVX2, FMA and F16C.
    unsafe { inner(out, w, v) }
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
    fn f16_dot_and_axpy_match_portable_on_odd_sizes() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 200] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.25)
                .collect();
            let b: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(((i * 7 % 11) as f32 - 5.0) * 0.5))
                .collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * y.to_f64()).sum();
            assert!((dot_f16(&a, &b) as f64 - exact).abs() < 1e-3, "dot n={n}");
            assert!(
                (dot_f16_portable(&a, &b) as f64 - exact).abs() < 1e-3,
                "portable n={n}"
            );
            let mut fast = a.clone();
            let mut slow = a.clone();
            axpy_f16(&mut fast, 0.75, &b);
            axpy_f16_portable(&mut slow, 0.75, &b);
            for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
                assert!((x - y).abs() < 1e-5, "axpy n={n} i={i}: {x} vs {y}");
                assert!(
                    (x - (a[i] + 0.75 * b[i].to_f32())).abs() < 1e-5,
                    "axpy value"
                );
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
