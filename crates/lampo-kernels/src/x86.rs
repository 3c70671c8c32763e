//! x86-64 integer dot products of quantized weight rows with 8-bit
//! activations, for up to [`MAX_TOKENS`](crate::qdot::MAX_TOKENS) activation rows at once so that a
//! weight block is unpacked once per group of tokens during prefill.
//!
//! The row-major kernels are written once (`row_dots!`) and compiled twice:
//! with AVX-512 VNNI (`vpdpbusd` multiplies unsigned by signed bytes and sums
//! into 32-bit lanes in one instruction) and with plain AVX2 (`vpmaddubsw`
//! then `vpmaddwd`), on 256-bit vectors (a 32-value block fills one). The
//! kernels for weights interleaved eight rows at a time (`crate::repack`),
//! which carry nearly all the work, come in a 256-bit version for AVX2 and a
//! 512-bit one (`zmm`) for AVX-512.

// Token loops index several per-token arrays of registers at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::qdot::{
    FormatDots, Q8Block, Q8KBlock, RowDots, Rows8Dots, check_row_shapes as check, scales_mins_k4,
};
use crate::quant::QK_K;
use crate::repack::Rows8Format;

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY (caller): two readable bytes at `p`, and F16C is enabled.
    unsafe {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// Activations to 32-value blocks, with the same results as
/// `quantize_q8_generic` (the largest magnitude maps to ±127, halves round
/// to even, which is the default rounding mode of `vcvtps2dq`), written out
/// because the compiler does not vectorize the portable loop's maximum and
/// saturating casts.
#[target_feature(enable = "avx2")]
fn quantize_q8_avx2(x: &[f32], out: &mut [Q8Block]) {
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
fn quantize_q8k_avx2(x: &[f32], out: &mut [Q8KBlock]) {
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

/// Kernels for the 32-value formats. `load` gives the block's
/// 32 weights (unsigned when `signed` is false), `min` the offset
/// in the block's second f16 (Q4_1/Q5_1) that multiplies the
/// activations' sum.
macro_rules! q8_kernel {
    ($features:literal, $name:ident, $bytes:expr, $signed:expr, $has_min:expr, |$wb:ident| $load:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const N: usize>(
            w: *const u8,
            blocks: usize,
            acts: *const Q8Block,
            out: *mut f32,
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut mins = [0f32; N];
            for b in 0..blocks {
                // SAFETY (caller): `blocks` blocks of weights and
                // `N × blocks` activation blocks are readable.
                unsafe {
                    let wb = w.add(b * $bytes);
                    let d = f16_at(wb);
                    let m = if $has_min { f16_at(wb.add(2)) } else { 0.0 };
                    let q: __m256i = {
                        let $wb = wb;
                        $load
                    };
                    for t in 0..N {
                        let y = &*acts.add(t * blocks + b);
                        let a = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                        let isum = if $signed {
                            dot_signed(q, a)
                        } else {
                            dot_acc(_mm256_setzero_si256(), q, a)
                        };
                        acc[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum),
                            _mm256_set1_ps(d * y.d),
                            acc[t],
                        );
                        if $has_min {
                            mins[t] += m * y.s;
                        }
                    }
                }
            }
            for t in 0..N {
                // SAFETY (caller): `out` holds N values.
                unsafe { *out.add(t) = hsum(acc[t]) + mins[t] };
            }
        }
    };
}

/// A safe entry point per format: checks shapes, then picks the
/// kernel for the number of activation rows.
macro_rules! entry {
    ($entry:ident, $kernel:ident [$($extra:tt)*], $block:ty, $bytes:expr) => {
        fn $entry(w: &[u8], acts: &[$block], out: &mut [f32]) {
            let blocks = check(w, $bytes, acts, out);
            let (wp, ap, op) = (w.as_ptr(), acts.as_ptr(), out.as_mut_ptr());
            // SAFETY: `check` verified every length the kernel reads, and
            // `row_dots` hands these entries out only after detection.
            unsafe {
                match out.len() {
                    1 => $kernel::<1 $($extra)*>(wp, blocks, ap, op),
                    2 => $kernel::<2 $($extra)*>(wp, blocks, ap, op),
                    3 => $kernel::<3 $($extra)*>(wp, blocks, ap, op),
                    _ => $kernel::<4 $($extra)*>(wp, blocks, ap, op),
                }
            }
        }
    };
}

/// Safe entry points for the interleaved kernels: `out` holds
/// eight results (one per row) for each activation row.
macro_rules! rows8_entry {
    ($entry:ident, $kernel:ident, $fmt:expr) => {
        fn $entry(w: &[u8], acts: &[Q8Block], out: &mut [f32]) {
            let nt = out.len() / 8;
            assert_eq!(out.len(), nt * 8, "output of {} values", out.len());
            let blocks = check(w, $fmt.group_bytes(), acts, &out[..nt]);
            let (wp, ap, op) = (w.as_ptr(), acts.as_ptr(), out.as_mut_ptr());
            const F: u8 = $fmt as u8;
            // SAFETY: as for the row-major entries.
            unsafe {
                match nt {
                    1 => $kernel::<1, F>(wp, blocks, ap, op),
                    2 => $kernel::<2, F>(wp, blocks, ap, op),
                    3 => $kernel::<3, F>(wp, blocks, ap, op),
                    _ => $kernel::<4, F>(wp, blocks, ap, op),
                }
            }
        }
    };
}

/// Safe entry points for the interleaved k-quant kernels.
macro_rules! rows8k_entry {
    ($entry:ident, $kernel:ident [$($extra:tt)*], $fmt:expr) => {
        fn $entry(w: &[u8], acts: &[Q8KBlock], out: &mut [f32]) {
            let nt = out.len() / 8;
            assert_eq!(out.len(), nt * 8, "output of {} values", out.len());
            let blocks = check(w, $fmt.group_bytes(), acts, &out[..nt]);
            let (wp, ap, op) = (w.as_ptr(), acts.as_ptr(), out.as_mut_ptr());
            // SAFETY: as for the row-major entries.
            unsafe {
                match nt {
                    1 => $kernel::<1 $($extra)*>(wp, blocks, ap, op),
                    2 => $kernel::<2 $($extra)*>(wp, blocks, ap, op),
                    3 => $kernel::<3 $($extra)*>(wp, blocks, ap, op),
                    _ => $kernel::<4 $($extra)*>(wp, blocks, ap, op),
                }
            }
        }
    };
}

/// The interleaved kernels on 256-bit vectors (4-byte units: each vector
/// holds four consecutive weights of each of eight rows), for the module
/// that invokes it.
macro_rules! rows8_ymm {
    ($features:literal) => {
    /// The 32-value formats with rows interleaved eight at a time
    /// (see `repack`): lane `i` of every vector belongs to row `i`, so
    /// a block costs a handful of instructions for eight rows and no
    /// horizontal sums. `F` is the format (`Rows8Format` as u8).
    #[target_feature(enable = $features)]
    unsafe fn rows8_n<const N: usize, const F: u8>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8Block,
        out: *mut f32,
    ) {
        let fmt = Rows8Format::from_u8(F);
        let (has_min, five) = (fmt.has_min(), fmt.five_bit());
        let offset = fmt.offset();
        let group = fmt.group_bytes();
        let mut acc = [_mm256_setzero_ps(); N];
        let m4 = _mm256_set1_epi8(0x0f);
        for b in 0..blocks {
            // SAFETY (caller): `blocks` groups of weights and
            // `N × blocks` activation blocks are readable.
            unsafe {
                let g = w.add(b * group);
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                let q = g.add(if has_min { 32 } else { 16 });
                let mut isum = [_mm256_setzero_si256(); N];
                if fmt == Rows8Format::Q8_0 {
                    for j in 0..8 {
                        let v = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                        let v_abs = _mm256_sign_epi8(v, v);
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                            let a = _mm256_set1_epi32((ya.add(4 * j) as *const i32).read_unaligned());
                            isum[t] = dot_acc(isum[t], v_abs, _mm256_sign_epi8(a, v));
                        }
                    }
                } else {
                    let h = q.add(128) as *const u32;
                    for j in 0..4 {
                        let p = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                        let mut lo = _mm256_and_si256(p, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), m4);
                        if five {
                            lo = _mm256_or_si256(lo, high_bits(h.add(j).read_unaligned()));
                            hi = _mm256_or_si256(hi, high_bits(h.add(j + 4).read_unaligned()));
                        }
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                            let a_lo = _mm256_set1_epi32((ya.add(4 * j) as *const i32).read_unaligned());
                            let a_hi =
                                _mm256_set1_epi32((ya.add(16 + 4 * j) as *const i32).read_unaligned());
                            isum[t] = dot_acc(isum[t], lo, a_lo);
                            isum[t] = dot_acc(isum[t], hi, a_hi);
                        }
                    }
                }
                let m8 = if has_min {
                    _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i))
                } else {
                    _mm256_setzero_ps()
                };
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    let v = _mm256_cvtepi32_ps(isum[t]);
                    if has_min {
                        acc[t] = _mm256_fmadd_ps(d8, _mm256_mul_ps(v, _mm256_set1_ps(y.d)), acc[t]);
                        acc[t] = _mm256_fmadd_ps(m8, _mm256_set1_ps(y.s), acc[t]);
                    } else {
                        let s = _mm256_fmadd_ps(v, _mm256_set1_ps(y.d), _mm256_set1_ps(offset * y.s));
                        acc[t] = _mm256_fmadd_ps(d8, s, acc[t]);
                    }
                }
            }
        }
        for t in 0..N {
            // SAFETY (caller): `out` holds 8 × N values.
            unsafe { _mm256_storeu_ps(out.add(8 * t), acc[t]) };
        }
    }

    /// Q4_K (`FIFTH = false`) and Q5_K interleaved eight rows at a time
    /// (see `repack`): per 32-value sub-block, eight multiply-adds give
    /// each row's integer sum in its lane, then one multiply by the
    /// eight rows' scales.
    #[target_feature(enable = $features)]
    unsafe fn k4_rows8_n<const N: usize, const FIFTH: bool>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8KBlock,
        out: *mut f32,
    ) {
        let group = if FIFTH { 1440 } else { 1184 };
        let mut acc = [_mm256_setzero_ps(); N];
        let m4 = _mm256_set1_epi8(0x0f);
        for b in 0..blocks {
            // SAFETY (caller): `blocks` groups of weights and
            // `N × blocks` activation blocks are readable.
            unsafe {
                let g = w.add(b * group);
                let mut iacc = [_mm256_setzero_si256(); N];
                for chunk in 0..4 {
                    let mut s_lo = [_mm256_setzero_si256(); N];
                    let mut s_hi = [_mm256_setzero_si256(); N];
                    for j in 0..8 {
                        let p = _mm256_loadu_si256(g.add(160 + 256 * chunk + 32 * j) as *const __m256i);
                        let mut lo = _mm256_and_si256(p, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), m4);
                        if FIFTH {
                            let masks = g.add(1184) as *const u32;
                            lo = _mm256_or_si256(lo, high_bits(masks.add(16 * chunk + j).read_unaligned()));
                            hi = _mm256_or_si256(hi, high_bits(masks.add(16 * chunk + 8 + j).read_unaligned()));
                        }
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b)).qs.as_ptr().add(64 * chunk + 4 * j);
                            let a_lo = _mm256_set1_epi32((ya as *const i32).read_unaligned());
                            let a_hi = _mm256_set1_epi32((ya.add(32) as *const i32).read_unaligned());
                            s_lo[t] = dot_acc(s_lo[t], lo, a_lo);
                            s_hi[t] = dot_acc(s_hi[t], hi, a_hi);
                        }
                    }
                    let sc = g.add(32 + 16 * chunk);
                    let sc_lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc as *const __m128i));
                    let sc_hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc.add(8) as *const __m128i));
                    for t in 0..N {
                        let scaled = _mm256_add_epi32(
                            _mm256_mullo_epi32(s_lo[t], sc_lo),
                            _mm256_mullo_epi32(s_hi[t], sc_hi),
                        );
                        iacc[t] = _mm256_add_epi32(iacc[t], scaled);
                    }
                }
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                let dmin8 = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i));
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    let mut imin = _mm256_setzero_si256();
                    for pair in 0..4 {
                        let m = _mm256_cvtepu8_epi16(_mm_loadu_si128(g.add(96 + 16 * pair) as *const __m128i));
                        let s0 = y.bsums[4 * pair] + y.bsums[4 * pair + 1];
                        let s1 = y.bsums[4 * pair + 2] + y.bsums[4 * pair + 3];
                        let sums = _mm256_set1_epi32((s0 as u16 as u32 | ((s1 as u16 as u32) << 16)) as i32);
                        imin = _mm256_add_epi32(imin, _mm256_madd_epi16(m, sums));
                    }
                    let yd = _mm256_set1_ps(y.d);
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d8, yd), _mm256_cvtepi32_ps(iacc[t]), acc[t]);
                    acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin8, yd), _mm256_cvtepi32_ps(imin), acc[t]);
                }
            }
        }
        for t in 0..N {
            // SAFETY (caller): `out` holds 8 × N values.
            unsafe { _mm256_storeu_ps(out.add(8 * t), acc[t]) };
        }
    }

    /// Q6_K interleaved eight rows at a time: 6-bit values offset by
    /// 32 and sixteen signed 8-bit scales per row and block.
    #[target_feature(enable = $features)]
    unsafe fn q6_k_rows8_n<const N: usize>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8KBlock,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let m4 = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        for b in 0..blocks {
            // SAFETY (caller): as above.
            unsafe {
                let g = w.add(b * 1680);
                let mut iacc = [_mm256_setzero_si256(); N];
                for half in 0..2 {
                    for part in 0..4 {
                        let mut s = [[_mm256_setzero_si256(); N]; 2];
                        for j in 0..8 {
                            let l = _mm256_loadu_si256(
                                g.add(144 + 512 * half + 256 * (part & 1) + 32 * j) as *const __m256i,
                            );
                            let h = _mm256_loadu_si256(g.add(1168 + 256 * half + 32 * j) as *const __m256i);
                            let (nib, high) = match part {
                                0 => (_mm256_and_si256(l, m4), _mm256_slli_epi16::<4>(h)),
                                1 => (_mm256_and_si256(l, m4), _mm256_slli_epi16::<2>(h)),
                                2 => (_mm256_and_si256(_mm256_srli_epi16::<4>(l), m4), h),
                                _ => (_mm256_and_si256(_mm256_srli_epi16::<4>(l), m4), _mm256_srli_epi16::<2>(h)),
                            };
                            let v = _mm256_or_si256(nib, _mm256_and_si256(high, m30));
                            for t in 0..N {
                                let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                                let a = _mm256_set1_epi32(
                                    (ya.add(128 * half + 32 * part + 4 * j) as *const i32).read_unaligned(),
                                );
                                s[j / 4][t] = dot_acc(s[j / 4][t], v, a);
                            }
                        }
                        let pairs = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                            g.add(16 + 16 * (4 * half + part)) as *const __m128i,
                        ));
                        let even = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pairs));
                        let odd = _mm256_srai_epi32::<16>(pairs);
                        for t in 0..N {
                            let scaled = _mm256_add_epi32(
                                _mm256_mullo_epi32(s[0][t], even),
                                _mm256_mullo_epi32(s[1][t], odd),
                            );
                            iacc[t] = _mm256_add_epi32(iacc[t], scaled);
                        }
                    }
                }
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    // The offset of 32 times each sub-block's activation sum.
                    let mut ioff = _mm256_setzero_si256();
                    for k in 0..8 {
                        let pairs = _mm256_cvtepi8_epi16(_mm_loadu_si128(g.add(16 + 16 * k) as *const __m128i));
                        let s0 = y.bsums[2 * k] as u16 as u32;
                        let s1 = y.bsums[2 * k + 1] as u16 as u32;
                        let sums = _mm256_set1_epi32((s0 | (s1 << 16)) as i32);
                        ioff = _mm256_add_epi32(ioff, _mm256_madd_epi16(pairs, sums));
                    }
                    let total = _mm256_sub_epi32(iacc[t], _mm256_slli_epi32::<5>(ioff));
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(d8, _mm256_set1_ps(y.d)),
                        _mm256_cvtepi32_ps(total),
                        acc[t],
                    );
                }
            }
        }
        for t in 0..N {
            // SAFETY (caller): `out` holds 8 × N values.
            unsafe { _mm256_storeu_ps(out.add(8 * t), acc[t]) };
        }
    }

    rows8k_entry!(rows8_q4_k, k4_rows8_n[, false], Rows8Format::Q4_K);
    rows8k_entry!(rows8_q5_k, k4_rows8_n[, true], Rows8Format::Q5_K);
    rows8k_entry!(rows8_q6_k, q6_k_rows8_n[], Rows8Format::Q6_K);

    rows8_entry!(rows8_q4_0, rows8_n, Rows8Format::Q4_0);
    rows8_entry!(rows8_q4_1, rows8_n, Rows8Format::Q4_1);
    rows8_entry!(rows8_q5_0, rows8_n, Rows8Format::Q5_0);
    rows8_entry!(rows8_q5_1, rows8_n, Rows8Format::Q5_1);
    rows8_entry!(rows8_q8_0, rows8_n, Rows8Format::Q8_0);

    /// The interleaved kernels of this module.
    fn rows8_dots() -> Rows8Dots {
        Rows8Dots {
            unit: 4,
            dots: FormatDots {
                q4_0: rows8_q4_0,
                q4_1: rows8_q4_1,
                q5_0: rows8_q5_0,
                q5_1: rows8_q5_1,
                q8_0: rows8_q8_0,
                q4_k: rows8_q4_k,
                q5_k: rows8_q5_k,
                q6_k: rows8_q6_k,
            },
        }
    }

    };
}

