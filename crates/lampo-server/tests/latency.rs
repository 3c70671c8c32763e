//! Latency beside grammar work: a stream keeps its pace while large
//! schemas compile and while a request with a slow grammar decodes next
//! to it. A binary of its own, so that no other test shares the cores
//! while it measures. Needs `scripts/fetch-models smollm2`.

#[path = "api/common.rs"]
mod common;

use serde_json::{Value, json};

use common::*;

/// Internal parser state that must never reach a client.
fn leaks(text: &str) -> bool {
    ["<state>", "Parser:", "Tokens:", "lexer_cost", "</grammar>"]
        .iter()
        .any(|m| text.contains(m))
}

fn with_schema(schema: Value, extra: Value) -> Value {
    let mut req = chat(
        "Give me the data.",
        json!({"temperature": 0, "max_tokens": 40,
               "response_format": {"type": "json_schema", "json_schema": {"name": "data", "schema": schema}}}),
    );
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

/// Tokens per second a streamed request receives while `during` runs.
async fn stream_while(addr: SocketAddr, during: impl std::future::Future<Output = ()>) -> f64 {
    let req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4000,
                     "temperature": 0, "stream": true, "ignore_eos": true});
    let (mut s, _) = open_request(addr, "/v1/completions", req, "data: ").await;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = {
        let count = count.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let chunks = buf[..n].windows(6).filter(|w| w == b"data: ").count();
                        count.fetch_add(chunks, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let before = count.load(std::sync::atomic::Ordering::Relaxed);
    let start = std::time::Instant::now();
    during.await;
    let got = count.load(std::sync::atomic::Ordering::Relaxed) - before;
    let rate = got as f64 / start.elapsed().as_secs_f64();
    counting.abort();
    rate
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_grammars_and_large_schemas_do_not_stall_other_requests() {
    let addr = serve(4096, None).await;
    // Warm the vocabulary trie (built on the first constrained request).
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        with_schema(json!({"type": "object"}), json!({})),
    )
    .await;
    assert_eq!(status, 200);
    // A stream decoding beside nothing, as the yardstick, then beside
    // schemas being compiled (each a 100,000-value enum) and beside a
    // request whose grammar is slow to follow, in turn, three times: each
    // figure is the best of its windows. A stall caused by grammar work
    // holds in every window beside it; a busy machine's scheduler takes
    // the cores away from one window or another at random (about one
    // single window in six under two busy loops, measured), which the
    // best of three rides out.
    let items: Vec<String> = (0..100_000).map(|i| format!("item number {i}")).collect();
    let big = with_schema(json!({"enum": items}), json!({}));
    let slow = with_schema(
        json!({"type": "string", "pattern": "^(.*a){20}$"}),
        json!({"max_tokens": 12}),
    );
    let window = std::time::Duration::from_millis(1500);
    let (mut alone, mut compiling, mut slow_grammar) = (0f64, 0f64, 0f64);
    for _ in 0..3 {
        alone = alone.max(stream_while(addr, tokio::time::sleep(window)).await);
        let rate = stream_while(addr, async {
            let start = std::time::Instant::now();
            while start.elapsed() < window {
                let (status, _) = post(addr, "/v1/chat/completions", big.clone()).await;
                assert_eq!(status, 400);
            }
        })
        .await;
        compiling = compiling.max(rate);
        let rate = stream_while(addr, async {
            let start = std::time::Instant::now();
            while start.elapsed() < window {
                let (status, body) = post(addr, "/v1/chat/completions", slow.clone()).await;
                assert!(status == 200 || status == 400, "{body}");
                assert!(!leaks(&body.to_string()), "{body}");
            }
        })
        .await;
        slow_grammar = slow_grammar.max(rate);
    }
    eprintln!(
        "stream tokens/s: alone {alone:.0}, beside compiles {compiling:.0}, beside a slow grammar {slow_grammar:.0}"
    );
    // A stall would leave the stream with a handful; the grammar work runs
    // at background priority and costs it at most a part.
    assert!(alone > 10.0, "{alone}");
    assert!(
        compiling * 4.0 > alone,
        "compiles stalled the stream: {compiling} vs {alone}"
    );
    assert!(
        slow_grammar * 4.0 > alone,
        "a slow grammar stalled the stream: {slow_grammar} vs {alone}"
    );
}
