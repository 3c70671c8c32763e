//! Qwen3 (dense): Llama with NeoX-style rotary pairs and an RMSNorm over
//! each query and key head before its rotation, no Q/K/V biases, and a head
//! size (`attention.key_length`) that need not be width / heads.

use lampo_kernels::ops::RopeStyle;

use super::ArchSpec;
use crate::ModelError;
use crate::gguf::Gguf;

pub fn spec(_: &Gguf) -> Result<ArchSpec, ModelError> {
    Ok(ArchSpec {
        qk_norm: true,
        ..ArchSpec::llama_like(RopeStyle::Halves)
    })
}