/// Expands to one module of kernels; `$features` must include the
/// instructions the module's primitives use.
macro_rules! row_dots {
    ($module:ident, $features:literal, $isa:literal, $detect:expr, { $($primitives:item)* }) => {
        pub mod $module {
            use super::*;

            $($primitives)*

            #[target_feature(enable = $features)]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }

            /// 16 values in `q`'s low nibbles then 16 in its high nibbles.
            #[target_feature(enable = $features)]
            unsafe fn nibbles16(p: *const u8) -> __m256i {
                // SAFETY (caller): 16 readable bytes at `p`.
                let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
                _mm256_and_si256(
                    _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
                    _mm256_set1_epi8(0x0f),
                )
            }

            /// Signed weights times signed activations, via |w| and sign(w)·a.
            #[target_feature(enable = $features)]
            fn dot_signed(w: __m256i, a: __m256i) -> __m256i {
                dot_acc(
                    _mm256_setzero_si256(),
                    _mm256_sign_epi8(w, w),
                    _mm256_sign_epi8(a, w),
                )
            }

            q8_kernel!($features, q4_0_n, 18, true, false, |wb| {
                _mm256_sub_epi8(nibbles16(wb.add(2)), _mm256_set1_epi8(8))
            });
            q8_kernel!($features, q4_1_n, 20, false, true, |wb| nibbles16(wb.add(4)));
            q8_kernel!($features, q5_0_n, 22, true, false, |wb| {
                let qh = (wb.add(2) as *const u32).read_unaligned();
                let q = _mm256_or_si256(nibbles16(wb.add(6)), high_bits(qh));
                _mm256_sub_epi8(q, _mm256_set1_epi8(16))
            });
            q8_kernel!($features, q5_1_n, 24, false, true, |wb| {
                let qh = (wb.add(4) as *const u32).read_unaligned();
                _mm256_or_si256(nibbles16(wb.add(8)), high_bits(qh))
            });
            q8_kernel!($features, q8_0_n, 34, true, false, |wb| {
                _mm256_loadu_si256(wb.add(2) as *const __m256i)
            });

            /// Q4_K (`FIFTH = false`) and Q5_K (`FIFTH = true`): eight
            /// sub-blocks of 32 with 6-bit scales and mins.
            #[target_feature(enable = $features)]
            unsafe fn k4_n<const N: usize, const FIFTH: bool>(
                w: *const u8,
                blocks: usize,
                acts: *const Q8KBlock,
                out: *mut f32,
            ) {
                let bytes = if FIFTH { 176 } else { 144 };
                let mut acc = [_mm256_setzero_ps(); N];
                let mut mins = [0f32; N];
                let m4 = _mm256_set1_epi8(0x0f);
                for b in 0..blocks {
                    // SAFETY (caller): as for the 32-value kernels.
                    unsafe {
                        let wb = w.add(b * bytes);
                        let (d, dmin) = (f16_at(wb), f16_at(wb.add(2)));
                        let (sc, m) = scales_mins_k4(std::slice::from_raw_parts(wb.add(4), 12));
                        let qs = wb.add(if FIFTH { 48 } else { 16 });
                        let mut qh = if FIFTH {
                            _mm256_loadu_si256(wb.add(16) as *const __m256i)
                        } else {
                            _mm256_setzero_si256()
                        };
                        let mut iacc = [_mm256_setzero_si256(); N];
                        for c in 0..4 {
                            let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                            let mut lo = _mm256_and_si256(q, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                            if FIFTH {
                                let one = _mm256_set1_epi8(1);
                                lo = _mm256_or_si256(
                                    lo,
                                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, one)),
                                );
                                hi = _mm256_or_si256(
                                    hi,
                                    _mm256_slli_epi16::<3>(_mm256_and_si256(qh, _mm256_set1_epi8(2))),
                                );
                                qh = _mm256_srli_epi16::<2>(qh);
                            }
                            let s_lo = _mm256_set1_epi16(sc[2 * c] as i16);
                            let s_hi = _mm256_set1_epi16(sc[2 * c + 1] as i16);
                            for t in 0..N {
                                let y = &*acts.add(t * blocks + b);
                                let a = y.qs.as_ptr().add(64 * c);
                                let a_lo = _mm256_loadu_si256(a as *const __m256i);
                                let a_hi = _mm256_loadu_si256(a.add(32) as *const __m256i);
                                iacc[t] = dot_scaled(iacc[t], lo, a_lo, s_lo);
                                iacc[t] = dot_scaled(iacc[t], hi, a_hi, s_hi);
                            }
                        }
                        for t in 0..N {
                            let y = &*acts.add(t * blocks + b);
                            let mut msum = 0i32;
                            for j in 0..8 {
                                msum += m[j] * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
                            }
                            mins[t] += dmin * y.d * msum as f32;
                            acc[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(iacc[t]),
                                _mm256_set1_ps(d * y.d),
                                acc[t],
                            );
                        }
                    }
                }
                for t in 0..N {
                    // SAFETY (caller): `out` holds N values.
                    unsafe { *out.add(t) = hsum(acc[t]) - mins[t] };
                }
            }

            /// Q6_K: 6-bit values offset by 32, sixteen 8-bit scales per block.
            #[target_feature(enable = $features)]
            unsafe fn q6_k_n<const N: usize>(
                w: *const u8,
                blocks: usize,
                acts: *const Q8KBlock,
                out: *mut f32,
            ) {
                let mut acc = [_mm256_setzero_ps(); N];
                let m4 = _mm256_set1_epi8(0x0f);
                let m30 = _mm256_set1_epi8(0x30);
                for b in 0..blocks {
                    // SAFETY (caller): as for the 32-value kernels.
                    unsafe {
                        let wb = w.add(b * 210);
                        let d = f16_at(wb.add(208));
                        let sc = wb.add(192) as *const i8;
                        let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
                        let mut iacc = [_mm256_setzero_si256(); N];
                        for half in 0..2 {
                            let ql = wb.add(64 * half);
                            let qh = _mm256_loadu_si256(wb.add(128 + 32 * half) as *const __m256i);
                            let ql0 = _mm256_loadu_si256(ql as *const __m256i);
                            let ql1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                            let parts = [
                                _mm256_or_si256(
                                    _mm256_and_si256(ql0, m4),
                                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(ql1, m4),
                                    _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                                    _mm256_and_si256(qh, m30),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                                ),
                            ];
                            for (part, q) in parts.into_iter().enumerate() {
                                let g = 8 * half + 2 * part;
                                let s = _mm256_set_m128i(
                                    _mm_set1_epi16(*sc.add(g + 1) as i16),
                                    _mm_set1_epi16(*sc.add(g) as i16),
                                );
                                for t in 0..N {
                                    let y = &*acts.add(t * blocks + b);
                                    let a = _mm256_loadu_si256(
                                        y.qs.as_ptr().add(128 * half + 32 * part) as *const __m256i,
                                    );
                                    iacc[t] = dot_scaled(iacc[t], q, a, s);
                                }
                            }
                        }
                        for t in 0..N {
                            let y = &*acts.add(t * blocks + b);
                            // The offset of 32 times each group's activation sum.
                            let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
                            let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales));
                            acc[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(_mm256_sub_epi32(iacc[t], offset)),
                                _mm256_set1_ps(d * y.d),
                                acc[t],
                            );
                        }
                    }
                }
                for t in 0..N {
                    // SAFETY (caller): `out` holds N values.
                    unsafe { *out.add(t) = hsum(acc[t]) };
                }
            }

            fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
                // SAFETY: reachable only through `row_dots`, after detection
                // of a superset of AVX2.
                unsafe { quantize_q8_avx2(x, out) }
            }

            fn quantize_q8k(x: &[f32], out: &mut [Q8KBlock]) {
                // SAFETY: as above.
                unsafe { quantize_q8k_avx2(x, out) }
            }

            entry!(q4_0, q4_0_n[], Q8Block, 18);
            entry!(q4_1, q4_1_n[], Q8Block, 20);
            entry!(q5_0, q5_0_n[], Q8Block, 22);
            entry!(q5_1, q5_1_n[], Q8Block, 24);
            entry!(q8_0, q8_0_n[], Q8Block, 34);
            entry!(q4_k, k4_n[, false], Q8KBlock, 144);
            entry!(q5_k, k4_n[, true], Q8KBlock, 176);
            entry!(q6_k, q6_k_n[], Q8KBlock, 210);

            /// The kernels, when this CPU has the instructions they need.
            pub fn row_dots() -> Option<RowDots> {
                if !$detect {
                    return None;
                }
                Some(RowDots {
                    isa: $isa,
                    rows: FormatDots {
                        q4_0,
                        q4_1,
                        q5_0,
                        q5_1,
                        q8_0,
                        q4_k,
                        q5_k,
                        q6_k,
                    },
                    rows8: Some(rows8_dots()),
                    quantize_q8,
                    quantize_q8k,
                })
            }
        }
    };
}

