//! Architectures no registry ships weights for (Qwen3; Llama 3.x RoPE
//! scaling; YaRN; Gemma 2; Phi-3 with LongRoPE; the Q2_K, Q3_K, IQ4_NL
//! and IQ4_XS formats), checked against llama.cpp
//! on synthetic models: random
//! weights of a realistic scale, real tokenizers (scripts/make-synthetic),
//! and llama.cpp's log-probabilities on the same bytes
//! (scripts/record-synthetic).
//!
//! The measure is the KL divergence of llama.cpp's distribution from
//! Lampo's over llama.cpp's 16 most likely tokens plus one bucket for the
//! rest (a true divergence, never above the full one), averaged over every
//! position of two prompts that run past the scaled models' original
//! context, and the share of positions whose most likely token agrees.
//! The bar is llama.cpp's distance from itself when one of its settings
//! changes (flash attention on, or an f32 KV cache; the larger of the two):
//! an independent implementation cannot be asked to be closer than the
//! reference is to itself, and a wrong rotation, norm or head layout lands
//! orders of magnitude above it (see `check` for the slack and why).

mod common;

use lampo_kernels::Activations;
use lampo_model::Logits;
use serde_json::Value;

fn reference() -> Value {
    serde_json::from_str(include_str!("fixtures/synthetic_reference.json"))
        .expect("synthetic fixture parses")
}

/// The fixture's fingerprint of a file (see scripts/record-synthetic).
fn checksum(bytes: &[u8]) -> String {
    let mut sum = 0u64;
    for (i, word) in bytes.chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..word.len()].copy_from_slice(word);
        sum = sum.wrapping_add(u64::from_le_bytes(w).wrapping_mul(2 * i as u64 + 1));
    }
    format!("{sum:016x}")
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(reference || ours) over the reference's top tokens plus the rest.
fn coarse_kl(top_ids: &[u32], top_logprobs: &[f64], ours: &[f64]) -> f64 {
    let (mut kl, mut p_top, mut q_top) = (0.0, 0.0, 0.0);
    for (&id, &lp) in top_ids.iter().zip(top_logprobs) {
        let (p, lq) = (lp.exp(), ours[id as usize]);
        kl += p * (lp - lq);
        p_top += p;
        q_top += lq.exp();
    }
    let rest_p = (1.0 - p_top).max(1e-12);
    let rest_q = (1.0 - q_top).max(1e-12);
    kl + rest_p * (rest_p.ln() - rest_q.ln())
}

/// How far Lampo is from llama.cpp on record `name`, and the bars.
struct Distance {
    kl: f64,
    same_top: f64,
    kl_bar: f64,
    same_bar: f64,
    total: usize,
    widest_flip: f64,
}

fn check(name: &str, activations: Activations) {
    let d = distance(name, activations, None);
    eprintln!(
        "{name} ({activations:?} activations): mean coarse KL {:.5} (bar {:.5}), same top token {:.2}% (bar {:.2}%) over {} positions; widest llama.cpp lead where the top differs {:.3}",
        d.kl,
        d.kl_bar,
        d.same_top * 100.0,
        d.same_bar * 100.0,
        d.total,
        d.widest_flip
    );
    assert!(
        d.total >= 300,
        "{name}: too few reference positions ({})",
        d.total
    );
    assert!(
        d.kl <= d.kl_bar,
        "{name}: mean KL from llama.cpp {:.5} is above llama.cpp's own {:.5}",
        d.kl,
        d.kl_bar
    );
    assert!(
        d.same_top >= d.same_bar,
        "{name}: the most likely token agrees at {:.2}% of positions, llama.cpp with itself at {:.2}%",
        d.same_top * 100.0,
        d.same_bar * 100.0
    );
}

