//! aarch64 NEON integer dot products of quantized weight rows with 8-bit
//! activations, for up to [`MAX_TOKENS`] activation rows at once (a weight
//! block is unpacked once per group of tokens).
//!
//! NEON is part of every aarch64 CPU, so these need no detection. Products
//! are widened with `smull` and summed pairwise into 32-bit lanes with
//! `sadalp`; the `sdot` instruction would halve that, but its intrinsic is
//! not yet stable in Rust. Weights stay row-major (no interleaved layout).

use std::arch::aarch64::*;

use crate::qdot::{
    FormatDots, MAX_TOKENS, Q8Block, Q8KBlock, RowDots, check_row_shapes as check, scales_mins_k4,
};

/// `acc` plus the sums of products of 16 signed bytes, four per lane.
#[inline(always)]
fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is always present on aarch64.
    unsafe {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// 32 signed bytes times 32 activations.
#[inline(always)]
fn dot32(lo: int8x16_t, hi: int8x16_t, a: *const i8) -> int32x4_t {
    // SAFETY (caller): 32 readable bytes at `a`.
    unsafe {
        let z = vdupq_n_s32(0);
        dot16(dot16(z, lo, vld1q_s8(a)), hi, vld1q_s8(a.add(16)))
    }
}

fn f16_at(p: *const u8) -> f32 {
    // SAFETY (caller): two readable bytes at `p`.
    half::f16::from_bits(unsafe { (p as *const u16).read_unaligned() }).to_f32()
}

/// For each byte value, eight bytes of 0x10 where its bits are set.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut v = 0;
    while v < 256 {
        let mut bit = 0;
        while bit < 8 {
            if v >> bit & 1 == 1 {
                t[v] |= 0x10 << (8 * bit);
            }
            bit += 1;
        }
        v += 1;
    }
    t
};

/// 0x10 in byte `j` of the 16 where bit `j` of `bits` is set.
#[inline(always)]
fn high_bits(bits: u32) -> uint8x16_t {
    let lo = SPREAD[(bits & 0xff) as usize];
    let hi = SPREAD[(bits >> 8 & 0xff) as usize];
    // SAFETY: NEON is always present on aarch64.
    unsafe { vreinterpretq_u8_u64(vcombine_u64(vcreate_u64(lo), vcreate_u64(hi))) }
}

/// Kernels for the 32-value formats: `$load` gives a block's 32 weights as
/// two vectors of signed bytes, `$has_min` adds the minimum (Q4_1/Q5_1).
macro_rules! q8_kernel {
    ($name:ident, $bytes:expr, $has_min:expr, |$wb:ident| $load:expr) => {
        fn $name(w: &[u8], acts: &[Q8Block], out: &mut [f32]) {
            let blocks = check(w, $bytes, acts, out);
            let nt = out.len();
            let mut acc = [0f32; MAX_TOKENS];
            for b in 0..blocks {
                // SAFETY: `check` verified the lengths read below.
                unsafe {
                    let $wb = w.as_ptr().add(b * $bytes);
                    let d = f16_at($wb);
                    let (lo, hi): (int8x16_t, int8x16_t) = $load;
                    for t in 0..nt {
                        let y = &acts[t * blocks + b];
                        let isum = vaddvq_s32(dot32(lo, hi, y.qs.as_ptr()));
                        acc[t] += d * y.d * isum as f32;
                        if $has_min {
                            acc[t] += f16_at($wb.add(2)) * y.s;
                        }
                    }
                }
            }
            out.copy_from_slice(&acc[..nt]);
        }
    };
}

/// The low and high nibbles of 16 bytes, as unsigned values in signed bytes.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY (caller): 16 readable bytes at `p`.
    unsafe {
        let q = vld1q_u8(p);
        (vandq_u8(q, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(q))
    }
}

