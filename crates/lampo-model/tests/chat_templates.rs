//! The models' own chat templates rendered by Lampo must give exactly the
//! text Hugging Face's jinja2 rendering gives (scripts/record-chat-reference),
//! template arguments such as Qwen3's `enable_thinking` included.

use std::path::PathBuf;

use lampo_model::gguf::Value;
use lampo_model::{ChatTemplate, GgufFile, Message};

fn template_of(name: &str) -> ChatTemplate {
    let file = match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen05b" => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen3" => "synthetic/qwen3-think-tiny.gguf",
        "llama31" => "synthetic/llama31-tools-tiny.gguf",
        "mistral" => "synthetic/mistral-tools-tiny.gguf",
        "mistral3" => "synthetic/mistral3-tools-tiny.gguf",
        other => panic!("unknown model {other}"),
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(file);
    assert!(path.exists(), "run make test-models");
    let g = GgufFile::open(&path).unwrap();
    let src = g
        .gguf
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .unwrap();
    // The special tokens by name, as Hugging Face passes them.
    let tokens = g
        .gguf
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    let special = |key: &str| {
        let id = g.gguf.get(key).and_then(Value::as_u64);
        id.and_then(|i| tokens[i as usize].as_str())
            .unwrap_or_default()
            .to_string()
    };
    ChatTemplate::new(
        src,
        &special("tokenizer.ggml.bos_token_id"),
        &special("tokenizer.ggml.eos_token_id"),
    )
    .unwrap()
}

#[test]
fn renders_exactly_like_hugging_face() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/chat_reference.json")).expect("fixture parses");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 25);
    for (i, case) in cases.iter().enumerate() {
        let name = case["model"].as_str().unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let tools = case.get("tools").filter(|t| !t.is_null());
        let kwargs = case
            .get("kwargs")
            .and_then(|k| k.as_object().cloned())
            .unwrap_or_default();
        let got = template_of(name)
            .render_with(
                &messages,
                case["add_generation_prompt"].as_bool().unwrap(),
                tools,
                &kwargs,
            )
            .unwrap_or_else(|e| panic!("case {i} ({name}): {e}"));
        assert_eq!(got, case["expected"].as_str().unwrap(), "case {i} ({name})");
    }
}

#[test]
fn generation_prompt_is_where_the_reply_starts() {
    let t = template_of("qwen05b");
    let with = t.render(&[Message::new("user", "hi")], true, None).unwrap();
    let without = t
        .render(&[Message::new("user", "hi")], false, None)
        .unwrap();
    assert_eq!(
        with.strip_prefix(without.as_str()),
        Some("<|im_start|>assistant\n")
    );
}

#[test]
fn qwen3_reasons_and_its_template_turns_thinking_off() {
    let t = template_of("qwen3");
    assert_eq!(t.reasoning(), Some(lampo_model::reasoning::THINK));
    assert!(template_of("qwen05b").reasoning().is_none());
    let user = [Message::new("user", "hi")];
    let on = t.render(&user, true, None).unwrap();
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("enable_thinking".into(), false.into());
    let off = t.render_with(&user, true, None, &kwargs).unwrap();
    assert_eq!(
        off.strip_prefix(on.as_str()),
        Some("<think>\n\n</think>\n\n")
    );
    // The variables the server sets cannot be replaced.
    kwargs.insert("messages".into(), serde_json::json!([]));
    let err = t.render_with(&user, true, None, &kwargs).unwrap_err();
    assert!(err.to_string().contains("'messages'"), "{err}");
}