/// Lampo's distance from llama.cpp's record `name`, run with the record's
/// context or `n_ctx` instead.
fn distance(name: &str, activations: Activations, n_ctx: Option<usize>) -> Distance {
    let all = reference();
    let fixture = &all["models"][name];
    let file = fixture["file"].as_str().unwrap();
    let stem = std::path::Path::new(file).file_stem().unwrap();
    let (mut lm, bytes) = common::load_synthetic(
        stem.to_str().unwrap(),
        lampo_kernels::Cpu::shared().with_activations(activations),
    );
    // The context llama.cpp ran with (LongRoPE files choose their factors by it).
    if let Some(n) = n_ctx.or(fixture["n_ctx"].as_u64().map(|n| n as usize)) {
        lm.model.set_context(n);
    }
    assert_eq!(
        (bytes.len() as u64, checksum(&bytes).as_str()),
        (
            fixture["bytes"].as_u64().unwrap(),
            fixture["checksum"].as_str().unwrap()
        ),
        "{name}: the generated file differs from the one llama.cpp's reference was recorded on \
         (LAMPO_SYNTHETIC_REBUILD=1 scripts/make-synthetic {name}, or scripts/record-synthetic after a change)"
    );
    let n_vocab = lm.model.config.n_vocab;
    let (mut kl_sum, mut same, mut total) = (0f64, 0usize, 0usize);
    // llama.cpp's lead of its top token over the runner-up, at the widest
    // position where Lampo's top token differs.
    let mut widest_flip = 0f64;
    for rec in fixture["records"].as_array().unwrap() {
        let tokens: Vec<u32> = rec["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let prompt = rec["prompt"].as_str().unwrap();
        let ours = lm.tokenizer.encode(prompt, true, true).unwrap();
        assert_eq!(
            ours, tokens,
            "{name}: tokenization of {prompt:?} differs from llama.cpp"
        );
        let mut kv = lm.model.kv_cache(tokens.len());
        let logits = lm.model.forward(&tokens, &mut kv, Logits::All).unwrap();
        for pos in 0..tokens.len() {
            let ids: Vec<u32> = rec["top_ids"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let lps: Vec<f64> = rec["top_logprobs"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let row = &logits[pos * n_vocab..(pos + 1) * n_vocab];
            let ours = log_softmax(row);
            kl_sum += coarse_kl(&ids, &lps, &ours);
            if lampo_engine::sampling::argmax(row) == ids[0] {
                same += 1;
            } else {
                widest_flip = widest_flip.max(lps[0] - lps[1]);
            }
            total += 1;
        }
    }
    let (kl, same_top) = (kl_sum / total as f64, same as f64 / total as f64);
    let variants = fixture["reference_self_distance"].as_object().unwrap();
    // The default path quantizes activations to 8 bits as llama.cpp does:
    // it is held to llama.cpp's own distance, with half again for the
    // sampling error of a 340-position estimate. The f32 path does not
    // round activations at all, and on these random (hence chaotic) models
    // that difference alone measures about three times the reference's
    // self-distance; it is held to four. Ignoring the RoPE scaling of the
    // scaled models measures 9-12 nats: 500-1000 times either bar.
    // On the f32 path the top token flips even where llama.cpp leads by 2
    // nats (rounding differences grow through random layers), so there the
    // divergence alone is the measure.
    let (kl_slack, same_slack) = match activations {
        Activations::Q8 => (1.5, 0.02),
        Activations::F32 => (4.0, 1.0),
    };
    let kl_bar = kl_slack
        * variants
            .values()
            .map(|v| v["mean_coarse_kl"].as_f64().unwrap())
            .fold(0.0, f64::max);
    let same_bar = variants
        .values()
        .map(|v| v["same_top"].as_f64().unwrap())
        .fold(1.0, f64::min)
        - same_slack;
    Distance {
        kl,
        same_top,
        kl_bar,
        same_bar,
        total,
        widest_flip,
    }
}

#[test]
fn qwen3_matches_llama_cpp() {
    check("qwen3-tiny", Activations::Q8);
    check("qwen3-tiny", Activations::F32);
}

#[test]
fn llama3_rope_scaling_matches_llama_cpp() {
    check("llama3-tiny", Activations::Q8);
    check("llama3-tiny", Activations::F32);
}

#[test]
fn yarn_matches_llama_cpp() {
    check("qwen3-yarn-tiny", Activations::Q8);
    check("qwen3-yarn-tiny", Activations::F32);
}

#[test]
fn gemma2_matches_llama_cpp() {
    check("gemma2-tiny", Activations::Q8);
    check("gemma2-tiny", Activations::F32);
}

#[test]
fn phi3_longrope_matches_llama_cpp() {
    // Long factors (a context past the original), then short ones.
    check("phi3-tiny", Activations::Q8);
    check("phi3-tiny", Activations::F32);
    check("phi3-tiny-short", Activations::Q8);
    check("phi3-tiny-short", Activations::F32);
}

#[test]
fn low_bit_formats_match_llama_cpp() {
    for name in [
        "llama-q2k-tiny",
        "llama-q3k-tiny",
        "llama-iq4nl-tiny",
        "llama-iq4xs-tiny",
    ] {
        check(name, Activations::Q8);
        check(name, Activations::F32);
    }
}

#[test]
fn longrope_factors_are_chosen_by_the_context() {
    // The short-factor reference, run with the long factors: far off.
    let d = distance("phi3-tiny-short", Activations::Q8, Some(1024));
    assert!(
        d.kl > 10.0 * d.kl_bar,
        "long factors where llama.cpp used short ones give KL {:.5}, bar {:.5}: \
         the test cannot tell the factors apart",
        d.kl,
        d.kl_bar
    );
}

#[test]
fn the_checksum_sees_a_changed_word() {
    let a = vec![7u8; 4096];
    let mut b = a.clone();
    b[2049] ^= 1;
    assert_ne!(checksum(&a), checksum(&b));
    assert_ne!(checksum(&a), checksum(&a[..4095]));
}
