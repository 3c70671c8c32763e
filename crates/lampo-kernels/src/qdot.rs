//! Integer dot products of quantized weights with activations quantized to
//! 8 bits once per matmul.
//!
//! Activations are cut into blocks matching the weight format: 32 values for
//! the 32-block formats (with the block sum, for formats that carry a
//! minimum), 256 values with per-16 sums for the k-quants. Each weight block
//! then costs one integer dot product and a couple of float multiplies, and
//! the results agree with GGML's, which quantizes activations the same way.

use half::f16;

use crate::isa::Isa;
use crate::lowbit::{dot_iq4_nl, dot_iq4_xs, dot_q2_k, dot_q3_k};
use crate::quant::{DType, QK_K};

/// Activations of one 32-value block: `x ≈ d * qs`, `s = d * sum(qs)`.
#[derive(Clone, Copy, Debug)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// Activations of one 256-value block, with sums of each 16 values.
#[derive(Clone, Copy, Debug)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// Which activation blocks a weight format is dotted with, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    Q8,
    Q8K,
}

impl DType {
    /// How activations are quantized for this weight format; float formats
    /// take f32 activations.
    pub fn act_format(self) -> Option<ActFormat> {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => None,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::IQ4_NL => {
                Some(ActFormat::Q8)
            }
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q2_K | DType::Q3_K | DType::IQ4_XS => {
                Some(ActFormat::Q8K)
            }
        }
    }
}

/// Rounds half to even, as GGML's SIMD quantizers and `nearest_int` do.
fn round_i32(v: f32) -> i32 {
    v.round_ties_even() as i32
}

impl Q8Block {
    pub const ZERO: Q8Block = Q8Block {
        d: 0.0,
        s: 0.0,
        qs: [0; 32],
    };
}

impl Q8KBlock {
    pub const ZERO: Q8KBlock = Q8KBlock {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
}

/// `x` as 32-value blocks (the portable quantizer; every instruction
/// set's gives the same blocks).
pub fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
    let mut out = vec![Q8Block::ZERO; x.len() / 32];
    quantize_q8_generic(x, &mut out);
    out
}

/// The portable quantizer, also compiled by each SIMD module with its
/// instructions enabled (where rounding is one instruction, not a libm call).
#[inline(always)]
pub(crate) fn quantize_q8_generic(x: &[f32], out: &mut [Q8Block]) {
    assert!(
        x.len().is_multiple_of(32) && out.len() == x.len() / 32,
        "activations of {} values are not {} 32-blocks",
        x.len(),
        out.len()
    );
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            let r = round_i32(v * id);
            *q = r as i8;
            sum += r;
        }
        // GGML rounds these to f16; keeping f32 costs nothing here and loses
        // less (SmolLM2's perplexity drops by 0.13%).
        b.d = d;
        b.s = d * sum as f32;
    }
}

/// `x` as 256-value blocks (portable, as [`quantize_q8`]).
pub fn quantize_q8k(x: &[f32]) -> Vec<Q8KBlock> {
    let mut out = vec![Q8KBlock::ZERO; x.len() / QK_K];
    quantize_q8k_generic(x, &mut out);
    out
}

