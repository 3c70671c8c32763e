//! Tool calls as text: the format a model's chat template teaches it,
//! a grammar that admits only valid calls in that format, and a parser
//! that turns the model's text back into calls while it streams.
//!
//! Lampo knows four formats: Hermes (Qwen2.5, Qwen3, Hermes models:
//! `<tool_call>` blocks, [`hermes`]), Llama 3.x's JSON calls (the answer
//! is one `{"name": ..., "parameters": {...}}` object), Mistral's
//! `[TOOL_CALLS]` list ([`json`]) and Mistral's later
//! `[TOOL_CALLS]name[ARGS]{...}` ([`named`]).

mod hermes;
mod json;
mod named;

use serde_json::{Value, json};

/// How a template's model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
    /// several separated by newlines, after text or not.
    Hermes,
    /// Llama 3.1-3.3: the whole answer is `{"name": ..., "parameters": {...}}`
    /// (one call; the templates refuse several).
    Llama3Json,
    /// Mistral with v3 tokenizers (7B v0.3, Nemo, Small 2409):
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, call ids of
    /// nine letters and digits.
    MistralList,
    /// Mistral with v11+ tokenizers (Small 3.x, Devstral, Magistral):
    /// `[TOOL_CALLS]name[ARGS]{...}` per call, ids as for `MistralList`.
    MistralNamed,
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
        if !source.contains("tools") {
            return None;
        }
        if source.contains(hermes::OPEN) {
            Some(ToolFormat::Hermes)
        } else if source.contains(named::LEAD) && source.contains(named::ARGS) {
            Some(ToolFormat::MistralNamed)
        } else if source.contains(json::MISTRAL.lead) {
            Some(ToolFormat::MistralList)
        } else if source.contains("<|start_header_id|>") && source.contains("\"parameters\"") {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The key a call's arguments are written under.
    fn arguments_key(&self) -> &'static str {
        match self {
            ToolFormat::Hermes | ToolFormat::MistralList | ToolFormat::MistralNamed => "arguments",
            ToolFormat::Llama3Json => "parameters",
        }
    }

    /// Whether the format can hold several calls in one answer.
    pub fn parallel(&self) -> bool {
        !matches!(self, ToolFormat::Llama3Json)
    }

    /// Whether call ids must be nine letters and digits (Mistral's
    /// templates refuse others when the calls come back).
    pub fn short_call_ids(&self) -> bool {
        matches!(self, ToolFormat::MistralList | ToolFormat::MistralNamed)
    }

    /// A grammar (llguidance's Lark syntax) for output under `choice`:
    /// calls to `tools` whose arguments match their schemas, one call
    /// unless `parallel`. With `Auto` the output may instead be text (that
    /// does not begin like a call) or, when `answer` is given, a JSON
    /// value matching that schema. `special` gives the id of a tag the
    /// vocabulary holds as a control token (Mistral's `[TOOL_CALLS]`,
    /// `[ARGS]`), which text cannot spell and the grammar names by id.
    pub fn grammar(
        &self,
        tools: &[ToolSpec],
        choice: &ToolChoice,
        parallel: bool,
        answer: Option<&Value>,
        special: &dyn Fn(&str) -> Option<u32>,
    ) -> String {
        let tag = |text: &str| match special(text) {
            Some(id) => format!("<[{id}]>"),
            None => serde_json::to_string(text).expect("a string serializes"),
        };
        let allowed: Vec<&ToolSpec> = match choice {
            ToolChoice::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
            _ => tools.iter().collect(),
        };
        let key = self.arguments_key();
        let bodies: Vec<Value> = allowed
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, key: t.parameters},
                    "required": ["name", key],
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
        let many = parallel && self.parallel() && !matches!(choice, ToolChoice::Named(_));
        let mut g = String::new();
        g.push_str(match choice {
            ToolChoice::Auto => "start: answer | calls\n",
            _ => "start: calls\n",
        });
        let sep = match self {
            ToolFormat::Hermes => "\"\\n\"",
            _ => "\", \"",
        };
        let list = if many {
            format!("call ({sep} call)*")
        } else {
            "call".to_string()
        };
        match self {
            ToolFormat::MistralList => {
                let lead = tag(json::MISTRAL.lead);
                g.push_str(&format!("calls: {lead} \"[\" {list} \"]\"\n"));
            }
            ToolFormat::MistralNamed => {
                let list = if many { "call+" } else { "call" };
                g.push_str(&format!("calls: {list}\n"));
            }
            _ => g.push_str(&format!("calls: {list}\n")),
        }
        match self {
            ToolFormat::Hermes => g.push_str("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n"),
            // Each tool its own branch: the name, then its arguments.
            ToolFormat::MistralNamed => {
                let (lead, args) = (tag(named::LEAD), tag(named::ARGS));
                let branches: Vec<String> =
                    (0..allowed.len()).map(|i| format!("tool{i}")).collect();
                g.push_str(&format!("call: {lead} ({})\n", branches.join(" | ")));
                for (i, t) in allowed.iter().enumerate() {
                    let mut schema = t.parameters.clone();
                    if let Value::Object(map) = &mut schema
                        && !map.contains_key("x-guidance")
                    {
                        map.insert("x-guidance".into(), json_layout());
                    }
                    let name = serde_json::to_string(&t.name).expect("a string serializes");
                    g.push_str(&format!("tool{i}: {name} {args} args{i}\n"));
                    g.push_str(&format!("args{i}: %json {schema}\n"));
                }
            }
            _ => g.push_str("call: body\n"),
        }
        if !matches!(self, ToolFormat::MistralNamed) {
            g.push_str(&format!("body: %json {body}\n"));
        }
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
                None => g.push_str(match self {
                    ToolFormat::Hermes => "answer: TEXT\nTEXT: /[^<\\s](.|\\n)*/\n",
                    ToolFormat::Llama3Json => "answer: TEXT\nTEXT: /[^{\\s](.|\\n)*/\n",
                    ToolFormat::MistralList | ToolFormat::MistralNamed => {
                        "answer: TEXT\nTEXT: /[^\\[\\s](.|\\n)*/\n"
                    }
                }),
            }
        }
        g
    }

    pub fn parser(&self) -> CallParser {
        match self {
            ToolFormat::Hermes => CallParser::Hermes(hermes::HermesParser::default()),
            ToolFormat::Llama3Json => CallParser::Json(json::JsonCallParser::new(json::LLAMA3)),
            ToolFormat::MistralList => CallParser::Json(json::JsonCallParser::new(json::MISTRAL)),
            ToolFormat::MistralNamed => CallParser::Named(named::NamedCallParser::default()),
        }
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

/// Splits streamed model text into content and tool calls in one
/// format, sending each call's name as soon as it is known and its
/// arguments as they arrive.
#[derive(Debug)]
pub enum CallParser {
    Hermes(hermes::HermesParser),
    Json(json::JsonCallParser),
    Named(named::NamedCallParser),
}

impl CallParser {
    /// Calls begun so far.
    pub fn calls(&self) -> usize {
        match self {
            CallParser::Hermes(p) => p.calls(),
            CallParser::Json(p) => p.calls(),
            CallParser::Named(p) => p.calls(),
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        match self {
            CallParser::Hermes(p) => p.push(text),
            CallParser::Json(p) => p.push(text),
            CallParser::Named(p) => p.push(text),
        }
    }

    /// The rest when the text ends: held content, or the unfinished call
    /// (its arguments as far as they go; as content if its name never came).
    pub fn finish(&mut self) -> Vec<Piece> {
        match self {
            CallParser::Hermes(p) => p.finish(),
            CallParser::Json(p) => p.finish(),
            CallParser::Named(p) => p.finish(),
        }
    }
}

/// In a call's text so far, `{"name": "<name>", "<key>": ` (any
/// whitespace; `key` names the arguments): the name and where the
/// arguments begin.
fn call_head(text: &str, key: &str) -> Option<(String, usize)> {
    let mut at = skip_ws(text, 0);
    at = expect(text, at, "{")?;
    at = expect(text, skip_ws(text, at), "\"name\"")?;
    at = expect(text, skip_ws(text, at), ":")?;
    at = skip_ws(text, at);
    let mut stream = serde_json::Deserializer::from_str(&text[at..]).into_iter::<String>();
    let name = stream.next()?.ok()?;
    at += stream.byte_offset();
    at = expect(text, skip_ws(text, at), ",")?;
    at = expect(text, skip_ws(text, at), "\"")?;
    at = expect(text, at, key)?;
    at = expect(text, at, "\"")?;
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

/// What the parsers' tests share.
#[cfg(test)]
mod testing {
    use super::{Piece, ToolFormat};

    /// Content and calls (name, arguments) from text fed in `pieces`.
    pub fn parse(format: ToolFormat, pieces: &[&str]) -> (String, Vec<(String, String)>) {
        let mut p = format.parser();
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
    pub fn splits(text: &str) -> Vec<Vec<&str>> {
        let mut out = vec![vec![text]];
        for (i, _) in text.char_indices().skip(1) {
            out.push(vec![&text[..i], &text[i..]]);
        }
        out.push(
            text.char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_read_from_templates() {
        let of = ToolFormat::of_template;
        assert_eq!(
            of("{% if tools %}<tool_call>{% endif %}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            of("{{ '<|start_header_id|>' }}{% if tools %}\"parameters\": {% endif %}"),
            Some(ToolFormat::Llama3Json)
        );
        assert_eq!(
            of("{% if tools %}[TOOL_CALLS][{% endif %}"),
            Some(ToolFormat::MistralList)
        );
        assert_eq!(
            of("{% if tools %}[TOOL_CALLS]{{ name }}[ARGS]{% endif %}"),
            Some(ToolFormat::MistralNamed)
        );
        assert_eq!(of("{{ messages }}"), None);
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
        let g =
            ToolFormat::Hermes.grammar(&tools, &ToolChoice::Named("b".into()), true, None, &|_| {
                None
            });
        assert!(g.starts_with("start: calls\ncalls: call\n"), "{g}");
        assert!(
            g.contains("{\"const\":\"b\"}") && !g.contains("{\"const\":\"a\"}"),
            "{g}"
        );
        let g = ToolFormat::Hermes.grammar(&tools, &ToolChoice::Required, true, None, &|_| None);
        assert!(
            g.contains("calls: call (\"\\n\" call)*") && g.contains("anyOf"),
            "{g}"
        );
        let g =
            ToolFormat::Llama3Json.grammar(&tools, &ToolChoice::Required, true, None, &|_| None);
        assert!(
            g.starts_with("start: calls\ncalls: call\ncall: body\n")
                && g.contains("\"parameters\""),
            "{g}"
        );
        let g = ToolFormat::MistralList.grammar(&tools, &ToolChoice::Required, true, None, &|t| {
            (t == "[TOOL_CALLS]").then_some(5)
        });
        assert!(
            g.contains("calls: <[5]> \"[\" call (\", \" call)* \"]\"\n")
                && g.contains("\"arguments\""),
            "{g}"
        );
        let g =
            ToolFormat::MistralList.grammar(&tools, &ToolChoice::Required, false, None, &|_| None);
        assert!(
            g.contains("calls: \"[TOOL_CALLS]\" \"[\" call \"]\"\n"),
            "{g}"
        );
        let ids = |t: &str| match t {
            "[TOOL_CALLS]" => Some(5),
            "[ARGS]" => Some(32),
            _ => None,
        };
        let g = ToolFormat::MistralNamed.grammar(&tools, &ToolChoice::Required, true, None, &ids);
        assert!(
            g.contains("calls: call+\ncall: <[5]> (tool0 | tool1)\n")
                && g.contains("tool1: \"b\" <[32]> args1\nargs1: %json {"),
            "{g}"
        );
        let g = ToolFormat::Hermes.grammar(&tools, &ToolChoice::Auto, false, None, &|_| None);
        assert!(
            g.starts_with("start: answer | calls\ncalls: call\n") && g.contains("TEXT"),
            "{g}"
        );
    }
}
