//! Llama and its look-alikes (SmolLM2, Llama 2/3, Mistral).

use lampo_kernels::ops::RopeStyle;

use super::ArchSpec;
use crate::ModelError;
use crate::gguf::Gguf;

pub fn spec(_: &Gguf) -> Result<ArchSpec, ModelError> {
    // llama.cpp's converter permutes Q and K rows so that rotary pairs are
    // adjacent dimensions.
    Ok(ArchSpec::llama_like(RopeStyle::Adjacent))
}
