//! Tensor block formats as stored in GGUF files, their dequantization and
//! dot products against f32 activations.
//!
//! Every format stores a row as a sequence of fixed-size blocks; a block holds
//! `block_len()` values in `block_bytes()` bytes. Layouts follow the GGML
//! definitions bit for bit, since the weights come from GGUF files.

use half::{bf16, f16};

use crate::lowbit;

/// A tensor element format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    Q2_K,
    Q3_K,
    IQ4_NL,
    IQ4_XS,
}

/// Values per block of the k-quant formats.
pub const QK_K: usize = 256;

impl DType {
    /// Every supported format, for tests and listings.
    /// The block-quantized formats (those with integer dot products).
    pub const QUANTIZED: [DType; 12] = [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q2_K,
        DType::Q3_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ];

    pub const ALL: [DType; 15] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q2_K,
        DType::Q3_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ];

    /// Maps a GGML type id (as stored in GGUF tensor infos) to a format.
    pub fn from_ggml(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            10 => DType::Q2_K,
            11 => DType::Q3_K,
            12 => DType::Q4_K,
            13 => DType::Q5_K,
            14 => DType::Q6_K,
            20 => DType::IQ4_NL,
            23 => DType::IQ4_XS,
            30 => DType::BF16,
            _ => return None,
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::IQ4_NL => 20,
            DType::IQ4_XS => 23,
            DType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q8_0 => "Q8_0",
            DType::Q4_K => "Q4_K",
            DType::Q5_K => "Q5_K",
            DType::Q6_K => "Q6_K",
            DType::Q2_K => "Q2_K",
            DType::Q3_K => "Q3_K",
            DType::IQ4_NL => "IQ4_NL",
            DType::IQ4_XS => "IQ4_XS",
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::IQ4_NL => {
                32
            }
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q2_K | DType::Q3_K | DType::IQ4_XS => {
                QK_K
            }
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 2 + 16,
            DType::Q4_1 => 2 + 2 + 16,
            DType::Q5_0 => 2 + 4 + 16,
            DType::Q5_1 => 2 + 2 + 4 + 16,
            DType::Q8_0 => 2 + 32,
            DType::Q4_K => 2 + 2 + 12 + QK_K / 2,
            DType::Q5_K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            DType::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
            DType::Q2_K => lowbit::Q2_K_BYTES,
            DType::Q3_K => lowbit::Q3_K_BYTES,
            DType::IQ4_NL => lowbit::IQ4_NL_BYTES,
            DType::IQ4_XS => lowbit::IQ4_XS_BYTES,
        }
    }

    /// Bytes taken by `n` values, or `None` when `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let len = self.block_len() as u64;
        if !n.is_multiple_of(len) {
            return None;
        }
        (n / len).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes the 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// Dequantizes one block of `ty` (`block_bytes()` bytes) into `block_len()` values.
