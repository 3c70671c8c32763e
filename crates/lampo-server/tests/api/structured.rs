//! Structured output over HTTP: schemas constrain the answer, bad ones
//! are refused.

use serde_json::{Value, json};

use crate::common::*;

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

#[tokio::test(flavor = "multi_thread")]
async fn grammars_the_parser_cannot_follow_are_client_errors_without_internals() {
    let addr = serve(1024, None).await;
    let items: Vec<String> = (0..100_000).map(|i| format!("item number {i}")).collect();
    // Refused when compiled: one sentence naming the field and the reason.
    for (schema, needle) in [
        (
            json!({"type": "string", "pattern": "^(a{1000}){1000}$"}),
            "repeats too much",
        ),
        (
            json!({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}},
                   "$ref": "#/$defs/n"}),
            "requires itself",
        ),
        (json!({"$ref": "#"}), "requires itself"),
        (json!({"enum": items}), "too big"),
    ] {
        let (status, body) =
            post(addr, "/v1/chat/completions", with_schema(schema, json!({}))).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], "response_format", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
        assert!(!leaks(message) && !message.contains('\n'), "{message}");
    }
    // A grammar that fails once decoding has begun (a parser limit): the
    // request ends with a clean client error, streamed or not.
    let props: serde_json::Map<String, Value> = (0..2000)
        .map(|i| (format!("p{i}"), json!({"type": "integer"})))
        .collect();
    let wide = json!({"type": "object", "properties": props, "required": ["p1", "p2"]});
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        with_schema(wide.clone(), json!({})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "constraint_failed", "{body}");
    assert!(!leaks(&body.to_string()), "{body}");
    let req = with_schema(wide, json!({"stream": true}));
    let (status, text) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        req.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
    let err: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "constraint_failed", "{text}");
    assert!(!leaks(&text), "{text}");
    // The server goes on serving.
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        chat("hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200);
}