q8_kernel!(q4_0, 18, false, |wb| {
    let (lo, hi) = nibbles(wb.add(2));
    let eight = vdupq_n_s8(8);
    (
        vsubq_s8(vreinterpretq_s8_u8(lo), eight),
        vsubq_s8(vreinterpretq_s8_u8(hi), eight),
    )
});
q8_kernel!(q4_1, 20, true, |wb| {
    let (lo, hi) = nibbles(wb.add(4));
    (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
});
q8_kernel!(q5_0, 22, false, |wb| {
    let qh = (wb.add(2) as *const u32).read_unaligned();
    let (lo, hi) = nibbles(wb.add(6));
    let sixteen = vdupq_n_s8(16);
    (
        vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, high_bits(qh))), sixteen),
        vsubq_s8(
            vreinterpretq_s8_u8(vorrq_u8(hi, high_bits(qh >> 16))),
            sixteen,
        ),
    )
});
q8_kernel!(q5_1, 24, true, |wb| {
    let qh = (wb.add(4) as *const u32).read_unaligned();
    let (lo, hi) = nibbles(wb.add(8));
    (
        vreinterpretq_s8_u8(vorrq_u8(lo, high_bits(qh))),
        vreinterpretq_s8_u8(vorrq_u8(hi, high_bits(qh >> 16))),
    )
});
q8_kernel!(q8_0, 34, false, |wb| {
    let q = wb.add(2) as *const i8;
    (vld1q_s8(q), vld1q_s8(q.add(16)))
});

/// Q4_K (`FIFTH = false`) and Q5_K: eight sub-blocks of 32 with 6-bit
/// scales and minimums.
fn k4<const FIFTH: bool>(w: &[u8], acts: &[Q8KBlock], out: &mut [f32]) {
    let bytes = if FIFTH { 176 } else { 144 };
    let blocks = check(w, bytes, acts, out);
    let nt = out.len();
    let mut acc = [0f32; MAX_TOKENS];
    for b in 0..blocks {
        let wb = &w[b * bytes..(b + 1) * bytes];
        let (d, dmin) = (f16_at(wb.as_ptr()), f16_at(wb[2..].as_ptr()));
        let (sc, m) = scales_mins_k4(&wb[4..16]);
        let qs = &wb[if FIFTH { 48 } else { 16 }..];
        let mut total = [0i32; MAX_TOKENS];
        for chunk in 0..4 {
            // SAFETY: every load below lies inside the checked block.
            unsafe {
                let (lo0, hi0) = nibbles(qs.as_ptr().add(32 * chunk));
                let (lo1, hi1) = nibbles(qs.as_ptr().add(32 * chunk + 16));
                let (mut lo0, mut hi0, mut lo1, mut hi1) = (lo0, hi0, lo1, hi1);
                if FIFTH {
                    // Fifth bits: bit `2 chunk` (low half) and `2 chunk + 1`
                    // (high half) of each byte of qh.
                    let qh = wb[16..48].as_ptr();
                    let shift = vdupq_n_s8(-(2 * chunk as i8));
                    let one = vdupq_n_u8(1);
                    let bits = |q: uint8x16_t, extra: i32| {
                        let s = vshlq_u8(q, shift);
                        let s = if extra == 1 { vshrq_n_u8::<1>(s) } else { s };
                        vshlq_n_u8::<4>(vandq_u8(s, one))
                    };
                    let (h0, h1) = (vld1q_u8(qh), vld1q_u8(qh.add(16)));
                    lo0 = vorrq_u8(lo0, bits(h0, 0));
                    lo1 = vorrq_u8(lo1, bits(h1, 0));
                    hi0 = vorrq_u8(hi0, bits(h0, 1));
                    hi1 = vorrq_u8(hi1, bits(h1, 1));
                }
                let (lo0, hi0) = (vreinterpretq_s8_u8(lo0), vreinterpretq_s8_u8(hi0));
                let (lo1, hi1) = (vreinterpretq_s8_u8(lo1), vreinterpretq_s8_u8(hi1));
                for t in 0..nt {
                    let a = acts[t * blocks + b].qs.as_ptr().add(64 * chunk);
                    let s_lo = vaddvq_s32(dot32(lo0, lo1, a));
                    let s_hi = vaddvq_s32(dot32(hi0, hi1, a.add(32)));
                    total[t] += sc[2 * chunk] * s_lo + sc[2 * chunk + 1] * s_hi;
                }
            }
        }
        for t in 0..nt {
            let y = &acts[t * blocks + b];
            let mins: i32 = (0..8)
                .map(|j| m[j] * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32))
                .sum();
            acc[t] += d * y.d * total[t] as f32 - dmin * y.d * mins as f32;
        }
    }
    out.copy_from_slice(&acc[..nt]);
}