fn dequantize_block(ty: DType, b: &[u8], y: &mut [f32]) {
    match ty {
        DType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F16 => y[0] = f16_at(b, 0),
        DType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::Q4_0 => {
            let d = f16_at(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        DType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = (q & 0x0f) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        DType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (j, &q) in b[6..22].iter().enumerate() {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                y[j] = (((q & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }
        DType::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for (j, &q) in b[8..24].iter().enumerate() {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                y[j] = ((q & 0x0f) as u32 | h0) as f32 * d + m;
                y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
            }
        }
        DType::Q8_0 => {
            let d = f16_at(b, 0);
            for (j, &q) in b[2..34].iter().enumerate() {
                y[j] = q as i8 as f32 * d;
            }
        }
        DType::Q4_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for chunk in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let q = &qs[32 * chunk..32 * chunk + 32];
                let out = &mut y[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    out[l] = d * sc1 * (q[l] & 0x0f) as f32 - dmin * m1;
                    out[l + 32] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
                }
            }
        }
        DType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for chunk in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let (bit_lo, bit_hi) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
                let q = &qs[32 * chunk..32 * chunk + 32];
                let out = &mut y[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    let lo = (q[l] & 0x0f) + if qh[l] & bit_lo != 0 { 16 } else { 0 };
                    let hi = (q[l] >> 4) + if qh[l] & bit_hi != 0 { 16 } else { 0 };
                    out[l] = d * sc1 * lo as f32 - dmin * m1;
                    out[l + 32] = d * sc2 * hi as f32 - dmin * m2;
                }
            }
        }
        DType::Q6_K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &ql[64 * half..64 * half + 64];
                let qh = &qh[32 * half..32 * half + 32];
                let sc = &sc[8 * half..8 * half + 8];
                let out = &mut y[128 * half..128 * half + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        DType::Q2_K => lowbit::dequantize_q2_k(b, y),
        DType::Q3_K => lowbit::dequantize_q3_k(b, y),
        DType::IQ4_NL => lowbit::dequantize_iq4_nl(b, y),
        DType::IQ4_XS => lowbit::dequantize_iq4_xs(b, y),
    }
}

/// Dequantizes a row of `dst.len()` values stored as `ty` in `src`.
///
/// Panics if `dst.len()` is not a whole number of blocks or `src` has the
/// wrong length; callers validate shapes when a model is loaded.
pub fn dequantize_row(ty: DType, src: &[u8], dst: &mut [f32]) {
    let (len, bytes) = (ty.block_len(), ty.block_bytes());
    assert_eq!(
        dst.len() % len,
        0,
        "{ty}: row of {} values is not whole blocks",
        dst.len()
    );
    assert_eq!(
        src.len(),
        dst.len() / len * bytes,
        "{ty}: row bytes do not match value count"
    );
    match ty {
        DType::F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (y, b) in dst.chunks_exact_mut(len).zip(src.chunks_exact(bytes)) {
                dequantize_block(ty, b, y);
            }
        }
    }
}

