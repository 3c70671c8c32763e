//! Structured output: `response_format` and `tools` checked and turned
//! into one grammar the engine enforces while decoding (after the
//! model's reasoning, for models that reason), and the model's text
//! turned back into OpenAI's `reasoning_content`, content and
//! `tool_calls`.

use std::collections::HashSet;

use lampo_engine::{Constraint, Engine, Grammar};
use lampo_model::TokenKind;
use lampo_model::reasoning::{self, Part, Reasoning, ReasoningParser};
use lampo_model::tools::{CallParser, Piece, ToolChoice, ToolFormat, ToolSpec};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openai::{
    ChatDelta, FunctionCall, FunctionDelta, ResponseFormat, Tool, ToolCall, ToolCallDelta,
    ToolChoiceParam,
};

/// What a chat request asks of its output's shape.
#[derive(Default)]
pub struct Structure {
    /// The grammar the output must follow, not yet compiled.
    pub grammar: Option<Grammar>,
    /// Tools for the chat template, when the model is to see them.
    pub template_tools: Option<Value>,
    /// Set when the output may hold calls, written in this format.
    pub calls: Option<ToolFormat>,
    /// The tools, checked (to blame one whose schema cannot compile).
    specs: Vec<ToolSpec>,
    /// Whether a response format shapes the answer.
    has_answer: bool,
}

/// How chat answers return a reasoning model's thinking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// Split off into `reasoning_content` (the field vLLM, llama.cpp and
    /// DeepSeek use); the content is the answer alone.
    Parsed,
    /// Left in the content as the model wrote it, tags and all.
    Raw,
    /// Split off and dropped.
    Hidden,
}

impl ReasoningFormat {
    pub const NAMES: &str = "parsed, raw or hidden";

    /// A format by name; llama.cpp's names are taken too (`none` is raw;
    /// `auto`, `deepseek` and `deepseek-legacy` are parsed).
    pub fn parse(name: &str) -> Result<ReasoningFormat, String> {
        match name {
            "parsed" | "auto" | "deepseek" | "deepseek-legacy" => Ok(ReasoningFormat::Parsed),
            "raw" | "none" => Ok(ReasoningFormat::Raw),
            "hidden" => Ok(ReasoningFormat::Hidden),
            other => Err(format!(
                "reasoning format '{other}' is not one of {}",
                ReasoningFormat::NAMES
            )),
        }
    }
}

/// Where a chat answer's reasoning is and whether the client sees it.
#[derive(Clone, Copy, Debug)]
pub struct Thoughts {
    pub reasoning: Reasoning,
    /// The prompt opened the reasoning block.
    pub inside: bool,
    pub show: bool,
}

/// Whether the answer to `prompt` may open a reasoning block, and whether
/// the prompt opened it already: not when the prompt closed one (thinking
/// turned off in the template).
fn open_block(reasoning: Option<Reasoning>, prompt: &str) -> Option<(Reasoning, bool)> {
    let reasoning = reasoning?;
    if prompt.trim_end().ends_with(reasoning.close) {
        return None;
    }
    Some((reasoning, reasoning.opened_by(prompt)))
}

impl Thoughts {
    /// How to read answers to `prompt` from a template that reasons in
    /// `reasoning`: as they are when the format is raw or thinking is off.
    pub fn of(
        reasoning: Option<Reasoning>,
        format: ReasoningFormat,
        prompt: &str,
    ) -> Option<Thoughts> {
        if format == ReasoningFormat::Raw {
            return None;
        }
        let (reasoning, inside) = open_block(reasoning, prompt)?;
        Some(Thoughts {
            reasoning,
            inside,
            show: format == ReasoningFormat::Parsed,
        })
    }
}

/// `answer`, placed after the reasoning block a model may write first
/// (whatever the format: raw only changes how the answer is returned).
pub fn after_reasoning(reasoning: Option<Reasoning>, prompt: &str, answer: Grammar) -> Grammar {
    match open_block(reasoning, prompt) {
        Some((reasoning, inside)) => Grammar::AfterReasoning {
            reasoning,
            inside,
            answer: Box::new(answer),
        },
        None => answer,
    }
}

/// The request fields that shape the output.
pub struct Asked {
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoiceParam>,
    pub parallel_tool_calls: Option<bool>,
}