/// See [`quantize_q8_generic`].
#[inline(always)]
pub(crate) fn quantize_q8k_generic(x: &[f32], out: &mut [Q8KBlock]) {
    assert!(
        x.len().is_multiple_of(QK_K) && out.len() == x.len() / QK_K,
        "activations of {} values are not {} 256-blocks",
        x.len(),
        out.len()
    );
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = Q8KBlock::ZERO;
            continue;
        }
        // The largest value maps to -127 exactly, keeping its sign in d.
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = round_i32(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Sum of products of 32 weights given by `w(j)` with activations `a`.
#[inline(always)]
fn isum32(a: &[i8; 32], w: impl Fn(usize) -> i32) -> i32 {
    (0..32).map(|j| w(j) * a[j] as i32).sum()
}

/// Most activation rows one kernel call dots a weight row with: enough to
/// unpack each weight block once for several tokens, few enough that the
/// accumulators stay in registers.
pub const MAX_TOKENS: usize = 4;

/// Checks the shapes every SIMD kernel relies on before it reads raw
/// pointers: 1 to `MAX_TOKENS` activation rows of equal length, and a weight
/// row (or group of rows) of `block_bytes` per activation block. Returns
/// the blocks per activation row.
pub(crate) fn check_row_shapes<B>(w: &[u8], block_bytes: usize, acts: &[B], out: &[f32]) -> usize {
    let nt = out.len();
    assert!((1..=MAX_TOKENS).contains(&nt), "{nt} activation rows");
    let blocks = acts.len() / nt;
    assert_eq!(acts.len(), blocks * nt, "activation rows of unequal length");
    assert_eq!(w.len(), blocks * block_bytes, "weight row length");
    blocks
}

/// Dots one weight row with `out.len()` (1..=[`MAX_TOKENS`]) activation rows
/// laid one after another in `acts`, writing one result per row.
pub type Q8RowDot = fn(w: &[u8], acts: &[Q8Block], out: &mut [f32]);
/// As [`Q8RowDot`], for the k-quant formats.
pub type Q8KRowDot = fn(w: &[u8], acts: &[Q8KBlock], out: &mut [f32]);

/// One kernel per quantized format. The low-bit formats
/// ([`crate::lowbit`]) are optional: an instruction set without its own
/// kernels for them takes the portable ones ([`FormatDots::PORTABLE`]),
/// and an interleaved table without them says so
/// ([`FormatDots::LOWBIT_NONE`]), so those weights stay row-major.
#[derive(Clone, Copy)]
pub struct FormatDots {
    pub q4_0: Q8RowDot,
    pub q4_1: Q8RowDot,
    pub q5_0: Q8RowDot,
    pub q5_1: Q8RowDot,
    pub q8_0: Q8RowDot,
    pub q4_k: Q8KRowDot,
    pub q5_k: Q8KRowDot,
    pub q6_k: Q8KRowDot,
    pub q2_k: Option<Q8KRowDot>,
    pub q3_k: Option<Q8KRowDot>,
    pub iq4_nl: Option<Q8RowDot>,
    pub iq4_xs: Option<Q8KRowDot>,
}

impl FormatDots {
    pub fn q8(&self, ty: DType) -> Option<Q8RowDot> {
        Some(match ty {
            DType::Q4_0 => self.q4_0,
            DType::Q4_1 => self.q4_1,
            DType::Q5_0 => self.q5_0,
            DType::Q5_1 => self.q5_1,
            DType::Q8_0 => self.q8_0,
            DType::IQ4_NL => return self.iq4_nl,
            _ => return None,
        })
    }

    pub fn q8k(&self, ty: DType) -> Option<Q8KRowDot> {
        Some(match ty {
            DType::Q4_K => self.q4_k,
            DType::Q5_K => self.q5_k,
            DType::Q6_K => self.q6_k,
            DType::Q2_K => return self.q2_k,
            DType::Q3_K => return self.q3_k,
            DType::IQ4_XS => return self.iq4_xs,
            _ => return None,
        })
    }

    /// Whether weights of `ty` have a kernel here.
    pub fn supports(&self, ty: DType) -> bool {
        self.q8(ty).is_some() || self.q8k(ty).is_some()
    }
}

/// One instruction set's kernels for every quantized format.
#[derive(Clone, Copy)]
pub struct RowDots {
    pub isa: &'static str,
    /// Kernels for row-major weights, as in GGUF.
    pub rows: FormatDots,
    /// Kernels for weights interleaved eight rows at a time
    /// ([`crate::repack`]); `out` then holds eight values per activation row.
    pub rows8: Option<Rows8Dots>,
    pub quantize_q8: fn(&[f32], &mut [Q8Block]),
    pub quantize_q8k: fn(&[f32], &mut [Q8KBlock]),
}

fn quantize_q8_portable(x: &[f32], out: &mut [Q8Block]) {
    quantize_q8_generic(x, out)
}

fn quantize_q8k_portable(x: &[f32], out: &mut [Q8KBlock]) {
    quantize_q8k_generic(x, out)
}

/// Kernels for the interleaved layout ([`crate::repack`]).
#[derive(Clone, Copy)]
pub struct Rows8Dots {
    /// Bytes of each row side by side in one vector: the layout to build.
    pub unit: usize,
    pub dots: FormatDots,
}

/// Portable kernels: the scalar dot once per activation row.
macro_rules! portable_rows {
    ($name:ident, $dot:ident, $block:ty) => {
        fn $name(w: &[u8], acts: &[$block], out: &mut [f32]) {
            let blocks = acts.len() / out.len().max(1);
            for (o, a) in out.iter_mut().zip(acts.chunks_exact(blocks.max(1))) {
                *o = $dot(w, a);
            }
        }
    };
}
portable_rows!(q4_0_rows, dot_q4_0, Q8Block);
portable_rows!(q4_1_rows, dot_q4_1, Q8Block);
portable_rows!(q5_0_rows, dot_q5_0, Q8Block);
portable_rows!(q5_1_rows, dot_q5_1, Q8Block);
portable_rows!(q8_0_rows, dot_q8_0, Q8Block);
portable_rows!(q4_k_rows, dot_q4_k, Q8KBlock);
portable_rows!(q5_k_rows, dot_q5_k, Q8KBlock);
portable_rows!(q6_k_rows, dot_q6_k, Q8KBlock);
portable_rows!(q2_k_rows, dot_q2_k, Q8KBlock);
portable_rows!(q3_k_rows, dot_q3_k, Q8KBlock);
portable_rows!(iq4_nl_rows, dot_iq4_nl, Q8Block);
portable_rows!(iq4_xs_rows, dot_iq4_xs, Q8KBlock);

impl FormatDots {
    /// The portable kernels of every format.
    pub const PORTABLE: FormatDots = FormatDots {
        q4_0: q4_0_rows,
        q4_1: q4_1_rows,
        q5_0: q5_0_rows,
        q5_1: q5_1_rows,
        q8_0: q8_0_rows,
        q4_k: q4_k_rows,
        q5_k: q5_k_rows,
        q6_k: q6_k_rows,
        q2_k: Some(q2_k_rows),
        q3_k: Some(q3_k_rows),
        iq4_nl: Some(iq4_nl_rows),
        iq4_xs: Some(iq4_xs_rows),
    };

    /// The rest of an interleaved table: no low-bit kernels.
    pub const LOWBIT_NONE: FormatDots = FormatDots {
        q2_k: None,
        q3_k: None,
        iq4_nl: None,
        iq4_xs: None,
        ..FormatDots::PORTABLE
    };
}

impl RowDots {
    pub const PORTABLE: RowDots = RowDots {
        isa: "portable",
        rows: FormatDots::PORTABLE,
        rows8: None,
        quantize_q8: quantize_q8_portable,
        quantize_q8k: quantize_q8k_portable,
    };

    /// The kernel set of `isa`, if this CPU runs it.
    pub fn for_isa(isa: Isa) -> Option<RowDots> {
        if !isa.supported() {
            return None;
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => crate::x86::avx512_vnni::row_dots(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::avx2::row_dots(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::neon::row_dots(),
            Isa::Portable => Some(RowDots::PORTABLE),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Every kernel set this CPU can run, fastest first, portable last.
    pub fn available() -> Vec<RowDots> {
        Isa::available()
            .into_iter()
            .filter_map(RowDots::for_isa)
            .collect()
    }
}

fn dot_q4_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(18).zip(a) {
        let q = &b[2..18];
        let si = isum32(&y.qs, |j| {
            if j < 16 {
                (q[j] & 0x0f) as i32 - 8
            } else {
                (q[j - 16] >> 4) as i32 - 8
            }
        });
        sum += f16_at(b, 0) * y.d * si as f32;
    }
    sum
}

fn dot_q4_1(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(20).zip(a) {
        let q = &b[4..20];
        let si = isum32(&y.qs, |j| {
            if j < 16 {
                (q[j] & 0x0f) as i32
            } else {
                (q[j - 16] >> 4) as i32
            }
        });
        sum += f16_at(b, 0) * y.d * si as f32 + f16_at(b, 2) * y.s;
    }
    sum
}

/// The 5-bit value `j` of a Q5 block: low nibble from `q`, fifth bit from `qh`.
#[inline(always)]
fn q5_value(q: &[u8], qh: u32, j: usize) -> i32 {
    let nib = if j < 16 { q[j] & 0x0f } else { q[j - 16] >> 4 };
    (nib as u32 | (((qh >> j) & 1) << 4)) as i32
}

fn dot_q5_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(22).zip(a) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let q = &b[6..22];
        let si = isum32(&y.qs, |j| q5_value(q, qh, j) - 16);
        sum += f16_at(b, 0) * y.d * si as f32;
    }
    sum
}

fn dot_q5_1(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(24).zip(a) {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let q = &b[8..24];
        let si = isum32(&y.qs, |j| q5_value(q, qh, j));
        sum += f16_at(b, 0) * y.d * si as f32 + f16_at(b, 2) * y.s;
    }
    sum
}

fn dot_q8_0(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(34).zip(a) {
        let q = &b[2..34];
        let si = isum32(&y.qs, |j| q[j] as i8 as i32);
        sum += f16_at(b, 0) * y.d * si as f32;
    }
    sum
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K block.
pub(crate) fn scales_mins_k4(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut m) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = (s[j] & 63) as i32;
            m[j] = (s[j + 4] & 63) as i32;
        } else {
            sc[j] = ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4)) as i32;
            m[j] = ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32;
        }
    }
    (sc, m)
}

