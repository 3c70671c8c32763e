//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::bridge::{self, finish_reason};
use crate::error::{ApiError, ApiJson};
use crate::openai::{AssistantMessage, ChatChoice, ChatRequest, ChatResponse, Usage};
use crate::state::{AppState, now, random_id};
use crate::stream::{self, Api};
use crate::{gateway, logprobs, structured, validate};

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest,
    responses((status = 200, description = "A completion, or with `stream: true` server-sent events of chunks ending with `[DONE]`",
        content((ChatResponse = "application/json"), (crate::openai::ChatChunk = "text/event-stream"))),
        (status = 400, body = crate::openai::ErrorBody), (status = 401, body = crate::openai::ErrorBody),
        (status = 404, body = crate::openai::ErrorBody), (status = 413, body = crate::openai::ErrorBody),
        (status = 415, body = crate::openai::ErrorBody), (status = 429, body = crate::openai::ErrorBody),
        (status = 503, body = crate::openai::ErrorBody)))]
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let tier_header = gateway::operator_tier(&headers, &state.config);
    let g = validate::chat(&state, req, arrived, tier_header.as_deref()).await?;
    let g_tier = g.tier;
    let id = random_id("chatcmpl");
    if g.stream {
        return stream::respond(state, g, Api::Chat, id);
    }
    let (prompt_tokens, calls, want_logprobs) = (g.prompt_tokens, g.calls, g.logprobs);
    let thoughts = g.thoughts;
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (index, rx) in bridge::submit(&state, g.requests)?.into_iter().enumerate() {
        let got = bridge::collect(&state, rx, g_tier, arrived).await?;
        completion_tokens += got.done.completion_tokens;
        let answer = structured::split_answer(thoughts, calls, &got.text);
        let called = !answer.tool_calls.is_empty();
        let tok = &state.engine()?.model().tokenizer;
        choices.push(ChatChoice {
            index,
            message: AssistantMessage {
                role: "assistant",
                content: answer.content,
                reasoning_content: answer.reasoning_content,
                tool_calls: answer.tool_calls,
            },
            logprobs: want_logprobs.then(|| logprobs::chat(tok, &got.logprobs)),
            finish_reason: finish_reason(&got.done.finish, called),
        });
    }
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created: now(),
        model: state.model_name().to_string(),
        service_tier: g_tier.name(),
        choices,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    })
    .into_response())
}
