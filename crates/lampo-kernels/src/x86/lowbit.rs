//! Row-major kernels of the low-bit formats (`crate::lowbit`), expanded
//! inside `row_dots!` with its primitives (`dot_scaled`, `dot_signed`,
//! `nibbles16`, `hsum`).
//!
//! Q2_K and Q3_K unpack their 2-bit (and third) bits into unsigned codes
//! and weight each 16-value group by its scale in one `dot_scaled`; the
//! minimum (Q2_K) or the offset of 4 (Q3_K) is taken off with the
//! activations' per-16 sums. IQ4_NL and IQ4_XS look their codes up in the
//! 16 levels (`vpshufb`) and dot the signed values by sign transfer.

macro_rules! lowbit_kernels {
    ($features:literal) => {
        /// The 2-bit codes `2j..2j+2` of 32 bytes.
        #[target_feature(enable = $features)]
        fn codes2(q: __m256i, j: usize) -> __m256i {
            _mm256_and_si256(
                _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)),
                _mm256_set1_epi8(3),
            )
        }

        /// Of 16 i16 group scales, scale `2p` in the low 128 bits and
        /// `2p + 1` in the high ones (the two 16-value groups of 32 bytes).
        #[target_feature(enable = $features)]
        fn pair_scales(scales: __m256i, p: usize) -> __m256i {
            let both = _mm256_permutevar8x32_epi32(scales, _mm256_set1_epi32(p as i32));
            _mm256_shuffle_epi8(
                both,
                _mm256_setr_epi8(
                    0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                    2, 3, 2, 3, 2, 3,
                ),
            )
        }

        /// Q3_K's 16 scales less 32, as i16, from their 12 packed bytes.
        #[target_feature(enable = $features)]
        unsafe fn q3_k_scales16(p: *const u8) -> __m256i {
            // SAFETY (caller): 12 readable bytes at `p`.
            let (a0, a1, hi) = unsafe {
                (
                    (p as *const u32).read_unaligned(),
                    (p.add(4) as *const u32).read_unaligned(),
                    (p.add(8) as *const u32).read_unaligned(),
                )
            };
            let (m4, m2) = (0x0f0f_0f0fu32, 0x0303_0303u32);
            let s0 = (a0 & m4) | ((hi & m2) << 4);
            let s1 = (a1 & m4) | (((hi >> 2) & m2) << 4);
            let s2 = ((a0 >> 4) & m4) | (((hi >> 4) & m2) << 4);
            let s3 = ((a1 >> 4) & m4) | (((hi >> 6) & m2) << 4);
            let bytes = _mm_setr_epi32(s0 as i32, s1 as i32, s2 as i32, s3 as i32);
            _mm256_sub_epi16(_mm256_cvtepu8_epi16(bytes), _mm256_set1_epi16(32))
        }

        /// The 16 IQ4 levels in both 128-bit lanes.
        #[target_feature(enable = $features)]
        fn iq4_levels() -> __m256i {
            // SAFETY: IQ4_LEVELS is 16 bytes.
            let l =
                unsafe { _mm_loadu_si128(crate::lowbit::IQ4_LEVELS.as_ptr() as *const __m128i) };
            _mm256_set_m128i(l, l)
        }

        /// Q2_K: `d * scale * code - dmin * min` per 16-value group.
        #[target_feature(enable = $features)]
        unsafe fn q2_k_n<const N: usize>(
            w: *const u8,
            blocks: usize,
            acts: *const Q8KBlock,
            out: *mut f32,
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut macc = [_mm256_setzero_ps(); N];
            for b in 0..blocks {
                // SAFETY (caller): `blocks` blocks of 84 bytes and
                // `N × blocks` activation blocks are readable.
                unsafe {
                    let wb = w.add(b * 84);
                    let (d, dmin) = (f16_at(wb.add(80)), f16_at(wb.add(82)));
                    let raw = _mm_loadu_si128(wb as *const __m128i);
                    let m4 = _mm_set1_epi8(0x0f);
                    let scales = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
                    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
                    let mut iacc = [_mm256_setzero_si256(); N];
                    for h in 0..2 {
                        let q = _mm256_loadu_si256(wb.add(16 + 32 * h) as *const __m256i);
                        for j in 0..4 {
                            let codes = codes2(q, j);
                            let s = pair_scales(scales, 4 * h + j);
                            for t in 0..N {
                                let y = &*acts.add(t * blocks + b);
                                let a = _mm256_loadu_si256(
                                    y.qs.as_ptr().add(128 * h + 32 * j) as *const __m256i
                                );
                                iacc[t] = dot_scaled(iacc[t], codes, a, s);
                            }
                        }
                    }
                    for t in 0..N {
                        let y = &*acts.add(t * blocks + b);
                        let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
                        macc[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins)),
                            _mm256_set1_ps(dmin * y.d),
                            macc[t],
                        );
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
                unsafe { *out.add(t) = hsum(_mm256_sub_ps(acc[t], macc[t])) };
            }
        }

        /// Q3_K: `d * (scale - 32) * (code - 4)`, codes 0..7 unsigned.
        #[target_feature(enable = $features)]
        unsafe fn q3_k_n<const N: usize>(
            w: *const u8,
            blocks: usize,
            acts: *const Q8KBlock,
            out: *mut f32,
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let one = _mm256_set1_epi8(1);
            for b in 0..blocks {
                // SAFETY (caller): `blocks` blocks of 110 bytes and
                // `N × blocks` activation blocks are readable.
                unsafe {
                    let wb = w.add(b * 110);
                    let d = f16_at(wb.add(108));
                    let scales = q3_k_scales16(wb.add(96));
                    let hm = _mm256_loadu_si256(wb as *const __m256i);
                    let mut iacc = [_mm256_setzero_si256(); N];
                    for h in 0..2 {
                        let q = _mm256_loadu_si256(wb.add(32 + 32 * h) as *const __m256i);
                        for j in 0..4 {
                            let high = _mm256_and_si256(
                                _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * h + j) as i32)),
                                one,
                            );
                            let codes = _mm256_or_si256(codes2(q, j), _mm256_slli_epi16::<2>(high));
                            let s = pair_scales(scales, 4 * h + j);
                            for t in 0..N {
                                let y = &*acts.add(t * blocks + b);
                                let a = _mm256_loadu_si256(
                                    y.qs.as_ptr().add(128 * h + 32 * j) as *const __m256i
                                );
                                iacc[t] = dot_scaled(iacc[t], codes, a, s);
                            }
                        }
                    }
                    for t in 0..N {
                        let y = &*acts.add(t * blocks + b);
                        // The offset of 4 times each group's activation sum.
                        let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
                        let offset = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bsums, scales));
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

        q8_kernel!($features, iq4_nl_n, 18, true, false, |wb| {
            _mm256_shuffle_epi8(iq4_levels(), nibbles16(wb.add(2)))
        });

        /// IQ4_XS: eight 32-value groups of looked-up levels, each with
        /// its 6-bit scale less 32.
        #[target_feature(enable = $features)]
        unsafe fn iq4_xs_n<const N: usize>(
            w: *const u8,
            blocks: usize,
            acts: *const Q8KBlock,
            out: *mut f32,
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let levels = iq4_levels();
            for b in 0..blocks {
                // SAFETY (caller): `blocks` blocks of 136 bytes and
                // `N × blocks` activation blocks are readable.
                unsafe {
                    let wb = w.add(b * 136);
                    let d = f16_at(wb);
                    // Scale `ib`: 4 bits at `4 ib` of the low word, 2 at
                    // `2 ib` of the high one.
                    let high = (wb.add(2) as *const u16).read_unaligned() as u32;
                    let low = (wb.add(4) as *const u32).read_unaligned();
                    let mut iacc = [_mm256_setzero_si256(); N];
                    for ib in 0..8 {
                        let q = _mm256_shuffle_epi8(levels, nibbles16(wb.add(8 + 16 * ib)));
                        let ls = (((low >> (4 * ib)) & 15) | (((high >> (2 * ib)) & 3) << 4))
                            as i16
                            - 32;
                        let (mag, s) = (_mm256_sign_epi8(q, q), _mm256_set1_epi16(ls));
                        for t in 0..N {
                            let y = &*acts.add(t * blocks + b);
                            let a =
                                _mm256_loadu_si256(y.qs.as_ptr().add(32 * ib) as *const __m256i);
                            // |w| times sign(w)·a: pair sums stay within i16.
                            iacc[t] = dot_scaled(iacc[t], mag, _mm256_sign_epi8(a, q), s);
                        }
                    }
                    for t in 0..N {
                        let y = &*acts.add(t * blocks + b);
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
                unsafe { *out.add(t) = hsum(acc[t]) };
            }
        }
    };
}
