//! The row-major kernels, written once (`row_dots!`) and expanded per
//! instruction set with its multiply-add primitives.

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

            lowbit_kernels!($features);

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
            entry!(q2_k, q2_k_n[], Q8KBlock, 84);
            entry!(q3_k, q3_k_n[], Q8KBlock, 110);
            entry!(iq4_nl, iq4_nl_n[], Q8Block, 18);
            entry!(iq4_xs, iq4_xs_n[], Q8KBlock, 136);

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
                        q2_k: Some(q2_k),
                        q3_k: Some(q3_k),
                        iq4_nl: Some(iq4_nl),
                        iq4_xs: Some(iq4_xs),
                    },
                    rows8: Some(rows8_dots()),
                    quantize_q8,
                    quantize_q8k,
                })
            }
        }
    };
}
