//! The Hermes tool-call format, which Qwen2.5, Qwen3 and Hermes models
//! use: each call is `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//! several calls separated by a newline, possibly after some text.

use serde_json::Value;

use super::{Piece, call_head};

pub(super) const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const ARGS: &str = "arguments";

/// Splits streamed model text into content and tool calls, sending each
/// call's name as soon as it is known and its arguments as they arrive.
/// Whitespace-only content (between calls) is dropped; a `<tool_call>`
/// block that is not a valid call stays content.
#[derive(Debug, Default)]
pub struct HermesParser {
    /// Text not yet classified: in content, a possible start of `<tool_call>`;
    /// in a call, everything after `<tool_call>`.
    pending: String,
    in_call: bool,
    /// In a call: where its arguments begin in `pending` once the name is
    /// sent, and how much of them is sent.
    args: Option<(usize, usize)>,
    calls: usize,
    /// Whitespace held until content that is not whitespace follows.
    blank: String,
}

impl HermesParser {
    /// Calls begun so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CLOSE) else {
                    self.stream_call(&mut out);
                    break;
                };
                self.end_call(end, &mut out);
            } else if let Some(at) = self.pending.find(OPEN) {
                let before: String = self.pending.drain(..at + OPEN.len()).collect();
                self.content(&before[..at], &mut out);
                self.blank.clear();
                self.in_call = true;
            } else {
                // Keep a tail that may be the start of `<tool_call>`.
                let keep = (0..self.pending.len())
                    .filter(|&i| self.pending.is_char_boundary(i))
                    .find(|&i| OPEN.starts_with(&self.pending[i..]))
                    .unwrap_or(self.pending.len());
                let text: String = self.pending.drain(..keep).collect();
                self.content(&text, &mut out);
                break;
            }
        }
        out
    }

    /// The rest when the text ends: held content, or the unfinished call
    /// (its arguments as far as they go; as content if its name never came).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        if !self.in_call {
            self.content(&rest, &mut out);
        } else if let Some((start, sent)) = self.args {
            let args = unfinished_arguments(&rest[start..]);
            if args.len() > sent {
                out.push(Piece::Arguments {
                    index: self.calls - 1,
                    text: args[sent..].to_string(),
                });
            }
        } else {
            self.content(&format!("{OPEN}{rest}"), &mut out);
        }
        self.in_call = false;
        self.args = None;
        out
    }

    fn content(&mut self, text: &str, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        if text.trim().is_empty() {
            self.blank.push_str(text);
            return;
        }
        let mut t = std::mem::take(&mut self.blank);
        t.push_str(text);
        // Trailing whitespace may come before a call: hold it back.
        let kept = t.trim_end().len();
        self.blank = t[kept..].to_string();
        t.truncate(kept);
        out.push(Piece::Content(t));
    }

    /// Sends what is certain of the call so far: its name once its
    /// arguments begin, then arguments up to any `}` that may be the one
    /// closing the call's object (one followed only by whitespace or the
    /// start of `</tool_call>`).
    fn stream_call(&mut self, out: &mut Vec<Piece>) {
        if self.args.is_none() {
            let Some((name, start)) = call_head(&self.pending, ARGS) else {
                return;
            };
            out.push(Piece::CallStart {
                index: self.calls,
                name,
            });
            self.calls += 1;
            self.args = Some((start, 0));
        }
        let (start, sent) = self.args.expect("set above");
        let rest = &self.pending[start..];
        let held = match rest.rfind('}') {
            Some(i) if CLOSE.starts_with(rest[i + 1..].trim_start()) => i,
            _ => rest.len(),
        };
        let certain = rest[..held].trim_end();
        if certain.len() > sent {
            out.push(Piece::Arguments {
                index: self.calls - 1,
                text: certain[sent..].to_string(),
            });
            self.args = Some((start, certain.len()));
        }
    }

    /// Ends the call whose `</tool_call>` is at `end` in `pending`.
    fn end_call(&mut self, end: usize, out: &mut Vec<Piece>) {
        let body = self.pending[..end].to_string();
        self.pending.drain(..end + CLOSE.len());
        self.in_call = false;
        let parsed: Option<Value> = serde_json::from_str(body.trim()).ok();
        let name = parsed
            .as_ref()
            .and_then(|v| v.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let arguments = parsed.as_ref().and_then(|v| v.get("arguments"));
        // A whole call in one piece: send its name as streaming would have.
        if self.args.is_none()
            && arguments.is_some()
            && let Some((name, start)) = call_head(&body, ARGS)
        {
            out.push(Piece::CallStart {
                index: self.calls,
                name,
            });
            self.calls += 1;
            self.args = Some((start, 0));
        }
        match (self.args.take(), name, arguments) {
            // The arguments are the text from their start to the object's
            // closing brace, as the model wrote them.
            (Some((start, sent)), _, _) => {
                let inner = body[start..].trim_end();
                let args = inner.strip_suffix('}').unwrap_or(inner).trim_end();
                if args.len() > sent {
                    out.push(Piece::Arguments {
                        index: self.calls - 1,
                        text: args[sent..].to_string(),
                    });
                }
            }
            // Another layout (arguments first, say): the arguments re-serialized.
            (None, Some(name), Some(arguments)) => {
                out.push(Piece::CallStart {
                    index: self.calls,
                    name,
                });
                out.push(Piece::Arguments {
                    index: self.calls,
                    text: arguments.to_string(),
                });
                self.calls += 1;
            }
            _ => self.content(&format!("{OPEN}{body}{CLOSE}"), out),
        }
    }
}

