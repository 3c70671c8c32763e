//! Weights regrouped at load time into a layout the SIMD kernels read faster.
//!
//! GGUF stores a matrix row by row. Lampo regroups rows eight at a time: for
//! each block column, the eight rows' scales side by side, then their
//! quantized values transposed in pieces of `unit` bytes, so that one vector
//! holds `unit` consecutive bytes of each of the eight rows (4 for 256-bit
//! vectors, 8 for 512-bit ones). An integer multiply-add against broadcast
//! activation bytes then yields partial dot products per row in its own
//! lanes, and the block's float scaling is one vector operation for all
//! eight rows. The size is unchanged (the k-quants' packed 6-bit scales
//! aside): the same bytes in another order.

use std::alloc::Layout;
use std::ops::Deref;

use crate::matmul::WeightRef;
use crate::quant::DType;

/// Interleaved weights in memory of their own, aligned to 2 MiB and, on
/// Linux, backed by transparent huge pages where the kernel allows: decode
/// streams every byte once per token, and with 4 KiB pages that is a TLB
/// miss every 64 cache lines.
pub struct Packed {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: `Packed` owns its bytes exclusively, like a `Box<[u8]>`.
unsafe impl Send for Packed {}
unsafe impl Sync for Packed {}

const HUGE_PAGE: usize = 2 << 20;

impl Packed {
    fn zeroed(len: usize) -> Packed {
        if len == 0 {
            return Packed {
                ptr: std::ptr::NonNull::dangling(),
                len,
            };
        }
        let layout = Packed::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout);
        };
        // The advice must come before the first write: pages are chosen
        // when first touched.
        #[cfg(target_os = "linux")]
        if len >= HUGE_PAGE {
            // SAFETY: the range is this allocation. The advice is a hint;
            // failure (no THP support) leaves ordinary pages.
            unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `len` bytes were just allocated at `ptr`.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Packed { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let align = if len >= HUGE_PAGE { HUGE_PAGE } else { 64 };
        Layout::from_size_align(len, align).expect("a weight smaller than the address space")
    }
}

impl Deref for Packed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialized bytes (or is dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Packed {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Packed::layout(self.len)) };
        }
    }
}

impl Clone for Packed {
    fn clone(&self) -> Packed {
        let mut copy = Packed::zeroed(self.len);
        copy.as_mut_slice().copy_from_slice(self);
        copy
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.len)
    }
}

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
    Q4_K,
    Q5_K,
    Q6_K,
    /// Q4_0's layout; the kernels look the nibbles up in the IQ4 levels.
    IQ4_NL,
    IQ4_XS,
    Q3_K,
    Q2_K,
}

impl Rows8Format {
    pub fn of(ty: DType) -> Option<Rows8Format> {
        Some(match ty {
            DType::Q4_0 => Rows8Format::Q4_0,
            DType::Q4_1 => Rows8Format::Q4_1,
            DType::Q5_0 => Rows8Format::Q5_0,
            DType::Q5_1 => Rows8Format::Q5_1,
            DType::Q8_0 => Rows8Format::Q8_0,
            DType::Q4_K => Rows8Format::Q4_K,
            DType::Q5_K => Rows8Format::Q5_K,
            DType::Q6_K => Rows8Format::Q6_K,
            DType::IQ4_NL => Rows8Format::IQ4_NL,
            DType::IQ4_XS => Rows8Format::IQ4_XS,
            DType::Q3_K => Rows8Format::Q3_K,
            DType::Q2_K => Rows8Format::Q2_K,
            _ => return None,
        })
    }

    pub const fn from_u8(v: u8) -> Rows8Format {
        match v {
            0 => Rows8Format::Q4_0,
            1 => Rows8Format::Q4_1,
            2 => Rows8Format::Q5_0,
            3 => Rows8Format::Q5_1,
            4 => Rows8Format::Q8_0,
            5 => Rows8Format::Q4_K,
            6 => Rows8Format::Q5_K,
            7 => Rows8Format::Q6_K,
            8 => Rows8Format::IQ4_NL,
            9 => Rows8Format::IQ4_XS,
            10 => Rows8Format::Q3_K,
            _ => Rows8Format::Q2_K,
        }
    }

    pub const fn dtype(self) -> DType {
        match self {
            Rows8Format::Q4_0 => DType::Q4_0,
            Rows8Format::Q4_1 => DType::Q4_1,
            Rows8Format::Q5_0 => DType::Q5_0,
            Rows8Format::Q5_1 => DType::Q5_1,
            Rows8Format::Q8_0 => DType::Q8_0,
            Rows8Format::Q4_K => DType::Q4_K,
            Rows8Format::Q5_K => DType::Q5_K,
            Rows8Format::Q6_K => DType::Q6_K,
            Rows8Format::IQ4_NL => DType::IQ4_NL,
            Rows8Format::IQ4_XS => DType::IQ4_XS,
            Rows8Format::Q3_K => DType::Q3_K,
            Rows8Format::Q2_K => DType::Q2_K,
        }
    }

