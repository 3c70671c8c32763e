//! Macros for the per-format 32-value kernels (`q8_kernel!`) and the safe
//! entry points that check shapes and pick a kernel by token count.

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
