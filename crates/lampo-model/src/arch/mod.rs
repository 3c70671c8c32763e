//! Architecture families. Each file describes how one family differs from the
//! common pre-norm decoder in [`crate::model`]; adding a family means adding
//! a file here and a line to [`spec_for`].

mod llama;
mod qwen2;

use lampo_kernels::ops::RopeStyle;

use crate::ModelError;
use crate::gguf::Gguf;

/// Feed-forward activation of the gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// What distinguishes one architecture family from another.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    pub rope_style: RopeStyle,
    /// Q, K and V projections carry bias vectors.
    pub qkv_bias: bool,
    pub activation: Activation,
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
