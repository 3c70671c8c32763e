//! Weights regrouped at load time into a layout the SIMD kernels read faster.
//!
//! GGUF stores a matrix row by row. For the 32-value block formats, Lampo
//! regroups rows eight at a time: for each block column, the eight rows'
//! scales side by side, then their quantized values transposed in 4-byte
//! pieces, so that one 256-bit vector holds four consecutive weights of each
//! of the eight rows. An integer multiply-add against four broadcast
//! activation bytes then yields a partial dot product per row in each 32-bit
//! lane, and the block's float scaling is one vector operation for all
//! eight rows. The size is unchanged: the same bytes in another order.

use crate::matmul::WeightRef;
use crate::quant::DType;

/// The formats with an interleaved layout, and how to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(non_camel_case_types)]
pub enum Rows8Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Rows8Format {
    pub fn of(ty: DType) -> Option<Rows8Format> {
        Some(match ty {
            DType::Q4_0 => Rows8Format::Q4_0,
            DType::Q4_1 => Rows8Format::Q4_1,
            DType::Q5_0 => Rows8Format::Q5_0,
            DType::Q5_1 => Rows8Format::Q5_1,
            DType::Q8_0 => Rows8Format::Q8_0,
            _ => return None,
        })
    }

    pub const fn from_u8(v: u8) -> Rows8Format {
        match v {
            0 => Rows8Format::Q4_0,
            1 => Rows8Format::Q4_1,
            2 => Rows8Format::Q5_0,
            3 => Rows8Format::Q5_1,
            _ => Rows8Format::Q8_0,
        }
    }

    pub const fn dtype(self) -> DType {
        match self {
            Rows8Format::Q4_0 => DType::Q4_0,
            Rows8Format::Q4_1 => DType::Q4_1,
            Rows8Format::Q5_0 => DType::Q5_0,
            Rows8Format::Q5_1 => DType::Q5_1,
            Rows8Format::Q8_0 => DType::Q8_0,
        }
    }

    /// Bytes of one block column of eight rows.
    pub const fn group_bytes(self) -> usize {
        8 * match self {
            Rows8Format::Q4_0 => 18,
            Rows8Format::Q4_1 => 20,
            Rows8Format::Q5_0 => 22,
            Rows8Format::Q5_1 => 24,
            Rows8Format::Q8_0 => 34,
        }
    }

    /// Whether blocks carry a minimum (an f16 after the scale).
    pub const fn has_min(self) -> bool {
        matches!(self, Rows8Format::Q4_1 | Rows8Format::Q5_1)
    }

    pub const fn five_bit(self) -> bool {
        matches!(self, Rows8Format::Q5_0 | Rows8Format::Q5_1)
    }

    /// What the kernels subtract from the unsigned stored values of the
    /// symmetric formats (Q8_0 is dotted signed).
    pub const fn offset(self) -> f32 {
        match self {
            Rows8Format::Q4_0 => -8.0,
            Rows8Format::Q5_0 => -16.0,
            _ => 0.0,
        }
    }

    /// Where the packed values start in a GGUF block, and how many bytes.
    const fn quants(self) -> (usize, usize) {
        match self {
            Rows8Format::Q4_0 => (2, 16),
            Rows8Format::Q4_1 => (4, 16),
            Rows8Format::Q5_0 => (6, 16),
            Rows8Format::Q5_1 => (8, 16),
            Rows8Format::Q8_0 => (2, 32),
        }
    }
}

/// The interleaved copy of `w`, or `None` when its format has no such
/// layout or its rows are not a multiple of eight.
///
/// Per block column: eight f16 scales, eight f16 minimums (Q4_1/Q5_1), the
/// values as vectors of 32 bytes where bytes `4i..4i+4` come from row `i`
/// (for the 4- and 5-bit formats each byte holds value `k` in its low nibble
/// and `k + 16` in its high one, exactly as in GGUF), then for the 5-bit
/// formats eight 32-bit masks of fifth bits, one per unpacked vector.
pub fn interleave_rows8(w: &WeightRef) -> Option<Vec<u8>> {
    let fmt = Rows8Format::of(w.dtype)?;
    if !w.rows.is_multiple_of(8) || w.cols == 0 || !w.cols.is_multiple_of(32) {
        return None;
    }
    let bb = w.dtype.block_bytes();
    let blocks = w.cols / 32;
    let (qoff, qlen) = fmt.quants();
    let mut out = vec![0u8; w.data.len()];
    for (gi, dst_group) in out.chunks_exact_mut(blocks * 8 * bb).enumerate() {
        for (b, dst) in dst_group.chunks_exact_mut(8 * bb).enumerate() {
            let src = |i: usize| &w.data[((gi * 8 + i) * blocks + b) * bb..][..bb];
            for i in 0..8 {
                dst[2 * i..2 * i + 2].copy_from_slice(&src(i)[..2]);
            }
            let mut o = 16;
            if fmt.has_min() {
                for i in 0..8 {
                    dst[16 + 2 * i..18 + 2 * i].copy_from_slice(&src(i)[2..4]);
                }
                o = 32;
            }
            for j in 0..qlen / 4 {
                for i in 0..8 {
                    let at = o + 32 * j + 4 * i;
                    dst[at..at + 4].copy_from_slice(&src(i)[qoff + 4 * j..qoff + 4 * j + 4]);
                }
            }
            if fmt.five_bit() {
                let qh_at = if fmt.has_min() { 4 } else { 2 };
                for (v, mask_at) in (0..8).map(|v| (v, o + 128 + 4 * v)) {
                    // Vector `v < 4` holds values 4v..4v+4 of each row, `v >= 4`
                    // values 16 + 4(v-4)..: the high nibbles of the same bytes.
                    let first = if v < 4 { 4 * v } else { 16 + 4 * (v - 4) };
                    let mut mask = 0u32;
                    for i in 0..8 {
                        let qh = u32::from_le_bytes(src(i)[qh_at..qh_at + 4].try_into().unwrap());
                        mask |= ((qh >> first) & 0xf) << (4 * i);
                    }
                    dst[mask_at..mask_at + 4].copy_from_slice(&mask.to_le_bytes());
                }
            }
        }
    }
    Some(out)
}
