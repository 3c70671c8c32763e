//! The backend conformance suite: every kernel of every instruction set
//! this CPU runs, and every op of the CPU backend built on each, against
//! the portable reference, on random inputs with the shapes Lampo's models
//! use (as ggml's `test-backend-ops` does for its backends). A new
//! instruction set, or a new backend, passes this first. It runs in `make
//! test` on this machine's instruction sets (all of them are checked, the
//! portable one included) and under qemu for NEON (`scripts/test-neon`).
//!
//! Quantizers must agree bit for bit; integer dot products exactly up to
//! the order of their float sums; ops with a polynomial exponential or f16
//! rounding within the tolerance stated at each check.

use std::sync::Arc;

use half::f16;
use lampo_kernels::backend::{Activation, Backend, Heads, HostMatrix, KvShape, Mapping, SeqSpan};
use lampo_kernels::cpu::CpuTensor;
use lampo_kernels::ops::{Rope, RopeStyle};
use lampo_kernels::qdot::{ActFormat, MAX_TOKENS, Q8Block, Q8KBlock, quantize_q8, quantize_q8k};
use lampo_kernels::quant::{QK_K, dequantize_row, sample_blocks};
use lampo_kernels::repack::{Rows8Format, interleave_rows8};
use lampo_kernels::simd::F16Run;
use lampo_kernels::{Cpu, DType, Isa, Kernels, Layout, WeightRef};

/// Deterministic values in about [-scale, scale].
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The SIMD kernel sets to check (every set but the portable one).
fn simd_sets() -> Vec<Kernels> {
    let sets: Vec<Kernels> = Kernels::available()
        .into_iter()
        .filter(|k| k.isa != Isa::Portable)
        .collect();
    #[cfg(target_arch = "aarch64")]
    assert!(sets.iter().any(|k| k.isa == Isa::Neon));
    #[cfg(target_arch = "x86_64")]
    assert!(!sets.is_empty() || !Isa::Avx2.supported());
    sets
}

fn close(got: f32, want: f32, tol: f32, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: {got} vs {want} (tolerance {tol})"
    );
}

/// The formats whose interleaved kernels exist on 512-bit vectors only
/// (unit 8): elsewhere their weights stay row-major.
const INTERLEAVED_ON_512_ONLY: [DType; 2] = [DType::Q2_K, DType::Q3_K];

#[test]
fn every_quantized_format_has_every_kernel() {
    let quantized: Vec<DType> = DType::ALL
        .into_iter()
        .filter(|t| t.act_format().is_some())
        .collect();
    assert_eq!(quantized, DType::QUANTIZED, "the list of quantized formats");
    for k in Kernels::available() {
        for ty in DType::QUANTIZED {
            let found = match ty.act_format().unwrap() {
                ActFormat::Q8 => k.dots.rows.q8(ty).is_some(),
                ActFormat::Q8K => k.dots.rows.q8k(ty).is_some(),
            };
            assert!(found, "{} has no row kernel for {ty}", k.isa);
            assert!(
                Rows8Format::of(ty).is_some(),
                "{ty} has an interleaved layout"
            );
            if let Some(r8) = k.dots.rows8 {
                let expected = r8.unit == 8 || !INTERLEAVED_ON_512_ONLY.contains(&ty);
                assert_eq!(
                    r8.dots.supports(ty),
                    expected,
                    "{} and its interleaved kernel for {ty}",
                    k.isa
                );
            }
        }
    }
}

#[test]
fn quantizers_agree_bit_for_bit() {
    let mut x = values(2048, 3, 2.0);
    // Zeros, a ramp, ties and a repeated largest magnitude of both signs.
    x[32..64].fill(0.0);
    x.iter_mut()
        .skip(64)
        .take(32)
        .enumerate()
        .for_each(|(i, v)| *v = i as f32 - 15.5);
    x[300] = -40.0;
    x[301] = 40.0;
    let mut want = vec![Q8Block::ZERO; x.len() / 32];
    (Kernels::PORTABLE.dots.quantize_q8)(&x, &mut want);
    let mut want_k = vec![Q8KBlock::ZERO; x.len() / QK_K];
    (Kernels::PORTABLE.dots.quantize_q8k)(&x, &mut want_k);
    for k in simd_sets() {
        let mut got = vec![Q8Block::ZERO; x.len() / 32];
        (k.dots.quantize_q8)(&x, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                (g.d.to_bits(), g.s.to_bits(), g.qs),
                (w.d.to_bits(), w.s.to_bits(), w.qs),
                "{} 32-block {i}",
                k.isa
            );
        }
        let mut got = vec![Q8KBlock::ZERO; x.len() / QK_K];
        (k.dots.quantize_q8k)(&x, &mut got);
        for (i, (g, w)) in got.iter().zip(&want_k).enumerate() {
            assert_eq!(
                (g.d.to_bits(), g.qs, g.bsums),
                (w.d.to_bits(), w.qs, w.bsums),
                "{} 256-block {i}",
                k.isa
            );
        }
    }
}

