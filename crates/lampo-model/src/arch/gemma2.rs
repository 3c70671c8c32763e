//! Gemma 2: norms after attention and feed-forward, GELU, embeddings scaled
//! by sqrt(width), sliding-window attention on every other layer (the
//! first of each pair), and soft-capping of the attention scores and of the
//! final logits (`cap * tanh(x / cap)`). Read with llama.cpp's keys and
//! defaults: a 4096-position window, caps 50 and 30.

use lampo_kernels::ops::RopeStyle;

use super::{Activation, ArchSpec, SlidingWindow};
use crate::ModelError;
use crate::config::{meta_f32_or, meta_usize, meta_usize_or};
use crate::gguf::Gguf;

pub fn spec(g: &Gguf) -> Result<ArchSpec, ModelError> {
    let window = meta_usize_or(g, "gemma2.attention.sliding_window", 4096)?;
    let rope_base = meta_f32_or(g, "gemma2.rope.freq_base", 10_000.0)?;
    // Local layers rotate with the global base unless the file says otherwise.
    let local_base = meta_f32_or(g, "gemma2.rope.freq_base_swa", rope_base)?;
    let sliding_window = (window > 0).then_some(SlidingWindow {
        window,
        pattern: 2,
        rope_base: local_base,
    });
    let cap = |key: &str, default: f32| -> Result<Option<f32>, ModelError> {
        match meta_f32_or(g, key, default)? {
            c if c > 0.0 => Ok(Some(c)),
            c => Err(ModelError::Config(format!(
                "{key} = {c} is not a positive cap"
            ))),
        }
    };
    // The scale of the scores is 1/sqrt(query_pre_attn_scalar), which the
    // GGUF files do not store: it is the head size except for the 27B model
    // (width / heads = 144 for heads of 128), which llama.cpp recognises by
    // its 46 layers. Lampo does the same, so that both read a file alike.
    let n_layer = meta_usize(g, "gemma2.block_count")?;
    let attn_scale = if n_layer == 46 {
        let n_embd = meta_usize(g, "gemma2.embedding_length")?;
        let n_head = meta_usize(g, "gemma2.attention.head_count")?.max(1);
        Some(1.0 / ((n_embd / n_head) as f32).sqrt())
    } else {
        None
    };
    Ok(ArchSpec {
        activation: Activation::GeluTanh,
        post_norms: true,
        scale_embeddings: true,
        sliding_window,
        attn_scale,
        attn_softcap: cap("gemma2.attn_logit_softcapping", 50.0)?,
        final_softcap: cap("gemma2.final_logit_softcapping", 30.0)?,
        ..ArchSpec::llama_like(RopeStyle::Halves)
    })
}
