//! Activations to 8-bit blocks with AVX2, bit-identical to the portable
//! quantizers.

use std::arch::x86_64::*;

use crate::qdot::{Q8Block, Q8KBlock};
use crate::quant::QK_K;

/// Activations to 32-value blocks, with the same results as
/// `quantize_q8_generic` (the largest magnitude maps to ±127, halves round
/// to even, which is the default rounding mode of `vcvtps2dq`), written out
/// because the compiler does not vectorize the portable loop's maximum and
/// saturating casts.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_q8_avx2(x: &[f32], out: &mut [Q8Block]) {
    assert!(
        x.len().is_multiple_of(32) && out.len() == x.len() / 32,
        "activations of {} values are not {} 32-blocks",
        x.len(),
        out.len()
    );
    let sign = _mm256_set1_ps(-0.0);
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: `xs` has 32 values; `b.qs` has 32 bytes.
        unsafe {
            let p = xs.as_ptr();
            let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i)));
            let m = v.iter().fold(_mm256_setzero_ps(), |m, &x| {
                _mm256_max_ps(m, _mm256_andnot_ps(sign, x))
            });
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let q = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
            // Packing works within 128-bit lanes: put the 4-byte groups back in order.
            let bytes = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, bytes);
            b.d = d;
            b.s = d * sum as f32;
        }
    }
}

/// Activations to 256-value blocks, with the same results as
/// `quantize_q8k_generic`: the first value of largest magnitude maps to
/// -127 (its sign goes into the scale), and each 16 values are summed.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_q8k_avx2(x: &[f32], out: &mut [Q8KBlock]) {
    assert!(
        x.len().is_multiple_of(QK_K) && out.len() == x.len() / QK_K,
        "activations of {} values are not {} 256-blocks",
        x.len(),
        out.len()
    );
    let sign = _mm256_set1_ps(-0.0);
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        // SAFETY: `xs` has 256 values, `b.qs` 256 bytes.
        unsafe {
            let p = xs.as_ptr();
            let mut m = _mm256_setzero_ps();
            for i in (0..QK_K).step_by(8) {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(i))));
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            if amax == 0.0 {
                *b = Q8KBlock::ZERO;
                continue;
            }
            // The first value whose magnitude is the largest gives the sign.
            let target = _mm256_set1_ps(amax);
            let mut max = amax;
            for i in (0..QK_K).step_by(8) {
                let v = _mm256_loadu_ps(p.add(i));
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                    _mm256_andnot_ps(sign, v),
                    target,
                ));
                if hit != 0 {
                    max = xs[i + hit.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0 / max;
            let scale = _mm256_set1_ps(iscale);
            let top = _mm256_set1_epi32(127);
            for (g, sum) in b.bsums.iter_mut().enumerate() {
                let at = g * 16;
                let q0 = _mm256_min_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(scale, _mm256_loadu_ps(p.add(at)))),
                    top,
                );
                let q1 = _mm256_min_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(scale, _mm256_loadu_ps(p.add(at + 8)))),
                    top,
                );
                let s = _mm256_add_epi32(q0, q1);
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
                *sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
                    as i16;
                // 16 bytes: pack within lanes, then gather the two halves.
                let w = _mm256_packs_epi32(q0, q1);
                let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(w);
                let bytes =
                    _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                _mm_storeu_si128(b.qs.as_mut_ptr().add(at) as *mut __m128i, bytes);
            }
            b.d = 1.0 / iscale;
        }
    }
}
