//! The interleaved kernels on 512-bit vectors (8-byte units: each vector
//! holds eight consecutive weights of each of eight rows, two 32-bit lanes
//! per row). Where 512-bit operations run at full width (Zen 5, Intel
//! server cores) this doubles the multiply-adds per instruction.

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
    // IQ4_NL's levels are stored shifted (see the unpacking below).
    let offset = if fmt.levels() {
        -(crate::lowbit::IQ4_SHIFT as f32)
    } else {
        fmt.offset()
    };
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
                    if fmt.levels() {
                        // Levels shifted to unsigned bytes; the shift is
                        // taken back below with the activations' sum.
                        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(
                            crate::lowbit::IQ4_LEVELS_SHIFTED.as_ptr() as *const __m128i,
                        ));
                        lo = _mm512_shuffle_epi8(table, lo);
                        hi = _mm512_shuffle_epi8(table, hi);
                    }
                    if five {
                        let ten = _mm512_set1_epi8(0x10);
                        lo = _mm512_mask_add_epi8(lo, masks.add(j).read_unaligned(), lo, ten);
                        hi = _mm512_mask_add_epi8(hi, masks.add(2 + j).read_unaligned(), hi, ten);
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
                    let s =
                        _mm512_fmadd_ps(v, _mm512_set1_ps(y.d), _mm512_set1_ps(0.5 * offset * y.s));
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
                    let p = _mm512_loadu_si512(g.add(160 + 256 * chunk + 64 * j) as *const __m512i);
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
                let sc_lo = dup_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(sc as *const __m128i)));
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
                    let sums =
                        _mm256_set1_epi32((s0 as u16 as u32 | ((s1 as u16 as u32) << 16)) as i32);
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
        unsafe { _mm256_storeu_ps(out.add(8 * t), _mm256_sub_ps(pair_sum(acc[t]), acc_min[t])) };
    }
}

/// IQ4_XS (see `repack::interleave_iq4_xs`): per 32-value sub-block the
/// IQ4_NL dot of eight rows, times each row's sub-block scale.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn iq4_xs_rows8_n<const N: usize>(
    w: *const u8,
    blocks: usize,
    acts: *const Q8KBlock,
    out: *mut f32,
) {
    let group = Rows8Format::IQ4_XS.group_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    let m4 = _mm512_set1_epi8(0x0f);
    // SAFETY: the table is 16 bytes. Its levels are shifted to unsigned
    // bytes, the shift taken back per sub-block with the activations' sums.
    let table = _mm512_broadcast_i32x4(unsafe {
        _mm_loadu_si128(crate::lowbit::IQ4_LEVELS_SHIFTED.as_ptr() as *const __m128i)
    });
    // Both lanes of a row take half the shift's share.
    let half_shift = crate::lowbit::IQ4_SHIFT / 2;
    for b in 0..blocks {
        // SAFETY (caller): `blocks` groups of weights and `N × blocks`
        // activation blocks are readable.
        unsafe {
            let g = w.add(b * group);
            let d = dup_ps(_mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i)));
            let mut facc = [_mm512_setzero_ps(); N];
            for sub in 0..8 {
                let mut s = [_mm512_setzero_si512(); N];
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    let sum = y.bsums[2 * sub] as i32 + y.bsums[2 * sub + 1] as i32;
                    s[t] = _mm512_set1_epi32(-half_shift * sum);
                }
                for j in 0..2 {
                    let p = _mm512_loadu_si512(g.add(80 + 128 * sub + 64 * j) as *const __m512i);
                    let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(p, m4));
                    let hi =
                        _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4));
                    for t in 0..N {
                        let ya = (*acts.add(t * blocks + b))
                            .qs
                            .as_ptr()
                            .add(32 * sub + 8 * j);
                        s[t] = _mm512_dpbusd_epi32(s[t], lo, bcast8(ya));
                        s[t] = _mm512_dpbusd_epi32(s[t], hi, bcast8(ya.add(16)));
                    }
                }
                // Each row's d × sub-block scale, applied in float (one
                // convert and one multiply-add per token).
                let sc = _mm512_mul_ps(
                    d,
                    _mm512_cvtepi32_ps(dup_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        g.add(16 + 8 * sub) as *const __m128i,
                    )))),
                );
                for t in 0..N {
                    facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), sc, facc[t]);
                }
            }
            for t in 0..N {
                let y = &*acts.add(t * blocks + b);
                acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(y.d), facc[t], acc[t]);
            }
        }
    }
    for t in 0..N {
        // SAFETY (caller): `out` holds 8 × N values.
        unsafe { _mm256_storeu_ps(out.add(8 * t), pair_sum(acc[t])) };
    }
}

