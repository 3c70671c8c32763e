//! Architecture families. Each file describes how one family differs from the
//! common pre-norm decoder in [`crate::model`]; adding a family means adding
//! a file here and a line to [`spec_for`], plus a field in [`ArchSpec`] (and
//! its use in the forward pass) for each genuinely new ingredient: per-head
//! Q/K norms for qwen3, fused QKV for phi3, post-norms, GELU and sliding
//! windows for gemma3.

mod llama;
mod qwen2;

use lampo_kernels::ops::RopeStyle;

use crate::ModelError;
use crate::gguf::Gguf;

/// What distinguishes one architecture family from another.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    pub rope_style: RopeStyle,
    /// Q, K and V projections carry bias vectors.
    pub qkv_bias: bool,
}

/// The families Lampo runs.
pub const SUPPORTED: &[&str] = &["llama", "qwen2"];

pub fn spec_for(arch: &str, g: &Gguf) -> Result<ArchSpec, ModelError> {
    match arch {
        "llama" => llama::spec(g),
        "qwen2" => qwen2::spec(g),
        other => Err(ModelError::UnsupportedArch(other.to_string())),
    }
}
