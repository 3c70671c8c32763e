//! Shared by the model-running tests: finding the fetched models.

use std::path::PathBuf;

use lampo_model::LoadedModel;

pub fn models_dir() -> PathBuf {
    std::env::var_os("LAMPO_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// Loads a model fetched by `scripts/fetch-models`, by its short name.
pub fn load(name: &str) -> LoadedModel {
    let file = match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen05b" => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "gemma270m" => "gemma-3-270m-q4_k_m.gguf",
        other => panic!("unknown test model {other}"),
    };
    let path = models_dir().join(file);
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-models {name}",
        path.display()
    );
    LoadedModel::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}
