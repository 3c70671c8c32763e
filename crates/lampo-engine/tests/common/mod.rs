//! Shared by the model-running tests: finding the fetched models.

use std::path::PathBuf;

use lampo_model::LoadedModel;

pub fn models_dir() -> PathBuf {
    std::env::var_os("LAMPO_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// Loads a model fetched by `scripts/fetch-models`, by its short name.
#[allow(dead_code)]
pub fn load(name: &str) -> LoadedModel {
    load_on(name, lampo_kernels::Cpu::shared())
}

/// As `load`, on `backend`.
pub fn load_on(name: &str, backend: lampo_kernels::Cpu) -> LoadedModel {
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
    LoadedModel::load_with(&path, backend).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One request at a time through an engine of its own: the reference the
/// batched runs are compared with.
#[allow(dead_code)]
pub struct Solo {
    pub engine: lampo_engine::Engine,
}

#[allow(dead_code)]
impl Solo {
    pub fn new(lm: &std::sync::Arc<LoadedModel>, n_ctx: usize) -> Solo {
        let config = lampo_engine::EngineConfig {
            max_batch: 1,
            ..lampo_engine::EngineConfig::new(n_ctx)
        };
        Solo {
            engine: lampo_engine::Engine::start(lm.clone(), config).expect("engine starts"),
        }
    }

    /// The text of `prompt`'s continuation and how it ended.
    pub fn run(
        &self,
        prompt: &[u32],
        params: &lampo_engine::GenerateParams,
    ) -> Result<(String, lampo_engine::Done), lampo_engine::Rejected> {
        use lampo_engine::{Event, Request};
        let (tx, rx) = std::sync::mpsc::channel();
        let request = Request {
            prompt: prompt.to_vec(),
            params: params.clone(),
            stop: Vec::new(),
            timeout: None,
            constraint: None,
            tier: lampo_engine::Tier::Default,
            first_token_within: None,
        };
        self.engine
            .submit(request, move |e: Event| tx.send(e).is_ok())?;
        let mut text = String::new();
        for e in rx {
            match e {
                Event::Text { text: t, .. } => text.push_str(&t),
                Event::Done(d) => return Ok((text, d)),
                Event::Started => {}
            }
        }
        panic!("the engine ended a request without telling it")
    }
}

/// Loads a synthetic model written by `scripts/make-synthetic`
/// (`models/synthetic/{name}.gguf`).
#[allow(dead_code)]
pub fn load_synthetic(name: &str, backend: lampo_kernels::Cpu) -> (LoadedModel, Vec<u8>) {
    let path = models_dir().join("synthetic").join(format!("{name}.gguf"));
    assert!(
        path.exists(),
        "{} missing: run scripts/make-synthetic",
        path.display()
    );
    let bytes = std::fs::read(&path).unwrap();
    let lm = LoadedModel::load_with(&path, backend).unwrap_or_else(|e| panic!("{name}: {e}"));
    (lm, bytes)
}
