//! Lampo against llama.cpp on the same prompts: the tokenizer must produce
//! the same ids, and under teacher forcing the most likely next token must
//! agree at (almost) every position. Golden data: scripts/record-golden.
//!
//! The bar is 98% of positions, or llama.cpp's own agreement with itself
//! when one of its settings changes (flash attention, f32 KV cache) where
//! that is lower: SmolLM2's near-ties are so dense that the reference
//! reproduces its own argmax only about 96% of the time. Every disagreement
//! must also be a near-tie in llama.cpp's logits; a real bug disagrees with
//! confidence: its margin must stay within the widest llama.cpp itself
//! flips under those setting changes (and never above 0.5 where that is
//! smaller). Both activation paths are held to this.

mod common;

use lampo_engine::sampling::argmax;
use lampo_kernels::Activations;
use lampo_model::Logits;
use serde_json::Value;

fn check_model(name: &str, activations: Activations) {
    let golden: Value = serde_json::from_str(include_str!("fixtures/golden_argmax.json"))
        .expect("golden fixture parses");
    let lm = common::load_on(
        name,
        lampo_kernels::Cpu::shared().with_activations(activations),
    );
    let n_vocab = lm.model.config.n_vocab;
    let (mut agree, mut total) = (0usize, 0usize);
    let mut worst_margin = 0f64;
    let mut report = Vec::new();
    for rec in golden["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == name)
    {
        let ids = |k: &str| -> Vec<u32> {
            rec[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (tokens, want) = (ids("tokens"), ids("argmax"));
        assert!(tokens.len() >= 64, "golden prompts are at least 64 tokens");
        let prompt = rec["prompt"].as_str().unwrap();
        let ours = lm.tokenizer.encode(prompt, true, true).unwrap();
        assert_eq!(
            ours, tokens,
            "{name}: tokenization of {prompt:?} differs from llama.cpp"
        );

        let mut kv = lm.model.kv_cache(tokens.len());
        let logits = lm.model.forward(&tokens, &mut kv, Logits::All).unwrap();
        for (pos, expected) in want.iter().enumerate() {
            let got = argmax(&logits[pos * n_vocab..(pos + 1) * n_vocab]);
            total += 1;
            if got == *expected {
                agree += 1;
            } else {
                worst_margin = worst_margin.max(rec["margin"][pos].as_f64().unwrap());
                report.push(format!(
                    "pos {pos}: lampo {got}, llama.cpp {expected} (llama.cpp margin {})",
                    rec["margin"][pos]
                ));
            }
        }
    }
    let rate = agree as f64 / total as f64;
    let reference: Vec<f64> = golden["reference_self_agreement"][name]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // 8-bit activations round different values than llama.cpp's 8-bit
    // activations do (every float upstream differs a little), which adds
    // near-tie flips of its own: that path may sit one point lower. A
    // broken kernel costs tens of points, and perplexity (tests/perplexity.rs)
    // bounds the quality of the path itself.
    let slack = if activations == Activations::Q8 {
        0.01
    } else {
        0.0
    };
    let bar = reference.iter().copied().fold(0.98, f64::min) - slack;
    eprintln!(
        "{name} ({activations:?} activations): argmax agreement {agree}/{total} = {:.2}% (bar {:.2}%; llama.cpp against itself: {reference:?}); largest llama.cpp margin at a disagreement {worst_margin}\n{}",
        rate * 100.0,
        bar * 100.0,
        report.join("\n")
    );
    assert!(total >= 400, "{name}: too few golden positions ({total})");
    assert!(
        rate >= bar,
        "{name}: argmax agrees on only {:.2}% of positions:\n{}",
        rate * 100.0,
        report.join("\n")
    );
    let margin_bound = golden["reference_worst_margin"][name]
        .as_f64()
        .unwrap()
        .max(0.5);
    assert!(
        worst_margin <= margin_bound,
        "{name}: a disagreement where llama.cpp's top choice led by {worst_margin} (bound {margin_bound})"
    );
}

// The default: 8-bit activations and integer dot products.
#[test]
fn smollm2_matches_llama_cpp() {
    check_model("smollm2", Activations::Q8);
}

#[test]
fn qwen05b_matches_llama_cpp() {
    check_model("qwen05b", Activations::Q8);
}

#[test]
fn gemma270m_matches_llama_cpp() {
    check_model("gemma270m", Activations::Q8);
}

#[test]
fn smollm2_matches_llama_cpp_with_f32_activations() {
    check_model("smollm2", Activations::F32);
}

#[test]
fn qwen05b_matches_llama_cpp_with_f32_activations() {
    check_model("qwen05b", Activations::F32);
}

#[test]
fn gemma270m_matches_llama_cpp_with_f32_activations() {
    check_model("gemma270m", Activations::F32);
}
