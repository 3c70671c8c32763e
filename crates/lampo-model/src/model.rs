//! The decoder-only transformer forward pass, shared by every family in
//! [`crate::arch`] and written once against the [`Backend`] boundary:
//! pre-norm attention with grouped-query heads and rotary positions, then
//! a gated MLP. The recipe says what is computed; the backend owns the
//! memory, the kernels and the threads.

use std::path::Path;
use std::sync::Arc;

use lampo_kernels::ops::Rope;
use lampo_kernels::quant::dequantize_row;
use lampo_kernels::{Backend, Cpu, Heads, HostMatrix, KvShape, Mapping, SeqSpan};

use crate::ModelError;
use crate::config::Config;
use crate::gguf::{GgufFile, TensorInfo};

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Matrix,
    wk: B::Matrix,
    wv: B::Matrix,
    qkv_bias: Option<[B::Vector; 3]>,
    wo: B::Matrix,
    ffn_norm: B::Vector,
    w_gate: B::Matrix,
    w_up: B::Matrix,
    w_down: B::Matrix,
    /// Per-head norms of queries and keys (`qk_norm` families).
    qk_norm: Option<[B::Vector; 2]>,
    /// Norms of the attention and feed-forward outputs (`post_norms` families).
    post_norms: Option<[B::Vector; 2]>,
    /// Keys visible to a query, its own included; `None` is unlimited.
    /// Sliding-window layers also rotate with their own RoPE base.
    window: Option<usize>,
}

/// A loaded model: hyperparameters, and weights prepared by its backend
/// (read in place from the file mapping where the backend can).
pub struct Model<B: Backend = Cpu> {
    pub config: Config,
    backend: B,
    file: Arc<GgufFile>,
    /// The embedding table, read a row per token.
    token_embd: B::Matrix,
    output_norm: B::Vector,
    /// The output matrix (the token embedding again when tied).
    output: B::Matrix,
    layers: Vec<Layer<B>>,
    rope: Rope,
    /// LongRoPE's rotation for long contexts, when the file has one.
    long_rope: Option<Rope>,
    /// Whether `long_rope` is the one in use (see [`Model::set_context`]).
    long_context: bool,
    /// RoPE of the sliding-window layers, when the family has them.
    local_rope: Option<Rope>,
    /// Bytes of weights one decode step reads.
    step_bytes: u64,
}

/// Bytes one block of `block_size` positions takes in a model's key/value
/// store (keys and values of every layer, f16).
pub fn kv_block_bytes(config: &Config, block_size: usize) -> usize {
    2 * config.n_layer * block_size * config.kv_dim() * 2
}

/// Keys and values of past positions for any number of sequences, per
/// layer, in blocks of `block_size` positions, in the backend's memory. A
/// sequence names its blocks in order (its block table); which block
/// belongs to whom is the caller's business, so blocks can be shared
/// between sequences with a common prefix.
pub struct KvStore<B: Backend = Cpu> {
    kv: B::Kv,
    block_size: usize,
}

impl<B: Backend> KvStore<B> {
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

/// One sequence's cache in a store of its own, for callers that run a
/// single sequence (evaluation, benchmarks): blocks are added as it fills,
/// up to `capacity` positions.
pub struct KvCache<B: Backend = Cpu> {
    store: KvStore<B>,
    blocks: Vec<u32>,
    len: usize,
    capacity: usize,
}

/// Block size of a single-sequence cache.
const OWN_BLOCK: usize = 64;

impl<B: Backend> KvCache<B> {
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

impl Model<Cpu> {
    /// Maps a GGUF file and checks that it holds a complete model of a
    /// supported family, on the process's shared CPU backend.
    pub fn load(path: &Path) -> Result<Model<Cpu>, ModelError> {
        Model::load_with(path, Cpu::shared())
    }
}

impl<B: Backend> Model<B> {
    /// As [`Model::load`], on `backend`.
    pub fn load_with(path: &Path, backend: B) -> Result<Model<B>, ModelError> {
        Model::from_file(GgufFile::open(path)?, backend)
    }

