//! Reasoning models through the chat API, on a synthetic Qwen3 model that
//! carries the real Qwen3 chat template and answers by script (greedy, it
//! writes `<think>Let me think.</think>\n\nParis`; scripts/synthetic_models.py):
//! the reasoning goes to `reasoning_content`, streamed and not, with the
//! content clean of it; `chat_template_kwargs` reach the template;
//! `reasoning_format` raw and hidden; tool calls and schemas after thinking.
//! Needs `make test-models`.

#[path = "api/common.rs"]
mod common;

use std::sync::OnceLock;

use common::*;
use lampo_model::LoadedModel;
use lampo_server::ReasoningFormat;
use serde_json::{Value, json};

const NAME: &str = "qwen3-think";

fn think_model() -> Arc<LoadedModel> {
    static LM: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    LM.get_or_init(|| {
        let path = models_dir().join("synthetic/qwen3-think-tiny.gguf");
        Arc::new(LoadedModel::load(&path).expect("run make test-models"))
    })
    .clone()
}

async fn serve_think(format: ReasoningFormat) -> SocketAddr {
    let server = ServerConfig {
        reasoning_format: format,
        ..ServerConfig::new(NAME)
    };
    serve_model(
        think_model(),
        EngineConfig::new(1024),
        server,
        Limits::default(),
    )
    .await
    .1
}

fn ask(extra: Value) -> Value {
    let mut req = json!({
        "model": NAME,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 60,
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_is_separated_streamed_or_not() {
    let addr = serve_think(ReasoningFormat::Parsed).await;
    let want = Streamed {
        reasoning: "Let me think.".into(),
        content: "Paris".into(),
        calls: Vec::new(),
        finish: "stop".into(),
    };
    let (got, body) = whole(addr, ask(json!({}))).await;
    assert_eq!(got, want, "{body}");
    assert_eq!(stream(addr, ask(json!({}))).await, want);

    // Cut off while thinking: what came is reasoning, the content empty.
    let short = ask(json!({"max_tokens": 3}));
    let want_short = Streamed {
        reasoning: "Let me".into(),
        content: String::new(),
        calls: Vec::new(),
        finish: "length".into(),
    };
    assert_eq!(whole(addr, short.clone()).await.0, want_short);
    assert_eq!(stream(addr, short).await, want_short);

    // Thinking turned off in the template: the prompt ends with an empty
    // block (two tokens longer), and the answer has no reasoning.
    let off = ask(json!({"chat_template_kwargs": {"enable_thinking": false}}));
    let (got, body) = whole(addr, off.clone()).await;
    let (_, on) = whole(addr, ask(json!({}))).await;
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        on["usage"]["prompt_tokens"].as_u64().unwrap() + 4,
        "<think>, \\n\\n, </think>, \\n\\n"
    );
    let plain = Streamed {
        reasoning: String::new(),
        content: "Paris".into(),
        calls: Vec::new(),
        finish: "stop".into(),
    };
    assert_eq!(got, plain, "{body}");
    assert!(
        body["choices"][0]["message"]
            .get("reasoning_content")
            .is_none()
    );
    assert_eq!(stream(addr, off).await, plain);

    // Per request: raw keeps the tags in the content, hidden drops the
    // reasoning.
    let raw = ask(json!({"reasoning_format": "raw"}));
    let tagged = "<think>Let me think.</think>\n\nParis";
    assert_eq!(whole(addr, raw.clone()).await.0.content, tagged);
    assert_eq!(stream(addr, raw).await.content, tagged);
    let hidden = ask(json!({"reasoning_format": "hidden"}));
    assert_eq!(whole(addr, hidden.clone()).await.0, plain);
    assert_eq!(stream(addr, hidden).await, plain);

    // llama.cpp's names for the formats.
    assert_eq!(
        whole(addr, ask(json!({"reasoning_format": "none"})))
            .await
            .0
            .content,
        tagged
    );
    assert_eq!(
        whole(addr, ask(json!({"reasoning_format": "deepseek"})))
            .await
            .0,
        want
    );

    // Bad template arguments and formats are the client's error, named;
    // so are log-probabilities, which would show hidden reasoning.
    for (extra, param) in [
        (
            json!({"reasoning_format": "hidden", "logprobs": true}),
            "logprobs",
        ),
        (json!({"reasoning_format": "verbose"}), "reasoning_format"),
        (
            json!({"chat_template_kwargs": {"add_generation_prompt": false}}),
            "chat_template_kwargs",
        ),
        (json!({"chat_template_kwargs": [1]}), ""),
    ] {
        let (status, body) = post(addr, "/v1/chat/completions", ask(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        if !param.is_empty() {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_default_format_applies() {
    let addr = serve_think(ReasoningFormat::Raw).await;
    let (got, _) = whole(addr, ask(json!({}))).await;
    assert_eq!(got.content, "<think>Let me think.</think>\n\nParis");
    assert_eq!(got.reasoning, "");
    let (got, _) = whole(addr, ask(json!({"reasoning_format": "parsed"}))).await;
    assert_eq!(got.reasoning, "Let me think.");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_and_schemas_follow_the_thinking() {
    let addr = serve_think(ReasoningFormat::Parsed).await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris"]}},
                       "required": ["city"], "additionalProperties": false}}}]);
    let req = ask(json!({
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }));
    let (got, body) = whole(addr, req.clone()).await;
    assert_eq!(got.reasoning, "Let me think.", "{body}");
    assert_eq!(got.finish, "tool_calls", "{body}");
    assert_eq!(got.calls.len(), 1, "{body}");
    assert_eq!(got.calls[0].0, "get_weather");
    let args: Value = serde_json::from_str(&got.calls[0].1).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(stream(addr, req).await, got);

    // The grammar leaves the thinking free, then holds the answer to the schema.
    let schema = json!({"type": "object", "properties": {"city": {"enum": ["Paris"]}},
                        "required": ["city"], "additionalProperties": false});
    let req = ask(json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema}}}));
    let (got, body) = whole(addr, req.clone()).await;
    assert_eq!(got.reasoning, "Let me think.", "{body}");
    let answer: Value =
        serde_json::from_str(&got.content).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(answer, json!({"city": "Paris"}));
    assert_eq!(stream(addr, req).await, got);
}
