//! Answers: text, usage and streams agree; stop strings, seeds, `n`,
//! lengths, log-probabilities, echo; speculation leaves them unchanged.

use serde_json::{Value, json};

use crate::common::*;

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
