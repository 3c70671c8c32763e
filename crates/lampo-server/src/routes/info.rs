//! The routes around generation: the model list, tokenizing, health and
//! readiness, metrics and this API's OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiJson};
use crate::metrics;
use crate::openai::{
    DetokenizeRequest, DetokenizeResponse, ErrorBody, ModelCard, ModelList, Status,
    TokenizeRequest, TokenizeResponse,
};
use crate::state::AppState;

#[utoipa::path(get, path = "/health", responses((status = 200, body = Status)))]
pub(crate) async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/ready", responses((status = 200, body = Status), (status = 503, body = ErrorBody)))]
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    state.engine()?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_name().to_string(),
            object: "model",
            created: state.created,
            owned_by: "lampo",
        }],
    })
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain"),
    (status = 401, body = ErrorBody)))]
pub(crate) async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let engine = state
        .engine
        .get()
        .map(|e| (e.load(), e.config().block_size));
    let body = metrics::render(state.model_name(), engine);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let engine = state.engine()?;
    let tokens = engine
        .model()
        .tokenizer
        .encode(&body.prompt, body.add_special_tokens, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: engine.context_size(),
    }))
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let lm = state.engine()?.model();
    let n_vocab = lm.model.config.n_vocab;
    if let Some(bad) = body.tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::bad_request(
            format!("token {bad} is outside the vocabulary of {n_vocab}"),
            Some("tokens"),
        ));
    }
    Ok(Json(DetokenizeResponse {
        prompt: lm.tokenizer.decode(&body.tokens, true),
    }))
}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document"), (status = 401, body = ErrorBody)))]
pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    Json(crate::ApiDoc::openapi())
}
