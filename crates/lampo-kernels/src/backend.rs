//! The boundary between a model's forward recipe and the hardware it runs
//! on. A backend owns its memory (activations, prepared weights, the paged
//! key/value store) and implements a narrow set of ops over it; the model
//! (`lampo-model`) is written once against this trait and never touches a
//! kernel, a thread or a buffer layout itself. The CPU backend is
//! [`crate::cpu::Cpu`]; `docs/architecture.md` says op by op how a GPU
//! backend would implement the same trait.
//!
//! Shapes are row-major: a tensor of `rows × cols` f32 holds one token per
//! row. A batch of sequences shares each tensor, each sequence owning a run
//! of rows ([`SeqSpan`]) and a block table into the key/value store.

use std::ops::Range;
use std::sync::Arc;

use crate::ops::{Rope, RopeStyle};
use crate::quant::DType;

/// Feed-forward activation of a gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// Bytes a model file maps into memory (weights are read in place until
/// a backend prepares its own copy).
pub trait Mapping: Send + Sync {
    fn bytes(&self) -> &[u8];

    /// Tells the mapping that `range` will not be read soon (a backend
    /// made its own copy); the pages may be dropped from memory.
    fn release(&self, range: Range<usize>) {
        let _ = range;
    }
}

/// A weight matrix as the model file stores it: `rows` rows of `cols`
/// values in `dtype` blocks, row after row, at `range` of `source`.
#[derive(Clone)]
pub struct HostMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub source: Arc<dyn Mapping>,
    pub range: Range<usize>,
}

impl HostMatrix {
    pub fn data(&self) -> &[u8] {
        &self.source.bytes()[self.range.clone()]
    }
}

/// The shape of a paged key/value store: per layer, per position, keys and
/// values of `kv_dim` values each, in blocks of `block_size` positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_dim: usize,
    pub block_size: usize,
}

/// One sequence's part of a batched op: its rows of the batch's tensors,
/// the positions already in the store before them, and its block table
/// (block `i` holds positions `i * block_size..`).
#[derive(Clone, Debug)]
pub struct SeqSpan<'a> {
    pub rows: Range<usize>,
    pub past: usize,
    pub blocks: &'a [u32],
}

/// Heads of an attention layer: `n_head` query heads sharing `n_kv_head`
/// key/value heads of `head_dim` values; `window` limits how many
/// positions (its own included) a query sees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heads {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    /// Scores are `q · k * scale` (usually `1 / sqrt(head_dim)`, see
    /// [`Heads::default_scale`]).
    pub scale: f32,
    /// Scores are soft-capped to `cap * tanh(score / cap)` before the
    /// softmax (Gemma 2).
    pub softcap: Option<f32>,
}

impl Heads {
    /// The usual score scale, `1 / sqrt(head_dim)`.
    pub fn default_scale(head_dim: usize) -> f32 {
        1.0 / (head_dim as f32).sqrt()
    }
}

/// What a model's forward pass needs from the hardware.
pub trait Backend: Send + Sync + 'static {
    /// `rows × cols` f32 activations in the backend's memory.
    type Tensor: Send;
    /// A weight matrix prepared for the backend's kernels.
    type Matrix: Send + Sync;
    /// A small f32 vector (a norm's gain, a bias).
    type Vector: Send + Sync;
    /// A paged key/value store for every layer.
    type Kv: Send;

    /// What runs the ops, for logs and `--version` (`cpu avx512-vnni`).
    fn name(&self) -> String;

    /// A tensor of zeros.
    fn tensor(&self, rows: usize, cols: usize) -> Self::Tensor;
    /// A tensor holding `values` (`rows × cols`, from the host).
    fn tensor_from(&self, rows: usize, cols: usize, values: &[f32]) -> Self::Tensor;
    /// Prepares a weight matrix for `matmul` (repacks it, or uploads it).
    fn matrix(&self, w: HostMatrix) -> Self::Matrix;
    /// Prepares a table whose rows are looked up one at a time (`embed`).
    fn table(&self, w: HostMatrix) -> Self::Matrix;
    fn vector(&self, values: &[f32]) -> Self::Vector;
    /// A store of `n_blocks` blocks (more may be added by `kv_grow`).
    fn kv(&self, shape: KvShape, n_blocks: usize) -> Self::Kv;
    fn kv_grow(&self, kv: &mut Self::Kv, n_blocks: usize);
    fn kv_blocks(&self, kv: &Self::Kv) -> usize;
    /// Rows `rows` of `x`, on the host.
    fn read(&self, x: &Self::Tensor, rows: Range<usize>) -> Vec<f32>;

    /// Rows of `table` (dequantized): one per token.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32], out: &mut Self::Tensor);
    /// `x *= by`.
    fn scale(&self, x: &mut Self::Tensor, by: f32);
    /// `x = cap * tanh(x / cap)`, elementwise (Gemma 2's logit soft-capping).
    fn soft_cap(&self, x: &mut Self::Tensor, cap: f32);
    /// Each row of `x` RMS-normalised and multiplied by `gain`, into `out`.
    fn rms_norm(&self, x: &Self::Tensor, gain: &Self::Vector, eps: f32, out: &mut Self::Tensor);
    /// In place, each `gain`-long piece of `x` RMS-normalised (per head, or
    /// per row when the gain is a row long).
    fn rms_norm_pieces(&self, x: &mut Self::Tensor, gain: &Self::Vector, eps: f32);
    /// `outs[i] = x · matrices[i]ᵀ` for several matrices of the same input
    /// (a layer's Q, K and V): one pass over the input for all of them.
    fn matmul(&self, x: &Self::Tensor, jobs: &mut [(&Self::Matrix, &mut Self::Tensor)]);
    /// `bias` added to every row of `x`.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Vector);
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// `gate = act(gate) * up`.
    fn gated(&self, act: Activation, gate: &mut Self::Tensor, up: &Self::Tensor);
    /// The sines and cosines of every row's position (a row per token of
    /// `seqs`, `2 * rope.pairs()` columns), computed once per forward pass.
    fn rope_table(&self, rope: &Rope, seqs: &[SeqSpan]) -> Self::Tensor;
    /// Rotates every `head_dim` head of each row of `x` by its row of `table`.
    fn rope(&self, x: &mut Self::Tensor, table: &Self::Tensor, style: RopeStyle, head_dim: usize);
    /// Writes each row's keys and values at its position (`past` and on) of
    /// its sequence's blocks in layer `layer`.
    fn write_kv(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        seqs: &[SeqSpan],
    );
    /// Causal attention of each sequence's queries over its positions in
    /// layer `layer` (those written this pass included), into `out`.
    fn attention(
        &self,
        q: &mut Self::Tensor,
        kv: &Self::Kv,
        layer: usize,
        heads: Heads,
        seqs: &[SeqSpan],
        out: &mut Self::Tensor,
    );
    /// The rows `rows` of `x`, in that order, as a new tensor.
    fn gather(&self, x: &Self::Tensor, rows: &[usize]) -> Self::Tensor;
}
