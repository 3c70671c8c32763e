//! Serving under load: metrics, shutdown cuts, overload and departing
//! clients.

use serde_json::{Value, json};

use crate::common::*;

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
    // The cut is told as an error, not as a finish reason that looks
    // like a normal end.
    let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "server_shutdown", "{last}");
    assert!(
        ev.iter()
            .all(|e| !e.contains("\"finish_reason\":\"length\"")),
        "{body}"
    );
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