    /// Bytes of one block column of eight rows. The k-quants' 6-bit scales
    /// and minimums are stored unpacked, a byte each (3% larger).
    pub const fn group_bytes(self) -> usize {
        match self {
            Rows8Format::Q4_0 | Rows8Format::IQ4_NL => 8 * 18,
            Rows8Format::Q4_1 => 8 * 20,
            Rows8Format::Q5_0 => 8 * 22,
            Rows8Format::Q5_1 => 8 * 24,
            Rows8Format::Q8_0 => 8 * 34,
            Rows8Format::Q4_K => 32 + 128 + 1024,
            Rows8Format::Q5_K => 32 + 128 + 1024 + 256,
            Rows8Format::Q6_K => 16 + 128 + 1024 + 512,
            Rows8Format::IQ4_XS => 16 + 64 + 1024,
            Rows8Format::Q3_K => 16 + 128 + 512 + 256,
            Rows8Format::Q2_K => 32 + 128 + 512,
        }
    }

    /// Values per block, as in the GGUF format.
    pub fn block_len(self) -> usize {
        self.dtype().block_len()
    }

    /// Whether blocks carry a minimum (an f16 after the scale).
    pub const fn has_min(self) -> bool {
        matches!(self, Rows8Format::Q4_1 | Rows8Format::Q5_1)
    }

    /// Whether the 4-bit codes index the IQ4 levels (dotted signed).
    pub const fn levels(self) -> bool {
        matches!(self, Rows8Format::IQ4_NL)
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
            Rows8Format::Q4_0 | Rows8Format::IQ4_NL => (2, 16),
            Rows8Format::Q4_1 => (4, 16),
            Rows8Format::Q5_0 => (6, 16),
            Rows8Format::Q5_1 => (8, 16),
            Rows8Format::Q8_0 => (2, 32),
            _ => (0, 0),
        }
    }
}

/// The interleaved copy of `w`, or `None` when its format has no such
/// layout or its rows are not a multiple of eight.
///
/// Per block column of a 32-value format: eight f16 scales, eight f16
/// minimums (Q4_1/Q5_1), the values as vectors of `8 unit` bytes where bytes
/// `unit i..` come from row `i` (for the 4- and 5-bit formats each byte holds
/// value `k` in its low nibble and `k + 16` in its high one, as in GGUF),
/// then for the 5-bit formats a mask of fifth bits per unpacked vector.
pub fn interleave_rows8(w: &WeightRef, unit: usize) -> Option<Packed> {
    assert!(unit == 4 || unit == 8, "units of {unit} bytes");
    let fmt = Rows8Format::of(w.dtype)?;
    let len = fmt.block_len();
    if !w.rows.is_multiple_of(8) || w.cols == 0 || !w.cols.is_multiple_of(len) {
        return None;
    }
    let bb = w.dtype.block_bytes();
    let blocks = w.cols / len;
    if w.data.len() != w.rows * blocks * bb {
        return None;
    }
    let gb = fmt.group_bytes();
    let mut out = Packed::zeroed(w.rows / 8 * blocks * gb);
    for (gi, dst_group) in out.as_mut_slice().chunks_exact_mut(blocks * gb).enumerate() {
        for (b, dst) in dst_group.chunks_exact_mut(gb).enumerate() {
            let src = |i: usize| &w.data[((gi * 8 + i) * blocks + b) * bb..][..bb];
            match fmt {
                Rows8Format::Q4_K | Rows8Format::Q5_K => interleave_k4(fmt, unit, dst, src),
                Rows8Format::Q6_K => interleave_q6_k(unit, dst, src),
                Rows8Format::IQ4_XS => interleave_iq4_xs(unit, dst, src),
                Rows8Format::Q3_K => interleave_q3_k(unit, dst, src),
                Rows8Format::Q2_K => interleave_q2_k(unit, dst, src),
                _ => interleave_32(fmt, unit, dst, src),
            }
        }
    }
    Some(out)
}

