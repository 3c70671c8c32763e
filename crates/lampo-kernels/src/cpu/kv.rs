//! The CPU's paged key/value store and the ops over it: writing a pass's
//! keys and values, and causal attention across each sequence's blocks.
//! Keys and values are f16 (half the memory of f32, and the precision of
//! GGML's default cache); queries and probabilities meet them at f16
//! precision too, as in GGML's f16 attention, so results agree with the
//! reference to the last bits.

use half::f16;
use half::slice::HalfBitsSliceExt;

use crate::backend::{Heads, KvShape, SeqSpan};
use crate::kernels::Kernels;
use crate::parallel::ThreadPool;
use crate::simd::F16Run;

/// Keys and values of `n_blocks` blocks of `block_size` positions, per
/// layer. A sequence names its blocks in order (its block table); which
/// block belongs to whom is the caller's business, so blocks can be
/// shared by sequences with a common prefix.
pub struct CpuKv {
    shape: KvShape,
    n_blocks: usize,
    /// Per layer, `n_blocks * block_size * kv_dim` f16 bit patterns. Zeroed
    /// allocation: pages cost memory only once a block is written.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
}

impl CpuKv {
    pub(crate) fn new(shape: KvShape, n_blocks: usize) -> CpuKv {
        assert!(
            shape.block_size.is_power_of_two(),
            "block size {}",
            shape.block_size
        );
        let mut kv = CpuKv {
            shape,
            n_blocks: 0,
            k: vec![Vec::new(); shape.layers],
            v: vec![Vec::new(); shape.layers],
        };
        kv.grow(n_blocks);
        kv
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub(crate) fn grow(&mut self, n_blocks: usize) {
        if n_blocks <= self.n_blocks {
            return;
        }
        let len = n_blocks * self.shape.block_size * self.shape.kv_dim;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.resize(len, 0);
        }
        self.n_blocks = n_blocks;
    }

    /// Where position `pos` of a sequence with block table `blocks` lives,
    /// in positions from the start of a layer's buffer.
    fn slot(&self, blocks: &[u32], pos: usize) -> usize {
        let bs = self.shape.block_size;
        blocks[pos / bs] as usize * bs + pos % bs
    }

    /// Writes rows `seq.rows` of `k` and `v` (`kv_dim` each) at positions
    /// `seq.past..` of each sequence.
    pub(crate) fn write(&mut self, layer: usize, k: &[f32], v: &[f32], seqs: &[SeqSpan]) {
        let kvd = self.shape.kv_dim;
        for s in seqs {
            for i in s.rows.clone() {
                let pos = s.past + i - s.rows.start;
                let at = self.slot(s.blocks, pos) * kvd;
                let (ks, vs) = (
                    &mut self.k[layer][at..][..kvd],
                    &mut self.v[layer][at..][..kvd],
                );
                for (dst, &x) in ks.iter_mut().zip(&k[i * kvd..(i + 1) * kvd]) {
                    *dst = f16::from_f32(x).to_bits();
                }
                for (dst, &x) in vs.iter_mut().zip(&v[i * kvd..(i + 1) * kvd]) {
                    *dst = f16::from_f32(x).to_bits();
                }
            }
        }
    }

    /// Causal attention of each sequence's queries (rows of `q`, rounded
    /// to f16 here) over its `past + n` positions, or the last `window` of
    /// them, into `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention(
        &self,
        pool: &ThreadPool,
        k: &Kernels,
        layer: usize,
        heads: Heads,
        seqs: &[SeqSpan],
        q: &mut [f32],
        out: &mut [f32],
    ) {
        let qd = heads.n_head * heads.head_dim;
        for s in seqs {
            let (lo, hi) = (s.rows.start, s.rows.end);
            // Queries meet keys at f16 precision, as in GGML's f16 attention.
            for x in q[lo * qd..hi * qd].iter_mut() {
                *x = f16::from_f32(*x).to_f32();
            }
            self.attend(
                pool,
                k,
                layer,
                heads,
                s,
                &q[lo * qd..hi * qd],
                &mut out[lo * qd..hi * qd],
            );
        }
    }

    /// One sequence's attention.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        pool: &ThreadPool,
        kern: &Kernels,
        layer: usize,
        heads: Heads,
        s: &SeqSpan,
        q: &[f32],
        out: &mut [f32],
    ) {
        let Heads {
            n_head,
            n_kv_head: n_kv,
            head_dim: hd,
            window,
            scale,
            softcap,
        } = heads;
        let kvd = self.shape.kv_dim;
        let group = n_head / n_kv;
        let keys: &[f16] = self.k[layer].reinterpret_cast();
        let values: &[f16] = self.v[layer].reinterpret_cast();
        let (past, blocks) = (s.past, s.blocks);
        let bs = self.shape.block_size;
        // One piece of `out` per (token, KV head): the group of query heads
        // sharing that KV head, so each key and value is widened to f32 once
        // for all of them. Pieces are dealt out round-robin so that each
        // thread gets as many late (long) rows of the causal triangle.
        pool.for_each_chunk_mut_interleaved(out, group * hd, |idx, o| {
            let (i, kv_head) = (idx / n_kv, idx % n_kv);
            let kv_off = kv_head * hd;
            let queries = &q[(i * n_head + kv_head * group) * hd..][..group * hd];
            let seen = past + i + 1;
            let first = window.map_or(0, |w| seen.saturating_sub(w));
            let len = seen - first;
            // Positions in runs that stay within one KV block (contiguous
            // in the store), as `(offset from first, slot of its start, length)`.
            let starts = std::iter::successors(Some(first), |&p| {
                let next = (p / bs + 1) * bs;
                (next < seen).then_some(next)
            });
            let runs = starts.map(|p| {
                let end = ((p / bs + 1) * bs).min(seen);
                (p - first, self.slot(blocks, p), end - p)
            });
            // Scores key by key (`[j][g]`), then softmax per head over `j`.
            let mut scores = vec![0f32; len * group];
            for (at, slot, n) in runs.clone() {
                let keys = F16Run {
                    data: &keys[slot * kvd + kv_off..],
                    stride: kvd,
                    len: hd,
                    n,
                };
                (kern.group_scores_f16)(queries, keys, &mut scores[at * group..(at + n) * group]);
            }
            let mut probs = vec![0f32; group * len];
            for (g, row) in probs.chunks_exact_mut(len).enumerate() {
                for (j, w) in row.iter_mut().enumerate() {
                    *w = scores[j * group + g] * scale;
                }
                if let Some(cap) = softcap {
                    row.iter_mut()
                        .for_each(|w| *w = crate::ops::soft_cap(*w, cap));
                }
                (kern.softmax)(row);
                // Probabilities meet values at f16 precision, as in GGML.
                for w in row.iter_mut() {
                    *w = f16::from_f32(*w).to_f32();
                }
            }
            o.fill(0.0);
            for (at, slot, n) in runs {
                let values = F16Run {
                    data: &values[slot * kvd + kv_off..],
                    stride: kvd,
                    len: hd,
                    n,
                };
                (kern.group_weighted_sum_f16)(o, &probs[at..], len, values);
            }
        });
    }
}