/// OpenAI's rule for function and schema names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks what `asked` wants and builds its grammar; a 400 names the
/// field at fault.
pub fn plan(engine: &Engine, asked: Asked) -> Result<Structure, ApiError> {
    let answer = match asked.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            if !valid_name(&json_schema.name) {
                return Err(ApiError::bad_request(
                    format!(
                        "response_format.json_schema.name '{}' must be 1 to 64 letters, digits, '_' or '-'",
                        json_schema.name
                    ),
                    Some("response_format"),
                ));
            }
            match json_schema.schema {
                None => Some(json!({})),
                Some(s @ Value::Object(_)) => Some(s),
                Some(other) => {
                    return Err(ApiError::bad_request(
                        format!(
                            "response_format.json_schema.schema must be a JSON object, got {other}"
                        ),
                        Some("response_format"),
                    ));
                }
            }
        }
    };
    let tools = asked.tools.unwrap_or_default();
    let choice = tool_choice(asked.tool_choice, &tools)?;
    let specs = tool_specs(&tools)?;
    let mut out = Structure {
        has_answer: answer.is_some(),
        ..Structure::default()
    };
    out.grammar = match choice {
        Some(choice) => {
            let lm = engine.model();
            let format = lm
                .chat_template
                .as_ref()
                .and_then(|t| t.tool_format())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "this model's chat template does not support tools",
                        Some("tools"),
                    )
                })?;
            out.template_tools = Some(serde_json::to_value(&tools).expect("tools serialize"));
            out.calls = Some(format);
            let parallel = asked.parallel_tool_calls.unwrap_or(true);
            // Tags the vocabulary holds as control tokens are named by id.
            let special = |text: &str| {
                let ids = lm.tokenizer.encode(text, false, true).ok()?;
                match ids[..] {
                    [id] if lm.tokenizer.kind(id) == Some(TokenKind::Control) => Some(id),
                    _ => None,
                }
            };
            Some(Grammar::Lark(format.grammar(
                &specs,
                &choice,
                parallel,
                answer.as_ref(),
                &special,
            )))
        }
        None => answer.clone().map(Grammar::JsonSchema),
    };
    out.specs = specs;
    Ok(out)
}

impl Structure {
    /// Compiles `grammar` (this structure's, perhaps placed after a
    /// reasoning block): CPU work, for a thread of its own.
    pub fn compile(&self, engine: &Engine, grammar: Grammar) -> Result<Constraint, ApiError> {
        engine
            .constrain(grammar)
            .map_err(|e| blame(engine, &self.specs, self.has_answer, e))
    }
}

/// The tool choice in force: `None` when the model is not to call tools.
fn tool_choice(
    param: Option<ToolChoiceParam>,
    tools: &[Tool],
) -> Result<Option<ToolChoice>, ApiError> {
    let bad = |m: String| ApiError::bad_request(m, Some("tool_choice"));
    if tools.is_empty() {
        return match param {
            Some(ToolChoiceParam::Mode(m)) if m != "none" => {
                Err(bad(format!("tool_choice '{m}' needs tools to choose from")))
            }
            Some(ToolChoiceParam::Function { .. }) => Err(bad(
                "tool_choice names a function but no tools are given".into(),
            )),
            _ => Ok(None),
        };
    }
    Ok(match param {
        None => Some(ToolChoice::Auto),
        Some(ToolChoiceParam::Mode(m)) => match m.as_str() {
            "none" => None,
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(bad(format!(
                    "tool_choice '{other}' is not one of none, auto, required or a named function"
                )));
            }
        },
        Some(ToolChoiceParam::Function { kind, function }) => {
            if kind != "function" {
                return Err(bad(format!(
                    "tool_choice type '{kind}' is not supported (only 'function')"
                )));
            }
            if !tools.iter().any(|t| t.function.name == function.name) {
                return Err(bad(format!(
                    "tool_choice names the function '{}', which is not among the tools",
                    function.name
                )));
            }
            Some(ToolChoice::Named(function.name))
        }
    })
}

/// Each tool's name and argument schema, checked.
fn tool_specs(tools: &[Tool]) -> Result<Vec<ToolSpec>, ApiError> {
    let mut seen = HashSet::new();
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let bad = |m: String| ApiError::bad_request(format!("tools[{i}]: {m}"), Some("tools"));
            if t.kind != "function" {
                return Err(bad(format!(
                    "type '{}' is not supported (only 'function')",
                    t.kind
                )));
            }
            let name = &t.function.name;
            if !valid_name(name) {
                return Err(bad(format!(
                    "function name '{name}' must be 1 to 64 letters, digits, '_' or '-'"
                )));
            }
            if !seen.insert(name.clone()) {
                return Err(bad(format!("function name '{name}' is given twice")));
            }
            let parameters = match &t.function.parameters {
                None => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(other) => {
                    return Err(bad(format!(
                        "parameters of '{name}' must be a JSON schema object, got {other}"
                    )));
                }
            };
            Ok(ToolSpec {
                name: name.clone(),
                parameters,
            })
        })
        .collect()
}

/// Turns a compile error into a 400 naming what is at fault: a tool's
/// parameters if one fails alone, else the response format.
fn blame(engine: &Engine, specs: &[ToolSpec], has_answer: bool, error: String) -> ApiError {
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = engine.constrain(Grammar::JsonSchema(spec.parameters.clone())) {
            return ApiError::bad_request(
                format!(
                    "tools[{i}]: the parameters schema of '{}' cannot be used: {e}",
                    spec.name
                ),
                Some("tools"),
            );
        }
    }
    if has_answer {
        ApiError::bad_request(
            format!("response_format: the JSON schema cannot be used: {error}"),
            Some("response_format"),
        )
    } else {
        ApiError::bad_request(format!("the tools cannot be used: {error}"), Some("tools"))
    }
}