/// The k-quants of 16-value sub-blocks: Q6_K (see the 256-bit
/// `q6_k_rows8_n`), Q3_K and Q2_K (see `repack::interleave_q3_k` and
/// `interleave_q2_k`). Each builds unsigned codes per vector (Q6_K: nibble
/// and two high bits, 0..64; Q3_K: two low bits and the mask bit, 0..8;
/// Q2_K: two bits), dots them with the activations per sub-block, scales
/// each sub-block's sum by its row's scale, and takes the symmetric
/// formats' offset (32, 4) or Q2_K's minimums back with the activations'
/// sub-block sums once per block.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn lowk_rows8_n<const N: usize, const F: u8>(
    w: *const u8,
    blocks: usize,
    acts: *const Q8KBlock,
    out: *mut f32,
) {
    let fmt = Rows8Format::from_u8(F);
    let group = fmt.group_bytes();
    let q2 = fmt == Rows8Format::Q2_K;
    // Where the `[pair][row][2]` sub-block scale bytes start.
    let scales = if q2 { 32 } else { 16 };
    let mut acc = [_mm512_setzero_ps(); N];
    let mut acc_off = [_mm256_setzero_ps(); N];
    let m4 = _mm512_set1_epi8(0x0f);
    let m3 = _mm512_set1_epi8(0x03);
    let m30 = _mm512_set1_epi8(0x30);
    let four = _mm512_set1_epi8(0x04);
    // Sixteen 16-bit sub-block scales (or Q2_K minimums) of one pair.
    let pair_at = |g: *const u8, pair: usize, mins: bool| {
        // SAFETY (caller of the kernel): the group is readable.
        let raw = unsafe { _mm_loadu_si128(g.add(scales + 16 * pair) as *const __m128i) };
        if !q2 {
            _mm256_cvtepi8_epi16(raw)
        } else if mins {
            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), _mm_set1_epi8(0x0f)))
        } else {
            _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0f)))
        }
    };
    for b in 0..blocks {
        // SAFETY (caller): as above.
        unsafe {
            let g = w.add(b * group);
            let mut iacc = [_mm512_setzero_si512(); N];
            for half in 0..2 {
                // One part (32 values) at a time (its values reloaded from
                // L1 for each), with the sums of each sub-block in their
                // own array indexed by token only, so that several tokens'
                // sums stay in registers. Vectors j = 0, 1 hold the part's
                // first sub-block of 16 values, j = 2, 3 its second.
                macro_rules! part {
                    ($part:literal, $codes:expr) => {{
                        let mut sums = [[_mm512_setzero_si512(); N]; 2];
                        for (sub, s) in sums.iter_mut().enumerate() {
                            for j in 2 * sub..2 * sub + 2 {
                                let v = $codes(j);
                                for t in 0..N {
                                    let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                                    let a = bcast8(ya.add(128 * half + 32 * $part + 8 * j));
                                    s[t] = _mm512_dpbusd_epi32(s[t], v, a);
                                }
                            }
                        }
                        let pairs = pair_at(g, 4 * half + $part, false);
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
                let load = |at: usize| _mm512_loadu_si512(g.add(at) as *const __m512i);
                if fmt == Rows8Format::Q6_K {
                    let l0 = |j: usize| load(144 + 512 * half + 64 * j);
                    let l1 = |j: usize| load(144 + 512 * half + 256 + 64 * j);
                    let h = |j: usize| load(1168 + 256 * half + 64 * j);
                    let low = |l: __m512i| _mm512_and_si512(l, m4);
                    let top = |l: __m512i| _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4);
                    let with =
                        |v: __m512i, h: __m512i| _mm512_or_si512(v, _mm512_and_si512(h, m30));
                    part!(0, |j| with(low(l0(j)), _mm512_slli_epi16::<4>(h(j))));
                    part!(1, |j| with(low(l1(j)), _mm512_slli_epi16::<2>(h(j))));
                    part!(2, |j| with(top(l0(j)), h(j)));
                    part!(3, |j| with(top(l1(j)), _mm512_srli_epi16::<2>(h(j))));
                } else {
                    // Two-bit codes: part p in bits 2p of each byte; Q3_K
                    // adds 4 where mask bit 4 half + p is set.
                    let l = |j: usize| load(if q2 { 160 } else { 144 } + 256 * half + 64 * j);
                    let high = |j: usize, v: __m512i, p: usize| {
                        if q2 {
                            return v;
                        }
                        // One mask per vector: bit `8 i + c` for row i's
                        // value `8 j + c` of the part.
                        let masks = g.add(656) as *const u64;
                        let set = masks.add(4 * (4 * half + p) + j).read_unaligned();
                        _mm512_mask_add_epi8(v, set, v, four)
                    };
                    part!(0, |j| high(j, _mm512_and_si512(l(j), m3), 0));
                    part!(1, |j| high(
                        j,
                        _mm512_and_si512(_mm512_srli_epi16::<2>(l(j)), m3),
                        1
                    ));
                    part!(2, |j| high(
                        j,
                        _mm512_and_si512(_mm512_srli_epi16::<4>(l(j)), m3),
                        2
                    ));
                    part!(3, |j| high(
                        j,
                        _mm512_and_si512(_mm512_srli_epi16::<6>(l(j)), m3),
                        3
                    ));
                }
            }
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
            let d = dup_ps(d8);
            // What multiplies each row's sum of (offset or minimum) times
            // activation sums: 32 d (Q6_K), 4 d (Q3_K), dmin (Q2_K).
            let off8 = match fmt {
                Rows8Format::Q6_K => _mm256_mul_ps(d8, _mm256_set1_ps(32.0)),
                Rows8Format::Q3_K => _mm256_mul_ps(d8, _mm256_set1_ps(4.0)),
                _ => _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i)),
            };
            for t in 0..N {
                let y = &*acts.add(t * blocks + b);
                let mut ioff = _mm256_setzero_si256();
                for k in 0..8 {
                    let pairs = pair_at(g, k, true);
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
                acc_off[t] = _mm256_fmadd_ps(
                    _mm256_mul_ps(off8, yd),
                    _mm256_cvtepi32_ps(ioff),
                    acc_off[t],
                );
            }
        }
    }
    for t in 0..N {
        // SAFETY (caller): `out` holds 8 × N values.
        unsafe { _mm256_storeu_ps(out.add(8 * t), _mm256_sub_ps(pair_sum(acc[t]), acc_off[t])) };
    }
}