/// One block column of a 32-value format.
fn interleave_32<'a>(fmt: Rows8Format, u: usize, dst: &mut [u8], src: impl Fn(usize) -> &'a [u8]) {
    let (qoff, qlen) = fmt.quants();
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
    for j in 0..qlen / u {
        for i in 0..8 {
            let at = o + 8 * u * j + u * i;
            dst[at..at + u].copy_from_slice(&src(i)[qoff + u * j..qoff + u * (j + 1)]);
        }
    }
    if fmt.five_bit() {
        let qh_at = if fmt.has_min() { 4 } else { 2 };
        let vectors = 16 / u;
        for v in 0..2 * vectors {
            // Vector `v` unpacks the low nibbles of bytes `u v..` (values
            // `u v..`) or, past `vectors`, the high nibbles (values `16 + ..`).
            let first = if v < vectors {
                u * v
            } else {
                16 + u * (v - vectors)
            };
            let mut mask = 0u64;
            for i in 0..8 {
                let qh = u32::from_le_bytes(src(i)[qh_at..qh_at + 4].try_into().unwrap()) as u64;
                mask |= ((qh >> first) & ((1 << u) - 1)) << (u * i);
            }
            let at = o + 128 + u * v;
            dst[at..at + u].copy_from_slice(&mask.to_le_bytes()[..u]);
        }
    }
}

/// One block column of IQ4_XS: eight f16 scales, the sub-block scales
/// less 32 as signed bytes `[sub][row]`, then per sub-block the 16 code
/// bytes of each row as IQ4_NL interleaves a block's (vectors `[sub][j]`
/// whose bytes `unit i..` are row `i`'s bytes `unit j..`).
fn interleave_iq4_xs<'a>(u: usize, dst: &mut [u8], src: impl Fn(usize) -> &'a [u8]) {
    for i in 0..8 {
        let b = src(i);
        dst[2 * i..2 * i + 2].copy_from_slice(&b[..2]);
        let high = u16::from_le_bytes([b[2], b[3]]) as u32;
        let low = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for sub in 0..8 {
            let ls = ((low >> (4 * sub)) & 15) | (((high >> (2 * sub)) & 3) << 4);
            dst[16 + 8 * sub + i] = (ls as i32 - 32) as i8 as u8;
            for j in 0..16 / u {
                let at = 80 + 128 * sub + 8 * u * j + u * i;
                let from = 8 + 16 * sub + u * j;
                dst[at..at + u].copy_from_slice(&b[from..from + u]);
            }
        }
    }
}

/// One block column of Q4_K or Q5_K: eight f16 scales, eight f16 minimum
/// scales, the 6-bit sub-block scales as bytes `[sub][row]`, the minimums as
/// bytes `[pair][row][2]` (sub-blocks `2p` and `2p + 1` side by side, for a
/// 16-bit multiply-add against pairs of activation sums), the values as
/// vectors `[chunk][j]` whose bytes `unit i..` are row `i`'s bytes
/// `32 chunk + unit j..` (low nibbles: sub-block `2 chunk`, high: the next),
/// then for Q5_K a mask of fifth bits per unpacked vector `[sub][j]`.
fn interleave_k4<'a>(fmt: Rows8Format, u: usize, dst: &mut [u8], src: impl Fn(usize) -> &'a [u8]) {
    let (qs_at, qh_at) = if fmt == Rows8Format::Q5_K {
        (48, 16)
    } else {
        (16, 0)
    };
    for i in 0..8 {
        let b = src(i);
        dst[2 * i..2 * i + 2].copy_from_slice(&b[..2]);
        dst[16 + 2 * i..18 + 2 * i].copy_from_slice(&b[2..4]);
        let (sc, m) = crate::qdot::scales_mins_k4(&b[4..16]);
        for sub in 0..8 {
            dst[32 + 8 * sub + i] = sc[sub] as u8;
            dst[96 + 16 * (sub / 2) + 2 * i + sub % 2] = m[sub] as u8;
        }
        for chunk in 0..4 {
            for j in 0..32 / u {
                let at = 160 + 256 * chunk + 8 * u * j + u * i;
                let from = qs_at + 32 * chunk + u * j;
                dst[at..at + u].copy_from_slice(&b[from..from + u]);
            }
        }
    }
    if fmt == Rows8Format::Q5_K {
        let vectors = 32 / u;
        for sub in 0..8 {
            for j in 0..vectors {
                let mut mask = 0u64;
                for i in 0..8 {
                    let qh = &src(i)[qh_at..qh_at + 32];
                    for c in 0..u {
                        mask |= (((qh[u * j + c] >> sub) & 1) as u64) << (u * i + c);
                    }
                }
                let at = 1184 + u * (vectors * sub + j);
                dst[at..at + u].copy_from_slice(&mask.to_le_bytes()[..u]);
            }
        }
    }
}