enum Acts {
    Q8(Vec<Q8Block>),
    Q8K(Vec<Q8KBlock>),
}

fn acts_for(ty: DType, x: &[f32]) -> Acts {
    match ty.act_format().unwrap() {
        ActFormat::Q8 => Acts::Q8(quantize_q8(x)),
        ActFormat::Q8K => Acts::Q8K(quantize_q8k(x)),
    }
}

/// Sum of |w·x| over a weight row and an activation row: the scale
/// float-order differences are measured against.
fn magnitude(ty: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    dequantize_row(ty, row, &mut w);
    w.iter()
        .zip(x)
        .map(|(a, b)| (a * b).abs())
        .sum::<f32>()
        .max(1e-3)
}

#[test]
fn row_dots_match_the_portable_ones() {
    for ty in DType::QUANTIZED {
        for blocks in [1usize, 3, 7, 18] {
            let n = blocks * ty.block_len();
            let row = sample_blocks(ty, n, 1000 + 31 * n as u64 + ty.ggml_id() as u64);
            for nt in 1..=MAX_TOKENS {
                let x = values(n * nt, blocks as u64 + 7 * nt as u64, 1.0);
                let acts = acts_for(ty, &x);
                let run = |k: &Kernels, out: &mut [f32]| match &acts {
                    Acts::Q8(a) => k.dots.rows.q8(ty).unwrap()(&row, a, out),
                    Acts::Q8K(a) => k.dots.rows.q8k(ty).unwrap()(&row, a, out),
                };
                let mut want = vec![0f32; nt];
                run(&Kernels::PORTABLE, &mut want);
                for k in simd_sets() {
                    let mut got = vec![0f32; nt];
                    run(&k, &mut got);
                    for t in 0..nt {
                        let tol = 1e-5 * magnitude(ty, &row, &x[t * n..(t + 1) * n]);
                        close(
                            got[t],
                            want[t],
                            tol,
                            &format!("{} {ty} blocks={blocks} nt={nt} t={t}", k.isa),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn interleaved_dots_match_the_portable_row_dots() {
    for ty in DType::QUANTIZED {
        let Some(fmt) = Rows8Format::of(ty) else {
            continue;
        };
        for (rows, blocks) in [(8usize, 1usize), (16, 3), (24, 7)] {
            let cols = blocks * fmt.block_len();
            let data = sample_blocks(
                ty,
                rows * cols,
                77 + (rows * blocks) as u64 + ty.ggml_id() as u64,
            );
            let w = WeightRef {
                dtype: ty,
                rows,
                cols,
                data: &data,
                layout: Layout::Rows,
            };
            for nt in 1..=MAX_TOKENS {
                let x = values(nt * cols, 5 * nt as u64 + rows as u64, 1.0);
                let acts = acts_for(ty, &x);
                for k in Kernels::available() {
                    let Some(r8) = k.dots.rows8.filter(|r8| r8.dots.supports(ty)) else {
                        continue;
                    };
                    let packed = interleave_rows8(&w, r8.unit).unwrap();
                    let group = packed.len() / (rows / 8);
                    for g in 0..rows / 8 {
                        let wg = &packed[g * group..(g + 1) * group];
                        let mut got = vec![0f32; 8 * nt];
                        match &acts {
                            Acts::Q8(a) => r8.dots.q8(ty).unwrap()(wg, a, &mut got),
                            Acts::Q8K(a) => r8.dots.q8k(ty).unwrap()(wg, a, &mut got),
                        }
                        for i in 0..8 {
                            let row = w.row(8 * g + i);
                            let mut want = vec![0f32; nt];
                            match &acts {
                                Acts::Q8(a) => {
                                    Kernels::PORTABLE.dots.rows.q8(ty).unwrap()(row, a, &mut want)
                                }
                                Acts::Q8K(a) => {
                                    Kernels::PORTABLE.dots.rows.q8k(ty).unwrap()(row, a, &mut want)
                                }
                            }
                            for t in 0..nt {
                                let tol = 1e-5 * magnitude(ty, row, &x[t * cols..(t + 1) * cols]);
                                close(
                                    got[8 * t + i],
                                    want[t],
                                    tol,
                                    &format!(
                                        "{} {ty} rows={rows} blocks={blocks} nt={nt} group={g} row={i} t={t}",
                                        k.isa
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f32_and_f16_primitives_match_the_portable_ones() {
    for n in [0usize, 1, 7, 16, 17, 64, 577, 1536] {
        let (a, b) = (values(n, 1 + n as u64, 1.0), values(n, 2 + n as u64, 1.0));
        let want = (Kernels::PORTABLE.dot_f32)(&a, &b);
        let tol = 1e-5
            * a.iter()
                .zip(&b)
                .map(|(x, y)| (x * y).abs())
                .sum::<f32>()
                .max(1.0);
        for k in simd_sets() {
            close(
                (k.dot_f32)(&a, &b),
                want,
                tol,
                &format!("{} dot n={n}", k.isa),
            );
        }
        // BF16 weights read natively: exactly the f32 dot of the widened
        // row, whatever the number of activation rows dotted at once.
        let w: Vec<u8> = a
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let mut widened = vec![0f32; n];
        dequantize_row(DType::BF16, &w, &mut widened);
        for k in Kernels::available() {
            for nt in 1..=MAX_TOKENS {
                let x: Vec<f32> = (0..nt).flat_map(|t| values(n, 9 + t as u64, 1.0)).collect();
                let mut got = vec![0f32; nt];
                (k.dot_bf16)(&w, &x, &mut got);
                for t in 0..nt {
                    assert_eq!(
                        got[t].to_bits(),
                        (k.dot_f32)(&widened, &x[t * n..(t + 1) * n]).to_bits(),
                        "{} bf16 dot n={n} rows={nt} row={t}",
                        k.isa
                    );
                }
            }
        }
    }
    for (groups, hd, n, stride) in [
        (1usize, 64usize, 1usize, 64usize),
        (3, 64, 16, 192),
        (7, 64, 5, 128),
        (6, 128, 9, 256),
        (12, 72, 9, 100),
        (2, 13, 4, 13),
    ] {
        let q = values(groups * hd, groups as u64, 1.0);
        let data: Vec<f16> = values((n - 1) * stride + hd, hd as u64, 1.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let run = F16Run {
            data: &data,
            stride,
            len: hd,
            n,
        };
        let mut want = vec![0f32; groups * n];
        (Kernels::PORTABLE.group_scores_f16)(&q, run, &mut want);
        let w_stride = n + 3;
        let w = values(groups * w_stride, 9, 1.0);
        let mut want_sum = q.clone();
        (Kernels::PORTABLE.group_weighted_sum_f16)(&mut want_sum, &w, w_stride, run);
        for k in simd_sets() {
            let mut got = vec![0f32; groups * n];
            (k.group_scores_f16)(&q, run, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                close(
                    *g,
                    *w,
                    1e-4 * hd as f32,
                    &format!("{} scores {groups}x{hd}x{n} at {i}", k.isa),
                );
            }
            let mut got = q.clone();
            (k.group_weighted_sum_f16)(&mut got, &w, w_stride, run);
            for (i, (g, w)) in got.iter().zip(&want_sum).enumerate() {
                close(
                    *g,
                    *w,
                    1e-4 * n as f32,
                    &format!("{} weighted sum {groups}x{hd}x{n} at {i}", k.isa),
                );
            }
        }
    }
}

#[test]
fn elementwise_ops_match_the_portable_ones() {
    let p = Kernels::PORTABLE;
    for n in [1usize, 7, 8, 9, 33, 576, 896, 8960] {
        let x = values(n, n as u64, 3.0);
        let g = values(n, 2 * n as u64, 1.0);
        for k in simd_sets() {
            let what = |op: &str| format!("{} {op} n={n}", k.isa);
            let (r1, r2) = ((k.rms_scale)(&x, 1e-6), (p.rms_scale)(&x, 1e-6));
            close(r1, r2, 1e-6 * r2, &what("rms_scale"));
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            (k.scale_mul)(&x, 0.7, &g, &mut a);
            (p.scale_mul)(&x, 0.7, &g, &mut b);
            assert_eq!(a, b, "{}", what("scale_mul"));
            let (mut a, mut b) = (x.clone(), x.clone());
            (k.softmax)(&mut a);
            (p.softmax)(&mut b);
            for (u, v) in a.iter().zip(&b) {
                close(*u, *v, 1e-6, &what("softmax"));
            }
            for (op, fk, fp) in [
                ("silu", k.silu_mul, p.silu_mul),
                ("gelu", k.gelu_mul, p.gelu_mul),
            ] {
                let (mut a, mut b) = (x.clone(), x.clone());
                fk(&mut a, &g);
                fp(&mut b, &g);
                for (u, v) in a.iter().zip(&b) {
                    close(*u, *v, 1e-5 * v.abs().max(1.0), &what(op));
                }
            }
        }
    }
    // Rotations: both pairings, rotating all or part of each head.
    for (style, hd, dims) in [
        (RopeStyle::Adjacent, 64, 64),
        (RopeStyle::Halves, 128, 128),
        (RopeStyle::Halves, 64, 32),
    ] {
        let rope = Rope::new(style, dims, 10_000.0);
        let (mut sin, mut cos) = (vec![0f32; rope.pairs()], vec![0f32; rope.pairs()]);
        rope.fill(4093, &mut sin, &mut cos);
        let x = values(hd * 6, hd as u64, 2.0);
        let mut want = x.clone();
        (p.rotate)(&mut want, hd, style, &sin, &cos);
        for k in simd_sets() {
            let mut got = x.clone();
            (k.rotate)(&mut got, hd, style, &sin, &cos);
            for (u, v) in got.iter().zip(&want) {
                close(*u, *v, 1e-5, &format!("{} rotate {style:?} hd={hd}", k.isa));
            }
        }
    }
}

/// Bytes in memory, as a model file's mapping would hold them.
struct Bytes(Vec<u8>);

impl Mapping for Bytes {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn host(ty: DType, rows: usize, cols: usize, seed: u64) -> HostMatrix {
    let data = sample_blocks(ty, rows * cols, seed);
    let len = data.len();
    HostMatrix {
        dtype: ty,
        rows,
        cols,
        source: Arc::new(Bytes(data)),
        range: 0..len,
    }
}

/// The backends to check, each with the portable one to check it against.
fn backends() -> Vec<(Cpu, Cpu)> {
    let portable = Cpu::new(2, Isa::Portable).unwrap();
    Isa::available()
        .into_iter()
        .map(|isa| (Cpu::new(2, isa).unwrap(), portable.clone()))
        .collect()
}

fn assert_tensors_close(got: &CpuTensor, want: &CpuTensor, tol: impl Fn(usize) -> f32, what: &str) {
    assert_eq!(
        (got.rows, got.cols),
        (want.rows, want.cols),
        "{what}: shape"
    );
    for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
        close(*a, *b, tol(i), &format!("{what} at {i}"));
    }
}

#[test]
fn backend_matmuls_match_the_portable_backend() {
    // Rows × width as in the models (a layer's projections, FFN, output).
    let shapes = [(64usize, 576usize), (256, 896), (40, 1536), (32, 256)];
    for (cpu, reference) in backends() {
        for ty in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
            DType::F32,
            DType::F16,
        ] {
            for (rows, cols) in shapes {
                if cols % ty.block_len() != 0 {
                    continue;
                }
                let w = host(ty, rows, cols, rows as u64 * 3 + ty.ggml_id() as u64);
                let (m, m_ref) = (cpu.matrix(w.clone()), reference.matrix(w.clone()));
                let scale: f32 = {
                    let mut deq = vec![0f32; cols];
                    dequantize_row(ty, &w.data()[..w.data().len() / rows], &mut deq);
                    deq.iter().map(|v| v.abs()).sum()
                };
                for n in [1usize, 3, 7, 33] {
                    let x = cpu.tensor_from(n, cols, &values(n * cols, n as u64, 1.0));
                    let mut got = cpu.tensor(n, rows);
                    let mut want = reference.tensor(n, rows);
                    cpu.matmul(&x, &mut [(&m, &mut got)]);
                    reference.matmul(&x, &mut [(&m_ref, &mut want)]);
                    assert_tensors_close(
                        &got,
                        &want,
                        |_| 1e-4 * scale.max(1.0),
                        &format!("{} matmul {ty} {rows}x{cols} n={n}", cpu.name()),
                    );
                }
            }
        }
    }
}

#[test]
fn backend_row_ops_match_the_portable_backend() {
    for (cpu, reference) in backends() {
        let what = |op: &str| format!("{} {op}", cpu.name());
        for (n, d) in [(1usize, 576usize), (5, 896), (17, 640)] {
            let xs = values(n * d, d as u64, 2.0);
            let (x, x_ref) = (cpu.tensor_from(n, d, &xs), reference.tensor_from(n, d, &xs));
            let gain = values(d, 1, 1.0);
            let (g, g_ref) = (cpu.vector(&gain), reference.vector(&gain));
            let (mut h, mut h_ref) = (cpu.tensor(n, d), reference.tensor(n, d));
            cpu.rms_norm(&x, &g, 1e-6, &mut h);
            reference.rms_norm(&x_ref, &g_ref, 1e-6, &mut h_ref);
            assert_tensors_close(&h, &h_ref, |_| 1e-5, &what("rms_norm"));
            // Per head (64) and per row.
            for piece in [64usize, d] {
                let gain = values(piece, piece as u64, 1.0);
                let (mut a, mut b) = (cpu.tensor_from(n, d, &xs), reference.tensor_from(n, d, &xs));
                cpu.rms_norm_pieces(&mut a, &cpu.vector(&gain), 1e-6);
                reference.rms_norm_pieces(&mut b, &reference.vector(&gain), 1e-6);
                assert_tensors_close(&a, &b, |_| 1e-5, &what("rms_norm_pieces"));
            }
            let (mut a, mut b) = (cpu.tensor_from(n, d, &xs), reference.tensor_from(n, d, &xs));
            cpu.add_bias(&mut a, &g);
            reference.add_bias(&mut b, &g_ref);
            cpu.add(&mut a, &x);
            reference.add(&mut b, &x_ref);
            cpu.scale(&mut a, 0.5);
            reference.scale(&mut b, 0.5);
            assert_eq!(a, b, "{}", what("add_bias, add, scale"));
            for act in [Activation::Silu, Activation::GeluTanh] {
                let up = values(n * d, 5, 1.0);
                let (mut a, mut b) = (cpu.tensor_from(n, d, &xs), reference.tensor_from(n, d, &xs));
                cpu.gated(act, &mut a, &cpu.tensor_from(n, d, &up));
                reference.gated(act, &mut b, &reference.tensor_from(n, d, &up));
                assert_tensors_close(&a, &b, |i| 1e-5 * b.data[i].abs().max(1.0), &what("gated"));
            }
            let rows = [n - 1, 0, n / 2];
            assert_eq!(
                cpu.gather(&x, &rows),
                reference.gather(&x_ref, &rows),
                "{}",
                what("gather")
            );
            assert_eq!(cpu.read(&x, 0..n), xs, "{}", what("read"));
        }
        // Embedding rows, and rotary positions of two sequences.
        let table = host(DType::Q8_0, 100, 64, 11);
        let tokens = [3u32, 99, 0, 42];
        let (mut e, mut e_ref) = (cpu.tensor(4, 64), reference.tensor(4, 64));
        cpu.embed(&cpu.table(table.clone()), &tokens, &mut e);
        reference.embed(&reference.table(table), &tokens, &mut e_ref);
        assert_eq!(e, e_ref, "{}", what("embed"));
        let blocks = [0u32];
        let seqs = [
            SeqSpan {
                rows: 0..3,
                past: 0,
                blocks: &blocks,
            },
            SeqSpan {
                rows: 3..5,
                past: 4090,
                blocks: &blocks,
            },
        ];
        for (style, hd, dims) in [
            (RopeStyle::Adjacent, 64, 64),
            (RopeStyle::Halves, 64, 64),
            (RopeStyle::Halves, 128, 96),
        ] {
            let rope = Rope::new(style, dims, 1e6);
            let (t, t_ref) = (
                cpu.rope_table(&rope, &seqs),
                reference.rope_table(&rope, &seqs),
            );
            assert_eq!(t, t_ref, "{}", what("rope_table"));
            let xs = values(5 * 3 * hd, 2, 1.0);
            let (mut a, mut b) = (
                cpu.tensor_from(5, 3 * hd, &xs),
                reference.tensor_from(5, 3 * hd, &xs),
            );
            cpu.rope(&mut a, &t, style, hd);
            reference.rope(&mut b, &t_ref, style, hd);
            assert_tensors_close(&a, &b, |_| 1e-5, &what("rope"));
        }
    }
}

#[test]
fn backend_paged_attention_matches_the_portable_backend() {
    // Heads as in SmolLM2 (9/3 of 64), Qwen2.5-0.5B (14/2 of 64) and 1.5B
    // (12/2 of 128), Gemma 3 (4/1 of 256, a sliding window), Gemma 2 27B
    // (32/16 of 128, scaled by 1/sqrt(144), scores soft-capped; the cap
    // is 50 there, here one that bites on these small random scores).
    let cases = [
        (9usize, 3usize, 64usize, None, None, None),
        (14, 2, 64, None, None, None),
        (12, 2, 128, None, None, None),
        (4, 1, 256, Some(20usize), None, None),
        (32, 16, 128, Some(20), Some(1.0 / 12.0f32), Some(0.25f32)),
    ];
    for (cpu, reference) in backends() {
        for (n_head, n_kv, hd, window, scale, softcap) in cases {
            let shape = KvShape {
                layers: 2,
                kv_dim: n_kv * hd,
                block_size: 16,
            };
            let (mut kv, mut kv_ref) = (cpu.kv(shape, 12), reference.kv(shape, 12));
            // Two sequences over scattered blocks: one with a 30-position
            // past written earlier, one prefilling from 0; then a decode.
            let (b1, b2) = ([7u32, 2, 9, 4], [0u32, 11, 5]);
            let heads = Heads {
                n_head,
                n_kv_head: n_kv,
                head_dim: hd,
                window,
                scale: scale.unwrap_or(Heads::default_scale(hd)),
                softcap,
            };
            let steps: [Vec<SeqSpan>; 3] = [
                vec![SeqSpan {
                    rows: 0..30,
                    past: 0,
                    blocks: &b1,
                }],
                vec![
                    SeqSpan {
                        rows: 0..9,
                        past: 30,
                        blocks: &b1,
                    },
                    SeqSpan {
                        rows: 9..43,
                        past: 0,
                        blocks: &b2,
                    },
                ],
                vec![
                    SeqSpan {
                        rows: 0..1,
                        past: 39,
                        blocks: &b1,
                    },
                    SeqSpan {
                        rows: 1..2,
                        past: 34,
                        blocks: &b2,
                    },
                ],
            ];
            for (step, seqs) in steps.iter().enumerate() {
                let n = seqs.last().unwrap().rows.end;
                let k = values(n * n_kv * hd, 10 + step as u64, 1.0);
                let v = values(n * n_kv * hd, 20 + step as u64, 1.0);
                let q = values(n * n_head * hd, 30 + step as u64, 1.0);
                for layer in 0..2 {
                    cpu.write_kv(
                        &mut kv,
                        layer,
                        &cpu.tensor_from(n, n_kv * hd, &k),
                        &cpu.tensor_from(n, n_kv * hd, &v),
                        seqs,
                    );
                    reference.write_kv(
                        &mut kv_ref,
                        layer,
                        &reference.tensor_from(n, n_kv * hd, &k),
                        &reference.tensor_from(n, n_kv * hd, &v),
                        seqs,
                    );
                    let (mut qa, mut qb) = (
                        cpu.tensor_from(n, n_head * hd, &q),
                        reference.tensor_from(n, n_head * hd, &q),
                    );
                    let (mut out, mut out_ref) =
                        (cpu.tensor(n, n_head * hd), reference.tensor(n, n_head * hd));
                    cpu.attention(&mut qa, &kv, layer, heads, seqs, &mut out);
                    reference.attention(&mut qb, &kv_ref, layer, heads, seqs, &mut out_ref);
                    // Probabilities meet values at f16: a probability on an
                    // f16 rounding boundary may round the other way.
                    assert_tensors_close(
                        &out,
                        &out_ref,
                        |_| 4e-3,
                        &format!(
                            "{} attention {n_head}/{n_kv}x{hd} window {window:?} step {step} layer {layer}",
                            cpu.name()
                        ),
                    );
                }
            }
        }
    }
}