/// Shared by Q4_K and Q5_K: `value(chunk, l, high)` gives the unsigned
/// quantized weight at position `l` of the low or high half of 64-value chunk.
#[inline(always)]
fn dot_k4_like(b: &[u8], y: &Q8KBlock, value: impl Fn(usize, usize, bool) -> i32) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = scales_mins_k4(&b[4..16]);
    let mut total = 0i32;
    let mut mins = 0i32;
    for chunk in 0..4 {
        for (half, high) in [(0usize, false), (1, true)] {
            let sub = 2 * chunk + half;
            let base = 64 * chunk + 32 * half;
            let si: i32 = (0..32)
                .map(|l| value(chunk, l, high) * y.qs[base + l] as i32)
                .sum();
            total += sc[sub] * si;
            mins += m[sub] * (y.bsums[2 * sub] as i32 + y.bsums[2 * sub + 1] as i32);
        }
    }
    d * y.d * total as f32 - dmin * y.d * mins as f32
}

fn dot_q4_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(144).zip(a) {
        let qs = &b[16..144];
        sum += dot_k4_like(b, y, |chunk, l, high| {
            let q = qs[32 * chunk + l];
            (if high { q >> 4 } else { q & 0x0f }) as i32
        });
    }
    sum
}

fn dot_q5_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(176).zip(a) {
        let (qh, qs) = (&b[16..48], &b[48..176]);
        sum += dot_k4_like(b, y, |chunk, l, high| {
            let q = qs[32 * chunk + l];
            let bit = 2 * chunk + high as usize;
            let low = if high { q >> 4 } else { q & 0x0f };
            (low | (((qh[l] >> bit) & 1) << 4)) as i32
        });
    }
    sum
}

