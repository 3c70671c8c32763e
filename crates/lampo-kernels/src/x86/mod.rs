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
//!
//! Files: `quantize` (activations to 8-bit blocks), `entries` (the safe
//! entry points and the per-format 32-value kernels, `q8_kernel!`),
//! `lowbit` (row-major kernels of Q2_K, Q3_K, IQ4_NL, IQ4_XS),
//! `rows` (the row-major kernels, `row_dots!`), `ymm` (the 256-bit
//! interleaved kernels, `rows8_ymm!`), `zmm` (the 512-bit ones). The two
//! instruction sets are instantiated here.

// Token loops index several per-token arrays of registers at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::qdot::{
    FormatDots, Q8Block, Q8KBlock, RowDots, Rows8Dots, check_row_shapes as check, scales_mins_k4,
};
use crate::repack::Rows8Format;

mod quantize;
use quantize::{quantize_q8_avx2, quantize_q8k_avx2};

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY (caller): two readable bytes at `p`, and F16C is enabled.
    unsafe {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[macro_use]
mod entries;
#[macro_use]
mod lowbit;
#[macro_use]
mod ymm;
#[macro_use]
mod rows;
pub mod zmm;

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
