//! What the API tests share: a server on a free port over SmolLM2, raw
//! HTTP/1.1 requests and responses, event streams, and waiting on the
//! engine's load for the event a test means.

// Shared by two test binaries, which use different parts of it.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::sync::OnceLock;

use lampo_model::LoadedModel;
use serde_json::{Value, json};

// What every test module uses.
pub use lampo_engine::{Engine, EngineConfig};
pub use lampo_server::listen::{self, Limits};
pub use lampo_server::{AppState, MAX_BODY_BYTES, ServerConfig, router};
pub use std::net::SocketAddr;
pub use std::sync::Arc;
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MODEL: &str = "smollm2";

pub fn models_dir() -> PathBuf {
    std::env::var_os("LAMPO_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

pub fn model_path() -> PathBuf {
    models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn loaded() -> Arc<LoadedModel> {
    static LM: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    LM.get_or_init(|| {
        Arc::new(LoadedModel::load(&model_path()).expect("run scripts/fetch-models smollm2"))
    })
    .clone()
}

/// A server on a free port; `ctx` tokens of context, an optional API key.
pub async fn serve(ctx: usize, api_key: Option<&str>) -> SocketAddr {
    serve_with(EngineConfig::new(ctx), api_key).await
}

/// As `serve`, with the engine configured by `config`.
pub async fn serve_with(config: EngineConfig, api_key: Option<&str>) -> SocketAddr {
    serve_state(config, api_key).await.1
}

/// As `serve_with`, also returning the server's state (to read the
/// engine's load or cut requests).
pub async fn serve_state(
    config: EngineConfig,
    api_key: Option<&str>,
) -> (Arc<AppState>, SocketAddr) {
    let server = ServerConfig {
        api_key: api_key.map(String::from),
        ..ServerConfig::new(MODEL)
    };
    serve_custom(config, server, Limits::default()).await
}

/// A server with its own settings and connection limits, listening as
/// `lampo serve` does.
pub async fn serve_custom(
    config: EngineConfig,
    server: ServerConfig,
    limits: Limits,
) -> (Arc<AppState>, SocketAddr) {
    serve_model(loaded(), config, server, limits).await
}

/// As `serve_custom`, over another model.
pub async fn serve_model(
    lm: Arc<LoadedModel>,
    config: EngineConfig,
    server: ServerConfig,
    limits: Limits,
) -> (Arc<AppState>, SocketAddr) {
    let state = Arc::new(AppState::with_config(server));
    let _ = state.engine.set(Engine::start(lm, config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(listen::serve(
        listener,
        app,
        limits,
        std::future::pending(),
        std::future::pending(),
    ));
    (state, addr)
}

/// A `logit_bias` that bans every end-of-generation token, so that only
/// `max_tokens` (or a cut) ends a request.
pub fn no_end_bias() -> serde_json::Map<String, Value> {
    let lm = loaded();
    (0..lm.model.config.n_vocab as u32)
        .filter(|&t| lm.tokenizer.is_eog(t))
        .map(|t| (t.to_string(), json!(-100)))
        .collect()
}

/// One HTTP/1.1 request; returns the status and the (de-chunked) body.
pub async fn http(
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
pub async fn http_full(
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

pub fn dechunk(mut s: &str) -> String {
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

pub async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, &[], body.to_string().as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads of an event stream.
pub fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// A streamed chat request's text: its content deltas joined.
pub async fn streamed_text(addr: SocketAddr, request: &Value) -> String {
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

pub fn chat(content: &str, extra: Value) -> Value {
    let mut req = json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

pub const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

/// Sends a request on a fresh connection and reads until `until` appears
/// in the response; returns the connection and what was read (the caller
/// drops the connection to disconnect).
pub async fn open_request(
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
pub async fn until_load(
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

/// A streamed answer's deltas gathered: reasoning, content, tool calls
/// (name, arguments), and the finish reason.
#[derive(Debug, Default, PartialEq)]
pub struct Streamed {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<(String, String)>,
    pub finish: String,
}

pub async fn stream(addr: SocketAddr, mut req: Value) -> Streamed {
    req["stream"] = json!(true);
    let (status, body) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        req.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut out = Streamed::default();
    let events = events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(t) = delta["reasoning_content"].as_str() {
            out.reasoning.push_str(t);
        }
        if let Some(t) = delta["content"].as_str() {
            out.content.push_str(t);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let f = &call["function"];
            if let Some(name) = f["name"].as_str() {
                out.calls.push((name.to_string(), String::new()));
            }
            let args = f["arguments"].as_str().unwrap_or_default();
            out.calls.last_mut().unwrap().1.push_str(args);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            out.finish = f.to_string();
        }
    }
    out
}

/// A whole answer in the same terms as a streamed one.
pub async fn whole(addr: SocketAddr, req: Value) -> (Streamed, Value) {
    let (status, body) = post(addr, "/v1/chat/completions", req).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    let m = &choice["message"];
    let calls = m["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let f = &c["function"];
            (
                f["name"].as_str().unwrap().to_string(),
                f["arguments"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let got = Streamed {
        reasoning: m["reasoning_content"].as_str().unwrap_or_default().into(),
        content: m["content"].as_str().unwrap_or_default().into(),
        calls,
        finish: choice["finish_reason"].as_str().unwrap().into(),
    };
    (got, body)
}
