//! Every error in OpenAI's shape with the right status; keys, readiness
//! and the OpenAPI document.

use serde_json::{Value, json};

use crate::common::*;

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
            404,
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
