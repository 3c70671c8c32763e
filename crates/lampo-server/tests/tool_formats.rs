//! Tool calls in formats other than Hermes, through the chat API: Llama
//! 3.x's JSON calls, Mistral's `[TOOL_CALLS]` lists and its later
//! `[TOOL_CALLS]name[ARGS]{...}`, on synthetic models that carry the real
//! Llama 3.1, Mistral Nemo and Mistral Small 3.2 chat templates (random
//! weights, so the calls are the grammar's doing; the parsers' own tests
//! cover free text). Needs `make test-models`.

#[path = "api/common.rs"]
mod common;

use std::sync::OnceLock;

use common::*;
use lampo_model::LoadedModel;
use serde_json::{Value, json};

const NAME: &str = "tools";

fn synthetic(file: &str) -> Arc<LoadedModel> {
    let path = models_dir().join("synthetic").join(file);
    Arc::new(LoadedModel::load(&path).expect("run make test-models"))
}

fn llama31() -> Arc<LoadedModel> {
    static LM: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    LM.get_or_init(|| synthetic("llama31-tools-tiny.gguf"))
        .clone()
}

fn mistral() -> Arc<LoadedModel> {
    static LM: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    LM.get_or_init(|| synthetic("mistral-tools-tiny.gguf"))
        .clone()
}

fn mistral3() -> Arc<LoadedModel> {
    static LM: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    LM.get_or_init(|| synthetic("mistral3-tools-tiny.gguf"))
        .clone()
}

async fn serve_on(lm: Arc<LoadedModel>) -> SocketAddr {
    let server = ServerConfig::new(NAME);
    serve_model(lm, EngineConfig::new(2048), server, Limits::default())
        .await
        .1
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                           "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                           "required": ["zone"], "additionalProperties": false}}},
    ])
}

fn ask(extra: Value) -> Value {
    let mut req = json!({
        "model": NAME,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "temperature": 0,
        "max_tokens": 40,
        "tools": tools(),
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn llama3_json_calls_are_constrained_parsed_and_streamed() {
    calls_are_constrained_parsed_and_streamed(llama31(), 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mistral_tool_call_lists_are_constrained_parsed_and_streamed() {
    calls_are_constrained_parsed_and_streamed(mistral(), 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mistral_named_calls_are_constrained_parsed_and_streamed() {
    // One call per answer: a random model would go on calling to the token
    // limit (the parser's tests cover several).
    calls_are_constrained_parsed_and_streamed(mistral3(), 1).await;
}

/// Named and required calls (at most `most` in one answer; with
/// `parallel_tool_calls` false when that is one), streamed as they are whole, and
/// a second turn with the call and its result; then `auto`.
async fn calls_are_constrained_parsed_and_streamed(lm: Arc<LoadedModel>, most: usize) {
    let format = lm.chat_template.as_ref().unwrap().tool_format();
    let mistral = format.is_some_and(|f| f.short_call_ids());
    let addr = serve_on(lm).await;
    for (choice, names) in [
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            &["get_time"][..],
        ),
        (json!("required"), &["get_weather", "get_time"][..]),
    ] {
        let named = choice.is_object();
        let req = ask(json!({"tool_choice": choice, "parallel_tool_calls": most > 1}));
        let (got, body) = whole(addr, req.clone()).await;
        assert_eq!(got.finish, "tool_calls", "{body}");
        let n = got.calls.len();
        assert!(n >= 1 && n <= if named { 1 } else { most }, "{body}");
        for (name, args) in &got.calls {
            assert!(names.contains(&name.as_str()), "{body}");
            let args: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{e}: {body}"));
            let key = if name == "get_time" { "zone" } else { "city" };
            assert!(
                args[key].is_string() && args.as_object().unwrap().len() == 1,
                "{body}"
            );
        }
        assert_eq!(got.content, "", "{body}");
        let message = &body["choices"][0]["message"];
        let id = message["tool_calls"][0]["id"].as_str().unwrap();
        if mistral {
            // Mistral's template takes back only ids of nine letters and digits.
            assert!(
                id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{id}"
            );
        }
        assert_eq!(stream(addr, req).await, got);

        // The call and its result go back into the template for the next turn.
        let turn = json!({
            "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                message,
                {"role": "tool", "tool_call_id": id, "content": "18 C"},
            ],
            "tool_choice": "none",
        });
        let (status, body) = post(addr, "/v1/chat/completions", ask(turn)).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["choices"][0]["message"]["content"].is_string(),
            "{body}"
        );
    }

    // auto: the model may answer in text or call.
    let (got, body) = whole(addr, ask(json!({"tool_choice": "auto"}))).await;
    if got.calls.is_empty() {
        assert!(!got.content.is_empty(), "{body}");
    } else {
        assert_eq!(got.finish, "tool_calls", "{body}");
    }
}

#[test]
fn the_templates_teach_their_formats() {
    assert_eq!(
        mistral3().chat_template.as_ref().unwrap().tool_format(),
        Some(lampo_model::tools::ToolFormat::MistralNamed)
    );
    assert_eq!(
        mistral().chat_template.as_ref().unwrap().tool_format(),
        Some(lampo_model::tools::ToolFormat::MistralList)
    );
    let lm = llama31();
    let t = lm.chat_template.as_ref().unwrap();
    assert_eq!(
        t.tool_format(),
        Some(lampo_model::tools::ToolFormat::Llama3Json)
    );
    // <|eot_id|> (the file's end token) and <|eom_id|> end a turn.
    for text in ["<|eot_id|>", "<|eom_id|>"] {
        let ids = lm.tokenizer.encode(text, false, true).unwrap();
        assert_eq!(ids.len(), 1, "{text}");
        assert!(lm.tokenizer.is_eog(ids[0]), "{text}");
    }
}
