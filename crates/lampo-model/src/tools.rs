//! Tool calls as text: the format a model's chat template teaches it,
//! a grammar that admits only valid calls in that format, and a parser
//! that turns the model's text back into calls while it streams.
//!
//! Lampo knows the Hermes format, which Qwen2.5, Qwen3 and Hermes models
//! use: each call is `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//! several calls separated by a newline.

use serde_json::{Value, json};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// How a template's model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
}

/// A function the model may call: its name and a JSON schema of its
/// arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: Value,
}

/// Which calls the output may or must hold.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Text, or calls (the model decides).
    Auto,
    /// One or more calls and nothing else.
    Required,
    /// One call of this function and nothing else.
    Named(String),
}

/// JSON as Python's `json.dumps` lays it out (", " and ": ", no other
/// whitespace), which is how templates show tool calls to models, in the
/// form llguidance's `x-guidance` schema option takes.
pub fn json_layout() -> Value {
    json!({
        "item_separator": ", ",
        "key_separator": ": ",
        "whitespace_flexible": false,
    })
}

impl ToolFormat {
    /// The format a chat template's source teaches, if it teaches one.
    pub fn of_template(source: &str) -> Option<ToolFormat> {
        (source.contains(OPEN) && source.contains("tools")).then_some(ToolFormat::Hermes)
    }

    /// A grammar (llguidance's Lark syntax) for output under `choice`:
    /// calls to `tools` whose arguments match their schemas, one call
    /// unless `parallel`. With `Auto` the output may instead be text (that
    /// does not begin like a call) or, when `answer` is given, a JSON
    /// value matching that schema.
    pub fn grammar(
        &self,
        tools: &[ToolSpec],
        choice: &ToolChoice,
        parallel: bool,
        answer: Option<&Value>,
    ) -> String {
        let allowed: Vec<&ToolSpec> = match choice {
            ToolChoice::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
            _ => tools.iter().collect(),
        };
        let bodies: Vec<Value> = allowed
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut body = if bodies.len() == 1 {
            bodies[0].clone()
        } else {
            json!({ "anyOf": bodies })
        };
        body["x-guidance"] = json_layout();
        let many = parallel && !matches!(choice, ToolChoice::Named(_));
        let mut g = String::new();
        g.push_str(match choice {
            ToolChoice::Auto => "start: answer | calls\n",
            _ => "start: calls\n",
        });
        g.push_str(if many {
            "calls: call (\"\\n\" call)*\n"
        } else {
            "calls: call\n"
        });
        g.push_str("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n");
        g.push_str(&format!("body: %json {body}\n"));
        if let ToolChoice::Auto = choice {
            match answer {
                Some(schema) => {
                    let mut schema = schema.clone();
                    if schema.get("x-guidance").is_none()
                        && let Value::Object(map) = &mut schema
                    {
                        map.insert("x-guidance".into(), json_layout());
                    }
                    g.push_str(&format!("answer: %json {schema}\n"));
                }
                // Text that cannot begin like a call.
                None => g.push_str("answer: TEXT\nTEXT: /[^<\\s](.|\\n)*/\n"),
            }
        }
        g
    }

    pub fn parser(&self) -> CallParser {
        CallParser::default()
    }
}

/// What a piece of model text turned out to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    /// Text for the answer's content.
    Content(String),
    /// Call `index` begins: its function's name.
    CallStart { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text).
    Arguments { index: usize, text: String },
}

/// Splits streamed model text into content and tool calls, sending each
/// call's name as soon as it is known and its arguments as they arrive.
/// Whitespace-only content (between calls) is dropped; a `<tool_call>`
/// block that is not a valid call stays content.
#[derive(Debug, Default)]
pub struct CallParser {
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

impl CallParser {
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
            let args = rest[start..].trim_end();
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
            let Some((name, start)) = call_head(&self.pending) else {
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
            && let Some((name, start)) = call_head(&body)
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

/// In a call's text so far, `{"name": "<name>", "arguments": ` (any
/// whitespace): the name and where the arguments begin.
fn call_head(text: &str) -> Option<(String, usize)> {
    let mut at = skip_ws(text, 0);
    at = expect(text, at, "{")?;
    at = expect(text, skip_ws(text, at), "\"name\"")?;
    at = expect(text, skip_ws(text, at), ":")?;
    at = skip_ws(text, at);
    let mut stream = serde_json::Deserializer::from_str(&text[at..]).into_iter::<String>();
    let name = stream.next()?.ok()?;
    at += stream.byte_offset();
    at = expect(text, skip_ws(text, at), ",")?;
    at = expect(text, skip_ws(text, at), "\"arguments\"")?;
    at = expect(text, skip_ws(text, at), ":")?;
    at = skip_ws(text, at);
    (at < text.len()).then_some((name, at))
}

fn skip_ws(text: &str, at: usize) -> usize {
    at + text[at..].len() - text[at..].trim_start().len()
}

fn expect(text: &str, at: usize, what: &str) -> Option<usize> {
    text[at..].starts_with(what).then_some(at + what.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content and calls (name, arguments) from text fed in `pieces`.
    fn parse(pieces: &[&str]) -> (String, Vec<(String, String)>) {
        let mut p = ToolFormat::Hermes.parser();
        let mut all: Vec<Piece> = pieces.iter().flat_map(|t| p.push(t)).collect();
        all.extend(p.finish());
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for piece in all {
            match piece {
                Piece::Content(t) => content.push_str(&t),
                Piece::CallStart { index, name } => {
                    assert_eq!(index, calls.len());
                    calls.push((name, String::new()));
                }
                Piece::Arguments { index, text } => calls[index].1.push_str(&text),
            }
        }
        (content, calls)
    }

    /// Every way of cutting `text` in two, and one character at a time.
    fn splits(text: &str) -> Vec<Vec<&str>> {
        let mut out = vec![vec![text]];
        for (i, _) in text.char_indices().skip(1) {
            out.push(vec![&text[..i], &text[i..]]);
        }
        let mut chars = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            chars.push(&rest[..c.len_utf8()]);
            rest = &rest[c.len_utf8()..];
        }
        out.push(chars);
        out
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
        let (content, calls) = parse(&["<tool_call>\n{\"na"]);
        assert_eq!(content, "<tool_call>\n{\"na");
        assert!(calls.is_empty());
    }

    #[test]
    fn grammars_name_the_allowed_calls() {
        let tools = vec![
            ToolSpec {
                name: "a".into(),
                parameters: json!({"type": "object"}),
            },
            ToolSpec {
                name: "b".into(),
                parameters: json!({"type": "object"}),
            },
        ];
        let g = ToolFormat::Hermes.grammar(&tools, &ToolChoice::Named("b".into()), true, None);
        assert!(g.starts_with("start: calls\ncalls: call\n"), "{g}");
        assert!(
            g.contains("{\"const\":\"b\"}") && !g.contains("{\"const\":\"a\"}"),
            "{g}"
        );
        let g = ToolFormat::Hermes.grammar(&tools, &ToolChoice::Required, true, None);
        assert!(
            g.contains("calls: call (\"\\n\" call)*") && g.contains("anyOf"),
            "{g}"
        );
        let g = ToolFormat::Hermes.grammar(&tools, &ToolChoice::Auto, false, None);
        assert!(
            g.starts_with("start: answer | calls\ncalls: call\n") && g.contains("TEXT"),
            "{g}"
        );
    }
}
