//! f32 vector primitives with a portable path and, on x86-64, an AVX2+FMA
//! path chosen once at run time.

use std::sync::OnceLock;

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
