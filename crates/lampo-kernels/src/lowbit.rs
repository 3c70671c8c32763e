//! The low-bit formats: Q2_K and Q3_K (k-quants of 2 and 3 bits) and the
//! non-linear 4-bit IQ4_NL and IQ4_XS, whose codes index a fixed table of
//! 16 levels. Their dequantization and portable integer dot products with
//! 8-bit activations (Q2_K, Q3_K and IQ4_XS take 256-value blocks, IQ4_NL
//! 32-value ones, as in GGML), laid out bit for bit as GGML defines them.
//!
//! On x86 these formats have row-major SIMD kernels (`x86/lowbit.rs`) and
//! IQ4_NL also interleaved ones (Q4_0's layout, `repack`); the other
//! instruction sets run the portable dots here.

use half::f16;

use crate::qdot::{Q8Block, Q8KBlock};
use crate::quant::QK_K;

/// The 16 levels of IQ4_NL and IQ4_XS codes (GGML's `kvalues_iq4nl`).
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The levels plus [`IQ4_SHIFT`], all in 1..=241: unsigned bytes that
/// `vpdpbusd` multiplies directly by signed activations, the shift taken
/// back afterwards from the activations' sums (`128 × Σa`), so that the
/// kernels spend no instructions moving signs.
pub const IQ4_LEVELS_SHIFTED: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (IQ4_LEVELS[i] as i16 + IQ4_SHIFT as i16) as u8;
        i += 1;
    }
    t
};

/// What [`IQ4_LEVELS_SHIFTED`] adds to each level.
pub const IQ4_SHIFT: i32 = 128;

/// Bytes per block.
pub const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 4;
pub const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
pub const IQ4_NL_BYTES: usize = 2 + 16;
pub const IQ4_XS_BYTES: usize = 2 + 2 + QK_K / 64 + QK_K / 2;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q2_K: 16 sub-blocks of 16 values, each with a 4-bit scale (low nibble)
/// and 4-bit minimum (high nibble) of `scales[0..16]`; 2-bit codes in
/// `qs[16..80]`, four per byte (element `128 h + 32 j + l` in bits `2j` of
/// byte `32 h + l`); `d`, `dmin` f16 at 80 and 82. Value =
/// `d * scale * code - dmin * min`.
fn q2_k_code(qs: &[u8], e: usize) -> i32 {
    let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
    ((qs[32 * h + l] >> (2 * j)) & 3) as i32
}

/// Q3_K: 3-bit codes, the low two bits as in Q2_K (`qs[32..96]`) and the
/// third in `hmask[0..32]` (element `e` in bit `e / 32` of byte `e % 32`);
/// 16 signed 6-bit scales packed in 12 bytes at 96; `d` f16 at 108.
/// Value = `d * (scale - 32) * (code - 4)`.
fn q3_k_code(b: &[u8], e: usize) -> i32 {
    let low = q2_k_code(&b[32..96], e);
    let high = (b[e % 32] >> (e / 32)) & 1;
    low + 4 * high as i32 - 4
}

/// The 16 scales of a Q3_K block, less 32.
pub(crate) fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 15 } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// IQ4_XS: 8 sub-blocks of 32 with 6-bit scales (low 4 bits in
/// `scales_l[4..8]`, high 2 in `scales_h` at 2), less 32; codes as IQ4_NL's
/// per sub-block in `qs[8..136]`; `d` f16 at 0.
fn iq4_xs_scale(b: &[u8], ib: usize) -> i32 {
    let h = u16::from_le_bytes([b[2], b[3]]);
    let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 15;
    let high = ((h >> (2 * ib)) & 3) as u8;
    (low | (high << 4)) as i32 - 32
}

/// The level of code `j` (0..32) of 16 packed bytes: low nibbles first.
fn iq4_code(qs: &[u8], j: usize) -> i32 {
    let nib = if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 };
    IQ4_LEVELS[nib as usize] as i32
}

pub(crate) fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, v) in y.iter_mut().enumerate().take(QK_K) {
        let sc = b[e / 16];
        let code = q2_k_code(&b[16..80], e) as f32;
        *v = d * (sc & 15) as f32 * code - dmin * (sc >> 4) as f32;
    }
}

pub(crate) fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 108);
    let scales = q3_k_scales(&b[96..108]);
    for (e, v) in y.iter_mut().enumerate().take(QK_K) {
        *v = d * scales[e / 16] as f32 * q3_k_code(b, e) as f32;
    }
}

pub(crate) fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in y.iter_mut().enumerate().take(32) {
        *v = d * iq4_code(&b[2..18], j) as f32;
    }
}

pub(crate) fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..QK_K / 32 {
        let dl = d * iq4_xs_scale(b, ib) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
        for (j, v) in y[32 * ib..32 * ib + 32].iter_mut().enumerate() {
            *v = dl * iq4_code(qs, j) as f32;
        }
    }
}

/// Sum over 16 values `e0..e0+16` of `code(e) * a[e]`.
fn isum16(a: &[i8; QK_K], e0: usize, code: impl Fn(usize) -> i32) -> i32 {
    (e0..e0 + 16).map(|e| code(e) * a[e] as i32).sum()
}

