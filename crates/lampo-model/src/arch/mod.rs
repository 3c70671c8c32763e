//! Architecture families. Each file describes how one family differs from the
//! common pre-norm decoder in [`crate::model`]; adding a family means adding
//! a file here and a line to [`spec_for`], plus a field in [`ArchSpec`] (and
//! its use in the forward pass) for each genuinely new ingredient, such as
//! fused QKV projections for phi3.

mod gemma2;
mod gemma3;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;

use lampo_kernels::ops::RopeStyle;

use crate::ModelError;
use crate::gguf::Gguf;

/// Feed-forward activation of the gated MLP.
pub use lampo_kernels::Activation;

/// Local attention on some layers.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// A query sees the keys of this many positions, its own included.
    pub window: usize,
    /// Every `pattern`-th layer (the last of each group) attends globally.
    pub pattern: usize,
    /// RoPE base of the local layers.
    pub rope_base: f32,
}

/// What distinguishes one architecture family from another.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    pub rope_style: RopeStyle,
    /// Q, K and V projections carry bias vectors.
    pub qkv_bias: bool,
    pub activation: Activation,
    /// Each query and key head is RMS-normalised before its rotation.
    pub qk_norm: bool,
    /// The attention and feed-forward outputs are RMS-normalised before
    /// they join the residual stream.
    pub post_norms: bool,
    /// Token embeddings are multiplied by the square root of the width.
    pub scale_embeddings: bool,
    pub sliding_window: Option<SlidingWindow>,
    /// Attention scores are `q · k` times this; `None` is `1 / sqrt(head_dim)`.
    pub attn_scale: Option<f32>,
    /// Attention scores are soft-capped at this before the softmax.
    pub attn_softcap: Option<f32>,
    /// The output logits are soft-capped at this.
    pub final_softcap: Option<f32>,
    /// One `ffn_up` matrix holds the gate's rows and then the up
    /// projection's (phi3), instead of separate `ffn_gate` and `ffn_up`.
    pub fused_gate_up: bool,
}

impl ArchSpec {
    /// The plain Llama recipe with the given rotary layout.
    pub fn llama_like(rope_style: RopeStyle) -> ArchSpec {
        ArchSpec {
            rope_style,
            qkv_bias: false,
            activation: Activation::Silu,
            qk_norm: false,
            post_norms: false,
            scale_embeddings: false,
            sliding_window: None,
            attn_scale: None,
            attn_softcap: None,
            final_softcap: None,
            fused_gate_up: false,
        }
    }
}

/// The families Lampo runs.
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];

pub fn spec_for(arch: &str, g: &Gguf) -> Result<ArchSpec, ModelError> {
    match arch {
        "llama" => llama::spec(g),
        "qwen2" => qwen2::spec(g),
        "qwen3" => qwen3::spec(g),
        "phi3" => phi3::spec(g),
        "gemma2" => gemma2::spec(g),
        "gemma3" => gemma3::spec(g),
        other => Err(ModelError::UnsupportedArch(other.to_string())),
    }
}
