//! Log-probabilities in OpenAI's two shapes: chat's list of token entries
//! with their alternatives, and text completions' parallel arrays with
//! text offsets.

use lampo_engine::TokenLogprob;
use lampo_model::Tokenizer;
use serde_json::{Value, json};

/// A token as OpenAI's log-probability entries show it.
fn token_entry(tok: &Tokenizer, id: u32, logprob: f32) -> Value {
    let bytes = tok.token_bytes(id);
    json!({"token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes})
}

/// Chat `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub(crate) fn chat(tok: &Tokenizer, lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = token_entry(tok, l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(t, p)| token_entry(tok, t, p)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// Text-completion `logprobs` (the legacy shape), with text offsets from
/// `offset`; also returns the offset after the last token.
pub(crate) fn completion(
    tok: &Tokenizer,
    lps: &[TokenLogprob],
    mut offset: usize,
) -> (Value, usize) {
    let (mut tokens, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for l in lps {
        let text = String::from_utf8_lossy(tok.token_bytes(l.token)).into_owned();
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        values.push(l.logprob);
        let top: serde_json::Map<String, Value> = l
            .top
            .iter()
            .map(|&(t, p)| {
                (
                    String::from_utf8_lossy(tok.token_bytes(t)).into_owned(),
                    json!(p),
                )
            })
            .collect();
        tops.push(Value::Object(top));
    }
    (
        json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}),
        offset,
    )
}