row_dots!(
    avx512_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    "avx512-vnni",
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni"),
    {
        /// `acc` plus the sums of four unsigned-by-signed byte products per lane.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, s)
        }

        /// `acc` plus byte-pair products weighted by 16-bit `scale` per pair.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        fn dot_scaled(acc: __m256i, u: __m256i, s: __m256i, scale: __m256i) -> __m256i {
            _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, s), scale)
        }

        /// 0x10 in byte `j` where bit `j` of `qh` is set.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        fn high_bits(qh: u32) -> __m256i {
            _mm256_maskz_set1_epi8(qh, 0x10)
        }

        use super::zmm::rows8_dots;
    }
);

row_dots!(
    avx2,
    "avx2,fma,f16c",
    "avx2",
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"),
    {
        /// `acc` plus the sums of four unsigned-by-signed byte products per
        /// lane. Pair sums stay within i16 for every format here (at most
        /// 2 × 128 × 127).
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }

        /// `acc` plus byte-pair products weighted by 16-bit `scale` per pair.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot_scaled(acc: __m256i, u: __m256i, s: __m256i, scale: __m256i) -> __m256i {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale))
        }

        /// 0x10 in byte `j` where bit `j` of `qh` is set: byte `j / 8` of
        /// `qh` copied to byte `j`, then tested against bit `j % 8`.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn high_bits(qh: u32) -> __m256i {
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh as i32),
                _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                ),
            );
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }

        rows8_ymm!("avx2,fma,f16c");
    }
);