/// An unfinished call's arguments: the text after `"arguments": `
/// without a start of the closing tag, and without the brace that closes
/// the call's object when the arguments before it are whole JSON.
fn unfinished_arguments(text: &str) -> &str {
    let mut args = text.trim_end();
    if let Some(i) = args.rfind('<')
        && CLOSE.starts_with(&args[i..])
    {
        args = args[..i].trim_end();
    }
    if let Some(inner) = args.strip_suffix('}')
        && serde_json::from_str::<Value>(args).is_err()
        && serde_json::from_str::<Value>(inner).is_ok()
    {
        return inner.trim_end();
    }
    args
}

#[cfg(test)]
mod tests {
    use super::super::testing::{self, splits};
    use super::super::{Piece, ToolFormat};

    fn parse(pieces: &[&str]) -> (String, Vec<(String, String)>) {
        testing::parse(ToolFormat::Hermes, pieces)
    }

    #[test]
    fn calls_parse_the_same_however_the_text_is_cut() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"when\": {\"day\": \"}\"}}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let want = (
            String::new(),
            vec![
                (
                    "get_weather".to_string(),
                    "{\"city\": \"Paris\", \"when\": {\"day\": \"}\"}}".to_string(),
                ),
                ("now".to_string(), "{}".to_string()),
            ],
        );
        for cut in splits(text) {
            assert_eq!(parse(&cut), want, "{cut:?}");
        }
        // Fed a character at a time, arguments stream as they come.
        let mut p = ToolFormat::Hermes.parser();
        let fragments = splits(text)
            .pop()
            .unwrap()
            .iter()
            .flat_map(|c| p.push(c))
            .filter(|piece| matches!(piece, Piece::Arguments { .. }))
            .count();
        assert!(fragments > 20, "{fragments} argument fragments");
    }

    #[test]
    fn text_stays_content_and_lookalikes_are_not_calls() {
        for text in [
            "The answer is 4.",
            "a <tool> b < c",
            "<tool_call>not json</tool_call> after",
        ] {
            let (content, calls) = parse(&[text]);
            assert!(calls.is_empty(), "{text}");
            assert_eq!(content, text.trim());
        }
        let text = "Let me check.\n<tool_call>\n{\"arguments\": {\"x\": 1}, \"name\": \"f\"}\n</tool_call>";
        for cut in splits(text) {
            assert_eq!(
                parse(&cut),
                (
                    "Let me check.".into(),
                    vec![("f".into(), "{\"x\":1}".into())]
                ),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn an_unfinished_call_keeps_what_came() {
        let (content, calls) =
            parse(&["<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2"]);
        assert_eq!(content, "");
        assert_eq!(calls, vec![("f".into(), "{\"a\": [1, 2".into())]);
        // Cut after the arguments: the call's closing brace and tag are not theirs.
        for text in [
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call",
        ] {
            for cut in splits(text) {
                assert_eq!(
                    parse(&cut),
                    (String::new(), vec![("f".into(), "{\"a\": 1}".into())]),
                    "{cut:?}"
                );
            }
        }
        let (content, calls) = parse(&["<tool_call>\n{\"na"]);
        assert_eq!(content, "<tool_call>\n{\"na");
        assert!(calls.is_empty());
    }
}