    pub fn from_file(file: GgufFile, backend: B) -> Result<Model<B>, ModelError> {
        let file = Arc::new(file);
        let config = Config::from_gguf(&file.gguf)?;
        let c = &config;
        let (d, q, kv, ff, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff, c.head_dim);
        let source: Arc<dyn Mapping> = file.clone();
        let host = |name: &str, cols: usize, rows: usize| -> Result<HostMatrix, ModelError> {
            let t = tensor(&file, name)?;
            check_shape(t, &[cols as u64, rows as u64])?;
            Ok(HostMatrix {
                dtype: t.dtype,
                rows,
                cols,
                source: source.clone(),
                range: t.offset..t.offset + t.size,
            })
        };
        let host_vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let t = tensor(&file, name)?;
            check_shape(t, &[len as u64])?;
            let mut out = vec![0f32; len];
            dequantize_row(t.dtype, file.data(t), &mut out);
            Ok(out)
        };
        let vector = |name: &str, len: usize| -> Result<B::Vector, ModelError> {
            Ok(backend.vector(&host_vector(name, len)?))
        };
        // A fused matrix (phi3's `attn_qkv`, `ffn_up`) as several, each a
        // run of its rows in place in the file.
        let split =
            |name: &str, cols: usize, rows: &[usize]| -> Result<Vec<HostMatrix>, ModelError> {
                let total: usize = rows.iter().sum();
                let whole = host(name, cols, total)?;
                let row_bytes = whole.range.len() / total.max(1);
                let mut at = whole.range.start;
                Ok(rows
                    .iter()
                    .map(|&n| {
                        let range = at..at + n * row_bytes;
                        at = range.end;
                        HostMatrix {
                            rows: n,
                            range,
                            ..whole.clone()
                        }
                    })
                    .collect())
            };
        let mut step_bytes = 0u64;
        let mut prepare = |h: HostMatrix| -> B::Matrix {
            step_bytes += h.range.len() as u64;
            backend.matrix(h)
        };
        let embd = host("token_embd.weight", d, c.n_vocab)?;
        let token_embd = backend.table(embd.clone());
        let output_norm = vector("output_norm.weight", d)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}");
            let qkv_bias = if c.spec.qkv_bias {
                Some([
                    vector(&name("attn_q.bias"), q)?,
                    vector(&name("attn_k.bias"), kv)?,
                    vector(&name("attn_v.bias"), kv)?,
                ])
            } else {
                None
            };
            let qk_norm = if c.spec.qk_norm {
                Some([
                    vector(&name("attn_q_norm.weight"), hd)?,
                    vector(&name("attn_k_norm.weight"), hd)?,
                ])
            } else {
                None
            };
            let post_norms = if c.spec.post_norms {
                Some([
                    vector(&name("post_attention_norm.weight"), d)?,
                    vector(&name("post_ffw_norm.weight"), d)?,
                ])
            } else {
                None
            };
            let local = c
                .spec
                .sliding_window
                .as_ref()
                .filter(|sw| (i + 1) % sw.pattern != 0);
            let [wq, wk, wv] = match file.gguf.tensor(&name("attn_qkv.weight")) {
                Some(_) => pieces(split(&name("attn_qkv.weight"), d, &[q, kv, kv])?),
                None => [
                    host(&name("attn_q.weight"), d, q)?,
                    host(&name("attn_k.weight"), d, kv)?,
                    host(&name("attn_v.weight"), d, kv)?,
                ],
            };
            let [w_gate, w_up] = if c.spec.fused_gate_up {
                pieces(split(&name("ffn_up.weight"), d, &[ff, ff])?)
            } else {
                [
                    host(&name("ffn_gate.weight"), d, ff)?,
                    host(&name("ffn_up.weight"), d, ff)?,
                ]
            };
            layers.push(Layer {
                attn_norm: vector(&name("attn_norm.weight"), d)?,
                wq: prepare(wq),
                wk: prepare(wk),
                wv: prepare(wv),
                qkv_bias,
                wo: prepare(host(&name("attn_output.weight"), q, d)?),
                ffn_norm: vector(&name("ffn_norm.weight"), d)?,
                w_gate: prepare(w_gate),
                w_up: prepare(w_up),
                w_down: prepare(host(&name("ffn_down.weight"), ff, d)?),
                qk_norm,
                post_norms,
                window: local.map(|sw| sw.window),
            });
        }
        let output = match file.gguf.tensor("output.weight") {
            Some(_) => prepare(host("output.weight", d, c.n_vocab)?),
            None => prepare(host("token_embd.weight", d, c.n_vocab)?),
        };
        // Per-pair divisors of the rotation, shared by every layer: Llama
        // 3.x's `rope_freqs`, or LongRoPE's short- and long-context factors
        // (phi3). The sliding-window layers of the families that have them
        // rotate unscaled, as llama.cpp does.
        let factors = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
            if file.gguf.tensor(name).is_none() {
                return Ok(None);
            }
            let f = host_vector(name, c.rope_dims / 2)?;
            if f.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
                return Err(ModelError::Config(format!(
                    "{name} holds a factor that is not a positive number"
                )));
            }
            Ok(Some(f))
        };
        let rope_with = |freq_factors: Option<Vec<f32>>| match c.rope_scaling.for_rope(
            c.rope_dims,
            c.rope_base,
            freq_factors,
        ) {
            Some(s) => Rope::scaled(c.spec.rope_style, c.rope_dims, c.rope_base, s),
            None => Rope::new(c.spec.rope_style, c.rope_dims, c.rope_base),
        };
        let rope = match factors("rope_freqs.weight")? {
            Some(f) => rope_with(Some(f)),
            None => rope_with(factors("rope_factors_short.weight")?),
        };
        let long_rope = match factors("rope_factors_long.weight")? {
            Some(f) if file.gguf.tensor("rope_freqs.weight").is_none() => Some(rope_with(Some(f))),
            _ => None,
        };
        let local_rope = c
            .spec
            .sliding_window
            .as_ref()
            .map(|sw| Rope::new(c.spec.rope_style, c.rope_dims, sw.rope_base));
        Ok(Model {
            config,
            backend,
            file,
            token_embd,
            output_norm,
            output,
            layers,
            rope,
            long_rope,
            long_context: false,
            local_rope,
            step_bytes,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Tells the model the longest sequence it will be run on. A LongRoPE
    /// file (Phi-3 128k) then rotates with its long-context factors if that
    /// is beyond the original context, and with its short ones otherwise,
    /// as llama.cpp chooses them for its context size; other files are
    /// unaffected. Until it is called, the short factors are used. Call it
    /// before any keys are cached: they are not rotated again.
    pub fn set_context(&mut self, n_ctx: usize) {
        self.long_context = self.long_rope.is_some() && n_ctx > self.config.rope_scaling.n_ctx_orig;
    }

    /// Whether LongRoPE's long-context factors are in use.
    pub fn long_context(&self) -> bool {
        self.long_context
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Bytes of weights one decode step reads: every layer's matrices and
    /// the output matrix (the single embedding row it also reads aside).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.step_bytes
    }

    /// Bytes of KV cache per position (keys and values of every layer, f16).
    pub fn kv_bytes_per_position(&self) -> u64 {
        kv_block_bytes(&self.config, 1) as u64
    }

    /// A store of `n_blocks` blocks of `block_size` positions (a power of
    /// two) in the backend's memory.
    pub fn kv_store(&self, block_size: usize, n_blocks: usize) -> KvStore<B> {
        let shape = KvShape {
            layers: self.config.n_layer,
            kv_dim: self.config.kv_dim(),
            block_size,
        };
        KvStore {
            kv: self.backend.kv(shape, n_blocks),
            block_size,
        }
    }

    /// A single sequence's cache for up to `capacity` positions; memory
    /// grows as it fills.
    pub fn kv_cache(&self, capacity: usize) -> KvCache<B> {
        KvCache {
            store: self.kv_store(OWN_BLOCK, 0),
            blocks: Vec::new(),
            len: 0,
            capacity,
        }
    }

    /// Runs `tokens` at the positions after those already in `kv`, appends
    /// their keys and values to it, and returns logits (`n_vocab` per
    /// position asked for by `logits`).
    pub fn forward(
        &self,
        tokens: &[u32],
        kv: &mut KvCache<B>,
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
        self.backend.kv_grow(&mut kv.store.kv, n_blocks);
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
        store: &mut KvStore<B>,
        seqs: &[Sequence],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let b = &self.backend;
        let n_blocks = b.kv_blocks(&store.kv);
        for s in seqs.iter() {
            let capacity = s.blocks.len() * store.block_size;
            if s.past + s.tokens.len() > capacity {
                return Err(ModelError::ContextFull {
                    needed: s.past + s.tokens.len(),
                    capacity,
                });
            }
            if let Some(&bad) = s.blocks.iter().find(|&&id| id as usize >= n_blocks) {
                return Err(ModelError::Config(format!(
                    "KV block {bad} is outside the store of {n_blocks} blocks"
                )));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
                return Err(ModelError::BadToken {
                    token: bad,
                    n_vocab: c.n_vocab,
                });
            }
        }
        // Rows `spans[i].rows` of every activation belong to sequence i.
        let mut spans = Vec::with_capacity(seqs.len());
        let mut n = 0;
        for s in seqs {
            spans.push(SeqSpan {
                rows: n..n + s.tokens.len(),
                past: s.past,
                blocks: s.blocks,
            });
            n += s.tokens.len();
        }
        if n == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let (d, qd, kvd, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim);

        let mut x = b.tensor(n, d);
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        b.embed(&self.token_embd, &tokens, &mut x);
        if c.spec.scale_embeddings {
            b.scale(&mut x, (d as f32).sqrt());
        }

        let mut h = b.tensor(n, d);
        let mut q = b.tensor(n, qd);
        let mut k = b.tensor(n, kvd);
        let mut v = b.tensor(n, kvd);
        let mut attn = b.tensor(n, qd);
        let mut proj = b.tensor(n, d);
        let mut gate = b.tensor(n, c.n_ff);
        let mut up = b.tensor(n, c.n_ff);

        // Every layer rotates the same positions: sines and cosines once.
        let rope = match &self.long_rope {
            Some(long) if self.long_context => long,
            _ => &self.rope,
        };
        let global = b.rope_table(rope, &spans);
        let local = self.local_rope.as_ref().map(|r| b.rope_table(r, &spans));
        let style = c.spec.rope_style;
        for (li, layer) in self.layers.iter().enumerate() {
            b.rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            b.matmul(
                &h,
                &mut [
                    (&layer.wq, &mut q),
                    (&layer.wk, &mut k),
                    (&layer.wv, &mut v),
                ],
            );
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                b.add_bias(&mut q, bq);
                b.add_bias(&mut k, bk);
                b.add_bias(&mut v, bv);
            }
            if let Some([qn, kn]) = &layer.qk_norm {
                b.rms_norm_pieces(&mut q, qn, c.rms_eps);
                b.rms_norm_pieces(&mut k, kn, c.rms_eps);
            }
            let table = match (&local, layer.window) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            b.rope(&mut q, table, style, hd);
            b.rope(&mut k, table, style, hd);
            b.write_kv(&mut store.kv, li, &k, &v, &spans);
            let heads = Heads {
                n_head: c.n_head,
                n_kv_head: c.n_head_kv,
                head_dim: hd,
                window: layer.window,
                scale: c.spec.attn_scale.unwrap_or(Heads::default_scale(hd)),
                softcap: c.spec.attn_softcap,
            };
            b.attention(&mut q, &store.kv, li, heads, &spans, &mut attn);

            b.matmul(&attn, &mut [(&layer.wo, &mut proj)]);
            if let Some([post_attn, _]) = &layer.post_norms {
                b.rms_norm_pieces(&mut proj, post_attn, c.rms_eps);
            }
            b.add(&mut x, &proj);

            b.rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            b.matmul(
                &h,
                &mut [(&layer.w_gate, &mut gate), (&layer.w_up, &mut up)],
            );
            b.gated(c.spec.activation, &mut gate, &up);
            b.matmul(&gate, &mut [(&layer.w_down, &mut proj)]);
            if let Some([_, post_ffn]) = &layer.post_norms {
                b.rms_norm_pieces(&mut proj, post_ffn, c.rms_eps);
            }
            b.add(&mut x, &proj);
        }

        // The rows that need logits, all through the output matrix at once.
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(seqs.len());
        for (s, span) in seqs.iter().zip(&spans) {
            let (lo, hi) = (span.rows.start, span.rows.end);
            let first = match s.logits {
                Logits::None => hi,
                Logits::Last => hi.saturating_sub(1).max(lo),
                Logits::All => lo,
            };
            rows.extend(first..hi);
            counts.push(hi - first);
        }
        let mut result = Vec::with_capacity(seqs.len());
        if rows.is_empty() {
            result.resize(seqs.len(), Vec::new());
            return Ok(result);
        }
        let picked = b.gather(&x, &rows);
        let mut normed = b.tensor(rows.len(), d);
        b.rms_norm(&picked, &self.output_norm, c.rms_eps, &mut normed);
        let mut out = b.tensor(rows.len(), c.n_vocab);
        b.matmul(&normed, &mut [(&self.output, &mut out)]);
        if let Some(cap) = c.spec.final_softcap {
            b.soft_cap(&mut out, cap);
        }
        let mut at = 0;
        for count in counts {
            result.push(b.read(&out, at..at + count));
            at += count;
        }
        Ok(result)
    }
}

/// The matrices of a split, as many as expected.
fn pieces<const N: usize>(v: Vec<HostMatrix>) -> [HostMatrix; N] {
    v.try_into()
        .unwrap_or_else(|v: Vec<_>| unreachable!("split into {} pieces", v.len()))
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
