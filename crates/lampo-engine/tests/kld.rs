//! `lampo perplexity --kl-divergence-base/--kl-divergence`: log-probabilities
//! saved in llama.cpp's format and compared with a model. A model against
//! its own saved file gives a KL divergence of (16-bit) zero and the same
//! top token everywhere; another model with the same vocabulary diverges;
//! damaged files and another vocabulary are refused. (That llama.cpp reads
//! Lampo's files and Lampo llama.cpp's is shown by scripts/kld-vs-llamacpp.)
//! Needs `make test-models`.

use std::path::PathBuf;

use lampo_engine::{kl_divergence, perplexity};
use lampo_model::LoadedModel;

fn load(file: &str) -> LoadedModel {
    let dir = std::env::var_os("LAMPO_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    LoadedModel::load(&dir.join(file)).expect("run make test-models")
}

#[test]
fn saved_log_probabilities_compare_models() {
    let base = load("synthetic/qwen3-tiny.gguf");
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("a Debian file this test reads");
    let tokens = base.tokenizer.encode(&text, true, false).unwrap();
    let (n_ctx, chunks) = (32, 3);
    let mut file = Vec::new();
    let ppl = perplexity(
        &base.model,
        &tokens[..n_ctx * chunks],
        n_ctx,
        None,
        Some(&mut file),
        |_, _, _| {},
    )
    .unwrap();
    let rows = chunks * (n_ctx - 1 - n_ctx / 2);
    let row_bytes = 2 * lampo_engine::kld::row_len(base.model.config.n_vocab);
    assert_eq!(file.len(), 20 + 4 * n_ctx * chunks + rows * row_bytes);

    let same = kl_divergence(&base.model, &mut file.as_slice(), None, |_, _, _| {}).unwrap();
    assert_eq!(same.positions, rows);
    assert!(
        same.mean_kld.abs() < 1e-4 && same.max_kld < 1e-3,
        "{same:?}"
    );
    assert_eq!(same.same_top, 1.0, "{same:?}");
    assert!(
        (same.ppl - ppl.ppl).abs() / ppl.ppl < 1e-6,
        "{same:?} {ppl:?}"
    );
    // The file keeps log-probabilities down to 16 below the best one (a
    // random model puts many targets lower), so the base's perplexity
    // from it is at most the true one.
    assert!(same.ppl_base <= same.ppl * 1.001, "{same:?}");

    // Another model of the same vocabulary (other weights) is far away.
    let other = load("synthetic/qwen3-yarn-tiny.gguf");
    let far = kl_divergence(&other.model, &mut file.as_slice(), None, |_, _, _| {}).unwrap();
    assert!(far.mean_kld > 1.0 && far.same_top < 0.5, "{far:?}");

    // A cut file, another vocabulary and another format are refused.
    let cut = &file[..file.len() - row_bytes / 2];
    let err = kl_divergence(&base.model, &mut &cut[..], None, |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("ends in chunk 3 of 3"), "{err}");
    let smol = load("SmolLM2-135M-Instruct.Q4_1.gguf");
    let err = kl_divergence(&smol.model, &mut file.as_slice(), None, |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("vocabulary of 151936"), "{err}");
    let err = kl_divergence(&base.model, &mut &b"GGUF...."[..], None, |_, _, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("not a log-probability file"),
        "{err}"
    );
}