fn dot_q6_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(210).zip(a) {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        let mut total = 0i32;
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            // Four groups of 32 values, each split into two 16-value scale groups.
            for part in 0..4 {
                let mut si = [0i32; 2];
                for l in 0..32 {
                    let q = match part {
                        0 => (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                        1 => (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                        2 => (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                        _ => (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                    } as i32
                        - 32;
                    si[l / 16] += q * y.qs[128 * half + 32 * part + l] as i32;
                }
                let s = &sc[8 * half + 2 * part..];
                total += s[0] as i8 as i32 * si[0] + s[1] as i8 as i32 * si[1];
            }
        }
        sum += d * y.d * total as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;
    use crate::quant::tests::{QUANTIZED, random_row};

    #[test]
    fn q8_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        for (blocks, xs) in quantize_q8(&x).iter().zip(x.chunks(32)) {
            for (q, v) in blocks.qs.iter().zip(xs) {
                assert!(
                    (*q as f32 * blocks.d - v).abs() <= blocks.d * 0.5 + 1e-3,
                    "{q} {v}"
                );
            }
        }
        let k = &quantize_q8k(&x)[0];
        for (q, v) in k.qs.iter().zip(&x) {
            assert!((*q as f32 * k.d - v).abs() <= k.d.abs() * 0.51, "{q} {v}");
        }
        assert_eq!(
            k.bsums[3],
            k.qs[48..64].iter().map(|&q| q as i16).sum::<i16>()
        );
        let zero = quantize_q8k(&[0.0; 256]);
        assert_eq!((zero[0].d, zero[0].qs[5]), (0.0, 0));
    }

    /// Activations for `nt` rows of `n` values in the blocks `ty` takes,
    /// with their dequantized values.
    fn activations(ty: DType, n: usize, nt: usize, seed: usize) -> (Acts, Vec<f32>) {
        let x: Vec<f32> = (0..n * nt)
            .map(|i| (((i + seed) * 29 % 31) as f32 - 15.0) * 0.07 + (i % 3) as f32 * 0.01)
            .collect();
        match ty.act_format().unwrap() {
            ActFormat::Q8 => {
                let b = quantize_q8(&x);
                let xq = b
                    .iter()
                    .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
                    .collect();
                (Acts::Q8(b), xq)
            }
            ActFormat::Q8K => {
                let b = quantize_q8k(&x);
                let xq = b
                    .iter()
                    .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
                    .collect();
                (Acts::Q8K(b), xq)
            }
        }
    }

    enum Acts {
        Q8(Vec<Q8Block>),
        Q8K(Vec<Q8KBlock>),
    }

    fn run(set: &RowDots, ty: DType, w: &[u8], acts: &Acts, out: &mut [f32]) {
        match acts {
            Acts::Q8(a) => set.rows.q8(ty).unwrap()(w, a, out),
            Acts::Q8K(a) => set.rows.q8k(ty).unwrap()(w, a, out),
        }
    }

    /// Every kernel set's integer dot equals the float dot of the
    /// dequantized weights with the dequantized activations.
    #[test]
    fn integer_dots_match_dequantized_dots() {
        for set in RowDots::available() {
            for ty in QUANTIZED {
                for blocks in [1usize, 2, 3] {
                    let n = blocks * QK_K;
                    let row = random_row(ty, n, 17 * n as u64 + ty.ggml_id() as u64);
                    let (acts, xq) = activations(ty, n, 1, 0);
                    let mut w = vec![0f32; n];
                    dequantize_row(ty, &row, &mut w);
                    let want: f64 = w.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let scale: f64 = w
                        .iter()
                        .zip(&xq)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    let mut got = [0f32];
                    run(&set, ty, &row, &acts, &mut got);
                    // Q4_1/Q5_1 use the block sum rounded to f16, hence the looser bound.
                    assert!(
                        (got[0] as f64 - want).abs() <= 2e-3 * scale.max(1.0),
                        "{} {ty} n={n}: {} vs {want}",
                        set.isa,
                        got[0]
                    );
                }
            }
        }
    }
}
