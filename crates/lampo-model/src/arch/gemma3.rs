//! Gemma 3: per-head Q/K norms, norms after attention and feed-forward,
//! GELU, embeddings scaled by sqrt(width), and sliding-window attention on
//! five layers of every six, which also rotate with a smaller RoPE base.
//! (GGUF files store Gemma's norm gains with the +1 already added.)

use lampo_kernels::ops::RopeStyle;

use super::{Activation, ArchSpec, SlidingWindow};
use crate::ModelError;
use crate::config::{meta_f32_or, meta_usize_or};
use crate::gguf::Gguf;

pub fn spec(g: &Gguf) -> Result<ArchSpec, ModelError> {
    let window = meta_usize_or(g, "gemma3.attention.sliding_window", 0)?;
    let sliding_window = if window > 0 {
        let pattern = meta_usize_or(g, "gemma3.attention.sliding_window_pattern", 6)?;
        if pattern == 0 {
            return Err(ModelError::Config(
                "sliding window pattern of 0 layers".into(),
            ));
        }
        let rope_base = meta_f32_or(g, "gemma3.rope.freq_base_swa", 10_000.0)?;
        Some(SlidingWindow {
            window,
            pattern,
            rope_base,
        })
    } else {
        None
    };
    Ok(ArchSpec {
        activation: Activation::GeluTanh,
        qk_norm: true,
        post_norms: true,
        scale_embeddings: true,
        sliding_window,
        ..ArchSpec::llama_like(RopeStyle::Halves)
    })
}
