//! Phi-3 and Phi-4-mini: Llama with NeoX-style rotary pairs, often over
//! only part of each head (`rope.dimension_count`), Q, K and V in one fused
//! `attn_qkv` matrix and the gate and up projections in one `ffn_up`
//! (gate rows first), and for the 128k-context files LongRoPE: per-pair
//! frequency factors for short and for long contexts
//! (`rope_factors_short`/`rope_factors_long`, chosen by the context the
//! model is run with, see `Model::set_context`) and a magnitude factor
//! (`rope.scaling.attn_factor`).
//!
//! The files' `attention.sliding_window` is ignored, as llama.cpp ignores
//! it (its converter does not record which layers the window applies to),
//! so that both engines compute the same thing from the same file.

use lampo_kernels::ops::RopeStyle;

use super::ArchSpec;
use crate::ModelError;
use crate::gguf::Gguf;

pub fn spec(_: &Gguf) -> Result<ArchSpec, ModelError> {
    Ok(ArchSpec {
        fused_gate_up: true,
        ..ArchSpec::llama_like(RopeStyle::Halves)
    })
}
