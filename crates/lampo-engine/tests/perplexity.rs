//! Lampo's perplexity stays within 1% of llama.cpp's on the same files with
//! the same number of chunks (figures from scripts/perplexity-vs-llamacpp).

mod common;

use lampo_engine::perplexity;
use serde_json::Value;

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    format!("{h:016x}")
}

fn check(model: &str) {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/perplexity_reference.json")).unwrap();
    let lm = common::load(model);
    let mut checked = 0;
    for rec in fixture["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == model)
    {
        let path = rec["text"].as_str().unwrap();
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (a Debian file this test reads)"));
        assert_eq!(
            fnv1a64(&bytes),
            rec["fnv1a64"].as_str().unwrap(),
            "{path} differs from the recorded one"
        );
        let mut text = String::from_utf8(bytes).unwrap();
        if text.ends_with('\n') {
            text.pop(); // as llama.cpp reads prompt files
        }
        let chunks = rec["chunks"].as_u64().unwrap() as usize;
        let mut tokens = lm.tokenizer.encode(&text, true, false).unwrap();
        tokens.truncate(chunks * 512);
        let bos = if lm.tokenizer.add_bos {
            lm.tokenizer.bos
        } else {
            None
        };
        let report = perplexity(&lm.model, &tokens, 512, bos, None, |_, _, _| {}).unwrap();
        let reference = rec["llama_cpp_ppl"].as_f64().unwrap();
        let diff = report.ppl / reference - 1.0;
        eprintln!(
            "{model} {path}: {} chunks, Lampo {:.4}, llama.cpp {reference:.4} ({:+.2}%)",
            report.chunks,
            report.ppl,
            diff * 100.0
        );
        assert_eq!(report.chunks, chunks, "{model} {path}: chunk counts differ");
        assert!(
            diff.abs() < 0.01,
            "{model} {path}: perplexity {:.4} is not within 1% of {reference:.4}",
            report.ppl
        );
        checked += 1;
    }
    assert!(checked >= 2, "{model}: expected an English and a code text");
}

#[test]
fn smollm2_perplexity_within_1_percent_of_llama_cpp() {
    check("smollm2");
}

#[test]
fn qwen05b_perplexity_within_1_percent_of_llama_cpp() {
    check("qwen05b");
}

#[test]
fn gemma270m_perplexity_within_1_percent_of_llama_cpp() {
    check("gemma270m");
}
