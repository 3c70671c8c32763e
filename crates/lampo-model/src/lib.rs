//! Lampo's model layer: the GGUF reader, tokenizers and chat templates built
//! from a file's metadata, and the transformer forward pass, written once
//! against the kernels' `Backend` boundary, over a paged KV store.

pub mod arch;
pub mod chat;
pub mod config;
pub mod gguf;
pub mod model;
pub mod reasoning;
pub mod rope;
pub mod tokenizer;
pub mod tools;

use std::path::Path;

use lampo_kernels::{Backend, Cpu};

pub use chat::{ChatTemplate, Message};
pub use config::Config;
pub use gguf::{Gguf, GgufError, GgufFile};
pub use model::{KvCache, KvStore, Logits, Model, Sequence, kv_block_bytes};
pub use tokenizer::{StreamDecoder, TokenKind, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("architecture '{0}' is not supported (Lampo runs: {list})", list = arch::SUPPORTED.join(", "))]
    UnsupportedArch(String),
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    #[error("metadata key '{key}' should be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Template(String),
    #[error("context full: {needed} positions needed, the context holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    BadToken { token: u32, n_vocab: usize },
}

/// A model ready to use: weights, tokenizer and chat template from one file.
pub struct LoadedModel<B: Backend = Cpu> {
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    /// The model's own chat template, if the file has one.
    pub chat_template: Option<ChatTemplate>,
}

impl LoadedModel<Cpu> {
    /// Loads a model file onto the process's shared CPU backend.
    pub fn load(path: &Path) -> Result<LoadedModel<Cpu>, ModelError> {
        LoadedModel::load_with(path, Cpu::shared())
    }
}

impl<B: Backend> LoadedModel<B> {
    /// Loads a model file onto `backend`.
    pub fn load_with(path: &Path, backend: B) -> Result<LoadedModel<B>, ModelError> {
        let model = Model::load_with(path, backend)?;
        let g = &model.file().gguf;
        let tokenizer = Tokenizer::from_gguf(g)?;
        if tokenizer.vocab_size() < model.config.n_vocab {
            return Err(ModelError::Tokenizer(format!(
                "{} tokens in the vocabulary, but the model has {} embeddings",
                tokenizer.vocab_size(),
                model.config.n_vocab
            )));
        }
        let chat_template = match g
            .get("tokenizer.chat_template")
            .and_then(gguf::Value::as_str)
        {
            Some(src) => {
                let text =
                    |id: Option<u32>| id.map(|t| tokenizer.token_text(t)).unwrap_or_default();
                Some(ChatTemplate::new(
                    src,
                    &text(tokenizer.bos),
                    &text(tokenizer.eos),
                )?)
            }
            None => None,
        };
        Ok(LoadedModel {
            model,
            tokenizer,
            chat_template,
        })
    }
}
