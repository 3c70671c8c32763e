//! `POST /v1/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::bridge::{self, finish_reason};
use crate::error::{ApiError, ApiJson};
use crate::openai::{CompletionChoice, CompletionRequest, CompletionResponse, Usage};
use crate::state::{AppState, now, random_id};
use crate::stream::{self, Api};
use crate::{gateway, logprobs, validate};

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "A completion, or with `stream: true` server-sent events of chunks ending with `[DONE]`",
        content((CompletionResponse = "application/json"), (crate::openai::CompletionChunk = "text/event-stream"))),
        (status = 400, body = crate::openai::ErrorBody), (status = 401, body = crate::openai::ErrorBody),
        (status = 404, body = crate::openai::ErrorBody), (status = 413, body = crate::openai::ErrorBody),
        (status = 415, body = crate::openai::ErrorBody), (status = 429, body = crate::openai::ErrorBody),
        (status = 503, body = crate::openai::ErrorBody)))]
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let tier_header = gateway::operator_tier(&headers, &state.config);
    let g = validate::completion(&state, req, arrived, tier_header.as_deref())?;
    let g_tier = g.tier;
    let id = random_id("cmpl");
    if g.stream {
        return stream::respond(state, g, Api::Completions, id);
    }
    let (prompt_tokens, want_logprobs) = (g.prompt_tokens, g.logprobs);
    let echo = g.echo.clone().unwrap_or_default();
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (index, rx) in bridge::submit(&state, g.requests)?.into_iter().enumerate() {
        let got = bridge::collect(&state, rx, g_tier, arrived).await?;
        completion_tokens += got.done.completion_tokens;
        let tok = &state.engine()?.model().tokenizer;
        choices.push(CompletionChoice {
            index,
            logprobs: want_logprobs.then(|| logprobs::completion(tok, &got.logprobs, 0).0),
            text: format!("{echo}{}", got.text),
            finish_reason: finish_reason(&got.done.finish, false),
        });
    }
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
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