fn f16b(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// Deterministic pseudo-random bytes for property checks.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// `n` values of `ty` as deterministic pseudo-random blocks whose f16
/// fields hold small finite values: sample weights for tests and benchmarks
/// (every code, scale and minimum occurs).
pub fn sample_blocks(ty: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut row = noise(ty.bytes_for(n as u64).unwrap() as usize, seed);
    let f16_fields: &[usize] = match ty {
        DType::F16 => &[],
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        _ => &[],
    };
    let bytes = ty.block_bytes();
    for (i, block) in row.chunks_exact_mut(bytes).enumerate() {
        for &off in f16_fields {
            block[off..off + 2].copy_from_slice(&f16b(0.01 * (1 + i % 7) as f32));
        }
    }
    match ty {
        DType::F32 => row
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, _)| ((i as f32 * 0.37).sin()).to_le_bytes())
            .collect(),
        DType::F16 => (0..n).flat_map(|i| f16b((i as f32 * 0.37).sin())).collect(),
        DType::BF16 => (0..n)
            .flat_map(|i| bf16::from_f32((i as f32 * 0.37).sin()).to_le_bytes())
            .collect(),
        _ => row,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn deq(ty: DType, block: &[u8]) -> Vec<f32> {
        let mut y = vec![0f32; ty.block_len()];
        dequantize_row(ty, block, &mut y);
        y
    }

    #[test]
    fn sizes_match_ggml() {
        let expect = [
            (DType::F32, 1, 4),
            (DType::F16, 1, 2),
            (DType::BF16, 1, 2),
            (DType::Q4_0, 32, 18),
            (DType::Q4_1, 32, 20),
            (DType::Q5_0, 32, 22),
            (DType::Q5_1, 32, 24),
            (DType::Q8_0, 32, 34),
            (DType::Q4_K, 256, 144),
            (DType::Q5_K, 256, 176),
            (DType::Q6_K, 256, 210),
            (DType::Q2_K, 256, 84),
            (DType::Q3_K, 256, 110),
            (DType::IQ4_NL, 32, 18),
            (DType::IQ4_XS, 256, 136),
        ];
        for (ty, len, bytes) in expect {
            assert_eq!((ty.block_len(), ty.block_bytes()), (len, bytes), "{ty}");
            assert_eq!(DType::from_ggml(ty.ggml_id()), Some(ty));
        }
        assert_eq!(DType::from_ggml(4), None, "Q4_2 was removed from GGML");
        assert_eq!(DType::Q4_0.bytes_for(33), None);
        assert_eq!(DType::Q4_0.bytes_for(64), Some(36));
    }

    #[test]
    fn float_formats() {
        let mut b = Vec::new();
        for v in [1.5f32, -2.25, 0.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut y = [0f32; 3];
        dequantize_row(DType::F32, &b, &mut y);
        assert_eq!(y, [1.5, -2.25, 0.0]);
        let b: Vec<u8> = [0.5f32, -3.0, 65504.0]
            .iter()
            .flat_map(|&v| f16b(v))
            .collect();
        dequantize_row(DType::F16, &b, &mut y);
        assert_eq!(y, [0.5, -3.0, 65504.0]);
        // bf16 is the top half of an f32: 0x3fc0 = 1.5, 0xc040 = -3.0, 0x4780 = 65536.
        let b = [0xc0, 0x3f, 0x40, 0xc0, 0x80, 0x47];
        dequantize_row(DType::BF16, &b, &mut y);
        assert_eq!(y, [1.5, -3.0, 65536.0]);
    }

    #[test]
    fn q4_0_known_values() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16b(0.5));
        b[2] = 0xF0; // element 0 = (0-8)*0.5, element 16 = (15-8)*0.5
        b[17] = 0x9A; // element 15 = (10-8)*0.5, element 31 = (9-8)*0.5
        let y = deq(DType::Q4_0, &b);
        assert_eq!((y[0], y[16], y[15], y[31]), (-4.0, 3.5, 1.0, 0.5));
        assert_eq!(y[1], -4.0, "nibble 0 means -8");
    }

    #[test]
    fn q4_1_known_values() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16b(0.25));
        b[2..4].copy_from_slice(&f16b(-1.0));
        b[4] = 0x4F; // element 0 = 15*0.25-1, element 16 = 4*0.25-1
        let y = deq(DType::Q4_1, &b);
        assert_eq!((y[0], y[16], y[1]), (2.75, 0.0, -1.0));
    }

    #[test]
    fn q5_0_known_values() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16b(2.0));
        // High bits: element 0 (bit 0) and element 17 (bit 17) set.
        b[2..6].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
        b[6] = 0x3F; // element 0: 0xF|16 = 31 -> 15*2; element 16: 3 -> -13*2
        b[7] = 0x21; // element 1: 1 -> -15*2; element 17: 2|16 = 18 -> 2*2
        let y = deq(DType::Q5_0, &b);
        assert_eq!((y[0], y[16], y[1], y[17]), (30.0, -26.0, -30.0, 4.0));
    }

    #[test]
    fn q5_1_known_values() {
        let mut b = vec![0u8; 24];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&f16b(0.5));
        b[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes()); // element 31 gets +16
        b[8 + 15] = 0xF7; // element 15 = 7*1+0.5, element 31 = (15|16)+0.5
        let y = deq(DType::Q5_1, &b);
        assert_eq!((y[15], y[31], y[0]), (7.5, 31.5, 0.5));
    }

    #[test]
    fn q8_0_known_values() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16b(0.125));
        b[2] = 127;
        b[3] = (-128i8) as u8;
        b[33] = (-8i8) as u8;
        let y = deq(DType::Q8_0, &b);
        assert_eq!((y[0], y[1], y[31], y[2]), (15.875, -16.0, -1.0, 0.0));
    }

    #[test]
    fn q4_k_known_values() {
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16b(0.5)); // d
        b[2..4].copy_from_slice(&f16b(0.25)); // dmin
        let scales = &mut b[4..16];
        scales[0] = 3; // sub-block 0: scale 3
        scales[4] = 4; // sub-block 0: min 4
        scales[1] = 2; // sub-block 1: scale 2, min 0
        // Sub-block 7 (j >= 4): scale = (q[11] & 15) | (q[3] >> 6) << 4, min = (q[11] >> 4) | (q[7] >> 6) << 4
        scales[11] = 0x21; // low bits: scale 1, min 2
        scales[3] = 0x40; // scale high bits 1 -> scale 17
        scales[7] = 0x80; // min high bits 2 -> min 34
        b[16] = 0x5A; // element 0: 10 in sub-block 0; element 32: 5 in sub-block 1
        b[16 + 96 + 31] = 0xC0; // element 255: 12 in sub-block 7
        let y = deq(DType::Q4_K, &b);
        assert_eq!(y[0], 0.5 * 3.0 * 10.0 - 0.25 * 4.0);
        assert_eq!(y[32], 0.5 * 2.0 * 5.0);
        assert_eq!(y[1], -1.0);
        assert_eq!(y[255], 0.5 * 17.0 * 12.0 - 0.25 * 34.0);
    }

    #[test]
    fn q5_k_known_values() {
        let mut b = vec![0u8; 176];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&f16b(1.0));
        b[4] = 1; // sub-block 0 scale 1
        b[5] = 1; // sub-block 1 scale 1
        b[8] = 2; // sub-block 0 min 2
        b[12] = 3; // sub-block 4: scale low bits 3, min 0
        b[16] = 0b0001_0001; // qh[0]: +16 for element 0 (bit 0) and element 128 (bit 4, third group of 64)
        b[48] = 0x37; // element 0: 7, element 32: 3
        b[48 + 64] = 0x01; // element 128: 1
        let y = deq(DType::Q5_K, &b);
        assert_eq!(y[0], 23.0 - 2.0);
        assert_eq!(y[32], 3.0);
        assert_eq!(y[128], 3.0 * 17.0);
        assert_eq!(y[1], -2.0);
    }

    #[test]
    fn q6_k_known_values() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&f16b(0.5));
        for (i, s) in b[192..208].iter_mut().enumerate() {
            *s = (i as i8 - 4) as u8; // scales -4..11
        }
        b[0] = 0x21; // ql[0]: element 0 low 1, element 64 low 2
        b[32] = 0x0F; // element 32 low 15
        b[128] = 0b1110_0100; // qh[0]: element 0 hi 0, element 32 hi 1, element 64 hi 2, element 96 hi 3
        let y = deq(DType::Q6_K, &b);
        // element 0: q=1-32=-31, scale index 0 -> -4
        assert_eq!(y[0], 0.5 * -4.0 * -31.0);
        // element 32: q=(15|16)-32=-1, scale index 2 -> -2
        assert_eq!(y[32], -(0.5 * -2.0));
        // element 64: q=(2|32)-32=2, scale index 4 -> 0
        assert_eq!(y[64], 0.0);
        // element 96: q=(0|48)-32=16, scale index 6 -> 2
        assert_eq!(y[96], 0.5 * 2.0 * 16.0);
        // element 128+16: second half, scale index 8+1 -> 5, q = -32
        assert_eq!(y[144], 0.5 * 5.0 * -32.0);
    }

    /// Every block-quantized format (those with integer dot products).
    pub(crate) const QUANTIZED: [DType; 12] = DType::QUANTIZED;

    /// Random blocks whose f16 fields hold small finite values.
    pub(crate) fn random_row(ty: DType, n: usize, seed: u64) -> Vec<u8> {
        super::sample_blocks(ty, n, seed)
    }
}
