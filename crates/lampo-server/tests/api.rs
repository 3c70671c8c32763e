//! The API over real HTTP against SmolLM2: shapes, streaming, stop strings,
//! seeds, and every error status. Needs `scripts/fetch-models smollm2`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use lampo_engine::{Engine, EngineConfig};
use lampo_model::LoadedModel;
use lampo_server::{AppState, MAX_BODY_BYTES, router};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODEL: &str = "smollm2";

fn model_path() -> PathBuf {
    let dir = std::env::var_os("LAMPO_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn loaded() -> Arc<LoadedModel> {
    static LM: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    LM.get_or_init(|| {
        Arc::new(LoadedModel::load(&model_path()).expect("run scripts/fetch-models smollm2"))
    })
    .clone()
}

/// A server on a free port; `ctx` tokens of context, an optional API key.
async fn serve(ctx: usize, api_key: Option<&str>) -> SocketAddr {
    serve_with(EngineConfig::new(ctx), api_key).await
}

/// As `serve`, with the engine configured by `config`.
async fn serve_with(config: EngineConfig, api_key: Option<&str>) -> SocketAddr {
    serve_state(config, api_key).await.1
}

/// As `serve_with`, also returning the server's state (to read the
/// engine's load or cut requests).
async fn serve_state(config: EngineConfig, api_key: Option<&str>) -> (Arc<AppState>, SocketAddr) {
    let state = Arc::new(AppState::new(MODEL.into(), api_key.map(String::from)));
    let _ = state.engine.set(Engine::start(loaded(), config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let state = state.clone();
        async move { axum::serve(listener, router(state)).await }
    });
    (state, addr)
}

/// A `logit_bias` that bans every end-of-generation token, so that only
/// `max_tokens` (or a cut) ends a request.
fn no_end_bias() -> serde_json::Map<String, Value> {
    let lm = loaded();
    (0..lm.model.config.n_vocab as u32)
        .filter(|&t| lm.tokenizer.is_eog(t))
        .map(|t| (t.to_string(), json!(-100)))
        .collect()
}

/// One HTTP/1.1 request; returns the status and the (de-chunked) body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// As `http`, with the response head.
async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a huge body.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, &[], body.to_string().as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads of an event stream.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// A streamed chat request's text: its content deltas joined.
async fn streamed_text(addr: SocketAddr, request: &Value) -> String {
    let (status, body) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        request.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    events(&body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let c: Value = serde_json::from_str(e).ok()?;
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

fn chat(content: &str, extra: Value) -> Value {
    let mut req = json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

#[tokio::test(flavor = "multi_thread")]
async fn chat_answers_with_exact_usage_and_streams_the_same_text() {
    let addr = serve(2048, None).await;
    let (status, r) = post(addr, "/v1/chat/completions", chat(QUESTION, json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    let text = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    // Usage: the prompt as the template renders it, and the tokens generated.
    let lm = loaded();
    let rendered = lm
        .chat_template
        .as_ref()
        .unwrap()
        .render(&[lampo_model::Message::new("user", QUESTION)], true, None)
        .unwrap();
    let prompt_tokens = lm.tokenizer.encode(&rendered, false, true).unwrap().len();
    let u = &r["usage"];
    assert_eq!(u["prompt_tokens"], prompt_tokens);
    let completion = u["completion_tokens"].as_u64().unwrap();
    // The text plus the end-of-turn token.
    assert_eq!(
        completion as usize,
        lm.tokenizer.encode(&text, false, false).unwrap().len() + 1
    );
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        prompt_tokens as u64 + completion
    );

    let req = chat(
        QUESTION,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, body) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        req.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(streamed, text);
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "stop");
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(chunks.last().unwrap()["usage"], r["usage"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_strings_cut_output_even_across_tokens_and_in_streams() {
    let addr = serve(2048, None).await;
    let (_, r) = post(addr, "/v1/chat/completions", chat(QUESTION, json!({}))).await;
    let text = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // "al of" spans the tokens "capital" and " of".
    let at = text.find("al of").expect("the answer names the capital");
    let want = &text[..at];
    let (_, r) = post(
        addr,
        "/v1/chat/completions",
        chat(QUESTION, json!({"stop": ["zzz", "al of"]})),
    )
    .await;
    assert_eq!(r["choices"][0]["message"]["content"], want);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let req = chat(QUESTION, json!({"stop": "al of", "stream": true}));
    let streamed = streamed_text(addr, &req).await;
    assert_eq!(streamed, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_seeds_n_and_length() {
    let addr = serve(2048, None).await;
    let req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 7});
    let (status, a) = post(addr, "/v1/completions", req.clone()).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = post(addr, "/v1/completions", req).await;
    assert_eq!(
        a["choices"][0]["text"], b["choices"][0]["text"],
        "same seed, same text"
    );
    assert_eq!(a["choices"][0]["finish_reason"], "length");
    assert_eq!(a["usage"]["completion_tokens"], 12);
    assert_eq!(a["object"], "text_completion");
    let req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0, "seed": 3, "n": 3});
    let (_, r) = post(addr, "/v1/completions", req).await;
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_eq!(
        choices
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(r["usage"]["completion_tokens"], 24);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let addr = serve(64, None).await;
    let check = |status: u16, body: &str, want: u16| {
        assert_eq!(status, want, "{body}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(
            e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
            "{body}"
        );
    };
    let cases: Vec<(&str, String, u16)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400),
        ("/v1/chat/completions", "[1, 2]".into(), 400),
        (
            "/v1/chat/completions",
            json!({"model": MODEL}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": "hi"}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": []}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"temperature": 5})).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"top_p": -1})).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 0})).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"n": 0})).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"logit_bias": {"abc": 1}})).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"logit_bias": {"99999999": 1}})).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            chat(&"word ".repeat(200), json!({})).to_string(),
            400,
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": 5}).to_string(),
            400,
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": ""}).to_string(),
            400,
        ),
        ("/detokenize", json!({"tokens": [1, -2]}).to_string(), 400),
    ];
    for (path, body, want) in cases {
        let (status, text) = http(addr, "POST", path, &[], body.as_bytes()).await;
        check(status, &text, want);
    }
    let (status, text) = post(
        addr,
        "/v1/chat/completions",
        chat(&"word ".repeat(200), json!({})),
    )
    .await;
    let msg = text["error"]["message"].as_str().unwrap();
    assert!(msg.contains("64") && msg.contains("prompt has"), "{msg}");
    assert_eq!(status, 400);
    let (status, text) = http(addr, "GET", "/v1/nothing", &[], b"").await;
    check(status, &text, 404);
    let huge = vec![b' '; MAX_BODY_BYTES + 10];
    let (status, text) = http(addr, "POST", "/v1/completions", &[], &huge).await;
    check(status, &text, 413);
    // The server still answers after all of that.
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        chat("hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_is_required_when_set_and_health_is_open() {
    let addr = serve(256, Some("sekret")).await;
    let body = chat("hi", json!({"max_tokens": 2})).to_string();
    let (status, text) = http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes()).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let (status, _) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer wrong")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sekret")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = http(addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200);
    let (status, text) = http(
        addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sekret")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["data"][0]["id"],
        MODEL
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_is_503_until_the_model_loads_and_tokens_round_trip() {
    let state = Arc::new(AppState::new(MODEL.into(), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let state = state.clone();
        async move { axum::serve(listener, router(state)).await }
    });
    let (status, _) = http(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(status, 503);
    let (status, _) = post(addr, "/v1/chat/completions", chat("hi", json!({}))).await;
    assert_eq!(status, 503);
    let _ = state
        .engine
        .set(Engine::start(loaded(), EngineConfig::new(256)).unwrap());
    let (status, _) = http(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(status, 200);
    let (status, t) = post(addr, "/tokenize", json!({"prompt": "Hello, world"})).await;
    assert_eq!(status, 200);
    let (_, d) = post(addr, "/detokenize", json!({"tokens": t["tokens"]})).await;
    assert_eq!(d["prompt"], "Hello, world");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_latency_histograms_and_load_and_request_ids_echo() {
    let addr = serve(512, None).await;
    let body = chat("hi", json!({"max_tokens": 4})).to_string();
    let (status, head, _) = http_full(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("x-request-id", "trace-42")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: trace-42"),
        "{head}"
    );
    let (_, head, _) = http_full(addr, "GET", "/health", &[], b"").await;
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: req-"),
        "{head}"
    );
    // The same chat again: its prompt's full blocks come from the prefix cache.
    let (status, _) = post(addr, "/v1/chat/completions", chat(QUESTION, json!({}))).await;
    assert_eq!(status, 200);
    let (status, _) = post(addr, "/v1/chat/completions", chat(QUESTION, json!({}))).await;
    assert_eq!(status, 200);
    // `ignore_eos` runs to `max_tokens`.
    let (status, r) = post(
        addr,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "The end.", "max_tokens": 30, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 30, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let (status, text) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("vllm:prefix_cache_hits_total") >= 16.0, "{text}");
    assert!(value("vllm:prefix_cache_queries_total") > value("vllm:prefix_cache_hits_total"));
    assert!(value("lampo_prefill_tokens_total") > 0.0);
    assert_eq!(value("vllm:num_preemptions_total"), 0.0);
    for name in [
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_sum",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:spec_decode_num_draft_tokens_total{model_name=\"smollm2\",proposer=\"ngram\"}",
        "vllm:spec_decode_num_accepted_tokens_total{model_name=\"smollm2\",proposer=\"draft\"}",
        "lampo_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logprobs_cover_the_output_tokens_in_both_apis_and_echo_prepends_the_prompt() {
    let addr = serve(1024, None).await;
    let (status, r) = post(
        addr,
        "/v1/chat/completions",
        chat(QUESTION, json!({"logprobs": true, "top_logprobs": 3})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let joined: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text, "the tokens spell the answer");
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(
            lp <= 0.0
                && top
                    .windows(2)
                    .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64())
        );
        // Greedy: the chosen token is the most likely one.
        assert_eq!(e["token"], top[0]["token"]);
        assert!((lp - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(e["bytes"].is_array());
    }
    // Streamed: the same entries, spread over the chunks.
    let req = chat(
        QUESTION,
        json!({"logprobs": true, "top_logprobs": 3, "stream": true}),
    );
    let (_, body) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        req.to_string().as_bytes(),
    )
    .await;
    let streamed: Vec<Value> = events(&body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let c: Value = serde_json::from_str(e).ok()?;
            c["choices"].get(0)?["logprobs"]["content"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect();
    assert_eq!(&streamed, content);

    let req = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let (status, r) = post(addr, "/v1/completions", req).await;
    assert_eq!(status, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    let lp = &r["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), tokens.len());
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_object().unwrap().len() <= 2)
    );

    let req = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "echo": true});
    let (_, r) = post(addr, "/v1/completions", req).await;
    assert!(
        r["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("The capital of France is"),
        "{r}"
    );

    for (path, body) in [
        (
            "/v1/chat/completions",
            chat("hi", json!({"logprobs": true, "top_logprobs": 21})),
        ),
        (
            "/v1/chat/completions",
            chat("hi", json!({"top_logprobs": 2})),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": 6}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": 1, "echo": true}),
        ),
    ] {
        let (status, r) = post(addr, path, body).await;
        assert_eq!(status, 400, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_the_routes_and_request_shapes() {
    let addr = serve(256, None).await;
    let (status, text) = http(addr, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let served = [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/models", "get"),
        ("/tokenize", "post"),
        ("/detokenize", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in served {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    // Every documented operation exists: none answers 404 or 405.
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let (status, body) = http(addr, &method.to_uppercase(), path, &[], b"{}").await;
            assert!(
                status != 404 && status != 405,
                "{method} {path}: {status} {body}"
            );
        }
    }
    // The request schemas carry OpenAI's field names, flattened ones included.
    let schemas = &doc["components"]["schemas"];
    let mut fields = Vec::new();
    let mut required = Vec::new();
    collect_fields(schemas, &schemas["ChatRequest"], &mut fields, &mut required);
    for f in [
        "messages",
        "model",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "logprobs",
        "max_completion_tokens",
        "seed",
        "n",
    ] {
        assert!(
            fields.iter().any(|x| x == f),
            "ChatRequest lacks {f}: {fields:?}"
        );
    }
    assert!(required.contains(&"model".to_string()) && required.contains(&"messages".to_string()));
}

/// Property names and required ones of a schema, following `$ref` and `allOf`.
fn collect_fields(
    schemas: &Value,
    s: &Value,
    fields: &mut Vec<String>,
    required: &mut Vec<String>,
) {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        assert!(schemas.get(name).is_some(), "dangling reference {r}");
        return collect_fields(schemas, &schemas[name], fields, required);
    }
    for part in s["allOf"].as_array().into_iter().flatten() {
        collect_fields(schemas, part, fields, required);
    }
    if let Some(p) = s["properties"].as_object() {
        fields.extend(p.keys().cloned());
    }
    if let Some(r) = s["required"].as_array() {
        required.extend(r.iter().filter_map(|x| x.as_str().map(String::from)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cutting_requests_at_shutdown_ends_streams_well_formed() {
    let (state, addr) = serve_state(EngineConfig::new(2048), None).await;
    // End-of-text tokens banned, so only the cut can end it early.
    let bias = no_end_bias();
    let req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1900, "temperature": 1.0,
                     "seed": 1, "stream": true, "logit_bias": bias});
    // Cut once the stream has begun.
    let (mut stream, mut seen) = open_request(addr, "/v1/completions", req, "data: ").await;
    state.cut_requests();
    stream.read_to_end(&mut seen).await.unwrap();
    let raw = String::from_utf8(seen).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = dechunk(body);
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]", "{body}");
    let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    // Cut well before the 1900 tokens it asked for.
    assert!(ev.len() < 1500, "{} chunks", ev.len());
    // A request arriving after the cut is refused, not hung.
    let (status, _) = post(
        addr,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Hi", "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, 503);
}

/// Sends a request on a fresh connection and reads until `until` appears
/// in the response; returns the connection and what was read (the caller
/// drops the connection to disconnect).
async fn open_request(
    addr: SocketAddr,
    path: &str,
    body: Value,
    until: &str,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before {until:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    (s, seen)
}

/// Waits until the engine's load satisfies `cond`, and returns that load
/// (fails after 60 s: the condition is an event that must come).
async fn until_load(
    state: &AppState,
    what: &str,
    cond: impl Fn(&lampo_engine::Load) -> bool,
) -> lampo_engine::Load {
    let start = std::time::Instant::now();
    loop {
        let load = state.engine.get().unwrap().load();
        if cond(&load) {
            return load;
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "waiting for {what}: {load:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_refused_with_429_and_departed_clients_free_their_place() {
    let config = EngineConfig {
        max_batch: 1,
        max_queue: 1,
        ..EngineConfig::new(2048)
    };
    let (state, addr) = serve_state(config, None).await;
    let bias = no_end_bias();
    let endless = |stream: bool| {
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1900, "temperature": 0,
               "stream": stream, "logit_bias": bias})
    };

    // A stream takes the only place; a second request waits in the queue.
    let (streaming, _) = open_request(addr, "/v1/completions", endless(true), "data: ").await;
    let waiting = tokio::spawn(async move {
        post(
            addr,
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0}),
        )
        .await
    });
    until_load(&state, "a queued request", |l| l.waiting == 1).await;
    // The queue is full: 429 in OpenAI's shape, with Retry-After.
    let (status, head, body) = http_full(
        addr,
        "POST",
        "/v1/completions",
        &[],
        json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "queue_full", "{err}");

    // The streaming client leaves: its request stops and the queued one runs.
    drop(streaming);
    let (status, done) = waiting.await.unwrap();
    assert_eq!(status, 200, "{done}");
    until_load(&state, "an idle engine", |l| {
        l.running == 0 && l.kv_usage == 0.0
    })
    .await;

    // A client of a non-streamed request that leaves stops it too, long
    // before its 1900 tokens.
    let mut quiet = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = endless(false).to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let generated = state.engine.get().unwrap().load().generated_tokens;
    quiet.write_all(head.as_bytes()).await.unwrap();
    until_load(&state, "the request to generate", |l| {
        l.generated_tokens > generated
    })
    .await;
    drop(quiet);
    let after = until_load(&state, "the request to stop", |l| {
        l.running == 0 && l.kv_usage == 0.0
    })
    .await;
    assert!(
        after.generated_tokens - generated < 1900,
        "it ran to the end: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn speculation_streams_the_same_answers_and_is_counted() {
    let plain = serve(1024, None).await;
    let spec = serve_with(
        EngineConfig {
            speculation: lampo_engine::SpecMode::NGram,
            adaptive_speculation: false,
            ..EngineConfig::new(1024)
        },
        None,
    )
    .await;
    const PROMPT: &str =
        "Copy this list exactly: apples, pears, plums, cherries, grapes, lemons.\nCopy: apples,";
    let body = |stream: bool| json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stream": stream});
    let (status, want) = post(plain, "/v1/completions", body(false)).await;
    assert_eq!(status, 200, "{want}");
    let want = want["choices"][0]["text"].as_str().unwrap().to_string();
    // Two streams at once on the speculating server.
    let streams: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                http(
                    spec,
                    "POST",
                    "/v1/completions",
                    &[],
                    body(true).to_string().as_bytes(),
                )
                .await
            })
        })
        .collect();
    for s in streams {
        let (status, text) = s.await.unwrap();
        assert_eq!(status, 200);
        let got: String = events(&text)
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                v["choices"][0]["text"].as_str().unwrap_or("").to_string()
            })
            .collect();
        assert_eq!(got, want, "speculation changed the greedy answer");
    }
    let (_, metrics) = http(spec, "GET", "/metrics", &[], b"").await;
    let proposed = metrics
        .lines()
        .find(|l| l.starts_with("vllm:spec_decode_num_draft_tokens_total") && l.contains("ngram"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(proposed > 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn response_formats_constrain_the_answer_and_bad_ones_are_refused() {
    let addr = serve(1024, None).await;
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "rank": {"enum": [1, 2, 3]}},
        "required": ["city", "rank"],
        "additionalProperties": false
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema}});
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        chat(
            "Name a big city.",
            json!({"temperature": 0, "response_format": format}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        v["city"].is_string() && [1, 2, 3].contains(&v["rank"].as_i64().unwrap()),
        "{text}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The stream gives the same answer.
    let request = chat(
        "Name a big city.",
        json!({"temperature": 0, "stream": true, "response_format": format}),
    );
    let streamed = streamed_text(addr, &request).await;
    assert_eq!(streamed, text);
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        chat(
            "Hi",
            json!({"temperature": 0, "response_format": {"type": "json_object"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object()),
        "{text}"
    );

    let tool =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for (extra, param, needle) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}}),
            "response_format",
            "strnig",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}}}),
            "response_format",
            "bad name",
        ),
        (
            json!({"response_format": {"type": "json_object"}, "ignore_eos": true}),
            "ignore_eos",
            "ignore_eos",
        ),
        // SmolLM2's template knows nothing of tools.
        (json!({"tools": tool}), "tools", "does not support tools"),
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "needs tools",
        ),
    ] {
        let (status, body) = post(addr, "/v1/chat/completions", chat("Hi", extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    // Tools with tool_choice "none" are simply not offered.
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        chat(
            "Hi",
            json!({"max_tokens": 4, "tools": tool, "tool_choice": "none"}),
        ),
    )
    .await;
    assert_eq!(status, 200);
}
