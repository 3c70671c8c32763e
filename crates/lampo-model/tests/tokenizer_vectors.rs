//! Tokenization checked against llama.cpp's own test vectors: vocab-only GGUF
//! files with inputs and the ids llama.cpp produces (add_special = false,
//! parse_special = false, as its test-tokenizer-0 runs them).
//! Fetched by `scripts/fetch-models vocab`.

use std::path::PathBuf;

use lampo_model::{Gguf, Tokenizer};

fn vocab_dir() -> PathBuf {
    let models = std::env::var_os("LAMPO_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let dir = models.join("vocab");
    assert!(
        dir.join(".complete").exists(),
        "tokenizer test vectors missing: run scripts/fetch-models vocab"
    );
    dir
}

/// Returns (cases, mismatches as text).
fn check_vocab(name: &str) -> (usize, Vec<String>) {
    let dir = vocab_dir();
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let bytes = std::fs::read(&base).unwrap();
    let gguf = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<&str> = out.lines().collect();
    // The input file ends with a separator, so the last split is empty.
    assert_eq!(
        inputs.len() - 1,
        expected.len(),
        "{name}: inputs and outputs disagree in count"
    );
    let mut bad = Vec::new();
    for (text, want) in inputs.iter().zip(&expected) {
        let want: Vec<u32> = want
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        let got = tok.encode(text, false, false).unwrap();
        if got != want {
            bad.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    (expected.len(), bad)
}

fn assert_all_match(name: &str) {
    let (n, bad) = check_vocab(name);
    assert!(
        bad.is_empty(),
        "{} of {n} cases differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn qwen2_vectors() {
    assert_all_match("qwen2");
}

#[test]
fn gpt2_vectors() {
    assert_all_match("gpt-2");
}

#[test]
fn llama_bpe_vectors() {
    assert_all_match("llama-bpe");
}

/// SmolLM2 uses StarCoder's pre-tokenizer (digits split one by one).
#[test]
fn starcoder_vectors() {
    assert_all_match("starcoder");
}

#[test]
fn refact_vectors() {
    assert_all_match("refact");
}

#[test]
fn llama_spm_vectors() {
    assert_all_match("llama-spm");
}

#[test]
fn phi3_vectors() {
    assert_all_match("phi-3");
}

#[test]
fn command_r_vectors() {
    assert_all_match("command-r");
}
