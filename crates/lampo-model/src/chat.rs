//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`)
//! rendered with minijinja and its Python-compatibility methods, so that
//! templates written for Hugging Face transformers render the same text.

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::reasoning::Reasoning;
use crate::tools::ToolFormat;

/// One message of a conversation, shaped as templates expect it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// An assistant turn's reasoning, for templates that show it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_call_id: None,
            tool_calls: None,
            reasoning_content: None,
        }
    }
}

/// Roles a conversation may use.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
    tool_format: Option<ToolFormat>,
    reasoning: Option<Reasoning>,
}

/// Variables every template is given; a client's template arguments
/// (`chat_template_kwargs`) may not replace them.
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "messages",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "tools",
];

/// Python's `json.dumps` defaults (", " and ": " separators, no ASCII
/// escaping), which Hugging Face's `tojson` uses and templates rely on.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(out)
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).expect("string serializes"));
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).expect("json serializes")),
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are exposed to it by name.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ModelError> {
        let mut env = minijinja::Environment::new();
        // Hugging Face renders templates with these on; templates are written for them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use this for "today's date" in system prompts; a fixed,
            // well-formed date keeps prompts reproducible.
            fmt.replace("%d", "01")
                .replace("%m", "01")
                .replace("%Y", "2025")
                .replace("%b", "Jan")
                .replace("%B", "January")
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::Template(format!("chat template does not compile: {e:#}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            tool_format: ToolFormat::of_template(source),
            reasoning: Reasoning::of_template(source),
        })
    }

    /// How the template's model writes tool calls, if it takes tools.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// How the template's model writes its reasoning, if it reasons.
    pub fn reasoning(&self) -> Option<Reasoning> {
        self.reasoning
    }

    /// Renders a conversation. With `add_generation_prompt` the text ends
    /// where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, ModelError> {
        self.render_with(
            messages,
            add_generation_prompt,
            tools,
            &serde_json::Map::new(),
        )
    }

    /// As [`ChatTemplate::render`], with further variables for the
    /// template (as Hugging Face's `apply_chat_template` passes its extra
    /// keyword arguments), such as Qwen3's `enable_thinking`.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ModelError> {
        if let Some(k) = kwargs
            .keys()
            .find(|k| TEMPLATE_VARIABLES.contains(&k.as_str()))
        {
            return Err(ModelError::Template(format!(
                "the template argument '{k}' is set by the server and cannot be passed"
            )));
        }
        for m in messages {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ModelError::Template(format!(
                    "unknown role '{}' (expected one of {})",
                    m.role,
                    ROLES.join(", ")
                )));
            }
        }
        let tmpl = self
            .env
            .get_template("chat")
            .expect("added at construction");
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools,
            ..minijinja::Value::from_serialize(kwargs)
        })
        .map_err(|e| ModelError::Template(format!("chat template failed: {e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":[true,null,"é"],"c":{}}"#).unwrap();
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", "", "").unwrap();
        let out = t
            .env
            .get_template("chat")
            .unwrap()
            .render(minijinja::context! { x => v })
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": 1, \"a\": [true, null, \"é\"], \"c\": {}}|{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null,\n    \"é\"\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn unknown_roles_and_raised_exceptions_are_errors() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.strip() }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false, None)
                .unwrap(),
            "hi"
        );
        let err = t
            .render(&[Message::new("wizard", "hi")], false, None)
            .unwrap_err();
        assert!(err.to_string().contains("unknown role 'wizard'"), "{err}");
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], true, None).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