pub(crate) fn dot_q2_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(Q2_K_BYTES).zip(a) {
        let qs = &b[16..80];
        let (mut isum, mut mins) = (0i32, 0i32);
        for (s, &sc) in b[..16].iter().enumerate() {
            isum += (sc & 15) as i32 * isum16(&y.qs, 16 * s, |e| q2_k_code(qs, e));
            mins += (sc >> 4) as i32 * y.bsums[s] as i32;
        }
        sum += y.d * (f16_at(b, 80) * isum as f32 - f16_at(b, 82) * mins as f32);
    }
    sum
}

pub(crate) fn dot_q3_k(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(Q3_K_BYTES).zip(a) {
        let scales = q3_k_scales(&b[96..108]);
        let isum: i32 = (0..16)
            .map(|s| scales[s] * isum16(&y.qs, 16 * s, |e| q3_k_code(b, e)))
            .sum();
        sum += y.d * f16_at(b, 108) * isum as f32;
    }
    sum
}

pub(crate) fn dot_iq4_nl(w: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(IQ4_NL_BYTES).zip(a) {
        let qs = &b[2..18];
        let isum: i32 = (0..32).map(|j| iq4_code(qs, j) * y.qs[j] as i32).sum();
        sum += f16_at(b, 0) * y.d * isum as f32;
    }
    sum
}

pub(crate) fn dot_iq4_xs(w: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(IQ4_XS_BYTES).zip(a) {
        let mut isum = 0i32;
        for ib in 0..QK_K / 32 {
            let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
            let s: i32 = (0..32)
                .map(|j| iq4_code(qs, j) * y.qs[32 * ib + j] as i32)
                .sum();
            isum += iq4_xs_scale(b, ib) * s;
        }
        sum += f16_at(b, 0) * y.d * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q2_k_known_values() {
        let mut b = vec![0u8; Q2_K_BYTES];
        b[80..82].copy_from_slice(&f16b(0.5));
        b[82..84].copy_from_slice(&f16b(0.25));
        b[0] = 0x23; // sub-block 0: scale 3, min 2
        b[15] = 0x1F; // sub-block 15: scale 15, min 1
        // Byte 0 of qs: element 0 (bits 0-1) = 3, element 32 (bits 2-3) = 1,
        // element 96 (bits 6-7) = 2.
        b[16] = 0b10_00_01_11;
        // Element 255 = 128 + 3*32 + 31: byte 32 + 31, bits 6-7.
        b[16 + 63] = 0b11_00_00_00;
        let mut y = vec![0f32; QK_K];
        dequantize_q2_k(&b, &mut y);
        assert_eq!(y[0], 0.5 * 3.0 * 3.0 - 0.25 * 2.0);
        assert_eq!(y[1], -0.5);
        assert_eq!(y[32], 0.0, "sub-block 2 has scale and min 0");
        assert_eq!(y[255], 0.5 * 15.0 * 3.0 - 0.25);
    }

    #[test]
    fn q3_k_known_values() {
        let mut b = vec![0u8; Q3_K_BYTES];
        b[108..110].copy_from_slice(&f16b(0.5));
        // Scale 0: low 4 bits in byte 0's low nibble, high 2 in byte 8's
        // bits 0-1: 0b10_0101 = 37 -> 5. Scale 15: byte 7's high nibble and
        // byte 11's bits 6-7: 0b00_0001 = 1 -> -31.
        b[96] = 0x05;
        b[96 + 8] = 0b10;
        b[96 + 7] = 0x10;
        // Element 0: low bits 3 (qs byte 0, bits 0-1), high bit set (hmask
        // byte 0 bit 0) -> 7 - 4 = 3. Element 1: low 0, no high bit -> -4.
        b[32] = 3;
        b[0] = 1;
        // Element 255: hmask byte 31 bit 7 clear, low bits 2 -> -2.
        b[32 + 63] = 0b10_00_00_00;
        let mut y = vec![0f32; QK_K];
        dequantize_q3_k(&b, &mut y);
        assert_eq!(y[0], 0.5 * 5.0 * 3.0);
        assert_eq!(y[1], 0.5 * 5.0 * -4.0);
        assert_eq!(y[255], 0.5 * -31.0 * -2.0);
    }

    #[test]
    fn iq4_known_values() {
        let mut b = vec![0u8; IQ4_NL_BYTES];
        b[..2].copy_from_slice(&f16b(0.5));
        b[2] = 0xF0; // element 0: level 0 (-127), element 16: level 15 (113)
        let mut y = vec![0f32; 32];
        dequantize_iq4_nl(&b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (-63.5, 56.5, -63.5));

        let mut b = vec![0u8; IQ4_XS_BYTES];
        b[..2].copy_from_slice(&f16b(0.25));
        // Sub-block 0: low 4 bits 1, high 2 bits 2 -> 33 - 32 = 1.
        // Sub-block 7: low 4 bits 15 (byte 7 high nibble), high 0 -> -17.
        b[2..4].copy_from_slice(&0b10u16.to_le_bytes());
        b[4] = 0x01;
        b[7] = 0xF0;
        b[8] = 0x98; // element 0: level 8 (1); element 16: level 9 (13)
        b[8 + 16 * 7 + 15] = 0x07; // element 255 = 7*32 + 31: high nibble of byte 15: level 0
        let mut y = vec![0f32; QK_K];
        dequantize_iq4_xs(&b, &mut y);
        assert_eq!((y[0], y[16]), (0.25, 0.25 * 13.0));
        assert_eq!(y[255], 0.25 * -17.0 * -127.0);
    }
}
