//! Hyperparameters read from GGUF metadata.

use crate::ModelError;
use crate::arch::{self, ArchSpec};
use crate::gguf::{Gguf, Value};
use crate::rope::RopeScalingConfig;

/// The shape of a decoder-only transformer, as its GGUF file describes it.
#[derive(Clone, Debug)]
pub struct Config {
    /// `general.architecture`, e.g. `llama` or `qwen2`.
    pub arch: String,
    pub name: Option<String>,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    /// The context length the model was trained for.
    pub n_ctx_train: usize,
    pub rope_base: f32,
    /// Dimensions of each head that are rotated.
    pub rope_dims: usize,
    /// Context extension of the rotation (linear, YaRN), as the metadata says.
    pub rope_scaling: RopeScalingConfig,
    pub rms_eps: f32,
    /// What differs between architecture families.
    pub spec: ArchSpec,
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Config, ModelError> {
        let arch = meta_str(g, "general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let spec = arch::spec_for(&arch, g)?;
        let n_embd = meta_usize(g, &key("embedding_length"))?;
        let n_head = meta_usize(g, &key("attention.head_count"))?;
        let n_head_kv = meta_usize_or(g, &key("attention.head_count_kv"), n_head)?;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(ModelError::Config(format!(
                "{n_head} attention heads cannot be shared by {n_head_kv} key/value heads"
            )));
        }
        let head_dim = meta_usize_or(g, &key("attention.key_length"), n_embd / n_head)?;
        let value_dim = meta_usize_or(g, &key("attention.value_length"), head_dim)?;
        if value_dim != head_dim || head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::Config(format!(
                "unsupported head sizes: key {head_dim}, value {value_dim} (must be equal and even)"
            )));
        }
        let rope_dims = meta_usize_or(g, &key("rope.dimension_count"), head_dim)?;
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ModelError::Config(format!(
                "rope over {rope_dims} of {head_dim} head dimensions"
            )));
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let n_vocab = embd.shape.get(1).copied().unwrap_or(0) as usize;
        let n_ctx_train = meta_usize(g, &key("context_length"))?;
        if meta_f32_or(g, &key("attention.scale"), 0.0)? != 0.0 {
            return Err(ModelError::Config(format!(
                "{} (a custom attention scale) is not supported",
                key("attention.scale")
            )));
        }
        let config = Config {
            name: g
                .get("general.name")
                .and_then(Value::as_str)
                .map(str::to_string),
            n_layer: meta_usize(g, &key("block_count"))?,
            n_embd,
            n_ff: meta_usize(g, &key("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rope_base: meta_f32_or(g, &key("rope.freq_base"), 10_000.0)?,
            rope_dims,
            rope_scaling: RopeScalingConfig::from_gguf(g, &arch, n_ctx_train)?,
            rms_eps: meta_f32(g, &key("attention.layer_norm_rms_epsilon"))?,
            spec,
            arch,
        };
        if config.n_layer == 0 || config.n_embd == 0 || config.n_ff == 0 || config.n_vocab == 0 {
            return Err(ModelError::Config(format!(
                "empty model: {} layers, width {}, feed-forward {}, vocabulary {}",
                config.n_layer, config.n_embd, config.n_ff, config.n_vocab
            )));
        }
        Ok(config)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

pub(crate) fn meta<'a>(g: &'a Gguf, key: &str) -> Result<&'a Value, ModelError> {
    g.get(key)
        .ok_or_else(|| ModelError::MissingKey(key.to_string()))
}

fn wrong_type(key: &str, want: &str, v: &Value) -> ModelError {
    ModelError::WrongType {
        key: key.to_string(),
        expected: want.to_string(),
        found: v.type_name().to_string(),
    }
}

pub(crate) fn meta_str<'a>(g: &'a Gguf, key: &str) -> Result<&'a str, ModelError> {
    let v = meta(g, key)?;
    v.as_str().ok_or_else(|| wrong_type(key, "string", v))
}

pub(crate) fn meta_usize(g: &Gguf, key: &str) -> Result<usize, ModelError> {
    let v = meta(g, key)?;
    // Anything beyond 2^32 is not a plausible model dimension.
    v.as_u64()
        .filter(|&n| n <= u32::MAX as u64)
        .map(|n| n as usize)
        .ok_or_else(|| wrong_type(key, "unsigned integer below 2^32", v))
}

pub(crate) fn meta_usize_or(g: &Gguf, key: &str, default: usize) -> Result<usize, ModelError> {
    if g.get(key).is_some() {
        meta_usize(g, key)
    } else {
        Ok(default)
    }
}

pub(crate) fn meta_f32(g: &Gguf, key: &str) -> Result<f32, ModelError> {
    let v = meta(g, key)?;
    v.as_f64()
        .map(|f| f as f32)
        .filter(|f| f.is_finite())
        .ok_or_else(|| wrong_type(key, "finite number", v))
}

pub(crate) fn meta_f32_or(g: &Gguf, key: &str, default: f32) -> Result<f32, ModelError> {
    if g.get(key).is_some() {
        meta_f32(g, key)
    } else {
        Ok(default)
    }
}