/// A fresh call id, as OpenAI shapes them, or nine letters and digits
/// for formats whose templates take only those.
pub fn call_id(format: ToolFormat) -> String {
    let id = crate::state::random_id("call");
    if format.short_call_ids() {
        id[id.len() - 9..].to_string()
    } else {
        id
    }
}

/// A chat answer split into reasoning, text and calls.
pub struct Answer {
    pub reasoning_content: Option<String>,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// Splits a whole answer as streaming would, so both give the same
/// reasoning, content and calls.
pub fn split_answer(thoughts: Option<Thoughts>, calls: Option<ToolFormat>, text: &str) -> Answer {
    let (reasoning_content, text) = match thoughts {
        Some(t) => {
            let (thought, content) = reasoning::split(t.reasoning, t.inside, text);
            (thought.filter(|_| t.show), content)
        }
        None => (None, text.to_string()),
    };
    let Some(format) = calls else {
        return Answer {
            reasoning_content,
            content: Some(text),
            tool_calls: Vec::new(),
        };
    };
    let mut parser = format.parser();
    let mut pieces = parser.push(&text);
    pieces.extend(parser.finish());
    let mut content = String::new();
    let mut tool_calls: Vec<ToolCall> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Content(t) => content.push_str(&t),
            Piece::CallStart { name, .. } => tool_calls.push(ToolCall {
                id: call_id(format),
                kind: "function",
                function: FunctionCall {
                    name,
                    arguments: String::new(),
                },
            }),
            Piece::Arguments { index, text } => {
                tool_calls[index].function.arguments.push_str(&text)
            }
        }
    }
    Answer {
        reasoning_content,
        content: (!content.is_empty()).then_some(content),
        tool_calls,
    }
}

/// Streamed chat deltas for one choice: reasoning split off first (when
/// the model reasons), then text passes through, or (when calls are
/// possible) goes through the call parser.
pub struct DeltaStream {
    /// The reasoning parser, and whether the client sees the reasoning.
    thoughts: Option<(ReasoningParser, bool)>,
    calls: Option<(CallParser, ToolFormat)>,
}

impl DeltaStream {
    pub fn new(thoughts: Option<Thoughts>, calls: Option<ToolFormat>) -> DeltaStream {
        DeltaStream {
            thoughts: thoughts.map(|t| (t.reasoning.parser(t.inside), t.show)),
            calls: calls.map(|f| (f.parser(), f)),
        }
    }

    /// The deltas for a piece of text (`end`: the text is over).
    pub fn deltas(&mut self, text: &str, end: bool) -> Vec<ChatDelta> {
        let (parts, show) = match &mut self.thoughts {
            Some((parser, show)) => {
                let mut parts = parser.push(text);
                if end {
                    parts.extend(parser.finish());
                }
                (parts, *show)
            }
            None => (vec![Part::Content(text.to_string())], false),
        };
        let mut out = Vec::new();
        for part in parts {
            match part {
                Part::Reasoning(t) if show => out.push(ChatDelta {
                    reasoning_content: Some(t),
                    ..ChatDelta::default()
                }),
                Part::Reasoning(_) => {}
                Part::Content(t) => self.content(&t, false, &mut out),
            }
        }
        if end {
            self.content("", true, &mut out);
        }
        out
    }

    fn content(&mut self, text: &str, end: bool, out: &mut Vec<ChatDelta>) {
        let content = |t: String| ChatDelta {
            content: Some(t),
            ..ChatDelta::default()
        };
        let Some((parser, format)) = &mut self.calls else {
            if !text.is_empty() {
                out.push(content(text.to_string()));
            }
            return;
        };
        let mut pieces = parser.push(text);
        if end {
            pieces.extend(parser.finish());
        }
        let format = *format;
        let call = |d: ToolCallDelta| ChatDelta {
            tool_calls: vec![d],
            ..ChatDelta::default()
        };
        out.extend(pieces.into_iter().map(|p| match p {
            Piece::Content(t) => content(t),
            Piece::CallStart { index, name } => call(ToolCallDelta {
                index,
                id: Some(call_id(format)),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments: Some(String::new()),
                },
            }),
            Piece::Arguments { index, text } => call(ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: Some(text),
                },
            }),
        }));
    }

    /// Whether any call was sent.
    pub fn called(&self) -> bool {
        self.calls.as_ref().is_some_and(|(p, _)| p.calls() > 0)
    }
}

/// Assistant messages' call arguments as JSON values (templates render
/// them with `tojson`; OpenAI sends them as JSON text).
pub fn arguments_as_json(tool_calls: &mut Value) {
    let Some(calls) = tool_calls.as_array_mut() else {
        return;
    };
    for call in calls {
        let args = call
            .get_mut("function")
            .and_then(|f| f.get_mut("arguments"));
        if let Some(a) = args
            && let Some(parsed) = a
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
        {
            *a = parsed;
        }
    }
}
