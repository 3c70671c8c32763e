//! The decoder-only transformer forward pass, shared by every family in
//! [`crate::arch`]: pre-norm attention with grouped-query heads and rotary
//! positions, then a gated MLP.

use std::path::Path;

use half::f16;
use half::slice::HalfBitsSliceExt;

use lampo_kernels::ops::{Rope, gelu_mul, rms_norm, rms_norm_in_place, silu_mul, softmax};
use lampo_kernels::parallel::{for_each_chunk_mut, for_each_chunk_mut_interleaved};
use lampo_kernels::qdot::RowDots;
use lampo_kernels::quant::dequantize_row;
use lampo_kernels::repack::{Packed, interleave_rows8};
use lampo_kernels::simd::{F16Run, group_scores_f16, group_weighted_sum_f16};
use lampo_kernels::{Activations, DType, Layout, WeightRef, matmul, matmul_many};

use crate::ModelError;
use crate::arch::Activation;
use crate::config::Config;
use crate::gguf::{GgufFile, TensorInfo};

/// A weight matrix inside the mapped file, and its interleaved copy when
/// the kernels read that layout faster.
#[derive(Clone, Debug)]
struct Weight {
    dtype: DType,
    rows: usize,
    cols: usize,
    offset: usize,
    size: usize,
    interleaved: Option<Packed>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    qkv_bias: Option<[Vec<f32>; 3]>,
    wo: Weight,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
    /// Per-head norms of queries and keys (`qk_norm` families).
    qk_norm: Option<[Vec<f32>; 2]>,
    /// Norms of the attention and feed-forward outputs (`post_norms` families).
    post_norms: Option<[Vec<f32>; 2]>,
    /// Keys visible to a query, its own included; `None` is unlimited.
    /// Sliding-window layers also rotate with their own RoPE base.
    window: Option<usize>,
}

/// A loaded model: hyperparameters plus weights that stay in the file mapping.
pub struct Model {
    pub config: Config,
    file: GgufFile,
    token_embd: Weight,
    output_norm: Vec<f32>,
    /// Separate output matrix, or the token embedding when tied.
    output: Weight,
    layers: Vec<Layer>,
    rope: Rope,
    /// RoPE of the sliding-window layers, when the family has them.
    local_rope: Option<Rope>,
    activations: Activations,
}

/// Keys and values of past positions for any number of sequences, per
/// layer, in blocks of `block_size` positions, stored as f16: half the
/// memory of f32, and the precision GGML's default cache has. A sequence
/// names its blocks in order (its block table); which block belongs to
/// whom is the caller's business, so blocks can be shared between
/// sequences with a common prefix.
pub struct KvStore {
    block_size: usize,
    kv_dim: usize,
    n_blocks: usize,
    /// Per layer, `n_blocks * block_size * kv_dim` f16 bit patterns. Zeroed
    /// allocation: pages cost memory only once a block is written.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
}

impl KvStore {
    /// A store of `n_blocks` blocks of `block_size` positions (a power of two).
    pub fn new(config: &Config, block_size: usize, n_blocks: usize) -> KvStore {
        assert!(block_size.is_power_of_two(), "block size {block_size}");
        let mut store = KvStore {
            block_size,
            kv_dim: config.kv_dim(),
            n_blocks: 0,
            k: vec![Vec::new(); config.n_layer],
            v: vec![Vec::new(); config.n_layer],
        };
        store.grow(n_blocks);
        store
    }

    /// Bytes one block takes (keys and values of every layer).
    pub fn block_bytes(config: &Config, block_size: usize) -> usize {
        2 * config.n_layer * block_size * config.kv_dim() * 2
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Adds blocks up to `n_blocks` in all.
    fn grow(&mut self, n_blocks: usize) {
        if n_blocks <= self.n_blocks {
            return;
        }
        let len = n_blocks * self.block_size * self.kv_dim;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.resize(len, 0);
        }
        self.n_blocks = n_blocks;
    }

    /// Where position `pos` of a sequence with block table `blocks` lives,
    /// in positions from the start of a layer's buffer.
    fn slot(&self, blocks: &[u32], pos: usize) -> usize {
        let bs = self.block_size;
        blocks[pos / bs] as usize * bs + pos % bs
    }
}

/// One sequence's cache in a store of its own, for callers that run a
/// single sequence (the CLI, evaluation, benchmarks): blocks are added as
/// it fills, up to `capacity` positions.
pub struct KvCache {
    store: KvStore,
    blocks: Vec<u32>,
    len: usize,
    capacity: usize,
}