rows8_entry!(rows8_q4_0, rows8_n, Rows8Format::Q4_0);
rows8_entry!(rows8_q4_1, rows8_n, Rows8Format::Q4_1);
rows8_entry!(rows8_q5_0, rows8_n, Rows8Format::Q5_0);
rows8_entry!(rows8_q5_1, rows8_n, Rows8Format::Q5_1);
rows8_entry!(rows8_q8_0, rows8_n, Rows8Format::Q8_0);
rows8k_entry!(rows8_q4_k, k4_rows8_n[, false], Rows8Format::Q4_K);
rows8k_entry!(rows8_q5_k, k4_rows8_n[, true], Rows8Format::Q5_K);
rows8_entry!(rows8_iq4_nl, rows8_n, Rows8Format::IQ4_NL);
rows8k_entry!(rows8_q6_k, lowk_rows8_n[, 7], Rows8Format::Q6_K);
rows8k_entry!(rows8_q3_k, lowk_rows8_n[, 10], Rows8Format::Q3_K);
rows8k_entry!(rows8_q2_k, lowk_rows8_n[, 11], Rows8Format::Q2_K);
rows8k_entry!(rows8_iq4_xs, iq4_xs_rows8_n[], Rows8Format::IQ4_XS);

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
            iq4_nl: Some(rows8_iq4_nl),
            iq4_xs: Some(rows8_iq4_xs),
            q3_k: Some(rows8_q3_k),
            q2_k: Some(rows8_q2_k),
        },
    }
}
