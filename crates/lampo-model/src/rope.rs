//! RoPE scaling as a GGUF file's metadata asks for it: linear position
//! interpolation, YaRN, and per-pair frequency factors (Llama 3's
//! `rope_freqs` tensor), read with llama.cpp's keys and defaults and turned
//! into the kernels' [`RopeScaling`] with the same arithmetic, so that
//! positions beyond the trained context agree with the reference.

use lampo_kernels::ops::{RopeScaling, Yarn};

use crate::ModelError;
use crate::config::{meta_f32_or, meta_str, meta_usize_or};
use crate::gguf::Gguf;

/// How positions are stretched, before any tensor of factors is read.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScalingConfig {
    pub kind: ScalingKind,
    /// Angles are multiplied by this (1 / `rope.scaling.factor`).
    pub freq_scale: f32,
    /// The context the model was trained on before it was extended.
    pub n_ctx_orig: usize,
    /// YaRN's weight of the extrapolated angle (1 for YaRN files, 0 otherwise).
    pub ext_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// The multiplier of the rotated values (YaRN's attention factor times
    /// `rope.scaling.attn_factor`).
    pub attn_factor: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalingKind {
    None,
    Linear,
    Yarn,
}

impl RopeScalingConfig {
    /// Reads `{arch}.rope.scaling.*`; an unknown kind is refused rather
    /// than silently ignored. LongRoPE (`longrope`) scales through its
    /// factor tensors and `attn_factor`, so it reads as linear scaling here,
    /// as in llama.cpp.
    pub fn from_gguf(g: &Gguf, arch: &str, n_ctx_train: usize) -> Result<Self, ModelError> {
        let key = |k: &str| format!("{arch}.rope.scaling.{k}");
        let kind = match g.get(&key("type")) {
            None => ScalingKind::Linear,
            Some(_) => match meta_str(g, &key("type"))? {
                "none" => ScalingKind::None,
                "linear" | "longrope" => ScalingKind::Linear,
                "yarn" => ScalingKind::Yarn,
                other => {
                    return Err(ModelError::Config(format!(
                        "unknown RoPE scaling type '{other}' (supported: none, linear, yarn, longrope)"
                    )));
                }
            },
        };
        let mut factor = meta_f32_or(g, &key("factor"), 0.0)?;
        if factor == 0.0 {
            factor = meta_f32_or(g, &format!("{arch}.rope.scale_linear"), 0.0)?;
        }
        if factor < 0.0 {
            return Err(ModelError::Config(format!(
                "RoPE scaling factor {factor} is negative"
            )));
        }
        let mut freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
        if kind == ScalingKind::None {
            freq_scale = 1.0;
        }
        let n_ctx_orig = match meta_usize_or(g, &key("original_context_length"), n_ctx_train)? {
            0 => n_ctx_train,
            n => n,
        };
        let ext_default = if kind == ScalingKind::Yarn { 1.0 } else { 0.0 };
        let ext_factor = match meta_f32_or(g, &key("yarn_ext_factor"), -1.0)? {
            e if e < 0.0 => ext_default,
            e => e,
        };
        let mut attn_factor = meta_f32_or(g, &key("yarn_attn_factor"), 1.0)?;
        if ext_factor != 0.0 {
            // The magnitude correction YaRN wants, divided by the one the
            // rotation itself applies when ext_factor is set (as llama.cpp
            // computes it, so that the two agree to the last bits).
            let mscale = |scale: f32, m: f32| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let factor = 1.0 / freq_scale;
            let log_mul = meta_f32_or(g, &key("yarn_log_multiplier"), 0.0)?;
            attn_factor = if log_mul != 0.0 {
                mscale(factor, 1.0) / mscale(factor, log_mul)
            } else {
                mscale(factor, 1.0)
            };
            attn_factor *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        attn_factor *= meta_f32_or(g, &key("attn_factor"), 1.0)?;
        if !(attn_factor.is_finite() && freq_scale.is_finite()) {
            return Err(ModelError::Config("RoPE scaling is not finite".into()));
        }
        Ok(RopeScalingConfig {
            kind,
            freq_scale,
            n_ctx_orig,
            ext_factor,
            beta_fast: meta_f32_or(g, &key("yarn_beta_fast"), 32.0)?,
            beta_slow: meta_f32_or(g, &key("yarn_beta_slow"), 1.0)?,
            attn_factor,
        })
    }

    /// The kernels' scaling for `dims` rotated dimensions with base `base`
    /// and the per-pair `freq_factors` the file holds, or `None` when
    /// nothing is stretched (the plain rotation, bit for bit).
    pub fn for_rope(
        &self,
        dims: usize,
        base: f32,
        freq_factors: Option<Vec<f32>>,
    ) -> Option<RopeScaling> {
        let trivial = self.freq_scale == 1.0
            && self.ext_factor == 0.0
            && self.attn_factor == 1.0
            && freq_factors.is_none();
        if trivial {
            return None;
        }
        let yarn = (self.ext_factor != 0.0).then(|| {
            Yarn::new(
                dims,
                self.n_ctx_orig,
                base,
                self.beta_fast,
                self.beta_slow,
                self.ext_factor,
            )
        });
        Some(RopeScaling {
            freq_scale: self.freq_scale,
            freq_factors,
            yarn,
            mscale: self.attn_factor,
        })
    }
}