/// One block column of Q6_K: eight f16 scales, the 8-bit sub-block scales
/// as bytes `[pair][row][2]`, the low nibbles as vectors `[half][q][j]`
/// (row `i`'s bytes `64 half + 32 q + unit j..` at `unit i`), the two high
/// bits as vectors `[half][j]` (row `i`'s bytes `32 half + unit j..`).
fn interleave_q6_k<'a>(u: usize, dst: &mut [u8], src: impl Fn(usize) -> &'a [u8]) {
    for i in 0..8 {
        let b = src(i);
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        dst[2 * i..2 * i + 2].copy_from_slice(&b[208..210]);
        for sub in 0..16 {
            dst[16 + 16 * (sub / 2) + 2 * i + sub % 2] = sc[sub];
        }
        for half in 0..2 {
            for q in 0..2 {
                for j in 0..32 / u {
                    let at = 144 + 512 * half + 256 * q + 8 * u * j + u * i;
                    let from = 64 * half + 32 * q + u * j;
                    dst[at..at + u].copy_from_slice(&ql[from..from + u]);
                }
            }
            for j in 0..32 / u {
                let at = 1168 + 256 * half + 8 * u * j + u * i;
                let from = 32 * half + u * j;
                dst[at..at + u].copy_from_slice(&qh[from..from + u]);
            }
        }
    }
}

/// The 2-bit codes of Q2_K and Q3_K (`qs`, 64 bytes: byte `32 h + l`
/// holds element `128 h + 32 p + l` in bits `2p`) as vectors `[half][j]`:
/// row `i`'s bytes `32 half + unit j..` at `unit i` (512 bytes from `at`).
fn interleave_2bit(u: usize, dst: &mut [u8], at: usize, i: usize, qs: &[u8]) {
    for half in 0..2 {
        for j in 0..32 / u {
            let to = at + 256 * half + 8 * u * j + u * i;
            let from = 32 * half + u * j;
            dst[to..to + u].copy_from_slice(&qs[from..from + u]);
        }
    }
}

/// One block column of Q3_K: eight f16 scales, the 16 sub-block scales less
/// 32 as signed bytes `[pair][row][2]` (as Q6_K's), the low two bits of the
/// codes (see `interleave_2bit`), then the high bits (`hmask`: element `e`
/// in bit `e / 32` of byte `e % 32`) as one mask per unpacked vector
/// `[part][j]` (part `k` = values `32 k..`), bit `unit i + c` for row `i`'s
/// value `32 k + unit j + c`: a mask register the kernels add 4 under.
fn interleave_q3_k<'a>(u: usize, dst: &mut [u8], src: impl Fn(usize) -> &'a [u8]) {
    for i in 0..8 {
        let b = src(i);
        dst[2 * i..2 * i + 2].copy_from_slice(&b[108..110]);
        let sc = crate::lowbit::q3_k_scales(&b[96..108]);
        for (sub, &s) in sc.iter().enumerate() {
            dst[16 + 16 * (sub / 2) + 2 * i + sub % 2] = s as i8 as u8;
        }
        interleave_2bit(u, dst, 144, i, &b[32..96]);
    }
    let vectors = 32 / u;
    for k in 0..8 {
        for j in 0..vectors {
            let mut mask = 0u64;
            for i in 0..8 {
                let hmask = &src(i)[..32];
                for c in 0..u {
                    mask |= (((hmask[u * j + c] >> k) & 1) as u64) << (u * i + c);
                }
            }
            let at = 656 + u * (vectors * k + j);
            dst[at..at + u].copy_from_slice(&mask.to_le_bytes()[..u]);
        }
    }
}

/// One block column of Q2_K: eight f16 scales, eight f16 minimum scales,
/// the 16 bytes of each row's sub-block scale (low nibble) and minimum
/// (high nibble) as bytes `[pair][row][2]`, then the codes (see
/// `interleave_2bit`). The same size as the eight rows in GGUF.
fn interleave_q2_k<'a>(u: usize, dst: &mut [u8], src: impl Fn(usize) -> &'a [u8]) {
    for i in 0..8 {
        let b = src(i);
        dst[2 * i..2 * i + 2].copy_from_slice(&b[80..82]);
        dst[16 + 2 * i..18 + 2 * i].copy_from_slice(&b[82..84]);
        for sub in 0..16 {
            dst[32 + 16 * (sub / 2) + 2 * i + sub % 2] = b[sub];
        }
        interleave_2bit(u, dst, 160, i, &b[16..80]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::random_row;

    #[test]
    fn only_whole_groups_of_eight_rows_interleave() {
        let data = random_row(DType::Q4_0, 12 * 32, 1);
        let w = WeightRef {
            dtype: DType::Q4_0,
            rows: 12,
            cols: 32,
            data: &data,
            layout: crate::matmul::Layout::Rows,
        };
        assert!(interleave_rows8(&w, 4).is_none());
        let f = WeightRef {
            dtype: DType::F32,
            rows: 8,
            cols: 1,
            data: &[0; 32],
            layout: crate::matmul::Layout::Rows,
        };
        assert!(interleave_rows8(&f, 8).is_none());
    }
}