/// Block size of a single-sequence cache.
const OWN_BLOCK: usize = 64;

impl KvCache {
    /// A cache for up to `capacity` positions; memory grows as it fills.
    pub fn new(config: &Config, capacity: usize) -> KvCache {
        KvCache {
            store: KvStore::new(config, OWN_BLOCK, 0),
            blocks: Vec::new(),
            len: 0,
            capacity,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// One sequence's part of a batched forward pass over a [`KvStore`]: new
/// tokens, the block table they extend, and which positions need logits.
pub struct Sequence<'a> {
    pub tokens: &'a [u32],
    /// Blocks holding positions `0..past` and room for the new tokens.
    pub blocks: &'a [u32],
    /// Positions already in the cache; the new tokens follow them.
    pub past: usize,
    pub logits: Logits,
}

/// Which positions of a forward pass need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: a chunk of a prompt whose end comes in a later pass.
    None,
    /// Only the last position (generation).
    Last,
    /// Every position (perplexity, teacher forcing, speculative verification).
    All,
}

impl Model {
    /// Maps a GGUF file and checks that it holds a complete model of a supported family.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let file = GgufFile::open(path)?;
        Model::from_file(file)
    }

    pub fn from_file(file: GgufFile) -> Result<Model, ModelError> {
        let config = Config::from_gguf(&file.gguf)?;
        let c = &config;
        let (d, q, kv, ff, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff, c.head_dim);
        let token_embd = weight(&file, "token_embd.weight", d, c.n_vocab)?;
        let output = match file.gguf.tensor("output.weight") {
            Some(_) => weight(&file, "output.weight", d, c.n_vocab)?,
            None => token_embd.clone(),
        };
        let output_norm = vector(&file, "output_norm.weight", d)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}");
            let qkv_bias = if c.spec.qkv_bias {
                Some([
                    vector(&file, &name("attn_q.bias"), q)?,
                    vector(&file, &name("attn_k.bias"), kv)?,
                    vector(&file, &name("attn_v.bias"), kv)?,
                ])
            } else {
                None
            };
            let qk_norm = if c.spec.qk_norm {
                Some([
                    vector(&file, &name("attn_q_norm.weight"), hd)?,
                    vector(&file, &name("attn_k_norm.weight"), hd)?,
                ])
            } else {
                None
            };
            let post_norms = if c.spec.post_norms {
                Some([
                    vector(&file, &name("post_attention_norm.weight"), d)?,
                    vector(&file, &name("post_ffw_norm.weight"), d)?,
                ])
            } else {
                None
            };
            let local = c
                .spec
                .sliding_window
                .as_ref()
                .filter(|sw| (i + 1) % sw.pattern != 0);
            layers.push(Layer {
                attn_norm: vector(&file, &name("attn_norm.weight"), d)?,
                wq: weight(&file, &name("attn_q.weight"), d, q)?,
                wk: weight(&file, &name("attn_k.weight"), d, kv)?,
                wv: weight(&file, &name("attn_v.weight"), d, kv)?,
                qkv_bias,
                wo: weight(&file, &name("attn_output.weight"), q, d)?,
                ffn_norm: vector(&file, &name("ffn_norm.weight"), d)?,
                w_gate: weight(&file, &name("ffn_gate.weight"), d, ff)?,
                w_up: weight(&file, &name("ffn_up.weight"), d, ff)?,
                w_down: weight(&file, &name("ffn_down.weight"), ff, d)?,
                qk_norm,
                post_norms,
                window: local.map(|sw| sw.window),
            });
        }
        let output = interleave(&file, output);
        let layers = layers
            .into_iter()
            .map(|l| Layer {
                wq: interleave(&file, l.wq),
                wk: interleave(&file, l.wk),
                wv: interleave(&file, l.wv),
                wo: interleave(&file, l.wo),
                w_gate: interleave(&file, l.w_gate),
                w_up: interleave(&file, l.w_up),
                w_down: interleave(&file, l.w_down),
                ..l
            })
            .collect();
        let rope = Rope::new(c.spec.rope_style, c.rope_dims, c.rope_base);
        let local_rope = c
            .spec
            .sliding_window
            .as_ref()
            .map(|sw| Rope::new(c.spec.rope_style, c.rope_dims, sw.rope_base));
        Ok(Model {
            config,
            file,
            token_embd,
            output_norm,
            output,
            layers,
            rope,
            local_rope,
            activations: Activations::default(),
        })
    }

    /// Chooses how matmuls treat activations (8-bit integer dots by default).
    pub fn set_activations(&mut self, activations: Activations) {
        self.activations = activations;
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Bytes of weights one decode step reads: every layer's matrices and
    /// the output matrix (the single embedding row it also reads aside).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|w| w.size)
                    .sum::<usize>()
            })
            .sum();
        (layers + self.output.size) as u64
    }

    /// Bytes of KV cache per position (keys and values of every layer, f16).
    pub fn kv_bytes_per_position(&self) -> u64 {
        (2 * self.config.n_layer * self.config.kv_dim() * 2) as u64
    }

    /// A matrix as the matmuls read it: interleaved when it has that copy
    /// and activations are 8-bit (the only kernels for that layout).
    fn w<'a>(&'a self, w: &'a Weight) -> WeightRef<'a> {
        match &w.interleaved {
            Some(data) if self.activations == Activations::Q8 => WeightRef {
                dtype: w.dtype,
                rows: w.rows,
                cols: w.cols,
                data,
                layout: Layout::Rows8,
            },
            _ => self.w_rows(w),
        }
    }

    /// A matrix row by row, as in the file.
    fn w_rows<'a>(&'a self, w: &'a Weight) -> WeightRef<'a> {
        WeightRef {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            data: self.file.data_slice(w.offset, w.size),
            layout: Layout::Rows,
        }
    }

    /// Runs `tokens` at the positions after those already in `kv`, appends
    /// their keys and values to it, and returns logits (`n_vocab` per
    /// position asked for by `logits`).
    pub fn forward(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let needed = kv.len + tokens.len();
        if needed > kv.capacity {
            return Err(ModelError::ContextFull {
                needed,
                capacity: kv.capacity,
            });
        }
        let n_blocks = needed.div_ceil(OWN_BLOCK);
        kv.store.grow(n_blocks);
        kv.blocks.extend(kv.blocks.len() as u32..n_blocks as u32);
        let seq = Sequence {
            tokens,
            blocks: &kv.blocks,
            past: kv.len,
            logits,
        };
        let mut out = self.forward_batch(&mut kv.store, &[seq])?;
        kv.len = needed;
        Ok(out.pop().unwrap_or_default())
    }

    /// Runs several sequences in one pass: every matmul takes the tokens of
    /// all of them at once (each weight is read once for the whole batch),
    /// while RoPE positions, block tables and attention stay per sequence.
    /// Writes the new keys and values into `store` and returns each
    /// sequence's logits as `forward` would. Sequences may share blocks
    /// for their common past, never for the positions they write.
    pub fn forward_batch(
        &self,
        store: &mut KvStore,
        seqs: &[Sequence],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        for s in seqs.iter() {
            let capacity = s.blocks.len() * store.block_size;
            if s.past + s.tokens.len() > capacity {
                return Err(ModelError::ContextFull {
                    needed: s.past + s.tokens.len(),
                    capacity,
                });
            }
            if let Some(&bad) = s.blocks.iter().find(|&&b| b as usize >= store.n_blocks) {
                return Err(ModelError::Config(format!(
                    "KV block {bad} is outside the store of {} blocks",
                    store.n_blocks
                )));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
                return Err(ModelError::BadToken {
                    token: bad,
                    n_vocab: c.n_vocab,
                });
            }
        }
        // Rows `starts[i]..starts[i + 1]` of every activation belong to sequence i.
        let mut starts = vec![0usize];
        for s in seqs.iter() {
            starts.push(starts.last().unwrap() + s.tokens.len());
        }
        let n = *starts.last().unwrap();
        if n == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let (d, qd, kvd, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim);
        let pasts: Vec<usize> = seqs.iter().map(|s| s.past).collect();

        let mut x = vec![0f32; n * d];
        let embd = self.w_rows(&self.token_embd);
        let all_tokens = seqs.iter().flat_map(|s| s.tokens.iter());
        for (row, &t) in x.chunks_exact_mut(d).zip(all_tokens) {
            embd.dequantize_row_into(t as usize, row);
        }
        if c.spec.scale_embeddings {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }

        let mut h = vec![0f32; n * d];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let mut gate = vec![0f32; n * c.n_ff];
        let mut up = vec![0f32; n * c.n_ff];

        // Every layer rotates the same positions: sines and cosines once.
        let tables: Vec<_> = seqs
            .iter()
            .zip(&pasts)
            .map(|(s, &past)| {
                let global = self.rope.table(past, s.tokens.len());
                let local = self
                    .local_rope
                    .as_ref()
                    .map(|r| r.table(past, s.tokens.len()));
                (global, local)
            })
            .collect();
        for (li, layer) in self.layers.iter().enumerate() {
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                rms_norm(xr, &layer.attn_norm, c.rms_eps, hr);
            }
            matmul_many(
                &h,
                &mut [
                    (self.w(&layer.wq), &mut q[..]),
                    (self.w(&layer.wk), &mut k[..]),
                    (self.w(&layer.wv), &mut v[..]),
                ],
                self.activations,
            );
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                add_rows(&mut q, bq);
                add_rows(&mut k, bk);
                add_rows(&mut v, bv);
            }
            if let Some([qn, kn]) = &layer.qk_norm {
                q.chunks_exact_mut(hd)
                    .for_each(|head| rms_norm_in_place(head, qn, c.rms_eps));
                k.chunks_exact_mut(hd)
                    .for_each(|head| rms_norm_in_place(head, kn, c.rms_eps));
            }
            for (si, s) in seqs.iter().enumerate() {
                let (lo, hi, past) = (starts[si], starts[si + 1], pasts[si]);
                let rope = match (&tables[si].1, layer.window) {
                    (Some(local), Some(_)) => local,
                    _ => &tables[si].0,
                };
                for i in lo..hi {
                    let pos = past + i - lo;
                    rope.apply(&mut q[i * qd..(i + 1) * qd], hd, pos);
                    rope.apply(&mut k[i * kvd..(i + 1) * kvd], hd, pos);
                    let at = store.slot(s.blocks, pos) * kvd;
                    let (ks, vs) = (&mut store.k[li][at..][..kvd], &mut store.v[li][at..][..kvd]);
                    for (dst, &x) in ks.iter_mut().zip(&k[i * kvd..(i + 1) * kvd]) {
                        *dst = f16::from_f32(x).to_bits();
                    }
                    for (dst, &x) in vs.iter_mut().zip(&v[i * kvd..(i + 1) * kvd]) {
                        *dst = f16::from_f32(x).to_bits();
                    }
                }
                // Queries meet keys at f16 precision, as in GGML's f16 attention.
                for x in q[lo * qd..hi * qd].iter_mut() {
                    *x = f16::from_f32(*x).to_f32();
                }
                self.attention(
                    &q[lo * qd..hi * qd],
                    store,
                    li,
                    s.blocks,
                    past,
                    layer.window,
                    &mut attn[lo * qd..hi * qd],
                );
            }

            matmul(&self.w(&layer.wo), &attn, &mut proj, self.activations);
            if let Some([post_attn, _]) = &layer.post_norms {
                proj.chunks_exact_mut(d)
                    .for_each(|r| rms_norm_in_place(r, post_attn, c.rms_eps));
            }
            add_assign(&mut x, &proj);

            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                rms_norm(xr, &layer.ffn_norm, c.rms_eps, hr);
            }
            matmul_many(
                &h,
                &mut [
                    (self.w(&layer.w_gate), &mut gate[..]),
                    (self.w(&layer.w_up), &mut up[..]),
                ],
                self.activations,
            );
            let act = match c.spec.activation {
                Activation::Silu => silu_mul,
                Activation::GeluTanh => gelu_mul,
            };
            for_each_chunk_mut(&mut gate, c.n_ff, |t, g| {
                act(g, &up[t * c.n_ff..][..c.n_ff])
            });
            matmul(&self.w(&layer.w_down), &gate, &mut proj, self.activations);
            if let Some([_, post_ffn]) = &layer.post_norms {
                proj.chunks_exact_mut(d)
                    .for_each(|r| rms_norm_in_place(r, post_ffn, c.rms_eps));
            }
            add_assign(&mut x, &proj);
        }

        // The rows that need logits, all through the output matrix at once.
        let mut picked: Vec<(usize, usize)> = Vec::new();
        for (si, s) in seqs.iter().enumerate() {
            let (lo, hi) = (starts[si], starts[si + 1]);
            let first = match s.logits {
                Logits::None => hi,
                Logits::Last => hi.saturating_sub(1).max(lo),
                Logits::All => lo,
            };
            picked.push((first, hi));
        }
        let rows: usize = picked.iter().map(|(a, b)| b - a).sum();
        let mut normed = vec![0f32; rows * d];
        let mut at = 0;
        for &(a, b) in &picked {
            for r in a..b {
                rms_norm(
                    &x[r * d..(r + 1) * d],
                    &self.output_norm,
                    c.rms_eps,
                    &mut normed[at * d..(at + 1) * d],
                );
                at += 1;
            }
        }
        let mut out = vec![0f32; rows * c.n_vocab];
        if rows > 0 {
            matmul(&self.w(&self.output), &normed, &mut out, self.activations);
        }
        let mut result = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for &(a, b) in &picked {
            result.push(out[at * c.n_vocab..(at + b - a) * c.n_vocab].to_vec());
            at += b - a;
        }
        Ok(result)
    }

    /// Causal attention of the `n` new queries over the `past + n` positions,
    /// or the last `window` of them.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &[f32],
        store: &KvStore,
        layer: usize,
        blocks: &[u32],
        past: usize,
        window: Option<usize>,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (hd, kvd, n_head, n_kv) = (c.head_dim, c.kv_dim(), c.n_head, c.n_head_kv);
        let group = n_head / n_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let keys: &[f16] = store.k[layer].reinterpret_cast();
        let values: &[f16] = store.v[layer].reinterpret_cast();
        // One piece of `out` per (token, KV head): the group of query heads
        // sharing that KV head, so each key and value is widened to f32 once
        // for all of them. Pieces are dealt out round-robin so that each
        // thread gets as many late (long) rows of the causal triangle.
        for_each_chunk_mut_interleaved(out, group * hd, |idx, o| {
            let (i, kv_head) = (idx / n_kv, idx % n_kv);
            let kv_off = kv_head * hd;
            let queries = &q[(i * n_head + kv_head * group) * hd..][..group * hd];
            let seen = past + i + 1;
            let first = window.map_or(0, |w| seen.saturating_sub(w));
            let len = seen - first;
            // Positions in runs that stay within one KV block (contiguous
            // in the store), as `(offset from first, slot of its start, length)`.
            let bs = store.block_size;
            let starts = std::iter::successors(Some(first), |&p| {
                let next = (p / bs + 1) * bs;
                (next < seen).then_some(next)
            });
            let runs = starts.map(|p| {
                let end = ((p / bs + 1) * bs).min(seen);
                (p - first, store.slot(blocks, p), end - p)
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
                group_scores_f16(queries, keys, &mut scores[at * group..(at + n) * group]);
            }
            let mut probs = vec![0f32; group * len];
            for (g, row) in probs.chunks_exact_mut(len).enumerate() {
                for (j, w) in row.iter_mut().enumerate() {
                    *w = scores[j * group + g] * scale;
                }
                softmax(row);
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
                group_weighted_sum_f16(o, &probs[at..], len, values);
            }
        });
    }
}

fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.gguf
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn check_shape(t: &TensorInfo, want: &[u64]) -> Result<(), ModelError> {
    if t.shape != want {
        return Err(ModelError::WrongShape {
            name: t.name.clone(),
            expected: want.to_vec(),
            found: t.shape.clone(),
        });
    }
    Ok(())
}

/// A matrix with rows of `cols` values (GGML shape `[cols, rows]`).
fn weight(file: &GgufFile, name: &str, cols: usize, rows: usize) -> Result<Weight, ModelError> {
    let t = tensor(file, name)?;
    check_shape(t, &[cols as u64, rows as u64])?;
    Ok(Weight {
        dtype: t.dtype,
        rows,
        cols,
        offset: t.offset,
        size: t.size,
        interleaved: None,
    })
}

/// Gives `w` its interleaved copy when this CPU's kernels have one for its
/// format, and lets the kernel drop the mapped original from memory (it
/// stays in the page cache for the f32-activation path).
fn interleave(file: &GgufFile, mut w: Weight) -> Weight {
    let Some(kernels) = RowDots::detected()
        .rows8
        .filter(|k| k.dots.supports(w.dtype))
    else {
        return w;
    };
    let original = WeightRef {
        dtype: w.dtype,
        rows: w.rows,
        cols: w.cols,
        data: file.data_slice(w.offset, w.size),
        layout: Layout::Rows,
    };
    w.interleaved = interleave_rows8(&original, kernels.unit);
    if w.interleaved.is_some() {
        file.release(w.offset, w.size);
    }
    w
}

/// A vector (norm gain or bias), dequantized to f32 since it is small.
fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = tensor(file, name)?;
    check_shape(t, &[len as u64])?;
    let mut out = vec![0f32; len];
    dequantize_row(t.dtype, file.data(t), &mut out);
    Ok(out)
}