/// The interleaved kernels on 512-bit vectors (8-byte units: each vector
/// holds eight consecutive weights of each of eight rows, two 32-bit lanes
/// per row). Where 512-bit operations run at full width (Zen 5, Intel
/// server cores) this doubles the multiply-adds per instruction.
pub mod zmm {
    use super::*;

    /// Each row's two lanes' worth of a per-row f32 value.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dup_ps(v: __m256) -> __m512 {
        let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(v))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dup_epi32(v: __m256i) -> __m512i {
        let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        _mm512_permutexvar_epi32(idx, _mm512_castsi256_si512(v))
    }

    /// Row `i`'s total: lanes `2i` and `2i + 1` added.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn pair_sum(v: __m512) -> __m256 {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm256_add_ps(
            _mm512_castps512_ps256(_mm512_permutexvar_ps(even, v)),
            _mm512_castps512_ps256(_mm512_permutexvar_ps(odd, v)),
        )
    }

    /// Eight activation bytes at `p` in every 64-bit lane.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn bcast8(p: *const i8) -> __m512i {
        // SAFETY (caller): eight readable bytes at `p`.
        _mm512_set1_epi64(unsafe { (p as *const i64).read_unaligned() })
    }

    /// The 32-value formats; see the 256-bit `rows8_n`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows8_n<const N: usize, const F: u8>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8Block,
        out: *mut f32,
    ) {
        let fmt = Rows8Format::from_u8(F);
        let (has_min, five) = (fmt.has_min(), fmt.five_bit());
        let offset = fmt.offset();
        let group = fmt.group_bytes();
        let mut acc = [_mm512_setzero_ps(); N];
        let m4 = _mm512_set1_epi8(0x0f);
        for b in 0..blocks {
            // SAFETY (caller): `blocks` groups of weights and `N × blocks`
            // activation blocks are readable.
            unsafe {
                let g = w.add(b * group);
                let d = dup_ps(_mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i)));
                let q = g.add(if has_min { 32 } else { 16 });
                let mut isum = [_mm512_setzero_si512(); N];
                if fmt == Rows8Format::Q8_0 {
                    for j in 0..4 {
                        let v = _mm512_loadu_si512(q.add(64 * j) as *const __m512i);
                        let v_abs = _mm512_abs_epi8(v);
                        let negative = _mm512_movepi8_mask(v);
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                            let a = bcast8(ya.add(8 * j));
                            let a = _mm512_mask_sub_epi8(a, negative, _mm512_setzero_si512(), a);
                            isum[t] = _mm512_dpbusd_epi32(isum[t], v_abs, a);
                        }
                    }
                } else {
                    let masks = q.add(128) as *const u64;
                    for j in 0..2 {
                        let p = _mm512_loadu_si512(q.add(64 * j) as *const __m512i);
                        let mut lo = _mm512_and_si512(p, m4);
                        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4);
                        if five {
                            let ten = _mm512_set1_epi8(0x10);
                            lo = _mm512_mask_add_epi8(lo, masks.add(j).read_unaligned(), lo, ten);
                            hi = _mm512_mask_add_epi8(
                                hi,
                                masks.add(2 + j).read_unaligned(),
                                hi,
                                ten,
                            );
                        }
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                            isum[t] = _mm512_dpbusd_epi32(isum[t], lo, bcast8(ya.add(8 * j)));
                            isum[t] = _mm512_dpbusd_epi32(isum[t], hi, bcast8(ya.add(16 + 8 * j)));
                        }
                    }
                }
                let m = if has_min {
                    dup_ps(_mm256_cvtph_ps(
                        _mm_loadu_si128(g.add(16) as *const __m128i),
                    ))
                } else {
                    _mm512_setzero_ps()
                };
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    let v = _mm512_cvtepi32_ps(isum[t]);
                    if has_min {
                        acc[t] = _mm512_fmadd_ps(d, _mm512_mul_ps(v, _mm512_set1_ps(y.d)), acc[t]);
                        // Both lanes of a row carry half its minimum term.
                        acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(0.5 * y.s), acc[t]);
                    } else {
                        let s = _mm512_fmadd_ps(
                            v,
                            _mm512_set1_ps(y.d),
                            _mm512_set1_ps(0.5 * offset * y.s),
                        );
                        acc[t] = _mm512_fmadd_ps(d, s, acc[t]);
                    }
                }
            }
        }
        for t in 0..N {
            // SAFETY (caller): `out` holds 8 × N values.
            unsafe { _mm256_storeu_ps(out.add(8 * t), pair_sum(acc[t])) };
        }
    }

    /// Q4_K (`FIFTH = false`) and Q5_K; see the 256-bit `k4_rows8_n`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn k4_rows8_n<const N: usize, const FIFTH: bool>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8KBlock,
        out: *mut f32,
    ) {
        let group = if FIFTH { 1440 } else { 1184 };
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_min = [_mm256_setzero_ps(); N];
        let m4 = _mm512_set1_epi8(0x0f);
        for b in 0..blocks {
            // SAFETY (caller): as above.
            unsafe {
                let g = w.add(b * group);
                let masks = g.add(1184) as *const u64;
                let mut iacc = [_mm512_setzero_si512(); N];
                for chunk in 0..4 {
                    let mut s_lo = [_mm512_setzero_si512(); N];
                    let mut s_hi = [_mm512_setzero_si512(); N];
                    for j in 0..4 {
                        let p =
                            _mm512_loadu_si512(g.add(160 + 256 * chunk + 64 * j) as *const __m512i);
                        let mut lo = _mm512_and_si512(p, m4);
                        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4);
                        if FIFTH {
                            let ten = _mm512_set1_epi8(0x10);
                            lo = _mm512_mask_add_epi8(
                                lo,
                                masks.add(8 * chunk + j).read_unaligned(),
                                lo,
                                ten,
                            );
                            hi = _mm512_mask_add_epi8(
                                hi,
                                masks.add(8 * chunk + 4 + j).read_unaligned(),
                                hi,
                                ten,
                            );
                        }
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b))
                                .qs
                                .as_ptr()
                                .add(64 * chunk + 8 * j);
                            s_lo[t] = _mm512_dpbusd_epi32(s_lo[t], lo, bcast8(ya));
                            s_hi[t] = _mm512_dpbusd_epi32(s_hi[t], hi, bcast8(ya.add(32)));
                        }
                    }
                    let sc = g.add(32 + 16 * chunk);
                    let sc_lo =
                        dup_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(sc as *const __m128i)));
                    let sc_hi = dup_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        sc.add(8) as *const __m128i
                    )));
                    for t in 0..N {
                        let scaled = _mm512_add_epi32(
                            _mm512_mullo_epi32(s_lo[t], sc_lo),
                            _mm512_mullo_epi32(s_hi[t], sc_hi),
                        );
                        iacc[t] = _mm512_add_epi32(iacc[t], scaled);
                    }
                }
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                let d = dup_ps(d8);
                let dmin8 = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i));
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    let mut imin = _mm256_setzero_si256();
                    for pair in 0..4 {
                        let m = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                            g.add(96 + 16 * pair) as *const __m128i
                        ));
                        let s0 = y.bsums[4 * pair] + y.bsums[4 * pair + 1];
                        let s1 = y.bsums[4 * pair + 2] + y.bsums[4 * pair + 3];
                        let sums = _mm256_set1_epi32(
                            (s0 as u16 as u32 | ((s1 as u16 as u32) << 16)) as i32,
                        );
                        imin = _mm256_add_epi32(imin, _mm256_madd_epi16(m, sums));
                    }
                    acc[t] = _mm512_fmadd_ps(
                        _mm512_mul_ps(d, _mm512_set1_ps(y.d)),
                        _mm512_cvtepi32_ps(iacc[t]),
                        acc[t],
                    );
                    acc_min[t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(dmin8, _mm256_set1_ps(y.d)),
                        _mm256_cvtepi32_ps(imin),
                        acc_min[t],
                    );
                }
            }
        }
        for t in 0..N {
            // SAFETY (caller): `out` holds 8 × N values.
            unsafe {
                _mm256_storeu_ps(out.add(8 * t), _mm256_sub_ps(pair_sum(acc[t]), acc_min[t]))
            };
        }
    }

    /// Q6_K; see the 256-bit `q6_k_rows8_n`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q6_k_rows8_n<const N: usize>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8KBlock,
        out: *mut f32,
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_off = [_mm256_setzero_ps(); N];
        let m4 = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        for b in 0..blocks {
            // SAFETY (caller): as above.
            unsafe {
                let g = w.add(b * 1680);
                let mut iacc = [_mm512_setzero_si512(); N];
                for half in 0..2 {
                    // One part at a time (its values reloaded from L1 for
                    // each), with the sums of each sub-block in their own
                    // array indexed by token only, so that several tokens'
                    // sums stay in registers. Vectors j = 0, 1 hold the
                    // part's first sub-block of 16 values, j = 2, 3 its second.
                    macro_rules! part {
                        ($part:literal, $nib:expr, $high:expr) => {{
                            let mut sums = [[_mm512_setzero_si512(); N]; 2];
                            for (sub, s) in sums.iter_mut().enumerate() {
                                for j in 2 * sub..2 * sub + 2 {
                                    let l = _mm512_loadu_si512(
                                        g.add(144 + 512 * half + 256 * ($part & 1) + 64 * j)
                                            as *const __m512i,
                                    );
                                    let h = _mm512_loadu_si512(
                                        g.add(1168 + 256 * half + 64 * j) as *const __m512i
                                    );
                                    let v =
                                        _mm512_or_si512($nib(l), _mm512_and_si512($high(h), m30));
                                    for t in 0..N {
                                        let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                                        let a = bcast8(ya.add(128 * half + 32 * $part + 8 * j));
                                        s[t] = _mm512_dpbusd_epi32(s[t], v, a);
                                    }
                                }
                            }
                            let pairs = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                g.add(16 + 16 * (4 * half + $part)) as *const __m128i,
                            ));
                            let even =
                                dup_epi32(_mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pairs)));
                            let odd = dup_epi32(_mm256_srai_epi32::<16>(pairs));
                            for t in 0..N {
                                let scaled = _mm512_add_epi32(
                                    _mm512_mullo_epi32(sums[0][t], even),
                                    _mm512_mullo_epi32(sums[1][t], odd),
                                );
                                iacc[t] = _mm512_add_epi32(iacc[t], scaled);
                            }
                        }};
                    }
                    let low = |l: __m512i| _mm512_and_si512(l, m4);
                    let top = |l: __m512i| _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4);
                    part!(0, low, |h| _mm512_slli_epi16::<4>(h));
                    part!(1, low, |h| _mm512_slli_epi16::<2>(h));
                    part!(2, top, |h| h);
                    part!(3, top, |h| _mm512_srli_epi16::<2>(h));
                }
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                let d = dup_ps(d8);
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    let mut ioff = _mm256_setzero_si256();
                    for k in 0..8 {
                        let pairs = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                            g.add(16 + 16 * k) as *const __m128i
                        ));
                        let s0 = y.bsums[2 * k] as u16 as u32;
                        let s1 = y.bsums[2 * k + 1] as u16 as u32;
                        let sums = _mm256_set1_epi32((s0 | (s1 << 16)) as i32);
                        ioff = _mm256_add_epi32(ioff, _mm256_madd_epi16(pairs, sums));
                    }
                    let yd = _mm256_set1_ps(y.d);
                    acc[t] = _mm512_fmadd_ps(
                        _mm512_mul_ps(d, _mm512_set1_ps(y.d)),
                        _mm512_cvtepi32_ps(iacc[t]),
                        acc[t],
                    );
                    // The offset of 32 times each sub-block's activation sum.
                    acc_off[t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(d8, yd),
                        _mm256_cvtepi32_ps(_mm256_slli_epi32::<5>(ioff)),
                        acc_off[t],
                    );
                }
            }
        }
        for t in 0..N {
            // SAFETY (caller): `out` holds 8 × N values.
            unsafe {
                _mm256_storeu_ps(out.add(8 * t), _mm256_sub_ps(pair_sum(acc[t]), acc_off[t]))
            };
        }
    }

    rows8_entry!(rows8_q4_0, rows8_n, Rows8Format::Q4_0);
    rows8_entry!(rows8_q4_1, rows8_n, Rows8Format::Q4_1);
    rows8_entry!(rows8_q5_0, rows8_n, Rows8Format::Q5_0);
    rows8_entry!(rows8_q5_1, rows8_n, Rows8Format::Q5_1);
    rows8_entry!(rows8_q8_0, rows8_n, Rows8Format::Q8_0);
    rows8k_entry!(rows8_q4_k, k4_rows8_n[, false], Rows8Format::Q4_K);
    rows8k_entry!(rows8_q5_k, k4_rows8_n[, true], Rows8Format::Q5_K);
    rows8k_entry!(rows8_q6_k, q6_k_rows8_n[], Rows8Format::Q6_K);

    /// The 512-bit interleaved kernels (the caller has detected AVX-512
    /// VNNI, BW and VL).
    pub fn rows8_dots() -> Rows8Dots {
        Rows8Dots {
            unit: 8,
            dots: FormatDots {
                q4_0: rows8_q4_0,
                q4_1: rows8_q4_1,
                q5_0: rows8_q5_0,
                q5_1: rows8_q5_1,
                q8_0: rows8_q8_0,
                q4_k: rows8_q4_k,
                q5_k: rows8_q5_k,
                q6_k: rows8_q6_k,
            },
        }
    }
}
