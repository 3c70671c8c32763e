//! The interleaved kernels on 256-bit vectors, as a macro the AVX2 module
//! expands (`rows8_ymm!`).

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
                        if fmt.levels() {
                            // Signed levels, dotted by sign transfer.
                            let l = _mm_loadu_si128(crate::lowbit::IQ4_LEVELS.as_ptr() as *const __m128i);
                            let table = _mm256_set_m128i(l, l);
                            let (lo, hi) = (
                                _mm256_shuffle_epi8(table, lo),
                                _mm256_shuffle_epi8(table, hi),
                            );
                            let (lo_abs, hi_abs) = (_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(hi, hi));
                            for t in 0..N {
                                let ya = (*acts.add(t * blocks + b)).qs.as_ptr();
                                let a_lo = _mm256_set1_epi32((ya.add(4 * j) as *const i32).read_unaligned());
                                let a_hi =
                                    _mm256_set1_epi32((ya.add(16 + 4 * j) as *const i32).read_unaligned());
                                isum[t] = dot_acc(isum[t], lo_abs, _mm256_sign_epi8(a_lo, lo));
                                isum[t] = dot_acc(isum[t], hi_abs, _mm256_sign_epi8(a_hi, hi));
                            }
                            continue;
                        }
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

    /// IQ4_XS interleaved eight rows at a time (see
    /// `repack::interleave_iq4_xs`): per 32-value sub-block the IQ4_NL
    /// dot of eight rows (signed levels, by sign transfer), times each
    /// row's sub-block scale.
    #[target_feature(enable = $features)]
    unsafe fn iq4_xs_rows8_n<const N: usize>(
        w: *const u8,
        blocks: usize,
        acts: *const Q8KBlock,
        out: *mut f32,
    ) {
        let group = Rows8Format::IQ4_XS.group_bytes();
        let mut acc = [_mm256_setzero_ps(); N];
        let m4 = _mm256_set1_epi8(0x0f);
        // SAFETY: IQ4_LEVELS is 16 bytes.
        let l = unsafe { _mm_loadu_si128(crate::lowbit::IQ4_LEVELS.as_ptr() as *const __m128i) };
        let table = _mm256_set_m128i(l, l);
        for b in 0..blocks {
            // SAFETY (caller): `blocks` groups of weights and
            // `N × blocks` activation blocks are readable.
            unsafe {
                let g = w.add(b * group);
                let mut iacc = [_mm256_setzero_si256(); N];
                for sub in 0..8 {
                    let mut s = [_mm256_setzero_si256(); N];
                    for j in 0..4 {
                        let p = _mm256_loadu_si256(g.add(80 + 128 * sub + 32 * j) as *const __m256i);
                        let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(p, m4));
                        let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(p), m4));
                        let (lo_abs, hi_abs) = (_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(hi, hi));
                        for t in 0..N {
                            let ya = (*acts.add(t * blocks + b)).qs.as_ptr().add(32 * sub + 4 * j);
                            let a_lo = _mm256_set1_epi32((ya as *const i32).read_unaligned());
                            let a_hi = _mm256_set1_epi32((ya.add(16) as *const i32).read_unaligned());
                            s[t] = dot_acc(s[t], lo_abs, _mm256_sign_epi8(a_lo, lo));
                            s[t] = dot_acc(s[t], hi_abs, _mm256_sign_epi8(a_hi, hi));
                        }
                    }
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(g.add(16 + 8 * sub) as *const __m128i));
                    for t in 0..N {
                        iacc[t] = _mm256_add_epi32(iacc[t], _mm256_mullo_epi32(s[t], sc));
                    }
                }
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                for t in 0..N {
                    let y = &*acts.add(t * blocks + b);
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(d8, _mm256_set1_ps(y.d)),
                        _mm256_cvtepi32_ps(iacc[t]),
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
    rows8k_entry!(rows8_iq4_xs, iq4_xs_rows8_n[], Rows8Format::IQ4_XS);

    rows8_entry!(rows8_q4_0, rows8_n, Rows8Format::Q4_0);
    rows8_entry!(rows8_iq4_nl, rows8_n, Rows8Format::IQ4_NL);
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
                iq4_nl: Some(rows8_iq4_nl),
                iq4_xs: Some(rows8_iq4_xs),
                ..FormatDots::LOWBIT_NONE
            },
        }
    }

    };
}
