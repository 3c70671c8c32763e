//! Hostile and careless clients: requests a web page could forge, wrong
//! methods and models, keys on the routes that need them, browsers from
//! other origins, slow and silent connections, too many connections,
//! bodies that never arrive. Each gets a clear refusal in OpenAI's shape
//! or a closed connection, and the server goes on serving.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::common::*;

/// Sends raw bytes on a new connection and reads the whole answer (the
/// server closes after it: `Connection: close` is in `head`).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A POST with `content_type` (or none) and a JSON chat body.
fn post_as(content_type: Option<&str>, extra_headers: &str) -> Vec<u8> {
    let body = chat("hi", json!({"max_tokens": 2})).to_string();
    let ct = content_type.map_or(String::new(), |c| format!("Content-Type: {c}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{ct}{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

fn error_of(response: &str) -> Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a head");
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string() && v["error"].get("code").is_some());
    v["error"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_json_bodies_start_work_so_web_pages_cannot_forge_requests() {
    let (state, addr) = serve_state(EngineConfig::new(256), None).await;
    // What a web page can send without a preflight: text/plain, a form.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let r = raw(addr, &post_as(ct, "")).await;
        assert_eq!(status_of(&r), 415, "{ct:?}: {r}");
        assert_eq!(error_of(&r)["code"], "unsupported_media_type");
    }
    let load = state.engine.get().unwrap().load();
    assert_eq!(
        (load.prefill_tokens, load.generated_tokens),
        (0, 0),
        "a refused request reached the engine"
    );
    // JSON with a charset is JSON.
    let r = raw(addr, &post_as(Some("application/json; charset=utf-8"), "")).await;
    assert_eq!(status_of(&r), 200, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_methods_unknown_models_and_missing_keys_get_openai_errors() {
    let addr = serve(256, Some("sekret")).await;
    let key = [("Authorization", "Bearer sekret")];
    let (status, head, body) = http_full(addr, "GET", "/v1/chat/completions", &key, b"").await;
    assert_eq!(status, 405, "{head}");
    let e: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert_eq!(e["error"]["code"], "method_not_allowed", "{e}");
    // OpenAI answers an unknown model with 404 model_not_found.
    let body = json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = http_full(
        addr,
        "POST",
        "/v1/chat/completions",
        &key,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["param"].as_str()),
        (Some("model_not_found"), Some("model"))
    );
    // 401 says how to authenticate.
    let (status, head, _) = http_full(addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    // The OpenAPI document is behind the key; health and readiness are not.
    let (status, _) = http(addr, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(status, 401);
    let (status, _) = http(addr, "GET", "/openapi.json", &key, b"").await;
    assert_eq!(status, 200);
    for open in ["/health", "/ready", "/metrics"] {
        let (status, _) = http(addr, "GET", open, &[], b"").await;
        assert_eq!(status, 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_protected_by_their_own_key() {
    let server = ServerConfig {
        api_key: Some("api".into()),
        metrics_key: Some("scrape".into()),
        ..ServerConfig::new(MODEL)
    };
    let (_, addr) = serve_custom(EngineConfig::new(256), server, Limits::default()).await;
    let (status, head, _) = http_full(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 401, "{head}");
    let (status, _) = http(
        addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer api")],
        b"",
    )
    .await;
    assert_eq!(status, 401, "the API key is not the metrics key");
    let (status, text) = http(
        addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer scrape")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("lampo_http_requests_total"), "{text}");
}

fn preflight(origin: &str) -> Vec<u8> {
    format!(
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type, x-stainless-os\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_may_call_only_from_the_origins_allowed() {
    // By default no origin is allowed: no CORS headers at all.
    let addr = serve(256, None).await;
    let r = raw(addr, &preflight("http://evil.example")).await;
    assert!(
        !r.to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{r}"
    );
    let server = ServerConfig {
        cors_origins: vec!["http://app.example".into()],
        ..ServerConfig::new(MODEL)
    };
    let (_, addr) = serve_custom(EngineConfig::new(256), server, Limits::default()).await;
    let r = raw(addr, &preflight("http://app.example"))
        .await
        .to_ascii_lowercase();
    assert!(r.starts_with("http/1.1 200"), "{r}");
    assert!(
        r.contains("access-control-allow-origin: http://app.example"),
        "{r}"
    );
    assert!(
        r.contains("x-stainless-os"),
        "the SDK's headers are allowed: {r}"
    );
    let r = raw(addr, &preflight("http://evil.example"))
        .await
        .to_ascii_lowercase();
    assert!(!r.contains("access-control-allow-origin"), "{r}");
    // The answer itself carries the header for the allowed origin.
    let r = raw(
        addr,
        &post_as(Some("application/json"), "Origin: http://app.example\r\n"),
    )
    .await
    .to_ascii_lowercase();
    assert!(r.starts_with("http/1.1 200"), "{r}");
    assert!(r.contains("access-control-allow-origin: http://app.example"));
}

/// Reads until the server closes the connection; panics if it does not
/// within `limit` (far longer than the timeouts under test).
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("the server should have closed the connection");
    out
}

fn short_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: 64,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_silent_connections_are_closed_and_others_are_served() {
    let (_, addr) = serve_custom(
        EngineConfig::new(256),
        ServerConfig::new(MODEL),
        short_limits(),
    )
    .await;
    // Slowloris: a head that never ends, a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let drip = tokio::spawn(async move {
        let mut open = slow;
        let mut closed = 0;
        while closed < open.len() {
            closed = 0;
            for s in open.iter_mut() {
                if s.write_all(b"X").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        open
    });
    // Meanwhile a real request is answered.
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        chat("hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200);
    // Every slow client is cut off.
    let open = tokio::time::timeout(Duration::from_secs(30), drip)
        .await
        .expect("slow heads were not cut")
        .unwrap();
    assert_eq!(open.len(), 20);
    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    until_closed(&mut silent, Duration::from_secs(30)).await;
    // So is a kept-alive connection with nothing more to ask.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut kept, Duration::from_secs(30)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "answered before it was closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_does_not_arrive_gets_408() {
    let server = ServerConfig {
        body_timeout: Duration::from_secs(1),
        ..ServerConfig::new(MODEL)
    };
    let (_, addr) = serve_custom(EngineConfig::new(256), server, Limits::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s, Duration::from_secs(30)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(error_of(&answer)["code"], "request_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_connection_cap_new_connections_get_503_until_one_closes() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let (_, addr) = serve_custom(EngineConfig::new(256), ServerConfig::new(MODEL), limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Served: a kept-alive health check answers.
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let r = raw(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 503, "{r}");
    assert_eq!(error_of(&r)["code"], "too_many_connections");
    assert!(r.to_ascii_lowercase().contains("retry-after: 1"), "{r}");
    // One leaves: once the server has seen it go, a new one is served.
    drop(held.pop());
    let served = async {
        loop {
            let r = raw(
                addr,
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            if status_of(&r) == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("the freed place was never given to a new connection");
}
