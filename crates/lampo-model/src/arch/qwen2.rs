//! Qwen2 and Qwen2.5: Llama with biases on Q, K and V and NeoX-style rotary pairs.

use lampo_kernels::ops::RopeStyle;

use super::ArchSpec;
use crate::ModelError;
use crate::gguf::Gguf;

pub fn spec(_: &Gguf) -> Result<ArchSpec, ModelError> {
    Ok(ArchSpec {
        qkv_bias: true,
        ..ArchSpec::llama_like(RopeStyle::Halves)
    })
}