fn q4_k(w: &[u8], acts: &[Q8KBlock], out: &mut [f32]) {
    k4::<false>(w, acts, out)
}

fn q5_k(w: &[u8], acts: &[Q8KBlock], out: &mut [f32]) {
    k4::<true>(w, acts, out)
}

/// Q6_K: 6-bit values offset by 32, sixteen signed 8-bit scales per block.
fn q6_k(w: &[u8], acts: &[Q8KBlock], out: &mut [f32]) {
    let blocks = check(w, 210, acts, out);
    let nt = out.len();
    let mut acc = [0f32; MAX_TOKENS];
    for b in 0..blocks {
        let wb = &w[b * 210..(b + 1) * 210];
        let d = f16_at(wb[208..].as_ptr());
        let sc = &wb[192..208];
        let mut total = [0i32; MAX_TOKENS];
        for half in 0..2 {
            // SAFETY: every load below lies inside the checked block.
            unsafe {
                let ql = wb[64 * half..].as_ptr();
                let qh = wb[128 + 32 * half..].as_ptr();
                let m4 = vdupq_n_u8(0x0f);
                let m3 = vdupq_n_u8(0x03);
                let thirty_two = vdupq_n_s8(32);
                for part in 0..4 {
                    // Values 32 part + l (l < 32) of this half: a nibble of
                    // ql[l] or ql[l + 32], two bits of qh[l].
                    let value = |l: usize| {
                        let q = vld1q_u8(ql.add(l + 32 * (part & 1)));
                        let nib = if part < 2 {
                            vandq_u8(q, m4)
                        } else {
                            vshrq_n_u8::<4>(q)
                        };
                        let h = vld1q_u8(qh.add(l));
                        let shift = vdupq_n_s8(-(2 * part as i8));
                        let high = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(h, shift), m3));
                        vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(nib, high)), thirty_two)
                    };
                    let (v0, v1) = (value(0), value(16));
                    let (s0, s1) = (
                        sc[8 * half + 2 * part] as i8,
                        sc[8 * half + 2 * part + 1] as i8,
                    );
                    for t in 0..nt {
                        let a = acts[t * blocks + b].qs.as_ptr().add(128 * half + 32 * part);
                        let z = vdupq_n_s32(0);
                        let i0 = vaddvq_s32(dot16(z, v0, vld1q_s8(a)));
                        let i1 = vaddvq_s32(dot16(z, v1, vld1q_s8(a.add(16))));
                        total[t] += s0 as i32 * i0 + s1 as i32 * i1;
                    }
                }
            }
        }
        for t in 0..nt {
            acc[t] += d * acts[t * blocks + b].d * total[t] as f32;
        }
    }
    out.copy_from_slice(&acc[..nt]);
}

/// The quantizers, as the portable ones (the compiler vectorizes them with
/// NEON, which is always enabled on aarch64).
fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    crate::qdot::quantize_q8_generic(x, out)
}

fn quantize_q8k(x: &[f32], out: &mut [Q8KBlock]) {
    crate::qdot::quantize_q8k_generic(x, out)
}

pub fn row_dots() -> Option<RowDots> {
    Some(RowDots {
        isa: "neon",
        rows: FormatDots {
            q4_0,
            q4_1,
            q5_0,
            q5_1,
            q8_0,
            q4_k,
            q5_k,
            q6_k,
            ..FormatDots::PORTABLE
        },
        rows8: None,
        quantize_q8,
        quantize_q8k,
    })
}
