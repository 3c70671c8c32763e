//! OpenAI API request and response shapes, with OpenAI's field names and
//! defaults. Fields Lampo adds (`top_k`, `min_p`, `repetition_penalty`)
//! are the ones vLLM and llama.cpp's server also accept.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `stop`: one string or a list of up to four.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields chat and text completions share.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Extension (as in vLLM and llama.cpp): never end on an
    /// end-of-generation token, so that every answer runs to `max_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// `auto` (the server's default tier), `default`, `flex` or
    /// `priority`; the response says which was used.
    pub service_tier: Option<String>,
    /// Extension: milliseconds from arrival within which the first token
    /// must come. A request the server forecasts it cannot serve in time
    /// is refused at once (503, code `deadline_unmeetable`); one that
    /// misses it anyway ends with a 503 `timeout`.
    pub first_token_deadline_ms: Option<u64>,
}

/// Message content: a string, or an array of parts of which Lampo reads
/// the text ones.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<String>,
    pub tool_call_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub tool_calls: Option<Value>,
    /// A past assistant turn's reasoning, for templates that show it.
    #[serde(alias = "reasoning")]
    pub reasoning_content: Option<String>,
}

/// `response_format`: plain text, any JSON object, or JSON valid against
/// a schema.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Lampo always enforces the schema; `strict` is accepted for
    /// compatibility.
    pub strict: Option<bool>,
}

/// A tool the model may call: a function with a JSON schema of its
/// arguments.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or one named function.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceParam {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        function: FunctionName,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct FunctionName {
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoiceParam>,
    pub parallel_tool_calls: Option<bool>,
    /// Extension (as in vLLM and llama.cpp): further variables for the
    /// chat template, such as `{"enable_thinking": false}` for Qwen3.
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// Extension (as in llama.cpp): `parsed` (reasoning in
    /// `reasoning_content`; llama.cpp's `auto` and `deepseek` too), `raw`
    /// (left in the content, tags and all; llama.cpp's `none` too) or
    /// `hidden` (left out); the server's `--reasoning-format` otherwise.
    pub reasoning_format: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt`: a string or a list of strings (one choice set per prompt).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub echo: Option<bool>,
    pub logprobs: Option<u64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// The answer: text, or (with `tool_calls`) calls and possibly text.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    /// The model's reasoning, for models that write it (`<think>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// A call's function and its arguments as JSON text.
#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    pub finish_reason: &'static str,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// The service tier the request was served in.
    pub service_tier: &'static str,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    pub finish_reason: &'static str,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// The service tier the request was served in.
    pub service_tier: &'static str,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

/// One event of a streamed chat completion (`stream: true`), sent as
/// server-sent events `data: {...}` and ended by `data: [DONE]`. A
/// request that fails on the way (a grammar limit, a timeout, the server
/// shutting down) ends with an [`ErrorBody`] event, then `[DONE]`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunk {
    pub id: String,
    /// `chat.completion.chunk`
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub service_tier: &'static str,
    pub choices: Vec<ChatChunkChoice>,
    /// In a last chunk with no choices, when `stream_options.include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// Set in the choice's last chunk only.
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to the answer: the role (first chunk), text, or
/// pieces of tool calls.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of tool call `index`: its id, type and name in its first
/// piece, then fragments of its arguments.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// One event of a streamed text completion.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChunk {
    pub id: String,
    /// `text_completion`
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub service_tier: &'static str,
    pub choices: Vec<CompletionChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChunkChoice {
    pub index: usize,
    pub text: String,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// Text to tokenize; control-token text such as `<|im_start|>` becomes
    /// those tokens.
    pub prompt: String,
    /// Add BOS/EOS as the model's vocabulary asks.
    #[serde(default)]
    pub add_special_tokens: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: String,
}

/// OpenAI's error object.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
